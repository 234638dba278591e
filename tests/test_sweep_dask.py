"""The Dask executor: a sweep on a LocalCluster (threads, no extra processes) writes the same
dataset as the local executor, failing point included."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from simmoe.sweep import DaskExecutor, run_sweep

distributed = pytest.importorskip("distributed")

FAILING = "test_sweep_evaluators:failing_point"


def test_dask_localcluster_gives_the_local_dataset(tmp_path: Path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "on-dask", "base": "default", "set": {"routing.execution": "padded"},
        "grid": {"parallelism.ep": [1, 2, 4, 8], "routing.capacity_factor": [1.0, 2.0]}}))
    local = run_sweep(sweep, tmp_path / "local", executor="serial", evaluator=FAILING, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) \
            as cluster, distributed.Client(cluster) as client:
        on_dask = run_sweep(sweep, tmp_path / "dask", executor=DaskExecutor(client=client), evaluator=FAILING,
                            progress=False)
        assert not client.futures  # every future was released
    assert (on_dask.ran, on_dask.ok, len(on_dask.errors)) == (8, 6, 2)
    a = pq.read_table(local.dataset).drop_columns(["elapsed_s"])
    b = pq.read_table(on_dask.dataset).drop_columns(["elapsed_s"])
    assert a.equals(b)
    assert sorted(p.name for p in (tmp_path / "dask" / "points").iterdir()) == \
        sorted(p.name for p in (tmp_path / "local" / "points").iterdir())


def test_dask_address_form_reaches_a_running_scheduler(tmp_path: Path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"base": "default", "grid": {"parallelism.ep": [2, 4, 8]}}))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        address = cluster.scheduler_address.replace("tcp://", "dask://")
        outcome = run_sweep(sweep, tmp_path / "out", executor=address, evaluator=FAILING, progress=False)
    assert (outcome.ran, outcome.ok) == (3, 2)
    assert [e["values"] for e in outcome.errors] == [{"parallelism.ep": 4}]
