"""`simmoe check SCENARIO`: validate a scenario and print it fully resolved, with derived values."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
import yaml

from simmoe.errors import SimmoeError


def resolved_view(scenario) -> dict:  # noqa: ANN001 - Scenario, imported lazily
    """The resolved scenario as plain data, plus what the loader derived from it."""
    data = scenario.model_dump(mode="json")
    data["derived"] = scenario.derived()
    return data


def check(
    scenario: Annotated[str, typer.Argument(help="Scenario file, or a name in scenarios/ (e.g. deepseek-v3-h800) or 'default'.")],
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", metavar="KEY=VALUE", help="Override a field (dotted path; value read as YAML). Repeatable.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
) -> None:
    """Validate a scenario and print it resolved (extends and overrides applied, dp and nodes
    filled in) with derived values: GPUs, dp, edp, micro-batches per step, layers per stage."""
    from simmoe.config import load_scenario

    try:
        loaded = load_scenario(scenario, set_ or None)
    except SimmoeError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    view = resolved_view(loaded)
    if as_json:
        typer.echo(json.dumps(view, indent=2))
    else:
        typer.echo(f"# {loaded.source_file}: valid")
        typer.echo(yaml.safe_dump(view, sort_keys=False, default_flow_style=False, width=100), nl=False)


def register(app: typer.Typer) -> None:
    app.command("check")(check)
