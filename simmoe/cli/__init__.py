"""The `simmoe` command line. It only parses, calls and prints; each sub-command lives in its own
module and registers itself on the shared Typer app."""

from __future__ import annotations

import sys

import typer

from simmoe.errors import SimmoeError

app = typer.Typer(
    name="simmoe",
    help="Simulate distributed Mixture-of-Experts training: step time, cost, energy and what-ifs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Simulate distributed Mixture-of-Experts training: step time, cost, energy and what-ifs."""


@app.command("version")
def version() -> None:
    """Print simmoe's version."""
    from simmoe import __version__

    print(__version__)


def _register_all() -> None:
    # Imported here so `simmoe --help` stays fast and each module stays independent.
    from simmoe.cli import calibrate, check, claims, collective, forecast, plot, run, study, sweep, topo, validate

    for module in (check, topo, collective, calibrate, run, sweep, forecast, validate, study, plot, claims):
        module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point. Input errors print one sentence and exit with status 2."""
    _register_all()
    try:
        app(args=argv)  # standalone: usage errors print and exit on their own
    except SimmoeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
