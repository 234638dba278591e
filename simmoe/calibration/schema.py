"""Calibration profile format: one long-format Parquet table plus key-value metadata
(docs/calibration.md, "Profile format"). Readable by pandas, polars and DuckDB without simmoe.

Every row is one kernel shape: the shape fields that apply to its ``op`` are set, the others are
null. ``read_profile`` checks the file as a file (type, columns, metadata, values); whether it fits
a scenario (GPU, dtypes) is checked by the model that loads it (simmoe/calibration/model.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simmoe.errors import ProfileError
from simmoe.atomic import write_parquet_atomic

SCHEMA_VERSION = "1"

# (column, Arrow type). Shape fields are nullable: a GEMM row has no seq_len, an attention row no k.
COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("op", pa.string()),
    ("dtype", pa.string()),
    ("impl", pa.string()),  # the kernel that ran: "matmul", "_grouped_mm", "loop:matmul", ...
    ("m", pa.int64()),
    ("n", pa.int64()),
    ("k", pa.int64()),
    ("experts", pa.int64()),
    ("tokens_per_expert", pa.float64()),  # mean over the experts of the kernel
    ("skew", pa.string()),  # "balanced" or "zipf:S" (simmoe.calibration.grid.expert_histogram)
    ("batch", pa.int64()),
    ("seq_len", pa.int64()),
    ("heads", pa.int64()),
    ("head_dim", pa.int64()),
    ("causal", pa.bool_()),
    ("gpus", pa.int64()),  # ranks in a collective
    ("bytes", pa.float64()),  # memory-bound: bytes read + written in HBM; collectives: per-rank size
    ("flops", pa.float64()),  # useful FLOPs of the kernel (simmoe.compute.ops conventions)
    ("median_s", pa.float64()),
    ("p10_s", pa.float64()),
    ("p90_s", pa.float64()),
    ("n_repeats", pa.int64()),
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)
ARROW_SCHEMA = pa.schema([pa.field(name, kind, nullable=True) for name, kind in COLUMNS])

GEMM_OPS = ("gemm", "grouped_gemm", "grouped_gemm_wgrad")
ATTENTION_OPS = ("attention_fwd", "attention_fwd_bwd")
MEMORY_OPS = ("copy", "rmsnorm", "layernorm", "permute", "unpermute")
# The streaming ops: each byte read or written once, coalesced. ``memory_bound_s`` pools these only:
# a gather re-reads rows from L2 (faster than HBM) and an atomic scatter-add is bound by atomics
# (10x slower on an H100), so neither says how fast a norm, an activation or an optimizer runs.
STREAMING_MEMORY_OPS = ("copy", "rmsnorm", "layernorm")
COLLECTIVE_OPS = ("alltoall", "allreduce")
OPS = GEMM_OPS + ATTENTION_OPS + MEMORY_OPS + COLLECTIVE_OPS
# What a ProfileModel cannot do without (per dtype for the GEMM families; see model.py).
REQUIRED_OPS = ("gemm", "grouped_gemm", "grouped_gemm_wgrad", "attention_fwd", "attention_fwd_bwd", "copy")

# Shape fields that must be set on every row of an op.
FIELDS_OF_OP: dict[str, tuple[str, ...]] = {
    "gemm": ("m", "n", "k"),
    "grouped_gemm": ("experts", "tokens_per_expert", "skew", "n", "k"),
    "grouped_gemm_wgrad": ("experts", "tokens_per_expert", "skew", "n", "k"),
    "attention_fwd": ("batch", "seq_len", "heads", "head_dim", "causal"),
    "attention_fwd_bwd": ("batch", "seq_len", "heads", "head_dim", "causal"),
    **{op: ("m", "n", "bytes") for op in MEMORY_OPS},
    **{op: ("gpus", "bytes") for op in COLLECTIVE_OPS},
}

PROVENANCES = ("measured", "datasheet-roofline")
# Metadata every profile carries (all values are strings; JSON where structured).
REQUIRED_METADATA = ("schema_version", "profile_id", "provenance", "device", "gpu", "sm_count", "driver",
                     "cuda", "torch", "date_utc", "command", "simmoe_version", "grid", "ops", "skipped")


@dataclass
class Profile:
    """A profile in memory: the table and its metadata (str -> str)."""

    table: pa.Table
    metadata: dict[str, str] = field(default_factory=dict)
    path: str | None = None
    _columns: dict | None = field(default=None, repr=False, compare=False)

    @property
    def profile_id(self) -> str:
        return self.metadata["profile_id"]

    def columns(self) -> dict[str, np.ndarray]:
        """Every column as a numpy array (numbers as float64 with null -> NaN, others as objects)."""
        if self._columns is None:
            self._columns = {}
            for name, kind in COLUMNS:
                values = self.table.column(name).to_pylist()
                if pa.types.is_integer(kind) or pa.types.is_floating(kind):
                    self._columns[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
                else:
                    self._columns[name] = np.array(values, dtype=object)
        return self._columns

    def rows(self, op: str, dtype: str | None = None) -> dict[str, np.ndarray]:
        """Columns of the rows of ``op`` (and ``dtype``) as numpy arrays."""
        cols = self.columns()
        mask = cols["op"] == op
        if dtype is not None:
            mask &= cols["dtype"] == dtype
        return {name: values[mask] for name, values in cols.items()}


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts with any subset of COLUMN_NAMES; absent = null) -> a table in the schema."""
    unknown = {key for row in rows for key in row} - set(COLUMN_NAMES)
    if unknown:
        raise ValueError(f"unknown profile columns {sorted(unknown)}")  # a programming error, not input
    return pa.table({name: pa.array([row.get(name) for row in rows], type=kind) for name, kind in COLUMNS},
                    schema=ARROW_SCHEMA)


def content_id(table: pa.Table, metadata: dict[str, str]) -> str:
    """Profile id: a hash of the data and of what it was measured on (not the date or command, so
    regenerating a roofline profile gives the same id). Canonical per column, independent of how
    a Parquet writer lays the file out."""
    digest = hashlib.sha256()
    for key in ("provenance", "device", "gpu"):
        digest.update(f"{key}={metadata.get(key, '')}\n".encode())
    for name in COLUMN_NAMES:
        digest.update(f"#{name}\n".encode())
        digest.update(json.dumps(table.column(name).to_pylist(), allow_nan=True).encode())
    return "profile-" + digest.hexdigest()[:16]


def write_profile(path: str | Path, table: pa.Table, metadata: dict[str, str]) -> Profile:
    """Write atomically (temp file in the same folder, then os.replace); sets ``profile_id`` and
    ``schema_version``. Returns the profile as written."""
    path = Path(path)
    table = table.select(list(COLUMN_NAMES)).cast(ARROW_SCHEMA).combine_chunks()
    meta = {str(k): str(v) for k, v in metadata.items()}
    meta["schema_version"] = SCHEMA_VERSION
    meta["profile_id"] = content_id(table, meta)
    missing = [key for key in REQUIRED_METADATA if key not in meta]
    if missing:
        raise ValueError(f"profile metadata lacks {missing}")  # a programming error, not input
    table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in meta.items()})
    write_parquet_atomic(table, path)
    return Profile(table=table, metadata=meta, path=str(path))


def _check_values(table: pa.Table, file: str) -> None:
    ops = table.column("op").to_pylist()
    for index, op in enumerate(ops):
        if op not in OPS:
            raise ProfileError("unknown op", file=file, field=f"op[row {index}]", value=op, allowed=", ".join(OPS))
    for name in ("dtype", "median_s", "p10_s", "p90_s", "n_repeats"):
        values = table.column(name).to_pylist()
        if None in values:
            raise ProfileError("must not be null", file=file, field=f"{name}[row {values.index(None)}]")
    p10, median, p90 = (np.asarray(table.column(c).to_pylist(), dtype=np.float64)
                        for c in ("p10_s", "median_s", "p90_s"))
    bad = np.flatnonzero(~(np.isfinite(p10) & (p10 > 0) & (p10 <= median) & (median <= p90) & np.isfinite(p90)))
    if bad.size:
        i = int(bad[0])
        raise ProfileError("times must be finite, > 0 and ordered p10_s <= median_s <= p90_s", file=file,
                           field=f"median_s[row {i}]", value=(p10[i], median[i], p90[i]), has_value=True)
    for op, needed in FIELDS_OF_OP.items():
        rows = [i for i, o in enumerate(ops) if o == op]
        if not rows:
            continue
        for name in needed:
            values = table.column(name).to_pylist()
            for i in rows:
                v = values[i]
                if v is None or (not isinstance(v, (str, bool)) and not v > 0):
                    raise ProfileError(f"{op} rows need {', '.join(needed)} (numbers > 0)", file=file,
                                       field=f"{name}[row {i}]", value=v, has_value=True)


def read_profile(path: str | Path) -> Profile:
    """Read and validate a profile file (or a shipped ``measured:<GPU>`` profile); ProfileError names
    the file and the column or key."""
    from simmoe.calibration.shipped import resolve_profile

    path = resolve_profile(path)
    file = str(path)
    if not Path(path).is_file():
        raise ProfileError("calibration profile not found", file=file,
                           allowed="a Parquet file written by `simmoe calibrate`")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise ProfileError(f"not a Parquet file ({exc})", file=file,
                           allowed="a Parquet file written by `simmoe calibrate`") from exc
    missing = [name for name in COLUMN_NAMES if name not in table.column_names]
    if missing:
        raise ProfileError("missing column" + ("s" if len(missing) > 1 else ""), file=file,
                           field=", ".join(missing), allowed="columns " + ", ".join(COLUMN_NAMES))
    raw = table.schema.metadata or {}
    meta = {k.decode(): v.decode() for k, v in raw.items()}
    absent = [key for key in REQUIRED_METADATA if key not in meta]
    if absent:
        raise ProfileError("missing metadata key" + ("s" if len(absent) > 1 else ""), file=file,
                           field=", ".join(absent), allowed="keys " + ", ".join(REQUIRED_METADATA))
    if meta["schema_version"] != SCHEMA_VERSION:
        raise ProfileError("unsupported profile schema", file=file, field="schema_version",
                           value=meta["schema_version"], allowed=SCHEMA_VERSION)
    if meta["provenance"] not in PROVENANCES:
        raise ProfileError("unknown provenance", file=file, field="provenance", value=meta["provenance"],
                           allowed=", ".join(PROVENANCES))
    if table.num_rows == 0:
        raise ProfileError("profile has no rows", file=file, allowed="at least one row per op")
    table = table.select(list(COLUMN_NAMES))
    try:
        table = table.cast(pa.schema([pa.field(n, t) for n, t in COLUMNS], metadata=raw))
    except (pa.ArrowException, ValueError) as exc:
        raise ProfileError(f"a column has the wrong type ({exc})", file=file,
                           allowed=", ".join(f"{n}: {t}" for n, t in COLUMNS)) from exc
    _check_values(table, file)
    for key in ("ops", "skipped"):
        try:
            json.loads(meta[key])
        except json.JSONDecodeError as exc:
            raise ProfileError("not valid JSON", file=file, field=key, value=meta[key]) from exc
    present = set(table.column("op").to_pylist())
    for op in json.loads(meta["ops"]):
        if op not in present:
            raise ProfileError("op was measured but has no rows", file=file, field="op", value=op,
                               allowed=", ".join(sorted(present)))
    if meta["profile_id"] != content_id(table, meta):
        raise ProfileError("profile_id does not match the contents (edited after it was written?)", file=file,
                           field="profile_id", value=meta["profile_id"],
                           allowed="a file written by `simmoe calibrate` or simmoe.calibration.write_profile")
    return Profile(table=table, metadata=meta, path=file)


def scale_times(profile: Profile, factor: float, ops: tuple[str, ...] = GEMM_OPS) -> tuple[pa.Table, dict[str, str]]:
    """Table and metadata with every time of ``ops`` multiplied by ``factor`` (for what-ifs and the
    "a profile twice as slow gives GEMMs twice as slow" tests). Write it with ``write_profile``,
    which gives it a new profile id."""
    table = profile.table
    chosen = np.isin(np.asarray(table.column("op").to_pylist(), dtype=object), list(ops))
    for name in ("median_s", "p10_s", "p90_s"):
        values = np.asarray(table.column(name).to_pylist(), dtype=np.float64)
        table = table.set_column(table.column_names.index(name), name,
                                 pa.array(np.where(chosen, values * factor, values), type=pa.float64()))
    meta = {k: v for k, v in profile.metadata.items() if k != "profile_id"}
    meta["command"] = f"{meta.get('command', '')} | scale_times(x{factor:g}, {','.join(ops)})"
    return table, meta


def common_metadata(command: str) -> dict[str, str]:
    """Metadata every writer sets the same way: UTC date, command line, simmoe version."""
    from datetime import datetime, timezone

    from simmoe import __version__

    return {"date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
            "simmoe_version": __version__}
