"""`simmoe study topology STUDY.yaml`: one workload across named variants, simulated, forecast,
ranked by $ per token (fabric capex included), time to train and energy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from simmoe.errors import InputError, SimmoeError

EXIT_INPUT = 2
EXIT_STOPPED = 1

study_app = typer.Typer(help="Compare variants of one workload (fabrics, placements, ...): docs/study.md.",
                        no_args_is_help=True)


@study_app.command("topology")
def topology(
    study_file: Annotated[Path, typer.Argument(help="Study file (docs/study.md).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Results folder (default results/<study name>/).")] = None,
    steps: Annotated[Optional[int], typer.Option(
        "--steps", help="Steps simulated per sample (sets simulation.steps for every variant).")] = None,
    samples: Annotated[Optional[int], typer.Option(
        "--samples", help="Monte Carlo samples per variant (default: the study's forecast.samples, else 3).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Worker processes (default: usable cores).")] = None,
    executor: Annotated[str, typer.Option("--executor", help="local, serial or dask://HOST:PORT.")] = "local",
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="Run failed variants again.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the ranked rows as JSON on stdout.")] = False,
) -> None:
    """Simulate and forecast each variant (resumable), add fabric capex, rank; write DIR/study.parquet."""
    import sys

    from simmoe.study import run_study

    if executor != "local" and workers is not None:
        typer.echo(f"error: --workers applies to --executor local, not {executor}", err=True)
        raise typer.Exit(EXIT_INPUT)
    try:
        outcome = run_study(study_file, out, executor=executor, workers=workers, steps=steps, samples=samples,
                            progress=not as_json and sys.stderr.isatty(), retry_errors=retry_errors)
    except InputError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_INPUT) from None
    except SimmoeError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_STOPPED) from None
    if as_json:
        from simmoe.results import dumps_json

        typer.echo(dumps_json(outcome.to_dict()))
        return
    from rich.console import Console

    from simmoe.study.table import render_table

    spec = outcome.spec
    console = Console(width=max(Console().width, 160))
    console.print(render_table(outcome.rows, title=f"study {spec.name}: {spec.description}".strip(": "),
                               rank_by=spec.rank_by))
    for r in outcome.rows:
        if r.get("status") != "ok":
            console.print(f"variant {r['variant']} failed: {r.get('error_type')}: {r.get('error')}", highlight=False)
    for path, cap in outcome.capex.items():
        inv = cap.inventory
        layers = ", ".join(f"{n} {k}" for k, n in inv.switches_by_layer().items())
        console.print(f"fabric {inv.topology}: {layers}; {inv.nic_count} NICs; {inv.link_count} cables; "
                      f"capex {cap.total_usd:,.0f} USD (switches {cap.switches_usd:,.0f}, NICs {cap.nics_usd:,.0f}, "
                      f"cables+optics {cap.links_usd:,.0f})", highlight=False)
    console.print(f"{outcome.sweep.ran} variants run now, {outcome.sweep.skipped} reused; wrote {outcome.path}",
                  highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(study_app, name="study")
