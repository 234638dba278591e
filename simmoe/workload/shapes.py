"""The weight matrices of each block type, as one source for parameter counts, FLOPs, ops and memory.

A :class:`Linear` is one weight ``in_features x out_features`` and says how Megatron-style tensor
parallelism splits it: ``column`` (output features over TP), ``row`` (input features over TP) or
``replicated`` (every TP rank holds all of it: routers, MLA's down-projections, the MTP projection).
Biases are left out (none of the modern models here has them; GPT-3's are 0.01% of its weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from simmoe.config.schema import Model, Scenario

Split = Literal["column", "row", "replicated"]


@dataclass(frozen=True)
class Linear:
    name: str
    in_features: int
    out_features: int
    split: Split

    @property
    def params(self) -> int:
        return self.in_features * self.out_features

    def local_shape(self, tp: int) -> tuple[int, int]:
        """(in, out) on one rank of a ``tp``-way split."""
        if self.split == "column":
            return self.in_features, self.out_features // tp
        if self.split == "row":
            return self.in_features // tp, self.out_features
        return self.in_features, self.out_features


def as_model(x: Scenario | Model) -> Model:
    """Accept a Scenario or its Model."""
    return getattr(x, "model", x)


def head_dims(model: Model) -> tuple[int, int]:
    """(qk head dim, v head dim) of one attention head."""
    att = model.attention
    if att.type == "mla":
        return att.qk_nope_head_dim + att.qk_rope_head_dim, att.v_head_dim
    dh = att.head_dim or model.hidden // att.heads
    return dh, dh


def kv_heads(model: Model) -> int:
    att = model.attention
    return att.kv_heads if att.type == "gqa" else att.heads


def attention_linears(model: Model) -> tuple[Linear, ...]:
    """Projections of one attention block, in execution order.

    MHA/GQA: fused QKV (column) and output (row). MLA (DeepSeek-V2/V3, Megatron-Core's
    MLASelfAttention): Q down (replicated) and up (column), KV down (replicated; its output carries
    the shared RoPE key, qk_rope_head_dim wide) and up (column, to per-head K_nope and V), output (row).
    """
    d = model.hidden
    att = model.attention
    h = att.heads
    if att.type == "mla":
        qk = att.qk_nope_head_dim + att.qk_rope_head_dim
        out: list[Linear] = []
        if att.q_lora_rank is None:
            out.append(Linear("q", d, h * qk, "column"))
        else:
            out.append(Linear("q_down", d, att.q_lora_rank, "replicated"))
            out.append(Linear("q_up", att.q_lora_rank, h * qk, "column"))
        out.append(Linear("kv_down", d, att.kv_lora_rank + att.qk_rope_head_dim, "replicated"))
        out.append(Linear("kv_up", att.kv_lora_rank, h * (att.qk_nope_head_dim + att.v_head_dim), "column"))
        out.append(Linear("o", h * att.v_head_dim, d, "row"))
        return tuple(out)
    dqk, dv = head_dims(model)
    kv = kv_heads(model)
    return (Linear("qkv", d, h * dqk + kv * dqk + kv * dv, "column"), Linear("o", h * dv, d, "row"))


def attention_norm_params(model: Model) -> int:
    """RMSNorm weights inside attention (MLA's norms on the compressed Q and KV)."""
    att = model.attention
    if att.type == "mla":
        return att.kv_lora_rank + (att.q_lora_rank or 0)
    return 0


def ffn_linears(model: Model, ffn: int, prefix: str = "ffn", split_over: Split = "column") -> tuple[Linear, Linear]:
    """FC1 (SwiGLU: gate and up fused, 2*ffn wide) and FC2 of one FFN of width ``ffn``."""
    d = model.hidden
    width = 2 * ffn if model.activation == "swiglu" else ffn
    row: Split = "row" if split_over == "column" else split_over
    return Linear(f"{prefix}.fc1", d, width, split_over), Linear(f"{prefix}.fc2", ffn, d, row)


def ffn_matrices(model: Model) -> int:
    """Weight matrices per FFN: 3 for SwiGLU (gate, up, down), 2 for GELU."""
    return 3 if model.activation == "swiglu" else 2


def shared_expert_ffn(model: Model) -> int:
    """Total intermediate width of the shared experts of one MoE layer (0 without)."""
    moe = model.moe
    if moe is None or moe.shared_experts == 0:
        return 0
    return moe.shared_experts * (moe.shared_expert_ffn or moe.expert_ffn)


def router_linear(model: Model) -> Linear:
    return Linear("router", model.hidden, model.moe.routed_experts, "replicated")


def is_mtp_block(model: Model, block: int) -> bool:
    return block >= model.layers


def block_is_moe(model: Model, block: int) -> bool:
    """Main blocks follow model.moe_layer_indices(); an MTP module's block has the type of the main
    model's last block (DeepSeek-V3's MTP block is an MoE block like layers 3..60)."""
    if model.moe is None:
        return False
    moe_layers = set(model.moe_layer_indices())
    if is_mtp_block(model, block):
        return (model.layers - 1) in moe_layers
    return block in moe_layers
