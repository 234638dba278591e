"""Which plot a results file gets, and drawing it."""

from __future__ import annotations

from pathlib import Path

from simmoe.errors import InputError

KINDS = ("auto", "breakdown", "sweep", "heatmap", "forecast", "study")
DEFAULT_NAMES = ("study.parquet", "sweep.parquet", "forecast.parquet", "steps.parquet")


def resolve_results(path: str | Path) -> Path:
    """A Parquet file, or a results folder holding exactly one of the known files."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in DEFAULT_NAMES if (path / n).is_file()]
        if len(found) != 1:
            raise InputError("the folder holds " + (f"{len(found)} results files ({', '.join(p.name for p in found)})"
                                                    if found else "no results file"),
                             field="RESULTS", value=str(path), allowed="one of its .parquet files")
        return found[0]
    if not path.is_file():
        raise InputError("no such file", field="RESULTS", value=str(path),
                         allowed="a steps, sweep, forecast or study .parquet file, or its folder")
    return path


def detect_kind(table, meta: dict[str, str]) -> str:  # noqa: ANN001
    """From the schema key simmoe writes, else from the columns."""
    schema = meta.get("schema", "")
    names = set(table.column_names)
    if schema.startswith("simmoe.study.") or "usd_per_million_tokens" in names and "variant" in names:
        return "study"
    if schema.startswith("simmoe.forecast.") or {"kind", "time_to_train_days"} <= names:
        return "forecast"
    if schema.startswith("simmoe.results.StepRecord") or {"step", "step_time_s", "expert_compute_s"} <= names:
        return "breakdown"
    if "simmoe.sweep.grid" in meta or {"point_index", "point_key", "status"} <= names:
        import json

        fields = json.loads(meta.get("simmoe.sweep.grid", "{}"))
        return "heatmap" if len(fields) == 2 and meta.get("simmoe.sweep.mode", "product") == "product" else "sweep"
    raise InputError("cannot tell what this file holds", field="RESULTS", has_value=False,
                     allowed="a steps.parquet, sweep.parquet, forecast.parquet or study.parquet written by simmoe")


def plot_results(path: str | Path, kind: str = "auto", metric: str | None = None):
    """The matplotlib Figure for a results file."""
    from simmoe.plot.common import read_table

    if kind not in KINDS:
        raise InputError("unknown plot kind", field="--kind", value=kind, allowed=", ".join(KINDS))
    path = resolve_results(path)
    try:
        table, meta = read_table(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a non-Parquet file
        raise InputError(f"not a readable Parquet file ({err})", field="RESULTS", value=str(path),
                         allowed="a .parquet file written by simmoe") from None
    if kind == "auto":
        kind = detect_kind(table, meta)
    if kind == "breakdown":
        from simmoe.plot.breakdown import plot_breakdown

        return plot_breakdown(table, meta)
    if kind == "forecast":
        from simmoe.plot.forecast import plot_forecast

        return plot_forecast(table, meta)
    if kind == "study":
        from simmoe.plot.study import plot_study

        return plot_study(table, meta)
    from simmoe.plot.sweep import plot_heatmap, plot_sweep

    return plot_heatmap(table, meta, metric) if kind == "heatmap" else plot_sweep(table, meta, metric)


def save_plot(path: str | Path, out: str | Path | None = None, kind: str = "auto", metric: str | None = None,
              dpi: int = 100) -> Path:
    """Draw and write a PNG (default: beside the results file, same stem). Returns its path."""
    src = resolve_results(path)
    fig = plot_results(src, kind, metric)
    dest = Path(out) if out is not None else src.with_suffix(".png")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(dest, dpi=dpi)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return dest
