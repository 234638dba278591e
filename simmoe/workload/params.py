"""Parameter counts per block type, per model, and per token (active).

Conventions (docs/workload.md, "Parameter counts"):

- RMSNorm has ``hidden`` weights (two per block, one final); no biases anywhere.
- Embedding ``vocab x hidden``; the LM head is another ``hidden x vocab`` unless tied.
- An MTP module (DeepSeek-V3) = RMSNorms on its two inputs + projection ``2*hidden -> hidden`` + one
  transformer block + a final RMSNorm; it shares the main model's embedding and LM head, which are
  therefore not counted again (``mtp_stored_params`` counts them as a checkpoint stores them).
- Active parameters per token count the embedding and the LM head, every dense weight, the router,
  the shared experts and ``top_k`` routed experts of each MoE layer (DeepSeek's "37B activated").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from simmoe.workload.shapes import (
    as_model,
    attention_linears,
    attention_norm_params,
    block_is_moe,
    ffn_matrices,
    is_mtp_block,
    shared_expert_ffn,
)

if TYPE_CHECKING:
    from simmoe.config.schema import Model, Scenario


@dataclass(frozen=True)
class BlockParams:
    """Weights of one transformer block (main layer or the block of an MTP module)."""

    attention: int  # projections + MLA's latent norms
    norms: int  # input and post-attention RMSNorm
    dense_ffn: int  # 0 in an MoE block
    router: int
    shared_experts: int
    routed_expert: int  # ONE routed expert
    routed_experts: int  # all routed experts of the block
    mtp_extra: int  # MTP module only: projection 2d->d and its three RMSNorms

    @property
    def dense(self) -> int:
        """Everything but the routed experts (what TP/PP/DP shard as the 'dense part')."""
        return self.attention + self.norms + self.dense_ffn + self.router + self.shared_experts + self.mtp_extra

    @property
    def total(self) -> int:
        return self.dense + self.routed_experts


def block_params(x: Scenario | Model, block: int) -> BlockParams:
    """Weights of block ``block`` (0-based; blocks >= model.layers are MTP modules)."""
    m = as_model(x)
    d = m.hidden
    attn = sum(lin.params for lin in attention_linears(m)) + attention_norm_params(m)
    mats = ffn_matrices(m)
    dense_ffn = router = shared = one_expert = experts = 0
    if block_is_moe(m, block):
        moe = m.moe
        router = d * moe.routed_experts
        shared = mats * d * shared_expert_ffn(m)
        one_expert = mats * d * moe.expert_ffn
        experts = one_expert * moe.routed_experts
    else:
        dense_ffn = mats * d * m.dense_ffn
    mtp_extra = (2 * d * d + 3 * d) if is_mtp_block(m, block) else 0
    return BlockParams(attention=attn, norms=2 * d, dense_ffn=dense_ffn, router=router,
                       shared_experts=shared, routed_expert=one_expert, routed_experts=experts,
                       mtp_extra=mtp_extra)


@dataclass(frozen=True)
class ParamCounts:
    embedding: int
    lm_head: int  # 0 when tied to the embedding
    final_norm: int
    main_blocks: int  # all main-model blocks
    main_blocks_active: int  # per token
    mtp: int  # all MTP modules, shared embedding/head excluded
    mtp_active: int

    @property
    def main_model(self) -> int:
        """The main model, embeddings included (DeepSeek-V3: 671B)."""
        return self.embedding + self.lm_head + self.final_norm + self.main_blocks

    @property
    def total(self) -> int:
        """Everything trained: main model + MTP modules."""
        return self.main_model + self.mtp

    @property
    def mtp_stored(self) -> int:
        """MTP modules as a checkpoint stores them, each with a copy of embedding and head
        (DeepSeek-V3's Hugging Face release: 14B)."""
        return self.mtp + (self.embedding + (self.lm_head or self.embedding)) * (1 if self.mtp else 0)

    @property
    def active(self) -> int:
        """Parameters one token of the main model touches (DeepSeek-V3: 37B)."""
        return self.embedding + self.lm_head + self.final_norm + self.main_blocks_active

    @property
    def active_with_mtp(self) -> int:
        return self.active + self.mtp_active


def _active(p: BlockParams, x: Model, block: int) -> int:
    k = x.moe.top_k if block_is_moe(x, block) else 0
    return p.dense + k * p.routed_expert


def param_counts(x: Scenario | Model) -> ParamCounts:
    m = as_model(x)
    main = [block_params(m, b) for b in range(m.layers)]
    mtp = [block_params(m, b) for b in range(m.layers, m.layers + m.mtp_depth)]
    return ParamCounts(
        embedding=m.vocab * m.hidden,
        lm_head=0 if m.tied_embeddings else m.vocab * m.hidden,
        final_norm=m.hidden,
        main_blocks=sum(p.total for p in main),
        main_blocks_active=sum(_active(p, m, b) for b, p in enumerate(main)),
        mtp=sum(p.total for p in mtp),
        mtp_active=sum(_active(p, m, m.layers + j) for j, p in enumerate(mtp)),
    )


def total_params(x: Scenario | Model) -> int:
    return param_counts(x).total


def active_params(x: Scenario | Model) -> int:
    return param_counts(x).active


# ------------------------------------------------------------------------- per rank of one stage


@dataclass(frozen=True)
class StageLocalParams:
    """Weights one rank holds for one virtual pipeline stage.

    ``dense``: everything but routed experts, after the TP split (column/row-parallel weights / tp;
    norms, routers, MLA down-projections and the MTP projection replicated on every TP rank),
    ``embedding`` and ``lm_head`` included. ``experts``: the rank's routed experts,
    (routed_experts/ep) x one expert / expert_tp. ``embedding_copy``: a second copy of the
    embedding kept on this stage for a tied LM head or for MTP modules (Megatron's embedding group),
    counted in ``dense`` too.
    """

    dense: int
    experts: int
    embedding_copy: int = 0

    @property
    def total(self) -> int:
        return self.dense + self.experts


def block_local_params(scenario: Scenario, block: int) -> StageLocalParams:
    """One block's weights on one rank (no embedding or head)."""
    m = scenario.model
    par = scenario.parallelism
    tp = par.tp
    bp = block_params(m, block)
    attn = sum(lin.params if lin.split == "replicated" else lin.params // tp for lin in attention_linears(m))
    dense = attn + attention_norm_params(m) + bp.norms + bp.dense_ffn // tp + bp.router
    dense += bp.shared_experts // tp + bp.mtp_extra
    experts = 0
    if bp.routed_experts:
        experts = (m.moe.routed_experts // par.ep) * (bp.routed_expert // par.expert_tp)
    return StageLocalParams(dense=dense, experts=experts)


def stage_blocks(scenario: Scenario, virtual_stage: int) -> tuple[int, ...]:
    """Block indices of a virtual stage (scenario.stage_layers(); MTP modules are the last blocks)."""
    split = scenario.stage_layers()
    start = sum(split[:virtual_stage])
    return tuple(range(start, start + split[virtual_stage]))


def stage_has_main_head(scenario: Scenario, virtual_stage: int) -> bool:
    """The main LM head sits on the last virtual stage (Megatron-Core's post-process stage), with
    the MTP modules it feeds (the loader keeps them there), after the stage's last block, or alone
    when the stage holds none (a split counting the loss as a layer)."""
    return virtual_stage == scenario.parallelism.virtual_stages - 1


def stage_local_params(scenario: Scenario, virtual_stage: int) -> StageLocalParams:
    m = scenario.model
    tp = scenario.parallelism.tp
    blocks = stage_blocks(scenario, virtual_stage)
    dense = experts = 0
    for b in blocks:
        lp = block_local_params(scenario, b)
        dense += lp.dense
        experts += lp.experts
    vocab_shard = -(-m.vocab // tp) * m.hidden  # vocab-parallel embedding and head (last shard padded)
    has_embedding = virtual_stage == 0
    has_head = stage_has_main_head(scenario, virtual_stage)
    has_mtp = any(b >= m.layers for b in blocks)
    if has_embedding:
        dense += vocab_shard
    if has_head:
        dense += m.hidden  # final norm
        if not m.tied_embeddings:
            dense += vocab_shard
    copy = 0
    if not has_embedding and (has_mtp or (has_head and m.tied_embeddings)):
        copy = vocab_shard
        dense += copy
    return StageLocalParams(dense=dense, experts=experts, embedding_copy=copy)
