"""Run a sweep: skip finished points, run the rest on an executor, write each result as it lands.

The coordinator (this process) is the only writer: it writes ``points/<key>.parquet`` the moment a
point's result arrives and rewrites ``sweep.parquet`` at most every ``dataset_interval_s`` seconds
and once at the end, so the dataset is readable (and at most a few seconds stale) at any time.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from simmoe import __version__
from simmoe.sweep.executors import Executor, make_executor
from simmoe.sweep.spec import SweepPoint, SweepSpec, load_sweep
from simmoe.sweep.store import SweepStore
from simmoe.sweep.worker import STATUS_ERROR, STATUS_OK, PointTask, run_point


@dataclass
class SweepOutcome:
    name: str
    out_dir: Path
    dataset: Path
    points: int
    skipped: int  # finished by an earlier run
    ran: int  # finished by this run
    ok: int  # over the whole sweep, earlier runs included
    errors: list[dict[str, Any]] = field(default_factory=list)  # {index, key, values, error_type, error}
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"sweep": self.name, "out_dir": str(self.out_dir), "dataset": str(self.dataset),
                "points": self.points, "skipped": self.skipped, "ran": self.ran, "ok": self.ok,
                "error": len(self.errors), "errors": self.errors, "elapsed_s": self.elapsed_s,
                "points_per_s": self.ran / self.elapsed_s if self.elapsed_s > 0 else None}


def default_out_dir(spec: SweepSpec) -> Path:
    return Path("results") / spec.name


def _point_metadata(spec: SweepSpec, point: SweepPoint) -> dict[str, str]:
    return {"simmoe_version": __version__,
            "simmoe.sweep.name": spec.name,
            "simmoe.sweep.evaluator": spec.evaluator,
            "simmoe.sweep.values": json.dumps(point.values, sort_keys=True, default=str),
            "simmoe.sweep.scenario": json.dumps(point.scenario.model_dump(mode="json"), sort_keys=True)}


def _dataset_metadata(spec: SweepSpec) -> dict[str, str]:
    return {"simmoe.sweep.name": spec.name, "simmoe.sweep.file": str(spec.file),
            "simmoe.sweep.base": str(spec.base), "simmoe.sweep.mode": spec.mode,
            "simmoe.sweep.grid": json.dumps(spec.grid, default=str),
            "simmoe.sweep.set": json.dumps(spec.set, default=str),
            "simmoe.sweep.evaluator": spec.evaluator, "simmoe.sweep.text": spec.text}


def _progress(name: str, total: int, done: int):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[errors]} failed"), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn(), console=Console(stderr=True))
    task = bar.add_task(f"sweep {name}", total=total, completed=done, errors=0)
    return bar, task


def run_sweep(sweep: SweepSpec | str | Path, out_dir: str | Path | None = None, *,
              executor: str | Executor | None = "local", workers: int | None = None,
              evaluator: str | Callable = "engine", retry_errors: bool = False, progress: bool = True,
              dataset_interval_s: float = 2.0) -> SweepOutcome:
    """Run every point of a sweep not yet finished in ``out_dir`` and write the dataset.

    ``sweep`` is a sweep file (validated in full here, before any point runs) or a spec from
    :func:`load_sweep` (whose evaluator then wins over ``evaluator``). Points whose result file
    exists are skipped; with ``retry_errors`` the ones that failed run again."""
    spec = sweep if isinstance(sweep, SweepSpec) else load_sweep(sweep, evaluator=evaluator)
    runner = make_executor(executor, workers)  # checked before any point runs
    out = Path(out_dir) if out_dir is not None else default_out_dir(spec)
    start = time.perf_counter()
    with SweepStore(out) as store:
        rows: dict[str, dict[str, Any]] = {}
        todo: list[SweepPoint] = []
        for point in spec.points:
            if store.has(point.key):
                row = store.read_row(point.key)
                if spec.metrics is not None:  # an earlier run may have kept other columns
                    row["metrics"] = {m: row["metrics"].get(m) for m in spec.metrics}
                if not (retry_errors and row["status"] == STATUS_ERROR):
                    rows[point.key] = {**row, "point_index": point.index, "point_key": point.key,
                                       "values": point.values}
                    continue
            todo.append(point)
        skipped = len(rows)
        meta = _dataset_metadata(spec)

        def write_dataset() -> Path:
            return store.write_dataset(rows.values(), spec.grid, meta)

        write_dataset()
        by_key = {p.key: p for p in todo}
        tasks = [PointTask(index=p.index, key=p.key, scenario=p.scenario, evaluator=spec.evaluator,
                           metrics=spec.metrics, options=spec.options) for p in todo]
        bar = task_id = None
        if progress:
            bar, task_id = _progress(spec.name, len(spec.points), skipped)
            bar.start()
        ran = failed = 0
        last_write = time.monotonic()
        try:
            for result in runner.map_unordered(run_point, tasks):
                point = by_key[result["key"]]
                store.write_point(point.index, point.key, point.values, spec.grid, result,
                                  _point_metadata(spec, point))
                rows[point.key] = {**result, "point_index": point.index, "point_key": point.key,
                                   "values": point.values}
                ran += 1
                failed += result["status"] == STATUS_ERROR
                if bar is not None:
                    bar.update(task_id, advance=1, errors=failed)
                if time.monotonic() - last_write >= dataset_interval_s:
                    write_dataset()
                    last_write = time.monotonic()
        finally:
            if bar is not None:
                bar.stop()
            dataset = write_dataset()  # also after Ctrl-C or a dead worker: whatever finished is in
    errors = [{"index": r["point_index"], "key": r["point_key"], "values": r["values"],
               "error_type": r.get("error_type"), "error": r.get("error")}
              for r in sorted(rows.values(), key=lambda r: r["point_index"]) if r["status"] != STATUS_OK]
    ok = sum(r["status"] == STATUS_OK for r in rows.values())
    return SweepOutcome(name=spec.name, out_dir=out, dataset=dataset, points=len(spec.points), skipped=skipped,
                        ran=ran, ok=ok, errors=errors, elapsed_s=time.perf_counter() - start)
