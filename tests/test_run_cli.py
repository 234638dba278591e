"""`simmoe run`: outputs, metadata, determinism, infeasible scenarios, errors."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from simmoe.cli import _register_all, app
from simmoe.results import COLUMNS

SMALL = ["--set", "model.layers=4", "--set", "model.hidden=512", "--set", "training.seq_len=1024",
         "--set", "training.micro_batch=2", "--set", "training.global_batch=64"]


@pytest.fixture(scope="module")
def cli():
    _register_all()
    return CliRunner()


def test_run_writes_parquet_with_schema_and_metadata(cli, tmp_path):
    trace = tmp_path / "trace.json"
    res = cli.invoke(app, ["run", "--out", str(tmp_path), "--steps", "2", "--seed", "3",
                           "--trace", str(trace), "--json", *SMALL])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["steps"] == 2 and summary["step_time_s_mean"] > 0
    t = pq.read_table(tmp_path / "steps.parquet")
    assert tuple(t.column_names) == COLUMNS and t.num_rows == 2
    meta = {k.decode(): v.decode() for k, v in t.schema.metadata.items()}
    assert meta["seed"] == "3" and meta["simmoe_version"]
    assert meta["calibration_id"].startswith("roofline:")
    assert "model:" in meta["scenario_yaml"] and "hidden: 512" in meta["scenario_yaml"]
    rows = t.to_pylist()
    assert rows[0]["tokens_per_s_per_gpu"] == pytest.approx(64 * 1024 / rows[0]["step_time_s"] / 16)
    assert 0 < rows[0]["mfu"] < 1 and rows[0]["peak_memory_gib"] > 0
    events = json.loads(trace.read_text())["traceEvents"]
    threads = {(e["pid"], e["args"]["name"]) for e in events if e.get("name") == "thread_name"}
    assert {name for _, name in threads} == {"compute", "comm"}
    assert any(e.get("ph") == "X" and e.get("cat") == "dispatch" for e in events)


def test_same_seed_identical_parquet(cli, tmp_path):
    for d in ("a", "b"):
        res = cli.invoke(app, ["run", "--out", str(tmp_path / d), "--steps", "2", "--json",
                               "--set", "routing.imbalance.s=1.0", *SMALL])
        assert res.exit_code == 0, res.output
    a = pq.read_table(tmp_path / "a" / "steps.parquet")
    b = pq.read_table(tmp_path / "b" / "steps.parquet")
    assert a.equals(b) and a.schema.metadata == b.schema.metadata
    assert (tmp_path / "a" / "steps.parquet").read_bytes() == (tmp_path / "b" / "steps.parquet").read_bytes()


def test_infeasible_scenario_is_reported_not_simulated(cli, tmp_path):
    # 32 sequences of 8192 tokens per micro-batch without recompute: ~112 GiB of activations.
    res = cli.invoke(app, ["run", "--out", str(tmp_path), "--json", "--set", "training.micro_batch=32",
                           "--set", "training.global_batch=256", "--set", "training.seq_len=8192",
                           "--set", "training.activation_recompute=none"])
    assert res.exit_code == 3
    assert "does not fit in GPU memory" in res.stderr
    body = json.loads(res.stdout)
    assert body["feasible"] is False and body["memory_gib"]["total"] > body["memory_gib"]["hbm"]
    assert not (tmp_path / "steps.parquet").exists()


def test_missing_calibration_profile_is_an_input_error(cli, tmp_path):
    res = cli.invoke(app, ["run", "--out", str(tmp_path), "--calibration", str(tmp_path / "nope.parquet")])
    assert res.exit_code == 2 and "calibration" in res.stderr


def test_bad_override_is_an_input_error(cli, tmp_path):
    res = cli.invoke(app, ["run", "--out", str(tmp_path), "--set", "parallelism.ep=5"])
    assert res.exit_code == 2 and "parallelism.ep" in res.stderr
