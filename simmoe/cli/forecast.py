"""`simmoe forecast [SCENARIO]`: forecast a whole training run; write forecast.parquet."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from simmoe.cli.common import default_out_dir, load_named_scenario, progress_bar, scenario_label
from simmoe.errors import SimmoeError

EXIT_INPUT = 2
EXIT_INFEASIBLE = 3


def forecast_scenario(scenario_name: str | None, *, tokens: float | None = None, samples: int = 10,
                      steps: int | None = None, seed: int | None = None, out: str | None = None,
                      calibration: str | None = None, overrides: list[str] | None = None,
                      progress: bool = False) -> dict:
    """Load, forecast, write; returns the summary the command prints."""
    from simmoe.forecast import forecast, settings_of, write_forecast_parquet
    from simmoe.forecast.records import rows_as_dicts

    scenario_sets = list(overrides or [])
    if tokens is not None:
        scenario_sets.append(f"training.total_tokens={float(tokens)!r}")
    scenario = load_named_scenario(scenario_name, scenario_sets)
    settings = settings_of(scenario)
    name = scenario_label(scenario)
    out_dir = default_out_dir(out, scenario)
    with progress_bar(f"forecasting {name}", samples, "samples", enabled=progress) as update:
        result = forecast(scenario, samples=samples, steps=steps, seed=seed, settings=settings,
                          calibration=calibration, progress=update)
    path = write_forecast_parquet(result.rows, out_dir / "forecast.parquet", result.metadata)
    sh = result.shape
    summary = {"scenario": name, "gpus": scenario.gpus, "seed": int(result.metadata["seed"]),
               "samples": samples, "calibration_id": result.metadata["calibration_id"],
               "tokens": sh.tokens, "steps": sh.total_steps, "ramp_steps": sh.ramp_total_steps,
               "forecast_parquet": str(path)}
    for row in rows_as_dicts([r for r in result.rows if r.kind != "sample"]):
        kind = row.pop("kind")
        for k in ("sample", "seed", "tokens", "steps", "ramp_steps", "simulated_steps"):
            row.pop(k)
        summary[kind] = row
    return summary


def _print_summary(s: dict) -> None:
    def line(label: str, key: str, unit: str = "", scale: float = 1.0, digits: int = 4) -> None:
        vals = []
        for kind in ("p10", "p50", "p90"):
            v = s[kind].get(key)
            vals.append("n/a" if v is None or isinstance(v, str) else f"{v * scale:.{digits}g}")
        typer.echo(f"  {label:<16}{' / '.join(vals)}{unit}")

    typer.echo(f"{s['scenario']}: {s['tokens']:.4g} tokens in {s['steps']} steps ({s['ramp_steps']} in the batch "
               f"ramp) on {s['gpus']} GPUs, {s['samples']} samples (seed {s['seed']})")
    typer.echo("                  P10 / P50 / P90")
    line("time to train", "time_to_train_days", " days")
    line("step time", "step_time_s", " s")
    line("MFU", "mfu", "%", 100, 3)
    line("goodput", "goodput", "%", 100, 4)
    line("GPU-hours", "gpu_hours")
    line("cost", "cost_usd", " USD")
    line("energy", "energy_mwh", " MWh")
    line("CO2", "tco2e", " t")
    line("water", "water_l", " L")
    typer.echo(f"  wrote           {s['forecast_parquet']}")


def forecast_cmd(
    scenario: Annotated[Optional[str], typer.Argument(
        help="Scenario file or name (scenarios/, or 'default'). Omitted: the built-in default.")] = None,
    tokens: Annotated[Optional[float], typer.Option("--tokens", help="Tokens to train (default training.total_tokens).")] = None,
    samples: Annotated[int, typer.Option("--samples", min=1, help="Monte Carlo samples (engine runs, one seed each).")] = 10,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Steps simulated per sample and phase (default simulation.steps).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of sample 0 (default simulation.seed).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", help="Output folder (default results/<scenario name>/).")] = None,
    calibration: Annotated[Optional[str], typer.Option("--calibration", help="Calibration profile for the compute model.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", metavar="KEY=VALUE",
        help="Override a scenario field, or a forecast field (forecast.failures.restart_s=600). Repeatable.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Forecast a whole training run: time to train (P10/P50/P90), GPU-hours, dollars, energy, CO2
    and water, with failures and checkpoints; write DIR/forecast.parquet (docs/forecast.md)."""
    from simmoe.engine import InfeasibleScenario
    from simmoe.results import dumps_json

    try:
        summary = forecast_scenario(scenario, tokens=tokens, samples=samples, steps=steps, seed=seed, out=out,
                                    calibration=calibration, overrides=set_, progress=not as_json)
    except InfeasibleScenario as err:
        if as_json:
            typer.echo(json.dumps({"feasible": False, "error": str(err), "memory_gib": err.breakdown.gib()}, indent=2))
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_INFEASIBLE) from None
    except SimmoeError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_INPUT) from None
    if as_json:
        typer.echo(dumps_json(summary))
    else:
        _print_summary(summary)


def register(app: typer.Typer) -> None:
    app.command("forecast")(forecast_cmd)
