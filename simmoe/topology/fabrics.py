"""Switch fabrics: two- and three-tier fat-trees (Clos) and rail-optimized leaf/spine.

A fabric connects endpoints (NIC ports; endpoint ``server * nics_per_server + k`` is NIC ``k`` of a
server) to leaf switches, and leaves to the layers above. Everything here is counting; the loader
turns the result into graph edges with capacities and latencies.

Sizing rules (radix R, oversubscription o = downlink : uplink capacity at the leaf):

* A leaf gives ``d = floor(R * o / (1 + o))`` ports to endpoints (32 of 64 at o = 1, 42 at o = 2)
  and ``ceil(a / o)`` uplinks when ``a`` endpoints are attached, so every leaf has ratio <= o,
  exactly o when ``a`` is a multiple of o.
* fat-tree: servers are packed onto leaves in order, whole servers per leaf where ``d`` allows it.
  rail-optimized: NIC ``k`` of every server goes to a leaf of rail ``k`` (``ceil(servers / d)``
  leaves per rail), so same-rail traffic between servers on one rail leaf never reaches a spine.
* Two tiers: every leaf connects to every spine; the uplinks of a leaf are spread evenly over the
  spines as bundles of parallel ports (one graph edge per bundle, capacity = ports x port rate).
  The default spine count is the smallest divisor of the uplink count that gives spines enough
  ports, and at least 2 for redundancy when a leaf has 2 or more uplinks.
* Three tiers: leaves are grouped into pods of ``pod_leaves`` (default R / 2); each pod has
  aggregation switches with R / 2 ports down and as many up (non-blocking above the leaf);
  aggregation switch j of every pod connects to core group j, as in the k-ary fat-tree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from simmoe.errors import TopologyError

FABRIC_TYPES = ("fat-tree", "rail-optimized")


@dataclass(frozen=True)
class FabricSpec:
    type: str  # one of FABRIC_TYPES
    tiers: int  # 2 (leaf/spine) or 3 (leaf/aggregation/core)
    switch_radix: int  # ports per switch
    oversubscription: float  # downlink : uplink capacity at the leaf, >= 1
    link_class: str
    port_bytes_per_s: float  # one port, one direction
    hop_latency_s: float  # per link and direction, switch traversal + cable
    spines: int | None = None  # two tiers only: override the spine count (0 is allowed, and
    #                            disconnects a multi-leaf fabric: `simmoe topo check` reports it)
    pod_leaves: int | None = None  # three tiers only: leaves per pod


@dataclass
class FabricLayout:
    """Switches and switch-to-switch bundles of one fabric (no endpoints, no capacities yet)."""

    switches: list[tuple[str, str]] = field(default_factory=list)  # (name, layer)
    bundles: list[tuple[str, str, int]] = field(default_factory=list)  # (lower, upper, ports)
    leaf_of_endpoint: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    leaf_names: list[str] = field(default_factory=list)
    top: list[str] = field(default_factory=list)  # the highest layer present (WAN gateways attach)


def _spread(uplinks: np.ndarray, groups: int) -> np.ndarray:
    """(len(uplinks), groups) port counts: each row's uplinks spread as evenly as integers allow."""
    base = uplinks[:, None] // groups
    extra = np.arange(groups)[None, :] < (uplinks[:, None] % groups)
    return base + extra


def _smallest_divisor_at_least(n: int, lower: int) -> int | None:
    for s in range(max(1, lower), n + 1):
        if n % s == 0:
            return s
    return None


def _choose_upper(uplinks: np.ndarray, radix: int, ports_up_per_switch: int) -> int | None:
    """Fewest upper switches (dividing the uplink count, >= 2 when possible) with enough ports."""
    u_min = int(uplinks.min())
    lower = max(math.ceil(int(uplinks.sum()) / ports_up_per_switch), min(2, u_min))
    s = _smallest_divisor_at_least(u_min, lower)
    while s is not None and s <= u_min:
        if int(_spread(uplinks, s).sum(axis=0).max()) <= ports_up_per_switch:
            return s
        s += 1
    return None


def layout_fabric(spec: FabricSpec, num_servers: int, nics_per_server: int, *,
                  prefix: str = "", file: str | None = None, field_path: str = "fabric"
                  ) -> FabricLayout:
    """Place endpoints on leaves and size the layers above (see the module docstring)."""
    radix, over = spec.switch_radix, spec.oversubscription
    down = max(1, math.floor(radix * over / (1 + over)))
    num_endpoints = num_servers * nics_per_server
    servers = np.arange(num_servers)
    if spec.type == "rail-optimized":
        per_rail = math.ceil(num_servers / down)
        rail_leaf = servers * per_rail // num_servers  # (servers,)
        leaf = (np.arange(nics_per_server)[None, :] * per_rail + rail_leaf[:, None]).reshape(-1)
        num_leaves = per_rail * nics_per_server
    elif down >= nics_per_server:  # fat-tree, whole servers per leaf
        num_leaves = math.ceil(num_servers / (down // nics_per_server))
        leaf = np.repeat(servers * num_leaves // num_servers, nics_per_server)
    else:  # fat-tree, a server's NICs spill over several leaves
        num_leaves = math.ceil(num_endpoints / down)
        leaf = np.arange(num_endpoints) * num_leaves // num_endpoints
    attached = np.bincount(leaf, minlength=num_leaves)
    uplinks = np.ceil(attached / over).astype(np.int64)
    out = FabricLayout(leaf_of_endpoint=leaf.astype(np.int64))
    out.leaf_names = [f"{prefix}leaf{i}" for i in range(num_leaves)]
    out.switches += [(n, "leaf") for n in out.leaf_names]
    out.top = list(out.leaf_names)

    if spec.tiers == 2:
        if num_leaves == 1 and spec.spines is None:
            return out
        if spec.spines is not None:
            count = spec.spines
            ports = _spread(uplinks, count) if count else np.zeros((num_leaves, 0), np.int64)
            if count and int(ports.sum(axis=0).max()) > radix:
                raise TopologyError(
                    f"{count} spines of {radix} ports cannot take {int(uplinks.sum())} leaf uplinks",
                    file=file, field=f"{field_path}.spines", value=count,
                    allowed=f"at least {math.ceil(int(uplinks.sum()) / radix)}")
        else:
            count = _choose_upper(uplinks, radix, radix)
            if count is None:
                raise TopologyError(
                    f"two tiers of {radix}-port switches cannot connect {num_leaves} leaves "
                    f"({num_endpoints} NIC ports)", file=file, field=f"{field_path}.tiers",
                    value=2, allowed=f"3, or a switch_radix of at least {_min_radix_2tier(num_leaves)}")
            ports = _spread(uplinks, count)
        spines = [f"{prefix}spine{s}" for s in range(count)]
        out.switches += [(n, "spine") for n in spines]
        rows, cols = np.nonzero(ports)
        out.bundles += [(out.leaf_names[i], spines[j], int(ports[i, j])) for i, j in zip(rows, cols)]
        out.top = spines if spines else out.top
        return out

    # Three tiers.
    half = radix // 2
    pod_leaves = spec.pod_leaves or half
    num_pods = math.ceil(num_leaves / pod_leaves)
    pod_of_leaf = np.arange(num_leaves) * num_pods // num_leaves
    leaves_per_pod = np.bincount(pod_of_leaf)
    biggest = int(leaves_per_pod.max())
    aggs = _choose_upper(uplinks[pod_of_leaf == np.argmax(leaves_per_pod)], radix, half)
    if aggs is None:
        raise TopologyError(
            f"a pod of {biggest} leaves cannot be served by {radix}-port aggregation switches "
            f"({half} ports down each)", file=file, field=f"{field_path}.pod_leaves",
            value=pod_leaves, allowed=f"at most {half}")
    leaf_ports = _spread(uplinks, aggs)  # (leaves, aggs)
    agg_name = [[f"{prefix}agg{p}.{j}" for j in range(aggs)] for p in range(num_pods)]
    for p in range(num_pods):
        out.switches += [(n, "aggregation") for n in agg_name[p]]
    rows, cols = np.nonzero(leaf_ports)
    out.bundles += [(out.leaf_names[i], agg_name[pod_of_leaf[i]][j], int(leaf_ports[i, j]))
                    for i, j in zip(rows, cols)]
    out.top = [n for names in agg_name for n in names]
    if num_pods == 1:
        return out
    # agg_up[p, j]: ports from aggregation switch j of pod p to core group j (= its ports down).
    agg_up = np.zeros((num_pods, aggs), dtype=np.int64)
    np.add.at(agg_up, pod_of_leaf, leaf_ports)
    cores = _choose_cores(agg_up, radix)
    if cores is None:
        raise TopologyError(
            f"three tiers of {radix}-port switches cannot connect {num_pods} pods",
            file=file, field=f"{field_path}.switch_radix", value=radix,
            allowed="a larger radix, or fewer nodes")
    core_name = [[f"{prefix}core{j}.{c}" for c in range(cores)] for j in range(aggs)]
    for j in range(aggs):
        out.switches += [(n, "core") for n in core_name[j]]
    up_ports = _spread(agg_up.reshape(-1), cores).reshape(num_pods, aggs, cores)
    pp, jj, cc = np.nonzero(up_ports)
    out.bundles += [(agg_name[p][j], core_name[j][c], int(up_ports[p, j, c]))
                    for p, j, c in zip(pp, jj, cc)]
    out.top = [n for names in core_name for n in names]
    return out


def _choose_cores(agg_up: np.ndarray, radix: int) -> int | None:
    """Cores per group: core group j takes one bundle from aggregation switch j of every pod."""
    u_min = int(agg_up.min())
    lower = max(math.ceil(int(agg_up.sum(axis=0).max()) / radix), min(2, u_min))
    s = _smallest_divisor_at_least(u_min, lower)
    while s is not None and s <= u_min:
        per_core = _spread(agg_up.reshape(-1), s).reshape(*agg_up.shape, s).sum(axis=0)
        if int(per_core.max()) <= radix:
            return s
        s += 1
    return None


def _min_radix_2tier(num_leaves: int) -> int:
    # A spine must reach every leaf with at least one port.
    return max(2, num_leaves)
