"""Fluid (flow-level) simulation: flows share links max-min fairly, re-solved on every change.

Between events every flow moves at a constant rate, so the state is piecewise linear and the next
event (the earliest completion) is known exactly. Rates are re-solved only when the set of active
flows changes: when a batch is added or when flows complete.

What keeps it fast:

- Class aggregation. Flows with identical route rows (and rate bound) form one class: they always
  have the same rate, so one max-min variable serves them all (exact). A class keeps a cumulative
  per-flow service ``S_c(t)`` (bytes delivered to each of its flows since the class was created);
  a flow joining at t0 with size s finishes when ``S_c = S_c(t0) + s``, so flows of a class finish
  in order of that target and an event touches only each class's head flow.
- Warm starts. When the only change is that flows finished, progressive filling below the lowest
  rate of the classes that lost flows is unchanged (see ``MaxMinProblem.solve``), so the solver
  restarts from that level instead of from zero.
- Batched completions (``merge_rel_tol``). At each completion event every flow whose remaining
  bytes are at most ``merge_rel_tol`` of its size completes too, in the same re-solve.

Error bound of ``merge_rel_tol`` (exact, not asymptotic): a run with tolerance tol is the *exact*
max-min fluid run of the same flows with each flow's size reduced by at most ``tol * size`` (the
bytes it still had when declared complete). Each flow is declared complete no later than the exact
run of that reduced instance, and at most ``tol * size / rate`` earlier than its own finish at the
rates of that moment, i.e. about ``tol`` of its duration. Through max-min coupling other flows see
the capacity freed early; max-min fluid completion times are not monotone in sizes, so no bound
on the *original* instance holds in general (tests check the reduced-instance statement exactly
and measure the deviation from the unreduced run). ``merge_rel_tol = 0`` is the exact run, up to
ties within a relative 1e-9 of a flow's size that complete together.

Flows with an empty route and no rate bound, and zero-byte flows, complete when added.
"""

from __future__ import annotations

from typing import Hashable

import numpy as np
import scipy.sparse as sp

from simmoe.network.maxmin import MaxMinProblem, canonical_routes
from simmoe.network.routes import FactoredRoutes

# Completion ties: remaining bytes within this fraction of a flow's size count as finished now.
TIE_REL_TOL = 1e-9
# Keep at most this many finished classes around before compacting the class arrays.
_COMPACT_MIN_CLASSES = 1024


class FluidNetwork:
    """All in-flight flows on one network; ``add`` batches, ``advance`` time, collect finished tags.

    Tags are any hashable object naming a batch (e.g. one collective stage). A tag is reported by
    ``advance`` once every flow added under it has finished, with that finish time.
    """

    def __init__(
        self,
        capacity_bytes_per_s: np.ndarray,
        *,
        merge_rel_tol: float = 0.0,
        record_flow_finish: bool = False,
    ) -> None:
        cap = np.asarray(capacity_bytes_per_s, dtype=np.float64).reshape(-1)
        if np.isnan(cap).any() or (cap < 0).any():
            raise ValueError("capacity_bytes_per_s must be >= 0 (inf allowed) for every link")
        if not (0.0 <= merge_rel_tol < 1.0):
            raise ValueError(f"merge_rel_tol={merge_rel_tol!r} must be in [0, 1)")
        self._cap = cap
        self._n_links = len(cap)
        self._tol = max(float(merge_rel_tol), TIE_REL_TOL)
        self._record = record_flow_finish
        self._now = 0.0
        # Two random projections of a route row identify it; equality is then verified exactly.
        self._hash_vec = np.random.default_rng(0x51D0E).uniform(1.0, 2.0, (self._n_links, 2))

        # Classes (row c of every array is class c).
        self._routes = sp.csr_matrix((0, self._n_links))
        self._keys = np.zeros((0, 4))  # hash1, hash2, nnz, rate bound
        self._bound = np.zeros(0)
        self._service = np.zeros(0)  # cumulative bytes per flow of the class
        self._rate = np.zeros(0)  # per-flow rate of the class
        self._problem: MaxMinProblem | None = None
        self._cold = True  # next solve must start from level 0 (flows were added)
        self._warm_level = np.inf

        # Pending flows, sorted by (class, target); class c owns positions [head[c], end[c]).
        self._f_class = np.zeros(0, np.int64)
        self._f_target = np.zeros(0)
        self._f_size = np.zeros(0)
        self._f_tag = np.zeros(0, np.int64)
        self._f_id = np.zeros(0, np.int64)
        self._head = np.zeros(0, np.int64)
        self._end = np.zeros(0, np.int64)

        # Tags.
        self._tag_index: dict[Hashable, int] = {}
        self._tag_of: list[Hashable] = []
        self._tag_left = np.zeros(0, np.int64)
        self._finished_tags: list[tuple[Hashable, float]] = []

        self._flow_finish: list[float] | np.ndarray = np.zeros(0)
        self._n_flows_added = 0
        self._next_event = np.inf
        self.n_solves = 0  # re-solves so far (for benchmarks and tests)

    # ------------------------------------------------------------------ public

    @property
    def now_s(self) -> float:
        return self._now

    @property
    def active_flows(self) -> int:
        return int((self._end - self._head).sum())

    @property
    def flow_finish_s(self) -> np.ndarray:
        """Finish time of every flow added so far, in order of addition (``record_flow_finish``)."""
        if not self._record:
            raise RuntimeError("FluidNetwork was built with record_flow_finish=False")
        return self._flow_finish

    def next_event_s(self) -> float:
        """Time of the next completion (``now`` if a tag is waiting to be reported; inf if idle)."""
        if self._finished_tags:
            return self._now
        return self._next_event

    def add(
        self,
        routes: sp.csr_matrix,
        size_bytes: np.ndarray,
        now_s: float,
        tag: Hashable,
        rate_bound_bytes_per_s: np.ndarray | None = None,
    ) -> None:
        """Start a batch of flows at ``now_s`` under ``tag``.

        ``routes``: a (flows x links) CSR or ``FactoredRoutes`` (written out here: classes are
        found by comparing route rows). ``now_s`` may not lie before the current time nor after
        the next event (call ``advance`` first). ``rate_bound_bytes_per_s`` optionally caps each
        flow's rate.
        """
        if isinstance(routes, FactoredRoutes):
            routes = routes.to_csr()
        R = canonical_routes(routes)
        if R.shape[1] != self._n_links:
            raise ValueError(
                f"routes has {R.shape[1]} link columns; the network has {self._n_links}"
            )
        size = np.asarray(size_bytes, dtype=np.float64).reshape(-1)
        n = R.shape[0]
        if size.shape != (n,):
            raise ValueError(f"size_bytes has {size.size} entries; routes has {n} rows")
        if np.isnan(size).any() or (size < 0).any() or np.isinf(size).any():
            raise ValueError("size_bytes must be finite and >= 0")
        bound = (
            np.full(n, np.inf)
            if rate_bound_bytes_per_s is None
            else np.asarray(rate_bound_bytes_per_s, dtype=np.float64).reshape(-1)
        )
        if bound.shape != (n,) or np.isnan(bound).any() or (bound <= 0).any():
            raise ValueError("rate_bound_bytes_per_s must have one entry > 0 per flow")
        self._drain_to(float(now_s))

        if tag not in self._tag_index:
            self._tag_index[tag] = len(self._tag_of)
            self._tag_of.append(tag)
            self._tag_left = np.append(self._tag_left, 0)
        tag_id = self._tag_index[tag]

        first_id = self._n_flows_added
        self._n_flows_added += n
        if self._record:
            self._flow_finish = np.concatenate([self._flow_finish, np.full(n, np.nan)])

        row_nnz = np.diff(R.indptr)
        instant = (size == 0) | ((row_nnz == 0) & np.isinf(bound))
        if self._record:
            self._flow_finish[first_id + np.flatnonzero(instant)] = self._now
        keep = np.flatnonzero(~instant)
        self._tag_left[tag_id] += len(keep)
        if len(keep) == 0:
            if self._tag_left[tag_id] == 0:
                self._report(tag_id)
            return

        R = R[keep]
        cls = self._assign_classes(R, bound[keep])
        self._rebase_and_insert(cls, size[keep], tag_id, first_id + keep)
        self._cold = True
        self._resolve()

    def advance(self, to_s: float) -> list[tuple[Hashable, float]]:
        """Run to ``to_s``; return (tag, finish time) of every tag whose flows all finished."""
        to_s = float(to_s)
        while self._next_event <= to_s:
            self._complete_at(self._next_event)
        self._drain_to(to_s)
        out, self._finished_tags = self._finished_tags, []
        return out

    # ------------------------------------------------------------------ internals

    def _drain_to(self, t: float) -> None:
        if t < self._now:
            # A caller's clock may trail ours by rounding (now + (t - now) != t); accept that.
            if self._now - t > 1e-12 * max(1.0, abs(self._now)):
                raise ValueError(f"time {t} lies before now={self._now}")
            t = self._now
        if t > self._next_event * (1 + 1e-12):
            raise ValueError(
                f"time {t} lies after the next completion at {self._next_event}; advance() first"
            )
        dt = t - self._now
        if dt > 0:
            fin = np.isfinite(self._rate)
            self._service[fin] += self._rate[fin] * dt
        self._now = t

    def _assign_classes(self, R: sp.csr_matrix, bound: np.ndarray) -> np.ndarray:
        """Class id of each row, reusing existing classes; identical routes share one class."""
        n = R.shape[0]
        h = np.asarray(R @ self._hash_vec).reshape(n, 2)
        keys = np.column_stack([h, np.diff(R.indptr).astype(np.float64), bound])
        n_old = len(self._keys)
        all_keys = np.ascontiguousarray(np.vstack([self._keys, keys]))
        _, first, inverse = np.unique(
            all_keys.view(np.dtype((np.void, all_keys.dtype.itemsize * 4))).reshape(-1),
            return_index=True,
            return_inverse=True,
        )
        inverse = inverse.reshape(-1)
        group = inverse[n_old:]
        rep = first[group]  # first occurrence: an old class if one matches, else a new row
        # Verify equality exactly; a hash collision (never observed) falls back to its own class.
        rep_rows = sp.vstack([self._routes, R]).tocsr()[rep] if n_old else R[rep]
        diff = (R != rep_rows).tocsr()
        clash = np.diff(diff.indptr) > 0
        clash |= keys[:, 3] != all_keys[rep, 3]
        rep = np.where(clash, n_old + np.arange(n), rep)

        new_reps, new_index = np.unique(rep[rep >= n_old], return_inverse=True)
        cls = rep.copy()
        cls[rep >= n_old] = n_old + new_index.reshape(-1)
        rows = new_reps - n_old
        self._routes = sp.vstack([self._routes, R[rows]]).tocsr()
        self._keys = np.vstack([self._keys, keys[rows]])
        k = len(rows)
        self._bound = np.concatenate([self._bound, bound[rows]])
        self._service = np.concatenate([self._service, np.zeros(k)])
        self._rate = np.concatenate([self._rate, np.zeros(k)])
        self._head = np.concatenate([self._head, np.zeros(k, np.int64)])
        self._end = np.concatenate([self._end, np.zeros(k, np.int64)])
        self._problem = None
        return cls

    def _rebase_and_insert(self, cls, size, tag_id, ids) -> None:
        """Merge new flows into the pending arrays; drop finished classes and finished flows."""
        pending = self._pending_positions()
        f_class = np.concatenate([self._f_class[pending], cls])
        # Rebase service to zero so targets stay small (float precision over long runs).
        f_target = np.concatenate(
            [self._f_target[pending] - self._service[self._f_class[pending]], size]
        )
        f_size = np.concatenate([self._f_size[pending], size])
        f_tag = np.concatenate([self._f_tag[pending], np.full(len(cls), tag_id)])
        f_id = np.concatenate([self._f_id[pending], ids])
        self._service[:] = 0.0

        # Compact: keep only classes with pending flows.
        n_cls = len(self._bound)
        alive = np.zeros(n_cls, bool)
        alive[f_class] = True
        if (~alive).sum() > _COMPACT_MIN_CLASSES:
            new_id = np.cumsum(alive) - 1
            f_class = new_id[f_class]
            idx = np.flatnonzero(alive)
            self._routes = self._routes[idx]
            self._keys = self._keys[idx]
            self._bound = self._bound[idx]
            self._service = self._service[idx]
            self._rate = self._rate[idx]
            self._problem = None
            n_cls = len(idx)

        order = np.lexsort((f_target, f_class))
        self._f_class = f_class[order]
        self._f_target = f_target[order]
        self._f_size = f_size[order]
        self._f_tag = f_tag[order]
        self._f_id = f_id[order]
        c = np.arange(n_cls)
        self._head = np.searchsorted(self._f_class, c, side="left")
        self._end = np.searchsorted(self._f_class, c, side="right")

    def _pending_positions(self) -> np.ndarray:
        if len(self._f_class) == 0:
            return np.zeros(0, np.int64)
        pos = np.arange(len(self._f_class))
        return pos[pos >= self._head[self._f_class]]

    def _resolve(self) -> None:
        if self._problem is None:
            self._problem = MaxMinProblem(self._routes, self._cap)
            self._cold = True
        mult = (self._end - self._head).astype(np.float64)
        active = mult > 0
        if self._cold:
            rate = self._problem.solve(mult, self._bound, active)
        else:
            rate = self._problem.solve(
                mult, self._bound, active, warm_rates=self._rate, warm_level=self._warm_level
            )
        self._rate = rate
        self._cold = False
        self._warm_level = np.inf
        self.n_solves += 1
        self._schedule()

    def _schedule(self) -> None:
        act = np.flatnonzero(self._head < self._end)
        if len(act) == 0:
            self._next_event = np.inf
            return
        r = self._rate[act]
        rem = self._f_target[self._head[act]] - self._service[act]
        with np.errstate(divide="ignore", invalid="ignore"):
            dt = np.where(r > 0, np.maximum(rem, 0.0) / r, np.inf)
        dt[np.isinf(r)] = 0.0
        self._next_event = self._now + float(dt.min())

    def _complete_at(self, t: float) -> None:
        self._drain_to(t)
        cand = np.flatnonzero(self._head < self._end)
        done_pos = []
        first = True
        while len(cand):
            p = self._head[cand]
            rem = self._f_target[p] - self._service[cand]
            # Size-relative merge tolerance, plus rounding of the service counter itself.
            slack = self._tol * self._f_size[p] + 4e-16 * np.abs(self._f_target[p])
            ok = (rem <= slack) | np.isinf(self._rate[cand])
            if first and not ok.any():
                # Rounding put the earliest flow a hair short of done: it is the one due now.
                ok[np.argmin(rem)] = True
            first = False
            done_cls = cand[ok]
            done_pos.append(p[ok])
            self._head[done_cls] += 1
            cand = done_cls[self._head[done_cls] < self._end[done_cls]]
        pos = np.concatenate(done_pos)
        cls = self._f_class[pos]
        lost = np.unique(cls)
        self._warm_level = min(self._warm_level, float(self._rate[lost].min()))
        if self._record:
            self._flow_finish[self._f_id[pos]] = t
        tags, counts = np.unique(self._f_tag[pos], return_counts=True)
        self._tag_left[tags] -= counts
        for tag_id in tags[self._tag_left[tags] == 0]:
            self._report(int(tag_id))
        self._resolve()

    def _report(self, tag_id: int) -> None:
        tag = self._tag_of[tag_id]
        self._finished_tags.append((tag, self._now))
        # Free the name so the same tag may be reused by a later batch.
        del self._tag_index[tag]


def simulate_flows(
    routes: sp.csr_matrix,
    size_bytes: np.ndarray,
    capacity_bytes_per_s: np.ndarray,
    *,
    merge_rel_tol: float = 0.0,
) -> np.ndarray:
    """Finish time (s) of each flow when all start at 0 and share links max-min fairly."""
    net = FluidNetwork(capacity_bytes_per_s, merge_rel_tol=merge_rel_tol, record_flow_finish=True)
    net.add(routes, size_bytes, 0.0, tag=0)
    while np.isfinite(net.next_event_s()):
        net.advance(net.next_event_s())
    if net.active_flows:
        raise ValueError(
            f"{net.active_flows} flows can never finish: they cross a link of zero capacity"
        )
    return net.flow_finish_s
