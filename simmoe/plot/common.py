"""Shared plotting helpers: the lazy Agg import, reading a results file, colours."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# A colour-blind-safe palette (Okabe-Ito), one colour per component everywhere.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def read_table(path: str | Path) -> tuple[Any, dict[str, str]]:
    """(pyarrow Table, string metadata) of a Parquet file."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return table, meta


def column(table, name: str) -> list:  # noqa: ANN001
    return table.column(name).to_pylist()


def label_of(name: str) -> str:
    """A readable axis label for a column name, its unit from the name: step_time_s_mean ->
    "step time, mean (s)"."""
    units = {"s": "s", "days": "days", "usd": "USD", "mwh": "MWh", "gib": "GiB"}
    stats = ("mean", "p10", "p50", "p90")
    parts = name.split(".")[-1].split("_")
    stat = parts.pop() if len(parts) > 1 and parts[-1] in stats else None
    unit = units[parts.pop()] if len(parts) > 1 and parts[-1] in units else None
    text = " ".join(parts) + (f", {stat.upper() if stat != 'mean' else 'mean'}" if stat else "")
    return text + (f" ({unit})" if unit else "")
