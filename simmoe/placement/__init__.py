"""Placement: global rank <-> parallel coordinates <-> GPU, and expert <-> EP rank.

Pure numpy on plain ints; the scenario schema maps its fields onto these arguments.
"""

from simmoe.placement.experts import (
    POLICIES,
    experts_of_rank,
    experts_per_rank,
    node_of_expert,
    place_experts,
)
from simmoe.placement.layout import DEFAULT_ORDER, DIMS, GROUP_DIMS, ParallelLayout, parse_order
from simmoe.placement.nodes import ep_group_num_nodes, ep_rank_node

__all__ = [
    "DEFAULT_ORDER",
    "DIMS",
    "GROUP_DIMS",
    "POLICIES",
    "ParallelLayout",
    "ep_group_num_nodes",
    "ep_rank_node",
    "experts_of_rank",
    "experts_per_rank",
    "node_of_expert",
    "parse_order",
    "place_experts",
]
