"""The narrow interface between the engine and any compute model (roofline now, profile later).

CONTRACT: the engine reads only these methods. Every method returns seconds for ONE kernel on ONE
GPU. Arguments broadcast like numpy (scalars in, float out; arrays in, array out), except
``tokens_per_expert``, whose LAST axis runs over the experts of one grouped kernel (leading axes are
independent calls). Shapes are in elements, counts in tokens, ``dtype`` is "bf16", "fp8" (FP8
inputs with fine-grained scales, BF16 output, as DeepSeek-V3 / Transformer Engine) or, for GEMMs on
GPUs with MX tensor cores, "mxfp8" (E8M0 scales per 32 elements).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ComputeModel(Protocol):
    identifier: str
    """Short, stable name of the model and its parameter set (goes into Parquet metadata)."""

    def gemm_s(self, m, n, k, dtype: str):
        """One GEMM ``(m x k) @ (k x n)`` -> ``(m x n)``."""

    def grouped_gemm_s(self, tokens_per_expert, n, k, dtype: str):
        """One grouped kernel over the local experts: expert ``e`` does ``(m_e x k) @ (k x n)``."""

    def grouped_gemm_wgrad_s(self, tokens_per_expert, n, k, dtype: str):
        """Weight gradient of ``grouped_gemm_s(tokens_per_expert, n, k)``: expert ``e`` does
        ``(k x m_e) @ (m_e x n)``; the reduction depth is the token count (the one shape the forward
        kernel cannot express)."""

    def attention_s(self, batch, seq_len, heads, head_dim_qk, head_dim_v, causal: bool, dtype: str,
                    backward: bool):
        """FlashAttention-style core attention (no projections), queries = keys = ``seq_len``."""

    def memory_bound_s(self, bytes_moved, kernels=1, access: str = "stream"):
        """Streaming kernels (norms, permute/unpermute, optimizer): ``bytes_moved`` = bytes read +
        bytes written in HBM, spread over ``kernels`` launches (0 when fused into a neighbour).
        ``access`` (simmoe.compute.params.MEMORY_ACCESS): "stream"; "last_dim_cat" for a
        torch.cat along the last dimension of non-contiguous inputs; "strided" for an element-wise
        op over a slice of the last dimension (both PyTorch's unvectorized kernels, slower per
        byte)."""

    def describe(self) -> dict:
        """Provenance: ``kind`` ("roofline" | "profile"), ``device``, ``source``, ``identifier``."""

    def with_sms_held(self, extra: int) -> "ComputeModel":
        """The same model with ``extra`` more SMs held by communication kernels (an NCCL
        collective in flight beside compute; simmoe.compute.sm_share)."""


class BackwardTimes(NamedTuple):
    """Backward of a (grouped) GEMM, split as pipeline schedules that defer weight gradients need it."""

    dgrad_s: float | np.ndarray  # input gradient
    wgrad_s: float | np.ndarray  # weight gradient

    @property
    def total_s(self):
        return self.dgrad_s + self.wgrad_s


def gemm_backward_s(model: ComputeModel, m, n, k, dtype: str) -> BackwardTimes:
    """Backward of ``(m x k) @ (k x n)``: dgrad ``(m x n) @ (n x k)``, wgrad ``(k x m) @ (m x n)``."""
    return BackwardTimes(dgrad_s=model.gemm_s(m, k, n, dtype), wgrad_s=model.gemm_s(k, n, m, dtype))


def grouped_gemm_backward_s(model: ComputeModel, tokens_per_expert, n, k, dtype: str) -> BackwardTimes:
    """Backward of ``grouped_gemm_s(tokens_per_expert, n, k)``, one grouped kernel each:
    dgrad ``(m_e x n) @ (n x k)`` per expert, wgrad ``(k x m_e) @ (m_e x n)`` per expert."""
    return BackwardTimes(
        dgrad_s=model.grouped_gemm_s(tokens_per_expert, k, n, dtype),
        wgrad_s=model.grouped_gemm_wgrad_s(tokens_per_expert, n, k, dtype),
    )
