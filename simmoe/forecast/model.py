"""A whole training run from simulated steps: time, GPU-hours, dollars, energy, CO2, water.

``forecast(scenario)`` = run shape (simmoe.forecast.shape) -> K Monte Carlo samples of the
failure-free time to train (simmoe.forecast.montecarlo, each an engine run with its own seed) ->
failures, costs and energy per sample (:func:`project`, pure) -> P10 / P50 / P90 rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from simmoe.errors import InputError
from simmoe.forecast import cost, energy, failures
from simmoe.forecast.montecarlo import SampleTime, StepSource, sample_time
from simmoe.forecast.records import ForecastRow, summary_rows
from simmoe.engine.schedules import micro_batch_constraint
from simmoe.forecast.settings import ForecastSettings, settings_of
from simmoe.forecast.shape import RunShape, batch_increment_of, run_shape_of

DEFAULT_SAMPLES = 10
DEFAULT_RAMP_POINTS = 2
IDLE_FRACTION_OF_TDP = 0.10  # assumption (docs/forecast.md): GPU idle power when forecast.power.gpu_idle_w is null
SCHEMA = "simmoe.forecast.ForecastRow v1"


@dataclass(frozen=True)
class ClusterFacts:
    """What :func:`project` needs to know about the job besides its time."""

    gpus: int
    nodes: int
    gpu_tdp_w: float
    price_per_gpu_hour_usd: float
    power_price_usd_per_kwh: float
    pue: float
    grid_kgco2_per_kwh: float
    water_l_per_kwh: float


def cluster_facts(scenario) -> ClusterFacts:  # noqa: ANN001 - Scenario
    from simmoe.hardware import gpu_spec

    gpus = scenario.gpus
    per_node = scenario.gpus_per_node
    gpu = scenario.gpu_model
    if gpu is None or per_node is None:
        raise InputError("the scenario's GPU model is unknown (load it with its topology)", field="cluster.topology",
                         value=scenario.cluster.topology, allowed="a scenario loaded with check_topology=True")
    c = scenario.costs
    return ClusterFacts(gpus=gpus, nodes=math.ceil(gpus / per_node), gpu_tdp_w=gpu_spec(gpu).tdp_W,
                        price_per_gpu_hour_usd=c.price_per_gpu_hour_usd,
                        power_price_usd_per_kwh=c.power_price_usd_per_kwh, pue=c.pue,
                        grid_kgco2_per_kwh=c.grid_kgco2_per_kwh, water_l_per_kwh=c.water_l_per_kwh)


def failure_terms(settings: ForecastSettings, facts: ClusterFacts) -> tuple[float, float]:
    """(M seconds, tau seconds): cluster MTBF and checkpoint interval (the Daly optimum unless set)."""
    f = settings.failures
    if not f.enabled:
        return math.inf, math.inf
    m = failures.cluster_mtbf_s(gpus=facts.gpus, nodes=facts.nodes, gpu_mtbf_s=f.gpu_mtbf_hours * 3600.0,
                                node_mtbf_s=f.node_mtbf_hours * 3600.0)
    tau = f.checkpoint_interval_s if f.checkpoint_interval_s is not None else \
        failures.daly_interval_s(f.checkpoint_write_s, m)
    return m, tau


def project(compute_s, busy_fraction, *, settings: ForecastSettings, facts: ClusterFacts) -> dict[str, np.ndarray]:
    """Failures, dollars, energy, CO2 and water from failure-free times (vectorised over samples).
    Returns the ForecastRow columns that follow from them."""
    f = settings.failures
    compute_s = np.asarray(compute_s, float)
    m, tau = failure_terms(settings, facts)
    delta = f.checkpoint_write_s if f.enabled else 0.0
    restart = f.restart_s if f.enabled else 0.0
    wall = failures.expected_wall_time_s(compute_s, interval_s=tau, checkpoint_write_s=delta, restart_s=restart,
                                         mtbf_s=m)
    idle_s = failures.idle_time_s(compute_s, wall, interval_s=tau, checkpoint_write_s=delta, restart_s=restart,
                                  mtbf_s=m)
    p = settings.power
    tdp = p.gpu_tdp_w if p.gpu_tdp_w is not None else facts.gpu_tdp_w
    idle_w = p.gpu_idle_w if p.gpu_idle_w is not None else IDLE_FRACTION_OF_TDP * tdp
    train_w = energy.gpu_power_w(busy_fraction, idle_w=idle_w, tdp_w=tdp)
    with np.errstate(invalid="ignore", divide="ignore"):
        avg_w = np.where(wall > 0, (train_w * (wall - idle_s) + idle_w * idle_s) / wall, idle_w)
    kw = dict(gpus=facts.gpus, duration_s=wall, avg_gpu_power_w=avg_w, nodes=facts.nodes,
              node_overhead_w=p.node_overhead_w)
    mwh = energy.energy_mwh(pue=facts.pue, **kw)
    it_kwh = energy.it_energy_kwh(**kw)
    hours = cost.gpu_hours(gpus=facts.gpus, wall_s=wall)
    cloud = cost.cloud_cost_usd(hours, price_per_gpu_hour_usd=facts.price_per_gpu_hour_usd)
    power_usd = cost.power_cost_usd(mwh, power_price_usd_per_kwh=facts.power_price_usd_per_kwh)
    own = settings.owned_cluster
    if own is None:
        capex = np.full_like(wall, np.nan)
        total = cloud
    else:
        capex = cost.owned_capex_usd(gpus=facts.gpus, wall_s=wall, capex_per_gpu_usd=own.capex_per_gpu_usd,
                                     amortization_years=own.amortization_years, utilization=own.utilization)
        total = capex + power_usd
    with np.errstate(invalid="ignore", divide="ignore"):
        good = np.where(wall > 0, compute_s / wall, 1.0)
    return {
        "compute_time_s": compute_s, "cluster_mtbf_h": np.full_like(wall, m / 3600.0),
        "checkpoint_interval_s": np.full_like(wall, tau), "goodput": good,
        "time_to_train_s": wall, "time_to_train_days": wall / 86400.0, "gpu_hours": hours,
        "cost_usd": total, "cloud_cost_usd": cloud, "owned_capex_usd": capex, "power_cost_usd": power_usd,
        "avg_gpu_power_w": avg_w, "energy_mwh": mwh,
        "tco2e": energy.co2_tonnes(mwh, grid_kgco2_per_kwh=facts.grid_kgco2_per_kwh),
        "water_l": energy.water_litres(it_kwh, water_l_per_kwh=facts.water_l_per_kwh),
    }


def sample_rows(shape: RunShape, times: Sequence[SampleTime], seeds: Sequence[int], *,
                settings: ForecastSettings, facts: ClusterFacts) -> list[ForecastRow]:
    """One ForecastRow per sample."""
    cols = project([t.compute_s for t in times], [t.busy_fraction for t in times], settings=settings, facts=facts)
    rows = []
    for k, (t, seed) in enumerate(zip(times, seeds)):
        rows.append(ForecastRow(
            kind="sample", sample=k, seed=int(seed), tokens=shape.tokens, steps=shape.total_steps,
            ramp_steps=shape.ramp_total_steps, simulated_steps=t.simulated_steps,
            step_time_s=t.steady_step_time_s, mfu=t.mfu, gpu_busy_fraction=t.busy_fraction,
            **{c: float(v[k]) for c, v in cols.items()}))
    return rows


# ------------------------------------------------------------------------------ engine-backed


class EngineSteps:
    """StepSource backed by the engine: one seeded Simulation per global batch, built on demand."""

    def __init__(self, scenario, *, seed: int, compute=None) -> None:  # noqa: ANN001
        self.scenario = scenario
        self.seed = int(seed)
        self.compute = compute
        self._sims: dict[int, object] = {}

    def simulation(self, global_batch: int):
        sim = self._sims.get(global_batch)
        if sim is None:
            from simmoe.engine.runner import Simulation

            sc = self.scenario
            if global_batch != sc.training.global_batch:
                tr = sc.training.model_copy(update={"global_batch": int(global_batch), "batch_ramp": None})
                sc = sc.model_copy(update={"training": tr})
            sim = Simulation(sc, seed=self.seed, compute=self.compute)
            self.compute = sim.compute  # share one compute model (and its lookup tables)
            self._sims[global_batch] = sim
        return sim

    def records(self, global_batch: int, step_indices: Sequence[int]) -> list:
        from simmoe.results import step_record

        sim = self.simulation(global_batch)
        return [step_record(sim, sim.run_step(int(i))) for i in step_indices]


@dataclass
class Forecast:
    rows: list[ForecastRow]  # samples, then p10, p50, p90
    metadata: dict[str, str]
    shape: RunShape
    settings: ForecastSettings

    @property
    def samples(self) -> list[ForecastRow]:
        return [r for r in self.rows if r.kind == "sample"]

    def summary(self, kind: str = "p50") -> ForecastRow:
        return next(r for r in self.rows if r.kind == kind)


def forecast(scenario, *, tokens: float | None = None, samples: int = DEFAULT_SAMPLES,  # noqa: ANN001
             steps: int | None = None, seed: int | None = None, settings: ForecastSettings | None = None,
             calibration: str | None = None, ramp_points: int = DEFAULT_RAMP_POINTS,
             source_factory: Callable[[int], StepSource] | None = None,
             progress: Callable[[int, int], None] | None = None) -> Forecast:
    """Forecast a whole run of ``scenario`` (docs/forecast.md).

    ``samples`` Monte Carlo samples, sample k an engine run with seed ``seed + k`` (default seed:
    simulation.seed, so sample 0 sees `simmoe run`'s routing draws); each simulates ``steps``
    stratified full-batch steps (default simulation.steps) plus as many per ramp point.
    ``source_factory(seed)`` replaces the engine (tests)."""
    if samples < 1:
        raise InputError("at least one sample", field="--samples", value=samples, allowed=">= 1")
    if steps is not None and steps < 1:
        raise InputError("at least one step per sample", field="--steps", value=steps, allowed=">= 1")
    if tokens is not None and not tokens > 0:
        raise InputError("tokens must be > 0", field="--tokens", value=tokens, allowed="> 0")
    settings = settings or settings_of(scenario)
    base_seed = scenario.simulation.seed if seed is None else int(seed)
    n_steps = scenario.simulation.steps if steps is None else int(steps)
    shape = run_shape_of(scenario, tokens)
    facts = cluster_facts(scenario)
    meta_extra: dict[str, str] = {}
    shared: dict = {"compute": None}  # one compute model (and its lookup tables) for every sample
    if source_factory is None:
        from simmoe.engine.api import check_memory

        check_memory(scenario)  # raises InfeasibleScenario before anything is simulated
        if calibration is not None:
            from simmoe.calibration.model import load_compute_model

            shared["compute"] = load_compute_model(scenario.gpu_model, calibration,
                                                   comm_sms=scenario.parallelism.comm_sms)

        def source_factory(s: int) -> StepSource:
            return EngineSteps(scenario, seed=s, compute=shared["compute"])
    seeds = [base_seed + k for k in range(samples)]
    min_mb, mb_multiple = micro_batch_constraint(scenario.parallelism.schedule, scenario.parallelism.pp,
                                                 scenario.parallelism.schedule_micro_batches)
    times = []
    for k, s in enumerate(seeds):
        src = source_factory(s)
        rng = np.random.default_rng([base_seed, k])
        times.append(sample_time(shape, src, steps=n_steps, rng=rng, quantum=batch_increment_of(scenario),
                                 min_micro_batches=min_mb, micro_batch_multiple=mb_multiple,
                                 ramp_points=ramp_points))
        if isinstance(src, EngineSteps):
            shared["compute"] = src.compute
            if k == 0:
                meta_extra = _engine_metadata(src)
        if progress is not None:
            progress(k + 1, samples)
    rows = sample_rows(shape, times, seeds, settings=settings, facts=facts)
    rows += summary_rows(rows)
    return Forecast(rows=rows, metadata=_metadata(scenario, base_seed, settings, samples, n_steps, ramp_points,
                                                  meta_extra), shape=shape, settings=settings)


def _engine_metadata(src: EngineSteps) -> dict[str, str]:
    from simmoe.engine.api import extrapolation_note

    sim = src.simulation(src.scenario.training.global_batch)
    return {"calibration_id": sim.compute.identifier, "fidelity": sim.fidelity,
            "network_model": "coflow" if sim.coflow else "flow", "reduced": str(sim.reduce).lower(),
            "compute_note": extrapolation_note(sim.compute.describe())}


def _metadata(scenario, seed: int, settings: ForecastSettings, samples: int, steps: int,  # noqa: ANN001
              ramp_points: int, engine_meta: dict[str, str]) -> dict[str, str]:
    import yaml

    from simmoe import __version__
    from simmoe.engine.api import scenario_yaml

    meta = {
        "simmoe_version": __version__,
        "scenario_yaml": scenario_yaml(scenario),
        "scenario_name": scenario.name or "",
        "seed": str(seed),
        "calibration_id": "",
        "fidelity": scenario.simulation.fidelity,
        "network_model": "",
        "reduced": "",
        "compute_note": "",
    }
    meta.update(engine_meta)
    meta.update({
        "schema": SCHEMA,
        "forecast_settings_yaml": yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False),
        "samples": str(samples),
        "steps_per_sample": str(steps),
        "ramp_points": str(ramp_points),
        "monte_carlo": "engine run per sample, seed = seed + sample; steps stratified over the run",
    })
    return meta
