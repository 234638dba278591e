"""Compute cost model: op -> seconds on one GPU (docs/compute.md).

The engine depends only on ``ComputeModel``; ``RooflineModel`` is the datasheet-and-efficiency
implementation, a calibration profile will provide another behind the same interface.
"""

from simmoe.compute.model import BackwardTimes, ComputeModel, gemm_backward_s, grouped_gemm_backward_s
from simmoe.compute.ops import attention_flops, gemm_flops, grouped_gemm_flops
from simmoe.compute.params import RooflineParams, load_roofline_params
from simmoe.compute.roofline import RooflineModel

__all__ = [
    "BackwardTimes",
    "ComputeModel",
    "RooflineModel",
    "RooflineParams",
    "attention_flops",
    "gemm_backward_s",
    "gemm_flops",
    "grouped_gemm_backward_s",
    "grouped_gemm_flops",
    "load_roofline_params",
]
