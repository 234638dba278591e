"""Step records: one documented row schema (docs/output.md), Parquet with key-value metadata.

Every column of steps.parquet is a field of :class:`StepRecord`, with the same name and unit.
Files are written atomically: to a temporary file in the destination folder, then ``os.replace``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from simmoe.atomic import dataclass_table, write_parquet_atomic


@dataclass(frozen=True)
class StepRecord:
    step: int  # global step index (drift of the routing depends on it)
    step_time_s: float  # the slowest simulated rank's finish time
    tokens_per_s: float  # global_batch * seq_len / step_time_s
    tokens_per_s_per_gpu: float  # tokens_per_s / GPUs
    model_tflops_per_gpu: float  # model FLOPs of the step / GPUs / step_time_s / 1e12
    mfu: float  # model_tflops_per_gpu / dense peak of training.precision
    dropped_token_fraction: float  # dropped / all token-expert assignments, over the step's draws
    expert_load_max_over_mean: float  # mean over (MoE layer, micro-batch) of max/mean expert load
    expert_compute_s: float  # critical rank: grouped expert GEMM seconds (its EP group's busiest)
    a2a_dispatch_s: float  # critical rank: seconds in dispatch-direction all-to-alls
    a2a_combine_s: float  # critical rank: seconds in combine-direction all-to-alls
    exposed_comm_s: float  # critical rank: communication time not covered by its compute
    pipeline_bubble_s: float  # critical rank: step time with neither compute nor communication
    host_late_s: float  # critical rank: of that, its compute stream waiting for the host (host.stack)
    dp_comm_s: float  # critical rank: seconds in DP / EDP gradient and parameter collectives
    optimizer_s: float  # critical rank: compute seconds of the once-per-step program
    peak_memory_gib: float  # simmoe.memory: the worst pipeline rank's total, GiB (2**30 bytes)


COLUMNS = tuple(f.name for f in fields(StepRecord))


def step_record(sim, result, *, peak_memory_gib: float = float("nan")) -> StepRecord:
    """A StepRecord from a Simulation and its StepResult."""
    from simmoe.hardware import gpu_spec

    sc = sim.scenario
    gpus = sim.layout.world_size
    t = result.step_time_s
    tokens = sc.training.global_batch * sc.training.seq_len
    tflops = sim.model_flops_per_step() / gpus / t / 1e12
    spec = gpu_spec(sc.gpu_model or sim.topology.gpu_model)
    peak = spec.fp8_dense_tflops if sc.training.fp8_gemms else spec.bf16_dense_tflops
    b = result.breakdown()
    return StepRecord(
        step=int(result.step), step_time_s=float(t), tokens_per_s=tokens / t,
        tokens_per_s_per_gpu=tokens / t / gpus, model_tflops_per_gpu=float(tflops),
        mfu=float(tflops / peak), dropped_token_fraction=float(result.stats.dropped_fraction),
        expert_load_max_over_mean=float(result.stats.expert_load_max_over_mean),
        peak_memory_gib=float(peak_memory_gib), **{k: float(v) for k, v in b.items()})


def summarize(records: list[StepRecord]) -> dict:
    """Means (and step-time percentiles) over recorded steps, for --json and the console."""
    if not records:
        return {"steps": 0}
    col = {c: np.array([getattr(r, c) for r in records], float) for c in COLUMNS}
    out = {"steps": len(records),
           "step_time_s_mean": float(col["step_time_s"].mean()),
           "step_time_s_p50": float(np.percentile(col["step_time_s"], 50)),
           "step_time_s_p90": float(np.percentile(col["step_time_s"], 90))}
    for c in COLUMNS:
        if c not in ("step", "step_time_s"):
            v = col[c]
            out[f"{c}_mean" if c != "peak_memory_gib" else c] = None if np.all(np.isnan(v)) else float(
                np.nanmean(v))
    return out


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_steps_parquet(records: list[StepRecord], path: str | Path, metadata: dict[str, str]) -> Path:
    """Write ``records`` to ``path`` atomically, with string key-value ``metadata``."""
    return write_parquet_atomic(dataclass_table(records, StepRecord, metadata), path)


def records_as_dicts(records: list[StepRecord]) -> list[dict]:
    return [{k: _clean(v) for k, v in asdict(r).items()} for r in records]


def dumps_json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=_clean)
