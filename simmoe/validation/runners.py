"""Run one validation case through simmoe's public APIs; return its metrics.

One function per run section (simmoe.validation.cases.Run). Each takes the facts of the case and
nothing else: the network is timed with ``DEFAULT_NETWORK_PARAMS``, the engine with its default
roofline model (no calibration profile), the energy with ``simmoe.forecast.energy``. No branch
here looks at a case's id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from simmoe.errors import InputError
from simmoe.validation.cases import (BudgetRun, Case, CollectiveRun, DeepEPRun, EnergyRun, KernelRun, ScenarioRun,
                                     resolve_beside)

SECONDS_PER_DAY = 86400.0
TOKENS_PER_TRILLION = 1e12


@dataclass
class Outcome:
    """Metric values a run produced, and what a reader must know about how they were obtained."""

    values: dict[str, float]
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ collectives


@lru_cache(maxsize=16)
def _topology(name: str, nodes: int | None):
    from simmoe.topology.loader import load_topology

    return load_topology(name, nodes=nodes)


def _network_params():
    # The one parameter set (docs/network.md); validation never builds another.
    from simmoe.network.params import DEFAULT_NETWORK_PARAMS

    return DEFAULT_NETWORK_PARAMS


def _internode_bytes_per_gpu(coll, server_of_gpu: np.ndarray) -> float:
    """Mean bytes each member GPU sends to GPUs of other nodes (what its NIC carries out)."""
    server = np.asarray(server_of_gpu)
    total = 0.0
    for stage in coll.stages:
        f = stage.flows
        total += float(np.asarray(f.size_bytes)[server[np.asarray(f.src)] != server[np.asarray(f.dst)]].sum())
    return total / len(coll.gpus)


def run_collective(case: Case, spec: CollectiveRun) -> Outcome:
    from simmoe.cli.collective import parse_size_bytes
    from simmoe.network import collectives as C
    from simmoe.network.backends import FlowBackend

    topo = _topology(resolve_beside(case, spec.topology), None)
    if not 1 <= spec.gpus <= topo.num_gpus:
        raise InputError("GPU count does not fit the topology", file=case.file, field="run.collective.gpus",
                         value=spec.gpus, allowed=f"1..{topo.num_gpus}")
    size = parse_size_bytes(spec.bytes, field="run.collective.bytes")
    coll = C.build(spec.op, range(spec.gpus), size, server_of_gpu=topo.server_of_gpu,
                   algorithm=spec.algorithm, nvlink_domain_of_gpu=topo.nvlink_domain_of_gpu)
    res = FlowBackend(topo, _network_params()).collective_time_s(coll)
    notes = []
    inter = _internode_bytes_per_gpu(coll, topo.server_of_gpu)
    return Outcome({"busbw_GBps": res.busbw_GBps, "algbw_GBps": res.algbw_GBps, "time_s": res.time_s,
                    "nic_GBps": inter / res.time_s / 1e9}, notes)


def run_deepep(case: Case, spec: DeepEPRun) -> Outcome:
    """DeepEP's benchmark: its routing draw, its byte count, simmoe's collective time
    (the same code path as tests/test_network_published.py)."""
    from simmoe import dispatch as D
    from simmoe.dtypes import BF16_BYTES_PER_ELEMENT, FP8_BYTES_PER_ELEMENT
    from simmoe.network.backends import FlowBackend

    full = _topology(resolve_beside(case, spec.topology), None)
    per_node = int(np.bincount(np.asarray(full.server_of_gpu)).max())
    if spec.ep % per_node:
        raise InputError("DeepEP's internode benchmark uses whole nodes", file=case.file, field="run.deepep.ep",
                         value=spec.ep, allowed=f"a multiple of {per_node}")
    nodes = max(1, spec.ep // per_node)
    topo = _topology(resolve_beside(case, spec.topology), nodes)
    rng = np.random.default_rng(spec.seed)
    topk = np.stack([D.grouped_topk_experts(rng, spec.tokens_per_rank, spec.experts, spec.top_k, groups=nodes,
                                            top_k_groups=min(nodes, spec.max_top_k_groups))
                     for _ in range(spec.ep)])
    per_element = {"fp8": FP8_BYTES_PER_ELEMENT, "bf16": BF16_BYTES_PER_ELEMENT}
    backend = FlowBackend(topo, _network_params())
    out = {}
    for name, combine, dtype in (("dispatch_GBps", False, spec.dispatch_dtype),
                                 ("combine_GBps", True, spec.combine_dtype)):
        coll = D.moe_dispatch(range(spec.ep), topk, experts=spec.experts,
                              bytes_per_token=spec.hidden * per_element[dtype],
                              server_of_gpu=topo.server_of_gpu, combine=combine)
        time_s = backend.collective_time_s(coll).time_s
        out[name] = float(D.deepep_bytes_per_rank(coll).mean() / time_s / 1e9)
    return Outcome(out, ["DeepEP's metric: bytes it counts per rank (mean) / simmoe's collective time"])


# ------------------------------------------------------------------------------ kernels

# FlashAttention's benchmark counts the backward pass as 2.5 forward passes (two GEMMs forward,
# five backward).
ATTENTION_BACKWARD_FLOPS_PER_FORWARD = 2.5


def attention_benchmark_flops(spec: KernelRun) -> float:
    """Forward FLOPs as FlashAttention's benchmarks count them (what its papers' TFLOPS divide):
    2 x batch x heads x seq_len^2 x (head_dim_qk + head_dim_v), halved when causal."""
    flops = 2.0 * spec.batch * spec.heads * spec.seq_len ** 2 * (spec.head_dim_qk + spec.head_dim_v)
    return flops / 2.0 if spec.causal else flops


def run_kernel(case: Case, spec: KernelRun) -> Outcome:
    """The kernel's time from the roofline model the engine uses (default parameters, all SMs)."""
    from simmoe.compute.roofline import RooflineModel

    model = RooflineModel(spec.gpu, field="run.kernel.gpu", file=case.file, clocks=spec.clocks)
    notes = [f"simmoe's roofline for {model.spec.name} at {spec.clocks} clocks, no calibration profile"]
    if spec.op == "gemm":
        time_s = float(model.gemm_s(spec.m, spec.n, spec.k, spec.dtype))
        return Outcome({"time_ms": time_s * 1e3, "tflops": 2.0 * spec.m * spec.n * spec.k / time_s / 1e12},
                       notes)
    forward_flops = attention_benchmark_flops(spec)
    out = {}
    for direction, backward, flops in (("forward", False, forward_flops),
                                       ("backward", True, forward_flops * ATTENTION_BACKWARD_FLOPS_PER_FORWARD)):
        time_s = float(model.attention_s(spec.batch, spec.seq_len, spec.heads, spec.head_dim_qk, spec.head_dim_v,
                                         spec.causal, spec.dtype, backward))
        out[f"{direction}_ms"] = time_s * 1e3
        out[f"{direction}_tflops"] = flops / time_s / 1e12
    return Outcome(out, notes + ["TFLOPS in FlashAttention's benchmark convention (causal halves the FLOPs)"])


# ------------------------------------------------------------------------------ end to end


def _load_scenario(case: Case, name: str, overrides: list[str] | None = None):
    from simmoe.config.loader import load_scenario

    return load_scenario(resolve_beside(case, name), overrides)


def _memory_note(err) -> str:
    return f"simmoe's memory model rejects the published layout ({err}); step time simulated anyway"


def run_scenario(case: Case, spec: ScenarioRun, *, steps: int | None = None) -> Outcome:
    """Engine steps of a scenario (default roofline compute, default network parameters).

    The published run trained on real hardware, so it fitted: when simmoe's memory model says
    otherwise, that is reported as a note and the steps are still simulated."""
    from simmoe.engine import InfeasibleScenario, simulate
    from simmoe.results import step_record

    scenario = _load_scenario(case, spec.scenario)
    n = steps if steps is not None else spec.steps
    notes = []
    try:
        records = simulate(scenario, seed=spec.seed, steps=n).records
    except InfeasibleScenario as err:
        from simmoe.engine.runner import Simulation

        notes.append(_memory_note(err))
        sim = Simulation(scenario, seed=spec.seed)
        first = scenario.simulation.warmup_steps
        records = [step_record(sim, sim.run_step(first + i)) for i in range(n)]
    tps = float(np.mean([r.tokens_per_s_per_gpu for r in records]))
    return Outcome({
        "tokens_per_s_per_gpu": tps,
        "gpu_hours_per_trillion_tokens": TOKENS_PER_TRILLION / tps / 3600.0,
        "model_tflops_per_gpu": float(np.mean([r.model_tflops_per_gpu for r in records])),
        "mfu": float(np.mean([r.mfu for r in records])),
        "step_time_s": float(np.mean([r.step_time_s for r in records])),
    }, notes + [f"{len(records)} simulated step(s), steady full batch, no failures"])


# ------------------------------------------------------------------------------ energy


def run_energy(case: Case, spec: EnergyRun) -> Outcome:
    from simmoe.forecast import co2_tonnes, energy_mwh

    mwh = float(energy_mwh(gpus=spec.chips, duration_s=spec.days * SECONDS_PER_DAY,
                           avg_gpu_power_w=spec.avg_power_W, pue=spec.pue))
    return Outcome({"energy_mwh": mwh, "tco2e": float(co2_tonnes(mwh, grid_kgco2_per_kwh=spec.grid_kgCO2_per_kWh))},
                   ["simmoe.forecast.energy_mwh / co2_tonnes, the functions every forecast uses"])


# ------------------------------------------------------------------------------ budgeting


def budget_arithmetic(spec: BudgetRun, peak_tflops: float) -> dict[str, float]:
    """The back-of-envelope: training FLOPs = 6 x active parameters x tokens x (1 + overhead),
    the MoE's also x (1 + communication overhead), active parameters k / E of the total; GPU-hours
    = FLOPs / peak / 3600 (100% of peak: the arithmetic assumes it); cost = GPU-hours x price."""
    base = 6.0 * spec.dense_params * spec.tokens * (1.0 + spec.overhead_flops_fraction)
    dense_flops = base
    moe_flops = base * spec.top_k / spec.experts * (1.0 + spec.comm_overhead_fraction)
    rate = peak_tflops * 1e12 * 3600.0
    dense_h, moe_h = dense_flops / rate, moe_flops / rate
    return {"dense_gpu_hours": dense_h, "moe_gpu_hours": moe_h,
            "dense_cost_usd": dense_h * spec.price_per_gpu_hour, "moe_cost_usd": moe_h * spec.price_per_gpu_hour,
            "dense_over_moe": dense_flops / moe_flops,
            "dense_days": dense_h / spec.gpus / 24.0, "moe_days": moe_h / spec.gpus / 24.0}


def run_budget(case: Case, spec: BudgetRun) -> Outcome:
    from simmoe.hardware import gpu_spec

    datasheet = gpu_spec(spec.gpu).bf16_dense_tflops
    out = {f"article_{k}": v for k, v in budget_arithmetic(spec, spec.article_peak_tflops).items()}
    out.update({f"corrected_{k}": v for k, v in budget_arithmetic(spec, datasheet).items()})
    notes = [f"corrected: dense BF16 peak {datasheet:g} TFLOPS (simmoe/data/hardware.yaml) instead of "
             f"{spec.article_peak_tflops:g} (the 2:4-sparsity figure)"]
    if spec.scenario is not None:
        from simmoe.engine import InfeasibleScenario
        from simmoe.forecast import EngineSteps, forecast

        scenario = _load_scenario(case, spec.scenario, [f"training.total_tokens={spec.tokens!r}",
                                                        f"costs.price_per_gpu_hour_usd={spec.price_per_gpu_hour!r}"])
        if scenario.gpus != spec.gpus:
            notes.append(f"the scenario runs {scenario.gpus} GPUs, the arithmetic {spec.gpus}")
        try:
            fc = forecast(scenario, samples=spec.samples, steps=spec.steps)
        except InfeasibleScenario as err:
            notes.append(_memory_note(err))
            fc = forecast(scenario, samples=spec.samples, steps=spec.steps,
                          source_factory=lambda s: EngineSteps(scenario, seed=s))
        p50 = fc.summary("p50")
        out.update({"simulated_moe_cost_usd": p50.cost_usd, "simulated_moe_gpu_hours": p50.gpu_hours,
                    "simulated_moe_days": p50.time_to_train_days, "simulated_mfu": p50.mfu,
                    "simulated_goodput": p50.goodput})
        notes.append(f"simulated: simmoe forecast of {spec.scenario} over {spec.tokens:.3g} tokens, "
                     f"{spec.samples} sample(s) x {spec.steps} step(s), failures and checkpoints included")
    return Outcome(out, notes)


def run_case(case: Case, *, steps: int | None = None) -> Outcome:
    """Run a case's one run section. ``steps`` overrides an end-to-end case's step count (smoke tests)."""
    run = case.run
    if run.scenario is not None:
        return run_scenario(case, run.scenario, steps=steps)
    if run.collective is not None:
        return run_collective(case, run.collective)
    if run.deepep is not None:
        return run_deepep(case, run.deepep)
    if run.kernel is not None:
        return run_kernel(case, run.kernel)
    if run.energy is not None:
        return run_energy(case, run.energy)
    return run_budget(case, run.budget)

