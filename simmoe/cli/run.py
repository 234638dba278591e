"""`simmoe run [SCENARIO]`: simulate training steps, write steps.parquet (and a trace)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from simmoe.cli.common import default_out_dir, load_named_scenario, progress_bar, scenario_label
from simmoe.errors import SimmoeError

# Exit statuses: 2 = bad input (as every sub-command), 3 = the scenario does not fit in memory.
EXIT_INPUT = 2
EXIT_INFEASIBLE = 3


def run_scenario(scenario_name: str | None, *, out: str | None = None, seed: int | None = None,
                 steps: int | None = None, trace: str | None = None, calibration: str | None = None,
                 overrides: list[str] | None = None, progress: bool = False) -> dict:
    """Load, simulate, write; returns the summary the command prints."""
    from simmoe.engine import simulate
    from simmoe.results import summarize, write_steps_parquet
    from simmoe.trace import write_trace

    if calibration is not None:
        from simmoe.calibration.shipped import PREFIX, resolve_profile
        from simmoe.errors import InputError

        if not resolve_profile(calibration, field="--calibration").is_file():
            raise InputError("calibration profile not found", field="--calibration", value=calibration,
                             allowed=f"a calibration profile file, or {PREFIX}<GPU> (docs/calibration.md)")
    scenario = load_named_scenario(scenario_name, overrides)
    name = scenario_label(scenario)
    out_dir = default_out_dir(out, scenario)
    total = steps or scenario.simulation.steps
    with progress_bar(f"simulating {name}", total, "steps", enabled=progress) as update:
        result = simulate(scenario, seed=seed, steps=steps, calibration=calibration, progress=update)
    path = write_steps_parquet(result.records, out_dir / "steps.parquet", result.metadata)
    summary = {"scenario": name, "gpus": scenario.gpus, "seed": int(result.metadata["seed"]),
               "calibration_id": result.metadata["calibration_id"], "steps_parquet": str(path)}
    if result.metadata.get("compute_note"):
        summary["compute_note"] = result.metadata["compute_note"]
    summary.update(summarize(result.records))
    if trace is not None and result.last is not None:
        summary["trace"] = str(write_trace(result.last.timeline, trace, step=result.last.step,
                                           metadata={"scenario": name, "seed": summary["seed"]}))
    return summary


def _print_summary(s: dict) -> None:
    def fmt(key, unit="", scale=1.0, digits=3):
        v = s.get(key)
        return "n/a" if v is None else f"{v * scale:.{digits}g}{unit}"

    typer.echo(f"{s['scenario']}: {s['steps']} steps on {s['gpus']} GPUs (seed {s['seed']})")
    typer.echo(f"  step time      mean {fmt('step_time_s_mean', ' s')}, p50 {fmt('step_time_s_p50', ' s')}")
    typer.echo(f"  throughput     {fmt('tokens_per_s_per_gpu_mean', ' tokens/s/GPU', digits=4)}, "
               f"{fmt('model_tflops_per_gpu_mean', ' TFLOP/s/GPU')}, MFU {fmt('mfu_mean', '%', 100)}")
    typer.echo(f"  routing        dropped {fmt('dropped_token_fraction_mean', '%', 100)}, "
               f"expert load max/mean {fmt('expert_load_max_over_mean_mean')}")
    typer.echo(f"  critical rank  expert GEMMs {fmt('expert_compute_s_mean', ' s')}, "
               f"exposed comm {fmt('exposed_comm_s_mean', ' s')}, bubble {fmt('pipeline_bubble_s_mean', ' s')}")
    typer.echo(f"  memory         peak {fmt('peak_memory_gib', ' GiB')}")
    if s.get("compute_note"):
        typer.echo(f"  compute note   {s['compute_note']}")
    typer.echo(f"  wrote          {s['steps_parquet']}" + (f", {s['trace']}" if "trace" in s else ""))


def run(
    scenario: Annotated[Optional[str], typer.Argument(
        help="Scenario file or name (scenarios/, or 'default'). Omitted: the built-in default.")] = None,
    out: Annotated[Optional[str], typer.Option("--out", help="Output folder (default results/<scenario name>/).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed (default simulation.seed).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Steps to record (default simulation.steps).")] = None,
    trace: Annotated[Optional[str], typer.Option("--trace", help="Write a Chrome/Perfetto trace of the last step here.")] = None,
    calibration: Annotated[Optional[str], typer.Option(
        "--calibration", help="Calibration profile for the compute model: a file, or measured:H100-SXM / "
        "measured:H200-SXM (shipped).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", metavar="KEY=VALUE", help="Override a scenario field (dotted path; value read as YAML). Repeatable.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Simulate training steps of a scenario; write DIR/steps.parquet (docs/output.md)."""
    from simmoe.engine import InfeasibleScenario

    try:
        summary = run_scenario(scenario, out=out, seed=seed, steps=steps, trace=trace,
                               calibration=calibration, overrides=set_, progress=not as_json)
    except InfeasibleScenario as err:
        if as_json:
            typer.echo(json.dumps({"feasible": False, "error": str(err),
                                   "memory_gib": err.breakdown.gib()}, indent=2))
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_INFEASIBLE) from None
    except SimmoeError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_INPUT) from None
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
