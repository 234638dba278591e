"""MoE dispatch / combine as a Collective, from a routing draw's token counts.

Flat (NCCL all-to-all-v): one flow per (source, destination) EP rank carrying the distinct tokens
the source sends there times bytes per token.

Hierarchical (DeepEP normal kernels, DeepSeek-V3 §3.2.2): a token crosses the fabric once per
destination node, to the GPU with the sender's local rank in that node, and is forwarded over
NVLink to each destination rank there; both legs run pipelined as one stage (as
simmoe.network.collectives.moe_dispatch does from per-token routes). Combine reverses every flow.
"""

from __future__ import annotations

import numpy as np

from simmoe.network.collectives import bus_factor
from simmoe.network.flows import Collective, FlowSet, Stage


def _local_ranks(node: np.ndarray) -> np.ndarray:
    local = np.zeros(len(node), dtype=np.int64)
    for b in np.unique(node):  # per node: a handful
        members = np.flatnonzero(node == b)
        local[members] = np.arange(len(members))
    return local


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


class MoeLinkLoads:
    """Link loads of an EP group's dispatch/combine without building flows (coflow network only).

    Routes of every possible (source, destination) pair of the group are computed once; one
    all-to-all is then a sparse product: bytes per pair @ route fractions per pair.
    """

    def __init__(self, topology, gpus: np.ndarray, server_of_gpu: np.ndarray, hierarchical: bool) -> None:
        import scipy.sparse as sp

        g = np.asarray(gpus, dtype=np.int64)
        n = len(g)
        _, node = np.unique(np.asarray(server_of_gpu)[g], return_inverse=True)
        self.n, self.n_nodes = n, int(node.max()) + 1
        self.hier = bool(hierarchical and self.n_nodes > 1)
        lat = np.asarray(topology.link_latency_s, dtype=np.float64)
        src, dst = np.repeat(np.arange(n), n), np.tile(np.arange(n), n)
        self.R_pair = sp.csr_matrix(topology.route_matrix(g[src], g[dst]))  # rows s * n + d
        self.lat_pair = np.asarray(self.R_pair @ lat).reshape(-1)
        if self.hier:
            local = _local_ranks(node)
            by_node = np.full((self.n_nodes, n), -1, dtype=np.int64)
            by_node[node, local] = np.arange(n)
            s_idx = np.repeat(np.arange(n), self.n_nodes)
            b_idx = np.tile(np.arange(self.n_nodes), n)
            relay = by_node[b_idx, local[s_idx]]
            self.rdma_ok = ((relay >= 0) & (node[s_idx] != b_idx)).reshape(n, self.n_nodes)
            relay_safe = np.where(relay >= 0, relay, s_idx)
            self.R_rdma = sp.csr_matrix(topology.route_matrix(g[s_idx], g[relay_safe]))  # rows s * nodes + b
            self.lat_rdma = np.asarray(self.R_rdma @ lat).reshape(-1)
            self.R_rdma_rev = sp.csr_matrix(topology.route_matrix(g[relay_safe], g[s_idx]))
            self.lat_rdma_rev = np.asarray(self.R_rdma_rev @ lat).reshape(-1)
            relay_of = by_node[node[None, :], local[:, None]]
            self.relay_of = np.where(relay_of < 0, np.arange(n)[None, :], relay_of)  # [s, d]

    def loads(self, tokens_src_dst: np.ndarray, tokens_src_node: np.ndarray | None,
              bytes_per_token: float, combine: bool) -> tuple[np.ndarray, float, float]:
        """(bytes per link, longest route latency, total bytes) of one dispatch (or combine)."""
        t = np.asarray(tokens_src_dst, dtype=np.float64)
        n = self.n
        if self.hier and tokens_src_node is not None:
            rd = np.where(self.rdma_ok, np.asarray(tokens_src_node, dtype=np.float64), 0.0).reshape(-1)
            fwd = np.zeros((n, n))
            np.add.at(fwd, (self.relay_of.reshape(-1), np.tile(np.arange(n), n)), t.reshape(-1))
            np.fill_diagonal(fwd, 0.0)
            # Combine reverses every flow: the RDMA leg relay -> source, NVLink d -> relay.
            pair = (fwd.T if combine else fwd).reshape(-1)
            rdma = (rd, self.R_rdma_rev, self.lat_rdma_rev) if combine else (rd, self.R_rdma, self.lat_rdma)
            parts = [rdma, (pair, self.R_pair, self.lat_pair)]
        else:
            pair = t.T.copy() if combine else t.copy()  # row s * n + d of R_pair routes s -> d
            np.fill_diagonal(pair, 0.0)
            parts = [(pair.reshape(-1), self.R_pair, self.lat_pair)]
        load = 0.0
        latency, total = 0.0, 0.0
        for w, R, lat in parts:
            load = load + np.asarray(R.T @ w).reshape(-1)
            used = w > 0
            if used.any():
                latency = max(latency, float(lat[used].max()))
            total += float(w.sum())
        return load * bytes_per_token, latency, total * bytes_per_token
