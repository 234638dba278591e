"""The `simmoe calibrate` harness end to end on CPU (tiny shapes), the gloo path of the collective
benchmark, and simmoe working without torch. Timings are only checked for sign and order, never
against a number."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from simmoe.calibration import ARROW_SCHEMA, REQUIRED_OPS, load_compute_model, read_profile
from simmoe.calibration.schema import REQUIRED_METADATA
from simmoe.compute import ComputeModel

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def cpu_profile(tmp_path_factory):
    from typer.testing import CliRunner

    from simmoe.cli import _register_all, app

    _register_all()
    out = tmp_path_factory.mktemp("cpu") / "cpu.parquet"
    res = CliRunner().invoke(app, ["calibrate", "--device", "cpu", "--dtype", "bf16,fp8", "--out", str(out),
                                   "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def test_cpu_run_writes_the_schema_and_metadata(cpu_profile):
    out, summary = cpu_profile
    table = pq.read_table(out)
    assert table.schema.remove_metadata().equals(ARROW_SCHEMA.remove_metadata())
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert set(REQUIRED_METADATA) <= set(meta)
    assert meta["provenance"] == "measured" and meta["device"].startswith("cpu")
    assert meta["torch"] == torch.__version__ and meta["grid"] == "cpu"
    assert meta["command"].startswith("simmoe calibrate --device cpu") and meta["profile_id"] == summary["profile_id"]
    assert meta["timer"] == "time.perf_counter"
    # On CPU the collectives are skipped, with the reason recorded.
    skipped = json.loads(meta["skipped"])
    assert "CUDA" in skipped["alltoall"] and "CUDA" in skipped["allreduce"]


def test_cpu_run_times_are_positive_and_ordered(cpu_profile):
    rows = pq.read_table(cpu_profile[0]).to_pylist()
    ops = {r["op"] for r in rows}
    assert set(REQUIRED_OPS) <= ops and {"rmsnorm", "layernorm", "permute", "unpermute"} <= ops
    assert {r["dtype"] for r in rows if r["op"] == "gemm"} == {"bf16", "fp8"}
    for r in rows:
        assert 0 < r["p10_s"] <= r["median_s"] <= r["p90_s"], r
        assert r["n_repeats"] == 5 and r["impl"]
    grouped = [r for r in rows if r["op"] == "grouped_gemm"]
    assert {r["skew"] for r in grouped} == {"balanced", "zipf:1.0"}
    memory = [r for r in rows if r["op"] == "copy"]
    assert [r["bytes"] for r in memory] == [2 * 2 * r["m"] * r["n"] for r in memory]


def test_cpu_profile_loads_as_a_compute_model(cpu_profile):
    model = load_compute_model("H100-SXM", cpu_profile[0], dtypes=("bf16", "fp8"))
    assert isinstance(model, ComputeModel) and model.identifier == read_profile(cpu_profile[0]).profile_id
    times = [model.gemm_s(16, 64, 64, "bf16"), model.gemm_s(5000, 7168, 2048, "fp8"),
             model.attention_s(1, 64, 2, 16, 16, True, "bf16", True), model.memory_bound_s(1e5)]
    times += list(model.grouped_gemm_s(np.array([[3, 4, 5, 0], [40, 0, 0, 0]]), 16, 32, "bf16"))
    assert all(np.isfinite(t) and t > 0 for t in times)
    assert model.describe()["provenance"] == "measured"


@pytest.mark.slow  # two spawned processes each import torch (~10 s)
def test_collectives_over_gloo(tmp_path):
    from simmoe.calibration.collectives import measure_collectives

    rows = measure_collectives(2, "gloo", [1024, 65536], warmup=1, repeats=3)
    assert sorted((r["op"], r["bytes"]) for r in rows) == [
        ("allreduce", 1024.0), ("allreduce", 65536.0), ("alltoall", 1024.0), ("alltoall", 65536.0)]
    for r in rows:
        assert r["gpus"] == 2 and 0 < r["p10_s"] <= r["median_s"] <= r["p90_s"] and r["n_repeats"] == 3


def test_simmoe_loads_profiles_without_torch(cpu_profile):
    """torch is imported only inside the benchmark: block it and load a profile, then ask to measure."""
    code = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now fails
from simmoe.calibration import load_compute_model
m = load_compute_model("H100-SXM", {str(cpu_profile[0])!r})
assert m.gemm_s(64, 64, 64, "bf16") > 0
from simmoe.cli import main
main(["calibrate", "--device", "cpu", "--out", "x.parquet"])
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "PyTorch is not installed" in res.stderr and "simmoe[calibrate]" in res.stderr
