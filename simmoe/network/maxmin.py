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

Routes may also come factored (``simmoe.network.routes.FactoredRoutes``: R = sum_k P_k @ T_k
with P_k one-hot class -> table row). The solver then works on the factors: link sums are a
``bincount`` of class weights over each table's rows followed by ``T_k^T @`` that, and the classes
on a saturated link are those whose key is one of the link's rows, so a pass costs O(classes +
table non-zeros) instead of O(route non-zeros). The rates are those of the written-out CSR up to
the order of floating-point sums.

Result: rate[c] is the rate of ONE flow of class c. A class with an empty route crosses no link;
it gets its rate bound, which is ``inf`` when unbounded (callers decide what an instantaneous
transfer means; the fluid simulator completes such flows at once).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from simmoe.network.routes import FactoredRoutes

# Links whose saturation level lies within this relative distance of the lowest one saturate in
# the same round. Freezing at the lowest level never overloads a link; it can leave at most this
# fraction of a tied link unused.
TIE_RTOL = 1e-10
# Factored routes whose written-out (merged) route matrix has at most this many non-zeros are
# solved as that CSR: same rates, fewer numpy calls per round. Above it the factors are kept, so
# memory and per-pass work stay O(classes + table non-zeros).
MATERIALIZE_MAX_NNZ = 1 << 21
# A round that freezes more than 1/this of all classes works on boolean masks over all classes
# (a few O(classes) passes) instead of index lists (gathers and sorts of the frozen classes).
DENSE_ROUND_FRACTION = 16


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


class _Factor:
    """One term ``P @ T`` of the route matrix, prepared for the solver.

    keys (n_classes,) row of ``T`` per class; ``None`` means the identity (a plain CSR: class i
    uses row i). A key of -1 (no row) is stored as the index of an empty row appended to T, so
    no pass needs a mask. ``TT`` = T^T (link -> rows); ``ones_TT`` = T^T with ones (counts).
    """

    # Rounds that find the classes of saturated rows by one pass over all keys, before an
    # inverse index (a sort of the keys) is built: few-round solves never pay for the sort.
    SCANS_BEFORE_INDEX = 8

    def __init__(self, keys: np.ndarray | None, table: sp.csr_matrix) -> None:
        if keys is not None:
            n_rows = table.shape[0]
            table = sp.vstack([table, sp.csr_matrix((1, table.shape[1]))], format="csr")
            # np.intp: what bincount and take use, so no pass converts the keys again.
            keys = keys.astype(np.intp)  # always a copy: the caller's keys stay untouched
            keys[keys < 0] = n_rows
        self.keys = keys
        self.T = table
        self.TT = table.T.tocsr()
        self.TT.sort_indices()
        self.ones_TT = sp.csr_matrix(
            (np.ones(self.TT.nnz), self.TT.indices, self.TT.indptr), shape=self.TT.shape)
        self.n_rows = table.shape[0]
        self._row_counts = None
        self._row_of_nz = None
        self._scans = 0
        self._order = None
        self._ptr = None

    def row_of_nz(self) -> np.ndarray:
        """Row of each non-zero of T (cached)."""
        if self._row_of_nz is None:
            self._row_of_nz = np.repeat(np.arange(self.T.shape[0]), np.diff(self.T.indptr))
        return self._row_of_nz

    def route_nnz(self) -> int:
        """Non-zeros of this factor written out as a plain (classes x links) CSR."""
        if self.keys is None:
            return self.T.nnz
        return int(self.per_row(None) @ np.diff(self.T.indptr))

    def per_row(self, values: np.ndarray | None) -> np.ndarray:
        """Sum of ``values`` (one per class; None = ones) over the classes of each row of T."""
        if self.keys is None:
            return np.ones(self.n_rows) if values is None else values
        if values is None:
            if self._row_counts is None:
                self._row_counts = np.bincount(self.keys, minlength=self.n_rows).astype(float)
            return self._row_counts
        return np.bincount(self.keys, values, minlength=self.n_rows)

    def classes_of_rows(self, rows: np.ndarray) -> np.ndarray:
        """Classes whose key is one of ``rows`` (distinct rows give distinct classes)."""
        if self.keys is None:
            return rows
        if self._order is None and self._scans < self.SCANS_BEFORE_INDEX:
            self._scans += 1
            mark = np.zeros(self.n_rows, bool)
            mark[rows] = True
            return np.flatnonzero(mark[self.keys])
        if self._order is None:
            keys = self.keys
            if self.n_rows <= 1 << 16:  # numpy's stable sort is a radix sort for 16-bit ints
                keys = keys.astype(np.uint16)
            self._order = np.argsort(keys, kind="stable")
            self._ptr = np.zeros(self.n_rows + 1, np.int64)
            np.cumsum(np.bincount(self.keys, minlength=self.n_rows), out=self._ptr[1:])
        return self._order[gather_rows(self._ptr, rows)[0]]


class MaxMinProblem:
    """Routes and capacities prepared once for repeated solves.

    ``routes`` is a (classes x links) CSR, or a ``simmoe.network.routes.FactoredRoutes`` (rows =
    classes): the solver works on the factors directly, so a solve costs O(classes + table
    non-zeros) per pass instead of O(route non-zeros). The fluid simulator solves the same routes
    many times with changing multiplicities; this object keeps the transposes (link -> rows) so
    no solve rebuilds them.
    """

    def __init__(self, routes, capacity_bytes_per_s, *, merge_links: bool = True) -> None:
        cap = np.asarray(capacity_bytes_per_s, dtype=np.float64).reshape(-1)
        factored = isinstance(routes, FactoredRoutes)
        if factored:
            tables = [canonical_routes(t) for t in routes.tables]
            keys = [np.asarray(k) for k in routes.keys]
        else:
            tables = [canonical_routes(routes)]
            keys = [None]
        n_classes, n_links = (routes.n_flows if factored else tables[0].shape[0]), tables[0].shape[1]
        if cap.shape != (n_links,):
            raise ValueError(
                f"capacity_bytes_per_s has {cap.size} entries; routes has {n_links} link columns"
            )
        if np.isnan(cap).any() or (cap < 0).any():
            raise ValueError("capacity_bytes_per_s must be >= 0 (inf allowed) for every link")
        if factored and routes.link_alias is not None:
            # Column l equals column alias[l] (only representatives are stored): the group's
            # tightest capacity is the one that can bind.
            group_cap = cap.copy()
            np.minimum.at(group_cap, np.asarray(routes.link_alias), cap)
            cap = group_cap
        stacked = sum(t.nnz for t in tables)
        if merge_links and stacked:
            # Columns identical in every table are identical in the route matrix for any keys:
            # fingerprint each table's rows (for a plain CSR: its classes, as before).
            rng = np.random.default_rng(0x11A7)
            sig = np.zeros((n_links, 3))
            for t in tables:
                sig += link_signatures(t, rng.uniform(1.0, 2.0, (t.shape[0], 2)))
            keep, cap = merge_identical_links(sig, cap)
            tables = [t[:, keep] for t in tables]
            for t in tables:
                t.sort_indices()
        factors = [_Factor(k, t) for k, t in zip(keys, tables)]
        if factored and sum(f.route_nnz() for f in factors) <= MATERIALIZE_MAX_NNZ:
            # Small enough to write out: a plain CSR costs fewer numpy calls per filling round.
            factors = [_Factor(None, FactoredRoutes(tuple(keys), tuple(tables)).to_csr())]
        self._factors = factors
        self._n_classes = n_classes
        self.capacity_bytes_per_s = cap
        # Classes whose route is empty in every factor.
        self._empty = np.ones(n_classes, bool)
        for f in factors:
            empty_row = np.diff(f.T.indptr) == 0
            self._empty &= empty_row if f.keys is None else empty_row[f.keys]
        self.rounds = 0

    @property
    def routes(self) -> sp.csr_matrix:
        """The (merged) route matrix of a plain-CSR problem."""
        if len(self._factors) != 1 or self._factors[0].keys is not None:
            raise AttributeError("a factored problem has no single route matrix")
        return self._factors[0].T

    @property
    def n_classes(self) -> int:
        return self._n_classes

    @property
    def n_links(self) -> int:
        return len(self.capacity_bytes_per_s)

    def _link_sums(self, values: np.ndarray | None, counts: bool = False) -> np.ndarray:
        """R^T @ values (None = ones; or the pattern's, for counts): per link, over every factor."""
        out = np.zeros(self.n_links)
        for f in self._factors:
            out += (f.ones_TT if counts else f.TT) @ f.per_row(values)
        return out

    def _link_deltas(self, newly: np.ndarray, weights: list[np.ndarray | None]):
        """Per link: for each weight array (one entry per class of ``newly``, in class order;
        None = ones) the sum over ``newly`` of weight x fraction, and the count of classes.

        ``newly`` is an index array (sorted) or a boolean mask over all classes.
        """
        n_links = self.n_links
        cols, vals, counts = [], [[] for _ in weights], []
        for f in self._factors:
            if f.keys is None:
                rows = newly if newly.dtype != bool else np.flatnonzero(newly)
                per_row, row_count = weights, None
            else:
                k = f.keys[newly]
                if len(k) == 0:
                    continue
                if len(k) * 8 > f.n_rows:
                    # Many classes per row: add them up per row first, O(classes + rows).
                    row_count = np.bincount(k, minlength=f.n_rows)
                    rows = np.flatnonzero(row_count)
                    row_count = row_count[rows]
                    per_row = [row_count.astype(np.float64) if w is None
                               else np.bincount(k, w, minlength=f.n_rows)[rows] for w in weights]
                else:  # few: gather each class's row, O(their non-zeros), as a plain CSR would
                    rows, per_row, row_count = k, weights, None
            pos, lens = gather_rows(f.T.indptr, rows)
            if len(pos) == 0:
                continue
            cols.append(f.T.indices[pos])
            frac = f.T.data[pos]
            for v, w in zip(vals, per_row):
                v.append(frac if w is None else frac * np.repeat(w, lens))
            counts.append(None if row_count is None else np.repeat(row_count, lens))
        if not cols:
            return [np.zeros(n_links) for _ in weights], np.zeros(n_links)
        c = cols[0] if len(cols) == 1 else np.concatenate(cols)
        if all(x is None for x in counts):
            count = np.bincount(c, minlength=n_links)
        else:
            count = np.bincount(c, np.concatenate(
                [np.ones(len(cc)) if x is None else x for cc, x in zip(cols, counts)]),
                minlength=n_links)
        return ([np.bincount(c, v[0] if len(v) == 1 else np.concatenate(v), minlength=n_links)
                 for v in vals], count)

    def _rows_on_links(self, links: np.ndarray) -> list[np.ndarray]:
        """Per factor, the rows of its table crossing any of ``links`` (distinct if a key factor)."""
        out = []
        for f in self._factors:
            if len(links) == 1:  # the common case: a contiguous slice, no gather
                l = links[0]
                rows = f.TT.indices[f.TT.indptr[l] : f.TT.indptr[l + 1]]
            else:
                rows = f.TT.indices[gather_rows(f.TT.indptr, links)[0]]
                if f.keys is not None and len(rows):
                    rows = _unique_ids(rows, f.n_rows)
            out.append(rows)
        return out

    def _classes_of(self, hit: list[np.ndarray], single_link: bool) -> tuple[np.ndarray, bool]:
        """Classes using any row of ``hit`` (maybe repeated), and whether they are distinct."""
        parts = [f.classes_of_rows(rows) for f, rows in zip(self._factors, hit) if len(rows)]
        if not parts:
            return np.zeros(0, np.int64), True
        if len(parts) == 1:
            return parts[0], single_link
        return np.concatenate(parts), False

    def _mask_of(self, hit: list[np.ndarray]) -> np.ndarray:
        """Boolean mask of the classes using any row of ``hit``: one pass over the keys."""
        mask = np.zeros(self.n_classes, bool)
        for f, rows in zip(self._factors, hit):
            if not len(rows):
                continue
            if f.keys is None:
                mask[rows] = True
            else:
                mark = np.zeros(f.n_rows, bool)
                mark[rows] = True
                mask |= mark[f.keys]
        return mask

    def _hit_size(self, hit: list[np.ndarray]) -> int:
        """Classes (with repeats across factors) using the rows of ``hit``."""
        return sum(len(rows) if f.keys is None else int(f.per_row(None)[rows].sum())
                   for f, rows in zip(self._factors, hit))

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
        n_classes, n_links = self.n_classes, self.n_links
        cap = self.capacity_bytes_per_s
        mult = np.asarray(multiplicity, dtype=np.float64)
        bound = np.asarray(rate_bound_bytes_per_s, dtype=np.float64)
        live = np.ones(n_classes, bool) if active is None else np.asarray(active, bool).copy()
        live &= mult > 0

        rate = np.zeros(n_classes)
        frozen = ~live
        empty = live & self._empty
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
        unfrozen = ~frozen
        all_unfrozen = bool(unfrozen.all())
        unit_mult = bool((mult == 1.0).all())
        demand = self._link_sums(
            None if all_unfrozen and unit_mult else np.where(unfrozen, mult, 0.0))
        count = self._link_sums(None if all_unfrozen else unfrozen.astype(np.float64),
                                counts=True)
        settled = frozen & live & ~empty
        load = (self._link_sums(np.where(settled, mult * rate, 0.0)) if settled.any()
                else np.zeros(n_links))

        # Level at which each link saturates; inf for links without unfrozen demand.
        sat_level = np.full(n_links, np.inf)
        has = count > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            sat_level[has] = np.maximum(cap[has] - load[has], 0.0) / demand[has]

        # Bounds in increasing order; a pointer walks them as the level rises.
        bounded = np.flatnonzero(unfrozen & np.isfinite(bound))
        bounded = bounded[np.argsort(bound[bounded], kind="stable")]
        bptr = 0
        n_unfrozen = int(unfrozen.sum())

        plain = self._factors[0] if len(self._factors) == 1 and self._factors[0].keys is None \
            else None
        w_nz = None  # a plain CSR's non-zeros x their class's multiplicity, made on first use
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
            sat_links = np.flatnonzero(sat_level <= cut) if lam_link <= cut else None
            at_bound = np.zeros(0, np.int64)
            if next_bound <= cut:
                stop = bptr + int(np.searchsorted(bound[bounded[bptr:]], cut, side="right"))
                at_bound = bounded[bptr:stop]
                bptr = stop
            hit = []
            if plain is not None and sat_links is not None and not len(at_bound):
                # A plain CSR: the classes of the saturated links straight from its transpose.
                TT = plain.TT
                if len(sat_links) == 1:  # the common case: a contiguous slice, no gather
                    l = sat_links[0]
                    cand = TT.indices[TT.indptr[l] : TT.indptr[l + 1]]
                else:
                    cand = TT.indices[gather_rows(TT.indptr, sat_links)[0]]
                if len(cand) * DENSE_ROUND_FRACTION <= n_classes:
                    newly = cand[~frozen[cand]]
                    if len(sat_links) > 1:
                        newly = _unique_ids(newly, n_classes)
                    if len(newly) == 0:  # only possible through rounding
                        sat_level[sat_level <= cut] = np.inf
                        level = lam
                        continue
                    new_rate = np.minimum(lam, bound[newly])
                    rate[newly] = new_rate
                    frozen[newly] = True
                    n_unfrozen -= len(newly)
                    if n_unfrozen == 0:
                        break
                    # Their links' changes, summed per link (the same sums as the general path).
                    if w_nz is None:
                        w_nz = plain.T.data * mult[plain.row_of_nz()]
                    pos, lens = gather_rows(plain.T.indptr, newly)
                    cols = plain.T.indices[pos]
                    w = w_nz[pos]
                    d_demand = np.bincount(cols, w, minlength=n_links)
                    d_count = np.bincount(cols, minlength=n_links)
                    if new_rate.min() == lam:
                        d_load = d_demand * lam
                    else:
                        d_load = np.bincount(cols, plain.T.data[pos] * np.repeat(
                            mult[newly] * new_rate, lens), minlength=n_links)
                    _retire(demand, load, count, sat_level, cap, d_demand, d_load, d_count)
                    level = lam
                    continue
                hit = [cand]
            elif sat_links is not None:
                hit = self._rows_on_links(sat_links)
            if hit and self._hit_size(hit) * DENSE_ROUND_FRACTION > n_classes:
                # A large share of all classes: boolean passes over every class beat index lists.
                newly = self._mask_of(hit)
                newly[at_bound] = True
                newly &= ~frozen
                n_new = int(np.count_nonzero(newly))
            else:
                if hit:
                    cand, unique = self._classes_of(hit, len(sat_links) == 1)
                else:
                    cand, unique = np.zeros(0, np.int64), True
                if len(at_bound):
                    cand = np.concatenate([cand, at_bound])
                    unique = False
                newly = cand[~frozen[cand]]
                if not unique:
                    newly = _unique_ids(newly, n_classes)
                n_new = len(newly)
            if n_new == 0:  # only possible through rounding; make progress regardless
                sat_level[sat_level <= cut] = np.inf
                level = lam
                continue
            if len(bounded):
                new_rate = np.minimum(lam, bound[newly])
                at_level = new_rate.min() == lam
            else:
                new_rate, at_level = lam, True
            rate[newly] = new_rate
            frozen[newly] = True
            n_unfrozen -= n_new
            if n_unfrozen == 0:
                break  # nothing left to fill: the link state is no longer needed

            m_new = None if unit_mult else mult[newly]
            weights = [m_new] if at_level else [
                m_new, new_rate if m_new is None else m_new * new_rate]
            (d_demand, *rest), d_count = self._link_deltas(newly, weights)
            d_load = d_demand * lam if at_level else rest[0]
            _retire(demand, load, count, sat_level, cap, d_demand, d_load, d_count)
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
    routes: sp.csr_matrix | FactoredRoutes,
    capacity_bytes_per_s: np.ndarray,
    multiplicity: np.ndarray | None = None,
    rate_bound_bytes_per_s: np.ndarray | None = None,
) -> np.ndarray:
    """Max-min fair per-flow rate (bytes/s) of each class (row of ``routes``).

    routes: (n_classes x n_links) sparse, entry = fraction of one flow's bytes on that link; or
        the same matrix factored (``FactoredRoutes``, e.g. ``Topology.route_factors``): same rates.
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


def _retire(demand, load, count, sat_level, cap, d_demand, d_load, d_count) -> None:
    """Remove newly frozen classes from the links' unfrozen demand (in place) and refresh the level
    at which each touched link saturates; a link with no unfrozen class left never saturates."""
    demand -= d_demand
    load += d_load
    count -= d_count
    touched = np.flatnonzero(d_count)
    t_count = count[touched]
    done = touched[t_count == 0]
    demand[done] = 0.0
    sat_level[done] = np.inf
    busy = touched[t_count > 0]
    sat_level[busy] = np.maximum(cap[busy] - load[busy], 0.0) / demand[busy]
