"""Collectives as flows, in NCCL's conventions.

Each builder returns a :class:`~simmoe.network.flows.Collective`: ordered stages of concurrent
flows, the number of sequential message latencies each stage pays, NCCL's per-rank message size
``size_bytes`` (the ``--bytes`` of nccl-tests) and the bus factor that turns algbw into busbw.
Flow decompositions (docs/network.md has the derivations):

- all-to-all(-v): one flow per ordered pair carrying that pair's bytes; one stage.
- hierarchical all-to-all: stage 1 sends, from each GPU, one RDMA flow to the GPU with the same
  local rank in every other node, carrying everything that node's GPUs need from it; stage 2
  forwards over NVLink inside the destination node (DeepEP normal kernels, NCCL PXN).
  ``pipelined=True`` runs both legs as one stage (chunked forwarding overlaps them).
- ring all-reduce: each rank sends 2(n-1)/n * S to its ring successor, 2(n-1) latency steps;
  reduce-scatter and all-gather (n-1)/n * S, n-1 steps. Multi-node rings use one channel per
  local rank and alternate direction node by node, so every inter-node hop stays on one rail
  and every NIC carries exactly one channel each way.
- NVLS all-reduce (NVLink SHARP, one NVLink domain): each GPU owns 1/n of the buffer; the switch
  reads that shard from all n GPUs, reduces it and returns it (multimem.ld_reduce), then the owner
  multicasts the result (multimem.st), which the switch writes to all n GPUs. Per GPU port:
  S + S/n out and S/n + S in, i.e. S(n+1)/n each way (ring: 2S(n-1)/n). As flows: every ordered
  pair carries S(n+1)/(n(n-1)), which loads each port exactly that much; 2 latency steps; the
  ``nvls`` transport engine (NCCL's NVLS efficiency, simmoe.network.params).
- p2p (nccl-tests sendrecv): rank i sends S to rank (i + n/2) mod n.

Nothing here knows about links or bandwidth: GPUs are global ids, nodes come from the caller
(``server_of_gpu``, usually ``Topology.server_of_gpu``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from simmoe.errors import InputError
from simmoe.network.flows import Collective, FlowSet, Stage

OPS = ("alltoall", "alltoallv", "allreduce", "reduce_scatter", "all_gather", "p2p",
       "hierarchical_alltoall")
# NCCL_ALGO values simmoe models; NVLS only for all-reduce inside one NVLink domain.
ALGORITHMS = ("ring", "nvls")



def bus_factor(op: str, n: int) -> float:
    """NCCL's busbw / algbw factor (nccl-tests doc/PERFORMANCE.md)."""
    if n <= 1:
        return 1.0
    if op == "allreduce":
        return 2.0 * (n - 1) / n
    if op in ("alltoall", "alltoallv", "hierarchical_alltoall", "reduce_scatter", "all_gather"):
        return (n - 1) / n
    return 1.0


def as_gpu_ids(gpus: Sequence[int], *, field: str = "gpus") -> np.ndarray:
    arr = np.asarray(gpus, dtype=np.int64).reshape(-1)
    if len(arr) == 0:
        raise InputError("a collective needs at least one GPU", field=field, value=list(arr))
    if len(np.unique(arr)) != len(arr):
        raise InputError("GPU ids in a collective must be distinct", field=field,
                         value=arr.tolist())
    return arr


def _check_size(size_bytes: float, *, field: str = "size_bytes") -> float:
    size = float(size_bytes)
    if not np.isfinite(size) or size < 0:
        raise InputError("message size must be a finite number of bytes >= 0", field=field,
                         value=size_bytes)
    return size


def node_and_local_rank(gpus: np.ndarray, server_of_gpu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(node index within the group, local rank within that node) of each group member.

    Nodes are numbered in order of first appearance; local rank is the order inside the node.
    """
    servers = np.asarray(server_of_gpu)[gpus]
    _, node = np.unique(servers, return_inverse=True)
    local = np.zeros(len(gpus), dtype=np.int64)
    for b in np.unique(node):  # per node, not per flow: a few dozen iterations at most
        members = np.flatnonzero(node == b)
        local[members] = np.arange(len(members))
    return node.astype(np.int64), local


# --------------------------------------------------------------------------------------------
# all-to-all


def alltoallv(gpus: Sequence[int], bytes_matrix: np.ndarray, *, op: str = "alltoallv",
              latency_steps: int = 1) -> Collective:
    """All-to-all with arbitrary per-pair sizes: ``bytes_matrix[i, j]`` goes from rank i to j.

    NCCL's ``size_bytes`` is the mean per-rank send total (self included, as nccl-tests counts
    its send buffer), so a uniform matrix gives exactly nccl-tests' alltoall.
    """
    g = as_gpu_ids(gpus)
    m = np.asarray(bytes_matrix, dtype=np.float64)
    n = len(g)
    if m.shape != (n, n):
        raise InputError("all-to-all byte matrix must be (n x n) for n GPUs",
                         field="bytes_matrix", value=m.shape, allowed=f"shape ({n}, {n})")
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise InputError("all-to-all byte matrix entries must be finite and >= 0",
                         field="bytes_matrix", value="negative or non-finite entry")
    i, j = np.nonzero((m > 0) & ~np.eye(n, dtype=bool))
    flows = FlowSet(g[i], g[j], m[i, j])
    size = float(m.sum(axis=1).mean())
    return Collective(op=op, gpus=tuple(int(x) for x in g), size_bytes=size,
                      stages=(Stage(flows, latency_steps),), bus_factor=bus_factor("alltoall", n),
                      meta={"bytes_matrix": m})


def alltoall(gpus: Sequence[int], size_bytes: float) -> Collective:
    """nccl-tests alltoall: each rank sends size_bytes / n to every rank (itself included)."""
    g = as_gpu_ids(gpus)
    size = _check_size(size_bytes)
    n = len(g)
    return alltoallv(g, np.full((n, n), size / n), op="alltoall")


def _hierarchical_flows(gpus: np.ndarray, m: np.ndarray, server_of_gpu: np.ndarray,
                        ) -> tuple[FlowSet, FlowSet]:
    """RDMA leg and NVLink leg of a hierarchical all-to-all without per-token dedup."""
    node, local = node_and_local_rank(gpus, server_of_gpu)
    n_nodes = int(node.max()) + 1
    # Receiving GPU in node b for a sender with local rank l: same local rank, or l mod size
    # when node b has fewer group members (an uneven group).
    members = [np.flatnonzero(node == b) for b in range(n_nodes)]
    # rdma[s, b]: bytes s sends towards node b; fwd[s, d]: bytes of s's that the relay in d's
    # node forwards to d.
    node_onehot = np.zeros((len(gpus), n_nodes))
    node_onehot[np.arange(len(gpus)), node] = 1.0
    rdma = m @ node_onehot  # (n, n_nodes)
    relay = np.empty((len(gpus), n_nodes), dtype=np.int64)
    for b in range(n_nodes):
        relay[:, b] = members[b][local % len(members[b])]
    s_idx, b_idx = np.nonzero(rdma > 0)
    keep = node[s_idx] != b_idx  # own node: no RDMA hop
    rdma_flows = FlowSet(gpus[s_idx[keep]], gpus[relay[s_idx[keep], b_idx[keep]]],
                         rdma[s_idx[keep], b_idx[keep]])
    # NVLink leg: relay of (s, node(d)) -> d carries m[s, d]; aggregate per (relay, d).
    s_all, d_all = np.nonzero(m > 0)
    r_all = relay[s_all, node[d_all]]
    fwd = np.zeros((len(gpus), len(gpus)))
    np.add.at(fwd, (r_all, d_all), m[s_all, d_all])
    r_i, d_i = np.nonzero(fwd > 0)
    nvl_flows = FlowSet(gpus[r_i], gpus[d_i], fwd[r_i, d_i]).without_empty()
    return rdma_flows, nvl_flows


def hierarchical_alltoall(gpus: Sequence[int], size_bytes: float | None = None, *,
                          server_of_gpu: np.ndarray, bytes_matrix: np.ndarray | None = None,
                          pipelined: bool = False) -> Collective:
    """Two-hop all-to-all: RDMA to the same local rank in each destination node, then NVLink.

    Give either ``size_bytes`` (uniform, as nccl-tests alltoall) or ``bytes_matrix``. With
    ``pipelined`` both legs run as one stage (chunked forwarding overlaps them, as DeepEP's
    normal kernels do); otherwise the NVLink leg starts when the RDMA leg has finished.
    """
    g = as_gpu_ids(gpus)
    n = len(g)
    if bytes_matrix is None:
        if size_bytes is None:
            raise InputError("hierarchical all-to-all needs size_bytes or bytes_matrix",
                             field="size_bytes")
        m = np.full((n, n), _check_size(size_bytes) / n)
    else:
        m = alltoallv(g, bytes_matrix).meta["bytes_matrix"]  # validates the matrix
    rdma, nvl = _hierarchical_flows(g, m, np.asarray(server_of_gpu))
    stages = (Stage(FlowSet.concat([rdma, nvl]), 1),) if pipelined else \
        (Stage(rdma, 1), Stage(nvl, 1))
    return Collective(op="hierarchical_alltoall", gpus=tuple(int(x) for x in g),
                      size_bytes=float(m.sum(axis=1).mean()), stages=stages,
                      bus_factor=bus_factor("alltoall", n),
                      meta={"bytes_matrix": m, "pipelined": pipelined})


# --------------------------------------------------------------------------------------------
# rings


def ring_channels(gpus: Sequence[int], server_of_gpu: np.ndarray | None = None,
                  ) -> list[np.ndarray]:
    """Ring orders (one per channel) that keep intra-node hops on NVLink and inter-node hops
    on one rail.

    One node (or no node information): a single ring in the given order. Several nodes with L
    group members each: L channels; channel c runs c, c+1, ..., c-1 through even nodes and the
    reverse through odd ones, so each inter-node hop joins the same local rank on both sides and
    each NIC carries one channel each way (an odd node count leaves one cross-rail hop).
    """
    g = as_gpu_ids(gpus)
    if server_of_gpu is None:
        return [g]
    node, local = node_and_local_rank(g, np.asarray(server_of_gpu))
    n_nodes = int(node.max()) + 1
    sizes = np.bincount(node, minlength=n_nodes)
    if n_nodes == 1 or np.any(sizes != sizes[0]):
        order = np.lexsort((local, node))  # uneven groups: one node-contiguous ring
        return [g[order]]
    per_node = sizes[0]
    by_node = np.empty((n_nodes, per_node), dtype=np.int64)
    by_node[node, local] = g
    rings = []
    for c in range(per_node):
        forward = (c + np.arange(per_node)) % per_node
        parts = [by_node[b, forward if b % 2 == 0 else forward[::-1]] for b in range(n_nodes)]
        rings.append(np.concatenate(parts))
    return rings


def _ring_collective(op: str, gpus: Sequence[int], size_bytes: float, bytes_factor: float,
                     steps: int, server_of_gpu: np.ndarray | None) -> Collective:
    g = as_gpu_ids(gpus)
    size = _check_size(size_bytes)
    n = len(g)
    rings = ring_channels(g, server_of_gpu)
    per_channel = size * bytes_factor / len(rings)
    parts = [FlowSet(r, np.roll(r, -1), np.full(n, per_channel)) for r in rings]
    flows = FlowSet.concat(parts).without_empty()
    return Collective(op=op, gpus=tuple(int(x) for x in g), size_bytes=size,
                      stages=(Stage(flows, max(steps, 1)),), bus_factor=bus_factor(op, n),
                      meta={"channels": len(rings)})


def allreduce(gpus: Sequence[int], size_bytes: float, *,
              server_of_gpu: np.ndarray | None = None) -> Collective:
    """Ring all-reduce: reduce-scatter then all-gather, 2(n-1)/n * S per rank, 2(n-1) steps."""
    n = len(as_gpu_ids(gpus))
    return _ring_collective("allreduce", gpus, size_bytes, 2.0 * (n - 1) / n, 2 * (n - 1),
                            server_of_gpu)


def nvls_allreduce(gpus: Sequence[int], size_bytes: float, *,
                   nvlink_domain_of_gpu: np.ndarray) -> Collective:
    """NVLS all-reduce: in-switch reduction and multicast, S(n+1)/n per GPU port each way."""
    g = as_gpu_ids(gpus)
    size = _check_size(size_bytes)
    n = len(g)
    domains = np.unique(np.asarray(nvlink_domain_of_gpu)[g])
    if len(domains) > 1:
        raise InputError("NVLS all-reduce runs inside one NVLink domain (across domains NCCL "
                         "runs NVLS_TREE, which simmoe does not model)", field="gpus",
                         value=f"{n} GPUs in {len(domains)} NVLink domains",
                         allowed="GPUs of one NVLink domain, or algorithm ring")
    if n < 2:
        raise InputError("NVLS all-reduce needs at least 2 GPUs", field="gpus", value=n,
                         allowed=">= 2")
    src, dst = np.repeat(g, n), np.tile(g, n)
    off_diagonal = src != dst
    per_pair = size * (n + 1) / (n * (n - 1))
    flows = FlowSet(src[off_diagonal], dst[off_diagonal],
                    np.full(n * (n - 1), per_pair)).without_empty()
    return Collective(op="allreduce", gpus=tuple(int(x) for x in g), size_bytes=size,
                      stages=(Stage(flows, 2),), bus_factor=bus_factor("allreduce", n),
                      meta={"engine": "nvls"})


def reduce_scatter(gpus: Sequence[int], size_bytes: float, *,
                   server_of_gpu: np.ndarray | None = None) -> Collective:
    """Ring reduce-scatter over a size_bytes input: (n-1)/n * S per rank, n-1 steps."""
    n = len(as_gpu_ids(gpus))
    return _ring_collective("reduce_scatter", gpus, size_bytes, (n - 1) / n, n - 1,
                            server_of_gpu)


def all_gather(gpus: Sequence[int], size_bytes: float, *,
               server_of_gpu: np.ndarray | None = None) -> Collective:
    """Ring all-gather into a size_bytes output: (n-1)/n * S per rank, n-1 steps."""
    n = len(as_gpu_ids(gpus))
    return _ring_collective("all_gather", gpus, size_bytes, (n - 1) / n, n - 1, server_of_gpu)


def p2p(gpus: Sequence[int], size_bytes: float, *,
        pairs: Sequence[tuple[int, int]] | None = None) -> Collective:
    """Point-to-point sends of size_bytes each, all at once.

    Default pairs follow nccl-tests sendrecv with peer i + n/2: with two equal nodes every GPU
    sends to the same local rank in the other node, so each NIC carries one flow each way.
    ``pairs`` are (source, destination) global GPU ids.
    """
    g = as_gpu_ids(gpus)
    size = _check_size(size_bytes)
    n = len(g)
    if pairs is None:
        if n < 2:
            raise InputError("p2p needs at least 2 GPUs", field="gpus", value=n, allowed=">= 2")
        src, dst = g, g[(np.arange(n) + n // 2) % n]
    else:
        arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        src, dst = arr[:, 0], arr[:, 1]
    flows = FlowSet(src, dst, np.full(len(src), size)).without_empty()
    return Collective(op="p2p", gpus=tuple(int(x) for x in g), size_bytes=size,
                      stages=(Stage(flows, 1),), bus_factor=1.0)


def build(op: str, gpus: Sequence[int], size_bytes: float, *,
          server_of_gpu: np.ndarray | None = None, algorithm: str = "ring",
          nvlink_domain_of_gpu: np.ndarray | None = None) -> Collective:
    """Build a uniform collective by name (the CLI's --op and --algorithm)."""
    if algorithm not in ALGORITHMS:
        raise InputError("unknown collective algorithm", field="algorithm", value=algorithm,
                         allowed=", ".join(ALGORITHMS))
    if algorithm == "nvls":
        if op != "allreduce":
            raise InputError("simmoe models NVLS for all-reduce only", field="algorithm",
                             value=f"nvls with op {op}", allowed="ring, or op allreduce")
        if nvlink_domain_of_gpu is None:
            raise InputError("NVLS all-reduce needs NVLink-domain membership",
                             field="nvlink_domain_of_gpu")
        return nvls_allreduce(gpus, size_bytes, nvlink_domain_of_gpu=nvlink_domain_of_gpu)
    if op == "alltoall":
        return alltoall(gpus, size_bytes)
    if op == "alltoallv":
        # Without a matrix, all-to-all-v is the uniform one; callers with a matrix use alltoallv.
        coll = alltoall(gpus, size_bytes)
        return Collective("alltoallv", coll.gpus, coll.size_bytes, coll.stages, coll.bus_factor,
                          coll.meta)
    if op == "hierarchical_alltoall":
        if server_of_gpu is None:
            raise InputError("hierarchical all-to-all needs node membership",
                             field="server_of_gpu")
        return hierarchical_alltoall(gpus, size_bytes, server_of_gpu=server_of_gpu)
    if op == "allreduce":
        return allreduce(gpus, size_bytes, server_of_gpu=server_of_gpu)
    if op == "reduce_scatter":
        return reduce_scatter(gpus, size_bytes, server_of_gpu=server_of_gpu)
    if op == "all_gather":
        return all_gather(gpus, size_bytes, server_of_gpu=server_of_gpu)
    if op == "p2p":
        return p2p(gpus, size_bytes)
    raise InputError("unknown collective", field="op", value=op, allowed=", ".join(OPS))
