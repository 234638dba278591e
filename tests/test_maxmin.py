"""Max-min fairness by progressive filling: hand-derived oracles and the max-min certificate."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from simmoe.network.maxmin import maxmin_rates


def csr(rows, n_links):
    """rows: list of {link: fraction}."""
    r, c, v = [], [], []
    for i, row in enumerate(rows):
        for link, frac in row.items():
            r.append(i)
            c.append(link)
            v.append(frac)
    return sp.csr_matrix((v, (r, c)), shape=(len(rows), n_links))


def test_three_flows_two_links():
    # link0 cap 10 shared by A, B; link1 cap 4 shared by B, C. Level 2 saturates link1 (B, C
    # freeze at 2); A alone on link0 takes the remaining 10 - 2 = 8.
    routes = csr([{0: 1}, {0: 1, 1: 1}, {1: 1}], 2)
    np.testing.assert_allclose(maxmin_rates(routes, np.array([10.0, 4.0])), [8, 2, 2])


def test_parking_lot_equal_capacities():
    # One long flow over links 0..2, one short flow per link, capacity 1: everyone gets 1/2.
    routes = csr([{0: 1, 1: 1, 2: 1}, {0: 1}, {1: 1}, {2: 1}], 3)
    np.testing.assert_allclose(maxmin_rates(routes, np.ones(3)), [0.5] * 4)


def test_parking_lot_unequal_capacities():
    # Capacities 1, 2, 3: link0 saturates at 1/2 (long and short0 freeze); short1 takes 2 - 1/2,
    # short2 takes 3 - 1/2.
    routes = csr([{0: 1, 1: 1, 2: 1}, {0: 1}, {1: 1}, {2: 1}], 3)
    rates = maxmin_rates(routes, np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(rates, [0.5, 0.5, 1.5, 2.5])


def test_multiplicity_counts_flows_of_a_class():
    # B has 2 flows: link1 holds 2B + C = 4 -> 4/3 each; A = 10 - 2 * 4/3.
    routes = csr([{0: 1}, {0: 1, 1: 1}, {1: 1}], 2)
    rates = maxmin_rates(routes, np.array([10.0, 4.0]), multiplicity=np.array([1, 2, 1]))
    np.testing.assert_allclose(rates, [10 - 8 / 3, 4 / 3, 4 / 3])


def test_rate_bound():
    # C capped at 1; then link1 gives B 4 - 1 = 3; A capped at 3 as well (tie at level 3).
    routes = csr([{0: 1}, {0: 1, 1: 1}, {1: 1}], 2)
    bound = np.array([3, np.inf, 1])
    rates = maxmin_rates(routes, np.array([10.0, 4.0]), rate_bound_bytes_per_s=bound)
    np.testing.assert_allclose(rates, [3, 3, 1])


def test_ecmp_fractional_route():
    # A splits evenly over links 0 and 1 (cap 10 each); B uses link 0 only. Link0 carries
    # 0.5 A + B = 1.5 t -> saturates at t = 20/3 before link1 (0.5 t = 10 at t = 20).
    routes = csr([{0: 0.5, 1: 0.5}, {0: 1}], 2)
    np.testing.assert_allclose(maxmin_rates(routes, np.array([10.0, 10.0])), [20 / 3, 20 / 3])


def test_ecmp_split_flow_gets_more_than_single_path_flows():
    # A splits over links 0, 1 (cap 3 each); B on link 0, C on link 1. Each link holds 0.5 A + one
    # single-path flow: 1.5 t = 3 -> everyone 2 (A moves 1 on each path).
    routes = csr([{0: 0.5, 1: 0.5}, {0: 1}, {1: 1}], 2)
    np.testing.assert_allclose(maxmin_rates(routes, np.array([3.0, 3.0])), [2, 2, 2])


def test_empty_route_gets_its_bound_or_inf():
    routes = csr([{}, {}, {0: 1}], 1)
    bound = np.array([7, np.inf, np.inf])
    rates = maxmin_rates(routes, np.array([5.0]), rate_bound_bytes_per_s=bound)
    np.testing.assert_allclose(rates, [7, np.inf, 5])


def test_infinite_capacity_link_never_binds():
    routes = csr([{0: 1, 1: 1}, {1: 1}], 2)
    np.testing.assert_allclose(maxmin_rates(routes, np.array([np.inf, 6.0])), [3, 3])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"capacity_bytes_per_s": np.array([1.0])},
        {"multiplicity": np.array([0.0, 1.0])},
        {"rate_bound_bytes_per_s": np.array([0.0, 1.0])},
    ],
)
def test_bad_inputs_raise(kwargs):
    args = {"routes": csr([{0: 1}, {1: 1}], 2), "capacity_bytes_per_s": np.ones(2)}
    args.update(kwargs)
    with pytest.raises(ValueError):
        maxmin_rates(**args)


# --------------------------------------------------------------------------- properties


@st.composite
def instances(draw):
    n_links = draw(st.integers(1, 6))
    n_classes = draw(st.integers(1, 12))
    rows = []
    for _ in range(n_classes):
        links = draw(st.lists(st.integers(0, n_links - 1), min_size=1, max_size=n_links,
                              unique=True))
        fracs = draw(st.lists(st.sampled_from([0.25, 0.5, 1.0, 0.3]), min_size=len(links),
                              max_size=len(links)))
        rows.append(dict(zip(links, fracs)))
    cap = np.array(draw(st.lists(st.floats(1.0, 100.0), min_size=n_links, max_size=n_links)))
    mult = np.array(draw(st.lists(st.integers(1, 4), min_size=n_classes, max_size=n_classes)),
                    dtype=float)
    bound = np.array(draw(st.lists(st.one_of(st.just(np.inf), st.floats(0.5, 50.0)),
                                   min_size=n_classes, max_size=n_classes)))
    return csr(rows, n_links), cap, mult, bound


@settings(max_examples=300, deadline=None)
@given(instances())
def test_maxmin_certificate(inst):
    """Feasible, and each class is held by its bound or by a saturated link where it is maximal."""
    routes, cap, mult, bound = inst
    rates = maxmin_rates(routes, cap, mult, bound)
    load = routes.T @ (mult * rates)
    assert np.all(load <= cap * (1 + 1e-9))
    saturated = load >= cap * (1 - 1e-9)
    dense = routes.toarray() > 0
    for c in range(len(rates)):
        if rates[c] >= bound[c] * (1 - 1e-9):
            assert rates[c] <= bound[c] * (1 + 1e-12)
            continue
        holds = [
            l for l in np.flatnonzero(dense[c])
            if saturated[l] and rates[c] >= rates[dense[:, l]].max() * (1 - 1e-9)
        ]
        assert holds, f"class {c} is not limited by any saturated link nor its bound"


@settings(max_examples=200, deadline=None)
@given(instances(), st.randoms(use_true_random=False))
def test_order_independent_and_deterministic(inst, rnd):
    routes, cap, mult, bound = inst
    rates = maxmin_rates(routes, cap, mult, bound)
    np.testing.assert_array_equal(rates, maxmin_rates(routes, cap, mult, bound))
    perm = np.array(rnd.sample(range(len(rates)), len(rates)))
    permuted = maxmin_rates(routes[perm], cap, mult[perm], bound[perm])
    np.testing.assert_allclose(permuted, rates[perm], rtol=1e-9)


@settings(max_examples=200, deadline=None)
@given(instances())
def test_multiplicity_equals_repeated_rows(inst):
    routes, cap, mult, bound = inst
    rates = maxmin_rates(routes, cap, mult, bound)
    repeat = np.repeat(np.arange(len(mult)), mult.astype(int))
    expanded = maxmin_rates(routes[repeat], cap, None, bound[repeat])
    np.testing.assert_allclose(expanded, rates[repeat], rtol=1e-9)


@settings(max_examples=200, deadline=None)
@given(instances(), st.lists(st.integers(0, 5), min_size=1, max_size=4))
def test_merging_identical_links_changes_no_rate(inst, copies):
    """Duplicate some link columns (as ECMP uplinks of one leaf are) with other capacities."""
    from simmoe.network.maxmin import MaxMinProblem

    routes, cap, mult, bound = inst
    picks = [c % routes.shape[1] for c in copies]
    wide = sp.hstack([routes, routes[:, picks]]).tocsr()
    wide_cap = np.concatenate([cap, cap[picks] * 1.5])
    merged = MaxMinProblem(wide, wide_cap).solve(mult, bound)
    plain = MaxMinProblem(wide, wide_cap, merge_links=False).solve(mult, bound)
    np.testing.assert_allclose(merged, plain, rtol=1e-9)
    np.testing.assert_allclose(merged, maxmin_rates(routes, cap, mult, bound), rtol=1e-9)


# ------------------------------------------------------------------------- factored routes


@st.composite
def factored_instances(draw):
    """Random FactoredRoutes: 1-3 tables, keys with -1 (no row), sometimes aliased columns."""
    from simmoe.network.routes import FactoredRoutes

    n_links = draw(st.integers(1, 6))
    n_classes = draw(st.integers(1, 14))
    keys, tables = [], []
    for _ in range(draw(st.integers(1, 3))):
        n_rows = draw(st.integers(1, 5))
        rows = []
        for _ in range(n_rows):
            links = draw(st.lists(st.integers(0, n_links - 1), max_size=n_links, unique=True))
            fracs = draw(st.lists(st.sampled_from([0.25, 0.5, 1.0, 0.3]), min_size=len(links),
                                  max_size=len(links)))
            rows.append(dict(zip(links, fracs)))
        tables.append(csr(rows, n_links))
        keys.append(np.array(draw(st.lists(st.integers(-1, n_rows - 1), min_size=n_classes,
                                           max_size=n_classes))))
    alias = None
    if n_links > 1 and draw(st.booleans()):
        # Alias the last link to the first: its column is the first one's, not stored.
        alias = np.arange(n_links)
        alias[-1] = 0
        tables = [sp.csr_matrix(t.multiply(np.r_[np.ones(n_links - 1), 0.0])) for t in tables]
    cap = np.array(draw(st.lists(st.floats(1.0, 100.0), min_size=n_links, max_size=n_links)))
    mult = np.array(draw(st.lists(st.integers(1, 4), min_size=n_classes, max_size=n_classes)),
                    dtype=float)
    bound = np.array(draw(st.lists(st.one_of(st.just(np.inf), st.floats(0.5, 50.0)),
                                   min_size=n_classes, max_size=n_classes)))
    return FactoredRoutes(tuple(keys), tuple(tables), alias), cap, mult, bound


@settings(max_examples=300, deadline=None)
@given(factored_instances(), st.sampled_from([1, 16, 10**9]))
def test_factored_routes_give_the_rates_of_their_written_out_matrix(inst, dense_fraction):
    """The solver on the factors (kept, not written out) equals the solver on the plain CSR, with
    rounds on index lists, on boolean masks (dense_fraction 1e9: every round) or mixed."""
    from unittest import mock

    from simmoe.network import maxmin

    routes, cap, mult, bound = inst
    plain = maxmin_rates(routes.to_csr(), cap, mult, bound)
    with mock.patch.object(maxmin, "MATERIALIZE_MAX_NNZ", -1), \
            mock.patch.object(maxmin, "DENSE_ROUND_FRACTION", dense_fraction):
        factored = maxmin_rates(routes, cap, mult, bound)
        # The plain CSR through the same round kinds (index lists, masks).
        np.testing.assert_allclose(maxmin_rates(routes.to_csr(), cap, mult, bound), plain,
                                   rtol=1e-12)
        # A subset of active classes, as the fluid simulation solves.
        active = np.arange(len(mult)) % 2 == 0
        sub = maxmin.MaxMinProblem(routes, cap).solve(mult, bound, active)
    np.testing.assert_allclose(factored, plain, rtol=1e-12)
    np.testing.assert_array_equal(np.isinf(factored), np.isinf(plain))
    sub_plain = maxmin.MaxMinProblem(routes.to_csr(), cap).solve(mult, bound, active)
    np.testing.assert_allclose(sub, sub_plain, rtol=1e-12)
    # Small problems are written out and solved as a CSR: the same rates again.
    np.testing.assert_allclose(maxmin_rates(routes, cap, mult, bound), plain, rtol=1e-12)


def test_aliased_link_binds_with_the_groups_smallest_capacity():
    # Two flows on links 0 and 1, whose columns are identical (1 aliased to 0, not stored).
    # Link 1 is the tighter (cap 2): each flow gets 1, not link 0's 5.
    from simmoe.network.routes import FactoredRoutes

    routes = FactoredRoutes((np.array([0, 0]),), (csr([{0: 1.0}], 2),), np.array([0, 0]))
    assert routes.to_csr().toarray().tolist() == [[1.0, 1.0], [1.0, 1.0]]
    np.testing.assert_allclose(maxmin_rates(routes, np.array([5.0, 2.0])), [1.0, 1.0])
