"""Shared plumbing of the claim checks: where their files live, loading them, and running the
engine and the forecast at a claim's fidelity (quick or full)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from simmoe.errors import InputError
from simmoe.paths import SCENARIO_DIR

CLAIMS_DIR = SCENARIO_DIR / "claims"  # simmoe scenarios of the claims (each loads with simmoe check)
SPEC_DIR = CLAIMS_DIR / "sweeps"  # one claim definition per file: the claim's inputs, sweeps, tolerances
TOPOLOGY_DIR = SPEC_DIR / "topologies"


def load_spec(name: str) -> dict:
    """A claim definition (scenarios/claims/sweeps/NAME.yaml) as a mapping."""
    path = SPEC_DIR / f"{name}.yaml"
    if not path.is_file():
        raise InputError("claim definition not found", file=str(path), value=name,
                         allowed=f"a file in {SPEC_DIR}")
    with path.open() as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict) or "claim" not in data:
        raise InputError("a claim definition is a mapping with a 'claim' text", file=str(path), field="claim")
    return _numbers(data)


def _numbers(value):
    """PyYAML (YAML 1.1) reads 1.0e12 as a string; numbers written that way are numbers here."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def mode_value(value, quick: bool):
    """``{quick: a, full: b}`` picks by mode; anything else is the same in both."""
    if isinstance(value, dict) and set(value) == {"quick", "full"}:
        return value["quick" if quick else "full"]
    return value


@dataclass
class Context:
    """One `simmoe claims` run: the mode and what claims share (engine sources, forecasts)."""

    quick: bool = False
    out_dir: Path | None = None
    img_dir: Path | None = None
    cache: dict = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"


def scenario_path(name: str) -> Path:
    return CLAIMS_DIR / f"{name}.yaml"


def load_claim_scenario(name: str, overrides: Sequence[str] | dict | None = None):
    from simmoe.config import load_scenario

    return load_scenario(scenario_path(name), overrides or None)


# --------------------------------------------------------------------------- engine steps


class ReducedBatchSteps:
    """A forecast StepSource (simmoe.forecast.montecarlo.StepSource) over the engine that, for a
    batch of more than ``max(m_points)`` micro-batches per pipeline, simulates the same step
    indices at the two reduced micro-batch counts ``m_points`` and extrapolates every time column
    affinely in the micro-batch count m. Step time is affine in m for 1F1B-type schedules
    ((m + p - 1) slots, docs/engine.md), the forecast's own ramp interpolation rests on the same
    fact (docs/forecast.md). With ``m_points=None`` it is the plain engine. Records are cached
    per (global batch, step index), so claims that share a scenario share its simulations."""

    def __init__(self, scenario, *, seed: int, m_points: tuple[int, int] | None = None) -> None:  # noqa: ANN001
        from simmoe.forecast import EngineSteps
        from simmoe.forecast.shape import batch_increment_of

        self.scenario = scenario
        self.quantum = batch_increment_of(scenario)
        self.engine = EngineSteps(scenario, seed=seed)
        self.m_points = tuple(sorted(m_points)) if m_points else None
        self._cache: dict[tuple[int, int], object] = {}

    def _engine(self, global_batch: int, idx: Sequence[int]) -> list:
        missing = [int(i) for i in idx if (global_batch, int(i)) not in self._cache]
        if missing:
            for i, rec in zip(missing, self.engine.records(global_batch, missing)):
                self._cache[(global_batch, i)] = rec
        return [self._cache[(global_batch, int(i))] for i in idx]

    def records(self, global_batch: int, step_indices: Sequence[int]) -> list:
        m = global_batch / self.quantum
        if self.m_points is None or m <= self.m_points[1]:
            return self._engine(int(global_batch), step_indices)
        ma, mb = self.m_points
        ra = self._engine(ma * self.quantum, step_indices)
        rb = self._engine(mb * self.quantum, step_indices)
        return [extrapolate_record(a, b, ma, mb, m, global_batch * self.scenario.training.seq_len)
                for a, b in zip(ra, rb)]

    def full_batch_records(self) -> list:
        """Every record this source returned at the scenario's own batch (extrapolated or not)."""
        gb = self.scenario.training.global_batch
        m = gb / self.quantum
        if self.m_points is None or m <= self.m_points[1]:
            return [r for (b, _i), r in sorted(self._cache.items(), key=lambda kv: kv[0]) if b == gb]
        idx = sorted(i for (b, i) in self._cache if b == self.m_points[1] * self.quantum)
        return self.records(gb, idx)


_AFFINE = ("step_time_s", "expert_compute_s", "a2a_dispatch_s", "a2a_combine_s", "exposed_comm_s",
           "pipeline_bubble_s", "host_late_s", "dp_comm_s", "optimizer_s")


def extrapolate_record(a, b, ma: float, mb: float, m: float, tokens_per_step: float):  # noqa: ANN001
    """A StepRecord at m micro-batches from records at ma and mb: time columns affine in m; MFU
    and throughput from the extrapolated step time (model FLOPs per step are linear in m)."""
    w = (m - ma) / (mb - ma)
    vals = {c: getattr(a, c) + w * (getattr(b, c) - getattr(a, c)) for c in _AFFINE}
    vals["optimizer_s"] = b.optimizer_s  # once per step: does not grow with m
    t = vals["step_time_s"]
    gpus = b.tokens_per_s / b.tokens_per_s_per_gpu
    flops_per_mb = b.model_tflops_per_gpu * b.step_time_s / mb  # TFLOP per GPU per micro-batch
    tflops = flops_per_mb * m / t
    peak = b.model_tflops_per_gpu / b.mfu if b.mfu > 0 else math.inf
    return dataclasses.replace(b, tokens_per_s=tokens_per_step / t, tokens_per_s_per_gpu=tokens_per_step / t / gpus,
                               model_tflops_per_gpu=tflops, mfu=tflops / peak, **vals)


def m_points_for(scenario, points: Sequence[int] | None):  # noqa: ANN001
    """The two reduced micro-batch counts, raised to counts the schedule runs: multiples of pp for
    interleaved 1F1B; even and at least 2*pp for DualPipe."""
    from simmoe.engine.schedules import micro_batch_constraint

    if not points:
        return None
    p_ = scenario.parallelism
    minimum, multiple = micro_batch_constraint(p_.schedule, p_.pp, p_.schedule_micro_batches)
    step = math.lcm(p_.pp, multiple) if p_.schedule == "interleaved" else multiple
    ma, mb = (int(math.ceil(max(p, minimum) / step) * step) for p in sorted(points)[:2])
    return ma, max(mb, ma + step)


def engine_source(ctx: Context, name: str, overrides: Sequence[str] = (), m_points: Sequence[int] | None = None,
                  seed: int | None = None) -> ReducedBatchSteps:
    """The (cached) step source of a claims scenario under overrides."""
    key = ("source", name, tuple(overrides), tuple(m_points or ()), seed)
    if key not in ctx.cache:
        sc = load_claim_scenario(name, list(overrides))
        ctx.cache[key] = ReducedBatchSteps(sc, seed=sc.simulation.seed if seed is None else seed,
                                           m_points=m_points_for(sc, m_points))
    return ctx.cache[key]


def step_summary(source: ReducedBatchSteps, steps: int | None = None) -> dict:
    """simmoe.results.summarize over ``steps`` full-batch steps from the scenario's warm-up index."""
    from simmoe.results import summarize

    sc = source.scenario
    n = sc.simulation.steps if steps is None else steps
    first = sc.simulation.warmup_steps
    recs = source.records(sc.training.global_batch, list(range(first, first + n)))
    return summarize(recs)


def compute_s_of(summary: dict) -> float:
    """Seconds the critical rank computes in a step: step - exposed communication - bubble."""
    return summary["step_time_s_mean"] - summary["exposed_comm_s_mean"] - summary["pipeline_bubble_s_mean"]


def run_forecast(ctx: Context, name: str, overrides: Sequence[str] = (), *, samples: int = 1, steps: int = 1,
                 m_points: Sequence[int] | None = None):
    """simmoe.forecast.forecast of a claims scenario, its engine steps from :func:`engine_source`
    (cached per scenario). The forecast's own memory check is replaced by a recorded one
    (``memory_fits``): a published run that simmoe's memory model puts over HBM is still
    forecast, and the report says so."""
    from simmoe.forecast import forecast
    from simmoe.memory import memory_breakdown

    key = ("forecast", name, tuple(overrides), samples, steps, tuple(m_points or ()))
    if key not in ctx.cache:
        source = engine_source(ctx, name, overrides, m_points)
        sc = source.scenario
        mem = memory_breakdown(sc)
        seeds = {}

        def factory(seed: int):
            if seed == sc.simulation.seed:
                return source
            if seed not in seeds:
                seeds[seed] = engine_source(ctx, name, overrides, m_points, seed=seed)
            return seeds[seed]

        fc = forecast(sc, samples=samples, steps=steps, source_factory=factory)
        ctx.cache[key] = (fc, mem, source)
    return ctx.cache[key]
