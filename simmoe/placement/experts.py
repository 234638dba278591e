"""Expert -> EP-rank placement: contiguous, round-robin, and topology-aware (load-balancing) policies.

A placement is an int array ``(num_experts,)`` giving each expert's EP rank (0..ep-1). Every policy
gives every EP rank exactly num_experts/ep experts, as Megatron-Core and DeepEP require (one local
grouped GEMM of the same expert count on every rank).

What "topology_aware" optimises (lexicographically, with the per-expert expected load as the only
traffic model; see docs/placement.md):

1. the largest expected load per GPU of any node (node load / EP ranks on that node): the routed
   tokens a node receives from other nodes are proportional to its load, so this is the busiest
   node's inter-node all-to-all volume per NIC on a rail-optimised node;
2. the largest expected load of any EP rank: in dropless execution the busiest expert rank sets the
   pace of the grouped GEMM and of its all-to-all;
3. the sum of squared EP-rank loads (a tie-break towards evenness),

subject to: E/ep experts per EP rank and, if ``router_num_groups`` is given, every node-limited
routing group (contiguous expert ids, DeepSeek-V3's ``n_group`` / Megatron's
``moe_router_num_groups``) lying on whole nodes. Without ``router_num_groups`` the routing groups
are defined by the placement itself (``node_of_expert``), so node-limited routing maps to whole nodes
by construction. Method: greedy LPT at node level (units = routing groups or single experts), then
LPT inside each node over its EP ranks, then pairwise swaps inside each node while they lower the
busiest rank; finally the result is compared with "contiguous" and "round_robin" (where those meet
the same constraints) and the best is returned, so it is never worse than either on this objective.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from simmoe.errors import InputError

POLICIES = ("contiguous", "round_robin", "topology_aware")
POLICY_FIELD = "parallelism.expert_placement"
EXPERTS_FIELD = "model.moe.experts"
GROUPS_FIELD = "model.moe.router_num_groups"


def _positive_int(value: Any, field: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError("must be a positive integer", field=field, value=value, has_value=True,
                         allowed="1, 2, 3, ...")
    return int(value)


def _check_expert_load(expert_load: Any, num_experts: int) -> np.ndarray:
    if expert_load is None:
        return np.ones(num_experts)
    load = np.asarray(expert_load, dtype=float)
    if load.shape != (num_experts,):
        raise InputError(f"must hold one value per expert ({num_experts})", field="expert_load",
                         value=f"shape {load.shape}", allowed=f"shape ({num_experts},)")
    if not np.all(np.isfinite(load)) or np.any(load < 0):
        raise InputError("must be finite and non-negative", field="expert_load",
                         value="negative or non-finite entries", allowed="floats >= 0")
    return load


def _node_of_ep_rank(ep: int, ep_group_gpus: Any, topology: Any) -> np.ndarray:
    """Dense node index (0..n_nodes-1) of each EP rank; all on node 0 if no topology is given."""
    if topology is None:
        return np.zeros(ep, dtype=np.int64)
    node_of_gpu = np.asarray(getattr(topology, "server_of_gpu", topology))
    if ep_group_gpus is None:
        raise InputError("is needed with a topology (the GPU of each EP rank)", field="ep_group_gpus",
                         allowed=f"{ep} distinct GPU ids")
    gpus = np.asarray(ep_group_gpus)
    if gpus.shape != (ep,) or not np.issubdtype(gpus.dtype, np.integer):
        raise InputError(f"must list one GPU id per EP rank ({ep})", field="ep_group_gpus",
                         value=f"shape {gpus.shape}, dtype {gpus.dtype}", allowed=f"{ep} distinct GPU ids")
    if gpus.min() < 0 or gpus.max() >= node_of_gpu.shape[0] or np.unique(gpus).size != ep:
        raise InputError("GPU ids must be distinct and exist in the topology", field="ep_group_gpus",
                         value=gpus.tolist(), allowed=f"distinct ids in 0..{node_of_gpu.shape[0] - 1}")
    return np.unique(node_of_gpu[gpus], return_inverse=True)[1].astype(np.int64)


def _contiguous(num_experts: int, ep: int) -> np.ndarray:
    return np.arange(num_experts, dtype=np.int64) // (num_experts // ep)


def _round_robin(num_experts: int, ep: int) -> np.ndarray:
    return np.arange(num_experts, dtype=np.int64) % ep


def _lpt(item_load: np.ndarray, bin_slots: np.ndarray, bin_weight: np.ndarray) -> np.ndarray:
    """Longest-processing-time greedy with slot limits: heaviest item first, into the bin with the
    lowest load/weight among bins with a free slot (ties: lowest bin index). Returns item -> bin."""
    order = np.argsort(-item_load, kind="stable")
    free = bin_slots.astype(np.int64).copy()
    load = np.zeros(len(bin_slots))
    out = np.empty(len(item_load), dtype=np.int64)
    # Python loop over items only (E <= a few hundred); the bin choice is vectorised.
    for i in order:
        score = np.where(free > 0, load / bin_weight, np.inf)
        b = int(np.argmin(score))
        out[i] = b
        load[b] += item_load[i]
        free[b] -= 1
    return out


def _refine_by_swaps(rank_of: np.ndarray, load: np.ndarray, ranks: np.ndarray) -> None:
    """Swap experts between the busiest rank and another rank of ``ranks`` while that lowers the
    pair's maximum below the busiest load (each swap strictly lowers the sum of squares, so this
    ends). Modifies ``rank_of`` in place."""
    if len(ranks) < 2:
        return
    for _ in range(4 * len(rank_of)):
        members = [np.flatnonzero(rank_of == r) for r in ranks]
        rank_load = np.array([load[m].sum() for m in members])
        b = int(np.argmax(rank_load))
        others = [k for k in range(len(ranks)) if k != b]
        best = (rank_load[b], None)
        for c in others:
            d = load[members[b]][:, None] - load[members[c]][None, :]  # load moved from b to c
            pair_max = np.maximum(rank_load[b] - d, rank_load[c] + d)
            i, j = np.unravel_index(np.argmin(pair_max), pair_max.shape)
            if pair_max[i, j] < best[0] - 1e-12 * max(rank_load[b], 1.0):
                best = (pair_max[i, j], (members[b][i], members[c][j], ranks[b], ranks[c]))
        if best[1] is None:
            return
        x, y, rb, rc = best[1]
        rank_of[x], rank_of[y] = rc, rb


def _score(placement: np.ndarray, load: np.ndarray, node_of_rank: np.ndarray, ep: int) -> tuple:
    rank_load = np.bincount(placement, weights=load, minlength=ep)
    ranks_per_node = np.bincount(node_of_rank)
    node_load = np.bincount(node_of_rank, weights=rank_load)
    # Rounded relative to the total so that equal balances summed in a different order tie.
    scale = max(load.sum(), 1e-300)
    return tuple(round(float(x) / scale, 9) for x in (
        (node_load / ranks_per_node).max(), rank_load.max(), (rank_load**2).sum() / scale))


def _groups_on_whole_nodes(placement: np.ndarray, node_of_rank: np.ndarray, group_size: int) -> bool:
    nodes = node_of_rank[placement].reshape(-1, group_size)
    return bool(np.all(nodes == nodes[:, :1]))


def _topology_aware(num_experts: int, ep: int, load: np.ndarray, node_of_rank: np.ndarray,
                    router_num_groups: int | None) -> np.ndarray:
    per_rank = num_experts // ep
    ranks_per_node = np.bincount(node_of_rank)
    node_slots = ranks_per_node * per_rank
    group_size = 1 if router_num_groups is None else num_experts // router_num_groups
    if np.any(node_slots % group_size):
        raise InputError(
            f"routing groups of {group_size} experts do not fit whole nodes holding "
            f"{sorted(set(node_slots.tolist()))} experts each", field=GROUPS_FIELD,
            value=router_num_groups, allowed="a group count whose group size divides each node's expert count")

    # 1) units (routing groups or single experts) -> nodes
    unit_load = load.reshape(-1, group_size).sum(axis=1)
    node_of_unit = _lpt(unit_load, node_slots // group_size, ranks_per_node.astype(float))
    node_of_expert = np.repeat(node_of_unit, group_size)

    # 2) experts of each node -> that node's EP ranks, then 3) swaps inside the node
    placement = np.full(num_experts, -1, dtype=np.int64)
    for node in range(len(ranks_per_node)):
        experts = np.flatnonzero(node_of_expert == node)
        ranks = np.flatnonzero(node_of_rank == node)
        local = _lpt(load[experts], np.full(len(ranks), per_rank), np.ones(len(ranks)))
        placement[experts] = ranks[local]
        _refine_by_swaps(placement, load, ranks)

    # 4) never worse than the simple policies, where they meet the same constraints; ties go to the
    # simpler layout.
    candidates = [_contiguous(num_experts, ep), _round_robin(num_experts, ep), placement]
    feasible = [p for p in candidates if _groups_on_whole_nodes(p, node_of_rank, group_size)]
    return min(feasible, key=lambda p: _score(p, load, node_of_rank, ep))


def place_experts(
    num_experts: int,
    ep: int,
    policy: str,
    *,
    ep_group_gpus: Any = None,
    topology: Any = None,
    expert_load: Any = None,
    router_num_groups: int | None = None,
) -> np.ndarray:
    """(num_experts,) int array: the EP rank (0..ep-1) holding each expert.

    policy: "contiguous" (experts [i*E/ep, (i+1)*E/ep) on EP rank i), "round_robin" (expert e on
    EP rank e % ep), or "topology_aware" (see the module docstring). For "topology_aware":
    ``topology`` is a Topology (its ``server_of_gpu`` defines nodes) or a plain GPU -> node array
    (pass ``nvlink_domain_of_gpu`` to treat an NVLink domain as the node); ``ep_group_gpus`` the GPU
    of each EP rank (e.g. ``layout.gpu_groups("ep")[g]``); ``expert_load`` the expected tokens (or
    share) per expert, uniform if omitted; ``router_num_groups`` the node-limited routing groups of
    contiguous expert ids that must stay on whole nodes. Without a topology all EP ranks count as
    one node and only the per-rank balance is optimised.
    """
    num_experts = _positive_int(num_experts, EXPERTS_FIELD)
    ep = _positive_int(ep, "parallelism.ep")
    if num_experts % ep:
        raise InputError(f"parallelism.ep={ep} does not divide the number of experts",
                         field=EXPERTS_FIELD, value=num_experts, allowed=f"a multiple of {ep}")
    if policy not in POLICIES:
        raise InputError("unknown expert placement policy", field=POLICY_FIELD, value=policy,
                         has_value=True, allowed=", ".join(POLICIES))
    load = _check_expert_load(expert_load, num_experts)
    if router_num_groups is not None:
        router_num_groups = _positive_int(router_num_groups, GROUPS_FIELD)
        if num_experts % router_num_groups:
            raise InputError("does not divide the number of experts", field=GROUPS_FIELD,
                             value=router_num_groups, allowed=f"a divisor of {num_experts}")
    if policy == "contiguous":
        return _contiguous(num_experts, ep)
    if policy == "round_robin":
        return _round_robin(num_experts, ep)
    node_of_rank = _node_of_ep_rank(ep, ep_group_gpus, topology)
    return _topology_aware(num_experts, ep, load, node_of_rank, router_num_groups)


def _check_placement(placement: Any, ep: int) -> np.ndarray:
    p = np.asarray(placement)
    if p.ndim != 1 or not np.issubdtype(p.dtype, np.integer) or (p.size and (p.min() < 0 or p.max() >= ep)):
        raise InputError("must be a 1-D int array of EP ranks", field="placement",
                         value=f"shape {p.shape}, dtype {p.dtype}", allowed=f"ints in 0..{ep - 1}")
    return p.astype(np.int64)


def experts_per_rank(placement: Any, ep: int) -> np.ndarray:
    """(ep,) number of experts on each EP rank."""
    return np.bincount(_check_placement(placement, ep), minlength=ep)


def experts_of_rank(placement: Any, ep: int) -> np.ndarray:
    """(ep, E/ep) expert ids on each EP rank, ascending (the inverse of ``placement``); column j is
    the rank's local expert j."""
    p = _check_placement(placement, ep)
    counts = np.bincount(p, minlength=ep)
    if np.any(counts != counts[0]):
        raise InputError("EP ranks hold different numbers of experts", field="placement",
                         value=counts.tolist(), allowed="the same count on every EP rank")
    return np.argsort(p, kind="stable").reshape(ep, -1)


def node_of_expert(placement: Any, node_of_ep_rank: Any) -> np.ndarray:
    """(num_experts,) node of each expert: the node-limited routing group it belongs to when groups
    follow the placement."""
    nodes = np.asarray(node_of_ep_rank)
    return nodes[_check_placement(placement, nodes.shape[0])]
