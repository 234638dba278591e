"""Point functions (evaluators) the sweep tests inject through the documented hook
(``evaluator="test_sweep_evaluators:NAME"``), plus tests of the worker's contract with them.

They are real functions of the validated scenario, cheap enough for a test: the oracle of each is
arithmetic on the scenario's own fields. This module is imported by worker processes (tests put
tests/ on PYTHONPATH), so it imports nothing heavy.
"""

from __future__ import annotations

import json
import os
import time

from simmoe.config import load_scenario
from simmoe.sweep.worker import STATUS_ERROR, STATUS_OK, PointTask, run_point


def layout_point(scenario) -> dict:
    """Experts per EP rank and capacity factor: checkable by hand from the point's own values."""
    moe = scenario.model.moe
    return {"ep": scenario.parallelism.ep, "experts_per_ep_rank": moe.routed_experts // scenario.parallelism.ep,
            "capacity_factor": scenario.routing.capacity_factor, "gpus": scenario.gpus}


layout_point.metric_names = ("ep", "experts_per_ep_rank", "capacity_factor", "gpus")


def slow_point(scenario) -> dict:
    """layout_point after SWEEP_TEST_SLEEP_S seconds; logs each run to SWEEP_TEST_LOG (one JSON line,
    appended with O_APPEND so concurrent workers do not interleave)."""
    time.sleep(float(os.environ.get("SWEEP_TEST_SLEEP_S", "0")))
    row = layout_point(scenario)
    log = os.environ.get("SWEEP_TEST_LOG")
    if log:
        line = json.dumps({"ep": row["ep"], "capacity_factor": row["capacity_factor"], "pid": os.getpid()}) + "\n"
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    return row


def failing_point(scenario) -> dict:
    """Fails for ep == 4, as a point whose evaluation raises."""
    if scenario.parallelism.ep == 4:
        raise ValueError("ep=4 is the point that fails in this test")
    return layout_point(scenario)


def not_a_mapping_point(scenario) -> list:
    return [1, 2, 3]


# ------------------------------------------------------------------------------------ worker tests


def _task(evaluator: str, metrics=None, ep: int = 2) -> PointTask:
    scenario = load_scenario("default", {"parallelism.ep": ep})
    return PointTask(index=7, key="k" * 64, scenario=scenario, evaluator=evaluator, metrics=metrics)


def test_run_point_returns_the_evaluators_columns():
    row = run_point(_task("test_sweep_evaluators:layout_point", ep=4))
    assert row["status"] == STATUS_OK and row["error"] is None
    assert row["metrics"] == {"ep": 4, "experts_per_ep_rank": 4, "capacity_factor": None, "gpus": 16}
    assert row["index"] == 7 and row["elapsed_s"] >= 0


def test_run_point_turns_an_exception_into_an_error_row():
    row = run_point(_task("test_sweep_evaluators:failing_point", ep=4))
    assert row["status"] == STATUS_ERROR
    assert row["error_type"] == "ValueError" and "ep=4 is the point that fails" in row["error"]
    assert row["metrics"] == {} and "failing_point" in row["traceback"]


def test_run_point_rejects_a_non_mapping_and_missing_metrics():
    row = run_point(_task("test_sweep_evaluators:not_a_mapping_point"))
    assert row["status"] == STATUS_ERROR and "not a mapping" in row["error"]
    row = run_point(_task("test_sweep_evaluators:layout_point", metrics=("ep", "no_such_column")))
    assert row["status"] == STATUS_ERROR and "no_such_column" in row["error"]
    row = run_point(_task("test_sweep_evaluators:layout_point", metrics=("gpus",)))
    assert row["metrics"] == {"gpus": 16}
