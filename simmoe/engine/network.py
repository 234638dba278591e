"""The engine's two network backends behind one waist: ``transfer(collective) -> simpy.Event``.

- ``flow`` (default, ``coflow=True``): :class:`CoflowNetwork`. One process owns every in-flight
  collective stage; each stage is one *coflow*, a single max-min variable whose flows progress in
  proportion to their sizes: alone it takes the bottleneck time (max over links of bytes /
  capacity), and concurrent collectives share links max-min fairly. Same link capacities
  (line rate x NCCL efficiency of the link class), engine efficiencies and latency rule as
  SimNetwork. One solve per collective start or end, on a few dozen rows: fast enough for
  thousands of GPUs.
- ``flow`` with ``coflow=False``: :class:`ReplicaSimNetwork`, simmoe.network's SimNetwork itself
  (per-flow max-min, one re-solve per flow completion: exact, and far slower for all-to-alls of
  thousands of uneven flows). Both take per-link *replica multiplicities* for reduced runs: a
  collective may stand for k symmetric copies of itself on a link (other DP replicas, other EP
  groups of the same stage); its route fraction there is scaled by k, so under max-min it takes
  exactly the share k copies of equal rate would take. docs/engine.md ("Symmetry reduction").
- ``analytical``: :class:`AnalyticalSimNetwork`, each collective alone with NCCL's busbw formulas
  (simmoe.network.analytical); no contention between collectives. Durations of identical
  collectives are cached.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import simpy

from simmoe.network.backends import AnalyticalBackend
from simmoe.network.flows import Collective
from simmoe.network.params import DEFAULT_NETWORK_PARAMS, NetworkParams
from simmoe.network.simnet import SimNetwork, effective_capacity_bytes_per_s, link_efficiency


class ReplicaSimNetwork(SimNetwork):
    """SimNetwork whose collectives may carry per-link replica multiplicities.

    ``replica_engine(base_engine, name, multiplicity)`` registers a multiplicity vector and
    returns the name to put in ``collective.meta["engine"]``.
    """

    def __init__(self, env: simpy.Environment, topology, params: NetworkParams = DEFAULT_NETWORK_PARAMS,
                 **kwargs) -> None:
        super().__init__(env, topology, params, **kwargs)
        self._replica_scales: dict[str, np.ndarray] = {}

    def replica_engine(self, base_engine: str | None, name: str, multiplicity: np.ndarray | None
                       ) -> str | None:
        if multiplicity is None:
            return base_engine
        key = f"{base_engine or 'nccl'}|{name}"
        if key not in self._replica_scales:
            scale = np.asarray(multiplicity, dtype=np.float64)
            if base_engine is not None:
                # The transport engine's own per-link-class factor (SimNetwork's rule).
                scale = scale * (link_efficiency(self.topology, self.params)
                                 / link_efficiency(self.topology, self.params, base_engine))
            self._replica_scales[key] = scale
        return key

    def _engine_scale(self, engine):
        if engine is not None and engine in self._replica_scales:
            return self._replica_scales[engine]
        return super()._engine_scale(engine)


class AnalyticalSimNetwork:
    """Analytical backend for the engine: a collective takes its isolated formula time."""

    def __init__(self, env: simpy.Environment, topology, params: NetworkParams = DEFAULT_NETWORK_PARAMS
                 ) -> None:
        self.env = env
        self.backend = AnalyticalBackend(topology, params)
        self._cache: dict = {}

    @property
    def now(self) -> float:
        return self.env.now

    def replica_engine(self, base_engine, name, multiplicity):
        return base_engine  # no fabric contention to scale

    def duration_s(self, collective: Collective) -> float:
        key = collective.meta.get("cache_key")
        if key is not None and key in self._cache:
            return self._cache[key]
        t = self.backend.collective_time_s(collective).time_s
        if key is not None:
            self._cache[key] = t
        return t

    def transfer(self, collective: Collective) -> simpy.Event:
        return self.env.timeout(self.duration_s(collective), value=None)


def maxmin_rates(A: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Max-min fair rates of rows of A (row i uses A[i, l] of link l per unit of its rate) under
    capacities ``cap``, by progressive filling; rows using no link get inf."""
    n = A.shape[0]
    rate = np.full(n, np.inf)
    free = (A > 0).any(axis=1)
    load = np.zeros(A.shape[1])
    while free.any():
        demand = A[free].sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            level = np.where(demand > 0, (cap - load) / demand, np.inf)
        lvl = float(level.min())
        tight = level <= lvl * (1 + 1e-12)
        frozen = free & (A[:, tight] > 0).any(axis=1)
        rate[frozen] = max(lvl, 0.0)
        load += A[frozen].T @ rate[frozen]
        free &= ~frozen
    return rate


class CoflowNetwork:
    """All in-flight collective stages as coflows, max-min fair on the links (see module doc)."""

    def __init__(self, env: simpy.Environment, topology, params: NetworkParams = DEFAULT_NETWORK_PARAMS
                 ) -> None:
        self.env = env
        self.topology = topology
        self.params = params
        self.capacity_bytes_per_s = effective_capacity_bytes_per_s(topology, params)
        self._latency_s = np.asarray(topology.link_latency_s, dtype=np.float64)
        self._scales: dict[str, np.ndarray | None] = {}
        self._active: list[list] = []  # [cols, vals, remaining_bytes, size_bytes, event]
        self._rates = np.zeros(0)
        self._t = 0.0
        self._wake = env.event()
        self.n_solves = 0
        env.process(self._run())

    @property
    def now(self) -> float:
        return self.env.now

    def replica_engine(self, base_engine: str | None, name: str, multiplicity: np.ndarray | None
                       ) -> str | None:
        if multiplicity is None:
            return base_engine
        key = f"{base_engine or 'nccl'}|{name}"
        if key not in self._scales:
            base = self._engine_scale(base_engine)
            m = np.asarray(multiplicity, dtype=np.float64)
            self._scales[key] = m if base is None else m * base
        return key

    def _engine_scale(self, engine: str | None) -> np.ndarray | None:
        if engine is None:
            return None
        if engine not in self._scales:
            ratio = link_efficiency(self.topology, self.params) / link_efficiency(
                self.topology, self.params, engine)
            self._scales[engine] = None if np.all(ratio == 1.0) else ratio
        return self._scales[engine]

    def transfer(self, collective: Collective) -> simpy.Event:
        return self.env.process(self._transfer(collective))

    def _transfer(self, collective: Collective):
        start = self.env.now
        scale = self._engine_scale(collective.meta.get("engine"))
        pre = collective.meta.get("coflow_link_bytes")  # [(bytes per link, latency, total)] per stage
        for i, stage in enumerate(collective.stages):
            route_latency_s = 0.0
            if pre is not None:
                link_bytes, route_latency_s, total = pre[i]
                row = link_bytes / total if total > 0 else None
            else:
                flows = stage.flows.without_empty()
                row = None
                if len(flows):
                    routes = sp.csr_matrix(self.topology.route_matrix(flows.src, flows.dst))
                    route_latency_s = float(np.max(routes @ self._latency_s))
                    total = float(flows.size_bytes.sum())
                    row = np.asarray(routes.T @ flows.size_bytes).reshape(-1) / total
            if row is not None:
                if scale is not None:
                    row = row * scale
                cols = np.flatnonzero(row > 0)
                done = self.env.event()
                self._advance()
                self._active.append([cols, row[cols], total, total, done])
                self._solve()
                if not self._wake.triggered:
                    self._wake.succeed()
                yield done
            latency = stage.latency_steps * (self.params.step_latency_s + route_latency_s)
            if latency > 0:
                yield self.env.timeout(latency)
        return self.env.now - start

    def _advance(self) -> None:
        dt = self.env.now - self._t
        if dt > 0 and self._active:
            for c, r in zip(self._active, self._rates):
                c[2] -= r * dt
        self._t = self.env.now

    def _solve(self) -> None:
        if not self._active:
            self._rates = np.zeros(0)
            return
        used = np.zeros(len(self.capacity_bytes_per_s), bool)
        for c in self._active:
            used[c[0]] = True
        cols = np.flatnonzero(used)
        pos = np.empty(len(used), np.int64)
        pos[cols] = np.arange(len(cols))
        A = np.zeros((len(self._active), len(cols)))
        for i, c in enumerate(self._active):
            A[i, pos[c[0]]] = c[1]
        self._rates = maxmin_rates(A, self.capacity_bytes_per_s[cols])
        self.n_solves += 1

    def _next_s(self) -> float:
        if not self._active:
            return np.inf
        rem = np.array([max(c[2], 0.0) for c in self._active])
        with np.errstate(divide="ignore"):
            return self.env.now + float(np.min(np.where(self._rates > 0, rem / self._rates, np.inf)))

    def _run(self):
        while True:
            t_next = self._next_s()
            if np.isinf(t_next):
                yield self._wake
            else:
                yield self.env.any_of([self.env.timeout(max(t_next - self.env.now, 0.0)), self._wake])
            if self._wake.triggered:
                self._wake = self.env.event()
            self._advance()
            # Finished: remaining bytes within rounding of the size (or an unbounded rate).
            finished = [c for c, r in zip(self._active, self._rates)
                        if c[2] <= 1e-9 * c[3] or np.isinf(r)]
            if finished:
                self._active = [c for c in self._active if not any(c is f for f in finished)]
                self._solve()
                for c in finished:
                    c[4].succeed()
