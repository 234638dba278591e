"""`simmoe sweep SWEEP.yaml`: run a grid of scenario variations, resumably, and write one dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from simmoe.errors import InputError, SimmoeError

EXIT_INPUT = 2  # bad sweep file or option, as every sub-command
EXIT_STOPPED = 1  # the sweep could not go on (a dead worker, a locked folder); finished points are saved


def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep file (docs/sweep.md).")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Results folder (default: results/<sweep name>/).")] = None,
    executor: Annotated[str, typer.Option(
        "--executor",
        help="local (process pool), serial, or dask://HOST:PORT (an existing Dask scheduler).")] = "local",
    workers: Annotated[Optional[int], typer.Option(
        "--workers", help="Worker processes of the local executor (default: the usable cores).")] = None,
    evaluator: Annotated[str, typer.Option(
        "--evaluator", help="What computes a point: engine (simulate), derived (layout only, fast), "
                            "or package.module:function (docs/sweep.md).")] = "engine",
    retry_errors: Annotated[bool, typer.Option(
        "--retry-errors", help="Run points that failed in an earlier run again.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON on stdout.")] = False,
) -> None:
    """Run a grid of scenario variations in parallel; resumable; one Parquet dataset.

    Each point (base scenario + set + one combination of the grid) not already in the results
    folder runs; each result is saved as it completes, so an interrupted sweep resumes where it
    stopped. Writes DIR/points/<key>.parquet and DIR/sweep.parquet (one row per point)."""
    from simmoe.sweep import run_sweep

    if executor != "local" and workers is not None:
        typer.echo(f"error: --workers applies to --executor local, not {executor}", err=True)
        raise typer.Exit(EXIT_INPUT)
    try:
        outcome = run_sweep(sweep_file, out, executor=executor, workers=workers, evaluator=evaluator,
                            retry_errors=retry_errors, progress=progress)
    except InputError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_INPUT) from None
    except SimmoeError as err:  # SweepError and the like
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_STOPPED) from None
    summary = outcome.to_dict()
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    typer.echo(f"sweep {outcome.name}: {outcome.points} points, {outcome.ran} run now, {outcome.skipped} already "
               f"done; {outcome.ok} ok, {len(outcome.errors)} failed ({outcome.elapsed_s:.1f} s)")
    for err in outcome.errors[:10]:
        values = ", ".join(f"{k}={v!r}" for k, v in err["values"].items())
        typer.echo(f"  point {err['index']} ({values}): {err['error_type']}: {err['error']}")
    if len(outcome.errors) > 10:
        typer.echo(f"  ... and {len(outcome.errors) - 10} more (status and error columns of the dataset)")
    typer.echo(f"  dataset: {outcome.dataset}")


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
