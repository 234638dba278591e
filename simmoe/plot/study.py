"""study.parquet -> ranked bars: $ per million tokens (GPU-hours and fabric capex stacked), time to
train and energy, variants in rank order (best on top)."""

from __future__ import annotations

import numpy as np

from simmoe.plot.common import PALETTE, pyplot


def plot_study(table, meta: dict[str, str]):  # noqa: ANN001
    plt = pyplot()
    rows = table.to_pylist()
    ok = [r for r in rows if r.get("status") == "ok" and r.get("usd_per_million_tokens") is not None]
    failed = [r for r in rows if r not in ok]
    ok.sort(key=lambda r: (r["rank"] if r.get("rank") is not None else 10**9))
    names = [f"{r['rank']}. {r['variant']}" for r in ok] + [f"-. {r['variant']} (failed)" for r in failed]
    n = len(names)
    y = np.arange(n)
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.45 * n + 1.8), sharey=True)

    def vals(col: str, src: list) -> np.ndarray:
        return np.array([np.nan if r.get(col) is None else r[col] for r in src], float)

    pad = np.full(len(failed), np.nan)
    per_tok = vals("usd_per_million_tokens", ok)
    fabric_share = vals("fabric_capex_usd", ok) / vals("total_cost_usd", ok)
    gpu_part = np.concatenate([per_tok * (1 - fabric_share), pad])
    fab_part = np.concatenate([per_tok * fabric_share, pad])
    ax = axes[0]
    ax.barh(y, gpu_part, color=PALETTE[0], label="GPU-hours")
    ax.barh(y, fab_part, left=gpu_part, color=PALETTE[1], label="fabric capex (amortized)")
    ax.set_xlabel("USD per million tokens")
    ax.set_title("$ per trained token")
    ax.legend(fontsize=8, loc="upper right")
    for ax, col, title, colour in ((axes[1], "time_to_train_days_p50", "time to train, P50 (days)", PALETTE[2]),
                                   (axes[2], "energy_mwh", "energy (MWh, PUE included)", PALETTE[3])):
        v = np.concatenate([vals(col, ok), pad])
        ax.barh(y, v, color=colour)
        if col == "time_to_train_days_p50":
            lo = np.concatenate([vals("time_to_train_days_p10", ok), pad])
            hi = np.concatenate([vals("time_to_train_days_p90", ok), pad])
            err = np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])
            ax.errorbar(v, y, xerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=3, linewidth=1)
        ax.set_xlabel(title)
        ax.set_title(title.split(" (")[0])
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()  # rank 1 on top
    for ax in axes:
        ax.grid(alpha=0.3, axis="x")
    by = meta.get("simmoe.study.rank_by", "usd_per_million_tokens")
    fig.suptitle(f"study {meta.get('simmoe.study.name', '')}: variants ranked by {by}", fontsize=11)
    fig.tight_layout()
    return fig
