"""Expert popularity per MoE layer: the expected share of a layer's token-expert assignments that
each routed expert receives (a probability vector over experts; sums to 1).

Popularity is defined as *load share* because that is what people measure (expert-count traces,
max/mean load in papers), so a trace replays exactly and ``max(p) * E`` is the expected
max/mean expert load. The per-token inclusion probability of expert e in a token's top-k is then
``pi_e = k * p_e``, capped at 1 (an expert cannot be chosen twice by one token) with the excess
water-filled onto the others; :func:`inclusion_from_popularity` does that.
"""

from __future__ import annotations

import numpy as np

from simmoe.errors import InputError

POPULARITY_KINDS = ("uniform", "zipf", "dirichlet", "trace")


def uniform_popularity(num_experts: int) -> np.ndarray:
    return np.full(num_experts, 1.0 / num_experts)


def zipf_popularity(num_experts: int, s: float, rng: np.random.Generator) -> np.ndarray:
    """p ∝ 1 / rank^s, ranks assigned to experts by a random permutation (seeded): which expert is
    hot should not depend on its index, or placement would look better or worse by accident."""
    if not np.isfinite(s) or s < 0:
        raise InputError("Zipf exponent must be a finite number >= 0", field="zipf_s", value=s,
                         allowed="s >= 0 (0 = uniform; ~1 = strong skew)")
    ranked = 1.0 / np.arange(1, num_experts + 1, dtype=float) ** s
    p = np.empty(num_experts)
    p[rng.permutation(num_experts)] = ranked / ranked.sum()
    return p


def dirichlet_popularity(num_experts: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """p ~ Dirichlet(alpha, ..., alpha): small alpha = a few hot experts, large alpha = near uniform
    (expected max/mean grows like log(E) / alpha for small alpha)."""
    if not np.isfinite(alpha) or alpha <= 0:
        raise InputError("Dirichlet concentration must be a finite number > 0",
                         field="dirichlet_alpha", value=alpha, allowed="alpha > 0")
    p = rng.dirichlet(np.full(num_experts, float(alpha)))
    # Tiny alpha can give exact zeros in float; keep every expert reachable.
    p = np.maximum(p, 1e-12)
    return p / p.sum()


def max_over_mean(load: np.ndarray) -> float:
    """max / mean of a load vector (1.0 = perfectly balanced)."""
    load = np.asarray(load, dtype=float)
    mean = load.mean()
    return float(load.max() / mean) if mean > 0 else 1.0


def inclusion_from_popularity(popularity: np.ndarray, top_k: int, *, where: str = "popularity"
                              ) -> np.ndarray:
    """Per-token inclusion probabilities pi (sum top_k, each <= 1) from a load share vector.

    pi = c * p with c chosen so that sum(min(1, c p)) = k; experts at the cap are chosen by every
    token. Needs at least k experts with p > 0."""
    p = np.asarray(popularity, dtype=float)
    if p.ndim != 1 or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise InputError("popularity must be a finite, non-negative vector with a positive sum",
                         field=where)
    positive = int((p > 0).sum())
    if positive < top_k:
        raise InputError(f"only {positive} experts have non-zero popularity, fewer than top_k",
                         field=where, value=positive, allowed=f">= top_k={top_k} experts with load > 0")
    p = p / p.sum()
    pi = np.zeros_like(p)
    capped = np.zeros(p.size, dtype=bool)
    while True:  # at most k passes: each pass caps at least one more expert or stops
        free = ~capped
        pi[free] = p[free] * (top_k - capped.sum()) / p[free].sum()
        pi[capped] = 1.0
        over = free & (pi > 1.0)
        if not over.any():
            return pi
        capped |= over
