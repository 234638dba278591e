"""A layered PNG of a topology with each server (its GPUs, NVSwitch and NICs) drawn as one box.

matplotlib is imported here only, so the rest of simmoe never needs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simmoe.topology.model import Topology

_LAYER_Y = {"server": 0, "leaf": 1, "spine": 2, "aggregation": 2, "core": 3, "gateway": 4}
_LAYER_COLOR = {"server": "#4c72b0", "leaf": "#55a868", "spine": "#c44e52",
                "aggregation": "#c44e52", "core": "#8172b2", "gateway": "#ccb974"}
_CLASS_COLOR = {"wan": "#ccb974", "eth-100g": "#937860", "eth-400g": "#937860"}


def _collapsed(topo: Topology) -> tuple[dict[str, str], dict[str, str]]:
    """Map every graph node to a drawn node (servers collapsed), and drawn node -> layer."""
    g = topo.graph
    nvsw_server: dict[str, int] = {}
    for v, d in g.nodes(data=True):
        if d["kind"] == "gpu":
            for w in g.successors(v):
                if g.nodes[w]["kind"] == "nvswitch":
                    nvsw_server.setdefault(w, d["server"])
    drawn, layer = {}, {}
    for v, d in g.nodes(data=True):
        kind = d["kind"]
        if kind in ("gpu", "nic"):
            name = f"server{d['server']}"
        elif kind == "nvswitch":
            name = f"server{nvsw_server.get(v, 0)}"
        else:
            name = v
        drawn[v] = name
        layer[name] = "server" if name.startswith("server") and kind != "switch" \
            else d.get("layer", "leaf")
    return drawn, layer


def draw_png(topo: Topology, out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn, layer = _collapsed(topo)
    by_layer: dict[str, list[str]] = {}
    for name, lay in layer.items():
        by_layer.setdefault(lay, []).append(name)
    pos = {}
    width = max(len(v) for v in by_layer.values())
    for lay, names in by_layer.items():
        xs = np.linspace(0, width, len(names) + 2)[1:-1]
        for x, name in zip(xs, names):
            pos[name] = (x, _LAYER_Y.get(lay, 1))
    # One line per pair of drawn nodes; its width grows with the capacity between them.
    pairs: dict[tuple[str, str], tuple[float, str]] = {}
    for (u, v), cap, cls in zip(topo.link_endpoints, topo.link_capacity_bytes_per_s, topo.link_class):
        a, b = drawn[u], drawn[v]
        if a == b:
            continue
        key = (a, b) if a < b else (b, a)
        old = pairs.get(key, (0.0, cls))
        pairs[key] = (old[0] + cap / 2, cls)  # both directions were counted
    fig, ax = plt.subplots(figsize=(min(30, 4 + width * 0.25), 6))
    caps = np.array([c for c, _ in pairs.values()]) if pairs else np.ones(1)
    for (a, b), (cap, cls) in pairs.items():
        lw = 0.3 + 2.5 * np.log1p(cap / caps.min()) / np.log1p(caps.max() / caps.min() + 1e-9)
        ax.plot([pos[a][0], pos[b][0]], [pos[a][1], pos[b][1]], color=_CLASS_COLOR.get(cls, "#999"),
                lw=lw, alpha=0.5, zorder=1)
    for lay, names in by_layer.items():
        xy = np.array([pos[n] for n in names])
        ax.scatter(xy[:, 0], xy[:, 1], s=max(8, 300 / max(1, len(names) ** 0.5)),
                   c=_LAYER_COLOR.get(lay, "#333"), label=f"{lay} ({len(names)})", zorder=2,
                   marker="s" if lay == "server" else "o")
    label = {0: "servers", 1: "leaf", 2: "spine / aggregation", 3: "core", 4: "gateway"}
    used = sorted({_LAYER_Y.get(lay, 1) for lay in by_layer})
    ax.set_yticks(used)
    ax.set_yticklabels([label[y] for y in used])
    ax.set_xticks([])
    ax.set_title(f"{topo.name}: {topo.num_gpus} {topo.gpu_model} GPUs in {topo.num_servers} "
                 "servers (each server one square)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
