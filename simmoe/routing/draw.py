"""RoutingDraw: what one (step, MoE layer, micro-batch) of routing hands to the engine."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simmoe.routing.aggregated import _segment_sum
from simmoe.routing.capacity import CapacityResult
from simmoe.routing.exact import RawDraw
from simmoe.routing.group import EPGroup
from simmoe.routing.popularity import max_over_mean


@dataclass(frozen=True)
class RoutingDraw:
    """All arrays int64. Rows are source EP ranks; expert columns in expert id order; node columns
    follow ``EPGroup.node_ids`` (sorted distinct node ids). Diagonal entries (a rank to itself) and
    same-node columns are included: the engine decides what stays local."""

    routing: str  # "token_choice" | "expert_choice" | "cyclic"
    execution: str  # "padded" | "dropped" | "dropless"
    top_k: int
    tokens_per_rank: int
    capacity: int | None  # per (source, expert) slots (source scope) or per expert (group scope)
    # Before capacity.
    tokens_per_src_expert: np.ndarray  # (ep, E) token-expert assignments
    tokens_per_src_dst_rank: np.ndarray  # (ep, ep) distinct tokens each source must send to a rank
    tokens_per_src_dst_node: np.ndarray  # (ep, nodes) distinct tokens per destination node
    unrouted_tokens_per_src: np.ndarray  # (ep,) tokens reaching no expert (expert choice)
    # After capacity.
    processed_tokens_per_src_expert: np.ndarray  # (ep, E)
    dropped_tokens_per_src_expert: np.ndarray  # (ep, E) assignments over capacity
    compute_tokens_per_expert: np.ndarray  # (E,) rows each expert computes (padding included)
    compute_tokens_per_rank: np.ndarray  # (ep,) sum over the rank's experts
    dispatch_tokens_per_src_dst_rank: np.ndarray  # (ep, ep) token vectors dispatch moves
    dispatch_tokens_per_src_dst_node: np.ndarray  # (ep, nodes) same, per destination node

    @property
    def tokens_per_expert(self) -> np.ndarray:
        return self.tokens_per_src_expert.sum(axis=0)

    @property
    def processed_tokens_per_expert(self) -> np.ndarray:
        return self.processed_tokens_per_src_expert.sum(axis=0)

    @property
    def assignments(self) -> int:
        return int(self.tokens_per_src_expert.sum())

    @property
    def dropped_assignments(self) -> int:
        return int(self.dropped_tokens_per_src_expert.sum())

    @property
    def dropped_fraction(self) -> float:
        """Dropped token-expert assignments over all assignments (0 when dropless)."""
        total = self.assignments
        return self.dropped_assignments / total if total else 0.0

    @property
    def expert_load_max_over_mean(self) -> float:
        """max / mean of assignments per expert before capacity (the router's imbalance)."""
        return max_over_mean(self.tokens_per_expert)

    @property
    def rank_compute_max_over_mean(self) -> float:
        """max / mean of compute rows per EP rank: the straggler factor of the expert GEMMs."""
        return max_over_mean(self.compute_tokens_per_rank)

    def summary(self) -> dict[str, float | int | str | None]:
        return {
            "routing": self.routing, "execution": self.execution, "capacity": self.capacity,
            "assignments": self.assignments, "dropped_assignments": self.dropped_assignments,
            "dropped_fraction": self.dropped_fraction,
            "expert_load_max_over_mean": self.expert_load_max_over_mean,
            "rank_compute_max_over_mean": self.rank_compute_max_over_mean,
            "unrouted_tokens": int(self.unrouted_tokens_per_src.sum()),
        }


def assemble_draw(group: EPGroup, raw: RawDraw, cap: CapacityResult, *, routing: str,
                  execution: str) -> RoutingDraw:
    def rank_hot_mul(a: np.ndarray) -> np.ndarray:  # (ep, E) -> (ep, ep): sum over each rank
        return _segment_sum(a[:, group.expert_order], group.rank_starts, group.rank_ends)

    rank_seq = np.lexsort((np.arange(group.ep), group.rank_node_index))
    n_ends = np.cumsum(group.ranks_per_node)

    def node_hot_mul(a: np.ndarray) -> np.ndarray:  # (ep, ep) -> (ep, nodes)
        return _segment_sum(a[:, rank_seq], n_ends - group.ranks_per_node, n_ends)

    processed = cap.processed_tokens_per_src_expert
    dropped = raw.tokens_per_src_expert - processed
    if cap.padded_tokens_per_src_expert is not None:
        # Static shapes: every (source, expert) slot block travels, duplicates included.
        dispatch = rank_hot_mul(cap.padded_tokens_per_src_expert)
        dispatch_node = node_hot_mul(dispatch)
    elif not dropped.any():
        dispatch = raw.tokens_per_src_dst_rank
        dispatch_node = raw.tokens_per_src_dst_node
    else:
        # Approximation: drops remove distinct tokens in proportion to assignments removed.
        assigned = rank_hot_mul(raw.tokens_per_src_expert)
        kept = rank_hot_mul(processed)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(assigned > 0, kept / np.maximum(assigned, 1), 0.0)
        dispatch = np.minimum(np.rint(raw.tokens_per_src_dst_rank * ratio).astype(np.int64), kept)
        dispatch = np.maximum(dispatch, (kept > 0).astype(np.int64))
        before = node_hot_mul(raw.tokens_per_src_dst_rank)
        after = node_hot_mul(dispatch)
        with np.errstate(invalid="ignore", divide="ignore"):
            node_ratio = np.where(before > 0, after / np.maximum(before, 1), 0.0)
        dispatch_node = np.rint(raw.tokens_per_src_dst_node * node_ratio).astype(np.int64)
    compute = np.asarray(cap.compute_tokens_per_expert, dtype=np.int64)
    return RoutingDraw(
        routing=routing, execution=execution, top_k=group.top_k,
        tokens_per_rank=group.tokens_per_rank, capacity=cap.capacity,
        tokens_per_src_expert=raw.tokens_per_src_expert,
        tokens_per_src_dst_rank=raw.tokens_per_src_dst_rank,
        tokens_per_src_dst_node=raw.tokens_per_src_dst_node,
        unrouted_tokens_per_src=raw.unrouted_tokens_per_src,
        processed_tokens_per_src_expert=processed,
        dropped_tokens_per_src_expert=dropped,
        compute_tokens_per_expert=compute,
        compute_tokens_per_rank=rank_hot_mul(compute[None, :])[0],
        dispatch_tokens_per_src_dst_rank=np.asarray(dispatch, dtype=np.int64),
        dispatch_tokens_per_src_dst_node=np.asarray(dispatch_node, dtype=np.int64),
    )
