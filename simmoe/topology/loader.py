"""Read a topology YAML file, validate all of it up front, and build the Topology.

Format (docs/topology.md has every field, unit and default)::

    name: h100-ndr-rail
    node: dgx-h100                 # a template name, or {template: dgx-h100, nic: ..., ...}
    nodes: 16                      # servers
    fabric: {type: rail-optimized, tiers: 2, switch_radix: 64, oversubscription: 1}

or several sites joined by a WAN::

    sites:
      - {name: east, node: dgx-h100, nodes: 8, fabric: {...}}
      - {name: west, node: dgx-h100, nodes: 8, fabric: {...}}
    wan: {links: 4, gbps_per_link: 100, latency_s: 0.002}

Every error is a TopologyError naming the file, the field path, the bad value and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import yaml

from simmoe import hardware
from simmoe.errors import InputError, TopologyError
from simmoe.topology.fabrics import FABRIC_TYPES, FabricSpec, layout_fabric
from simmoe.topology.model import Topology
from simmoe.topology.templates import TEMPLATES, NodeTemplate, template_names

LINK_CLASSES = ("nvlink", "pcie", "ib-ndr", "ib-hdr", "ib-xdr", "eth-100g", "eth-400g", "wan")
# NIC line rate (Gb/s) -> link class, per transport.
_NIC_LINK_CLASS = {("infiniband", 200): "ib-hdr", ("infiniband", 400): "ib-ndr",
                   ("infiniband", 800): "ib-xdr", ("ethernet", 100): "eth-100g",
                   ("ethernet", 400): "eth-400g"}
# Per link and direction: switch port-to-port traversal plus ~10-30 m of cable (~5 ns/m).
# Assumptions inside commonly quoted ranges (InfiniBand switch hop ~0.3-0.6 us; Ethernet/RoCE
# data-centre switches somewhat slower); calibration replaces them. See docs/topology.md.
DEFAULT_HOP_LATENCY_S = {"infiniband": 0.5e-6, "ethernet": 0.8e-6}

_TOP_KEYS = ("name", "description", "node", "nodes", "fabric", "sites", "wan")
_SITE_KEYS = ("name", "node", "nodes", "fabric")
_NODE_KEYS = ("template", "gpu", "nic", "gpus_per_server", "nics_per_server",
              "servers_per_nvlink_domain", "nvlink_GBps_per_direction", "pcie_GBps_per_direction",
              "nvlink_latency_s", "pcie_latency_s")
_FABRIC_KEYS = ("type", "tiers", "switch_radix", "oversubscription", "link_class", "hop_latency_s",
                "spines", "pod_leaves")
_WAN_KEYS = ("links", "gbps_per_link", "latency_s")


@dataclass(frozen=True)
class NodeSpec:
    template: str
    gpu: str
    nic: str
    nic_kind: str  # "infiniband" or "ethernet"
    nic_bytes_per_s: float
    gpus_per_server: int
    nics_per_server: int
    servers_per_nvlink_domain: int
    nvlink_bytes_per_s: float
    pcie_bytes_per_s: float
    nvlink_latency_s: float
    pcie_latency_s: float


@dataclass(frozen=True)
class SiteSpec:
    name: str
    node: NodeSpec
    nodes: int
    fabric: FabricSpec | None


@dataclass(frozen=True)
class WanSpec:
    links: int
    gbps_per_link: float
    latency_s: float

    @property
    def bytes_per_s(self) -> float:
        return self.links * self.gbps_per_link * 1e9 / 8


@dataclass(frozen=True)
class TopologySpec:
    """A validated topology file, before any graph is built."""

    name: str
    description: str
    file: str
    sites: tuple[SiteSpec, ...]
    wan: WanSpec | None

    @property
    def num_servers(self) -> int:
        return sum(s.nodes for s in self.sites)

    @property
    def num_gpus(self) -> int:
        return sum(s.nodes * s.node.gpus_per_server for s in self.sites)

    @property
    def gpu_model(self) -> str:
        return self.sites[0].node.gpu


# ------------------------------------------------------------------------------------ reading

class _Fields:
    """Typed access to a YAML mapping, every failure naming file, field path and value."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, problem: str, field: str, value: Any = None, allowed: str | None = None,
             has_value: bool = True) -> TopologyError:
        return TopologyError(problem, file=self.file, field=field, value=value, allowed=allowed,
                             has_value=has_value)

    def mapping(self, value: Any, field: str, keys: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(f"must be a mapping, got {type(value).__name__}", field, value,
                            allowed="a mapping with keys " + ", ".join(keys))
        for key in value:
            if key not in keys:
                raise self.fail("unknown field", f"{field}.{key}" if field else str(key),
                                value[key], allowed=", ".join(keys))
        return value

    def require(self, data: dict, key: str, field: str) -> Any:
        if key not in data or data[key] is None:
            raise self.fail("missing required field", field, has_value=False)
        return data[key]

    def integer(self, value: Any, field: str, *, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"must be an integer, got {type(value).__name__}", field, value,
                            allowed=f"an integer >= {minimum}")
        if value < minimum:
            raise self.fail(f"must be at least {minimum}", field, value,
                            allowed=f"an integer >= {minimum}")
        return value

    def positive(self, value: Any, field: str, unit: str, *, minimum: float = 0.0,
                 inclusive: bool = False) -> float:
        allowed = f"a number {'>=' if inclusive else '>'} {minimum:g} ({unit})"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"must be a number, got {type(value).__name__}", field, value, allowed)
        bad = value < minimum if inclusive else value <= minimum
        if bad or not math.isfinite(value):
            raise self.fail("out of range", field, value, allowed)
        return float(value)

    def string(self, value: Any, field: str, choices: list[str] | tuple[str, ...] | None = None,
               what: str = "value") -> str:
        if not isinstance(value, str):
            raise self.fail(f"must be a string, got {type(value).__name__}", field, value,
                            allowed=", ".join(choices) if choices else "a string")
        if choices is not None and value not in choices:
            raise self.fail(f"unknown {what}", field, value, allowed=", ".join(choices))
        return value


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise TopologyError(f"cannot read the file ({err.__class__.__name__}: {err})",
                            file=str(path), allowed="a readable UTF-8 YAML file") from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise TopologyError(f"not valid YAML{where}: {getattr(err, 'problem', err)}",
                            file=str(path), allowed="a YAML mapping") from err


def _resolve(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.is_file():
        return p.resolve()
    from simmoe.paths import resolve_topology  # bare names like "h100-ndr-rail"

    try:
        return resolve_topology(str(path))
    except InputError as err:
        raise TopologyError(err.problem, file=str(path), allowed=err.allowed) from err


def _node_spec(f: _Fields, raw: Any, field: str) -> NodeSpec:
    if isinstance(raw, str):
        raw = {"template": raw}
    data = f.mapping(raw, field, _NODE_KEYS)
    name = f.string(f.require(data, "template", f"{field}.template"), f"{field}.template",
                    template_names(), "node template")
    t: NodeTemplate = TEMPLATES[name]
    gpu = f.string(data.get("gpu", t.gpu), f"{field}.gpu", hardware.gpu_names(), "GPU")
    nic = f.string(data.get("nic", t.nic), f"{field}.nic", hardware.nic_names(), "NIC")
    gspec = hardware.gpu_spec(gpu)
    nspec = hardware.nic_spec(nic)
    gpus = f.integer(data.get("gpus_per_server", t.gpus_per_server), f"{field}.gpus_per_server",
                     minimum=1)
    nics = f.integer(data.get("nics_per_server", t.nics_per_server), f"{field}.nics_per_server",
                     minimum=1)
    if gpus % nics:
        raise f.fail(f"must divide gpus_per_server={gpus} (GPUs share NICs evenly)",
                     f"{field}.nics_per_server", nics,
                     allowed=", ".join(str(k) for k in range(1, gpus + 1) if gpus % k == 0))
    per_domain = f.integer(data.get("servers_per_nvlink_domain", t.servers_per_nvlink_domain),
                           f"{field}.servers_per_nvlink_domain", minimum=1)
    nvlink = data.get("nvlink_GBps_per_direction", t.nvlink_GBps_per_direction)
    nvlink = gspec.nvlink_GBps_per_direction if nvlink is None else nvlink
    pcie = data.get("pcie_GBps_per_direction", t.pcie_GBps_per_direction)
    pcie = gspec.pcie_GBps_per_direction if pcie is None else pcie
    return NodeSpec(
        template=name, gpu=gpu, nic=nic, nic_kind=nspec.kind, nic_bytes_per_s=nspec.bytes_per_s,
        gpus_per_server=gpus, nics_per_server=nics, servers_per_nvlink_domain=per_domain,
        nvlink_bytes_per_s=1e9 * f.positive(nvlink, f"{field}.nvlink_GBps_per_direction", "GB/s"),
        pcie_bytes_per_s=1e9 * f.positive(pcie, f"{field}.pcie_GBps_per_direction", "GB/s"),
        nvlink_latency_s=f.positive(data.get("nvlink_latency_s", t.nvlink_latency_s),
                                    f"{field}.nvlink_latency_s", "s"),
        pcie_latency_s=f.positive(data.get("pcie_latency_s", t.pcie_latency_s),
                                  f"{field}.pcie_latency_s", "s"),
    )


def _fabric_spec(f: _Fields, raw: Any, field: str, node: NodeSpec) -> FabricSpec:
    data = f.mapping(raw, field, _FABRIC_KEYS)
    kind = f.string(f.require(data, "type", f"{field}.type"), f"{field}.type", FABRIC_TYPES,
                    "fabric type")
    tiers = f.integer(data.get("tiers", 2), f"{field}.tiers", minimum=2)
    if tiers > 3:
        raise f.fail("unsupported number of tiers", f"{field}.tiers", tiers, allowed="2, 3")
    radix = f.integer(data.get("switch_radix", 64), f"{field}.switch_radix", minimum=2)
    over = f.positive(data.get("oversubscription", 1), f"{field}.oversubscription",
                      "downlink:uplink capacity at the leaf", minimum=1.0, inclusive=True)
    if math.floor(radix * over / (1 + over)) < 1 or radix - math.floor(radix * over / (1 + over)) < 1:
        raise f.fail("leaves of this radix have no room for both downlinks and uplinks",
                     f"{field}.oversubscription", over, allowed=f"at most {radix - 1}")
    default_class = _NIC_LINK_CLASS.get((node.nic_kind, round(node.nic_bytes_per_s * 8 / 1e9)))
    if "link_class" in data or default_class is None:
        link_class = f.string(f.require(data, "link_class", f"{field}.link_class"),
                              f"{field}.link_class", LINK_CLASSES, "link class")
    else:
        link_class = default_class
    hop = f.positive(data.get("hop_latency_s", DEFAULT_HOP_LATENCY_S[node.nic_kind]),
                     f"{field}.hop_latency_s", "s")
    spines = data.get("spines")
    if spines is not None:
        if tiers != 2:
            raise f.fail("only a two-tier fabric has spines", f"{field}.spines", spines,
                         allowed="leave it out, or set tiers: 2")
        spines = f.integer(spines, f"{field}.spines", minimum=0)
    pod_leaves = data.get("pod_leaves")
    if pod_leaves is not None:
        if tiers != 3:
            raise f.fail("only a three-tier fabric has pods", f"{field}.pod_leaves", pod_leaves,
                         allowed="leave it out, or set tiers: 3")
        pod_leaves = f.integer(pod_leaves, f"{field}.pod_leaves", minimum=1)
    return FabricSpec(type=kind, tiers=tiers, switch_radix=radix, oversubscription=over,
                      link_class=link_class, port_bytes_per_s=node.nic_bytes_per_s,
                      hop_latency_s=hop, spines=spines, pod_leaves=pod_leaves)


def _site_spec(f: _Fields, data: dict, field: str, name: str) -> SiteSpec:
    pre = f"{field}." if field else ""
    node = _node_spec(f, f.require(data, "node", f"{pre}node"), f"{pre}node")
    nodes = f.integer(f.require(data, "nodes", f"{pre}nodes"), f"{pre}nodes", minimum=1)
    fabric = None
    if data.get("fabric") is not None:
        fabric = _fabric_spec(f, data["fabric"], f"{pre}fabric", node)
    elif nodes > node.servers_per_nvlink_domain:
        raise f.fail(f"missing required field ({nodes} servers span several NVLink domains, so "
                     "they need a fabric)", f"{pre}fabric", has_value=False)
    return SiteSpec(name=name, node=node, nodes=nodes, fabric=fabric)


def read_topology_spec(path: str | Path) -> TopologySpec:
    """Parse and validate a topology file without building the graph."""
    p = _resolve(path)
    f = _Fields(str(p))
    data = f.mapping(_read_yaml(p), "", _TOP_KEYS)
    name = f.string(data.get("name", p.stem), "name")
    description = f.string(data.get("description", ""), "description")
    if "sites" in data:
        for key in ("node", "nodes", "fabric"):
            if key in data:
                raise f.fail("a file with sites describes nodes inside each site", key, data[key],
                             allowed="sites[i]." + key)
        raw_sites = data["sites"]
        if not isinstance(raw_sites, list) or len(raw_sites) < 2:
            raise f.fail("must be a list of at least two sites", "sites", raw_sites,
                         allowed="a list of {name, node, nodes, fabric} mappings")
        sites = []
        for i, raw in enumerate(raw_sites):
            field = f"sites[{i}]"
            site = f.mapping(raw, field, _SITE_KEYS)
            site_name = f.string(f.require(site, "name", f"{field}.name"), f"{field}.name")
            sites.append(_site_spec(f, site, field, site_name))
            if sites[-1].fabric is None:
                raise f.fail("missing required field (each site needs a fabric to reach its "
                             "gateway)", f"{field}.fabric", has_value=False)
        names = [s.name for s in sites]
        if len(set(names)) != len(names):
            raise f.fail("site names must differ", "sites", names, allowed="distinct names")
        for i, s in enumerate(sites[1:], start=1):
            if s.node.gpu != sites[0].node.gpu:
                raise f.fail("every site must use the same GPU model", f"sites[{i}].node.gpu",
                             s.node.gpu, allowed=sites[0].node.gpu)
        wan = None
        if data.get("wan") is not None:  # without a WAN the sites are disconnected (reported later)
            w = f.mapping(data["wan"], "wan", _WAN_KEYS)
            wan = WanSpec(
                links=f.integer(f.require(w, "links", "wan.links"), "wan.links", minimum=1),
                gbps_per_link=f.positive(f.require(w, "gbps_per_link", "wan.gbps_per_link"),
                                         "wan.gbps_per_link", "Gb/s"),
                latency_s=f.positive(f.require(w, "latency_s", "wan.latency_s"), "wan.latency_s",
                                     "s"))
        return TopologySpec(name=name, description=description, file=str(p), sites=tuple(sites),
                            wan=wan)
    if "wan" in data:
        raise f.fail("a WAN joins sites; this file has none", "wan", data["wan"],
                     allowed="a `sites:` list with the WAN, or no `wan`")
    site = _site_spec(f, data, "", "")
    return TopologySpec(name=name, description=description, file=str(p), sites=(site,), wan=None)


def gpus_in_topology(path: str | Path) -> int:
    """Number of GPUs the file describes (all its nodes), without building the graph."""
    return read_topology_spec(path).num_gpus


def nodes_in_topology(path: str | Path) -> int:
    """Number of servers the file describes."""
    return read_topology_spec(path).num_servers


# ----------------------------------------------------------------------------------- building

class _GraphBuilder:
    """Collects nodes and directed links, then makes one networkx graph in two bulk calls.

    Switch-to-switch links get the lowest link indices: routing then emits every route row already
    sorted (fabric part first, host part last) without a sort pass.
    """

    def __init__(self) -> None:
        self.nodes: list[tuple[str, dict]] = []
        self.switch_edges: list[tuple[str, str, dict]] = []
        self.other_edges: list[tuple[str, str, dict]] = []

    def node(self, name: str, **attrs: Any) -> None:
        self.nodes.append((name, attrs))

    def link(self, u: str, v: str, capacity_bytes_per_s: float, latency_s: float,
             link_class: str, ports: int = 1, *, between_switches: bool = False) -> None:
        """Both directions, each with the full per-direction capacity."""
        out = self.switch_edges if between_switches else self.other_edges
        for a, b in ((u, v), (v, u)):
            out.append((a, b, {"capacity_bytes_per_s": float(capacity_bytes_per_s),
                               "latency_s": float(latency_s), "link_class": link_class,
                               "ports": int(ports)}))

    def graph(self) -> nx.DiGraph:
        g = nx.DiGraph()
        g.add_nodes_from(self.nodes)
        edges = self.switch_edges + self.other_edges
        for i, (_, _, d) in enumerate(edges):
            d["index"] = i
        g.add_edges_from(edges)
        return g


def _build_site(b: _GraphBuilder, site: SiteSpec, used: int, *, server0: int, domain0: int,
                gpu0: int, prefix: str, file: str, field: str) -> tuple[list[str], int]:
    """Add one site's servers and fabric. Returns (top-layer switch names, NVLink domains used)."""
    n = site.node
    domains = math.ceil(used / n.servers_per_nvlink_domain)
    for d in range(domains):
        b.node(f"{prefix}nvsw{domain0 + d}", kind="nvswitch", nvlink_domain=domain0 + d, site=site.name)
    layout = None
    if site.fabric is not None:
        # The fabric is sized for every node the file describes; a scenario using fewer leaves
        # the rest of the switches in place, idle, as on the real cluster.
        layout = layout_fabric(site.fabric, site.nodes, n.nics_per_server, prefix=prefix,
                               file=file, field_path=f"{field}fabric")
        for name, layer in layout.switches:
            b.node(name, kind="switch", layer=layer, site=site.name)
        cap = site.fabric.port_bytes_per_s
        for lower, upper, ports in layout.bundles:
            b.link(lower, upper, ports * cap, site.fabric.hop_latency_s, site.fabric.link_class,
                   ports, between_switches=True)
    gpn, nics = n.gpus_per_server, n.nics_per_server
    for s in range(used):
        server = server0 + s
        domain = domain0 + s // n.servers_per_nvlink_domain
        nvsw = f"{prefix}nvsw{domain}"
        if layout is not None:
            for k in range(nics):
                nic = f"{prefix}n{server}.nic{k}"
                b.node(nic, kind="nic", server=server, site=site.name)
                leaf = layout.leaf_names[layout.leaf_of_endpoint[s * nics + k]]
                b.link(nic, leaf, n.nic_bytes_per_s, site.fabric.hop_latency_s,
                       site.fabric.link_class)
        for i in range(gpn):
            gpu = f"{prefix}n{server}.gpu{i}"
            b.node(gpu, kind="gpu", gpu_id=gpu0 + s * gpn + i, server=server, nvlink_domain=domain,
                   local_rank=i, site=site.name)
            b.link(gpu, nvsw, n.nvlink_bytes_per_s, n.nvlink_latency_s, "nvlink")
            if layout is not None:
                b.link(gpu, f"{prefix}n{server}.nic{i * nics // gpn}", n.pcie_bytes_per_s,
                       n.pcie_latency_s, "pcie")
    return (layout.top if layout is not None else []), domains


def build_topology(spec: TopologySpec, *, nodes: int | None = None) -> Topology:
    """Build the graph and the Topology of a validated spec (first ``nodes`` servers if given)."""
    total = spec.num_servers
    if nodes is not None:
        if isinstance(nodes, bool) or not isinstance(nodes, (int, np.integer)) or not 1 <= nodes <= total:
            raise TopologyError(
                f"asks for more nodes than the topology has ({total})" if isinstance(nodes, int)
                and nodes > total else "must be a positive integer",
                file=spec.file, field="cluster.nodes", value=nodes, allowed=f"1..{total}")
    want = total if nodes is None else int(nodes)
    b = _GraphBuilder()
    multi = len(spec.sites) > 1
    gateways: list[tuple[str, list[str], SiteSpec]] = []
    server0 = domain0 = gpu0 = 0
    for i, site in enumerate(spec.sites):
        used = min(site.nodes, want - server0)
        if used <= 0:
            break
        prefix = f"{site.name}/" if multi else ""
        top, domains = _build_site(b, site, used, server0=server0, domain0=domain0, gpu0=gpu0,
                                   prefix=prefix, file=spec.file,
                                   field=f"sites[{i}]." if multi else "")
        gateways.append((f"{prefix}gateway", top, site))
        server0 += used
        domain0 += domains
        gpu0 += used * site.node.gpus_per_server
    if len(gateways) > 1 and spec.wan is not None:
        wan = spec.wan
        for gw, top, site in gateways:
            b.node(gw, kind="router", layer="gateway", site=site.name)
            fab = site.fabric
            # Enough ports from the gateway to the top layer that this hop never limits the WAN.
            ports = max(1, math.ceil(wan.bytes_per_s / (len(top) * fab.port_bytes_per_s)))
            for sw in top:
                b.link(gw, sw, ports * fab.port_bytes_per_s, fab.hop_latency_s, fab.link_class,
                       ports, between_switches=True)
        for a in range(len(gateways)):
            for c in range(a + 1, len(gateways)):
                b.link(gateways[a][0], gateways[c][0], wan.bytes_per_s, wan.latency_s, "wan",
                       wan.links, between_switches=True)
    return Topology.from_graph(b.graph(), name=spec.name, gpu_model=spec.gpu_model, file=spec.file)


def load_topology(path: str | Path, *, nodes: int | None = None) -> Topology:
    """Read, validate and build a topology; prove every GPU can reach every other one.

    ``path`` is a file path or the bare name of a shipped topology (``h100-ndr-rail``).
    ``nodes`` keeps only the first N servers (in file order) for a scenario that uses fewer.
    """
    from simmoe.topology.report import check_topology

    spec = read_topology_spec(path)
    topo = build_topology(spec, nodes=nodes)
    check_topology(topo)
    return topo


__all__ = ["LINK_CLASSES", "NodeSpec", "SiteSpec", "TopologySpec", "WanSpec", "build_topology",
           "gpus_in_topology", "load_topology", "nodes_in_topology", "read_topology_spec"]
