"""The engine's speed-ups are exact: skipped event hops, one-loop event processing, raw-bit
uniforms, the expert-major count layout of the block sampler and vectorised draw statistics give
the very numbers of the plain versions (whole timelines, random streams, draws bit for bit)."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import simpy

import simmoe.engine.runner as runner
from simmoe.config.loader import load_default_scenario
from simmoe.engine.core import EngineEnvironment
from simmoe.engine.runner import Simulation
from simmoe.routing import EPGroup, RoutingModel
from simmoe.routing import block
from simmoe.routing.model import block_rng
from simmoe.routing.popularity import max_over_mean

SMALL = ["model.layers=4", "model.hidden=512", "training.seq_len=1024", "training.micro_batch=2",
         "training.global_batch=64", "simulation.steps=1", "simulation.warmup_steps=0"]

# ----------------------------------------------------------------------------- event hops


def _timelines(sim: Simulation, step: int = 0):
    res = sim.run_step(step)
    events = next(sim.network.env._eid)  # events scheduled during the step
    return events, res.step_time_s, [(t.compute, t.comm, t.expert_s, t.step_compute_s, t.finish_s)
                                     for t in res.timeline.timelines]


@pytest.mark.parametrize("over", [
    [],  # 1F1B, NCCL all-to-alls: kernels re-timed while collectives hold SMs
    ["parallelism.schedule=dualpipe"],  # paired chunks share the compute stream
    ["parallelism.schedule=dualpipe", "parallelism.comm_sms=20", "routing.hierarchical_a2a=true"],
])
def test_skipped_hops_give_the_plain_environments_timelines(monkeypatch, over):
    sc = load_default_scenario(SMALL + over)
    fast = _timelines(Simulation(sc, seed=3))
    monkeypatch.setattr(runner, "EngineEnvironment", simpy.Environment)  # every hop an event
    plain = _timelines(Simulation(sc, seed=3))
    assert fast[0] < plain[0]  # hops were skipped
    assert fast[1:] == plain[1:]  # every compute and comm entry, at the same float times


def test_alone_only_when_nothing_else_is_due_now():
    env = EngineEnvironment()
    seen = []
    ev = env.event()
    env.timeout(1.0).callbacks.append(lambda _e: seen.append(("timer", env.alone())))
    ev.callbacks.append(lambda _e: seen.append(("first", env.alone())))
    ev.callbacks.append(lambda _e: seen.append(("last", env.alone())))
    other = env.event()
    other.callbacks.append(lambda _e: seen.append(("other", env.alone())))
    ev.succeed()
    other.succeed()
    env.run_until(env.timeout(2.0))
    # "last" is its event's last callback but "other" is still due at t=0; the timer is alone.
    assert seen == [("first", False), ("last", False), ("other", True), ("timer", True)]


def test_succeed_last_processes_in_the_order_scheduling_would():
    def trace(env, fire):
        log = []
        a, b = env.event(), env.event()
        a.callbacks.append(lambda _e: log.append(("a", env.now)))
        b.callbacks.append(lambda _e: log.append(("b", env.now)))
        env.timeout(1.0).callbacks.append(lambda _e: fire(env, a))
        env.timeout(1.0).callbacks.append(lambda _e: fire(env, b))  # due at the same instant
        env.timeout(2.0).callbacks.append(lambda _e: fire(env, env.event()))
        return log

    env = EngineEnvironment()
    got = trace(env, lambda e, ev: e.succeed_last(ev))
    env.run_until(env.timeout(3.0))
    ref_env = simpy.Environment()
    want = trace(ref_env, lambda e, ev: ev.succeed())
    ref_env.run(until=3.0)
    assert got == want == [("a", 1.0), ("b", 1.0)]


# ----------------------------------------------------------------------------- routing draws


@pytest.mark.parametrize("bitgen", [np.random.SFC64, np.random.PCG64])
@pytest.mark.parametrize("shape", [(8, 6), (3, 5), (1, 1)])  # even, odd (numpy's own path)
def test_raw_bit_uniforms_are_numpys(bitgen, shape):
    a = np.random.Generator(bitgen(42))
    b = np.random.Generator(bitgen(42))
    want = a.random(shape, dtype=np.float32)
    got = np.empty(shape, np.float32)
    block._uniform_float32(b, got)
    np.testing.assert_array_equal(got, want)
    # The generator is left where numpy leaves it: the next draws agree.
    np.testing.assert_array_equal(b.random(5), a.random(5))
    np.testing.assert_array_equal(b.binomial(50, 0.3, 7), a.binomial(50, 0.3, 7))


def _scan_reference(x: np.ndarray, out: np.ndarray) -> None:
    """The two-level scan as first written: carries added group after group."""
    b, n, m = x.shape
    w = block._scan_width(n)
    g = n // w
    out[:, 0] = 0.0
    xs = x.reshape(b, g, w, m)
    o = out[:, 1:].reshape(b, g, w, m)
    o[:, :, 0] = xs[:, :, 0]
    for j in range(1, w):
        np.add(o[:, :, j - 1], xs[:, :, j], out=o[:, :, j])
    for j in range(1, g):
        o[:, j] += o[:, j - 1, w - 1][:, None, :]


@pytest.mark.parametrize("n", [1, 7, 16, 256])
def test_scan_is_the_two_level_scan(n):
    x = np.random.default_rng(n).normal(size=(3, n, 5)) * 1e3
    got, want = np.empty((3, n + 1, 5)), np.empty((3, n + 1, 5))
    block._cumsum_axis1(x, got)
    _scan_reference(x, want)
    np.testing.assert_array_equal(got, want)


# Digests of sample_block's arrays as drawn before the expert-major layout and the raw-bit
# uniforms: the random stream and every draw are unchanged.
_GROUPS = {
    "equal_ranks": (EPGroup(np.arange(64) // 4, np.arange(16) // 4, 4096, 8),
                    dict(popularity="zipf", zipf_s=0.6),
                    ["03c4ba0c8962cf2a", "3a2ed5956358f35d", "39e01c8c78e7d6f4"]),
    "binomial_round_robin": (EPGroup(np.arange(64) % 16, np.arange(16) // 4, 100, 4),
                             dict(popularity="zipf", zipf_s=1.2),
                             ["3cfd3a018685a65e", "58be304801eb06f5", "04fe8e0bc4dbf00f"]),
    "unequal_ranks": (EPGroup(np.array([0] * 6 + [1] * 2 + [2] * 5 + [3] * 3), np.array([0, 0, 1, 1]),
                              64, 2),
                      dict(popularity="dirichlet", dirichlet_alpha=0.5),
                      ["9c533c22c3acf106", "6334b9803aa5f47e", "fd80c7abb01018ea"]),
    "nodes_out_of_order": (EPGroup(np.arange(24) // 4, np.array([0, 1, 0, 1, 1, 1]), 300, 3),
                           dict(popularity="zipf", zipf_s=0.9),
                           ["e1be3c31d734c8e6", "800ce7cd3d59f8e4", "2eaccaafbc5ee1a2"]),
}


def _digest(drawn) -> str:
    h = hashlib.sha256()
    for f in dataclasses.fields(drawn):
        h.update(f.name.encode())
        h.update(np.ascontiguousarray(getattr(drawn, f.name)).tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(_GROUPS))
def test_block_draws_are_unchanged(name):
    g, kw, want = _GROUPS[name]
    probs = RoutingModel(g, num_layers=2, seed=7, **kw).probabilities(3, 1)
    assert [_digest(block.sample_block(g, probs, block_rng(7, 3, 1, b))) for b in range(3)] == want


def test_rare_settling_keeps_counts_and_assignments_consistent(monkeypatch):
    # Push some normal deviates far down so that counts round below 0 and get settled.
    g = EPGroup(np.arange(32) // 4, np.arange(8) // 4, 2000, 4)
    probs = RoutingModel(g, num_layers=1, seed=1).probabilities(0, 0)
    real = block.random_block

    def extreme(*args):
        z, u = real(*args)
        z[:, : 32 * 8 : 5] = -40.0  # some (expert, source) entries of each micro-batch
        return z, u

    monkeypatch.setattr(block, "random_block", extreme)
    settled = []
    real_settle = block._settle_rows
    monkeypatch.setattr(block, "_settle_rows", lambda *a: (settled.append(1), real_settle(*a)))
    d = block.sample_block(g, probs, block_rng(1, 0, 0, 0))
    assert settled
    counts = d.tokens_per_src_expert  # (b, source, expert)
    assert counts.min() >= 0
    np.testing.assert_array_equal(counts.sum(axis=2), round(g.tokens_per_rank * probs.pi.sum()))
    per_rank = np.stack([counts[:, :, g.expert_to_rank == r].sum(axis=2) for r in range(g.ep)], axis=1)
    np.testing.assert_array_equal(d.tokens_per_dst_rank, per_rank.sum(axis=2))
    np.testing.assert_array_equal(d.tokens_per_expert, counts.sum(axis=1))


def test_layer_statistics_are_max_over_mean_row_by_row():
    sc = load_default_scenario(SMALL + ["routing.imbalance.model=zipf", "routing.imbalance.s=1.1"])
    sim = Simulation(sc, seed=2)
    sim._step = 0
    sums, ratios = sim._layer_stats(0, 0)
    comp = sim._layer_arrays(0, 0).compute_tokens_per_expert
    assert sums == [int(c.sum()) for c in comp]
    assert ratios == [max_over_mean(c) for c in comp]  # bit for bit


@pytest.mark.parametrize("grad", ["both", "input", "weight"])
def test_held_expert_times_one_micro_batch_at_a_time_equal_the_layer_call(grad):
    # Kernels beside an NCCL collective are timed per micro-batch; the layer-wide call's rows.
    from simmoe.workload.ops import ExpertGemmOp

    sc = load_default_scenario(SMALL + ["routing.imbalance.model=zipf", "routing.imbalance.s=1.1"])
    sim = Simulation(sc, seed=6)
    sim._step = 0
    for op in [o for p in sim.programs.values() for o in p.ops
               if isinstance(o, ExpertGemmOp) and not o.shared][:4]:
        moe_i = sim.moe_index[op.layer]
        times = sim._layer_gemm_times(0, moe_i, op, True)
        whole = np.asarray(runner._grad_part(times, grad) if op.phase == "bwd" else times, float)
        whole = whole.reshape(len(whole), -1)
        for mb in range(sim.m):
            t, t_max = sim._expert_times(0, op, mb, grad, held=True)
            np.testing.assert_array_equal(t, whole[mb])
            assert t_max == float(whole[mb].max())
