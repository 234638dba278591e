"""The engine follows a calibration profile: `simmoe run --calibration` (issue: calibration).

Oracle: a profile whose every GEMM time (dense and grouped, fwd and bwd) is twice the roofline's
must double the expert compute time in the step breakdown, and the run's Parquet metadata must
name the profile it used.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from simmoe.calibration.roofline_profile import roofline_profile
from simmoe.calibration.schema import read_profile, scale_times, write_profile
from simmoe.config import load_default_scenario
from simmoe.engine.api import simulate


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("profiles")
    gpu = load_default_scenario().gpu_model
    table, meta = roofline_profile(gpu)
    base = write_profile(folder / "base.parquet", table, meta)
    slow_table, slow_meta = scale_times(read_profile(base.path), 2.0)
    slow = write_profile(folder / "slow.parquet", slow_table, slow_meta)
    return base, slow


def test_doubling_gemm_times_doubles_expert_compute(profiles):
    base, slow = profiles
    scenario = load_default_scenario(["simulation.fidelity=analytical"])
    fast_run = simulate(scenario, steps=1, calibration=base.path)
    slow_run = simulate(scenario, steps=1, calibration=slow.path)
    fast_s = fast_run.records[0].expert_compute_s
    slow_s = slow_run.records[0].expert_compute_s
    assert fast_s > 0
    assert slow_s / fast_s == pytest.approx(2.0, rel=0.01)
    # Everything else in the step did not get slower by the same factor: only GEMMs doubled.
    assert slow_run.records[0].step_time_s / fast_run.records[0].step_time_s < 2.0


def test_run_metadata_names_the_profile(profiles, tmp_path):
    from simmoe.cli import main

    base, _ = profiles
    with pytest.raises(SystemExit) as done:
        main(["run", "--steps", "1", "--out", str(tmp_path), "--calibration", base.path,
              "--set", "simulation.fidelity=analytical"])
    assert done.value.code == 0
    meta = pq.read_schema(tmp_path / "steps.parquet").metadata
    assert meta[b"calibration_id"].decode() == base.metadata["profile_id"]
