"""Aggregated sampler: draws per-(source rank, expert) counts and per-(source, destination)
distinct-token counts directly, O(ep x E) per micro-batch instead of O(tokens x E).

Two stages. Once per (step, layer) — the popularity is the same for every micro-batch — compute
per-token probabilities (:class:`RouteProbabilities`):

- ``pi_e``: P(a token's top-k contains expert e);
- ``rank_hit_r``: P(a token picks at least one expert on EP rank r) = inclusion probability of the
  rank's experts merged into one item (exact for Gumbel-top-k, see inclusion.py);
- ``node_hit_n``: the same for a node.

Then per micro-batch (:func:`sample_raw`, one stream per draw: the plain form, used for expert
choice and as the reference of the engine's block sampler in simmoe/routing/block.py, which
computes the same model for a block of micro-batches at once), for every source rank with T
tokens:

1. counts ``X_se``: independent Binomial(T, pi_e), conditioned on the row sum T*k (the Gaussian
   conditioning ``X + r * d / sum(d)`` with d = T pi (1 - pi) and r the shortfall), its
   fluctuation rescaled so total variance matches sum(d) again, then rounded without changing the
   row sum (systematic rounding, unbiased). Exact means; exact second moments when pi is uniform;
   close otherwise (tests check both against the per-token sampler).
2. assignments per destination rank ``A_sr = sum_{e on r} X_se``; distinct tokens D_sr drawn
   jointly with A_sr: mean T h_r, variance T h_r (1 - h_r) (exact for i.i.d. tokens) and the
   covariance with A_sr that one token's "assignments to r" and "hits r" have; clipped to the
   bounds every real draw obeys (max_e X_se <= D <= min(A, T), D >= A / min(k, experts on r)).
3. distinct tokens per destination node likewise, coupled to the sum of that node's D_sr.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simmoe.routing.exact import RawDraw
from simmoe.routing.group import EPGroup
from simmoe.routing.inclusion import (
    block_inclusion_probabilities,
    inclusion_probabilities,
    solve_thresholds,
    threshold_block_inclusion,
    weights_for_inclusion,
)


@dataclass(frozen=True)
class RouteProbabilities:
    pi: np.ndarray  # (E,) per-token inclusion probability of each expert (expert id order)
    rank_hit: np.ndarray  # (ep,)
    node_hit: np.ndarray  # (nodes,)
    unrouted: float  # P(a token reaches no expert)
    max_assignments_per_rank: np.ndarray  # (ep,) most assignments one token can bring to a rank
    weights: np.ndarray | None = None  # Gumbel-top-k weights (token choice), for the exact sampler


def token_choice_probabilities(group: EPGroup, pi: np.ndarray, *, method: str = "exact",
                               max_nodes_per_token: int | None = None) -> RouteProbabilities:
    """``pi``: target inclusion probabilities (sum top_k, from the popularity). ``method``:
    "exact" (quadrature, ~0.1 s at E=256) or "threshold" (closed-form approximation, ~ms)."""
    k = group.top_k
    pi = np.asarray(pi, dtype=float)
    order = group.expert_order
    forced = pi >= 1.0 - 1e-12
    if method == "exact":
        w = weights_for_inclusion(pi, k)
    else:  # threshold approximation: w = -log(1 - pi) puts the race's threshold at t = 1
        w = np.where(forced, np.inf, -np.log1p(-np.minimum(pi, 1 - 1e-15)))
    max_per_rank = np.minimum(group.experts_per_rank, k)
    m = max_nodes_per_token
    if m is None or m >= group.num_nodes:
        if method == "exact":
            rank_hit = block_inclusion_probabilities(w[order], k, group.rank_starts, group.rank_ends)
            node_hit = block_inclusion_probabilities(w[order], k, group.node_starts, group.node_ends)
        else:
            rank_hit = threshold_block_inclusion(pi[order], k, group.rank_starts, group.rank_ends)
            node_hit = threshold_block_inclusion(pi[order], k, group.node_starts, group.node_ends)
        return RouteProbabilities(pi, rank_hit, node_hit, 0.0, max_per_rank, w)
    return _node_limited(group, pi, w, m, max_per_rank)


def _node_limited(group: EPGroup, pi_target: np.ndarray, w: np.ndarray, m: int,
                  max_per_rank: np.ndarray) -> RouteProbabilities:
    """Approximation of DeepSeek-V3 node-limited routing (documented in docs/routing.md).

    1. Node selection: Gumbel-top-M over nodes with node weight W_n = sum of its experts' weights,
       nu_n = P(node n selected). Exact when a node's score is its best expert's affinity (the race
       view: a node is selected when its first expert fires); DeepSeek sums the top k/M affinities,
       which the heavy-tailed affinities make close to that.
    2. Every selected node receives its first expert (e with probability w_e / W_n), so a node is
       hit with probability nu_n (the exact sampler confirms: sum_n node_hit = M).
    3. The remaining k - M slots go to the other experts of the selected nodes by the threshold
       approximation: given n selected, each other node m is present with probability
       lambda_m = nu_m (M-1) / (M - nu_n) and t_n solves sum_e lambda_node(e) (1 - e^{-w_e t}) = k - M.
       pi_e = nu_n [w_e/W_n + (1 - w_e/W_n)(1 - e^{-w_e t_n})], renormalised to sum k;
       rank r is hit with probability nu_n [1 - (1 - W_r/W_n) e^{-W_r t_n}].
    With k <= M and a best-expert node score the limit never binds (the k earliest experts lie on
    at most k nodes, all among the M earliest), so the unrestricted probabilities are used.
    """
    k = group.top_k
    node_of = group.expert_node_index
    forced = np.isinf(w)
    w_free = np.where(forced, 0.0, w)
    nodes = group.num_nodes
    node_w = np.bincount(node_of, weights=w_free, minlength=nodes)
    node_forced = np.bincount(node_of, weights=forced.astype(float), minlength=nodes) > 0
    n_forced_nodes = int(node_forced.sum())
    if k <= m or n_forced_nodes > m:
        return token_choice_probabilities(group, pi_target, method="threshold")
    nu = inclusion_probabilities(np.where(node_forced, np.inf, node_w), m)
    k_free = k - int(forced.sum())
    # First slots of selected nodes that have no forced expert; the rest race.
    k_extra = max(0, k_free - (m - n_forced_nodes))
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where(node_forced[node_of] | (node_w[node_of] <= 0), 0.0,
                         w_free / node_w[node_of])
    if m > 1:
        lam = np.minimum(1.0, nu[None, :] * (m - 1) / np.maximum(m - nu[:, None], 1e-12))
    else:
        lam = np.zeros((nodes, nodes))
    np.fill_diagonal(lam, 1.0)
    if k_extra > 0:
        # Each selected node's first expert already holds a slot: count it out of the race.
        coef = lam[:, node_of] * (1.0 - first)[None, :]
        t = solve_thresholds(w_free, coef, k_extra)
    else:
        t = np.zeros(nodes)
    t_e = t[node_of]
    with np.errstate(invalid="ignore"):
        fire = np.where(np.isfinite(t_e), -np.expm1(-w_free * t_e), (w_free > 0) * 1.0)
    pi = nu[node_of] * (first + (1.0 - first) * fire)
    pi[w_free <= 0] = 0.0
    for _ in range(20):  # rescale to sum k_free, honouring the cap of 1
        free = (pi < 1.0) & (w_free > 0)
        short = k_free - pi.sum()
        if abs(short) < 1e-12 or not free.any():
            break
        pi[free] *= 1.0 + short / pi[free].sum()
        np.minimum(pi, 1.0, out=pi)
    pi[forced] = 1.0
    rank_w = np.bincount(group.expert_to_rank, weights=w_free, minlength=group.ep)
    rn = group.rank_node_index
    with np.errstate(divide="ignore", invalid="ignore"):
        rank_first = np.where(node_forced[rn] | (node_w[rn] <= 0), 0.0, rank_w / node_w[rn])
        miss = np.where(np.isfinite(t[rn]), np.exp(-rank_w * t[rn]), (rank_w <= 0) * 1.0)
    rank_hit = nu[rn] * (1.0 - (1.0 - rank_first) * miss)
    rank_forced = np.bincount(group.expert_to_rank, weights=forced.astype(float),
                              minlength=group.ep) > 0
    rank_hit[rank_forced] = 1.0
    node_hit = nu.copy()
    return RouteProbabilities(pi, rank_hit, node_hit, 0.0, max_per_rank, w)


def expert_choice_probabilities(group: EPGroup, capacity: int) -> RouteProbabilities:
    """Each expert takes ``capacity`` of the group's tokens; a token is taken by each expert
    independently with probability q = capacity / group tokens (exact for i.i.d. scores)."""
    n_tokens = group.ep * group.tokens_per_rank
    q = min(capacity, n_tokens) / n_tokens
    pi = np.full(group.num_experts, q)
    rank_hit = 1.0 - (1.0 - q) ** group.experts_per_rank
    experts_per_node = np.bincount(group.expert_node_index, minlength=group.num_nodes)
    node_hit = 1.0 - (1.0 - q) ** experts_per_node
    return RouteProbabilities(pi, rank_hit, node_hit, (1.0 - q) ** group.num_experts,
                              group.experts_per_rank.copy(), None)


def _segment_sum(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Row-wise sum of values[:, start:end] per segment, via a prefix sum (exact for ints)."""
    cum = np.zeros((values.shape[0], values.shape[1] + 1), dtype=values.dtype)
    np.cumsum(values, axis=1, out=cum[:, 1:])
    return cum[:, ends] - cum[:, starts]


def _segment_max(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Row-wise max of values[:, start:end] per segment (0 for empty ones). The segments tile the
    columns back to back (EPGroup builds them so), which is what ``reduceat`` needs."""
    n = values.shape[1]
    seq = np.lexsort((ends, starts))  # an empty segment sorts before a non-empty one at its start
    got = np.maximum.reduceat(values, np.minimum(starts[seq], n - 1), axis=1)
    out = np.zeros((values.shape[0], starts.size), dtype=values.dtype)
    out[:, seq] = got
    out[:, ends <= starts] = 0
    return out


_NORMAL_MIN_VARIANCE = 30.0


def _conditioned_counts(t: int, k: int, pi: np.ndarray, rng: np.random.Generator,
                        rows: int) -> np.ndarray:
    """(rows, E) int counts with mean T*pi, row sums exactly T*k and variances ~ T pi (1 - pi)."""
    mean = t * pi
    d = mean * (1.0 - pi)
    # Binomial draws are ~50 ns each; where the variance is large the normal approximation is as
    # good (the conditioning below is Gaussian anyway) and ~10x cheaper.
    small = d < _NORMAL_MIN_VARIANCE
    x = mean + np.sqrt(d) * rng.standard_normal((rows, pi.size))
    if small.any():
        x[:, small] = rng.binomial(t, np.broadcast_to(pi[small], (rows, int(small.sum()))))
    total_d = d.sum()
    target = float(round(t * pi.sum()))
    if total_d > 0:
        shortfall = target - x.sum(axis=1, keepdims=True)
        x += shortfall * (d / total_d)
        scale = 1.0 / np.sqrt(max(1.0 - (d * d).sum() / total_d**2, 1e-12))
        x = mean + scale * (x - mean)
    floor = np.floor(x)
    frac = x - floor
    cum = np.cumsum(frac, axis=1)
    u = rng.random((rows, 1))
    prev = np.concatenate([np.zeros((rows, 1)), cum[:, :-1]], axis=1)
    counts = floor + np.floor(cum - u) - np.floor(prev - u)
    np.clip(counts, 0, t, out=counts)
    resid = target - counts.sum(axis=1)
    for row in np.flatnonzero(resid != 0):  # rare (clipping at 0 or T): settle unit by unit
        c = counts[row]
        r = int(resid[row])
        # Add where there is headroom, most expected load first; remove from the largest counts.
        order = np.argsort(-(mean - c)) if r > 0 else np.argsort(-c)
        room = (t - c[order]) if r > 0 else c[order]
        moved = np.minimum(room, np.maximum(abs(r) - np.concatenate([[0], np.cumsum(room)[:-1]]),
                                            0))
        c[order] += np.sign(r) * moved
    return counts.astype(np.int64)


def _stochastic_round(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    floor = np.floor(x)
    return (floor + (rng.random(x.shape) < (x - floor))).astype(np.int64)


def distinct_regression(tokens, hit, mean_assigned, var_assigned):
    """(beta, residual sd) of distinct tokens D on assignments A (see :func:`_coupled_distinct`):
    D = T h + beta (A - E[A]) + residual, with beta capped so that Var(beta A) <= Var(D)."""
    var_d = tokens * hit * (1.0 - hit)
    cov = mean_assigned * (1.0 - hit)
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = np.where(var_assigned > 0, cov / var_assigned, 0.0)
        # Keep Var(beta A) <= Var(D): the A-model is an approximation, the D variance is exact.
        beta_max = np.where(var_assigned > 0, np.sqrt(var_d / var_assigned), 0.0)
    beta = np.minimum(beta, beta_max)
    resid_sd = np.sqrt(np.maximum(var_d - beta * beta * var_assigned, 0.0))
    return beta, resid_sd


def _coupled_distinct(rng: np.random.Generator, assigned: np.ndarray, mean_assigned: np.ndarray,
                      var_assigned: np.ndarray, hit: np.ndarray, tokens: int, lower: np.ndarray,
                      upper: np.ndarray) -> np.ndarray:
    """Distinct tokens D per (source, destination) given the assignments A it received.

    Per token, m = assignments to the destination and 1[m >= 1] have Cov = E[m] (1 - h), so over T
    i.i.d. tokens Cov(A, D) = E[A] (1 - h) and Var(D) = T h (1 - h). D is drawn as the Gaussian with
    that mean, variance and regression on A, stochastically rounded, then clipped to the bounds
    every real draw obeys (rarely active)."""
    beta, resid_sd = distinct_regression(tokens, hit, mean_assigned, var_assigned)
    x = tokens * hit + beta * (assigned - mean_assigned) + resid_sd * rng.standard_normal(
        assigned.shape)
    return np.clip(_stochastic_round(rng, x), lower, upper)


def sample_raw(group: EPGroup, probs: RouteProbabilities, rng: np.random.Generator, *,
               expert_choice_capacity: int | None = None) -> RawDraw:
    ep, t = group.ep, group.tokens_per_rank
    rank_of = group.expert_to_rank
    pi_rank = np.bincount(rank_of, weights=probs.pi, minlength=ep)
    if expert_choice_capacity is None:
        counts = _conditioned_counts(t, group.top_k, probs.pi, rng, ep)
        # Variance of A_r = sum of the rank's counts under the conditioned model (see above).
        d = t * probs.pi * (1.0 - probs.pi)
        d_rank = np.bincount(rank_of, weights=d, minlength=ep)
        total_d = d.sum()
        if total_d > 0:
            scale2 = 1.0 / max(1.0 - (d * d).sum() / total_d**2, 1e-12)
            var_assigned = scale2 * (d_rank - d_rank**2 / total_d)
            cov_rank = -scale2 / total_d  # Cov(A_r, A_r') = cov_rank * d_r * d_r'
        else:
            var_assigned, cov_rank = np.zeros(ep), 0.0
    else:
        cap = min(expert_choice_capacity, ep * t)
        counts = rng.multivariate_hypergeometric(np.full(ep, t), cap, size=group.num_experts).T
        counts = counts.astype(np.int64)
        n_total = ep * t
        var_one = cap * (1 / ep) * (1 - 1 / ep) * (n_total - cap) / max(n_total - 1, 1)
        var_assigned = group.experts_per_rank * var_one
        d_rank, cov_rank = np.zeros(ep), 0.0
    # Per destination rank.
    ordered = counts[:, group.expert_order]
    assigned = _segment_sum(ordered, group.rank_starts, group.rank_ends)  # (ep src, ep dst)
    max_expert = _segment_max(ordered, group.rank_starts, group.rank_ends)
    per_token = np.maximum(probs.max_assignments_per_rank, 1)
    lower = np.maximum(max_expert, -(-assigned // per_token))
    upper = np.minimum(assigned, t)
    distinct = _coupled_distinct(rng, assigned, t * pi_rank, var_assigned, probs.rank_hit, t,
                                 lower, upper)
    # Per destination node: the same construction with B_n = sum of the node's D_r.
    node_hot = group.node_one_hot
    rank_seq = np.lexsort((np.arange(ep), group.rank_node_index))
    n_ends = np.cumsum(group.ranks_per_node)
    n_starts = n_ends - group.ranks_per_node
    node_assigned = _segment_sum(distinct[:, rank_seq], n_starts, n_ends)
    mean_node, var_node = node_moments(node_hot, probs, t, pi_rank, var_assigned, d_rank, cov_rank)
    max_rank = _segment_max(distinct[:, rank_seq], n_starts, n_ends)
    node_lower = np.maximum(max_rank, -(-node_assigned // np.maximum(group.ranks_per_node, 1)))
    node_distinct = _coupled_distinct(rng, node_assigned, mean_node, np.maximum(var_node, 0.0),
                                      probs.node_hit, t, node_lower, np.minimum(node_assigned, t))
    if probs.unrouted > 0:
        unrouted = rng.binomial(t, probs.unrouted, size=ep).astype(np.int64)
    else:
        unrouted = np.zeros(ep, dtype=np.int64)
    return RawDraw(counts, distinct, node_distinct, unrouted)


def node_moments(node_hot, probs, t: int, pi_rank, var_assigned, d_rank, cov_rank):
    """Mean and variance of B_n, the distinct tokens a source sends to node n, with B_n the sum of
    the node's per-rank distinct counts D_r (each coupled to its assignments A_r with slope beta_r).
    Shared by the per-draw and the block sampler so the two stay one model."""
    var_d = t * probs.rank_hit * (1.0 - probs.rank_hit)
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = np.minimum(np.where(var_assigned > 0, t * pi_rank * (1 - probs.rank_hit)
                                   / var_assigned, 0.0),
                          np.where(var_assigned > 0, np.sqrt(var_d / var_assigned), 0.0))
    v = beta * d_rank
    # Var(B_n) = sum_r Var(D_r) + sum_{r != r'} beta_r beta_r' Cov(A_r, A_r') (A-coupling only).
    var_node = node_hot.T @ var_d + cov_rank * ((node_hot.T @ v) ** 2 - node_hot.T @ (v * v))
    mean_node = t * (node_hot.T @ probs.rank_hit)
    return mean_node, var_node
