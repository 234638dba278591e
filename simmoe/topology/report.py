"""What a topology is, in numbers: link classes, GPUs, nodes, NVLink domains, bisection bandwidth,
and the check that every GPU can reach every other GPU over links with capacity."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph

from simmoe.errors import TopologyError
from simmoe.topology.model import Topology


def check_topology(topo: Topology) -> None:
    """Raise TopologyError unless every link has capacity and every GPU can route to every other.

    Routing (model.py) sends same-domain traffic over NVLink and everything else GPU -> NIC ->
    fabric -> NIC -> GPU, so "connected" means: each GPU has its NVSwitch link when its domain holds
    other GPUs, each GPU has a NIC when there is more than one domain, and the fabric's switches
    reach each other between every pair of edge switches in use.
    """
    cap = topo.link_capacity_bytes_per_s
    bad = np.flatnonzero(~(cap > 0) | ~np.isfinite(cap))
    if len(bad):
        u, v = topo.link_endpoints[bad[0]]
        raise TopologyError(f"link {u} -> {v} has no capacity ({len(bad)} such links)",
                            file=topo.file, field=f"links[{u}->{v}].capacity_bytes_per_s",
                            value=float(cap[bad[0]]), allowed="a positive number of bytes/s")
    lat = topo.link_latency_s
    if (lat < 0).any() or not np.isfinite(lat).all():
        i = int(np.flatnonzero((lat < 0) | ~np.isfinite(lat))[0])
        u, v = topo.link_endpoints[i]
        raise TopologyError("negative or infinite latency", file=topo.file,
                            field=f"links[{u}->{v}].latency_s", value=float(lat[i]),
                            allowed="a number >= 0 (s)")
    if topo.num_gpus == 0:
        raise TopologyError("describes no GPUs", file=topo.file, field="nodes", value=0,
                            allowed="at least one node")
    r = topo._routing()
    names = _gpu_names(topo)
    dom = topo.nvlink_domain_of_gpu
    sizes = np.bincount(dom)
    lonely = (r.nv_up < 0) & (sizes[dom] > 1)
    if lonely.any():
        g = int(np.flatnonzero(lonely)[0])
        raise TopologyError(f"GPU {g} ({names[g]}) has no NVSwitch link but shares NVLink domain "
                            f"{dom[g]} with other GPUs", file=topo.file, field="node",
                            allowed="a node template with an NVSwitch")
    if len(sizes[sizes > 0]) > 1:
        no_nic = r.edge_of_gpu < 0
        if no_nic.any():
            g = int(np.flatnonzero(no_nic)[0])
            raise TopologyError(f"GPU {g} ({names[g]}) has no NIC, so it cannot reach GPUs outside "
                                "its NVLink domain", file=topo.file, field="fabric",
                                has_value=False, allowed="a fabric joining every node")
        used = np.unique(r.edge_of_gpu)
        hops = r.hops[np.ix_(used, r.edge_nodes[used])]
        if not np.isfinite(hops).all():
            a, c = np.argwhere(~np.isfinite(hops))[0]
            ga = int(np.flatnonzero(r.edge_of_gpu == used[a])[0])
            gc = int(np.flatnonzero(r.edge_of_gpu == used[c])[0])
            sa = topo.graph.nodes[names[ga]].get("site")
            sc = topo.graph.nodes[names[gc]].get("site")
            groups = _switch_groups(topo)
            if sa != sc:
                field, allowed = "wan", "a `wan:` section joining the sites"
            else:
                field, allowed = "fabric", "a fabric whose switches join every leaf (spines >= 1)"
            raise TopologyError(
                f"disconnected: GPU {ga} ({names[ga]}) cannot reach GPU {gc} ({names[gc]}); "
                f"the switches form {groups} separate groups", file=topo.file, field=field,
                has_value=False, allowed=allowed)


def _gpu_names(topo: Topology) -> list[str]:
    names = [""] * topo.num_gpus
    for v, d in topo.graph.nodes(data=True):
        if d.get("kind") == "gpu":
            names[d["gpu_id"]] = v
    return names


def _switch_groups(topo: Topology) -> int:
    r = topo._routing()
    m = r.num_switches
    adj = sp.csr_matrix((np.ones(len(r.sw_u)), (r.sw_u, r.sw_v)), shape=(m, m))
    return int(csgraph.connected_components(adj, directed=True, connection="strong")[0])


def bisection_bytes_per_s(topo: Topology) -> float:
    """Min cut, one direction, between the first and the second half of the servers.

    Servers are numbered in fabric order (leaf by leaf, pod by pod, site by site), so the split in
    the middle is the one that loads the upper layers most: for a fat-tree it is the classic
    bisection. Computed exactly as a max-flow (scipy's Dinic on integer capacities, in units of
    1 MB/s) from the GPUs of one half to those of the other; the graph is a few nodes per GPU, so
    this takes milliseconds even for thousands of GPUs. A single server is split by GPU halves.
    """
    servers = topo.server_of_gpu
    if topo.num_servers >= 2:
        side_a = servers < topo.num_servers // 2
    else:
        side_a = np.arange(topo.num_gpus) < topo.num_gpus // 2
    if side_a.all() or not side_a.any():
        return float("inf")
    g = topo.graph
    index = {v: i for i, v in enumerate(g.nodes)}
    u = np.fromiter((index[a] for a, _ in topo.link_endpoints), np.int64, topo.num_links)
    v = np.fromiter((index[b] for _, b in topo.link_endpoints), np.int64, topo.num_links)
    cap = topo.link_capacity_bytes_per_s
    # Units of 1 MB/s, or a larger power of ten so every integer (and the total) fits in int32.
    unit = 10.0 ** max(6, int(np.ceil(np.log10(max(float(cap.sum()), 1.0) / 2**30))))
    cap_units = np.floor(cap / unit).astype(np.int64)
    gpu_node = np.empty(topo.num_gpus, np.int64)
    for name, d in g.nodes(data=True):
        if d.get("kind") == "gpu":
            gpu_node[d["gpu_id"]] = index[name]
    n = len(index)
    source, sink = n, n + 1
    # A GPU's own links bound what it can send, so their sum stands in for "unlimited".
    out_cap = np.bincount(u, weights=cap_units, minlength=n)[gpu_node]
    rows = np.concatenate([u, np.full(side_a.sum(), source), gpu_node[~side_a]])
    cols = np.concatenate([v, gpu_node[side_a], np.full((~side_a).sum(), sink)])
    data = np.concatenate([cap_units, out_cap[side_a], out_cap[~side_a]]).astype(np.int32)
    mat = sp.csr_matrix((data, (rows, cols)), shape=(n + 2, n + 2))
    mat.sum_duplicates()
    flow = csgraph.maximum_flow(mat, source, sink)
    return float(flow.flow_value) * unit


def bisection_bytes_per_s_per_gpu(topo: Topology) -> float:
    """Bisection bandwidth divided by the GPUs of the smaller half: what each can send across."""
    servers = topo.server_of_gpu
    if topo.num_servers >= 2:
        side_a = servers < topo.num_servers // 2
    else:
        side_a = np.arange(topo.num_gpus) < topo.num_gpus // 2
    half = min(int(side_a.sum()), int((~side_a).sum()))
    return bisection_bytes_per_s(topo) / half if half else float("inf")


def link_ports(topo: Topology) -> np.ndarray:
    """(num_links,) physical ports behind each link (a bundle of parallel cables is one link)."""
    ports = np.ones(topo.num_links, dtype=np.int64)
    for _, _, d in topo.graph.edges(data=True):
        ports[d["index"]] = d.get("ports", 1)
    return ports


def link_class_table(topo: Topology) -> list[dict]:
    """One row per link class: physical links (cables, both directions counted once), the rate of
    one cable per direction, and latency."""
    ports = link_ports(topo)
    rows = []
    for cls in sorted(set(topo.link_class.tolist())):
        sel = topo.link_class == cls
        cap = topo.link_capacity_bytes_per_s[sel] / ports[sel] / 1e9
        lat = topo.link_latency_s[sel] * 1e6
        rows.append({"link_class": cls, "links": int(ports[sel].sum()) // 2,
                     "GBps_per_direction_min": float(cap.min()),
                     "GBps_per_direction_max": float(cap.max()),
                     "latency_us_min": float(lat.min()), "latency_us_max": float(lat.max())})
    return rows


def summarize(topo: Topology) -> dict:
    """Everything `simmoe topo show` prints, as plain data."""
    kinds: dict[str, int] = {}
    layers: dict[str, int] = {}
    for _, d in topo.graph.nodes(data=True):
        kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
        if d["kind"] in ("switch", "router"):
            layers[d.get("layer", d["kind"])] = layers.get(d.get("layer", d["kind"]), 0) + 1
    nic_links = [d["capacity_bytes_per_s"] for a, b, d in topo.graph.edges(data=True)
                 if topo.graph.nodes[a]["kind"] == "nic" and topo.graph.nodes[b]["kind"] != "gpu"]
    return {
        "name": topo.name,
        "file": topo.file,
        "gpu_model": topo.gpu_model,
        "gpus": topo.num_gpus,
        "servers": topo.num_servers,
        "nvlink_domains": topo.num_nvlink_domains,
        "nics": kinds.get("nic", 0),
        "switches": layers,
        "link_classes": link_class_table(topo),
        "nic_GBps_per_gpu": float(sum(nic_links)) / topo.num_gpus / 1e9,
        "bisection_GBps_per_gpu": bisection_bytes_per_s_per_gpu(topo) / 1e9,
    }
