"""SimNetwork: the engine's waist to the flow-level network, on a hand-built 3-GPU star."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
import simpy

from simmoe.network.flows import Collective, FlowSet, Stage
from simmoe.network.params import NetworkParams
from simmoe.network.simnet import NetworkBackend, SimNetwork, effective_capacity_bytes_per_s
from simmoe.topology.model import Topology

GB = 1e9


class HandTopology(Topology):
    """Three GPUs on one switch; routes from a hand-written table (independent of the loader)."""

    def route_matrix(self, src, dst):
        index = {e: i for i, e in enumerate(self.link_endpoints)}
        rows, cols = [], []
        for i, (s, d) in enumerate(zip(np.asarray(src), np.asarray(dst))):
            if s == d:
                continue
            for edge in ((f"g{s}", "sw"), ("sw", f"g{d}")):
                rows.append(i)
                cols.append(index[edge])
        return sp.csr_matrix(
            (np.ones(len(rows)), (rows, cols)), shape=(len(src), self.num_links)
        )


def star(capacity_bytes_per_s=10 * GB, latency_s=0.0, link_class="ib-ndr") -> HandTopology:
    g = nx.DiGraph()
    g.add_node("sw", kind="switch")
    endpoints = []
    for k in range(3):
        g.add_node(f"g{k}", kind="gpu", gpu_id=k, server=k, nvlink_domain=k)
        endpoints += [(f"g{k}", "sw"), ("sw", f"g{k}")]
    for i, (u, v) in enumerate(endpoints):
        g.add_edge(u, v, capacity_bytes_per_s=capacity_bytes_per_s, latency_s=latency_s,
                   link_class=link_class, index=i)
    n = len(endpoints)
    return HandTopology(
        name="star3", file=None, gpu_model="H100-SXM", graph=g,
        server_of_gpu=np.arange(3), nvlink_domain_of_gpu=np.arange(3),
        link_capacity_bytes_per_s=np.full(n, capacity_bytes_per_s),
        link_latency_s=np.full(n, latency_s), link_class=np.array([link_class] * n),
        link_endpoints=endpoints,
    )


# Efficiency 1 and no step latency: durations are pure bandwidth terms, easy to derive by hand.
IDEAL = NetworkParams(link_efficiency={}, default_link_efficiency=1.0, step_latency_s=0.0)


def p2p(src, dst, size_bytes, latency_steps=0) -> Collective:
    fs = FlowSet(np.array([src]), np.array([dst]), np.array([float(size_bytes)]))
    return Collective("p2p", (src, dst), size_bytes, (Stage(fs, latency_steps),))


def run(topology, params, collectives, starts=None):
    env = simpy.Environment()
    net = SimNetwork(env, topology, params)
    results = {}

    def launch(i, c, t0):
        yield env.timeout(t0)
        results[i] = yield net.transfer(c)

    for i, c in enumerate(collectives):
        env.process(launch(i, c, 0.0 if starts is None else starts[i]))
    env.run()
    return [results[i] for i in range(len(collectives))], net


def test_simnetwork_is_a_network_backend():
    env = simpy.Environment()
    assert isinstance(SimNetwork(env, star(), IDEAL), NetworkBackend)


def test_single_transfer_takes_bytes_over_capacity():
    (d,), _ = run(star(), IDEAL, [p2p(0, 1, 10 * GB)])
    assert d == pytest.approx(1.0, rel=1e-12)


def test_two_concurrent_transfers_on_one_link_each_take_twice_as_long():
    # Both leave GPU 0 through link g0->sw: each gets half of it.
    (a, b), _ = run(star(), IDEAL, [p2p(0, 1, 10 * GB), p2p(0, 2, 10 * GB)])
    assert a == pytest.approx(2.0, rel=1e-12)
    assert b == pytest.approx(2.0, rel=1e-12)


def test_disjoint_transfers_do_not_slow_each_other():
    (a, b), _ = run(star(), IDEAL, [p2p(0, 1, 10 * GB), p2p(2, 0, 10 * GB)])
    assert a == pytest.approx(1.0, rel=1e-12) and b == pytest.approx(1.0, rel=1e-12)


def test_late_transfer_shares_only_while_overlapping():
    # A (20 GB) alone for 1 s (10 GB done), then shares with B (5 GB) at 5 GB/s each:
    # B ends at 2 s (duration 1 s); A has 5 GB left at 10 GB/s -> ends at 2.5 s.
    (a, b), _ = run(star(), IDEAL, [p2p(0, 1, 20 * GB), p2p(0, 2, 5 * GB)], starts=[0.0, 1.0])
    assert a == pytest.approx(2.5, rel=1e-12)
    assert b == pytest.approx(1.0, rel=1e-12)


def test_stages_run_in_sequence():
    s1 = Stage(FlowSet(np.array([0]), np.array([1]), np.array([10 * GB])), 0)
    s2 = Stage(FlowSet(np.array([1, 2]), np.array([2, 0]), np.array([20 * GB, 5 * GB])), 0)
    c = Collective("two-stage", (0, 1, 2), 10 * GB, (s1, s2))
    (d,), _ = run(star(), IDEAL, [c])
    assert d == pytest.approx(1.0 + 2.0, rel=1e-12)


def test_latency_is_steps_times_step_plus_route_latency():
    params = NetworkParams(link_efficiency={}, default_link_efficiency=1.0, step_latency_s=1e-3)
    topo = star(latency_s=2e-3)  # every route crosses two links: 4 ms route latency
    (d,), _ = run(topo, params, [p2p(0, 1, 10 * GB, latency_steps=3)])
    assert d == pytest.approx(1.0 + 3 * (1e-3 + 4e-3), rel=1e-12)


def test_latency_does_not_hold_the_links():
    # The stage's bytes drain first and the latency follows, so a second transfer that starts
    # while the first only waits on latency finds the link free.
    params = NetworkParams(link_efficiency={}, default_link_efficiency=1.0, step_latency_s=0.5)
    (a, b), _ = run(star(), params, [p2p(0, 1, 10 * GB, 1), p2p(0, 2, 10 * GB, 0)],
                    starts=[0.0, 1.0])
    assert a == pytest.approx(1.5, rel=1e-12) and b == pytest.approx(1.0, rel=1e-12)


def test_engine_efficiency_applies_to_its_flows_only():
    # "slow" payload reaches half of ib-ndr: alone 10 GB take 2 s. Next to an NCCL flow on the same
    # link it uses the link twice as hard: 2 a + b = 10 GB/s with a = b -> 10/3 GB/s, both 3 s.
    params = NetworkParams(link_efficiency={"ib-ndr": 1.0}, step_latency_s=0.0,
                           engine_link_efficiency={"slow": {"ib-ndr": 0.5}})
    slow = p2p(0, 1, 10 * GB)
    slow = Collective("p2p", slow.gpus, slow.size_bytes, slow.stages, meta={"engine": "slow"})
    (alone,), _ = run(star(), params, [slow])
    assert alone == pytest.approx(2.0, rel=1e-12)
    (a, b), _ = run(star(), params, [slow, p2p(0, 2, 10 * GB)])
    assert a == pytest.approx(3.0, rel=1e-12) and b == pytest.approx(3.0, rel=1e-12)


def test_stage_without_flows_pays_only_step_latency():
    params = NetworkParams(link_efficiency={}, default_link_efficiency=1.0, step_latency_s=1e-3)
    empty = FlowSet(np.array([1]), np.array([1]), np.array([5.0]))  # self flow: dropped
    c = Collective("noop", (1,), 0.0, (Stage(empty, 2),))
    (d,), _ = run(star(), params, [c])
    assert d == pytest.approx(2e-3, rel=1e-12)


def test_link_efficiency_scales_capacity():
    params = NetworkParams(link_efficiency={"ib-ndr": 0.5}, step_latency_s=0.0)
    topo = star()
    np.testing.assert_allclose(effective_capacity_bytes_per_s(topo, params), 5 * GB)
    (d,), _ = run(topo, params, [p2p(0, 1, 10 * GB)])
    assert d == pytest.approx(2.0, rel=1e-12)


def test_message_rate_bound_slows_small_messages():
    params = NetworkParams(link_efficiency={}, default_link_efficiency=1.0, step_latency_s=0.0,
                           half_efficiency_bytes=10 * GB)
    env = simpy.Environment()
    net = SimNetwork(env, star(), params, message_rate_bound=True)
    ev = net.transfer(p2p(0, 1, 10 * GB))
    env.run()
    # efficiency 10/(10+10) = 0.5 of 10 GB/s -> 2 s
    assert ev.value == pytest.approx(2.0, rel=1e-12)
