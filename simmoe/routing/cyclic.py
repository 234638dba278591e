"""Cyclic routing: the deterministic, perfectly balanced router of throughput benchmarks.

Token t of every source rank takes experts ``(t * k + i) mod E`` for ``i < k``: consecutive expert
ids, cycling through all experts. This is NeMo Automodel's ``fake_balanced_gate`` (its
FakeBalancedGate builds ``arange(tokens * k).view(-1, k) % E``), used by its published performance
table. It differs from uniform random routing (Megatron's ``moe_router_force_load_balancing``,
simmoe's ``token_choice`` with uniform popularity) in the traffic it makes: with experts placed
contiguously, a token's k consecutive experts sit on one or two ranks (one when E/ep is a multiple
of k), on one node when a node's expert count is a multiple of k, where k random experts reach
up to k ranks on up to k nodes.

Exact, not sampled: the assignment does not depend on the seed, the step or the layer.
"""

from __future__ import annotations

import numpy as np

from simmoe.routing.exact import RawDraw
from simmoe.routing.group import EPGroup


def cyclic_draw(group: EPGroup) -> RawDraw:
    """The routing of one micro-batch (identical for every source rank)."""
    t, k, n_exp, ep = group.tokens_per_rank, group.top_k, group.num_experts, group.ep
    experts = (np.arange(t * k, dtype=np.int64) % n_exp).reshape(t, k)
    per_expert = np.bincount(experts.ravel(), minlength=n_exp).astype(np.int64)
    ranks = group.expert_to_rank[experts]  # (t, k)
    nodes = group.rank_node_index[ranks]
    rank_hit = np.zeros((t, ep), dtype=bool)
    np.put_along_axis(rank_hit, ranks, True, axis=1)
    node_hit = np.zeros((t, group.num_nodes), dtype=bool)
    np.put_along_axis(node_hit, nodes, True, axis=1)
    return RawDraw(
        tokens_per_src_expert=np.tile(per_expert, (ep, 1)),
        tokens_per_src_dst_rank=np.tile(rank_hit.sum(axis=0, dtype=np.int64), (ep, 1)),
        tokens_per_src_dst_node=np.tile(node_hit.sum(axis=0, dtype=np.int64), (ep, 1)),
        unrouted_tokens_per_src=np.zeros(ep, dtype=np.int64),
    )
