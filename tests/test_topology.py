"""Topology: construction, ECMP routes and bisection, against hand-derived oracles."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from simmoe.paths import TOPOLOGY_DIR
from simmoe.topology.loader import gpus_in_topology, load_topology, nodes_in_topology
from simmoe.topology.model import Topology
from simmoe.topology.report import (bisection_bytes_per_s, bisection_bytes_per_s_per_gpu,
                                    check_topology, link_class_table, summarize)

NDR_BYTES_PER_S = 400e9 / 8  # one ConnectX-7 port, one direction
SHIPPED = sorted(TOPOLOGY_DIR.glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "topo.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def route_links(topo: Topology, src: int, dst: int) -> dict[tuple[str, str], float]:
    row = topo.route_matrix(np.array([src]), np.array([dst]))
    return {topo.link_endpoints[j]: float(x) for j, x in zip(row.indices, row.data)}


def net_flow(topo: Topology, routes: sp.csr_matrix) -> np.ndarray:
    """(rows x nodes): out-flow minus in-flow of each route at each node."""
    index = {v: i for i, v in enumerate(topo.graph.nodes)}
    tail = np.array([index[u] for u, _ in topo.link_endpoints])
    head = np.array([index[v] for _, v in topo.link_endpoints])
    links = np.arange(topo.num_links)
    shape = (topo.num_links, len(index))
    incidence = (sp.csr_matrix((np.ones(topo.num_links), (links, tail)), shape=shape)
                 - sp.csr_matrix((np.ones(topo.num_links), (links, head)), shape=shape))
    return (routes @ incidence).toarray(), index


# ------------------------------------------------------------------------------ hand oracles

def test_dgx_h100_two_nodes_route_crosses_exactly_the_expected_links():
    topo = load_topology("dgx-h100-2node")
    assert (topo.num_gpus, topo.num_servers, topo.num_nvlink_domains) == (16, 2, 2)
    # GPU 0 is n0.gpu0 (NIC 0), GPU 9 is n1.gpu1 (NIC 1); both NICs hang off the single leaf.
    assert route_links(topo, 0, 9) == {
        ("n0.gpu0", "n0.nic0"): 1.0, ("n0.nic0", "leaf0"): 1.0,
        ("leaf0", "n1.nic1"): 1.0, ("n1.nic1", "n1.gpu1"): 1.0}
    assert route_links(topo, 0, 5) == {("n0.gpu0", "nvsw0"): 1.0, ("nvsw0", "n0.gpu5"): 1.0}
    assert route_links(topo, 3, 3) == {}
    # PCIe 0.5 us + NDR hop 0.5 us, each way; NVLink 0.4 us per link.
    np.testing.assert_allclose(topo.route_latency_s(np.array([0, 0, 3]), np.array([9, 5, 3])),
                               [2.0e-6, 0.8e-6, 0.0])
    caps = dict(zip(topo.link_endpoints, topo.link_capacity_bytes_per_s))
    assert caps[("n0.gpu0", "nvsw0")] == 450e9
    assert caps[("n0.gpu0", "n0.nic0")] == 64e9
    assert caps[("n0.nic0", "leaf0")] == NDR_BYTES_PER_S


TWO_LEAVES_FOUR_SPINES = """
node: dgx-h100
nodes: 2
fabric: {type: fat-tree, tiers: 2, switch_radix: 16, oversubscription: 1, spines: SPINES}
"""


def test_ecmp_splits_a_quarter_per_spine_in_a_two_leaf_four_spine_fat_tree(tmp_path):
    # Radix 16 at 1:1: 8 NICs per leaf (one server), 8 uplinks = 2 ports to each of 4 spines.
    topo = load_topology(write(tmp_path, TWO_LEAVES_FOUR_SPINES.replace("SPINES", "4")))
    links = route_links(topo, 0, 8)  # n0.gpu0 -> n1.gpu0
    fabric = {k: v for k, v in links.items() if "spine" in k[0] or "spine" in k[1]}
    assert fabric == {**{("leaf0", f"spine{s}"): 0.25 for s in range(4)},
                      **{(f"spine{s}", "leaf1"): 0.25 for s in range(4)}}
    assert len(links) == 4 + 8
    caps = dict(zip(topo.link_endpoints, topo.link_capacity_bytes_per_s))
    assert caps[("leaf0", "spine0")] == 2 * NDR_BYTES_PER_S


def test_ecmp_weights_next_hops_by_their_ports(tmp_path):
    # 8 uplinks over 3 spines: bundles of 3, 3 and 2 ports; ECMP hashes per port.
    topo = load_topology(write(tmp_path, TWO_LEAVES_FOUR_SPINES.replace("SPINES", "3")))
    links = route_links(topo, 0, 8)
    assert links[("leaf0", "spine0")] == pytest.approx(3 / 8)
    assert links[("leaf0", "spine1")] == pytest.approx(3 / 8)
    assert links[("leaf0", "spine2")] == pytest.approx(2 / 8)


THREE_TIER = """
node: h100-roce-4x100g
nodes: 8
fabric: {type: fat-tree, tiers: 3, switch_radix: 8, oversubscription: 1}
"""


def test_three_tier_fat_tree_counts_and_core_split(tmp_path):
    # Radix 8: 4 NIC ports per leaf = 1 server; 8 leaves, pods of 4 leaves, 4 aggregation switches
    # per pod (1 port per leaf), 2 cores per aggregation group (2 ports from each pod's agg).
    topo = load_topology(write(tmp_path, THREE_TIER))
    assert summarize(topo)["switches"] == {"leaf": 8, "aggregation": 8, "core": 8}
    links = route_links(topo, 0, 7 * 8)  # server 0 (pod 0) -> server 7 (pod 1)
    up = {k: v for k, v in links.items() if k[0] == "leaf0"}
    to_core = {k: v for k, v in links.items() if k[1].startswith("core")}
    assert up == {("leaf0", f"agg0.{j}"): 0.25 for j in range(4)}
    assert to_core == {(f"agg0.{j}", f"core{j}.{c}"): 0.125 for j in range(4) for c in range(2)}
    # Same pod: leaf -> aggregation -> leaf only.
    assert not any(k[1].startswith("core") for k in route_links(topo, 0, 8))


def test_bisection_of_non_blocking_fat_tree_is_the_nic_rate_and_of_2_to_1_is_half():
    rail = load_topology("h100-ndr-rail")
    over = load_topology("h100-ndr-fattree-2to1")
    assert bisection_bytes_per_s_per_gpu(rail) == pytest.approx(NDR_BYTES_PER_S)
    assert bisection_bytes_per_s_per_gpu(over) == pytest.approx(NDR_BYTES_PER_S / 2)
    deepseek = load_topology("h800-deepseek")
    assert bisection_bytes_per_s_per_gpu(deepseek) == pytest.approx(NDR_BYTES_PER_S)
    # Two GPUs per 100 GbE NIC: 6.25 GB/s per GPU.
    roce = load_topology("h100-roce-4x100g")
    assert bisection_bytes_per_s_per_gpu(roce) == pytest.approx(100e9 / 8 / 2)


def test_bisection_of_two_sites_is_the_wan():
    topo = load_topology("two-sites-wan")
    assert bisection_bytes_per_s(topo) == pytest.approx(4 * 100e9 / 8)


def test_bisection_matches_networkx_max_flow_on_a_small_graph(tmp_path):
    text = """
node: dgx-h100
nodes: 4
fabric: {type: fat-tree, tiers: 2, switch_radix: 24, oversubscription: 2}
"""
    topo = load_topology(write(tmp_path, text))
    g = topo.graph.copy()
    half = topo.num_servers // 2
    for v, d in topo.graph.nodes(data=True):
        if d["kind"] == "gpu":
            if d["server"] < half:
                g.add_edge("SRC", v, capacity_bytes_per_s=float("inf"))
            else:
                g.add_edge(v, "SINK", capacity_bytes_per_s=float("inf"))
    value = nx.maximum_flow_value(g, "SRC", "SINK", capacity="capacity_bytes_per_s")
    assert bisection_bytes_per_s(topo) == pytest.approx(value)
    # 2 servers per leaf (16 NICs), 8 uplinks per leaf: the cut is 8 uplinks for 16 GPUs.
    assert value == pytest.approx(8 * NDR_BYTES_PER_S)


def test_wan_route_crosses_the_wan_once_with_its_latency():
    topo = load_topology("two-sites-wan")
    east, west = 0, topo.num_gpus - 1
    links = route_links(topo, east, west)
    assert links[("east/gateway", "west/gateway")] == pytest.approx(1.0)
    assert topo.route_latency_s(np.array([east]), np.array([west]))[0] > 2e-3


def test_nvl72_domain_spans_eighteen_trays():
    topo = load_topology("gb200-nvl72")
    assert topo.num_gpus == 288 and topo.num_servers == 72 and topo.num_nvlink_domains == 4
    # Trays 0 and 17 share rack 0's NVLink domain: NVLink only.
    links = route_links(topo, 0, 17 * 4)
    assert set(topo.link_class[topo.route_matrix([0], [17 * 4]).indices]) == {"nvlink"}
    assert len(links) == 2


# -------------------------------------------------------------------------- properties

_SMALL = {}


def small_topology(key: str) -> Topology:
    if key not in _SMALL:
        _SMALL[key] = load_topology(key if key != "three-tier" else _three_tier_path())
    return _SMALL[key]


def _three_tier_path() -> Path:
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="simmoe-topo-"))
    return write(folder, THREE_TIER)


@settings(max_examples=30, deadline=None)
@given(key=st.sampled_from(["dgx-h100-2node", "two-sites-wan", "gb200-nvl72",
                            "h100-ndr-fattree-2to1", "three-tier", "a100-hdr"]),
       seed=st.integers(0, 2**32 - 1))
def test_every_route_conserves_flow_at_every_intermediate_node(key, seed):
    topo = small_topology(key)
    rng = np.random.default_rng(seed)
    src = rng.integers(0, topo.num_gpus, 64)
    dst = rng.integers(0, topo.num_gpus, 64)
    routes = topo.route_matrix(src, dst)
    assert routes.shape == (64, topo.num_links)
    assert (routes.data > 0).all() and (routes.data <= 1 + 1e-12).all()
    net, index = net_flow(topo, routes)
    expect = np.zeros_like(net)
    gpu_node = {d["gpu_id"]: index[v] for v, d in topo.graph.nodes(data=True) if d["kind"] == "gpu"}
    for i, (s, d) in enumerate(zip(src, dst)):
        if s != d:
            expect[i, gpu_node[s]] += 1.0
            expect[i, gpu_node[d]] -= 1.0
    np.testing.assert_allclose(net, expect, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_batched_routes_equal_routes_one_at_a_time(seed):
    topo = small_topology("two-sites-wan")
    rng = np.random.default_rng(seed)
    src = rng.integers(0, topo.num_gpus, 16)
    dst = rng.integers(0, topo.num_gpus, 16)
    batch = topo.route_matrix(src, dst)
    assert batch.has_canonical_format
    for i in range(16):
        one = topo.route_matrix(src[i:i + 1], dst[i:i + 1])
        assert (batch[i] != one).nnz == 0


def test_a_hand_built_graph_routes_by_the_contract():
    # Host links numbered before switch links, no `ports`: exercises the general path.
    g = nx.DiGraph()

    def link(u, v, cls, cap=1.0):
        for a, b in ((u, v), (v, u)):
            g.add_edge(a, b, capacity_bytes_per_s=cap, latency_s=1e-6, link_class=cls)

    for s in range(2):
        g.add_node(f"gpu{s}", kind="gpu", gpu_id=s, server=s, nvlink_domain=s)
        g.add_node(f"nvsw{s}", kind="nvswitch")
        g.add_node(f"nic{s}", kind="nic")
        g.add_node(f"leaf{s}", kind="switch")
        link(f"gpu{s}", f"nvsw{s}", "nvlink")
        link(f"gpu{s}", f"nic{s}", "pcie")
        link(f"nic{s}", f"leaf{s}", "ib-ndr")
    for m in ("a", "b"):
        g.add_node(m, kind="switch")
        link("leaf0", m, "ib-ndr")
        link(m, "leaf1", "ib-ndr")
    topo = Topology.from_graph(g, name="diamond", gpu_model="H100-SXM")
    check_topology(topo)
    links = route_links(topo, 0, 1)
    assert links == {("gpu0", "nic0"): 1.0, ("nic0", "leaf0"): 1.0, ("leaf0", "a"): 0.5,
                     ("leaf0", "b"): 0.5, ("a", "leaf1"): 0.5, ("b", "leaf1"): 0.5,
                     ("leaf1", "nic1"): 1.0, ("nic1", "gpu1"): 1.0}
    assert topo.route_matrix([0, 1], [1, 0]).has_canonical_format


# ------------------------------------------------------------------------- shipped files

@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_topology_loads_and_passes_check(path):
    topo = load_topology(path)
    check_topology(topo)
    assert gpus_in_topology(path) == topo.num_gpus
    assert nodes_in_topology(path) == topo.num_servers
    assert topo.num_gpus == len(topo.nvlink_domain_of_gpu)
    assert (topo.link_capacity_bytes_per_s > 0).all()
    classes = {row["link_class"] for row in link_class_table(topo)}
    assert classes <= {"nvlink", "pcie", "ib-ndr", "ib-hdr", "ib-xdr", "eth-100g", "eth-400g", "wan"}
    text = path.read_text()
    assert text.lstrip().startswith("#"), "every shipped topology says what it stands for"


def test_shipped_sizes_are_what_their_comments_say():
    assert gpus_in_topology("h800-deepseek") == 2048
    assert nodes_in_topology("h800-deepseek") == 256
    assert gpus_in_topology("h100-ndr-rail") == 128
    assert gpus_in_topology("gb200-nvl72") == 288
    assert gpus_in_topology("two-sites-wan") == 128


def test_first_n_nodes_keeps_the_fabric_and_drops_the_rest():
    full = load_topology("h800-deepseek")
    part = load_topology("h800-deepseek", nodes=4)
    assert part.num_gpus == 32 and part.num_servers == 4
    assert summarize(part)["switches"] == summarize(full)["switches"]
    assert route_links(part, 0, 31)[("n3.nic7", "n3.gpu7")] == 1.0


def test_rail_optimized_keeps_same_rail_traffic_on_its_leaf():
    topo = load_topology("h100-ndr-rail")
    # GPU 3 of server 0 to GPU 3 of server 15: same rail leaf, no spine.
    links = route_links(topo, 3, 15 * 8 + 3)
    assert not any("spine" in u or "spine" in v for u, v in links)
    # Different rails: through the spines.
    assert any("spine" in v for _, v in route_links(topo, 3, 15 * 8 + 4))


def test_server_and_domain_arrays_follow_gpu_ids():
    topo = load_topology("gb200-nvl72")
    np.testing.assert_array_equal(topo.server_of_gpu, np.arange(288) // 4)
    np.testing.assert_array_equal(topo.nvlink_domain_of_gpu, np.arange(288) // 72)
    for v, d in topo.graph.nodes(data=True):
        if d["kind"] == "gpu":
            assert topo.server_of_gpu[d["gpu_id"]] == d["server"]
    for u, v, d in topo.graph.edges(data=True):
        assert topo.link_endpoints[d["index"]] == (u, v)


# ------------------------------------------------------------------- factored routes


@st.composite
def small_fabrics(draw):
    """YAML of a random small cluster: fat-tree or rail-optimized, two or three tiers."""
    node = draw(st.sampled_from(["dgx-h100", "h100-roce-4x100g"]))
    tiers = draw(st.sampled_from([2, 3]))
    radix = draw(st.sampled_from([8, 16]) if tiers == 3 else st.sampled_from([8, 16, 32]))
    over = draw(st.sampled_from([1, 2]))
    kind = draw(st.sampled_from(["fat-tree", "rail-optimized"]))
    nodes = draw(st.integers(1, 12))
    extra = ""
    if tiers == 2 and draw(st.booleans()):
        extra = f", spines: {draw(st.integers(1, 5))}"
    return (f"node: {node}\nnodes: {nodes}\nfabric: {{type: {kind}, tiers: {tiers}, "
            f"switch_radix: {radix}, oversubscription: {over}{extra}}}\n")


_FABRICS: dict[str, Topology | None] = {}


def fabric_topology(text: str) -> Topology | None:
    """Load (and cache) a generated topology; None when the sizes cannot be built."""
    from simmoe.errors import TopologyError

    if text not in _FABRICS:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="simmoe-fabric-"))
        try:
            _FABRICS[text] = load_topology(write(folder, text))
        except TopologyError:
            _FABRICS[text] = None
    return _FABRICS[text]


@settings(max_examples=60, deadline=None)
@given(text=small_fabrics(), seed=st.integers(0, 2**32 - 1))
def test_factored_routes_equal_the_route_matrix_and_give_the_same_rates(text, seed):
    """route_factors(...).to_csr() is route_matrix(...), and max-min on the factors (kept as
    factors, merged fabric columns) gives the rates of max-min on the CSR, with random link
    capacities so that any link may bind."""
    from unittest import mock

    from simmoe.network import maxmin

    topo = fabric_topology(text)
    assume(topo is not None)
    shipped = ["two-sites-wan", "gb200-nvl72", "h100-ndr-rail"]
    if seed % 7 == 0:  # now and then a shipped topology (WAN, NVL72 domains, rails)
        topo = small_topology(shipped[seed % 3])
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    src = rng.integers(0, topo.num_gpus, n)
    dst = rng.integers(0, topo.num_gpus, n)
    plain = topo.route_matrix(src, dst)
    factors = topo.route_factors(src, dst)
    assert abs(factors.to_csr() - plain).max() <= 1e-15 if plain.nnz else factors.to_csr().nnz == 0
    cap = topo.link_capacity_bytes_per_s * rng.uniform(0.3, 1.0, topo.num_links)
    mult = rng.integers(1, 4, n).astype(float)
    bound = np.where(rng.random(n) < 0.2, rng.uniform(1e9, 6e10, n), np.inf)
    expect = maxmin.maxmin_rates(plain, cap, mult, bound)
    with mock.patch.object(maxmin, "MATERIALIZE_MAX_NNZ", -1):
        got = maxmin.maxmin_rates(factors, cap, mult, bound)
    np.testing.assert_allclose(got, expect, rtol=1e-12)


def test_factored_fabric_part_of_two_leaves_is_one_merged_column_each_way(tmp_path):
    # Two leaves, 4 spines: leaf0's 4 uplinks and the 4 spine->leaf1 downlinks each carry 1/4 of
    # exactly the leaf0->leaf1 flows, so all 8 are one column (aliased to the lowest link); the
    # 8 links of the other direction are another.
    topo = load_topology(write(tmp_path, TWO_LEAVES_FOUR_SPINES.replace("SPINES", "4")))
    f = topo.route_factors(np.array([0, 8]), np.array([8, 0]))
    ends = topo.link_endpoints
    for i, (a, b) in enumerate([("leaf0", "leaf1"), ("leaf1", "leaf0")]):
        fabric = f.tables[1][f.keys[1][i]]
        assert len(fabric.indices) == 1 and fabric.data[0] == 0.25
        group = [j for j, (u, v) in enumerate(ends) if (u == a and "spine" in v)
                 or ("spine" in u and v == b)]
        assert len(group) == 8
        assert set(f.link_alias[group]) == {min(group)} == set(fabric.indices)
    assert [f.keys[0][0], f.keys[2][0]] == [0, topo.num_gpus + 8]  # host rows of GPUs 0 and 8
    assert abs(f.to_csr() - topo.route_matrix(np.array([0, 8]), np.array([8, 0]))).max() == 0


def test_factored_routes_refuse_what_route_matrix_refuses():
    topo = small_topology("dgx-h100-2node")
    with pytest.raises(ValueError, match="GPU ids"):
        topo.route_factors(np.array([0]), np.array([topo.num_gpus]))
    with pytest.raises(ValueError, match="same length"):
        topo.route_factors(np.array([0, 1]), np.array([2]))
