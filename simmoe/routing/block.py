"""Aggregated token-choice draws for a block of micro-batches from one random stream.

The engine's path. The model is the one of :func:`simmoe.routing.aggregated.sample_raw` (same
means, variances and couplings; docs/routing.md section 3); what differs is how it is computed:

- one stream per block of :data:`DRAW_BLOCK` micro-batches (keyed by seed, step, layer, EP replica
  and block index in ``RoutingModel``; SFC64), read by two whole-block calls instead of seven
  calls per micro-batch, each with a per-draw SeedSequence;
- standard normals by the Box-Muller transform in float32 from float32 uniforms (about a third of
  numpy's ziggurat cost here; resolution 2^-24, tails cut at 5.8 sigma, probability 1e-8); the
  uniforms are numpy's own (``Generator.random(dtype=float32)``: the high 24 bits of each 32-bit
  half of the 64-bit outputs) made from one ``random_raw`` call in fewer passes;
- counts laid out ``(expert, micro-batch, source rank)``: sums and cumulative sums over experts add
  whole (micro-batch x source) planes at a time (the same additions, in the same order, as over
  the middle axis of ``(micro-batch, expert, source)``); per-destination arrays are
  ``(micro-batch, destination, source rank)``; experts are taken in ``EPGroup.expert_order`` so
  that a rank's (and a node's) experts are contiguous;
- systematic rounding on the cumulative sum itself: ``floor(C_e - u) - floor(C_{e-1} - u)``, whose
  floors also give each destination rank's assignment sum as a difference of two entries;
- scratch arrays reused across blocks (:class:`Workspace`): on the development VM a fresh
  megabyte-sized array costs page faults comparable to the arithmetic done on it.

A block always draws all its micro-batches with arrays of the same shapes, so a micro-batch's draw
does not depend on which others are asked for (``draw`` = ``draw_batch(...)[i]`` bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simmoe.routing.aggregated import RouteProbabilities, distinct_regression, node_moments
from simmoe.routing.group import EPGroup

# Micro-batches per random stream. Part of what a seed means: changing it changes every draw.
# 8 amortises the ~50 numpy calls of a block (at DeepSeek size 2 was slower, 4-16 within the
# noise of a shared machine) and wastes little for the usual micro-batch counts (a layer's last block is
# drawn whole: 120 micro-batches are 15 blocks exactly).
DRAW_BLOCK = 8

# Below this variance a count is drawn as a real binomial (the normal approximation is poor there).
_NORMAL_MIN_VARIANCE = 30.0


@dataclass(frozen=True)
class BlockDraws:
    """Draws of one block; leading axis = micro-batch. Views with sources as rows (the layout of
    ``RoutingDraw``), not necessarily contiguous."""

    tokens_per_src_expert: np.ndarray  # (b, ep, E) int64, expert id order
    tokens_per_src_dst_rank: np.ndarray  # (b, ep, ep) int64, distinct tokens
    tokens_per_src_dst_node: np.ndarray  # (b, ep, nodes) int64
    tokens_per_expert: np.ndarray  # (b, E) int64: sum over sources (dropless compute)
    tokens_per_dst_rank: np.ndarray  # (b, ep) int64: assignments received per rank


class Workspace:
    """Scratch arrays reused from block to block (fresh megabyte-sized arrays cost page faults
    that, on a loaded machine, took as long as the arithmetic)."""

    def __init__(self) -> None:
        self._arrays: dict[tuple, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
        key = (name, shape, np.dtype(dtype).str)
        a = self._arrays.get(key)
        if a is None:
            a = self._arrays[key] = np.empty(shape, dtype=dtype)
        return a


_SHARED_WORKSPACE = Workspace()


def random_block(rng: np.random.Generator, size: int, n_normal: int, n_uniform: int,
                 work: Workspace) -> tuple[np.ndarray, np.ndarray]:
    """(size, n_normal) standard normals and (size, n_uniform) uniforms on [0, 1), float32, each
    micro-batch from its own row of one call for float32 uniforms (24-bit, written into ``work``:
    no fresh memory). Normals by Box-Muller: about a third of numpy's ziggurat cost here;
    resolution 2^-24, tails cut at 5.8 sigma (probability 1e-8)."""
    half = -(-n_normal // 2)
    uni = work.get("uniforms", (size, 2 * half + n_uniform), np.float32)
    _uniform_float32(rng, uni)
    radius = uni[:, :half]
    np.subtract(np.float32(1.0), radius, out=radius)  # (0, 1]: log is finite
    np.log(radius, out=radius)
    radius *= np.float32(-2.0)
    np.sqrt(radius, out=radius)
    angle = uni[:, half:2 * half]
    angle *= np.float32(2.0 * np.pi)
    z = work.get("normals", (size, 2, half), np.float32)
    np.cos(angle, out=z[:, 0])
    np.sin(angle, out=z[:, 1])
    z *= radius[:, None, :]
    return z.reshape(size, 2 * half)[:, :n_normal], uni[:, 2 * half:]


def _uniform_float32(rng: np.random.Generator, out: np.ndarray) -> None:
    """``rng.random(out=out, dtype=np.float32)``, the same numbers, in about 40% less time for
    SFC64 and PCG64. numpy makes each float32 as ``(u32 >> 8) * 2**-24`` from 32-bit halves of the
    64-bit outputs, low half first (the high half is buffered for the next float); here the 64-bit
    words come in one ``random_raw`` call and the arithmetic runs as three array passes (exact:
    ``u32 >> 8`` < 2**24 is a float32, and 2**-24 a power of two). An even count leaves no half
    buffered, so the generator's state afterwards is the one ``rng.random`` leaves."""
    n = out.size
    if n % 2 or not out.flags.c_contiguous or not np.little_endian or not isinstance(
            rng.bit_generator, (np.random.SFC64, np.random.PCG64)):
        rng.random(out=out, dtype=np.float32)
        return
    halves = rng.bit_generator.random_raw(n // 2).view(np.uint32)  # (little-endian: low half first)
    np.right_shift(halves, 8, out=halves)
    flat = out.reshape(-1)
    np.copyto(flat, halves, casting="unsafe")  # < 2**24: exact in float32
    flat *= np.float32(1.0 / 16777216.0)


def _scan_width(n: int) -> int:
    """The divisor of n closest to sqrt(n) from below (the two-level scan's group width)."""
    for w in range(int(np.sqrt(n)), 0, -1):
        if n % w == 0:
            return w
    return 1


def _cumsum_axis1(x: np.ndarray, out: np.ndarray) -> None:
    """out[:, e] = x[:, :e].sum(axis=1) for e = 0..n (out has n + 1 entries on axis 1), for
    x of shape (b, n, m). numpy accumulates along a middle axis one element at a time (~10 ns
    each); this scans groups of whole rows instead: within groups of w entries, then across
    groups, about 2 * sqrt(n) calls on contiguous rows."""
    b, n, m = x.shape
    w = _scan_width(n)
    g = n // w
    out[:, 0] = 0.0
    xs = x.reshape(b, g, w, m)
    o = out[:, 1:].reshape(b, g, w, m)  # splitting one axis: always a view
    o[:, :, 0] = xs[:, :, 0]
    for j in range(1, w):
        np.add(o[:, :, j - 1], xs[:, :, j], out=o[:, :, j])
    if g > 1:
        # Group j's entries get the prefix up to the end of group j - 1, itself group j - 1's
        # local total plus the prefix before it: a running sum of the local totals (the additions,
        # in the order, of adding the carries group after group), then one broadcast add.
        carry = np.add.accumulate(o[:, :-1, w - 1], axis=1)
        o[:, 1:] += carry[:, :, None, :]


def _equal_width(starts: np.ndarray, ends: np.ndarray) -> int:
    """w if segment i is [i*w, (i+1)*w) for every i (the usual placement), else 0."""
    w = int(ends[0] - starts[0])
    if w > 0 and (starts == w * np.arange(starts.size)).all() and (ends - starts == w).all():
        return w
    return 0


def _segment_sum(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """sum over values[:, start:end] (axis 1) per segment (segments tile the axis back to back)."""
    b, n, m = values.shape
    w = _equal_width(starts, ends)
    if w:
        v = values.reshape(b, starts.size, w, m)
        out = v[:, :, 0].copy()
        for j in range(1, w):
            out += v[:, :, j]
        return out
    cum = np.zeros((b, n + 1, m), dtype=values.dtype)
    np.cumsum(values, axis=1, out=cum[:, 1:])
    return cum[:, ends] - cum[:, starts]


def _segment_max(values: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                 out: np.ndarray | None = None) -> np.ndarray:
    """max over values[:, start:end] (axis 1) per segment, 0 for empty ones. The segments tile the
    axis back to back (EPGroup builds them so), which is what ``reduceat`` needs. ``out``: where
    to write (the fast path)."""
    b, n, m = values.shape
    w = _equal_width(starts, ends)
    if w:  # ``reduceat`` along a middle axis is slow; w - 1 whole-row maxima instead
        v = values.reshape(b, starts.size, w, m)
        out = np.empty((b, starts.size, m), values.dtype) if out is None else out
        out[...] = v[:, :, 0]
        for j in range(1, w):
            np.maximum(out, v[:, :, j], out=out)
        return out
    seq = np.lexsort((ends, starts))  # an empty segment sorts before a non-empty one at its start
    got = np.maximum.reduceat(values, np.minimum(starts[seq], n - 1), axis=1)
    out = np.zeros((b, starts.size, m), dtype=values.dtype)
    out[:, seq] = got
    out[:, ends <= starts] = 0
    return out


def _settle_rows(counts: np.ndarray, mean: np.ndarray, target: float, t: int) -> None:
    """Clip counts (b, E, ep) to [0, T] and restore each (micro-batch, source) column's total
    unit by unit (rare: a count rounded below 0). In place."""
    np.clip(counts, 0, t, out=counts)
    resid = target - counts.sum(axis=1)
    for bi, src in zip(*np.nonzero(resid != 0)):
        c = counts[bi, :, src]  # a view: writes go to counts
        r = int(resid[bi, src])
        # Add where there is headroom, most expected load first; remove from the largest counts.
        order = np.argsort(-(mean - c)) if r > 0 else np.argsort(-c)
        room = (t - c[order]) if r > 0 else c[order]
        moved = np.minimum(room, np.maximum(abs(r) - np.concatenate([[0], np.cumsum(room)[:-1]]),
                                            0))
        c[order] += np.sign(r) * moved


def _coupled_distinct(z: np.ndarray, u: np.ndarray, assigned: np.ndarray,
                      mean_assigned: np.ndarray, var_assigned: np.ndarray, hit: np.ndarray,
                      tokens: int, lower: np.ndarray, upper: np.ndarray, x: np.ndarray,
                      noise: np.ndarray) -> np.ndarray:
    """Distinct tokens per (micro-batch, destination, source) given the assignments (same model
    as aggregated._coupled_distinct; per-destination parameters broadcast over axis 1). ``x``
    (float64) and ``noise`` (float32) are scratch of that shape. Returns int64 laid out
    (micro-batch, source, destination), the layout of the draws."""
    beta, resid_sd = distinct_regression(tokens, hit, mean_assigned, var_assigned)
    # x = T h + beta (A - E[A]) + resid_sd z, stochastically rounded: floor(x + u) is floor(x) + 1
    # with probability frac(x).
    np.multiply(assigned, beta[:, None], out=x)
    x += (tokens * hit - beta * mean_assigned)[:, None]
    np.multiply(z, resid_sd.astype(np.float32)[:, None], out=noise)
    x += noise
    x += u
    np.floor(x, out=x)
    np.maximum(x, lower, out=x)  # np.clip(x, lower, upper): the same min(max(.)), faster
    np.minimum(x, upper, out=x)
    b, n_dst, n_src = x.shape
    out = np.empty((b, n_src, n_dst), dtype=np.int64)
    np.copyto(out.transpose(0, 2, 1), x, casting="unsafe")
    return out


def sample_block(group: EPGroup, probs: RouteProbabilities, rng: np.random.Generator,
                 size: int = DRAW_BLOCK, work: Workspace | None = None) -> BlockDraws:
    """``size`` independent token-choice micro-batch draws (no capacity applied) from ``rng``.
    Scratch arrays come from ``work`` (default: one shared by the process; draws never hold
    them)."""
    work = _SHARED_WORKSPACE if work is None else work
    ep, t, nodes = group.ep, group.tokens_per_rank, group.num_nodes
    n_exp = group.num_experts
    order = group.expert_order
    pi = probs.pi[order]  # experts grouped by (node, rank): a rank's experts are contiguous
    mean = t * pi
    d = mean * (1.0 - pi)
    small = d < _NORMAL_MIN_VARIANCE
    n_small = int(small.sum())

    # Random numbers: fixed shapes per block, consumed in a fixed order.
    z, u = random_block(rng, size, (n_exp + ep + nodes) * ep, (1 + ep + nodes) * ep, work)
    z = z.reshape(size, n_exp + ep + nodes, ep)
    u = u.reshape(size, 1 + ep + nodes, ep)
    binom = (rng.binomial(t, np.broadcast_to(pi[small][None, :, None], (size, n_small, ep)))
             if n_small else None)

    # 1. Counts X[b, e, s]: independent binomials (normal where the variance is large) conditioned
    #    on each source's total T*k, fluctuation rescaled to total variance sum(d) (sample_raw):
    #    x = mean + dev + w * d, dev the scaled fluctuation, w = scale * shortfall / sum(d).
    #    Laid out (expert, micro-batch, source): sums and scans over experts then run on whole
    #    (micro-batch x source) planes; the scan's and the sums' additions are the same as over
    #    the middle axis of (micro-batch, expert, source), only the memory order differs.
    total_d = d.sum()
    target = float(round(t * probs.pi.sum()))
    scale = 1.0 / np.sqrt(max(1.0 - (d * d).sum() / total_d**2, 1e-12)) if total_d > 0 else 1.0
    x = work.get("x_ebs", (n_exp, size, ep))
    np.multiply(z[:, :n_exp].transpose(1, 0, 2), (scale * np.sqrt(d))[:, None, None], out=x)
    if n_small:
        x[small] = ((binom - mean[small][:, None]) * scale).transpose(1, 0, 2)
    cum = work.get("cum_ebs", (n_exp + 1, size, ep))
    tmp = cum[1:]  # scratch until the scan below
    if total_d > 0:
        w = (target - mean.sum()) - x.sum(axis=0) / scale  # shortfall per (micro-batch, source)
        w *= scale / total_d
        np.multiply(d[:, None, None], w[None], out=tmp)
        tmp += mean[:, None, None]
    else:
        tmp[:] = mean[:, None, None]
    x += tmp
    # Systematic rounding on the cumulative sums C_e: X_e = floor(C_e - u) - floor(C_{e-1} - u),
    # unbiased and summing to the total exactly. Subtracting u from the first entry shifts every
    # C_e by -u.
    u_round = u[:, 0].astype(np.float64)  # float64: target - u must not round
    x[0] -= u_round
    plane = size * ep  # the scan sees (1, experts, plane): one whole plane per expert
    _cumsum_axis1(x.reshape(1, n_exp, plane), cum.reshape(1, n_exp + 1, plane))
    cum[0] = -u_round
    cum[-1] = target - u_round  # the total is exact; accumulated rounding must not move it
    np.floor(cum, out=cum)
    counts = np.empty((n_exp, size, ep), np.int64)  # (expert, micro-batch, source)
    np.subtract(cum[1:], cum[:-1], out=counts, casting="unsafe")  # whole numbers: exact
    if counts.min() < 0 or counts.max() > t:  # rare: a count rounded below 0
        _settle_rows(counts.transpose(1, 0, 2), mean, target, t)  # a view: writes go to counts
        floor_u = cum[:1].copy()
        _cumsum_axis1(counts.astype(np.float64).reshape(1, n_exp, plane),
                      cum.reshape(1, n_exp + 1, plane))
        cum += floor_u

    # 2. Assignments and distinct tokens per destination rank (axis 1 in rank id order).
    starts, ends = group.rank_starts, group.rank_ends
    w_rank = _equal_width(starts, ends)
    shape = (size, ep, ep)  # (b, destination rank, source rank)
    assigned = work.get("assigned", shape)
    assigned_t = assigned.transpose(1, 0, 2)  # (destination, b, source) view of the same array
    if w_rank:
        np.subtract(cum[w_rank::w_rank], cum[:-1:w_rank], out=assigned_t)
    else:
        np.subtract(cum[ends], cum[starts], out=assigned_t)
    per_token = np.maximum(probs.max_assignments_per_rank, 1)[:, None]
    lower = np.divide(assigned, per_token, out=work.get("lower", shape))
    np.ceil(lower, out=lower)
    most = _segment_max(counts.reshape(1, n_exp, plane), starts, ends,
                        work.get("max_ebs", (1, ep, plane), np.int64)).reshape(ep, size, ep)
    np.maximum(lower, most.transpose(1, 0, 2), out=lower)
    upper = np.minimum(assigned, t, out=work.get("upper", shape))
    rank_of = group.expert_to_rank
    d_id = t * probs.pi * (1.0 - probs.pi)
    d_rank = np.bincount(rank_of, weights=d_id, minlength=ep)
    pi_rank = np.bincount(rank_of, weights=probs.pi, minlength=ep)
    if total_d > 0:
        scale2 = scale * scale
        var_assigned = scale2 * (d_rank - d_rank**2 / total_d)
        cov_rank = -scale2 / total_d  # Cov(A_r, A_r') = cov_rank * d_r * d_r'
    else:
        var_assigned, cov_rank = np.zeros(ep), 0.0
    distinct = _coupled_distinct(z[:, n_exp:n_exp + ep], u[:, 1:1 + ep], assigned, t * pi_rank,
                                 var_assigned, probs.rank_hit, t, lower, upper,
                                 work.get("x_rank", shape),
                                 work.get("noise_rank", shape, np.float32))
    distinct_by_dst = distinct.transpose(0, 2, 1)  # (b, destination, source) view

    # 3. Distinct tokens per destination node, coupled to B_n = sum of the node's D_r.
    rank_seq = np.lexsort((np.arange(ep), group.rank_node_index))
    in_order = bool((rank_seq == np.arange(ep)).all())
    n_ends = np.cumsum(group.ranks_per_node)
    n_starts = n_ends - group.ranks_per_node  # every node has >= 1 rank: no empty segment
    w_node = _equal_width(n_starts, n_ends) if in_order else 0
    if w_node:  # equal nodes of consecutive ranks: sum and max over the node's ranks, read in
        # place from the (b, source, destination) array (integers: any order is exact)
        by_src = distinct.reshape(size, ep, nodes, w_node)  # (b, source, node, rank in node)
        node_sum, node_most = by_src[..., 0].copy(), by_src[..., 0].copy()
        for j in range(1, w_node):  # (numpy reduces a short last axis slowly)
            node_sum += by_src[..., j]
            np.maximum(node_most, by_src[..., j], out=node_most)
        node_assigned = node_sum.astype(np.float64).transpose(0, 2, 1)
        node_most = node_most.transpose(0, 2, 1)
    else:
        by_node = distinct_by_dst if in_order else distinct_by_dst[:, rank_seq]
        node_assigned = _segment_sum(by_node, n_starts, n_ends).astype(np.float64)
        node_most = _segment_max(by_node, n_starts, n_ends)
    node_lower = np.ceil(node_assigned / group.ranks_per_node[:, None])
    np.maximum(node_lower, node_most, out=node_lower)
    node_hot = group.node_one_hot
    mean_node, var_node = node_moments(node_hot, probs, t, pi_rank, var_assigned, d_rank, cov_rank)
    node_distinct = _coupled_distinct(z[:, n_exp + ep:], u[:, 1 + ep:], node_assigned, mean_node,
                                      np.maximum(var_node, 0.0), probs.node_hit, t, node_lower,
                                      np.minimum(node_assigned, t),
                                      np.empty(node_assigned.shape),
                                      np.empty(node_assigned.shape, np.float32))

    # Outputs: expert id order, sources as rows.
    per_expert = np.ascontiguousarray(counts.sum(axis=2).T)  # integer sums: any order is exact
    if not (order == np.arange(n_exp)).all():
        inverse = np.empty_like(order)
        inverse[order] = np.arange(n_exp)
        counts = counts[inverse]
        per_expert = per_expert[:, inverse]
    arrays = [counts.transpose(1, 2, 0), distinct, node_distinct, per_expert,
              assigned.sum(axis=2).astype(np.int64)]
    for a in arrays:  # shared by the draws made from them (and a model's cached block)
        a.flags.writeable = False
    return BlockDraws(*arrays)
