"""Which node each EP rank lives on, and how many nodes an EP group spans."""

from __future__ import annotations

from typing import Any

import numpy as np

from simmoe.errors import InputError
from simmoe.placement.layout import ParallelLayout


def _node_of_gpu(topology_server_of_gpu: Any, layout: ParallelLayout) -> np.ndarray:
    # A Topology or a plain GPU -> node array (e.g. nvlink_domain_of_gpu to count NVLink domains).
    node_of_gpu = np.asarray(getattr(topology_server_of_gpu, "server_of_gpu", topology_server_of_gpu))
    if node_of_gpu.ndim != 1 or node_of_gpu.shape[0] <= int(layout.rank_to_gpu.max()):
        raise InputError(
            f"the layout uses GPU ids up to {int(layout.rank_to_gpu.max())} but the topology has "
            f"{node_of_gpu.shape[0] if node_of_gpu.ndim == 1 else 'no'} GPUs", field="parallelism",
            allowed=f"a topology with at least {int(layout.rank_to_gpu.max()) + 1} GPUs")
    return node_of_gpu


def ep_rank_node(layout: ParallelLayout, topology_server_of_gpu: Any) -> np.ndarray:
    """(n_ep_groups, ep): node of EP rank j of EP group g (rows follow ``layout.groups("ep")``)."""
    return _node_of_gpu(topology_server_of_gpu, layout)[layout.gpu_groups("ep")]


def ep_group_num_nodes(layout: ParallelLayout, topology_server_of_gpu: Any) -> np.ndarray:
    """(n_ep_groups,): how many distinct nodes each EP group spans."""
    nodes = np.sort(ep_rank_node(layout, topology_server_of_gpu), axis=1)
    return 1 + np.count_nonzero(np.diff(nodes, axis=1), axis=1)
