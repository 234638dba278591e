"""`simmoe plot RESULTS`: a PNG of a steps, sweep, forecast or study Parquet file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from simmoe.errors import SimmoeError

EXIT_INPUT = 2


def plot(
    results: Annotated[Path, typer.Argument(help="steps/sweep/forecast/study .parquet, or a results folder.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="PNG to write (default: beside RESULTS, .png).")] = None,
    kind: Annotated[str, typer.Option(
        "--kind", help="auto (from the file), breakdown, sweep, heatmap, forecast or study.")] = "auto",
    metric: Annotated[Optional[str], typer.Option(
        "--metric", help="Sweep plots: the column to plot (default step_time_s_mean when present).")] = None,
) -> None:
    """Plot a results file (docs/plot.md): step breakdown, sweep line or heatmap, forecast
    distribution with P10/P50/P90, or a study's ranked bars."""
    from simmoe.plot import save_plot

    try:
        dest = save_plot(results, out, kind, metric)
    except SimmoeError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_INPUT) from None
    typer.echo(f"wrote {dest}")


def register(app: typer.Typer) -> None:
    app.command("plot")(plot)
