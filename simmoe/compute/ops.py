"""FLOP counts of the kernels the compute model times (array-friendly, no hardware in here).

Conventions: a GEMM ``(m x k) @ (k x n)`` does ``2*m*n*k`` FLOPs. Attention counts the matmuls a
FlashAttention kernel executes: forward ``Q K^T`` and ``P V``; backward recomputes ``Q K^T`` and
does ``dO V^T``, ``P^T dO``, ``dS K`` and ``dS^T Q`` (2.5x the forward when head dims are equal).
Causal attention counts the lower triangle including the diagonal: a fraction ``(s+1)/(2s)``.
"""

from __future__ import annotations

import numpy as np


def gemm_flops(m, n, k):
    """FLOPs of ``(m x k) @ (k x n)``."""
    return 2.0 * np.asarray(m, dtype=np.float64) * n * k


def grouped_gemm_flops(tokens_per_expert, n, k):
    """FLOPs of one grouped GEMM: expert ``e`` does ``(m_e x k) @ (k x n)``; sums the last axis."""
    tokens = np.asarray(tokens_per_expert, dtype=np.float64)
    return 2.0 * tokens.sum(axis=-1) * n * k


def attention_flops(batch, seq_len, heads, head_dim_qk, head_dim_v, causal: bool, backward: bool = False):
    """Matmul FLOPs of self-attention over ``seq_len`` tokens (queries = keys), exact triangle if causal."""
    s = np.asarray(seq_len, dtype=np.float64)
    pairs = np.asarray(batch, dtype=np.float64) * heads * s * s
    if causal:
        pairs = pairs * (s + 1) / (2 * s)
    dims = (3 * np.asarray(head_dim_qk) + 2 * np.asarray(head_dim_v)) if backward else (
        np.asarray(head_dim_qk) + np.asarray(head_dim_v))
    return 2.0 * pairs * dims
