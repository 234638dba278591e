"""Two interchangeable ways to time an isolated collective: flow-level and analytical.

Both take a Topology and NetworkParams and answer ``collective_time_s(collective)`` with a
CollectiveResult in NCCL's conventions (algbw = size_bytes / time, busbw = algbw * bus_factor).
Stages run one after another; each pays its bandwidth time plus
latency_steps * (step latency + the longest route's propagation latency).

FlowBackend: the flows of a stage are routed with ``topology.route_matrix`` (ECMP fractions) and
share links max-min fairly in the fluid simulation (simmoe.network.fluid), so the stage ends when
its last flow does. Link capacities are line rate x the link-class efficiency. Message-size
efficiency is a per-flow RATE BOUND: a flow of m bytes moves at most
message_efficiency(m) x the rate its route would give it alone. (A capacity scale would slow
every flow on a link by the smallest message crossing it; a bound slows only the small flows,
which is what fixed per-chunk costs do.)

AnalyticalBackend: NCCL's busbw formulas on per-GPU bottleneck bandwidths (analytical.py). It
knows no contention inside the fabric beyond the per-GPU bisection share, so it agrees with the
flow backend exactly where nothing but GPU ports binds, and is the cross-check there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simmoe.network import analytical
from simmoe.network.fluid import FluidNetwork
from simmoe.network.flows import Collective, Stage
from simmoe.network.params import DEFAULT_NETWORK_PARAMS, NetworkParams


@dataclass(frozen=True)
class CollectiveResult:
    """Time of one isolated collective and its bandwidths in NCCL's conventions."""

    op: str
    n_gpus: int
    size_bytes: float
    time_s: float
    algbw_GBps: float  # size_bytes / time_s, in 1e9 bytes/s as nccl-tests prints
    busbw_GBps: float  # algbw * bus_factor
    backend: str
    stage_times_s: tuple[float, ...] = field(default_factory=tuple)  # bandwidth + latency
    latency_s: float = 0.0  # the latency part of time_s

    def as_dict(self) -> dict:
        return {
            "op": self.op, "n_gpus": self.n_gpus, "size_bytes": self.size_bytes,
            "time_s": self.time_s, "algbw_GBps": self.algbw_GBps,
            "busbw_GBps": self.busbw_GBps, "backend": self.backend,
            "stage_times_s": list(self.stage_times_s), "latency_s": self.latency_s,
        }


def _result(collective: Collective, backend: str, band: list[float], lat: list[float],
            ) -> CollectiveResult:
    stage_times = tuple(b + l for b, l in zip(band, lat))
    time_s = float(sum(stage_times))
    algbw = collective.size_bytes / time_s / 1e9 if time_s > 0 else float("inf")
    return CollectiveResult(
        op=collective.op, n_gpus=len(collective.gpus), size_bytes=collective.size_bytes,
        time_s=time_s, algbw_GBps=algbw, busbw_GBps=algbw * collective.bus_factor,
        backend=backend, stage_times_s=stage_times, latency_s=float(sum(lat)),
    )


class FlowBackend:
    """Flow-level timing: max-min fair sharing of every link by the flows of each stage."""

    name = "flow"

    def __init__(self, topology, params: NetworkParams = DEFAULT_NETWORK_PARAMS) -> None:
        self.topology = topology
        self.params = params
        self._capacity: dict[str | None, np.ndarray] = {}

    def capacity_bytes_per_s(self, engine: str | None = None) -> np.ndarray:
        """Effective link capacities for a transport engine (None: NCCL), built once each."""
        if engine not in self._capacity:
            self._capacity[engine] = analytical.effective_link_capacity(
                self.topology, self.params, engine)
        return self._capacity[engine]

    def stage_flow_finish_s(self, stage: Stage, engine: str | None = None) -> np.ndarray:
        """Finish time of each (non-empty) flow of the stage, all starting at 0."""
        flows = stage.flows.without_empty()
        if len(flows) == 0:
            return np.zeros(0)
        cap = self.capacity_bytes_per_s(engine)
        routes = self.topology.route_matrix(flows.src, flows.dst)
        alone = analytical.path_bandwidth(routes, cap)
        bound = np.asarray(self.params.message_efficiency(flows.size_bytes)) * alone
        net = FluidNetwork(cap, record_flow_finish=True)
        net.add(routes, flows.size_bytes, 0.0, tag=0, rate_bound_bytes_per_s=bound)
        while np.isfinite(net.next_event_s()):
            net.advance(net.next_event_s())
        if net.active_flows:
            raise ValueError(f"{net.active_flows} flows cross a link of zero capacity")
        return net.flow_finish_s

    def collective_time_s(self, collective: Collective) -> CollectiveResult:
        band, lat = [], []
        for stage in collective.stages:
            finish = self.stage_flow_finish_s(stage, collective.meta.get("engine"))
            band.append(float(finish.max()) if len(finish) else 0.0)
            lat.append(analytical.stage_latency_s(stage, self.topology, self.params))
        return _result(collective, self.name, band, lat)


class AnalyticalBackend:
    """NCCL busbw formulas on per-GPU bottleneck bandwidths; no fabric contention."""

    name = "analytical"

    def __init__(self, topology, params: NetworkParams = DEFAULT_NETWORK_PARAMS) -> None:
        self.topology = topology
        self.params = params

    def collective_time_s(self, collective: Collective) -> CollectiveResult:
        band, lat = analytical.collective_stage_times_s(collective, self.topology, self.params)
        return _result(collective, self.name, band, lat)


BACKENDS = {"flow": FlowBackend, "analytical": AnalyticalBackend}


def make_backend(name: str, topology, params: NetworkParams = DEFAULT_NETWORK_PARAMS):
    from simmoe.errors import InputError

    if name not in BACKENDS:
        raise InputError("unknown network backend", field="--backend", value=name,
                         allowed=", ".join(BACKENDS))
    return BACKENDS[name](topology, params)
