"""Analytical collective times: NCCL's busbw formulas on per-GPU bottleneck bandwidths.

time = sum over stages of (latency_steps * alpha + bytes through the busiest GPU port / that
port's bandwidth). A GPU has two ports, each counted out and in: NVLink (flows inside its NVLink
domain) and the network (flows leaving it). Bandwidths come from the topology, times the
link-class efficiency of NetworkParams:

- B_nvlink: the bottleneck of a route to a peer in the same NVLink domain;
- B_net: the per-GPU share of the fabric for the stage's own inter-domain traffic, taken as the
  busiest link's bytes over its capacity: the NIC on a non-blocking fabric, half of it when two
  GPUs share a NIC, the uplink share when a leaf is oversubscribed, the bisection share of an
  all-to-all across nodes.

No flow ever waits for another here: this is the formula, not the fluid model. For the uniform
collectives it is exactly the familiar one: intra-node busbw = B_nvlink; ring over N nodes of L
GPUs with L channels, busbw = min(L/(L-1) * B_nvlink, L * B_net); all-to-all over n = N*L GPUs,
t = max(S(L-1)/n / B_nvlink, S(n-L)/n / B_net). docs/network.md derives each.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from simmoe.network.flows import Collective, Stage
from simmoe.network.params import NetworkParams


def effective_link_capacity(topology, params: NetworkParams,
                            engine: str | None = None) -> np.ndarray:
    """Per-link capacity that collective payload achieves: line rate x class efficiency (of the
    transport ``engine`` where params single it out, else NCCL's)."""
    classes = np.asarray(topology.link_class)
    eff = np.ones(len(classes))
    for cls in np.unique(classes):  # a handful of link classes
        eff[classes == cls] = params.efficiency_of(str(cls), engine)
    return np.asarray(topology.link_capacity_bytes_per_s, dtype=np.float64) * eff


def path_bandwidth(routes: sp.csr_matrix, capacity: np.ndarray) -> np.ndarray:
    """Rate each flow (row) would get alone: min over its links of capacity / fraction."""
    r = sp.csr_matrix(routes)
    out = np.full(r.shape[0], np.inf)
    if r.nnz == 0:
        return out
    rows = np.repeat(np.arange(r.shape[0]), np.diff(r.indptr))
    per_nz = capacity[r.indices] / r.data
    np.minimum.at(out, rows, per_nz)
    return out


def busiest_link_time_s(routes: sp.csr_matrix, size_bytes: np.ndarray,
                        capacity: np.ndarray) -> float:
    """Bytes the busiest link must carry over its capacity: the fabric's share for this traffic
    (NIC ports, shared NICs, oversubscribed uplinks and bisection all appear as link loads)."""
    load = np.asarray(sp.csr_matrix(routes).T @ size_bytes).reshape(-1)
    used = load > 0
    if not used.any():
        return 0.0
    return float((load[used] / capacity[used]).max())


def nvlink_bandwidth(topology, capacity: np.ndarray, gpus) -> float:
    """Per-GPU NVLink bandwidth of a group: the slowest route from a member to a domain peer."""
    g = np.asarray(gpus, dtype=np.int64)
    domain = np.asarray(topology.nvlink_domain_of_gpu)
    all_gpus = np.arange(topology.num_gpus)
    src, dst = [], []
    for x in g:  # one route per GPU of the group
        peers = all_gpus[(domain == domain[x]) & (all_gpus != x)]
        if len(peers):
            src.append(x)
            dst.append(peers[0])
    if not src:
        return np.inf
    return float(path_bandwidth(topology.route_matrix(np.array(src), np.array(dst)),
                                capacity).min())


def stage_bandwidth_time_s(stage: Stage, topology, capacity: np.ndarray, nvlink_bytes_per_s: float,
                           params: NetworkParams) -> float:
    """Bytes through the busiest GPU port of the stage over that port's bandwidth.

    NVLink port: bytes out of (or into) a GPU inside its domain over B_nvlink. Network: the
    busiest link of the stage's inter-domain flows (the NIC port on a non-blocking fabric; a
    shared NIC, an oversubscribed uplink or the bisection where those bind).
    """
    flows = stage.flows.without_empty()
    if len(flows) == 0:
        return 0.0
    domain = np.asarray(topology.nvlink_domain_of_gpu)
    n = topology.num_gpus
    inter = domain[flows.src] != domain[flows.dst]
    # Small messages cannot fill a port: the stage's mean flow size sets the efficiency.
    msg_eff = float(params.message_efficiency(float(np.mean(flows.size_bytes))))
    times = [0.0]
    intra = ~inter
    if intra.any():
        out_b = np.bincount(flows.src[intra], flows.size_bytes[intra], minlength=n)
        in_b = np.bincount(flows.dst[intra], flows.size_bytes[intra], minlength=n)
        times.append(max(out_b.max(), in_b.max()) / nvlink_bytes_per_s)
    if inter.any():
        routes = topology.route_matrix(flows.src[inter], flows.dst[inter])
        times.append(busiest_link_time_s(routes, flows.size_bytes[inter], capacity))
    return float(max(times)) / msg_eff


def stage_latency_s(stage: Stage, topology, params: NetworkParams) -> float:
    """latency_steps x (software step latency + the longest route's propagation latency)."""
    flows = stage.flows.without_empty()
    prop = float(topology.route_latency_s(flows.src, flows.dst).max()) if len(flows) else 0.0
    return stage.latency_steps * (params.step_latency_s + prop)


def collective_stage_times_s(collective: Collective, topology, params: NetworkParams,
                             ) -> tuple[list[float], list[float]]:
    """(bandwidth time, latency) per stage of an isolated collective."""
    cap = effective_link_capacity(topology, params, collective.meta.get("engine"))
    nv = nvlink_bandwidth(topology, cap, collective.gpus)
    band = [stage_bandwidth_time_s(s, topology, cap, nv, params) for s in collective.stages]
    lat = [stage_latency_s(s, topology, params) for s in collective.stages]
    return band, lat
