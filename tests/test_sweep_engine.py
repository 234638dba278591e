"""A sweep with the real engine (the default evaluator) on a tiny scenario: each row is exactly
what `simmoe.engine.simulate` + `simmoe.results.summarize` give for that point run on its own."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import yaml

from simmoe.config import load_scenario
from simmoe.sweep import load_sweep, run_sweep

# The built-in scenario cut down to ~0.05 s a step: 2 layers, one stage, one recorded step.
TINY = {"model.layers": 2, "parallelism.pp": 1, "training.global_batch": 64, "simulation.steps": 1,
        "simulation.warmup_steps": 0, "simulation.fidelity": "analytical", "routing.execution": "padded"}


def test_engine_sweep_rows_equal_single_runs(tmp_path):
    engine = pytest.importorskip("simmoe.engine")
    from simmoe.results import summarize

    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(yaml.safe_dump({"base": "default", "set": TINY,
                                     "grid": {"routing.capacity_factor": [1.0, 2.0], "parallelism.ep": [4, 8]},
                                     "metrics": ["step_time_s_mean", "dropped_token_fraction_mean", "mfu_mean"]}))
    spec = load_sweep(sweep)  # default evaluator: the engine
    assert spec.evaluator == "simmoe.sweep.evaluators:engine_point"
    outcome = run_sweep(spec, tmp_path / "out", executor="serial", progress=False)
    assert outcome.ok == 4, outcome.errors
    rows = pq.read_table(outcome.dataset).to_pylist()
    for row in rows:
        alone = summarize(engine.simulate(load_scenario("default", {
            **TINY, "routing.capacity_factor": row["routing.capacity_factor"],
            "parallelism.ep": row["parallelism.ep"]})).records)
        for col in ("step_time_s_mean", "dropped_token_fraction_mean", "mfu_mean"):
            assert row[col] == alone[col], col
    by = {(r["routing.capacity_factor"], r["parallelism.ep"]): r for r in rows}
    # A tighter capacity drops more tokens (same routing draws: same seed).
    for ep in (4, 8):
        assert by[(1.0, ep)]["dropped_token_fraction_mean"] > by[(2.0, ep)]["dropped_token_fraction_mean"] >= 0
