"""`simmoe validate`: run the validation suite against published measurements (docs/validation.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from simmoe.errors import SimmoeError

EXIT_OUTSIDE = 1
EXIT_INPUT = 2
DEFAULT_OUT = Path("results") / "validation"


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "USD":
        return f"${value:,.0f}"
    a = abs(value)
    if a >= 1e4:
        return f"{value:,.0f}"
    if a >= 100:
        return f"{value:.1f}"
    return f"{value:#.3g}" if a < 1 else f"{value:.2f}"


_STYLE = {"within": "green", "outside": "bold red", "known_gap": "red", "error": "bold red", "info": "dim"}
_WITHIN = {"within": "yes", "outside": "NO", "known_gap": "NO (known gap)", "error": "ERROR", "info": "info"}


def print_table(rows, *, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=160)
    table = Table(title="simmoe validate: published vs simulated", show_lines=False)
    for name, justify in (("case", "left"), ("metric", "left"), ("unit", "left"), ("published", "right"),
                          ("simulated", "right"), ("error %", "right"), ("tolerance", "right"),
                          ("within", "left")):
        table.add_column(name, justify=justify, no_wrap=name in ("case", "within"))
    previous = None
    for r in rows:
        tol = "-" if r.tolerance_pct is None else f"±{r.tolerance_pct:g}%"
        err = "-" if r.error_pct is None else f"{r.error_pct:+.1f}"
        table.add_row(r.case_id if r.case_id != previous else "", r.label, r.unit, _fmt(r.published, r.unit),
                      _fmt(r.simulated, r.unit), err, tol, _WITHIN[r.status], style=_STYLE[r.status])
        previous = r.case_id
    console.print(table)


def validate(only: list[str] | None = None, fast: bool = False, out: str | None = None,
             as_json: bool = False, progress: bool = True) -> tuple[list, Path]:
    """Load, run, write; returns the rows and the Parquet path."""
    from simmoe.validation import load_cases, metadata, run_cases, write_validation_parquet

    wanted = [x for item in (only or []) for x in str(item).split(",") if x]
    cases = load_cases(only=wanted or None, fast=fast)

    def say(case) -> None:
        if progress and not as_json:
            typer.echo(f"running {case.id} ...", err=True)

    rows = run_cases(cases, progress=say)
    path = write_validation_parquet(rows, Path(out or DEFAULT_OUT) / "validation.parquet",
                                    metadata(only=wanted, fast=fast, steps=None))
    return rows, path


def validate_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON on stdout.")] = False,
    out: Annotated[Optional[str], typer.Option("--out", help="Output folder (default results/validation/).")] = None,
    only: Annotated[Optional[list[str]], typer.Option(
        "--only", metavar="ID", help="Run only this case (repeatable, or comma-separated).")] = None,
    fast: Annotated[bool, typer.Option("--fast", help="Run only the cases marked fast (what CI runs).")] = False,
) -> None:
    """Compare simmoe with published measurements; write DIR/validation.parquet. Exit status 1
    when a case falls outside its tolerance, 2 for bad input."""
    from simmoe.results import dumps_json
    from simmoe.validation import all_within, rows_as_dicts
    from simmoe.validation.targets import format_targets, targets

    try:
        rows, path = validate(only=only, fast=fast, out=out, as_json=as_json)
    except SimmoeError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_INPUT) from None
    ok = all_within(rows)
    goals = targets(rows)
    if as_json:
        typer.echo(dumps_json({"all_within": ok, "validation_parquet": str(path), "rows": rows_as_dicts(rows),
                               "targets": [t.as_dict() for t in goals]}))
    else:
        print_table(rows)
        outside = sorted({r.case_id for r in rows if r.within is False})
        typer.echo(f"wrote {path}")
        for line in format_targets(goals, subset=bool(only) or fast):
            typer.echo(line)
        typer.echo("all cases within tolerance" if ok else f"outside tolerance: {', '.join(outside)}")
    if not ok:
        sys.stdout.flush()
        raise typer.Exit(EXIT_OUTSIDE)


def register(app: typer.Typer) -> None:
    app.command("validate")(validate_cmd)
