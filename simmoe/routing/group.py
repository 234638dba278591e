"""The geometry of one expert-parallel (EP) group, as the routing model needs it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simmoe.errors import InputError


@dataclass(frozen=True)
class EPGroup:
    """``ep`` ranks, each holding ``tokens_per_rank`` tokens per micro-batch; routed expert e lives
    on EP rank ``expert_to_rank[e]``; EP rank r lives on node ``rank_to_node[r]`` (any ids; output
    columns follow ``node_ids``, the sorted distinct ids)."""

    expert_to_rank: np.ndarray
    rank_to_node: np.ndarray
    tokens_per_rank: int
    top_k: int
    # Derived (filled in __post_init__).
    node_ids: np.ndarray = field(init=False)
    rank_node_index: np.ndarray = field(init=False)  # (ep,) node column of each rank
    expert_order: np.ndarray = field(init=False)  # experts sorted by (node, rank): blocks contiguous
    rank_starts: np.ndarray = field(init=False)  # per rank: [start, end) in expert_order
    rank_ends: np.ndarray = field(init=False)
    node_starts: np.ndarray = field(init=False)
    node_ends: np.ndarray = field(init=False)
    experts_per_rank: np.ndarray = field(init=False)
    ranks_per_node: np.ndarray = field(init=False)
    rank_one_hot: np.ndarray = field(init=False)  # (E, ep) float
    node_one_hot: np.ndarray = field(init=False)  # (ep, nodes) float

    def __post_init__(self) -> None:
        e2r = np.asarray(self.expert_to_rank)
        r2n = np.asarray(self.rank_to_node)
        if r2n.ndim != 1 or r2n.size < 1 or not np.issubdtype(r2n.dtype, np.integer):
            raise InputError("rank_to_node must be a 1-D integer array with one entry per EP rank",
                             field="rank_to_node", value=r2n.tolist()[:8])
        ep = r2n.size
        if e2r.ndim != 1 or e2r.size < 1 or not np.issubdtype(e2r.dtype, np.integer):
            raise InputError("expert_to_rank must be a 1-D integer array with one entry per expert",
                             field="expert_to_rank", value=e2r.tolist()[:8])
        if e2r.min() < 0 or e2r.max() >= ep:
            raise InputError("expert placed on a rank outside the EP group",
                             field="expert_to_rank", value=int(e2r[(e2r < 0) | (e2r >= ep)][0]),
                             allowed=f"0..{ep - 1}")
        if not isinstance(self.tokens_per_rank, (int, np.integer)) or self.tokens_per_rank < 1:
            raise InputError("tokens per rank must be a positive integer", field="tokens_per_rank",
                             value=self.tokens_per_rank, allowed=">= 1")
        if not isinstance(self.top_k, (int, np.integer)) or not 1 <= self.top_k <= e2r.size:
            raise InputError("top_k must be an integer between 1 and the number of experts",
                             field="top_k", value=self.top_k, allowed=f"1..{e2r.size}")
        node_ids, rank_node = np.unique(r2n, return_inverse=True)
        order = np.lexsort((np.arange(e2r.size), e2r, rank_node[e2r]))
        per_rank = np.bincount(e2r, minlength=ep)
        # Rank blocks in expert_order: ranks appear sorted by (node, rank).
        rank_seq = np.lexsort((np.arange(ep), rank_node))
        starts = np.zeros(ep, dtype=np.int64)
        starts[rank_seq] = np.concatenate([[0], np.cumsum(per_rank[rank_seq])[:-1]])
        ends = starts + per_rank
        nodes = node_ids.size
        experts_per_node = np.bincount(rank_node[e2r], minlength=nodes)
        n_ends = np.cumsum(experts_per_node)
        sets = {
            "expert_to_rank": e2r.astype(np.int64), "rank_to_node": r2n.astype(np.int64),
            "node_ids": node_ids, "rank_node_index": rank_node.astype(np.int64),
            "expert_order": order, "rank_starts": starts, "rank_ends": ends,
            "node_starts": n_ends - experts_per_node, "node_ends": n_ends,
            "experts_per_rank": per_rank, "ranks_per_node": np.bincount(rank_node, minlength=nodes),
            "rank_one_hot": np.eye(ep)[e2r], "node_one_hot": np.eye(nodes)[rank_node],
        }
        for name, value in sets.items():
            object.__setattr__(self, name, value)

    @property
    def num_experts(self) -> int:
        return int(self.expert_to_rank.size)

    @property
    def ep(self) -> int:
        return int(self.rank_to_node.size)

    @property
    def num_nodes(self) -> int:
        return int(self.node_ids.size)

    @property
    def expert_node_index(self) -> np.ndarray:
        return self.rank_node_index[self.expert_to_rank]
