"""Expert-parallel dispatch and combine of real token routes, as network collectives.

This is where MoE meets the network: from each token's chosen experts to the flows that carry it
(once per destination rank, and with hierarchical dispatch once per destination node over RDMA then
NVLink, as DeepEP's normal kernels do), plus DeepEP's benchmark traffic (group-limited random
top-k) and the byte counts its published bandwidths divide by. simmoe.network itself stays
ignorant of tokens and experts. The engine's dispatch from routing draws (token counts rather than
token routes) is simmoe/engine/moe_comm.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from simmoe.errors import InputError
from simmoe.network.collectives import as_gpu_ids, node_and_local_rank, bus_factor
from simmoe.network.flows import Collective, FlowSet, Stage


def grouped_topk_experts(rng: np.random.Generator, tokens: int, experts: int, top_k: int,
                         groups: int, top_k_groups: int) -> np.ndarray:
    """Group-limited top-k routing of random tokens, as DeepEP's tests draw it.

    Scores |N(0,1)| + 1 per (token, expert); a group's score is its best expert; each token
    keeps its top_k_groups groups and picks its top_k experts inside them. Returns
    (tokens, top_k) expert ids. With groups = nodes this is node-limited routing.
    """
    if experts % groups:
        raise InputError("experts must divide evenly into groups", field="groups", value=groups,
                         allowed=f"a divisor of experts={experts}")
    if not 1 <= top_k_groups <= groups:
        raise InputError("top_k_groups must be between 1 and groups", field="top_k_groups",
                         value=top_k_groups, allowed=f"1..{groups}")
    if not 1 <= top_k <= experts * top_k_groups // groups:
        raise InputError("top_k exceeds the experts inside the chosen groups", field="top_k",
                         value=top_k, allowed=f"1..{experts * top_k_groups // groups}")
    scores = np.abs(rng.standard_normal((tokens, experts), dtype=np.float32)) + 1.0
    group_best = scores.reshape(tokens, groups, -1).max(axis=2)
    chosen = np.argpartition(-group_best, top_k_groups - 1, axis=1)[:, :top_k_groups]
    keep = np.zeros((tokens, groups), dtype=bool)
    np.put_along_axis(keep, chosen, True, axis=1)
    masked = np.where(np.repeat(keep, experts // groups, axis=1), scores, -np.inf)
    return np.argpartition(-masked, top_k - 1, axis=1)[:, :top_k].astype(np.int64)


def moe_token_destinations(topk_experts: np.ndarray, experts_per_rank: int,
                           num_ranks: int) -> np.ndarray:
    """(ranks, tokens, ranks) bool: does token t of rank s go to rank r (once per rank)."""
    topk = np.asarray(topk_experts, dtype=np.int64)
    if topk.ndim != 3:
        raise InputError("top-k expert ids must be (ranks, tokens, top_k)",
                         field="topk_experts", value=topk.shape)
    ranks, tokens, k = topk.shape
    dest = np.zeros((ranks, tokens, num_ranks), dtype=bool)
    s_idx = np.repeat(np.arange(ranks), tokens * k)
    t_idx = np.tile(np.repeat(np.arange(tokens), k), ranks)
    dest[s_idx, t_idx, (topk // experts_per_rank).reshape(-1)] = True
    return dest


def moe_dispatch(gpus: Sequence[int], topk_experts: np.ndarray, *, experts: int,
                 bytes_per_token: float, server_of_gpu: np.ndarray,
                 hierarchical: bool = True, combine: bool = False, pipelined: bool = True,
                 engine: str | None = "deepep") -> Collective:
    """MoE dispatch (or, with ``combine``, its reverse) of real token routes.

    ``topk_experts[s, t]`` are the experts token t of rank s picked; experts are laid out
    contiguously, experts / n per rank. A token goes once to each destination rank. With
    ``hierarchical`` (DeepEP normal kernels) it also crosses the fabric once per destination
    node, to the same local rank there, and is forwarded over NVLink. The legs run as one
    stage when ``pipelined`` (DeepEP's chunked forwarding overlaps them), else one after the
    other (the NVLink leg first for a combine). ``engine`` names the transport for NetworkParams' per-engine efficiencies
    (DeepEP's SM-driven copies by default; None for NCCL). ``meta`` carries DeepEP's benchmark
    byte counts per rank (see :func:`deepep_bytes_per_rank`).
    """
    g = as_gpu_ids(gpus)
    n = len(g)
    if experts % n:
        raise InputError("experts must divide evenly over the EP ranks", field="experts",
                         value=experts, allowed=f"a multiple of {n}")
    dest = moe_token_destinations(topk_experts, experts // n, n)  # (n, T, n)
    node, local = node_and_local_rank(g, np.asarray(server_of_gpu))
    n_nodes = int(node.max()) + 1
    if hierarchical and n_nodes > 1:
        node_members = [np.flatnonzero(node == b) for b in range(n_nodes)]
        if len({len(m) for m in node_members}) != 1:
            raise InputError("hierarchical dispatch needs the same number of EP ranks per node",
                             field="gpus", value=np.bincount(node).tolist())
        per_node = len(node_members[0])
        order = np.lexsort((local, node))  # rank index laid out as (node, local)
        dest_nl = dest[:, :, order].reshape(n, -1, n_nodes, per_node)
        token_nodes = dest_nl.any(axis=3)  # (n, T, nodes)
        rdma_tokens = token_nodes.sum(axis=1)  # (n, nodes)
        by_node = np.empty((n_nodes, per_node), dtype=np.int64)
        by_node[node, local] = np.arange(n)
        s_idx, b_idx = np.nonzero((rdma_tokens > 0) & (node[:, None] != np.arange(n_nodes)))
        relay = by_node[b_idx, local[s_idx]]
        rdma = FlowSet(g[s_idx], g[relay], rdma_tokens[s_idx, b_idx] * bytes_per_token)
        # NVLink leg: the relay (b, l) forwards, from every sender with local rank l, each token
        # once to each destination rank in b.
        per_pair = dest.sum(axis=1).astype(np.float64)  # (src rank, dst rank) tokens
        relay_of = by_node[node[None, :], local[:, None]]  # relay_of[s, d]: relay in d's node
        fwd = np.zeros((n, n))
        np.add.at(fwd, (relay_of.reshape(-1), np.tile(np.arange(n), n)), per_pair.reshape(-1))
        r_i, d_i = np.nonzero(fwd > 0)
        nvl = FlowSet(g[r_i], g[d_i], fwd[r_i, d_i] * bytes_per_token).without_empty()
        legs = [rdma, nvl]
        logical_rdma_tokens = rdma_tokens.sum(axis=1)  # own node included, as DeepEP counts
    else:
        per_pair = dest.sum(axis=1).astype(np.float64)
        i, j = np.nonzero(per_pair > 0)
        legs = [FlowSet(g[i], g[j], per_pair[i, j] * bytes_per_token).without_empty()]
        logical_rdma_tokens = np.zeros(n)
    if combine:  # the reverse: NVLink reduce towards the relays first, then RDMA home
        legs = [FlowSet(f.dst, f.src, f.size_bytes) for f in reversed(legs)]
    stages = (Stage(FlowSet.concat(legs), 1),) if pipelined else \
        tuple(Stage(f, 1) for f in legs)
    recv_tokens = dest.sum(axis=(0, 1))  # tokens each rank receives, self included
    send_tokens = dest.sum(axis=(1, 2))
    meta = {
        "rdma_logical_bytes_per_rank": logical_rdma_tokens * bytes_per_token,
        "nvl_recv_bytes_per_rank": recv_tokens * bytes_per_token,
        "hierarchical": bool(hierarchical and n_nodes > 1),
        "engine": engine,
    }
    size = float(np.mean(recv_tokens if combine else send_tokens) * bytes_per_token)
    return Collective(op="moe_combine" if combine else "moe_dispatch",
                      gpus=tuple(int(x) for x in g), size_bytes=size,
                      stages=stages, bus_factor=bus_factor("alltoall", n), meta=meta)


def deepep_bytes_per_rank(collective: Collective) -> np.ndarray:
    """The bytes DeepEP's benchmark divides by kernel time, per rank.

    Internode (tests/test_internode.py): tokens x destination nodes, the sender's own node
    included, x bytes per token ("RDMA" bandwidth). Intranode (tests/test_intranode.py): tokens
    received, from itself included ("NVL" bandwidth).
    """
    if collective.meta.get("hierarchical"):
        return np.asarray(collective.meta["rdma_logical_bytes_per_rank"], dtype=np.float64)
    return np.asarray(collective.meta["nvl_recv_bytes_per_rank"], dtype=np.float64)
