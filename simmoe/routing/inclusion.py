"""Inclusion probabilities of Gumbel-top-k (Plackett-Luce sampling without replacement).

A token's router picks its top-k experts by ``log w_e + Gumbel`` scores. Equivalently every expert
runs an exponential clock ``T_e ~ Exp(w_e)`` and the k earliest clocks win. Then

    pi_e = P(e in top-k) = integral_0^inf w_e exp(-w_e t) P(N_{-e}(t) <= k-1) dt

where ``N_{-e}(t)`` counts the other clocks that fired before t (a Poisson-binomial variable). The
integral is evaluated by the trapezoid rule in log t (the integrand decays at both ends, so the rule
converges fast) and the Poisson-binomial tail by a dynamic programme truncated at k states, with
prefix and suffix products so that leaving out one expert, or a contiguous block of experts, costs
no division (division would be unstable when a clock has almost surely fired).

Merging a block of experts into one item with the summed weight is exact for "did the token pick
at least one expert of this block": the minimum of exponential clocks is an exponential clock with
the summed rate. That gives the probability that a token must be sent to an EP rank or a node.

Weights of +inf mark forced experts (inclusion probability 1): they always win a slot and the race
among the others is for the remaining ``k - forced`` slots.
"""

from __future__ import annotations

import numpy as np

_GRID_POINTS = 320
_LOG_T_BELOW = 16.0  # start the grid at t* * e^-16: the part below adds a relative ~1e-7
_TAIL_RATE_MULT = 50.0  # end where the (k+1)-th heaviest clock has fired with prob 1 - e^-50


def _log_t_grid(w: np.ndarray, k: int) -> np.ndarray:
    positive = np.sort(w[w > 0])[::-1]
    # At t_hi at least k clocks (the k+1 heaviest minus the one left out) have fired almost surely.
    t_hi = _TAIL_RATE_MULT / positive[min(k, positive.size - 1)]
    t_lo = np.exp(-_LOG_T_BELOW) / positive[0]
    return np.linspace(np.log(t_lo), np.log(t_hi), _GRID_POINTS)


def _prefix_suffix(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """q: (E, G) fire probabilities. Returns prefix (E+1, G, k) and suffix CDF (E+1, G, k):
    prefix[i][:, a] = P(a of items < i fired); csuffix[j][:, b] = P(<= b of items >= j fired)."""
    n, g = q.shape
    prefix = np.zeros((n + 1, g, k))
    prefix[0, :, 0] = 1.0
    for i in range(n):
        prev = prefix[i]
        cur = prev * (1.0 - q[i])[:, None]
        cur[:, 1:] += prev[:, :-1] * q[i][:, None]
        prefix[i + 1] = cur
    suffix = np.zeros((n + 1, g, k))
    suffix[n, :, 0] = 1.0
    for i in range(n - 1, -1, -1):
        prev = suffix[i + 1]
        cur = prev * (1.0 - q[i])[:, None]
        cur[:, 1:] += prev[:, :-1] * q[i][:, None]
        suffix[i] = cur
    return prefix, np.cumsum(suffix, axis=2)


def _block_inclusion(w: np.ndarray, k: int, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """P(at least one item of each block [starts[b], ends[b]) is in the top-k), finite w >= 0."""
    log_t = _log_t_grid(w, k)
    t = np.exp(log_t)
    q = -np.expm1(-np.outer(w, t))  # (E, G)
    prefix, csuffix = _prefix_suffix(q, k)
    pre = prefix[starts]  # (B, G, k)
    suf = csuffix[ends][:, :, ::-1]  # suf[..., a] = P(<= k-1-a fired after the block)
    cdf_others = np.einsum("bga,bga->bg", pre, suf)  # P(N_others(t) <= k-1)
    cum = np.concatenate([[0.0], np.cumsum(w)])
    block_w = cum[ends] - cum[starts]
    integrand = block_w[:, None] * np.exp(-np.outer(block_w, t)) * cdf_others * t[None, :]
    return np.clip(np.trapezoid(integrand, log_t, axis=1), 0.0, 1.0)


def inclusion_probabilities(weights: np.ndarray, k: int) -> np.ndarray:
    """pi_e = P(expert e is among a token's top-k) under Gumbel-top-k with these weights.

    ``sum(pi) == k`` up to quadrature error (~1e-6); +inf weights are forced (pi = 1).
    """
    w = np.asarray(weights, dtype=float)
    n = w.size
    idx = np.arange(n)
    return block_inclusion_probabilities(w, k, idx, idx + 1)


def block_inclusion_probabilities(weights: np.ndarray, k: int, starts: np.ndarray,
                                  ends: np.ndarray) -> np.ndarray:
    """P(a token's top-k hits at least one expert in each contiguous block [start, end))."""
    w = np.asarray(weights, dtype=float)
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    forced = np.isinf(w)
    k_free = k - int(forced.sum())
    out = np.zeros(starts.size)
    forced_cum = np.concatenate([[0], np.cumsum(forced)])
    has_forced = (forced_cum[ends] - forced_cum[starts]) > 0
    out[has_forced] = 1.0
    free = w.copy()
    free[forced] = 0.0
    if k_free <= 0 or not (free > 0).any():
        return out
    if int((free > 0).sum()) <= k_free:  # every positive-weight expert is picked
        pos_cum = np.concatenate([[0], np.cumsum(free > 0)])
        out[(pos_cum[ends] - pos_cum[starts]) > 0] = 1.0
        return out
    free = free / free.sum()
    todo = ~has_forced
    if todo.any():
        out[todo] = _block_inclusion(free, k_free, starts[todo], ends[todo])
    return out


def weights_for_inclusion(pi_target: np.ndarray, k: int, *, tol: float = 1e-6,
                          max_iter: int = 60) -> np.ndarray:
    """Gumbel-top-k weights whose inclusion probabilities are ``pi_target`` (sum k, each in [0, 1]).

    Entries equal to 1 get weight +inf (forced). Starts from the deterministic-threshold
    approximation ``pi = 1 - exp(-w t)`` (Rosen's approximation of successive sampling) and corrects
    it by fixed-point steps on that same scale; converges in a handful of steps in practice.
    """
    pi = np.asarray(pi_target, dtype=float)
    forced = pi >= 1.0 - 1e-12
    w = np.zeros_like(pi)
    w[forced] = np.inf
    free = (~forced) & (pi > 0)
    k_free = k - int(forced.sum())
    if k_free <= 0 or not free.any():
        return w
    target = -np.log1p(-pi[free])
    wf = target.copy()
    for _ in range(max_iter):
        got = inclusion_probabilities(wf, k_free)
        if np.max(np.abs(got - pi[free])) < tol:
            break
        wf = wf * target / np.maximum(-np.log1p(-np.minimum(got, 1 - 1e-15)), 1e-300)
        wf = wf / wf.sum()
    w[free] = wf
    return w


def solve_thresholds(weights: np.ndarray, coef: np.ndarray, k: float) -> np.ndarray:
    """For each row b of ``coef`` (B, E) solve ``sum_e coef[b, e] (1 - exp(-w_e t_b)) = k`` for t_b.

    The deterministic-threshold ("Rosen") approximation of the exponential race: replace the random
    time of the k-th arrival by the time at which k arrivals are expected. Rows that cannot reach k
    get t = inf. Bisection in log t: robust, vectorised, ~60 passes over a (B, E) array.
    """
    w = np.asarray(weights, dtype=float)
    coef = np.atleast_2d(np.asarray(coef, dtype=float))
    reach = (coef * (w > 0)).sum(axis=1)
    positive = w[w > 0]
    lo = np.full(coef.shape[0], np.log(1e-12 / positive.max()))
    hi = np.full(coef.shape[0], np.log(1e6 / positive.min()))
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        got = (coef * -np.expm1(-np.outer(np.exp(mid), w))).sum(axis=1)
        above = got > k
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
    t = np.exp(0.5 * (lo + hi))
    t[reach <= k] = np.inf
    return t


def threshold_block_inclusion(pi: np.ndarray, k: int, starts: np.ndarray,
                              ends: np.ndarray) -> np.ndarray:
    """Fast approximation of :func:`block_inclusion_probabilities` given the per-expert inclusion
    probabilities ``pi`` (sum k). Under the threshold approximation the weights are
    ``w = -log(1 - pi)`` with threshold 1; a merged block of weight ``W_B`` competes with the other
    experts at its own threshold ``t_B``, and is hit with probability ``1 - exp(-W_B t_B)``.
    At E=256, k=8: within 1% for 4-expert blocks (ranks), 2% for 32-expert blocks (nodes), slightly
    below the exact value (tests/test_routing.py checks it)."""
    pi = np.asarray(pi, dtype=float)
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    forced = pi >= 1.0 - 1e-12
    k_free = k - int(forced.sum())
    out = np.zeros(starts.size)
    fc = np.concatenate([[0], np.cumsum(forced)])
    has_forced = (fc[ends] - fc[starts]) > 0
    out[has_forced] = 1.0
    free_pi = np.where(forced, 0.0, pi)
    if k_free <= 0 or not (free_pi > 0).any():
        return out
    w = -np.log1p(-free_pi)
    todo = np.flatnonzero(~has_forced)
    if todo.size == 0:
        return out
    # Row b: every expert outside block b is one item, the block is one merged item.
    n = w.size
    member = np.zeros((todo.size, n), dtype=bool)
    for row, b in enumerate(todo):
        member[row, starts[b]:ends[b]] = True
    block_w = (member * w).sum(axis=1)
    lo = np.full(todo.size, np.log(1e-12 / max(w.max(), 1e-300)))
    hi = np.full(todo.size, np.log(1e6 / max(w[w > 0].min(), 1e-300)))
    others = (~member).astype(float)
    for _ in range(64):
        mid = np.exp(0.5 * (lo + hi))
        got = (others * -np.expm1(-np.outer(mid, w))).sum(axis=1) - np.expm1(-block_w * mid)
        above = got > k_free
        hi = np.where(above, np.log(mid), hi)
        lo = np.where(above, lo, np.log(mid))
    t = np.exp(0.5 * (lo + hi))
    out[todo] = -np.expm1(-block_w * t)
    return out
