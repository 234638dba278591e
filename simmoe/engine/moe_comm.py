"""MoE dispatch / combine as a Collective, from a routing draw's token counts.

Flat (NCCL all-to-all-v): one flow per (source, destination) EP rank carrying the distinct tokens
the source sends there times bytes per token.

Hierarchical (DeepEP normal kernels, DeepSeek-V3 §3.2.2): a token crosses the fabric once per
destination node, to the GPU with the sender's local rank in that node, and is forwarded over
NVLink to each destination rank there; both legs run pipelined as one stage (as
simmoe.dispatch.moe_dispatch does from per-token routes). Combine reverses every flow.
"""

from __future__ import annotations

import numpy as np

from simmoe.network.coflow import _local_ranks
from simmoe.network.collectives import bus_factor
from simmoe.network.flows import Collective, FlowSet, Stage


def moe_alltoall(gpus: np.ndarray, tokens_src_dst: np.ndarray, bytes_per_token: float, *,
                 server_of_gpu: np.ndarray, tokens_src_node: np.ndarray | None = None,
                 hierarchical: bool = False, combine: bool = False,
                 engine: str | None = None) -> Collective:
    """``tokens_src_dst[s, d]``: distinct tokens EP rank s sends to rank d (diagonal stays local);
    ``tokens_src_node[s, b]``: distinct tokens s sends to node column b (columns follow the sorted
    distinct nodes of ``gpus``), needed when ``hierarchical``."""
    g = np.asarray(gpus, dtype=np.int64)
    n = len(g)
    t = np.asarray(tokens_src_dst, dtype=np.float64)
    _, node = np.unique(np.asarray(server_of_gpu)[g], return_inverse=True)
    n_nodes = int(node.max()) + 1
    if hierarchical and n_nodes > 1 and tokens_src_node is not None:
        local = _local_ranks(node)
        by_node = np.full((n_nodes, n), -1, dtype=np.int64)
        by_node[node, local] = np.arange(n)
        tn = np.asarray(tokens_src_node, dtype=np.float64)
        s_idx, b_idx = np.nonzero((tn > 0) & (node[:, None] != np.arange(n_nodes)[None, :]))
        relay = by_node[b_idx, local[s_idx]]
        ok = relay >= 0  # uneven nodes: no same-index peer, send straight to the rank (below)
        rdma = FlowSet(g[s_idx[ok]], g[relay[ok]], tn[s_idx[ok], b_idx[ok]] * bytes_per_token)
        relay_of = by_node[node[None, :], local[:, None]]  # [s, d]: relay in d's node for s
        direct = relay_of < 0
        relay_of = np.where(direct, np.arange(n)[None, :], relay_of)
        fwd = np.zeros((n, n))
        np.add.at(fwd, (relay_of.reshape(-1), np.tile(np.arange(n), n)), t.reshape(-1))
        r_i, d_i = np.nonzero(fwd > 0)
        flows = FlowSet.concat([rdma, FlowSet(g[r_i], g[d_i], fwd[r_i, d_i] * bytes_per_token)])
    else:
        i, j = np.nonzero(t > 0)
        flows = FlowSet(g[i], g[j], t[i, j] * bytes_per_token)
    flows = flows.without_empty()
    if combine:
        flows = FlowSet(flows.dst, flows.src, flows.size_bytes)
    sent = t.sum(axis=0 if combine else 1)
    return Collective(op="moe_combine" if combine else "moe_dispatch",
                      gpus=tuple(int(x) for x in g),
                      size_bytes=float(sent.mean() * bytes_per_token),
                      stages=(Stage(flows, 1),), bus_factor=bus_factor("alltoall", n),
                      meta={"engine": engine, "hierarchical": bool(hierarchical and n_nodes > 1)})
