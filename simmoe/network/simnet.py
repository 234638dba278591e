"""The engine's narrow waist to the network: start a collective, get an event when it is done.

``NetworkBackend`` is the whole interface the engine may use (in the spirit of ASTRA-sim's
send/recv/now). ``SimNetwork`` implements it with the flow-level model: ONE SimPy process owns every
in-flight flow of every concurrent transfer, so concurrent collectives contend for the same links.
An analytical backend implements the same two members and can be swapped in (and compared in a
test).

Timing rule of one stage (the same as FlowBackend/AnalyticalBackend in backends.py, so the
backends stay comparable):
    the stage's flows are injected when the stage starts and drain under max-min sharing with all
    other in-flight flows; the stage ends ``latency = stage.latency_steps * (params.step_latency_s
    + the longest route latency of its flows)`` after its last flow drained (each sequential step
    pays the software step latency and one trip across the route). The next stage starts then. A
    stage without flows takes ``latency_steps * step_latency_s``. This is the alpha-beta form
    T = alpha + bytes/bandwidth of each stage, with the bandwidth term shared.
Link capacity = topology.link_capacity_bytes_per_s * params.efficiency_of(link_class) (NCCL's).
A collective whose ``meta["engine"]`` reaches another fraction of some link class (e.g. DeepEP on
NVLink) has its route fractions on those links scaled by nccl_eff / engine_eff: alone, its flows
then get exactly line rate * engine_eff, and under sharing they use the link's payload capacity
in that proportion.
Optional per-flow bound (``message_rate_bound=True``, as FlowBackend): a flow of m bytes is capped
at ``params.message_efficiency(m)`` times the rate its route would give it alone, so small
messages cannot fill a pipe even when it is idle.
"""

from __future__ import annotations

import itertools
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp
import simpy

from simmoe.network.flows import Collective
from simmoe.network.fluid import FluidNetwork
from simmoe.network.params import DEFAULT_NETWORK_PARAMS, NetworkParams


@runtime_checkable
class NetworkBackend(Protocol):
    """What the engine may ask of a network."""

    @property
    def now(self) -> float:
        """Current simulated time in seconds."""
        ...

    def transfer(self, collective: Collective) -> simpy.Event:
        """Start ``collective`` now; the event succeeds with its duration (s) when it is done."""
        ...


def link_efficiency(topology, params: NetworkParams, engine: str | None = None) -> np.ndarray:
    """Per-link fraction of line rate that payload of ``engine`` (None: NCCL) achieves."""
    classes = np.asarray(topology.link_class)
    eff = np.ones(len(classes))
    for name in np.unique(classes):  # a handful of link classes, not links
        eff[classes == name] = params.efficiency_of(str(name), engine)
    return eff


def effective_capacity_bytes_per_s(topology, params: NetworkParams) -> np.ndarray:
    """Per-link payload capacity: line rate times NCCL's efficiency of the link's class."""
    return np.asarray(topology.link_capacity_bytes_per_s, dtype=np.float64) * link_efficiency(
        topology, params
    )


def path_bandwidth(routes: sp.csr_matrix, capacity: np.ndarray) -> np.ndarray:
    """Rate each row would get alone: min over its links of capacity / fraction (inf if empty)."""
    routes = sp.csr_matrix(routes)
    out = np.full(routes.shape[0], np.inf)
    rows = np.flatnonzero(np.diff(routes.indptr) > 0)
    if len(rows):
        per_nz = capacity[routes.indices] / routes.data
        out[rows] = np.minimum.reduceat(per_nz, routes.indptr[rows])
    return out


class SimNetwork:
    """Flow-level network backend for a SimPy environment."""

    def __init__(
        self,
        env: simpy.Environment,
        topology,
        params: NetworkParams = DEFAULT_NETWORK_PARAMS,
        *,
        merge_rel_tol: float = 0.0,
        message_rate_bound: bool = False,
    ) -> None:
        self.env = env
        self.topology = topology
        self.params = params
        self.message_rate_bound = message_rate_bound
        self.capacity_bytes_per_s = effective_capacity_bytes_per_s(topology, params)
        self._latency_s = np.asarray(topology.link_latency_s, dtype=np.float64)
        self.fluid = FluidNetwork(self.capacity_bytes_per_s, merge_rel_tol=merge_rel_tol)
        self._tags = itertools.count()
        self._waiting: dict[int, simpy.Event] = {}
        self._wake = env.event()
        self._scales: dict[str, np.ndarray | None] = {}
        env.process(self._network())

    @property
    def now(self) -> float:
        return self.env.now

    def transfer(self, collective: Collective) -> simpy.Event:
        return self.env.process(self._transfer(collective))

    def _engine_scale(self, engine: str | None) -> np.ndarray | None:
        """Per-link factor on route fractions for a transport engine; None when it is NCCL's."""
        if engine is None:
            return None
        if engine not in self._scales:
            ratio = link_efficiency(self.topology, self.params) / link_efficiency(
                self.topology, self.params, engine
            )
            self._scales[engine] = None if np.all(ratio == 1.0) else ratio
        return self._scales[engine]

    # ------------------------------------------------------------------ processes

    def _transfer(self, collective: Collective):
        start = self.env.now
        for stage in collective.stages:
            flows = stage.flows.without_empty()
            route_latency_s = 0.0
            if len(flows):
                routes = sp.csr_matrix(self.topology.route_matrix(flows.src, flows.dst))
                route_latency_s = float(np.max(routes @ self._latency_s))
                scale = self._engine_scale(collective.meta.get("engine"))
                if scale is not None:
                    routes = routes @ sp.diags(scale)
                bound = None
                if self.message_rate_bound:
                    bound = self.params.message_efficiency(flows.size_bytes) * path_bandwidth(
                        routes, self.capacity_bytes_per_s
                    )
                tag = next(self._tags)
                done = self.env.event()
                self._waiting[tag] = done
                self.fluid.add(routes, flows.size_bytes, self.env.now, tag, bound)
                if not self._wake.triggered:
                    self._wake.succeed()
                yield done
            latency = stage.latency_steps * (self.params.step_latency_s + route_latency_s)
            if latency > 0:
                yield self.env.timeout(latency)
        return self.env.now - start

    def _network(self):
        """The one process that owns all flows: sleep until the next completion or a new batch."""
        while True:
            t_next = self.fluid.next_event_s()
            if np.isinf(t_next):
                yield self._wake
            else:
                timer = self.env.timeout(max(t_next - self.env.now, 0.0))
                yield self.env.any_of([timer, self._wake])
            if self._wake.triggered:
                self._wake = self.env.event()
            # Process completions due by now (t_next itself when the timer fired: the clock may
            # differ from it by rounding).
            due = max(self.env.now, t_next) if t_next - self.env.now <= 1e-12 * max(
                1.0, self.env.now
            ) else self.env.now
            for tag, _finish_s in self.fluid.advance(due):
                self._waiting.pop(tag).succeed()
