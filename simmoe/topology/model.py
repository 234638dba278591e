"""The Topology object: a networkx DiGraph plus flat link arrays and vectorized ECMP routes.

CONTRACT (other modules rely on exactly this; the topology owner implements it):

Graph nodes carry ``kind`` in {"gpu", "nvswitch", "nic", "switch", "router"}; GPU nodes also carry
``gpu_id`` (0..num_gpus-1), ``server`` (server index) and ``nvlink_domain`` (domain index). Every
directed edge carries ``capacity_bytes_per_s`` (> 0, one direction), ``latency_s`` (>= 0),
``link_class`` (e.g. "nvlink", "pcie", "ib-ndr", "ib-hdr", "eth-100g", "wan") and ``index`` (its
row in the link arrays below).

Routing: GPUs in the same NVLink domain talk over NVLink (GPU -> NVSwitch -> GPU). Otherwise a flow
goes GPU -> its NIC -> edge switch -> (ECMP over equal-cost shortest paths of the switch fabric,
split evenly at every hop) -> edge switch -> NIC -> GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import scipy.sparse as sp


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

    @property
    def num_gpus(self) -> int:
        return len(self.server_of_gpu)

    @property
    def num_links(self) -> int:
        return len(self.link_capacity_bytes_per_s)

    def route_matrix(self, src: np.ndarray, dst: np.ndarray) -> sp.csr_matrix:
        """(len(src) x num_links) CSR: entry (i, l) is the fraction of flow i's bytes on link l.

        Fractions come from ECMP (even split at each hop over equal-cost next hops), so every
        row conserves flow at every intermediate node. Rows with src == dst are empty.
        """
        raise NotImplementedError

    def route_latency_s(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Per-flow propagation + switching latency: sum over the route of fraction * link latency."""
        return np.asarray(self.route_matrix(src, dst) @ self.link_latency_s).reshape(-1)
