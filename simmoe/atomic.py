"""Atomic file writes: nothing a user computed is ever left half-written.

Every result file (steps, forecast, sweep points, profiles, traces) is written to a temporary file
in the destination folder and moved into place with ``os.replace``, which is atomic on POSIX: a
reader (or a resumed sweep after kill -9) sees the old file or the new one, never a torn one.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Iterable


def atomic_write(path: str | Path, write: Callable[[Any], None], *, binary: bool = True,
                 fsync: bool = False) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, then move it into place.

    ``fsync=True`` also forces the bytes to disk before the rename, for files whose loss after a
    power cut would cost recomputation (sweep points)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            write(handle)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_parquet_atomic(table, path: str | Path, *, fsync: bool = False) -> Path:
    """Write a pyarrow Table to ``path`` atomically."""
    import pyarrow.parquet as pq

    return atomic_write(path, lambda handle: pq.write_table(table, handle), fsync=fsync)


def string_metadata(metadata: dict[str, Any]) -> dict[bytes, bytes]:
    """Parquet key-value metadata: every value as a string."""
    return {str(k).encode(): str(v).encode() for k, v in metadata.items()}


def dataclass_table(rows: Iterable[Any], row_type: type, metadata: dict[str, Any] | None = None):
    """A pyarrow Table with one column per field of the dataclass ``row_type`` (int -> int64,
    str -> string, everything else float64), in field order, with string metadata."""
    import pyarrow as pa

    rows = list(rows)
    arrow = {int: pa.int64(), "int": pa.int64(), str: pa.string(), "str": pa.string()}
    schema_fields = [pa.field(f.name, arrow.get(f.type, pa.float64())) for f in fields(row_type)]
    arrays = [pa.array([getattr(r, f.name) for r in rows], type=f.type) for f in schema_fields]
    schema = pa.schema(schema_fields, metadata=string_metadata(metadata or {}))
    return pa.Table.from_arrays(arrays, schema=schema)
