"""Workload: model -> per-stage ops (docs/workload.md), parameter and FLOP accounting.

The op vocabulary (the contract with the engine) is simmoe.workload.ops; the memory model that
uses these counts is simmoe.memory.
"""

from simmoe.workload.builder import (
    StageProgram,
    build_rank_step_ops,
    build_stage_program,
    build_step_ops,
    optimizer_bytes_per_param,
    rank_virtual_stages,
)
from simmoe.workload.flops import (
    ForwardFlops,
    forward_flops_per_token,
    hardware_flops_per_token,
    model_flops_per_token,
    recompute_flops_per_token,
)
from simmoe.workload.params import (
    BlockParams,
    ParamCounts,
    StageLocalParams,
    active_params,
    block_params,
    param_counts,
    stage_local_params,
    total_params,
)

__all__ = [
    "BlockParams",
    "ForwardFlops",
    "ParamCounts",
    "StageLocalParams",
    "StageProgram",
    "active_params",
    "block_params",
    "build_rank_step_ops",
    "build_stage_program",
    "build_step_ops",
    "forward_flops_per_token",
    "hardware_flops_per_token",
    "model_flops_per_token",
    "optimizer_bytes_per_param",
    "param_counts",
    "rank_virtual_stages",
    "recompute_flops_per_token",
    "stage_local_params",
    "total_params",
]
