"""Model FLOPs per token (for MFU) and hardware FLOPs per token (what the GPUs execute).

Forward FLOPs per token (a GEMM ``(m x k) @ (k x n)`` is ``2*m*n*k``, so a weight ``k x n`` costs
``2*k*n`` per token):

- attention projections: 2 x their weights (MLA: Q down/up, KV down/up, output);
- core attention, causal: a query at position i sees i+1 keys, on average ``(s+1)/2``; QK^T costs
  ``2*d_qk`` and PV ``2*d_v`` per (query, key, head): ``heads*(s+1)*(d_qk+d_v)`` per token
  (MLA: d_qk = qk_nope + qk_rope, d_v = v_head_dim); the same exact triangle as simmoe.compute.ops;
- router ``2*d*E``; routed experts ``top_k * 2*3*d*f_e`` (SwiGLU; GELU 2*2*d*f_e); shared experts
  and dense FFN likewise; LM head ``2*d*V``; embedding lookups 0;
- each MTP module: projection ``2*2d*d`` + its block + its own LM head pass ``2*d*V``.

Training model FLOPs = 3 x forward (backward = dgrad + wgrad = 2 x forward). Recomputation is not
model work: MFU conventionally (PaLM, Megatron) leaves it out, so it lives in
:func:`hardware_flops_per_token` only, together with FlashAttention's backward recompute of QK^T.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from simmoe.workload.shapes import (
    as_model,
    attention_linears,
    block_is_moe,
    ffn_matrices,
    head_dims,
    shared_expert_ffn,
)

if TYPE_CHECKING:
    from simmoe.config.schema import Model, Scenario


@dataclass(frozen=True)
class ForwardFlops:
    """Forward FLOPs per token, by kind, summed over the whole model (MTP modules included)."""

    attention_proj: float
    attention_core: float
    router: float
    routed_experts: float
    shared_experts: float
    dense_ffn: float
    lm_head: float  # main head + one head pass per MTP module
    mtp_proj: float

    @property
    def total(self) -> float:
        return (self.attention_proj + self.attention_core + self.router + self.routed_experts
                + self.shared_experts + self.dense_ffn + self.lm_head + self.mtp_proj)


def attention_core_flops_per_token(x: Scenario | Model, seq_len: int) -> float:
    """Causal core attention, forward, per token per block."""
    m = as_model(x)
    dqk, dv = head_dims(m)
    return m.attention.heads * (seq_len + 1) * (dqk + dv)


def block_forward_flops_per_token(x: Scenario | Model, block: int, seq_len: int) -> dict[str, float]:
    """Forward FLOPs per token of one block, by kind (the MTP projection included for MTP blocks)."""
    m = as_model(x)
    d = m.hidden
    mats = ffn_matrices(m)
    out = dict(attention_proj=2.0 * sum(lin.params for lin in attention_linears(m)),
               attention_core=float(attention_core_flops_per_token(m, seq_len)),
               router=0.0, routed_experts=0.0, shared_experts=0.0, dense_ffn=0.0, mtp_proj=0.0)
    if block_is_moe(m, block):
        moe = m.moe
        out["router"] = 2.0 * d * moe.routed_experts
        out["routed_experts"] = 2.0 * mats * d * moe.expert_ffn * moe.top_k
        out["shared_experts"] = 2.0 * mats * d * shared_expert_ffn(m)
    else:
        out["dense_ffn"] = 2.0 * mats * d * m.dense_ffn
    if block >= m.layers:
        out["mtp_proj"] = 2.0 * 2 * d * d
    return out


def forward_flops_per_token(x: Scenario | Model, seq_len: int | None = None) -> ForwardFlops:
    """Forward FLOPs per token of the whole model. ``seq_len`` defaults to training.seq_len."""
    m = as_model(x)
    if seq_len is None:
        seq_len = x.training.seq_len  # type: ignore[union-attr]
    sums = dict(attention_proj=0.0, attention_core=0.0, router=0.0, routed_experts=0.0,
                shared_experts=0.0, dense_ffn=0.0, mtp_proj=0.0)
    for b in range(m.layers + m.mtp_depth):
        for key, value in block_forward_flops_per_token(m, b, seq_len).items():
            sums[key] += value
    return ForwardFlops(lm_head=2.0 * m.hidden * m.vocab * (1 + m.mtp_depth), **sums)


def model_flops_per_token(scenario: Scenario) -> float:
    """Training model FLOPs per token (3 x forward), the numerator of MFU. Recompute excluded."""
    return 3.0 * forward_flops_per_token(scenario).total


def recompute_flops_per_token(scenario: Scenario) -> float:
    """Extra forward FLOPs per token that activation recomputation executes.

    full: every block's forward again (embedding, final norm and LM head are not recomputed, as in
    Megatron's full/uniform recompute). selective: the MLA up-projections (Q up, KV up); norms and
    activation functions are recomputed too but cost bytes, not FLOPs (docs/workload.md).
    """
    m = scenario.model
    policy = scenario.training.activation_recompute
    if policy == "none":
        return 0.0
    s = scenario.training.seq_len
    if policy == "full":
        return sum(sum(block_forward_flops_per_token(m, b, s).values())
                   for b in range(m.layers + m.mtp_depth))
    up = sum(2.0 * lin.params for lin in attention_linears(m) if lin.name in ("q_up", "kv_up"))
    return up * (m.layers + m.mtp_depth)


def hardware_flops_per_token(scenario: Scenario) -> float:
    """FLOPs the GPUs execute per token: model FLOPs + recompute + FlashAttention's backward
    recomputation of QK^T (its backward does 3*d_qk + 2*d_v per pair where the model count has
    2*(d_qk + d_v))."""
    m = scenario.model
    s = scenario.training.seq_len
    dqk, dv = head_dims(m)
    flash_extra = m.attention.heads * (s + 1) * dqk * (m.layers + m.mtp_depth)
    return model_flops_per_token(scenario) + recompute_flops_per_token(scenario) + flash_extra
