"""The Topology object: a networkx DiGraph plus flat link arrays and vectorized ECMP routes.

Contract (the network, placement and engine rely on exactly this):

Graph nodes carry ``kind`` in {"gpu", "nvswitch", "nic", "switch", "router"}; GPU nodes also carry
``gpu_id`` (0..num_gpus-1), ``server`` (server index) and ``nvlink_domain`` (domain index). Every
directed edge carries ``capacity_bytes_per_s`` (> 0, one direction), ``latency_s`` (>= 0),
``link_class`` (e.g. "nvlink", "pcie", "ib-ndr", "ib-hdr", "eth-100g", "wan") and ``index`` (its
row in the link arrays below).

Routing: GPUs in the same NVLink domain talk over NVLink (GPU -> NVSwitch -> GPU). Otherwise a flow
goes GPU -> its NIC -> edge switch -> (ECMP over equal-cost shortest paths of the switch fabric,
split evenly at every hop) -> edge switch -> NIC -> GPU.

Implementation notes (not part of the contract):

* An edge may also carry ``ports`` (default 1): a bundle of parallel cables between two switches is
  one edge whose capacity is the bundle's. ECMP hashes over egress *ports*, so a next hop reached
  over 4 ports gets 4 shares. In every shipped fabric bundles toward equal-cost next hops have the
  same size, so the split is also even per next hop.
* Each GPU has at most one NIC and that NIC one port into the fabric (true of every template).
* Routes are built from three precomputed parts so no Python loop runs per flow: per GPU its
  NVLink up/down links and its host links (GPU->NIC->edge switch and back), and per pair of edge
  switches an ECMP row, computed lazily for all sources toward one destination switch at a time
  (hop-count shortest-path DAG, flow pushed level by level with sparse products) and cached.
* ``route_factors`` returns those three parts as keys into tables (simmoe.network.routes)
  instead of writing every flow's row out, with fabric links of identical columns merged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph

from simmoe.network.routes import FactoredRoutes

FABRIC_KINDS = ("switch", "router")


@dataclass
class _Routing:
    """Per-GPU link tables and the lazily filled ECMP table between edge switches."""

    nv_up: np.ndarray  # (G,) link GPU -> NVSwitch, -1 if none
    nv_down: np.ndarray  # (G,) link NVSwitch -> GPU
    host_up: np.ndarray  # (G, 2) links GPU -> NIC, NIC -> edge switch; -1 if no NIC
    host_down: np.ndarray  # (G, 2) links edge switch -> NIC, NIC -> GPU
    edge_of_gpu: np.ndarray  # (G,) index into edge_nodes, -1 if none
    edge_nodes: np.ndarray  # (E,) switch-local ids of the edge switches
    sw_u: np.ndarray  # switch->switch edges: source (switch-local id)
    sw_v: np.ndarray  # ... destination
    sw_ports: np.ndarray  # ... parallel ports (ECMP weight)
    sw_link: np.ndarray  # ... link index
    num_switches: int
    fabric_first: bool  # every switch->switch link numbered below every other link
    hops: np.ndarray | None = None  # (E, M) hop distance from each edge switch
    hops_to: np.ndarray | None = None  # (E, M) hop distance of every switch to each edge switch
    # edge id t -> (sorted source edge ids, csr rows of them x num_links): computed on demand
    per_dest: dict = field(default_factory=dict)
    # Factored routes (route_factors): identical fabric columns merged, see _fabric_alias.
    link_alias: np.ndarray | None = None  # (num_links,) representative of each link's group
    rep_link: np.ndarray | None = None  # (num_links,) bool: link is its group's representative
    merged: dict = field(default_factory=dict)  # edge id t -> csr (E x num_links), rep columns
    merged_table: sp.csr_matrix | None = None  # rows t * E + s (no empty row)
    merged_dests: frozenset = frozenset()
    access: sp.csr_matrix | None = None  # (4G x num_links) host up, host down, NVLink up, down


@dataclass
class Topology:
    name: str
    file: str | None
    gpu_model: str  # key into simmoe/data/hardware.yaml
    graph: nx.DiGraph
    server_of_gpu: np.ndarray  # (num_gpus,) int
    nvlink_domain_of_gpu: np.ndarray  # (num_gpus,) int
    link_capacity_bytes_per_s: np.ndarray  # (num_links,) float, per direction
    link_latency_s: np.ndarray  # (num_links,) float
    link_class: np.ndarray  # (num_links,) str
    link_endpoints: list[tuple[str, str]]  # (u, v) node names, row i = link i
    _routing_cache: _Routing | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_gpus(self) -> int:
        return len(self.server_of_gpu)

    @property
    def num_links(self) -> int:
        return len(self.link_capacity_bytes_per_s)

    @property
    def num_servers(self) -> int:
        return int(self.server_of_gpu.max()) + 1 if self.num_gpus else 0

    @property
    def num_nvlink_domains(self) -> int:
        return len(np.unique(self.nvlink_domain_of_gpu))

    @classmethod
    def from_graph(cls, graph: nx.DiGraph, *, name: str, gpu_model: str,
                   file: str | None = None) -> "Topology":
        """Build the flat arrays from a graph that follows the contract above.

        Edges without ``index`` are numbered in the graph's edge order; GPUs are ordered by
        ``gpu_id``, which must run 0..num_gpus-1.
        """
        edges = list(graph.edges(data=True))
        if edges and all("index" in d for _, _, d in edges):
            edges.sort(key=lambda e: e[2]["index"])
        for i, (_, _, d) in enumerate(edges):
            d["index"] = i
        gpus = sorted((d["gpu_id"], d["server"], d["nvlink_domain"])
                      for _, d in graph.nodes(data=True) if d.get("kind") == "gpu")
        ids = np.array([g[0] for g in gpus], dtype=np.int64)
        if not np.array_equal(ids, np.arange(len(gpus))):
            raise ValueError("GPU nodes must carry gpu_id 0..num_gpus-1, each once")
        return cls(
            name=name,
            file=file,
            gpu_model=gpu_model,
            graph=graph,
            server_of_gpu=np.array([g[1] for g in gpus], dtype=np.int64),
            nvlink_domain_of_gpu=np.array([g[2] for g in gpus], dtype=np.int64),
            link_capacity_bytes_per_s=np.array(
                [d["capacity_bytes_per_s"] for _, _, d in edges], dtype=np.float64),
            link_latency_s=np.array([d["latency_s"] for _, _, d in edges], dtype=np.float64),
            link_class=np.array([d["link_class"] for _, _, d in edges], dtype=object).astype(str),
            link_endpoints=[(u, v) for u, v, _ in edges],
        )

    # ------------------------------------------------------------------------------ routing

    def _routing(self) -> _Routing:
        if self._routing_cache is None:
            self._routing_cache = _build_routing(self)
        return self._routing_cache

    def edge_switch_of_gpu(self) -> np.ndarray:
        """(num_gpus,) name-free id of each GPU's edge switch (-1: the GPU has no NIC)."""
        return self._routing().edge_of_gpu.copy()

    def _gpu_pairs(self, src, dst) -> tuple[np.ndarray, np.ndarray]:
        """``src``, ``dst`` as flat int64 arrays of valid GPU ids of equal length."""
        src = np.asarray(src, dtype=np.int64).reshape(-1)
        dst = np.asarray(dst, dtype=np.int64).reshape(-1)
        if src.shape != dst.shape:
            raise ValueError("src and dst must have the same length")
        if len(src) and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= self.num_gpus):
            raise ValueError(f"GPU ids must lie in 0..{self.num_gpus - 1}")
        return src, dst

    def route_matrix(self, src: np.ndarray, dst: np.ndarray) -> sp.csr_matrix:
        """(len(src) x num_links) CSR: entry (i, l) is the fraction of flow i's bytes on link l.

        Fractions come from ECMP (even split at each hop over equal-cost next hops), so every
        row conserves flow at every intermediate node. Rows with src == dst are empty.
        """
        r = self._routing()
        src, dst = self._gpu_pairs(src, dst)
        n = len(src)
        dom = self.nvlink_domain_of_gpu
        cross = dom[src] != dom[dst]
        nvl = ~cross & (src != dst)

        # The per-GPU part, at most 4 links per flow: 2 over NVLink, or 2 up + 2 down via NICs.
        # Absent entries hold `big` so that they sort last.
        big = np.int64(np.iinfo(np.int64).max)
        up_src, down_dst = r.host_up[src], r.host_down[dst]
        c = [np.where(cross, up_src[:, 0], np.where(nvl, r.nv_up[src], big)),
             np.where(cross, up_src[:, 1], np.where(nvl, r.nv_down[dst], big)),
             np.where(cross, down_dst[:, 0], big),
             np.where(cross, down_dst[:, 1], big)]
        del up_src, down_dst
        lowest = np.minimum(np.minimum(c[0], c[1]), np.minimum(c[2], c[3]))
        if n and lowest.min() < 0:
            i = int(np.argmax(lowest < 0))
            how = "a NIC" if cross[i] else "an NVSwitch link"
            raise ValueError(f"no route from GPU {src[i]} to GPU {dst[i]}: one of them lacks {how}")
        for a, b in ((0, 1), (2, 3), (0, 2), (1, 3), (1, 2)):  # sorting network for 4 items
            c[a], c[b] = np.minimum(c[a], c[b]), np.maximum(c[a], c[b])
        host_cols = np.stack(c, axis=1)
        del c, lowest
        num_host = np.where(cross, 4, np.where(nvl, 2, 0))

        num_edges = len(r.edge_nodes)
        es = r.edge_of_gpu[src]
        ed = r.edge_of_gpu[dst]
        fab = cross & (es != ed)
        table = None
        rows = None
        if fab.any():
            pairs = ed[fab] * num_edges + es[fab]
            used = np.flatnonzero(np.bincount(pairs, minlength=num_edges * num_edges))
            reach = r.hops[used % num_edges, r.edge_nodes[used // num_edges]]
            if not np.isfinite(reach).all():
                p = used[np.argmin(np.isfinite(reach))]
                i = int(np.flatnonzero(fab)[np.argmax(pairs == p)])
                raise ValueError(f"no route from GPU {src[i]} to GPU {dst[i]}: "
                                 "the fabric is disconnected")
            table = _ecmp_rows(r, used, self.num_links)
            rows = np.full(n, len(used), dtype=np.int64)
            rows[fab] = np.searchsorted(used, pairs)
            del pairs
        return _assemble(table, rows, host_cols, num_host, self.num_links, r.fabric_first)

    def route_factors(self, src: np.ndarray, dst: np.ndarray) -> FactoredRoutes:
        """The same routes as ``route_matrix(src, dst)``, factored (simmoe.network.routes).

        Three keys per flow: its source's access row (GPU->NIC->edge switch, or GPU->NVSwitch),
        its destination's (edge switch->NIC->GPU, or NVSwitch->GPU), and its ordered pair of
        edge switches, whose ECMP fractions every flow between them shares. Fabric links whose
        columns are identical over every pair of edge switches are merged (``link_alias``), so
        a flow's fabric part is a few entries (a 32-spine two-tier fat-tree: 2 instead of 64).
        ``route_factors(src, dst).to_csr()`` equals ``route_matrix(src, dst)`` up to rounding of
        the ECMP fractions. O(flows) work and memory beyond the tables, which are cached.
        """
        r = self._routing()
        src, dst = self._gpu_pairs(src, dst)
        num_gpus = self.num_gpus
        # Per-flow work is a handful of int32 passes: at 8192 GPUs an all-to-all is 67 M flows.
        key_dtype = np.int32 if max(4 * num_gpus, len(r.edge_nodes) ** 2) < 2**31 else np.int64
        dom = self.nvlink_domain_of_gpu
        cross = dom[src] != dom[dst]
        same = src == dst
        nvl = ~(cross | same)
        has_nic = (r.host_up.min(axis=1) >= 0) & (r.host_down.min(axis=1) >= 0)
        has_nvl = (r.nv_up >= 0) & (r.nv_down >= 0)
        if not (has_nic.all() and has_nvl.all()):
            missing = np.where(cross, ~(has_nic[src] & has_nic[dst]),
                               nvl & ~(has_nvl[src] & has_nvl[dst]))
            if missing.any():
                i = int(np.argmax(missing))
                how = "a NIC" if cross[i] else "an NVSwitch link"
                raise ValueError(
                    f"no route from GPU {src[i]} to GPU {dst[i]}: one of them lacks {how}")
        src_k = src.astype(key_dtype)
        dst_k = dst.astype(key_dtype)
        key_src = np.where(nvl, src_k + 2 * num_gpus, src_k)
        key_dst = np.where(nvl, dst_k + 3 * num_gpus, dst_k + num_gpus)
        del src_k, dst_k
        if same.any():
            key_src[same] = -1
            key_dst[same] = -1

        num_edges = len(r.edge_nodes)
        edge_k = r.edge_of_gpu.astype(key_dtype)
        es = edge_k[src]
        ed = edge_k[dst]
        fab = cross & (es != ed)
        key_fab = np.where(fab, ed * num_edges + es, -1).astype(key_dtype, copy=False)
        del es, ed
        if fab.any():
            used = np.flatnonzero(np.bincount(key_fab + 1, minlength=num_edges**2 + 1)[1:])
            reach = r.hops[used % num_edges, r.edge_nodes[used // num_edges]]
            if not np.isfinite(reach).all():
                p = used[np.argmin(np.isfinite(reach))]
                i = int(np.argmax(key_fab == p))
                raise ValueError(f"no route from GPU {src[i]} to GPU {dst[i]}: "
                                 "the fabric is disconnected")
            fabric = _merged_table(r, np.unique(used // num_edges), self.num_links)
        else:
            fabric = sp.csr_matrix((num_edges * num_edges, self.num_links))
        access = _access_table(r, self.num_links)
        return FactoredRoutes((key_src, key_fab, key_dst), (access, fabric, access),
                              link_alias=_fabric_alias(r, self.num_links))

    def route_latency_s(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Per-flow propagation + switching latency: sum over the route of fraction * link latency."""
        return np.asarray(self.route_matrix(src, dst) @ self.link_latency_s).reshape(-1)


_CHUNK_ROWS = 1 << 19  # bounds the temporary copy of gathered ECMP rows


def _assemble(table: sp.csr_matrix | None, rows: np.ndarray | None, host_cols: np.ndarray,
              num_host: np.ndarray, num_links: int, fabric_first: bool) -> sp.csr_matrix:
    """Row i = ECMP row ``rows[i]`` of ``table`` followed by its ``num_host[i]`` host links.

    Written straight into the output arrays, a chunk of rows at a time: one C gather per chunk
    (csr_row_index) and one masked copy, instead of a general sparse sum.
    """
    n = len(num_host)
    num_fab = np.zeros(n, dtype=np.int64) if table is None else np.diff(table.indptr)[rows]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(num_fab + num_host, out=indptr[1:])
    nnz = int(indptr[-1])
    idx_dtype = np.int32 if max(nnz, num_links) < np.iinfo(np.int32).max else np.int64
    indices = np.empty(nnz, dtype=idx_dtype)
    data = np.empty(nnz, dtype=np.float64)
    slot = np.arange(4)
    for lo in range(0, n, _CHUNK_ROWS):
        hi = min(n, lo + _CHUNK_ROWS)
        base = indptr[lo]
        is_host = slot[None, :] < num_host[lo:hi, None]
        # Host links occupy the last num_host slots of each row.
        pos = (indptr[lo + 1:hi + 1, None] - num_host[lo:hi, None] + slot[None, :])[is_host] - base
        chunk_idx = indices[base:indptr[hi]]
        chunk_data = data[base:indptr[hi]]
        chunk_idx[pos] = host_cols[lo:hi][is_host]
        chunk_data[pos] = 1.0
        if table is not None and num_fab[lo:hi].any():
            fab_rows = table[rows[lo:hi]]
            mask = np.ones(len(chunk_idx), dtype=bool)
            mask[pos] = False
            chunk_idx[mask] = fab_rows.indices
            chunk_data[mask] = fab_rows.data
            del fab_rows, mask
    out = sp.csr_matrix((data, indices, indptr.astype(idx_dtype, copy=False)),
                        shape=(n, num_links), copy=False)
    if not fabric_first:  # switch links numbered after host links: restore sorted rows
        out.sort_indices()
    out.has_sorted_indices = True
    return out


def _build_routing(topo: Topology) -> _Routing:
    g = topo.graph
    kind = nx.get_node_attributes(g, "kind")
    gpu_name = {d["gpu_id"]: v for v, d in g.nodes(data=True) if d.get("kind") == "gpu"}
    num = topo.num_gpus
    nv_up = np.full(num, -1, dtype=np.int64)
    nv_down = np.full(num, -1, dtype=np.int64)
    host_up = np.full((num, 2), -1, dtype=np.int64)
    host_down = np.full((num, 2), -1, dtype=np.int64)
    edge_name: list[str | None] = [None] * num
    for gid in range(num):
        v = gpu_name[gid]
        nics = []
        for _, w, d in g.out_edges(v, data=True):
            if kind.get(w) == "nvswitch":
                nv_up[gid] = d["index"]
                nv_down[gid] = g.edges[w, v]["index"]
            elif kind.get(w) == "nic":
                nics.append((w, d["index"]))
        if len(nics) > 1:
            raise ValueError(f"GPU {gid} ({v}) has {len(nics)} NICs; routing supports one per GPU")
        if nics:
            nic, up = nics[0]
            ports = [(w, d["index"]) for _, w, d in g.out_edges(nic, data=True)
                     if kind.get(w) in FABRIC_KINDS]
            if len(ports) != 1:
                raise ValueError(f"NIC {nic} has {len(ports)} fabric ports; routing supports one")
            sw, out = ports[0]
            host_up[gid] = (up, out)
            host_down[gid] = (g.edges[sw, nic]["index"], g.edges[nic, v]["index"])
            edge_name[gid] = sw

    switches = [v for v, k in kind.items() if k in FABRIC_KINDS]
    local = {v: i for i, v in enumerate(switches)}
    edge_list = sorted({e for e in edge_name if e is not None}, key=local.__getitem__)
    edge_id = {v: i for i, v in enumerate(edge_list)}
    edge_of_gpu = np.array([edge_id[e] if e is not None else -1 for e in edge_name], dtype=np.int64)

    sub = [(local[u], local[v], float(d.get("ports", 1)), d["index"])
           for u, v, d in g.edges(data=True) if u in local and v in local]
    uu, vv, ww, ll = (np.array(c) for c in zip(*sub)) if sub else (np.zeros(0, np.int64),) * 4
    routing = _Routing(nv_up=nv_up, nv_down=nv_down, host_up=host_up, host_down=host_down,
                       edge_of_gpu=edge_of_gpu,
                       edge_nodes=np.array([local[v] for v in edge_list], dtype=np.int64),
                       sw_u=uu.astype(np.int64), sw_v=vv.astype(np.int64),
                       sw_ports=ww.astype(np.float64), sw_link=ll.astype(np.int64),
                       num_switches=len(switches),
                       fabric_first=bool(not len(ll) or int(ll.max()) < _min_nonneg(
                           nv_up, nv_down, host_up, host_down)))
    if len(edge_list):
        adj = _adjacency(routing)
        routing.hops = np.atleast_2d(csgraph.shortest_path(
            adj, unweighted=True, directed=True, indices=routing.edge_nodes))
        routing.hops_to = np.atleast_2d(csgraph.shortest_path(
            adj.T.tocsr(), unweighted=True, directed=True, indices=routing.edge_nodes))
    return routing


def _min_nonneg(*arrays: np.ndarray) -> int:
    values = np.concatenate([a.ravel() for a in arrays])
    values = values[values >= 0]
    return int(values.min()) if len(values) else np.iinfo(np.int64).max


def _adjacency(r: _Routing) -> sp.csr_matrix:
    m = r.num_switches
    return sp.csr_matrix((np.ones(len(r.sw_u)), (r.sw_u, r.sw_v)), shape=(m, m))


def _ecmp_toward(r: _Routing, t: int, num_links: int, *, source_weights: np.ndarray | None = None,
                 keep_links: np.ndarray | None = None, sources: np.ndarray | None = None
                 ) -> sp.csr_matrix:
    """(E x num_links) link fractions from every edge switch to edge switch ``t``.

    Hop distances to t define the shortest-path DAG; at each node the flow splits over DAG out-edges
    in proportion to their ports. Mass is pushed from the farthest level inward, one sparse product
    per level, for all sources at once.

    ``source_weights`` (w x E): push w weighted sums of sources instead and return the dense
    (w x num_links) ``source_weights @ fractions`` (a cheap fingerprint of every link's column).
    ``keep_links`` (bool, num_links): only those link columns are filled.
    ``sources`` (edge ids): only those rows, in that order (len(sources) x num_links). Every
    source's mass is pushed on its own (per-column sums), so its row is the one of the full
    table bit for bit.
    """
    num_edges = len(r.edge_nodes)
    m = r.num_switches
    target = r.edge_nodes[t]
    dist = r.hops_to[t]  # hop distance of every switch to the target
    on_dag = np.isfinite(dist[r.sw_u]) & (dist[r.sw_u] == dist[r.sw_v] + 1)
    u, v, w, link = r.sw_u[on_dag], r.sw_v[on_dag], r.sw_ports[on_dag], r.sw_link[on_dag]
    out_w = np.bincount(u, weights=w, minlength=m)
    share = w / out_w[u]

    # Mass per (switch, source), switch-major so each level is one CSR x dense product with no
    # transposed copies (the same sums in the same order as flow @ step).
    if sources is not None:
        mass = np.zeros((m, len(sources)))
        mass[r.edge_nodes[sources], np.arange(len(sources))] = 1.0
    elif source_weights is None:
        mass = np.zeros((m, num_edges))
        mass[r.edge_nodes, np.arange(num_edges)] = 1.0
    else:
        mass = np.zeros((m, source_weights.shape[0]))
        mass[r.edge_nodes, :] = source_weights.T
    mass[target, :] = 0.0  # a source equal to the target sends nothing through the fabric
    level_of_edge = dist[u]
    if len(u):
        for k in range(int(level_of_edge.max()), 0, -1):
            at = level_of_edge == k
            step_t = sp.csr_matrix((share[at], (v[at], u[at])), shape=(m, m))
            mass += step_t @ mass
    flow = mass.T
    if sources is not None:
        return _fractions_of_sources(mass, u, share, link, num_links)
    if source_weights is not None or keep_links is not None:
        # Few columns (the fingerprint, or merged links only): link fraction = mass at the
        # link's tail x the link's share, as a dense (rows x DAG links) block.
        if keep_links is not None:
            sel = keep_links[link]
            u, share, link = u[sel], share[sel], link[sel]
        order = np.argsort(link)
        u, share, link = u[order], share[order], link[order]
        vals = np.ascontiguousarray((mass[u] * share[:, None]).T)
        if source_weights is not None:
            out = np.zeros((len(vals), num_links))
            out[:, link] = vals
            return out
        rows, cols = np.nonzero(vals)  # row-major: columns ascending within each row
        indptr = np.zeros(num_edges + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=num_edges), out=indptr[1:])
        return sp.csr_matrix((vals[rows, cols], link[cols], indptr), shape=(num_edges, num_links))
    # Link fraction = mass at the link's tail x the link's share: one sparse product.
    share_at = sp.csr_matrix((share, (u, link)), shape=(m, num_links))
    out = sp.csr_matrix(flow) @ share_at
    out.sum_duplicates()
    out.sort_indices()
    return out.tocsr()


_SOURCE_CHUNK = 64  # sources per dense (sources x links) block: bounds its memory


def _fractions_of_sources(mass: np.ndarray, u: np.ndarray, share: np.ndarray, link: np.ndarray,
                          num_links: int) -> sp.csr_matrix:
    """(sources x num_links) CSR of link fraction = mass at the link's tail x the link's share,
    from the pushed ``mass`` (switches x sources). A link has one tail, so each entry is one
    product, the value ``csr(mass.T) @ share_at`` gives it; zeros are left out as there, and
    columns come out ascending."""
    n_src = mass.shape[1]
    live = (mass != 0).any(axis=1)[u]  # links whose tail carries some source's mass
    order = np.argsort(link[live])
    u, share, link = u[live][order], share[live][order], link[live][order]
    counts, idx, vals = [], [], []
    for lo in range(0, n_src, _SOURCE_CHUNK):
        block = np.ascontiguousarray((mass[u, lo:lo + _SOURCE_CHUNK] * share[:, None]).T)
        rows, cols = np.nonzero(block)  # row-major: columns ascending within each row
        counts.append(np.bincount(rows, minlength=block.shape[0]))
        idx.append(link[cols])
        vals.append(block[rows, cols])
    indptr = np.zeros(n_src + 1, dtype=np.int64)
    if n_src:
        np.cumsum(np.concatenate(counts), out=indptr[1:])
    out = sp.csr_matrix((np.concatenate(vals) if vals else np.zeros(0),
                         np.concatenate(idx) if idx else np.zeros(0, np.int64), indptr),
                        shape=(n_src, num_links))
    out.has_sorted_indices = True
    return out


def _ecmp_rows(r: _Routing, pairs: np.ndarray, num_links: int) -> sp.csr_matrix:
    """Row i holds the ECMP fractions of ``pairs[i] = t * E + s`` (sorted, distinct; from edge
    switch s to t); a last row is empty.

    Only the pairs asked for are gathered: a table of every pair (E^2 rows of hundreds of links
    each, 142 M entries at 512 edge switches) cost seconds to rebuild whenever a destination was
    added. Rows are copied from the cached per-destination blocks unchanged (same values)."""
    num_edges = len(r.edge_nodes)
    dest = pairs // num_edges
    cut = np.flatnonzero(np.diff(dest)) + 1  # pairs are sorted: one run per destination
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [len(pairs)]])
    lens, idx, vals = [], [], []
    for lo, hi in zip(starts.tolist(), ends.tolist()):
        t = int(dest[lo])
        src = pairs[lo:hi] % num_edges
        known, block = r.per_dest.get(t, (None, None))
        if known is None:
            known, block = src, _ecmp_toward(r, t, num_links, sources=src)
            r.per_dest[t] = (known, block)
        else:
            missing = src[~np.isin(src, known)]
            if len(missing):
                new = _ecmp_toward(r, t, num_links, sources=missing)
                known = np.concatenate([known, missing])
                order = np.argsort(known, kind="stable")
                known = known[order]
                block = sp.vstack([block, new], format="csr")[order]
                r.per_dest[t] = (known, block)
        part = block[np.searchsorted(known, src)]
        lens.append(np.diff(part.indptr))
        idx.append(part.indices)
        vals.append(part.data)
    lens.append(np.zeros(1, np.int64))
    indptr = np.zeros(len(pairs) + 2, dtype=np.int64)
    np.cumsum(np.concatenate(lens), out=indptr[1:])
    idx_dtype = np.int32 if max(int(indptr[-1]), num_links) < np.iinfo(np.int32).max else np.int64
    table = sp.csr_matrix((np.concatenate(vals) if vals else np.zeros(0),
                           np.concatenate(idx).astype(idx_dtype, copy=False) if idx
                           else np.zeros(0, idx_dtype),
                           indptr.astype(idx_dtype, copy=False)),
                          shape=(len(pairs) + 1, num_links), copy=False)
    table.has_sorted_indices = True  # every block's rows are sorted (_ecmp_toward)
    return table


def _access_table(r: _Routing, num_links: int) -> sp.csr_matrix:
    """(4G x num_links) rows: g = host up links of GPU g, G + g = host down, 2G + g = NVLink up,
    3G + g = NVLink down (fraction 1 each; absent links left out). Cached."""
    if r.access is None:
        num = len(r.nv_up)
        cols = np.concatenate([r.host_up, r.host_down,
                               np.column_stack([r.nv_up, np.full(num, -1)]),
                               np.column_stack([r.nv_down, np.full(num, -1)])])
        rows = np.repeat(np.arange(4 * num), 2)
        cols = cols.reshape(-1)
        ok = cols >= 0
        r.access = sp.csr_matrix((np.ones(int(ok.sum())), (rows[ok], cols[ok])),
                                 shape=(4 * num, num_links))
        r.access.sort_indices()
    return r.access


def _fabric_alias(r: _Routing, num_links: int) -> np.ndarray:
    """Representative of each link: switch links whose columns are identical over every ordered
    pair of edge switches form a group (their representative: the lowest link index); every
    other link represents itself. Cached.

    Identity is tested by fingerprint: three random weightings of the sources pushed through
    each destination's ECMP DAG (O(DAG edges) per destination, not O(sources x DAG edges)).
    Identical columns are built by the same operations in the same order in the fabrics simmoe
    ships (symmetric by construction), so they get bit-identical fingerprints; columns that are
    equal only up to rounding stay apart, which costs speed, never exactness. Distinct columns
    collide only if sums of random reals agree exactly.
    """
    if r.link_alias is None:
        alias = np.arange(num_links)
        num_edges = len(r.edge_nodes)
        if num_edges and len(r.sw_link):
            weights = np.random.default_rng(0xFAB).uniform(1.0, 2.0, (num_edges, 3, num_edges))
            sig = np.zeros((3, num_links))
            for t in range(num_edges):
                sig += _ecmp_toward(r, t, num_links, source_weights=weights[t])
            links = r.sw_link
            used = links[sig[0, links] != 0]
            if len(used):
                key = np.ascontiguousarray(sig[:, used].T)
                _, group = np.unique(key.view(np.dtype((np.void, key.itemsize * 3))).reshape(-1),
                                     return_inverse=True)
                group = group.reshape(-1)
                rep = np.full(int(group.max()) + 1, np.iinfo(np.int64).max)
                np.minimum.at(rep, group, used)
                alias[used] = rep[group]
        r.link_alias = alias
        r.rep_link = alias == np.arange(num_links)
    return r.link_alias


def _merged_table(r: _Routing, dests: np.ndarray, num_links: int) -> sp.csr_matrix:
    """Rows t * E + s: the ECMP fractions from edge switch s to t on representative links only."""
    _fabric_alias(r, num_links)
    new = [int(t) for t in dests if int(t) not in r.merged]
    for t in new:
        r.merged[t] = _ecmp_toward(r, t, num_links, keep_links=r.rep_link)
    if r.merged_table is None or new:
        num_edges = len(r.edge_nodes)
        empty = sp.csr_matrix((num_edges, num_links))
        table = sp.vstack([r.merged.get(t, empty) for t in range(num_edges)], format="csr")
        table.sum_duplicates()
        table.sort_indices()
        r.merged_table = table
        r.merged_dests = frozenset(r.merged)
    return r.merged_table
