"""forecast.parquet -> the distribution of time to train over Monte Carlo samples, P10/P50/P90 marked."""

from __future__ import annotations

import numpy as np

from simmoe.plot.common import PALETTE, column, pyplot


def plot_forecast(table, meta: dict[str, str]):  # noqa: ANN001
    plt = pyplot()
    kinds = column(table, "kind")
    days = np.array(column(table, "time_to_train_days"), float)
    cost = np.array(column(table, "cost_usd"), float)
    samples = days[[k == "sample" for k in kinds]]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if len(samples) >= 8:
        ax.hist(samples, bins=min(30, max(5, len(samples) // 2)), color=PALETTE[0], alpha=0.75,
                edgecolor="white", label=f"{len(samples)} samples")
        ax.set_ylabel("samples")
    else:  # too few for a histogram: one tick per sample
        ax.plot(samples, np.zeros_like(samples), "|", markersize=40, color=PALETTE[0],
                label=f"{len(samples)} samples")
        ax.set_yticks([])
        ax.set_ylabel("samples (one tick each)")
    styles = {"p10": ("--", PALETTE[2]), "p50": ("-", PALETTE[3]), "p90": ("--", PALETTE[1])}
    for kind, (ls, colour) in styles.items():
        sel = [k == kind for k in kinds]
        if any(sel):
            d = float(days[sel][0])
            c = float(cost[sel][0])
            ax.axvline(d, linestyle=ls, color=colour, linewidth=2,
                       label=f"{kind.upper()}: {d:.3g} days, {c:,.0f} USD")
    ax.set_xlabel("time to train (days, failures and checkpoints included)")
    lo, hi = float(np.nanmin(days)), float(np.nanmax(days))
    pad = max((hi - lo) * 0.15, hi * 0.002, 1e-9)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_title(f"{meta.get('scenario_name') or 'forecast'}: time to train over routing draws")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig
