"""Exact max-min fair rates by progressive filling (water-filling), vectorized.

A *class* is a set of flows with the same route; its row of ``routes`` gives the fraction of one
flow's bytes carried by each link (ECMP splits a flow over several links). Every flow of a class
gets the same rate, so grouping identical routes into one class with a multiplicity is exact.

Progressive filling raises the rate of every unfrozen class together (a common "water level").
A link saturates when the level reaches ``(capacity - load of frozen classes) / unfrozen demand``;
at the smallest such level every class crossing a saturated link freezes (all ties within a
relative 1e-10 at once), as does every class whose own rate bound is reached. Because unfrozen
classes always share one level, a round costs O(links) plus the non-zeros of the classes it
freezes: the whole solve is O(rounds * links + nnz), with rounds = distinct bottleneck levels. No
Python loop runs over flows or links.

Result: rate[c] is the rate of ONE flow of class c. A class with an empty route crosses no link;
it gets its rate bound, which is ``inf`` when unbounded (callers decide what an instantaneous
transfer means; the fluid simulator completes such flows at once).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# Links whose saturation level lies within this relative distance of the lowest one saturate in
# the same round. Freezing at the lowest level never overloads a link; it can leave at most this
# fraction of a tied link unused.
TIE_RTOL = 1e-10


def canonical_routes(routes) -> sp.csr_matrix:
    """CSR float64 with sorted indices, no duplicates and no explicit zeros (a copy)."""
    r = sp.csr_matrix(routes, dtype=np.float64, copy=True)
    r.sum_duplicates()
    r.eliminate_zeros()
    r.sort_indices()
    return r


def gather_rows(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into indices/data) of the non-zeros of CSR ``rows``, and each row's length."""
    starts = indptr[rows]
    lens = indptr[rows + 1] - starts
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int64), lens
    # Position k of row i is starts[i] + k: one repeat plus one arange, no Python loop.
    offsets = np.repeat(starts - (np.cumsum(lens) - lens), lens)
    return offsets + np.arange(total, dtype=np.int64), lens


def link_signatures(routes: sp.csr_matrix, row_weights: np.ndarray) -> np.ndarray:
    """(n_links, 3) fingerprint of each link's column: two random projections and its nnz.

    ``row_weights`` is (n_rows, 2), random per row. Identical columns get bit-identical
    fingerprints (same entries summed in the same row order); distinct columns collide only if two
    sums of random reals agree exactly. Additive over row blocks, so huge route sets can be
    fingerprinted block by block.
    """
    r = sp.csr_matrix(routes)
    sig = np.empty((r.shape[1], 3))
    sig[:, :2] = np.asarray(r.T @ row_weights)
    sig[:, 2] = np.bincount(r.indices, minlength=r.shape[1])
    return sig


def merge_identical_links(
    signatures: np.ndarray, capacity_bytes_per_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Keep one link per group of identical columns: (kept link ids, capacity of each group).

    Links with identical columns carry the same flows in the same proportions, so only the one of
    smallest capacity can bind: dropping the others changes no max-min rate (ECMP fat-trees have
    many: every uplink of a leaf carries the same 1/k share of the same flows). Unused links
    (empty columns) are dropped too.
    """
    cap = np.asarray(capacity_bytes_per_s, dtype=np.float64)
    used = np.flatnonzero(signatures[:, 2] > 0)
    sig = np.ascontiguousarray(signatures[used])
    _, group = np.unique(sig.view(np.dtype((np.void, sig.itemsize * 3))).reshape(-1),
                         return_inverse=True)
    group = group.reshape(-1)
    n_groups = int(group.max()) + 1 if len(group) else 0
    group_cap = np.full(n_groups, np.inf)
    np.minimum.at(group_cap, group, cap[used])
    # Representative: the tightest link of each group (first in link order among ties).
    order = np.lexsort((used, cap[used], group))
    first = order[np.r_[True, group[order][1:] != group[order][:-1]]] if len(order) else order
    return used[first], group_cap


class MaxMinProblem:
    """Routes and capacities prepared once (CSR + its transpose) for repeated solves.

    The fluid simulator solves the same route matrix many times with changing multiplicities;
    this object keeps the transpose (link -> classes) so no solve rebuilds it.
    """

    def __init__(self, routes, capacity_bytes_per_s, *, merge_links: bool = True) -> None:
        routes = canonical_routes(routes)
        n_classes, n_links = routes.shape
        cap = np.asarray(capacity_bytes_per_s, dtype=np.float64).reshape(-1)
        if cap.shape != (n_links,):
            raise ValueError(
                f"capacity_bytes_per_s has {cap.size} entries; routes has {n_links} link columns"
            )
        if np.isnan(cap).any() or (cap < 0).any():
            raise ValueError("capacity_bytes_per_s must be >= 0 (inf allowed) for every link")
        if merge_links and routes.nnz:
            weights = np.random.default_rng(0x11A7).uniform(1.0, 2.0, (n_classes, 2))
            keep, cap = merge_identical_links(link_signatures(routes, weights), cap)
            routes = routes[:, keep]
            routes.sort_indices()
        self.routes = routes
        self.capacity_bytes_per_s = cap
        self.links_to_classes = self.routes.T.tocsr()  # row l = classes crossing link l
        self.links_to_classes.sort_indices()

    @property
    def n_classes(self) -> int:
        return self.routes.shape[0]

    @property
    def n_links(self) -> int:
        return self.routes.shape[1]

    def solve(
        self,
        multiplicity: np.ndarray,
        rate_bound_bytes_per_s: np.ndarray,
        active: np.ndarray | None = None,
        warm_rates: np.ndarray | None = None,
        warm_level: float = 0.0,
    ) -> np.ndarray:
        """Per-flow rate of each class; inactive classes get 0.

        Warm start: ``warm_rates`` (a previous solution on the same routes) and ``warm_level``.
        Classes whose previous rate is below ``warm_level`` keep it without being re-filled. This
        is exact when the only change since that solution is the removal of flows whose previous
        rate was >= warm_level: progressive filling below that level never saw them bind (a flow
        freezes at its first saturated link, so all its links saturate at or above its rate), so
        every level below it is reproduced unchanged. The caller guarantees that condition.
        """
        R = self.routes
        RT = self.links_to_classes
        n_classes, n_links = R.shape
        cap = self.capacity_bytes_per_s
        mult = np.asarray(multiplicity, dtype=np.float64)
        bound = np.asarray(rate_bound_bytes_per_s, dtype=np.float64)
        live = np.ones(n_classes, bool) if active is None else np.asarray(active, bool).copy()
        live &= mult > 0

        rate = np.zeros(n_classes)
        frozen = ~live
        row_nnz = np.diff(R.indptr)
        empty = live & (row_nnz == 0)
        rate[empty] = bound[empty]
        frozen |= empty

        level = 0.0
        if warm_rates is not None and warm_level > 0:
            keep = live & ~frozen & (warm_rates < warm_level * (1.0 - TIE_RTOL))
            rate[keep] = warm_rates[keep]
            frozen |= keep
            if keep.any():
                level = float(warm_rates[keep].max())

        # Weighted demand per link of the unfrozen classes, their count (so a link with no unfrozen
        # class has exactly zero demand, free of cancellation error) and the frozen load.
        row_of_nz = np.repeat(np.arange(n_classes), row_nnz)
        w_nz = R.data * mult[row_of_nz]
        unfrozen_nz = ~frozen[row_of_nz]
        demand = np.bincount(
            R.indices[unfrozen_nz], w_nz[unfrozen_nz], minlength=n_links
        ).astype(np.float64)
        count = np.bincount(R.indices[unfrozen_nz], minlength=n_links)
        frozen_nz = ~unfrozen_nz & live[row_of_nz]
        load = np.bincount(
            R.indices[frozen_nz], w_nz[frozen_nz] * rate[row_of_nz[frozen_nz]], minlength=n_links
        ).astype(np.float64)

        # Level at which each link saturates; inf for links without unfrozen demand.
        sat_level = np.full(n_links, np.inf)
        has = count > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            sat_level[has] = np.maximum(cap[has] - load[has], 0.0) / demand[has]

        # Bounds in increasing order; a pointer walks them as the level rises.
        bounded = np.flatnonzero(~frozen & np.isfinite(bound))
        bounded = bounded[np.argsort(bound[bounded], kind="stable")]
        bptr = 0
        n_unfrozen = int((~frozen).sum())

        self.rounds = 0  # filling rounds of the last solve (distinct levels), for benchmarks
        while n_unfrozen > 0:
            self.rounds += 1
            if bptr < len(bounded) and frozen[bounded[bptr]]:
                open_ = np.flatnonzero(~frozen[bounded[bptr:]])
                bptr = bptr + int(open_[0]) if len(open_) else len(bounded)
            next_bound = bound[bounded[bptr]] if bptr < len(bounded) else np.inf
            lam_link = sat_level.min() if n_links else np.inf
            lam = min(lam_link, next_bound)
            if not np.isfinite(lam):
                # The remaining classes only cross links of infinite capacity: unbounded rate.
                rest = np.flatnonzero(~frozen)
                rate[rest] = np.inf
                break
            lam = max(lam, level)  # rounding must never lower the level
            cut = lam * (1.0 + TIE_RTOL)

            # Classes to freeze: those crossing a saturated link, and those at their bound.
            if lam_link <= cut:
                sat_links = np.flatnonzero(sat_level <= cut)
                if len(sat_links) == 1:  # the common case: a contiguous slice, no gather
                    l = sat_links[0]
                    cand = RT.indices[RT.indptr[l] : RT.indptr[l + 1]]
                else:
                    cand = RT.indices[gather_rows(RT.indptr, sat_links)[0]]
                unique = len(sat_links) == 1
            else:
                cand, unique = np.zeros(0, np.int64), True
            if next_bound <= cut:
                stop = bptr + int(np.searchsorted(bound[bounded[bptr:]], cut, side="right"))
                cand = np.concatenate([cand, bounded[bptr:stop]])
                unique = False
                bptr = stop
            newly = cand[~frozen[cand]]
            if not unique:
                newly = _unique_ids(newly, n_classes)
            if len(newly) == 0:  # only possible through rounding; make progress regardless
                sat_level[sat_level <= cut] = np.inf
                level = lam
                continue
            new_rate = np.minimum(lam, bound[newly])
            rate[newly] = new_rate
            frozen[newly] = True
            n_unfrozen -= len(newly)

            pos, lens = gather_rows(R.indptr, newly)
            cols = R.indices[pos]
            w = w_nz[pos]
            d_demand = np.bincount(cols, w, minlength=n_links)
            d_count = np.bincount(cols, minlength=n_links)
            demand -= d_demand
            if new_rate.min() == lam:
                load += d_demand * lam
            else:
                load += np.bincount(cols, w * np.repeat(new_rate, lens), minlength=n_links)
            count -= d_count
            touched = np.flatnonzero(d_count)
            t_count = count[touched]
            done = touched[t_count == 0]
            demand[done] = 0.0
            sat_level[done] = np.inf
            busy = touched[t_count > 0]
            sat_level[busy] = np.maximum(cap[busy] - load[busy], 0.0) / demand[busy]
            level = lam

        return rate


def _unique_ids(ids: np.ndarray, n: int) -> np.ndarray:
    """Sorted distinct values of ``ids`` (all in 0..n-1): a mask when dense, a sort otherwise."""
    if len(ids) * 8 > n:
        mark = np.zeros(n, bool)
        mark[ids] = True
        return np.flatnonzero(mark)
    ids = np.sort(ids)
    return ids[np.r_[True, ids[1:] != ids[:-1]]] if len(ids) else ids


def maxmin_rates(
    routes: sp.csr_matrix,
    capacity_bytes_per_s: np.ndarray,
    multiplicity: np.ndarray | None = None,
    rate_bound_bytes_per_s: np.ndarray | None = None,
) -> np.ndarray:
    """Max-min fair per-flow rate (bytes/s) of each class (row of ``routes``).

    routes: (n_classes x n_links) sparse, entry = fraction of one flow's bytes on that link.
    capacity_bytes_per_s: (n_links,) link capacities (>= 0; inf = never a bottleneck).
    multiplicity: flows per class (> 0), default 1.
    rate_bound_bytes_per_s: per-flow rate cap of each class (> 0), default inf.

    A class with an empty route gets its bound (inf when unbounded); a class crossing only
    infinite-capacity links and unbounded gets inf.
    """
    problem = MaxMinProblem(routes, capacity_bytes_per_s)
    n = problem.n_classes
    mult = _per_class(multiplicity, n, 1.0, "multiplicity")
    if (mult <= 0).any() or not np.isfinite(mult).all():
        raise ValueError("multiplicity must be finite and > 0 for every class")
    bound = _per_class(rate_bound_bytes_per_s, n, np.inf, "rate_bound_bytes_per_s")
    if np.isnan(bound).any() or (bound <= 0).any():
        raise ValueError("rate_bound_bytes_per_s must be > 0 (inf allowed) for every class")
    return problem.solve(mult, bound)


def _per_class(values, n: int, default: float, name: str) -> np.ndarray:
    if values is None:
        return np.full(n, default)
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.shape != (n,):
        raise ValueError(f"{name} has {arr.size} entries; routes has {n} rows")
    return arr
