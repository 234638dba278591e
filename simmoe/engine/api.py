"""Simulate a scenario's steps: memory check first, then one independent SimPy run per step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import yaml

from simmoe.errors import SimmoeError
from simmoe.results import StepRecord, step_record


class InfeasibleScenario(SimmoeError):
    """The scenario does not fit in GPU memory; it is reported, never simulated."""

    def __init__(self, breakdown) -> None:
        self.breakdown = breakdown
        g = breakdown.gib()
        parts = ", ".join(f"{k} {g[k]:.1f}" for k in ("parameters", "gradients", "optimizer",
                                                       "activations", "a2a_buffers", "reserve"))
        super().__init__(
            f"does not fit in GPU memory: pipeline rank {breakdown.pp_rank} needs "
            f"{g['total']:.1f} GiB of {g['hbm']:.1f} GiB ({parts} GiB); try more pipeline or "
            f"expert parallelism, activation recompute, a higher ZeRO stage or a smaller micro_batch")


@dataclass
class RunResult:
    records: list[StepRecord]
    metadata: dict[str, str]
    last: object  # StepResult of the last simulated step (its timeline feeds --trace)
    memory: object | None  # simmoe.memory.MemoryBreakdown (None for a dense scenario it cannot read)


def scenario_yaml(scenario) -> str:
    """The resolved scenario as YAML (what goes into the Parquet metadata)."""
    data = scenario.model_dump(mode="json", exclude_none=False)
    return yaml.safe_dump(data, sort_keys=False)


def check_memory(scenario):
    """simmoe.memory's breakdown; raises InfeasibleScenario when it does not fit."""
    from simmoe.memory import memory_breakdown

    mem = memory_breakdown(scenario)
    if mem.fits is False:
        raise InfeasibleScenario(mem)
    return mem


def simulate(scenario, *, seed: int | None = None, steps: int | None = None,
             calibration: str | None = None, programs=None, reduce: bool = True,
             progress: Callable[[int, int], None] | None = None) -> RunResult:
    """Simulate ``steps`` recorded steps (default ``simulation.steps``), numbered from
    ``simulation.warmup_steps``: steps carry no state from one to the next, so warm-up steps are
    not re-simulated, only skipped in numbering (routing drift still sees the true step index)."""
    from simmoe import __version__
    from simmoe.engine.runner import Simulation

    mem = check_memory(scenario)
    seed = scenario.simulation.seed if seed is None else int(seed)
    n = scenario.simulation.steps if steps is None else int(steps)
    compute = None
    gpu = scenario.gpu_model
    if calibration is not None:
        from simmoe.calibration.model import load_compute_model

        compute = load_compute_model(gpu, calibration, comm_sms=scenario.parallelism.comm_sms)
    sim = Simulation(scenario, seed=seed, programs=programs, compute=compute, reduce=reduce)
    first = scenario.simulation.warmup_steps
    records, last = [], None
    peak = mem.total_bytes / 2**30 if mem is not None else float("nan")
    for i in range(n):
        last = sim.run_step(first + i)
        records.append(step_record(sim, last, peak_memory_gib=peak))
        if progress is not None:
            progress(i + 1, n)
    meta = {
        "simmoe_version": __version__,
        "scenario_yaml": scenario_yaml(scenario),
        "scenario_name": scenario.name or "",
        "seed": str(seed),
        "calibration_id": sim.compute.identifier,
        "fidelity": sim.fidelity,
        "network_model": "coflow" if sim.coflow else "flow",
        "reduced": str(reduce).lower(),
        "schema": "simmoe.results.StepRecord v1",
        "compute_note": extrapolation_note(sim.compute.describe()),
    }
    return RunResult(records, meta, last, mem)


def extrapolation_note(compute: dict) -> str:
    """A caution when the roofline runs on a GPU none of its measurements came from ("" otherwise):
    its rates are then datasheet-scaled, which docs/validation.md found optimistic on Blackwell."""
    anchors = compute.get("anchored_on")
    if compute.get("kind") != "roofline" or not anchors or compute.get("device") in anchors:
        return ""
    return (f"roofline extrapolated to {compute['device']} by datasheet peaks from measurements on "
            f"{', '.join(anchors)}; see docs/validation.md (B200/GB200 rows) for how far that held, "
            "or pass --calibration with a profile measured on this GPU")
