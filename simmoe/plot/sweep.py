"""sweep.parquet -> a metric against the swept fields: a line (one field, or more: one line per
combination of the others) or a heatmap (two fields)."""

from __future__ import annotations

import json
import math

import numpy as np

from simmoe.errors import InputError
from simmoe.plot.common import PALETTE, column, label_of, pyplot

PREFERRED_METRICS = ("step_time_s_mean", "usd_per_million_tokens", "mfu_mean", "time_to_train_days_p50")
MAX_LINES = 8


def swept_fields(meta: dict[str, str]) -> list[str]:
    return list(json.loads(meta.get("simmoe.sweep.grid", "{}")))


def pick_metric(table, fields: list[str], metric: str | None) -> str:  # noqa: ANN001
    from simmoe.sweep.store import HEAD_COLUMNS, STATUS_COLUMNS

    names = table.column_names
    numeric = [n for n in names if n not in (*HEAD_COLUMNS, *STATUS_COLUMNS, *fields)
               and str(table.schema.field(n).type) in ("double", "int64", "float")]
    if metric is not None:
        if metric not in numeric:
            raise InputError("is not a numeric metric of this sweep", field="--metric", value=metric,
                             allowed=", ".join(numeric) or "none (no finished points)")
        return metric
    for m in PREFERRED_METRICS:
        if m in numeric:
            return m
    if not numeric:
        raise InputError("the sweep has no numeric metric to plot (no finished points?)", field="RESULTS",
                         has_value=False, allowed="a sweep.parquet with at least one ok point")
    return numeric[0]


def _values(table, name: str, ok: np.ndarray) -> np.ndarray:  # noqa: ANN001
    v = np.array([np.nan if x is None else x for x in column(table, name)], float)
    v[~ok] = np.nan
    return v


def _order(values: list) -> list:
    uniq = list(dict.fromkeys(values))
    try:
        return sorted(uniq, key=lambda v: (v is None, v))
    except TypeError:
        return uniq


def _numeric_axis(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None)


def plot_sweep(table, meta: dict[str, str], metric: str | None = None):  # noqa: ANN001
    plt = pyplot()
    fields = swept_fields(meta) or [n for n in table.column_names if "." in n][:1]
    if not fields:
        raise InputError("cannot tell which fields were swept", field="RESULTS", has_value=False,
                         allowed="a sweep.parquet written by simmoe sweep")
    metric = pick_metric(table, fields, metric)
    ok = np.array([s == "ok" for s in column(table, "status")]) if "status" in table.column_names else \
        np.ones(table.num_rows, bool)
    y = _values(table, metric, ok)
    xs = column(table, fields[0])
    others = [column(table, f) for f in fields[1:]]
    groups: dict[tuple, list[int]] = {}
    for i in range(table.num_rows):
        groups.setdefault(tuple(o[i] for o in others), []).append(i)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    x_order = _order(xs)
    numeric = _numeric_axis(x_order)
    for j, (combo, idx) in enumerate(list(groups.items())[:MAX_LINES]):
        idx = sorted(idx, key=lambda i: x_order.index(xs[i]))
        px = [xs[i] if numeric else x_order.index(xs[i]) for i in idx]
        label = ", ".join(f"{f}={v}" for f, v in zip(fields[1:], combo)) or None
        ax.plot(px, y[idx], marker="o", color=PALETTE[j % len(PALETTE)], label=label)
    if not numeric:
        ax.set_xticks(range(len(x_order)), [str(v) for v in x_order], rotation=20)
    ax.set_xlabel(fields[0])
    ax.set_ylabel(label_of(metric))
    failed = int((~ok).sum())
    name = meta.get("simmoe.sweep.name", "sweep")
    ax.set_title(f"{name}: {label_of(metric)} vs {fields[0]}" + (f" ({failed} failed points)" if failed else ""))
    if len(groups) > 1:
        ax.legend(fontsize=8, title=None if len(groups) <= MAX_LINES else f"first {MAX_LINES} of {len(groups)}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_heatmap(table, meta: dict[str, str], metric: str | None = None):  # noqa: ANN001
    plt = pyplot()
    fields = swept_fields(meta)
    if len(fields) != 2:
        raise InputError(f"a heatmap needs exactly two swept fields, this sweep has {len(fields)}",
                         field="--kind", value="heatmap", allowed="--kind sweep (a line plot)")
    metric = pick_metric(table, fields, metric)
    ok = np.array([s == "ok" for s in column(table, "status")])
    y = _values(table, metric, ok)
    a, b = column(table, fields[0]), column(table, fields[1])
    rows, cols = _order(a), _order(b)
    grid = np.full((len(rows), len(cols)), np.nan)
    for i in range(table.num_rows):
        grid[rows.index(a[i]), cols.index(b[i])] = y[i]
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 3, 0.7 * len(rows) + 2.2))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), [str(v) for v in cols])
    ax.set_yticks(range(len(rows)), [str(v) for v in rows])
    ax.set_xlabel(fields[1])
    ax.set_ylabel(fields[0])
    finite = grid[np.isfinite(grid)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for r in range(len(rows)):
        for c in range(len(cols)):
            v = grid[r, c]
            text = "failed" if math.isnan(v) else f"{v:.3g}"
            ax.text(c, r, text, ha="center", va="center", fontsize=8,
                    color="white" if (not math.isnan(v) and v < mid) else "black")
    fig.colorbar(im, ax=ax, label=label_of(metric))
    ax.set_title(f"{meta.get('simmoe.sweep.name', 'sweep')}: {label_of(metric)}")
    fig.tight_layout()
    return fig
