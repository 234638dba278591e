"""RoutingModel: the one object the engine talks to.

``model.draw(step, layer, microbatch, replica)`` returns a :class:`RoutingDraw`. Every draw has its
own random stream, derived from (seed, step, layer, microbatch, replica) by
``numpy.random.SeedSequence`` spawn keys, so any draw can be made alone, in any order, and a reduced
(symmetric) run that simulates one EP replica gets exactly the draws the full run gives replica 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simmoe.errors import InputError
from simmoe.routing.aggregated import (
    RouteProbabilities,
    _segment_sum,
    expert_choice_probabilities,
    sample_raw,
    sample_raw_arrays,
    sample_raw_batch,
    token_choice_probabilities,
)
from simmoe.routing.capacity import CAPACITY_SCOPES, apply_capacity, execution_style, expert_capacity
from simmoe.routing.drift import DriftPolicy
from simmoe.routing.draw import RoutingDraw, assemble_draw
from simmoe.routing.exact import exact_expert_choice, exact_token_choice
from simmoe.routing.group import EPGroup
from simmoe.routing.inclusion import weights_for_inclusion
from simmoe.routing.popularity import (
    POPULARITY_KINDS,
    dirichlet_popularity,
    inclusion_from_popularity,
    uniform_popularity,
    zipf_popularity,
)
from simmoe.routing.trace import ExpertTrace, load_expert_trace

ROUTING_KINDS = ("token_choice", "expert_choice")
SAMPLERS = ("aggregated", "exact")
INCLUSION_METHODS = ("auto", "exact", "threshold")
# Above this many experts "auto" uses the closed-form threshold approximation (error < ~1% there,
# see tests) because the exact quadrature costs ~0.1 s per (step, layer) at E=256.
AUTO_EXACT_MAX_EXPERTS = 128

# Spawn-key domains, so that popularity, tie-breaks and per-micro-batch draws never share a stream.
_DOMAIN_POPULARITY = 1
_DOMAIN_TIE_BREAK = 2
_DOMAIN_DRAW = 3


def _check_index(name: str, value: int) -> int:
    if not isinstance(value, (int, np.integer)) or value < 0:
        raise InputError(f"{name} must be an integer >= 0", field=name, value=value, allowed=">= 0")
    return int(value)


def draw_seed_sequence(seed: int, step: int, layer: int, microbatch: int,
                       replica: int = 0) -> np.random.SeedSequence:
    key = tuple(_check_index(n, v) for n, v in
                (("step", step), ("layer", layer), ("microbatch", microbatch), ("replica", replica)))
    return np.random.SeedSequence(_check_index("seed", seed), spawn_key=(_DOMAIN_DRAW,) + key)


def draw_rng(seed: int, step: int, layer: int, microbatch: int,
             replica: int = 0) -> np.random.Generator:
    """The random stream of one (step, layer, micro-batch, EP replica)."""
    return np.random.Generator(np.random.PCG64(draw_seed_sequence(seed, step, layer, microbatch,
                                                                  replica)))


def _layer_rng(seed: int, domain: int, layer: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(domain, layer)))


class RoutingModel:
    """Routing of one EP group across a run. Plain values in, no config schema needed."""

    def __init__(self, group: EPGroup, *, num_layers: int, popularity: str = "uniform",
                 zipf_s: float = 1.0, dirichlet_alpha: float = 1.0,
                 trace: str | Path | ExpertTrace | None = None,
                 drift: DriftPolicy | str = "none", routing: str = "token_choice",
                 max_nodes_per_token: int | None = None, capacity_factor: float | None = None,
                 pad_to_capacity: bool | None = None, capacity_scope: str = "source",
                 sampler: str = "aggregated", inclusion_method: str = "auto",
                 seed: int = 0) -> None:
        self.group = group
        self.num_layers = _check_index("num_layers", num_layers)
        if self.num_layers < 1:
            raise InputError("need at least one MoE layer", field="num_layers", value=num_layers,
                             allowed=">= 1")
        for name, value, allowed in (("popularity", popularity, POPULARITY_KINDS),
                                     ("routing", routing, ROUTING_KINDS),
                                     ("sampler", sampler, SAMPLERS),
                                     ("inclusion_method", inclusion_method, INCLUSION_METHODS),
                                     ("capacity_scope", capacity_scope, CAPACITY_SCOPES)):
            if value not in allowed:
                raise InputError(f"unknown {name}", field=name, value=value,
                                 allowed=", ".join(allowed))
        self.popularity_kind = popularity
        self.zipf_s = float(zipf_s)
        self.dirichlet_alpha = float(dirichlet_alpha)
        if popularity == "trace":
            if trace is None:
                raise InputError("popularity 'trace' needs a trace file", field="trace",
                                 value=None, has_value=True, allowed="a Parquet path")
            self.trace = trace if isinstance(trace, ExpertTrace) else load_expert_trace(
                trace, group.num_experts)
        else:
            self.trace = None
        self.drift = drift if isinstance(drift, DriftPolicy) else DriftPolicy(drift)
        self.routing = routing
        self.sampler = sampler
        self.seed = _check_index("seed", seed)
        if inclusion_method == "auto":
            inclusion_method = ("exact" if group.num_experts <= AUTO_EXACT_MAX_EXPERTS
                                else "threshold")
        self.inclusion_method = inclusion_method
        self.capacity_scope = capacity_scope
        self.capacity_factor = capacity_factor
        if pad_to_capacity is None:
            pad_to_capacity = capacity_factor is not None
        self.pad_to_capacity = bool(pad_to_capacity)
        self.execution = execution_style(capacity_factor, self.pad_to_capacity)
        self.max_nodes_per_token = self._check_node_limit(max_nodes_per_token)
        if routing == "expert_choice":
            if capacity_factor is None:
                raise InputError("expert-choice routing needs a capacity factor",
                                 field="capacity_factor", value=None, has_value=True,
                                 allowed="a number > 0 (each expert takes C * tokens * k / E)")
            self.expert_choice_capacity = expert_capacity(
                capacity_factor, group.ep * group.tokens_per_rank, group.top_k, group.num_experts)
        else:
            self.expert_choice_capacity = None
        self._cache: dict[tuple[int, int], RouteProbabilities] = {}

    def _check_node_limit(self, m: int | None) -> int | None:
        if m is None:
            return None
        g = self.group
        if not isinstance(m, (int, np.integer)) or m < 1:
            raise InputError("max nodes per token must be an integer >= 1",
                             field="max_nodes_per_token", value=m, allowed=">= 1 or null")
        if self.routing != "token_choice":
            raise InputError("node-limited routing applies to token-choice routing only",
                             field="max_nodes_per_token", value=m, allowed="null for expert choice")
        per_node = np.sort(np.bincount(g.expert_node_index, minlength=g.num_nodes))
        if m < g.num_nodes and per_node[:m].sum() < g.top_k:
            raise InputError(f"{m} node(s) may hold fewer than top_k={g.top_k} experts",
                             field="max_nodes_per_token", value=m,
                             allowed=f"a value whose smallest nodes hold >= {g.top_k} experts")
        return int(m)

    # --- popularity ----------------------------------------------------------------------------
    @property
    def popularity_is_static(self) -> bool:
        return self.drift.is_static and not (self.trace is not None and self.trace.step_column)

    def base_popularity(self, layer: int, step: int = 0) -> np.ndarray:
        n = self.group.num_experts
        kind = self.popularity_kind
        if kind == "uniform":
            return uniform_popularity(n)
        if kind == "trace":
            return self.trace.popularity(layer, step)
        rng = _layer_rng(self.seed, _DOMAIN_POPULARITY, layer)
        if kind == "zipf":
            return zipf_popularity(n, self.zipf_s, rng)
        return dirichlet_popularity(n, self.dirichlet_alpha, rng)

    def popularity(self, step: int, layer: int) -> np.ndarray:
        """Expected load share per expert at (step, layer), drift applied (sums to 1)."""
        step = _check_index("step", step)
        layer = self._check_layer(layer)
        p0 = self.base_popularity(layer, step)
        tie = _layer_rng(self.seed, _DOMAIN_TIE_BREAK, layer).permutation(p0.size)
        return self.drift.apply(p0, step, top_k=self.group.top_k, tie_break=tie)

    def _check_layer(self, layer: int) -> int:
        layer = _check_index("layer", layer)
        if layer >= self.num_layers:
            raise InputError("MoE layer index out of range", field="layer", value=layer,
                             allowed=f"0..{self.num_layers - 1}")
        return layer

    def probabilities(self, step: int, layer: int) -> RouteProbabilities:
        """Per-token routing probabilities at (step, layer); cached, shared by all micro-batches."""
        key = (0 if self.popularity_is_static else _check_index("step", step), layer)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        g = self.group
        if self.routing == "expert_choice":
            probs = expert_choice_probabilities(g, self.expert_choice_capacity)
        else:
            where = (f"{self.trace.path}: layer {layer}" if self.trace is not None
                     else f"popularity (layer {layer})")
            pi = inclusion_from_popularity(self.popularity(step, layer), g.top_k, where=where)
            method = "exact" if self.sampler == "exact" else self.inclusion_method
            probs = token_choice_probabilities(g, pi, method=method,
                                               max_nodes_per_token=self.max_nodes_per_token)
            if self.sampler == "exact" and method != "exact":
                probs = RouteProbabilities(probs.pi, probs.rank_hit, probs.node_hit,
                                           probs.unrouted, probs.max_assignments_per_rank,
                                           weights_for_inclusion(pi, g.top_k))
        if len(self._cache) >= 4 * self.num_layers:
            self._cache.clear()
        self._cache[key] = probs
        return probs

    # --- draws ---------------------------------------------------------------------------------
    def draw(self, step: int, layer: int, microbatch: int = 0, replica: int = 0) -> RoutingDraw:
        layer = self._check_layer(layer)
        rng = draw_rng(self.seed, step, layer, microbatch, replica)
        probs = self.probabilities(step, layer)
        g = self.group
        if self.sampler == "exact":
            if self.routing == "expert_choice":
                raw = exact_expert_choice(g, self.expert_choice_capacity, rng)
            else:
                raw = exact_token_choice(g, probs.weights, rng, self.max_nodes_per_token)
        else:
            raw = sample_raw(g, probs, rng, expert_choice_capacity=self.expert_choice_capacity)
        return self._finish_draw(raw)

    def draw_batch(self, step: int, layer: int, microbatches, replica: int = 0) -> list[RoutingDraw]:
        """``[draw(step, layer, mb, replica) for mb in microbatches]``, the same draws (each
        micro-batch keeps its own random stream), computed at once where the sampler allows it
        (aggregated token choice: one pass of array arithmetic over a micro-batch axis)."""
        layer = self._check_layer(layer)
        mbs = [_check_index("microbatch", mb) for mb in microbatches]
        if self.sampler == "exact" or self.routing == "expert_choice":
            return [self.draw(step, layer, mb, replica) for mb in mbs]
        rngs = [draw_rng(self.seed, step, layer, mb, replica) for mb in mbs]
        probs = self.probabilities(step, layer)
        if self.execution != "dropless":
            return [self._finish_draw(raw) for raw in sample_raw_batch(self.group, probs, rngs)]
        out: list[RoutingDraw] = []
        for arrays in sample_raw_arrays(self.group, probs, rngs):
            out += self._dropless_batch(*arrays)
        return out

    def _dropless_batch(self, counts, distinct, node_distinct, unrouted) -> list[RoutingDraw]:
        """What apply_capacity + assemble_draw give dropless draws (nothing dropped, work = load,
        dispatch = distinct tokens), for a batch at once; all integer sums, so identical."""
        g = self.group
        compute = counts.sum(axis=1)  # (b, E)
        per_rank = _segment_sum(compute[:, g.expert_order], g.rank_starts, g.rank_ends)
        zeros = np.zeros(counts.shape[1:], dtype=counts.dtype)
        zeros.flags.writeable = False  # shared by the batch's draws: nothing is ever dropped
        return [RoutingDraw(
            routing=self.routing, execution="dropless", top_k=g.top_k,
            tokens_per_rank=g.tokens_per_rank, capacity=None,
            tokens_per_src_expert=counts[i], tokens_per_src_dst_rank=distinct[i],
            tokens_per_src_dst_node=node_distinct[i], unrouted_tokens_per_src=unrouted[i],
            processed_tokens_per_src_expert=counts[i], dropped_tokens_per_src_expert=zeros,
            compute_tokens_per_expert=compute[i], compute_tokens_per_rank=per_rank[i],
            dispatch_tokens_per_src_dst_rank=distinct[i],
            dispatch_tokens_per_src_dst_node=node_distinct[i],
        ) for i in range(len(counts))]

    def _finish_draw(self, raw) -> RoutingDraw:
        g = self.group
        if self.routing == "expert_choice":
            # Capacity is built into expert choice: nothing dropped, every expert computes its
            # capacity (tokens it took), padding is moot.
            cap_result = apply_capacity(raw.tokens_per_src_expert, tokens_per_rank=g.tokens_per_rank,
                                        top_k=g.top_k, capacity_factor=None,
                                        pad_to_capacity=False)
            cap_result = type(cap_result)(self.expert_choice_capacity,
                                          cap_result.processed_tokens_per_src_expert,
                                          cap_result.compute_tokens_per_expert, None)
            execution = "dropless"
        else:
            cap_result = apply_capacity(raw.tokens_per_src_expert, tokens_per_rank=g.tokens_per_rank,
                                        top_k=g.top_k, capacity_factor=self.capacity_factor,
                                        pad_to_capacity=self.pad_to_capacity,
                                        scope=self.capacity_scope)
            execution = self.execution
        return assemble_draw(g, raw, cap_result, routing=self.routing, execution=execution)
