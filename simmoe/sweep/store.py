"""A sweep's results folder: one Parquet file per finished point, one combined dataset.

    DIR/points/<key>.parquet   one row per point, written once, atomically (temp file + os.replace)
    DIR/sweep.parquet          every finished point of the sweep, rewritten atomically as points finish
    DIR/.lock                  held (flock) by the one coordinator writing DIR

Crash safety: a point's file appears whole or not at all, so after ``kill -9`` a finished point is
on disk and an unfinished one is not; temp files (``.*.tmp``) left behind are removed by the next
run, which holds the lock, so it never removes a live writer's file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from simmoe import __version__
from simmoe.atomic import write_parquet_atomic
from simmoe.errors import InputError, SimmoeError

# Row columns, in the order they are written (swept fields go after point_key, metrics at the end).
HEAD_COLUMNS = ("point_index", "point_key")
STATUS_COLUMNS = ("status", "error", "error_type", "elapsed_s")
_STATUS_TYPES = {"status": pa.string(), "error": pa.string(), "error_type": pa.string(), "elapsed_s": pa.float64()}
META_PREFIX = "simmoe.sweep."


class SweepError(SimmoeError):
    """A sweep could not go on (its folder is locked, a worker process died, a result is unreadable)."""


def swept_column(values: list[Any]) -> tuple[pa.DataType, Any]:
    """One Arrow type for a swept field's values, and the function that turns a value into it.
    Scalars keep their type (ints with floats become floats); lists, mappings and mixed kinds are
    stored as JSON text, so every point file of a sweep has the same column type."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.bool_(), lambda v: v
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.int64(), lambda v: v
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.float64(), lambda v: None if v is None else float(v)
    if all(isinstance(v, str) for v in present):
        return pa.string(), lambda v: v
    return pa.string(), lambda v: None if v is None else json.dumps(v, sort_keys=True)


def _column(name: str, values: list[Any]) -> pa.Array:
    """Arrow's own inference; a column whose rows disagree (a number here, text there) becomes text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        return pa.array([None if v is None else (v if isinstance(v, str) else json.dumps(v, default=str))
                         for v in values], type=pa.string())


def rows_table(rows: list[Mapping[str, Any]], grid: Mapping[str, list[Any]],
               metadata: Mapping[str, str] | None = None) -> pa.Table:
    """Result rows (``point_index``, ``point_key``, each swept field, status columns, ``metrics``
    mapping) as one table with the documented column order and types."""
    arrays: dict[str, pa.Array] = {
        "point_index": pa.array([r["point_index"] for r in rows], type=pa.int64()),
        "point_key": pa.array([r["point_key"] for r in rows], type=pa.string()),
    }
    for field, values in grid.items():
        type_, convert = swept_column(list(values))
        arrays[field] = pa.array([convert(r["values"][field]) for r in rows], type=type_)
    for name in STATUS_COLUMNS:
        arrays[name] = pa.array([r.get(name) for r in rows], type=_STATUS_TYPES[name])
    metric_names: dict[str, None] = {}
    for r in rows:
        metric_names.update(dict.fromkeys(r["metrics"]))
    for name in metric_names:
        if name in arrays:  # a metric named like a swept field or a status column: keep both
            arrays[f"metric.{name}"] = _column(name, [r["metrics"].get(name) for r in rows])
        else:
            arrays[name] = _column(name, [r["metrics"].get(name) for r in rows])
    table = pa.table(arrays)
    if metadata:
        table = table.replace_schema_metadata({k.encode(): str(v).encode() for k, v in metadata.items()})
    return table


def _write_atomic(table: pa.Table, path: Path) -> None:
    # fsync: a finished point must survive a crash, or resuming would silently recompute it.
    write_parquet_atomic(table, path, fsync=True)


class SweepStore:
    """The results folder of one sweep. Use as a context manager: it holds the folder's lock."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.points_dir = self.out_dir / "points"
        self.dataset_path = self.out_dir / "sweep.parquet"
        self._lock_fd: int | None = None

    # -- lifetime

    def __enter__(self) -> "SweepStore":
        try:
            self.points_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot create the results folder ({err.strerror or err})", field="--out",
                             value=str(self.out_dir), allowed="a writable folder") from None
        self._lock()
        self._remove_temp_files()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _lock(self) -> None:
        fd = os.open(self.out_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:  # no flock (Windows): one writer per folder is then the user's promise
            self._lock_fd = fd
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SweepError(f"{self.out_dir}: another simmoe sweep is writing this folder; wait for it "
                             "or use another --out") from None
        self._lock_fd = fd

    def _remove_temp_files(self) -> None:
        # Safe only under the lock: a temp file here belongs to a writer that is gone.
        for folder in (self.out_dir, self.points_dir):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    # -- points

    def point_path(self, key: str) -> Path:
        return self.points_dir / f"{key}.parquet"

    def has(self, key: str) -> bool:
        return self.point_path(key).is_file()

    def read_row(self, key: str) -> dict[str, Any]:
        """A finished point's status and metrics (swept values and index come from the sweep)."""
        path = self.point_path(key)
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as err:
            raise SweepError(f"{path}: unreadable point result ({err}); delete it to run that point again") from None
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        metric_names = json.loads(meta.get(META_PREFIX + "metrics", "[]"))
        row = table.slice(0, 1).to_pylist()[0]
        out = {name: row.get(name) for name in STATUS_COLUMNS}
        out["metrics"] = {name: row.get(name) for name in metric_names}
        return out

    def write_point(self, index: int, key: str, values: Mapping[str, Any], grid: Mapping[str, list[Any]],
                    row: Mapping[str, Any], metadata: Mapping[str, str]) -> None:
        """One point's row, atomically. ``row`` is a worker's result (status columns + metrics)."""
        full = {"point_index": index, "point_key": key, "values": dict(values), "metrics": row["metrics"],
                **{name: row.get(name) for name in STATUS_COLUMNS}}
        meta = dict(metadata)
        meta[META_PREFIX + "metrics"] = json.dumps(list(row["metrics"]))
        if row.get("traceback"):
            meta[META_PREFIX + "traceback"] = row["traceback"]
        _write_atomic(rows_table([full], grid, meta), self.point_path(key))

    # -- the combined dataset

    def write_dataset(self, rows: Iterable[Mapping[str, Any]], grid: Mapping[str, list[Any]],
                      metadata: Mapping[str, str]) -> Path:
        rows = sorted(rows, key=lambda r: r["point_index"])
        _write_atomic(rows_table(rows, grid, {"simmoe_version": __version__, **metadata}), self.dataset_path)
        return self.dataset_path
