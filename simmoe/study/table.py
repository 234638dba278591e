"""study.parquet: one row per variant, ranked (docs/study.md has every column).

Assembled in the coordinator from the sweep's per-variant results plus the fabric capex, which
depends only on the topology and the price table (so a new price table re-ranks without
re-simulating)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from simmoe.atomic import string_metadata, write_parquet_atomic

SCHEMA = "simmoe.study.StudyRow v1"

# (column, arrow type) in file order. Forecast columns are P50 unless named _p10/_p90.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("rank", "int64"), ("variant", "string"), ("overrides", "string"), ("status", "string"),
    ("error", "string"), ("error_type", "string"), ("topology", "string"), ("gpus", "int64"),
    ("step_time_s", "float64"), ("tokens_per_s_per_gpu", "float64"), ("mfu", "float64"),
    ("a2a_dispatch_s", "float64"), ("a2a_combine_s", "float64"), ("exposed_comm_s", "float64"),
    ("dp_comm_s", "float64"), ("expert_compute_s", "float64"), ("dropped_token_fraction", "float64"),
    ("expert_load_max_over_mean", "float64"), ("peak_memory_gib", "float64"),
    ("tokens", "float64"), ("time_to_train_days_p10", "float64"), ("time_to_train_days_p50", "float64"),
    ("time_to_train_days_p90", "float64"), ("gpu_hours", "float64"), ("cost_usd", "float64"),
    ("fabric_switches", "int64"), ("fabric_nics", "int64"), ("fabric_links", "int64"),
    ("fabric_capex_total_usd", "float64"), ("fabric_share", "float64"), ("fabric_capex_usd", "float64"),
    ("total_cost_usd", "float64"), ("usd_per_million_tokens", "float64"), ("energy_mwh", "float64"),
    ("tco2e", "float64"), ("rank_usd_per_token", "int64"), ("rank_total_cost", "int64"),
    ("rank_time_to_train", "int64"), ("rank_energy", "int64"),
)
COLUMN_NAMES = tuple(c for c, _ in COLUMNS)
RANKS = {"rank_usd_per_token": "usd_per_million_tokens", "rank_total_cost": "total_cost_usd",
         "rank_time_to_train": "time_to_train_days_p50", "rank_energy": "energy_mwh"}
RANK_OF = {v: k for k, v in RANKS.items()}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def competition_ranks(values: Sequence[Any]) -> list[int | None]:
    """1 for the smallest finite value; equal values share a rank ("1224"); missing -> None."""
    present = sorted(v for v in values if _finite(v))
    out: list[int | None] = []
    for v in values:
        out.append(present.index(v) + 1 if _finite(v) else None)
    return out


def rank_rows(rows: list[dict[str, Any]], rank_by: str = "usd_per_million_tokens") -> list[dict[str, Any]]:
    """Fill the rank columns and order rows: by ``rank_by`` (ties by time to train, then name),
    variants without a result last. ``rank`` is the position in that order (null without a result)."""
    for col, metric in RANKS.items():
        for row, r in zip(rows, competition_ranks([row.get(metric) for row in rows])):
            row[col] = r

    def key(row: dict) -> tuple:
        v, t = row.get(rank_by), row.get("time_to_train_days_p50")
        return (not _finite(v), v if _finite(v) else 0.0, t if _finite(t) else math.inf, row["variant"])

    ordered = sorted(rows, key=key)
    for i, row in enumerate(ordered):
        row["rank"] = i + 1 if _finite(row.get(rank_by)) else None
    return ordered


def write_study_parquet(rows: list[Mapping[str, Any]], path: str | Path, metadata: Mapping[str, str]) -> Path:
    """Atomically: a temporary file in the destination folder, fsynced, then os.replace."""
    import pyarrow as pa

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    types = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string()}

    def clean(v: Any, t: str) -> Any:
        if v is None:
            return None
        if t == "float64":
            return float(v) if _finite(v) else None
        if t == "int64":
            return int(v)
        return str(v)

    arrays = [pa.array([clean(r.get(c), t) for r in rows], type=types[t]) for c, t in COLUMNS]
    schema = pa.schema([pa.field(c, types[t]) for c, t in COLUMNS],
                       metadata=string_metadata(metadata))
    table = pa.Table.from_arrays(arrays, schema=schema)
    write_parquet_atomic(table, path, fsync=True)
    return path


def _fmt(v: Any, spec: str, scale: float = 1.0) -> str:
    return format(v * scale, spec) if _finite(v) else "-"


def render_table(rows: list[Mapping[str, Any]], *, title: str, rank_by: str):
    """A rich Table of the ranked rows (what `simmoe study` prints)."""
    from rich.table import Table

    t = Table(title=title, caption=f"ordered by {rank_by}; ranks: $/token, total $, days, MWh "
                                   "(1 = best); costs are P50; fabric = amortized capex share")
    for name, justify in (("#", "right"), ("variant", "left"), ("step s", "right"), ("tok/s/GPU", "right"),
                          ("MFU %", "right"), ("a2a s", "right"), ("drop %", "right"), ("days P50", "right"),
                          ("GPU-h", "right"), ("GPU $", "right"), ("fabric $", "right"), ("$/M tok", "right"),
                          ("MWh", "right"), ("ranks", "left")):
        t.add_column(name, justify=justify, no_wrap=name != "variant")
    for r in rows:
        if r.get("status") != "ok":
            t.add_row("-", r["variant"], f"[red]{r.get('error_type') or 'error'}[/red]", *[""] * 11)
            continue
        a2a = (r.get("a2a_dispatch_s") or 0.0) + (r.get("a2a_combine_s") or 0.0)
        ranks = "/".join(str(r.get(c) or "-") for c in RANKS)
        t.add_row(str(r.get("rank") or "-"), r["variant"], _fmt(r.get("step_time_s"), ".3f"),
                  _fmt(r.get("tokens_per_s_per_gpu"), ",.0f"), _fmt(r.get("mfu"), ".1f", 100), _fmt(a2a, ".3f"),
                  _fmt(r.get("dropped_token_fraction"), ".2f", 100), _fmt(r.get("time_to_train_days_p50"), ".2f"),
                  _fmt(r.get("gpu_hours"), ",.0f"), _fmt(r.get("cost_usd"), ",.0f"),
                  _fmt(r.get("fabric_capex_usd"), ",.0f"), _fmt(r.get("usd_per_million_tokens"), ".4f"),
                  _fmt(r.get("energy_mwh"), ".1f"), ranks)
    return t
