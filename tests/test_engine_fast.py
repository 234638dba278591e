"""The engine's fast paths against their plain versions: batched routing draws against one-by-one
draws (the same blocks of micro-batches), the coflow network (hot links, components, lazy progress) against a dense global max-min
re-solve at every event, MoE link-load tables against routed flows, batched expert times."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from simmoe.config.loader import load_default_scenario
from simmoe.engine.moe_comm import moe_alltoall
from simmoe.engine.runner import Simulation
from simmoe.network.coflow import CoflowNetwork, CoflowRow, MoeLinkLoads, _progressive_filling
from simmoe.network.flows import Collective, FlowSet, Stage
from simmoe.network.maxmin import maxmin_rates
from simmoe.routing import EPGroup, RoutingModel

# ----------------------------------------------------------------------------- routing


@pytest.mark.parametrize("kw", [
    dict(popularity="uniform"),
    dict(popularity="zipf", zipf_s=0.8, max_nodes_per_token=2),
    dict(popularity="zipf", zipf_s=1.2, capacity_factor=1.0),  # padded
    dict(popularity="zipf", zipf_s=1.2, capacity_factor=1.0, pad_to_capacity=False),  # dropped
    dict(popularity="dirichlet", dirichlet_alpha=0.3, drift="bias_balancing"),
    dict(popularity="uniform", routing="expert_choice", capacity_factor=1.0),
])
def test_batched_draws_are_the_single_draws(kw):
    # 64 experts over 16 ranks on 4 nodes; 100 tokens per rank keeps some binomial columns.
    g = EPGroup(np.arange(64) // 4, np.arange(16) // 4, 100, 4)
    model = RoutingModel(g, num_layers=3, seed=11, **kw)
    mbs = [0, 3, 1, 7, 2, 17, 9]  # three blocks, out of order
    batch = model.draw_batch(5, 2, mbs)
    single = RoutingModel(g, num_layers=3, seed=11, **kw)  # recomputes every block
    for mb, got in zip(mbs, batch):
        want = single.draw(5, 2, mb)
        for name in want.__dataclass_fields__:
            a, b = getattr(want, name), getattr(got, name)
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(a, b, err_msg=name)
            else:
                assert a == b, name


def test_batched_draws_span_several_blocks():
    # DeepSeek-sized: micro-batches come in blocks of DRAW_BLOCK (8) from one stream each.
    g = EPGroup(np.arange(256) // 4, np.arange(64) // 8, 4096, 8)
    model = RoutingModel(g, num_layers=1, seed=2, max_nodes_per_token=4)
    batch = model.draw_batch(0, 0, range(20))
    for mb in (0, 7, 8, 19):
        np.testing.assert_array_equal(batch[mb].tokens_per_src_expert,
                                      model.draw(0, 0, mb).tokens_per_src_expert)
        np.testing.assert_array_equal(batch[mb].dispatch_tokens_per_src_dst_node,
                                      model.draw(0, 0, mb).dispatch_tokens_per_src_dst_node)


@pytest.mark.parametrize("kw", [
    dict(popularity="uniform"),  # dropless: sliced out of the blocks
    dict(popularity="zipf", zipf_s=0.8, max_nodes_per_token=2),
    dict(popularity="zipf", zipf_s=1.2, capacity_factor=1.0),  # padded: stacked draw objects
    dict(popularity="uniform", routing="expert_choice", capacity_factor=1.0),
])
@pytest.mark.parametrize("n", [0, 1, 8, 19])
def test_layer_draws_are_the_stacked_batch(kw, n):
    g = EPGroup(np.arange(64) // 4, np.arange(16) // 4, 100, 4)
    layer = RoutingModel(g, num_layers=3, seed=11, **kw).draw_layer(5, 2, n)
    batch = RoutingModel(g, num_layers=3, seed=11, **kw).draw_batch(5, 2, range(n))
    for name in layer._fields:
        got = getattr(layer, name)
        assert got.shape[0] == n and got.dtype == np.int64, name
        for mb, d in enumerate(batch):
            np.testing.assert_array_equal(got[mb], getattr(d, name), err_msg=name)


def test_engine_layer_arrays_keep_the_step():
    # The coflow engine reads stacked layer arrays (no draw objects); the analytical network reads
    # the draw objects: both give the draws' statistics, and the step of the plain draws.
    sc = load_default_scenario()
    fast = Simulation(sc)
    res = fast.run_step(0)
    assert not fast._batch_draws and fast._layer_arr  # the fast path ran
    plain = Simulation(sc)
    plain._layer_arrays = lambda step, moe_i: _stacked(plain, step, moe_i)
    ref = plain.run_step(0)
    assert res.step_time_s == ref.step_time_s
    assert res.stats.assignments == ref.stats.assignments
    assert res.stats.load_max_over_mean == ref.stats.load_max_over_mean


def _stacked(sim, step, moe_i):
    from simmoe.routing.model import LayerDraws

    ds = sim._layer_draws(step, moe_i)
    return LayerDraws(*(np.stack([getattr(d, f) for d in ds]) for f in LayerDraws._fields))


# ----------------------------------------------------------------------------- max-min


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_progressive_filling_is_maxmin(seed):
    rng = np.random.default_rng(seed)
    n, links = int(rng.integers(1, 8)), int(rng.integers(1, 6))
    A = rng.uniform(0.1, 2.0, (n, links)) * (rng.random((n, links)) < 0.6)
    A[np.arange(n), rng.integers(0, links, n)] = rng.uniform(0.1, 2.0, n)  # every row crosses one
    cap = rng.uniform(1.0, 5.0, links)
    np.testing.assert_allclose(_progressive_filling(A, cap), maxmin_rates(sp.csr_matrix(A), cap),
                               rtol=1e-9)


def _reference_finish_times(cap, coflows):
    """Dense global max-min re-solve at every start / finish (the engine's former coflow model).
    coflows: [(start_s, dense row, bytes)] -> finish time of each."""
    n = len(coflows)
    rem = np.array([c[2] for c in coflows], float)
    size = rem.copy()
    finish = np.full(n, np.nan)
    started = np.zeros(n, bool)
    t = 0.0
    while np.isnan(finish).any():
        active = np.flatnonzero(started & np.isnan(finish))
        rates = np.zeros(n)
        if len(active):
            A = np.array([coflows[i][1] for i in active])
            rates[active] = _progressive_filling(A, cap)
        pending = [coflows[i][0] for i in range(n) if not started[i]]
        t_start = min(pending) if pending else np.inf
        with np.errstate(divide="ignore"):
            dt_fin = np.where(rates[active] > 0, rem[active] / rates[active], np.inf)
        t_fin = t + (dt_fin.min() if len(active) else np.inf)
        t_next = min(t_start, t_fin)
        rem[active] -= rates[active] * (t_next - t)
        t = t_next
        for i in active:
            if rem[i] <= 1e-9 * size[i]:
                finish[i] = t
        for i in range(n):
            if not started[i] and coflows[i][0] <= t:
                started[i] = True
    return finish


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_coflow_network_equals_global_resolve(seed):
    rng = np.random.default_rng(seed)
    links, n = 10, int(rng.integers(2, 12))
    cap = rng.uniform(1.0, 4.0, links)
    coflows = []
    for _ in range(n):
        row = np.zeros(links)
        cols = rng.choice(links, int(rng.integers(1, 5)), replace=False)
        row[cols] = rng.uniform(0.05, 1.0, len(cols))
        coflows.append((float(rng.integers(0, 4)) * 0.5, row, float(rng.uniform(0.5, 3.0))))
    want = _reference_finish_times(cap, coflows)

    class Topo:  # the coflow network reads capacities and latencies only
        num_links = links
        link_capacity_bytes_per_s = cap
        link_latency_s = np.zeros(links)
        link_class = np.array(["nvlink"] * links)

    from simmoe.network.params import NetworkParams
    from simmoe.network import coflow as cf

    env = simpy.Environment()
    fabric = cf.CoflowFabric(Topo(), NetworkParams())
    fabric.capacity_bytes_per_s = cap  # exact capacities (no NCCL efficiency) for the oracle
    fabric.hot_threshold = cap * (1 - cf.HOT_RTOL)
    net = CoflowNetwork(env, fabric=fabric)
    got = np.full(n, np.nan)

    def one(i, start, row, size):
        yield env.timeout(start)
        cols = np.flatnonzero(row)
        crow = CoflowRow(cols, row[cols], float(1.0 / np.max(row[cols] / cap[cols])))
        cl = Collective("x", (0, 1), size, (Stage(FlowSet([], [], []), 0),),
                        meta={"coflow_rows": [(crow, size, 0.0)]})
        yield net.transfer(cl)
        got[i] = env.now

    for i, (start, row, size) in enumerate(coflows):
        env.process(one(i, start, row, size))
    env.run()
    np.testing.assert_allclose(got, want, rtol=1e-9)


# ----------------------------------------------------------------------------- link loads


@pytest.mark.parametrize("hier", [False, True])
@pytest.mark.parametrize("combine", [False, True])
def test_moe_link_loads_equal_routed_flows(hier, combine):
    from simmoe.topology.loader import load_topology

    topo = load_topology("h100-roce-4x100g", nodes=2)
    server = np.asarray(topo.server_of_gpu)
    gpus = np.arange(16)
    rng = np.random.default_rng(3)
    t = rng.integers(0, 50, (16, 16))
    t[rng.random((16, 16)) < 0.2] = 0
    tn = rng.integers(0, 60, (16, 2))
    cl = moe_alltoall(gpus, t, 7.0, server_of_gpu=server, tokens_src_node=tn, hierarchical=hier,
                      combine=combine)
    f = cl.stages[0].flows.without_empty()
    R = sp.csr_matrix(topo.route_matrix(f.src, f.dst))
    want = np.asarray(R.T @ f.size_bytes).reshape(-1)
    lk = MoeLinkLoads(topo, gpus, server, hier)
    load, latency, total = lk.loads(t, tn, 7.0, combine)
    np.testing.assert_allclose(load, want, rtol=1e-12, atol=1e-9)
    assert total == pytest.approx(f.size_bytes.sum(), rel=1e-12)
    lat = np.asarray(R @ np.asarray(topo.link_latency_s)).reshape(-1)
    assert latency == pytest.approx(lat.max(), rel=1e-12)
    # The batched form gives each micro-batch's loads.
    used, frac, lat_b, tot_b = lk.loads_batch(np.stack([t, 2 * t]), np.stack([tn, 2 * tn]), combine)
    np.testing.assert_allclose(frac[1] * tot_b[1] * 7.0, want[used] * 2, rtol=1e-12, atol=1e-9)


# ----------------------------------------------------------------------------- engine

SMALL = ["model.layers=4", "model.hidden=512", "training.seq_len=1024", "training.micro_batch=2",
         "training.global_batch=64", "simulation.steps=1", "simulation.warmup_steps=0"]


@pytest.mark.parametrize("over", [[], ["parallelism.pp=1", "parallelism.ep=16",
                                       "routing.imbalance.model=zipf", "routing.imbalance.s=1.0"],
                                  ["cluster.topology=h100-roce-4x100g", "cluster.nodes=2"]])
def test_fast_engine_agrees_with_per_flow_network(over):
    # The per-flow SimNetwork (exact per-flow sharing, no coflow, no batching of link loads).
    sc = load_default_scenario(SMALL + over)
    co = Simulation(sc, seed=5).run_step(0)
    fl = Simulation(sc, seed=5, coflow=False).run_step(0)
    assert co.step_time_s == pytest.approx(fl.step_time_s, rel=0.05)


def test_expert_times_and_stats_equal_per_draw_values():
    sc = load_default_scenario(SMALL + ["routing.imbalance.model=zipf", "routing.imbalance.s=1.2"])
    sim = Simulation(sc, seed=4)
    r = sim.run_step(0)
    from simmoe.workload.ops import ExpertGemmOp

    op = next(o for p in sim.programs.values() for o in p.ops
              if isinstance(o, ExpertGemmOp) and not o.shared)
    moe_i = sim.moe_index[op.layer]
    for mb in range(sim.m):
        d = sim._routing[moe_i].draw(0, moe_i, mb)
        tokens = np.asarray(d.compute_tokens_per_expert)[sim._experts_of_rank[moe_i]]
        want = np.asarray(sim.compute.grouped_gemm_s(tokens, op.n, op.k, sim._dtype(op)), float) \
            if op.phase == "fwd" else None
        t, t_max = sim._expert_times(0, op, mb)
        if want is not None:
            np.testing.assert_array_equal(t, want)
        assert t_max == float(t.max())
    # Step statistics: the per-draw properties, summed.
    draws = [sim._routing[i].draw(0, i, mb) for i in range(len(sim.moe_index)) for mb in range(sim.m)]
    assert r.stats.assignments == sum(d.assignments for d in draws)
    assert r.stats.dropped == sum(d.dropped_assignments for d in draws)


def test_fast_engine_is_deterministic_across_steps_and_instances():
    sc = load_default_scenario(SMALL + ["routing.imbalance.model=zipf", "routing.imbalance.s=1.0"])
    a = Simulation(sc, seed=9)
    first = [a.run_step(s).step_time_s for s in (0, 1, 0)]
    b = Simulation(sc, seed=9)
    assert first[0] == first[2] == b.run_step(0).step_time_s
