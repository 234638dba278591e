"""Routing model: which expert each token goes to, per step x MoE layer x micro-batch.

Pure numpy; takes plain values (no config schema). Start with :class:`RoutingModel` and
:class:`EPGroup`; docs/routing.md has the models, formulas, defaults and evidence.
"""

from simmoe.routing.aggregated import (
    RouteProbabilities,
    expert_choice_probabilities,
    sample_raw,
    token_choice_probabilities,
)
from simmoe.routing.block import DRAW_BLOCK, BlockDraws, sample_block
from simmoe.routing.capacity import (
    CAPACITY_SCOPES,
    EXECUTION_STYLES,
    CapacityResult,
    apply_capacity,
    execution_style,
    expert_capacity,
)
from simmoe.routing.draw import RoutingDraw, assemble_draw
from simmoe.routing.drift import DRIFT_DEFAULTS, DRIFT_KINDS, DriftPolicy
from simmoe.routing.exact import (
    RawDraw,
    exact_expert_choice,
    exact_token_choice,
    expert_choice_selection,
    token_choice_selection,
)
from simmoe.routing.group import EPGroup
from simmoe.routing.inclusion import (
    block_inclusion_probabilities,
    inclusion_probabilities,
    threshold_block_inclusion,
    weights_for_inclusion,
)
from simmoe.routing.model import (
    INCLUSION_METHODS,
    ROUTING_KINDS,
    SAMPLERS,
    RoutingModel,
    block_rng,
    draw_rng,
    draw_seed_sequence,
)
from simmoe.routing.popularity import (
    POPULARITY_KINDS,
    dirichlet_popularity,
    inclusion_from_popularity,
    max_over_mean,
    uniform_popularity,
    zipf_popularity,
)
from simmoe.routing.trace import ExpertTrace, load_expert_trace

__all__ = [name for name in dir() if not name.startswith("_")]
