"""The function every executor runs: one point in, one result row out, never an exception.

It runs in a worker process (local pool) or on a Dask worker, so it takes and returns plain
picklable data. A failing evaluator becomes ``status="error"`` with its message; the coordinator
writes the row like any other, and the sweep goes on.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass
from typing import Any

STATUS_OK = "ok"
STATUS_ERROR = "error"


@dataclass(frozen=True)
class PointTask:
    index: int
    key: str
    scenario: Any  # a validated simmoe.config.Scenario (pickles with its derived private fields)
    evaluator: str  # module:function
    metrics: tuple[str, ...] | None  # columns to keep; None: all
    options: dict[str, Any] | None = None  # keyword arguments of the evaluator (part of the point key)


def _scalar(value: Any) -> Any:
    """A value Parquet can hold in a flat column: numpy scalars unwrapped, containers as JSON text."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def run_point(task: PointTask) -> dict[str, Any]:
    """``{"index", "key", "status", "error", "error_type", "elapsed_s", "metrics"}`` for one point."""
    from simmoe.sweep.evaluators import resolve_evaluator

    start = time.perf_counter()
    row: dict[str, Any] = {"index": task.index, "key": task.key, "status": STATUS_OK, "error": None,
                           "error_type": None, "metrics": {}}
    try:
        summary = resolve_evaluator(task.evaluator)(task.scenario, **(task.options or {}))
        if not hasattr(summary, "items"):
            raise TypeError(f"the evaluator returned {type(summary).__name__}, not a mapping of column -> value")
        summary = {str(k): _scalar(v) for k, v in summary.items()}
        if task.metrics is not None:
            missing = [m for m in task.metrics if m not in summary]
            if missing:
                raise KeyError(f"metrics {missing} are not in the summary (it has: {', '.join(summary)})")
            summary = {m: summary[m] for m in task.metrics}
        row["metrics"] = summary
    except Exception as err:  # noqa: BLE001 - a failing point is a result, not a crash of the sweep
        row = error_row(task, err, traceback.format_exc(limit=-8))
    row["elapsed_s"] = time.perf_counter() - start
    return row


def error_row(task: PointTask, err: BaseException, trace: str | None = None) -> dict[str, Any]:
    """The row of a point that failed (in the evaluator, or on the way: a Dask worker that died)."""
    return {"index": task.index, "key": task.key, "status": STATUS_ERROR, "error": str(err) or repr(err),
            "error_type": type(err).__name__, "metrics": {}, "elapsed_s": None, "traceback": trace}
