"""Fluid flow-level simulation: hand-derived completion times and an independent replay oracle."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from simmoe.network.fluid import FluidNetwork, simulate_flows
from simmoe.network.maxmin import maxmin_rates


def csr(rows, n_links):
    r, c, v = [], [], []
    for i, row in enumerate(rows):
        for link, frac in row.items():
            r.append(i)
            c.append(link)
            v.append(frac)
    return sp.csr_matrix((v, (r, c)), shape=(len(rows), n_links))


def run_to_idle(net):
    out = []
    while np.isfinite(net.next_event_s()):
        out += net.advance(net.next_event_s())
    return out


def test_two_flows_share_then_one_speeds_up():
    # Cap 10, sizes 10 and 30: 5 each until t=2 (first done), then 20 left at 10 -> t=4.
    t = simulate_flows(csr([{0: 1}, {0: 1}], 1), np.array([10.0, 30.0]), np.array([10.0]))
    np.testing.assert_allclose(t, [2.0, 4.0], rtol=1e-12)


def test_processor_sharing_five_flows():
    # Single link, cap 1, sizes 1..5 (identical routes: one class): finishing times are
    # T_j = sum_i min(s_i, s_j) = 5, 9, 12, 14, 15.
    t = simulate_flows(csr([{0: 1}] * 5, 1), np.array([3.0, 1, 5, 2, 4]), np.array([1.0]))
    np.testing.assert_allclose(t, [12, 5, 15, 9, 14], rtol=1e-12)


def test_three_flows_two_links_freed_capacity_moves():
    # Rates 8, 2, 2 (see test_maxmin); A (8 B) done at 1; then B, C get 2 each on link1:
    # B had 4 - 2 = 2 left -> t=2, C likewise.
    t = simulate_flows(csr([{0: 1}, {0: 1, 1: 1}, {1: 1}], 2), np.array([8.0, 4, 4]),
                       np.array([10.0, 4.0]))
    np.testing.assert_allclose(t, [1, 2, 2], rtol=1e-12)


def test_bottleneck_shift_when_flow_finishes():
    # A on link0 (cap 10); B on links 0 and 1; C on link1 (cap 4); sizes A=10, B=10, C=1.
    # Rates A=8, B=2, C=2. C done at 0.5 (A has 6 left, B 9).
    # Then link1 holds only B: it saturates at level 4 before link0 (level 5): B=4, A=6.
    # A's 6 take 1 s -> 1.5 (B has 5 left). Then B alone, held by link1 at 4: 1.25 s -> 2.75.
    t = simulate_flows(csr([{0: 1}, {0: 1, 1: 1}, {1: 1}], 2), np.array([10.0, 10, 1]),
                       np.array([10.0, 4.0]))
    np.testing.assert_allclose(t, [1.5, 2.75, 0.5], rtol=1e-12)


def test_incremental_adds_and_tags():
    net = FluidNetwork(np.array([10.0]))
    net.add(csr([{0: 1}], 1), np.array([20.0]), 0.0, "a")
    assert net.next_event_s() == pytest.approx(2.0)
    assert net.advance(1.0) == []
    net.add(csr([{0: 1}, {0: 1}], 1), np.array([5.0, 5.0]), 1.0, "b")
    # From t=1: three flows at 10/3; "a" has 10 left, b's 5 each -> b done at 1 + 1.5 = 2.5;
    # "a" then has 10 - 5 = 5 left alone at 10 -> 3.0.
    assert net.active_flows == 3
    done = run_to_idle(net)
    assert [tag for tag, _ in done] == ["b", "a"]
    np.testing.assert_allclose([t for _, t in done], [2.5, 3.0], rtol=1e-12)
    assert net.active_flows == 0 and net.next_event_s() == np.inf


def test_zero_byte_and_routeless_flows_finish_when_added():
    net = FluidNetwork(np.array([1.0]))
    net.add(csr([{}, {0: 1}], 1), np.array([5.0, 0.0]), 0.0, "x")
    assert net.next_event_s() == 0.0
    assert net.advance(0.0) == [("x", 0.0)]


def test_add_after_next_event_is_refused():
    net = FluidNetwork(np.array([1.0]))
    net.add(csr([{0: 1}], 1), np.array([1.0]), 0.0, "a")
    with pytest.raises(ValueError):
        net.add(csr([{0: 1}], 1), np.array([1.0]), 5.0, "b")


def test_identical_routes_form_one_class():
    rows = [{0: 1, 1: 0.5, 2: 0.5}] * 50 + [{1: 1}] * 30
    net = FluidNetwork(np.ones(3))
    net.add(csr(rows, 3), np.arange(1.0, 81.0), 0.0, "t")
    assert net._routes.shape[0] == 2  # noqa: SLF001 - aggregation is the point of this test
    net.add(csr([{1: 1}], 3), np.array([1.0]), 0.0, "u")
    assert net._routes.shape[0] == 2  # noqa: SLF001


def test_flows_that_can_never_finish_are_reported():
    with pytest.raises(ValueError):
        simulate_flows(csr([{0: 1}], 1), np.array([1.0]), np.array([0.0]))


# --------------------------------------------------------------------------- replay oracle


def replay_delivered(routes, size, cap, finish):
    """Bytes each flow receives by its finish time, replaying the run with maxmin_rates per flow.

    Independent of the simulator's bookkeeping (no classes, no service counters): between two
    consecutive finish times the active flows are those not yet finished, at their max-min rates.
    """
    delivered = np.zeros(len(size))
    times = np.unique(np.concatenate([[0.0], finish]))
    for t0, t1 in zip(times[:-1], times[1:]):
        active = np.flatnonzero(finish > t0)
        rates = maxmin_rates(routes[active], cap)
        delivered[active] += rates * (t1 - t0)
    return delivered


@st.composite
def flow_instances(draw):
    n_links = draw(st.integers(1, 5))
    n_flows = draw(st.integers(1, 14))
    n_routes = draw(st.integers(1, n_flows))
    routes = []
    for _ in range(n_routes):
        links = draw(st.lists(st.integers(0, n_links - 1), min_size=1, max_size=n_links,
                              unique=True))
        fracs = draw(st.lists(st.sampled_from([0.5, 1.0]), min_size=len(links),
                              max_size=len(links)))
        routes.append(dict(zip(links, fracs)))
    pick = draw(st.lists(st.integers(0, n_routes - 1), min_size=n_flows, max_size=n_flows))
    size = np.array(draw(st.lists(st.floats(0.1, 100.0), min_size=n_flows, max_size=n_flows)))
    cap = np.array(draw(st.lists(st.floats(1.0, 50.0), min_size=n_links, max_size=n_links)))
    return csr([routes[p] for p in pick], n_links), size, cap


@settings(max_examples=200, deadline=None)
@given(flow_instances())
def test_bytes_conserved_exact(inst):
    """Replaying the finish times delivers exactly each flow's size (and no link is overloaded)."""
    routes, size, cap = inst
    finish = simulate_flows(routes, size, cap)
    assert np.all(np.isfinite(finish)) and np.all(finish > 0)
    np.testing.assert_allclose(replay_delivered(routes, size, cap, finish), size, rtol=1e-9)


@settings(max_examples=150, deadline=None)
@given(flow_instances(), st.randoms(use_true_random=False))
def test_order_independent_and_deterministic(inst, rnd):
    routes, size, cap = inst
    finish = simulate_flows(routes, size, cap)
    np.testing.assert_array_equal(finish, simulate_flows(routes, size, cap))
    perm = np.array(rnd.sample(range(len(size)), len(size)))
    permuted = simulate_flows(routes[perm], size[perm], cap)
    np.testing.assert_allclose(permuted, finish[perm], rtol=1e-9)


@settings(max_examples=200, deadline=None)
@given(flow_instances(), st.sampled_from([1e-3, 1e-2, 0.2]))
def test_merge_is_exact_run_of_instance_reduced_by_at_most_tol(inst, tol):
    """The documented bound: a merged run is the exact run of sizes reduced by <= tol * size."""
    routes, size, cap = inst
    finish = simulate_flows(routes, size, cap, merge_rel_tol=tol)
    delivered = replay_delivered(routes, size, cap, finish)
    assert np.all(delivered <= size * (1 + 1e-9))
    assert np.all(delivered >= size * (1 - tol) * (1 - 1e-9))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.1, 100.0), min_size=1, max_size=30), st.sampled_from([1e-3, 0.05]))
def test_merge_on_one_link_is_within_tol_of_exact(sizes, tol):
    # Processor sharing: T_j = sum_i min(s_i, s_j) / C, monotone in every size, so reducing sizes
    # by at most tol (relative) moves every finish time into [(1 - tol) T_j, T_j].
    size = np.array(sizes)
    routes = csr([{0: 1}] * len(size), 1)
    exact = np.array([np.minimum(size, s).sum() for s in size]) / 3.0
    merged = simulate_flows(routes, size, np.array([3.0]), merge_rel_tol=tol)
    np.testing.assert_allclose(simulate_flows(routes, size, np.array([3.0])), exact, rtol=1e-9)
    assert np.all(merged <= exact * (1 + 1e-9))
    assert np.all(merged >= exact * (1 - tol) * (1 - 1e-9))


def test_factored_routes_finish_as_their_written_out_matrix():
    # Three flows from GPU-like rows: access rows 0/1 (links 0, 1) and a shared "fabric" row
    # (link 2, capacity 1) used by flows 0 and 1. Hand oracle: flows 0 and 1 share link 2 at
    # 1/2 each; flow 2 (link 1 only, capacity 4) runs alone at 4 minus what flow 1 takes.
    from simmoe.network.routes import FactoredRoutes

    access = csr([{0: 1.0}, {1: 1.0}], 3)
    fabric = csr([{2: 1.0}], 3)
    routes = FactoredRoutes((np.array([0, 1, 1]), np.array([0, 0, -1])), (access, fabric))
    cap = np.array([10.0, 4.0, 1.0])
    size = np.array([1.0, 2.0, 7.0])
    got = simulate_flows(routes, size, cap)
    np.testing.assert_array_equal(got, simulate_flows(routes.to_csr(), size, cap))
    # t=2: flow 0 done (1 byte at 1/2); then flow 1 alone on link 2 at 1, 1 byte left: t=3.
    # Flow 2 at 3.5 until t=2 (7 bytes), done at t=2.
    np.testing.assert_allclose(got, [2.0, 3.0, 2.0])
