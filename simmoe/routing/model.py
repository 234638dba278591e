"""RoutingModel: the one object the engine talks to.

``model.draw(step, layer, microbatch, replica)`` returns a :class:`RoutingDraw`. Draws are keyed by
(seed, step, layer, microbatch, replica) through ``numpy.random.SeedSequence`` spawn keys, so any
draw can be made alone, in any order, and a reduced (symmetric) run that simulates one EP replica
gets exactly the draws the full run gives replica 0. The aggregated token-choice sampler (the
engine's) draws micro-batches in blocks of ``DRAW_BLOCK`` from one stream per (step, layer,
replica, block): ``draw(step, layer, mb)`` is micro-batch ``mb % DRAW_BLOCK`` of block
``mb // DRAW_BLOCK``, and ``draw_batch`` returns the very same draws. The exact and expert-choice
samplers keep one stream per draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from simmoe.errors import InputError
from simmoe.routing.aggregated import (
    RouteProbabilities,
    expert_choice_probabilities,
    sample_raw,
    token_choice_probabilities,
)
from simmoe.routing.block import DRAW_BLOCK, BlockDraws, sample_block
from simmoe.routing.capacity import CAPACITY_SCOPES, apply_capacity, execution_style, expert_capacity
from simmoe.routing.cyclic import cyclic_draw
from simmoe.routing.drift import DriftPolicy
from simmoe.routing.draw import RoutingDraw, assemble_draw
from simmoe.routing.exact import RawDraw, exact_expert_choice, exact_token_choice
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

ROUTING_KINDS = ("token_choice", "expert_choice", "cyclic")
SAMPLERS = ("aggregated", "exact")
INCLUSION_METHODS = ("auto", "exact", "threshold")
# Above this many experts "auto" uses the closed-form threshold approximation (error < ~1% there,
# see tests) because the exact quadrature costs ~0.1 s per (step, layer) at E=256.
AUTO_EXACT_MAX_EXPERTS = 128

# Spawn-key domains, so that popularity, tie-breaks and per-micro-batch draws never share a stream.
_DOMAIN_POPULARITY = 1
_DOMAIN_TIE_BREAK = 2
_DOMAIN_DRAW = 3
_DOMAIN_BLOCK = 4


class LayerDraws(NamedTuple):
    """A layer's draws for micro-batches 0 .. n-1 (:meth:`RoutingModel.draw_layer`)."""

    compute_tokens_per_expert: np.ndarray  # (n, E) int64
    dispatch_tokens_per_src_dst_rank: np.ndarray  # (n, ep, ep) int64
    dispatch_tokens_per_src_dst_node: np.ndarray  # (n, ep, nodes) int64


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


def block_rng(seed: int, step: int, layer: int, block: int, replica: int = 0
              ) -> np.random.Generator:
    """The random stream of micro-batches ``block * DRAW_BLOCK ...`` of one (step, layer, EP
    replica), aggregated token choice. SFC64: about twice PCG64's speed for uniforms, and streams
    seeded by distinct SeedSequence keys are independent all the same."""
    key = tuple(_check_index(n, v) for n, v in
                (("step", step), ("layer", layer), ("replica", replica), ("block", block)))
    ss = np.random.SeedSequence(_check_index("seed", seed), spawn_key=(_DOMAIN_BLOCK,) + key)
    return np.random.Generator(np.random.SFC64(ss))


def _layer_rng(seed: int, domain: int, layer: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(domain, layer)))


def _read_only_zeros(*shape: int) -> np.ndarray:
    z = np.zeros(shape, dtype=np.int64)
    z.flags.writeable = False  # shared by many draws (nothing unrouted / dropped): none may alter it
    return z


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
        # The last block drawn by ``draw`` (one-by-one loops over micro-batches reuse it).
        self._last_block: tuple[tuple, BlockDraws] | None = None
        self._zeros_ep = _read_only_zeros(group.ep)
        self._zeros_ep_e = _read_only_zeros(group.ep, group.num_experts)
        self._cyclic: RoutingDraw | None = None  # cyclic routing: one draw serves every micro-batch

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
    @property
    def draws_in_blocks(self) -> bool:
        """Aggregated token choice: micro-batches drawn DRAW_BLOCK at a time from one stream."""
        return self.sampler == "aggregated" and self.routing == "token_choice"

    def draw(self, step: int, layer: int, microbatch: int = 0, replica: int = 0) -> RoutingDraw:
        layer = self._check_layer(layer)
        if self.routing == "cyclic":
            if self._cyclic is None:
                self._cyclic = self._finish_draw(cyclic_draw(self.group))
                for value in vars(self._cyclic).values():  # shared by every draw: none may alter it
                    if isinstance(value, np.ndarray):
                        value.flags.writeable = False
            return self._cyclic
        if self.draws_in_blocks:
            mb = _check_index("microbatch", microbatch)
            block = self._block(step, layer, mb // DRAW_BLOCK, replica, keep=True)
            return self._block_draw(block, mb % DRAW_BLOCK)
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
        """``[draw(step, layer, mb, replica) for mb in microbatches]``, the same draws, with each
        block of micro-batches drawn once (aggregated token choice: one pass of array arithmetic
        over the block's micro-batch axis)."""
        layer = self._check_layer(layer)
        mbs = [_check_index("microbatch", mb) for mb in microbatches]
        if not self.draws_in_blocks:
            return [self.draw(step, layer, mb, replica) for mb in mbs]
        blocks: dict[int, BlockDraws] = {}
        out = []
        for mb in mbs:
            b = mb // DRAW_BLOCK
            block = blocks.get(b)
            if block is None:
                block = blocks[b] = self._block(step, layer, b, replica, keep=False)
            out.append(self._block_draw(block, mb % DRAW_BLOCK))
        return out

    def draw_layer(self, step: int, layer: int, n: int, replica: int = 0) -> LayerDraws:
        """Micro-batches ``0 .. n-1`` of a layer as stacked arrays (leading axis = micro-batch):
        what stacking the fields of ``draw_batch(step, layer, range(n), replica)`` gives, the
        same values. Dropless block draws are copied out of their blocks one block at a time
        (no per-draw objects; a block is freed before the next is drawn)."""
        layer = self._check_layer(layer)
        n = _check_index("n", n)
        if not (self.draws_in_blocks and self.execution == "dropless") or n == 0:
            ds = self.draw_batch(step, layer, range(n), replica)
            g = self.group
            if not ds:
                return LayerDraws(np.zeros((0, g.num_experts), np.int64),
                                  np.zeros((0, g.ep, g.ep), np.int64),
                                  np.zeros((0, g.ep, g.num_nodes), np.int64))
            return LayerDraws(np.stack([d.compute_tokens_per_expert for d in ds]),
                              np.stack([d.dispatch_tokens_per_src_dst_rank for d in ds]),
                              np.stack([d.dispatch_tokens_per_src_dst_node for d in ds]))
        out = None
        for b in range(-(-n // DRAW_BLOCK)):
            block = self._block(step, layer, b, replica, keep=False)
            fields = (block.tokens_per_expert, block.tokens_per_src_dst_rank,
                      block.tokens_per_src_dst_node)
            if out is None:
                out = [np.empty((n,) + f.shape[1:], f.dtype) for f in fields]
            lo = b * DRAW_BLOCK
            k = min(DRAW_BLOCK, n - lo)
            for o, f in zip(out, fields):
                o[lo:lo + k] = f[:k]
            del block, fields
        return LayerDraws(*out)

    def _block(self, step: int, layer: int, block: int, replica: int, *, keep: bool) -> BlockDraws:
        key = (step, layer, block, replica)
        if self._last_block is not None and self._last_block[0] == key:
            return self._last_block[1]
        rng = block_rng(self.seed, step, layer, block, replica)
        drawn = sample_block(self.group, self.probabilities(step, layer), rng, DRAW_BLOCK)
        if keep:
            self._last_block = (key, drawn)
        return drawn

    def _block_draw(self, block: BlockDraws, i: int) -> RoutingDraw:
        g = self.group
        counts = block.tokens_per_src_expert[i]
        distinct = block.tokens_per_src_dst_rank[i]
        node_distinct = block.tokens_per_src_dst_node[i]
        if self.execution != "dropless":
            return self._finish_draw(RawDraw(counts, distinct, node_distinct, self._zeros_ep))
        # What apply_capacity + assemble_draw give a dropless draw (nothing dropped, work = load,
        # dispatch = distinct tokens), without the copies: all integer sums, so identical.
        return RoutingDraw(
            routing=self.routing, execution="dropless", top_k=g.top_k,
            tokens_per_rank=g.tokens_per_rank, capacity=None,
            tokens_per_src_expert=counts, tokens_per_src_dst_rank=distinct,
            tokens_per_src_dst_node=node_distinct, unrouted_tokens_per_src=self._zeros_ep,
            processed_tokens_per_src_expert=counts, dropped_tokens_per_src_expert=self._zeros_ep_e,
            compute_tokens_per_expert=block.tokens_per_expert[i],
            compute_tokens_per_rank=block.tokens_per_dst_rank[i],
            dispatch_tokens_per_src_dst_rank=distinct,
            dispatch_tokens_per_src_dst_node=node_distinct,
        )

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
