"""docs/claims.md, DIR/claims.parquet and the plots, all from the ClaimResults of one run."""

from __future__ import annotations

import math
import os
from pathlib import Path

from simmoe.atomic import atomic_write, string_metadata, write_parquet_atomic
from simmoe.claims.result import ClaimResult

PARQUET_COLUMNS = ("claim", "title", "verdict", "metric", "value", "unit", "note", "mode")


def _fmt(v: float, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if unit == "USD":
        return f"${v / 1e6:.3g}M" if abs(v) >= 1e6 else f"${v / 1e3:.3g}K"
    if unit in ("", "of compute", "of assignments") and abs(v) < 10:
        return f"{v:.3g}"
    return f"{v:,.4g}" + (f" {unit}" if unit else "")


def _cell(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 1e6:
        return f"{v:.4g}"
    return str(v)


def markdown(results: list[ClaimResult], *, mode: str, command: str, wall_s: float, version: str) -> str:
    lines = [
        "# Rules of thumb about MoE training cost, put to the test",
        "",
        f"Written by `{command}` (simmoe {version}, {mode} mode, {wall_s:.0f} s); do not edit by hand: every number "
        "and verdict below comes from that run. Each claim is defined in `scenarios/claims/sweeps/cNN-*.yaml` (its "
        "inputs, sweeps, tolerances and assumptions) and computed by `simmoe/claims/` with simmoe's own engine, "
        "forecast, routing, workload, memory and network code. The verdict is derived from the numbers by the rule "
        "printed under each claim. Numbers move as the engine and its calibration improve: re-run the command.",
        "",
        "| # | claim | simmoe computes | verdict |",
        "|---|---|---|---|",
    ]
    for r in results:
        key = r.headline or "; ".join(f"{m.name} = {_fmt(m.value, m.unit)}" for m in r.metrics[:3])
        lines.append(f"| {r.number} | {r.title} | {key} | **{r.verdict}** |")
    lines.append("")
    for r in results:
        lines += [f"## {r.number}. {r.title}", "", f"> {r.claim}", "",
                  (f"**Verdict: {r.verdict}** {r.finding}." if r.verdict == "holds only when"
                   else f"**Verdict: {r.verdict}.** {r.finding[:1].upper()}{r.finding[1:]}."), ""]
        lines += ["| number | value | note |", "|---|---|---|"]
        lines += [f"| {m.name} | {_fmt(m.value, m.unit)} | {m.note} |" for m in r.metrics]
        lines.append("")
        if r.table:
            cols = list(dict.fromkeys(k for row in r.table for k in row))
            lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in cols) + " |" for row in r.table]
            lines.append("")
        if r.plot:
            lines += [f"![claim {r.number}]({r.plot})", ""]
        lines += [f"Rule: {r.rule}.", ""]
        if r.assumptions:
            lines += ["Assumptions: " + "; ".join(r.assumptions) + ".", ""]
        lines += ["Files: " + ", ".join(f"`{s}`" for s in r.sources) + f". Computed in {r.wall_s:.1f} s.", ""]
    lines += ["## Running it", "",
              "```", "simmoe claims            # full run: writes docs/claims.md, docs/img/claims-*.png, "
              "results/claims/claims.parquet",
              "simmoe claims --quick    # a few minutes on 2 cores: fewer steps and draws, analytical network where "
              "the claim is not about the network, step times extrapolated from two reduced micro-batch counts",
              "simmoe claims --only 7 12 --json", "```", "",
              "The full run takes tens of minutes on 2 cores (the DeepSeek-V3 and Kimi K2 forecasts dominate). "
              "`claims.parquet` has one row per number: claim, title, verdict, metric, value, unit, note, mode.", ""]
    return "\n".join(lines)


def write_text_atomic(path: Path, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text), binary=False)


def write_parquet(results: list[ClaimResult], path: Path, *, mode: str, metadata: dict[str, str]) -> Path:
    import pyarrow as pa

    rows = [(r.number, r.title, r.verdict, m.name, float(m.value), m.unit, m.note, mode)
            for r in results for m in r.metrics]
    cols = list(zip(*rows)) if rows else [[] for _ in PARQUET_COLUMNS]
    types = [pa.int64(), pa.string(), pa.string(), pa.string(), pa.float64(), pa.string(), pa.string(), pa.string()]
    schema = pa.schema([pa.field(c, t) for c, t in zip(PARQUET_COLUMNS, types)],
                       metadata=string_metadata(metadata))
    table = pa.Table.from_arrays([pa.array(list(c), type=t) for c, t in zip(cols, types)], schema=schema)
    write_parquet_atomic(table, path)
    return path


# --------------------------------------------------------------------------- plots


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.4), dpi=90)
    return plt, fig, ax


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_capacity(r: ClaimResult, path: Path) -> None:
    plt, fig, ax = _figure()
    for setting in dict.fromkeys(row["setting"] for row in r.table):
        pts = [row for row in r.table if row["setting"] == setting]
        ax.plot([p["expert_load_max_over_mean"] for p in pts], [100 * p["dropped_fraction"] for p in pts], "o-",
                label=setting)
    ax.axhspan(3, 7, color="0.85", label="claimed ~5%")
    ax.set_xlabel("expert load max / mean (router skew)")
    ax.set_ylabel("dropped assignments, %")
    ax.set_title("Capacity factor 1.25: drops vs skew", fontsize=10)
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def plot_bandwidth(r: ClaimResult, path: Path) -> None:
    plt, fig, ax = _figure()
    for lay in dict.fromkeys(row["layout"] for row in r.table):
        pts = [row for row in r.table if row["layout"] == lay]
        ax.plot([p["gbps_per_gpu"] for p in pts], [p["step_time_s"] for p in pts], "o-", label=lay)
    ax.axvline(300, color="0.5", ls="--", label="claimed threshold")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("cross-node bandwidth per GPU, Gb/s")
    ax.set_ylabel("step time, s")
    ax.set_title("50B-total MoE, 128 H100: where experts should live", fontsize=10)
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def plot_flop_share(r: ClaimResult, path: Path) -> None:
    plt, fig, ax = _figure()
    ax.plot([row["global_batch"] for row in r.table], [100 * row["share_of_speedup"] for row in r.table], "o-",
            label="simmoe")
    ax.axhspan(60, 70, color="0.85", label="claimed 60-70%")
    ax.set_xlabel("global batch, sequences of 4096")
    ax.set_ylabel("share of theoretical speed-up, %")
    ax.set_title("1.5T 64-expert top-2 MoE on 256 GB200", fontsize=10)
    ax.legend(fontsize=8)
    _save(plt, fig, path)


PLOTS = {4: ("claims-04-flop-share.png", plot_flop_share), 7: ("claims-07-capacity.png", plot_capacity),
         9: ("claims-09-bandwidth.png", plot_bandwidth)}


def draw_plots(results: list[ClaimResult], img_dir: Path, doc_dir: Path) -> None:
    """Draw the plots that say it better; each result's ``plot`` becomes the path relative to doc_dir."""
    for r in results:
        if r.number in PLOTS and r.table:
            name, fn = PLOTS[r.number]
            fn(r, img_dir / name)
            r.plot = os.path.relpath(img_dir / name, doc_dir)
