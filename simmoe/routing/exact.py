"""Per-token samplers: exact, O(tokens x experts). For small cases and as the test oracle.

Token choice: every token scores experts ``log w_e + Gumbel`` and takes its top-k (Gumbel-top-k =
sampling k experts without replacement with probabilities ∝ w). Node-limited routing follows
DeepSeek-V3: a node's score is the sum of the token's top ``max(1, k // M)`` affinities on that node
(affinity = exp(score)); the token keeps its top-M nodes and then its top-k experts among them.

Expert choice: every expert takes the ``capacity`` tokens of the whole EP group with the highest
scores. Scores are i.i.d. Gumbel per (token, expert); the popularity term log w_e is constant down an
expert's column, so it does not change which tokens an expert takes (load is balanced by design).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simmoe.routing.group import EPGroup

_FORCED_SCORE = 1e6  # forced experts (weight +inf) outrank every Gumbel-perturbed finite score


@dataclass(frozen=True)
class RawDraw:
    """Routing of one micro-batch before capacity (all int64; expert columns in expert id order)."""

    tokens_per_src_expert: np.ndarray  # (ep, E) token-expert assignments
    tokens_per_src_dst_rank: np.ndarray  # (ep, ep) distinct tokens
    tokens_per_src_dst_node: np.ndarray  # (ep, nodes) distinct tokens
    unrouted_tokens_per_src: np.ndarray  # (ep,) tokens that reach no expert


def _log_weights(weights: np.ndarray) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    out = np.full(w.size, -np.inf)
    pos = (w > 0) & np.isfinite(w)
    out[pos] = np.log(w[pos])
    out[np.isinf(w)] = _FORCED_SCORE
    return out


def _aggregate(group: EPGroup, selected: np.ndarray) -> RawDraw:
    ep, t = group.ep, group.tokens_per_rank
    per_src = selected.reshape(ep, t, group.num_experts)
    counts = per_src.sum(axis=1, dtype=np.int64)
    rank_hit = (selected.astype(np.float32) @ group.rank_one_hot.astype(np.float32)) > 0
    node_hit = (rank_hit.astype(np.float32) @ group.node_one_hot.astype(np.float32)) > 0
    return RawDraw(
        tokens_per_src_expert=counts,
        tokens_per_src_dst_rank=rank_hit.reshape(ep, t, ep).sum(axis=1, dtype=np.int64),
        tokens_per_src_dst_node=node_hit.reshape(ep, t, -1).sum(axis=1, dtype=np.int64),
        unrouted_tokens_per_src=(~selected.any(axis=1)).reshape(ep, t).sum(axis=1, dtype=np.int64),
    )


def token_choice_selection(group: EPGroup, weights: np.ndarray, rng: np.random.Generator,
                           max_nodes_per_token: int | None = None) -> np.ndarray:
    """(ep * tokens_per_rank, E) bool: which experts each token picked (rows grouped by source)."""
    k = group.top_k
    n_tokens = group.ep * group.tokens_per_rank
    scores = _log_weights(weights)[None, :] + rng.gumbel(size=(n_tokens, group.num_experts))
    m = max_nodes_per_token
    if m is not None and m < group.num_nodes:
        forced = scores >= _FORCED_SCORE / 2
        finite = np.where(forced, -np.inf, scores)
        affinity = np.exp(finite - finite.max(axis=1, keepdims=True))
        affinity[forced] = 1e300  # a node holding a forced expert is always selected
        per_node = max(1, k // m)
        node_of = group.expert_node_index
        node_score = np.empty((n_tokens, group.num_nodes))
        for n in range(group.num_nodes):
            sub = affinity[:, node_of == n]
            g = min(per_node, sub.shape[1])
            node_score[:, n] = -np.partition(-sub, g - 1, axis=1)[:, :g].sum(axis=1)
        chosen = np.argpartition(-node_score, m - 1, axis=1)[:, :m]
        allowed = np.zeros((n_tokens, group.num_nodes), dtype=bool)
        np.put_along_axis(allowed, chosen, True, axis=1)
        scores = np.where(allowed[:, node_of], scores, -np.inf)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    selected = np.zeros((n_tokens, group.num_experts), dtype=bool)
    np.put_along_axis(selected, top, True, axis=1)
    return selected


def exact_token_choice(group: EPGroup, weights: np.ndarray, rng: np.random.Generator,
                       max_nodes_per_token: int | None = None) -> RawDraw:
    return _aggregate(group, token_choice_selection(group, weights, rng, max_nodes_per_token))


def expert_choice_selection(group: EPGroup, capacity: int, rng: np.random.Generator) -> np.ndarray:
    n_tokens = group.ep * group.tokens_per_rank
    scores = rng.gumbel(size=(n_tokens, group.num_experts))
    cap = min(capacity, n_tokens)
    top = np.argpartition(-scores, cap - 1, axis=0)[:cap]
    selected = np.zeros((n_tokens, group.num_experts), dtype=bool)
    np.put_along_axis(selected, top, True, axis=0)
    return selected


def exact_expert_choice(group: EPGroup, capacity: int, rng: np.random.Generator) -> RawDraw:
    return _aggregate(group, expert_choice_selection(group, capacity, rng))
