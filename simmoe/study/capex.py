"""Fabric capex: count what a topology's scale-out fabric is made of, price it, amortize it.

Counted from the built graph of the whole topology file (every node it describes, not only the
ones a scenario uses; simmoe.topology builds the fabric for all of them):

- switches by layer (leaf, spine, aggregation, core) and link class; each priced as the table's
  switch of that class scaled by ``switch_radix / radix`` (constant price per port);
- NICs (one fabric port each in every shipped template), by the class of their link to the leaf;
- physical cables between fabric ports, by class: host links (NIC - leaf) and switch links (every
  parallel port of a leaf-spine bundle is one cable); NVLink and PCIe are inside the server;
- WAN gateway routers; WAN links are leased (priced by the table, 0 by default).

Amortization (docs/study.md): straight-line over ``life_years``, and a fabric busy a share
``utilization`` of its life charges each busy hour ``1 / utilization`` hours of it, as the
forecast's owned-cluster capex does; a job using part of the cluster pays its GPUs' share.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from simmoe.study.prices import PriceTable

HOURS_PER_YEAR = 8766.0  # 365.25 days, as simmoe.forecast.cost
INTERNAL_CLASSES = ("nvlink", "pcie")  # inside a server: part of the server price


@dataclass(frozen=True)
class FabricInventory:
    topology: str
    gpus: int
    servers: int
    switches: dict[tuple[str, str, int], int]  # (layer, link class, radix) -> count
    nics: dict[str, int]  # link class -> NICs
    host_links: dict[str, int]  # link class -> NIC-leaf cables
    switch_links: dict[str, int]  # link class -> switch-switch cables (wan included)
    routers: int

    @property
    def switch_count(self) -> int:
        return sum(self.switches.values())

    @property
    def nic_count(self) -> int:
        return sum(self.nics.values())

    @property
    def link_count(self) -> int:
        return sum(self.host_links.values()) + sum(self.switch_links.values())

    def switches_by_layer(self) -> dict[str, int]:
        out: Counter = Counter()
        for (layer, _cls, _radix), n in self.switches.items():
            out[layer] += n
        return dict(out)


@dataclass(frozen=True)
class FabricCapex:
    inventory: FabricInventory
    switches_usd: float
    nics_usd: float
    links_usd: float
    routers_usd: float
    lines: list[dict] = field(default_factory=list)  # one per priced item: what, count, unit_usd, usd, basis

    @property
    def total_usd(self) -> float:
        return self.switches_usd + self.nics_usd + self.links_usd + self.routers_usd


def fabric_inventory(topology_path: str) -> FabricInventory:
    """Count switches, NICs and cables of a topology file (all of its nodes)."""
    from simmoe.topology.loader import build_topology, read_topology_spec

    spec = read_topology_spec(topology_path)
    topo = build_topology(spec)
    radix_of_site = {s.name: (s.fabric.switch_radix if s.fabric is not None else 0) for s in spec.sites}
    g = topo.graph
    switch_cls: dict[str, str] = {}
    switches: Counter = Counter()
    nics: Counter = Counter()
    host: Counter = Counter()
    sw_links: Counter = Counter()
    routers = 0
    for u, v, d in g.edges(data=True):
        cls = d["link_class"]
        if cls in INTERNAL_CLASSES:
            continue
        ku, kv = g.nodes[u]["kind"], g.nodes[v]["kind"]
        for name, kind in ((u, ku), (v, kv)):
            if kind == "switch" and cls != "wan":
                switch_cls.setdefault(name, cls)
        # Each cable is two directed edges; count it once, from its lexically smaller end.
        if u > v:
            continue
        if "nic" in (ku, kv):
            host[cls] += int(d.get("ports", 1))
            nics[cls] += 1
        else:
            sw_links[cls] += int(d.get("ports", 1))
    for name, data in g.nodes(data=True):
        if data["kind"] == "switch":
            cls = switch_cls.get(name, "unconnected")
            switches[(data.get("layer", "switch"), cls, radix_of_site.get(data.get("site"), 0))] += 1
        elif data["kind"] == "router":
            routers += 1
    return FabricInventory(topology=spec.name, gpus=topo.num_gpus, servers=topo.num_servers,
                           switches=dict(switches), nics=dict(nics), host_links=dict(host),
                           switch_links=dict(sw_links), routers=routers)


def price_fabric(inv: FabricInventory, prices: PriceTable) -> FabricCapex:
    """Purchase price of the whole fabric, itemised."""
    lines = []
    sw = nic = link = 0.0
    for (layer, cls, radix), n in sorted(inv.switches.items()):
        p = prices.lookup("switches", cls)
        unit = p.usd * (radix / p.radix if radix and p.radix else 1.0)
        sw += n * unit
        lines.append({"item": f"{layer} switch ({cls}, {radix} ports)", "count": n, "unit_usd": unit,
                      "usd": n * unit, "basis": p.basis})
    for cls, n in sorted(inv.nics.items()):
        p = prices.lookup("nics", cls)
        nic += n * p.usd
        lines.append({"item": f"NIC ({cls})", "count": n, "unit_usd": p.usd, "usd": n * p.usd, "basis": p.basis})
    for kind, table in (("host link", inv.host_links), ("switch link", inv.switch_links)):
        for cls, n in sorted(table.items()):
            p = prices.lookup("links", cls)
            link += n * p.usd
            lines.append({"item": f"{kind} ({cls})", "count": n, "unit_usd": p.usd, "usd": n * p.usd,
                          "basis": p.basis})
    rt = inv.routers * prices.router.usd
    if inv.routers:
        lines.append({"item": "WAN gateway router", "count": inv.routers, "unit_usd": prices.router.usd,
                      "usd": rt, "basis": prices.router.basis})
    return FabricCapex(inventory=inv, switches_usd=sw, nics_usd=nic, links_usd=link, routers_usd=rt, lines=lines)


def amortized_usd(total_usd: float, *, wall_s: float, life_years: float, utilization: float,
                  share: float = 1.0) -> float:
    """The run's share of a fabric bought for ``total_usd``: straight-line over ``life_years``,
    ``1 / utilization`` of each busy hour, times ``share`` (job GPUs / cluster GPUs)."""
    return total_usd * share * (wall_s / 3600.0) / (life_years * HOURS_PER_YEAR * utilization)
