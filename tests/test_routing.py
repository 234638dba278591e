"""Routing model: oracles by hand or analytic, the exact per-token sampler as the oracle of the
aggregated one, hypothesis properties. Runs in well under 30 s."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from simmoe.errors import InputError
from simmoe.routing import (
    sample_raw,
    DriftPolicy,
    EPGroup,
    RoutingModel,
    apply_capacity,
    block_inclusion_probabilities,
    dirichlet_popularity,
    draw_rng,
    exact_token_choice,
    inclusion_from_popularity,
    inclusion_probabilities,
    load_expert_trace,
    max_over_mean,
    threshold_block_inclusion,
    token_choice_selection,
    weights_for_inclusion,
    zipf_popularity,
)


def make_group(experts=8, ep=4, nodes=2, tokens=128, k=2) -> EPGroup:
    return EPGroup(expert_to_rank=np.arange(experts) // (experts // ep),
                   rank_to_node=np.arange(ep) // (ep // nodes), tokens_per_rank=tokens, top_k=k)


def write_trace(path, rows, *, schema=None):
    cols = {name: [r[i] for r in rows] for i, name in enumerate(schema or ("layer", "expert",
                                                                            "tokens"))}
    pq.write_table(pa.table(cols), path)
    return path


# --- inclusion probabilities -----------------------------------------------------------------------

def test_inclusion_top1_is_weight_share():
    w = np.array([5.0, 3.0, 1.0, 1.0])
    np.testing.assert_allclose(inclusion_probabilities(w, 1), w / w.sum(), atol=1e-6)


def test_inclusion_top2_of_3_hand_formula():
    # P(e not in top-2 of 3) = P(e is drawn last) = sum over orders (a, b) of the other two.
    w = np.array([0.6, 0.3, 0.1])
    expected = []
    for e in range(3):
        a, b = [i for i in range(3) if i != e]
        last = w[a] * w[b] / (1 - w[a]) + w[b] * w[a] / (1 - w[b])
        expected.append(1 - last)
    np.testing.assert_allclose(inclusion_probabilities(w, 2), expected, atol=1e-6)


def test_weights_for_inclusion_round_trip_and_forced():
    p = zipf_popularity(64, 1.0, np.random.default_rng(3))
    pi = inclusion_from_popularity(p, 6)
    assert pi.max() == 1.0  # Zipf(1) over 64 experts with k=6 caps the hottest expert
    w = weights_for_inclusion(pi, 6)
    assert np.isinf(w[pi == 1.0]).all()
    np.testing.assert_allclose(inclusion_probabilities(w, 6), pi, atol=1e-5)


def test_threshold_block_inclusion_close_to_exact_at_deepseek_size():
    g = make_group(experts=256, ep=64, nodes=8, k=8)
    p = zipf_popularity(256, 0.8, np.random.default_rng(0))
    pi = inclusion_from_popularity(p, 8)
    w = weights_for_inclusion(pi, 8)[g.expert_order]
    blocks = ((g.rank_starts, g.rank_ends, 0.01), (g.node_starts, g.node_ends, 0.02))
    for starts, ends, tol in blocks:  # 4-expert ranks within 1%, 32-expert nodes within 2%
        exact = block_inclusion_probabilities(w, 8, starts, ends)
        approx = threshold_block_inclusion(pi[g.expert_order], 8, starts, ends)
        assert np.max(np.abs(approx - exact) / exact) < tol


# --- uniform load, capacity, drops -----------------------------------------------------------------

def test_uniform_no_capacity_mean_load_is_tk_over_e():
    g = make_group(experts=16, ep=4, nodes=2, tokens=256, k=4)
    model = RoutingModel(g, num_layers=1, seed=5)
    loads = np.array([model.draw(0, 0, mb).tokens_per_expert for mb in range(200)])
    expected = g.ep * g.tokens_per_rank * g.top_k / g.num_experts  # 256
    assert (loads.sum(axis=1) == g.ep * g.tokens_per_rank * g.top_k).all()
    # Within 4 standard errors of the mean (an expert's load varies by ~14 tokens per draw).
    stderr = loads.std(axis=0) / np.sqrt(len(loads))
    assert (np.abs(loads.mean(axis=0) - expected) < 4 * stderr).all()
    d = model.draw(0, 0, 0)
    assert d.execution == "dropless" and d.dropped_assignments == 0 and d.capacity is None


def test_capacity_hand_case():
    counts = np.array([[6, 2, 0, 0]])  # T=8 tokens, k=1, E=4, C=1 -> capacity ceil(8/4) = 2
    res = apply_capacity(counts, tokens_per_rank=8, top_k=1, capacity_factor=1.0)
    assert res.capacity == 2
    np.testing.assert_array_equal(res.processed_tokens_per_src_expert, [[2, 2, 0, 0]])
    assert (counts - res.processed_tokens_per_src_expert).sum() / counts.sum() == 0.5
    # Padded: every expert computes its full capacity, E * capacity slots.
    assert res.compute_tokens_per_expert.sum() == 4 * 2
    # C = 1.25 -> ceil(2.5) = 3.
    assert apply_capacity(counts, tokens_per_rank=8, top_k=1, capacity_factor=1.25).capacity == 3


def test_group_scope_capacity_shares_drops_by_contribution():
    counts = np.array([[6, 0], [2, 4]])  # ep=2, T=4, k=2, E=2: group capacity ceil(1*8*2/2)=8
    res = apply_capacity(counts, tokens_per_rank=4, top_k=2, capacity_factor=0.5, scope="group")
    assert res.capacity == 4
    np.testing.assert_array_equal(res.processed_tokens_per_src_expert, [[3, 0], [1, 4]])


def analytic_drop_fraction(pi, tokens, k, cap):
    """E[sum_e max(0, X_e - cap)] / (T k), X_e ~ Binomial(T, pi_e) per source rank."""
    x = np.arange(tokens + 1)
    over = np.maximum(x - cap, 0)
    return sum((stats.binom.pmf(x, tokens, p) * over).sum() for p in pi) / (tokens * k)


@pytest.mark.parametrize("sampler", ["aggregated", "exact"])
def test_zipf_capacity_one_drops_match_analytic(sampler):
    g = make_group(experts=8, ep=4, nodes=2, tokens=256, k=2)
    model = RoutingModel(g, num_layers=1, popularity="zipf", zipf_s=1.0, capacity_factor=1.0,
                         sampler=sampler, seed=11)
    pi = model.probabilities(0, 0).pi
    cap = 64  # ceil(1.0 * 256 * 2 / 8)
    expected = analytic_drop_fraction(pi, 256, 2, cap)
    assert expected > 0.2  # strong skew: capacity 1.0 must drop a lot
    draws = [model.draw(0, 0, mb) for mb in range(100)]
    got = np.mean([d.dropped_fraction for d in draws])
    assert got == pytest.approx(expected, rel=0.03)
    d = draws[0]
    assert d.capacity == cap and d.execution == "padded"
    assert d.compute_tokens_per_expert.sum() == g.ep * g.num_experts * cap
    np.testing.assert_array_equal(d.dispatch_tokens_per_src_dst_rank, np.full((4, 4), 2 * cap))


def test_dropped_style_moves_only_survivors():
    g = make_group(experts=8, ep=4, nodes=2, tokens=256, k=2)
    model = RoutingModel(g, num_layers=1, popularity="zipf", zipf_s=1.0, capacity_factor=1.0,
                         pad_to_capacity=False, seed=2)
    d = model.draw(0, 0, 0)
    assert d.execution == "dropped" and d.dropped_assignments > 0
    np.testing.assert_array_equal(d.compute_tokens_per_expert, d.processed_tokens_per_expert)
    assert (d.dispatch_tokens_per_src_dst_rank <= d.tokens_per_src_dst_rank).all()


# --- dedup and node limits -------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["aggregated", "exact"])
def test_token_picking_two_experts_on_one_rank_is_sent_once(sampler, tmp_path):
    # Experts 0 and 1 live on rank 0; a trace giving them all the load forces every token to pick
    # both (pi = 1 each with k = 2): 2T assignments to rank 0 but only T distinct tokens.
    path = write_trace(tmp_path / "t.parquet", [(0, 0, 10), (0, 1, 10)])
    g = EPGroup(np.array([0, 0, 1, 1]), np.array([0, 1]), tokens_per_rank=50, top_k=2)
    model = RoutingModel(g, num_layers=1, popularity="trace", trace=path, sampler=sampler)
    d = model.draw(0, 0, 0)
    np.testing.assert_array_equal(d.tokens_per_src_expert, [[50, 50, 0, 0], [50, 50, 0, 0]])
    np.testing.assert_array_equal(d.tokens_per_src_dst_rank, [[50, 0], [50, 0]])
    np.testing.assert_array_equal(d.tokens_per_src_dst_node, [[50, 0], [50, 0]])


def inter_node_tokens(draw: object, group: EPGroup) -> int:
    own = group.rank_node_index
    mat = draw.tokens_per_src_dst_node.copy()
    mat[np.arange(group.ep), own] = 0
    return int(mat.sum())


def test_node_limit_one_keeps_every_token_on_one_node_exact():
    g = make_group(experts=32, ep=8, nodes=4, tokens=64, k=4)
    w = weights_for_inclusion(inclusion_from_popularity(
        zipf_popularity(32, 0.7, np.random.default_rng(1)), 4), 4)
    sel = token_choice_selection(g, w, np.random.default_rng(2), max_nodes_per_token=1)
    nodes_per_token = (sel.astype(float) @ g.rank_one_hot @ g.node_one_hot > 0).sum(axis=1)
    assert (nodes_per_token == 1).all() and (sel.sum(axis=1) == 4).all()
    free = token_choice_selection(g, w, np.random.default_rng(2))
    assert (free.astype(float) @ g.rank_one_hot @ g.node_one_hot > 0).sum(axis=1).max() > 1


@pytest.mark.parametrize("sampler", ["aggregated", "exact"])
def test_node_limit_cuts_inter_node_traffic(sampler):
    g = make_group(experts=32, ep=8, nodes=4, tokens=128, k=8)
    kw = dict(num_layers=1, popularity="zipf", zipf_s=0.5, sampler=sampler, seed=4)
    free = RoutingModel(g, **kw)
    limited = RoutingModel(g, max_nodes_per_token=2, **kw)
    a = sum(inter_node_tokens(free.draw(0, 0, mb), g) for mb in range(20))
    b = sum(inter_node_tokens(limited.draw(0, 0, mb), g) for mb in range(20))
    assert b < 0.75 * a


# --- aggregated sampler vs the exact per-token sampler ---------------------------------------------

def sample_stats(model, reps):
    draws = [model.draw(0, 0, mb) for mb in range(reps)]
    out = {}
    for name in ("tokens_per_src_expert", "tokens_per_src_dst_rank", "tokens_per_src_dst_node"):
        arr = np.array([getattr(d, name) for d in draws], dtype=float)
        out[name] = (arr.mean(axis=(0, 1)), arr.var(axis=0).mean(axis=0))  # pooled over sources
    return out


@pytest.mark.parametrize("node_limit", [None, 2])
def test_aggregated_matches_exact_means_and_variances(node_limit):
    g = make_group(experts=16, ep=4, nodes=4, tokens=128, k=4)
    kw = dict(num_layers=1, popularity="zipf", zipf_s=0.8, max_nodes_per_token=node_limit,
              inclusion_method="exact", seed=7)
    exact = sample_stats(RoutingModel(g, sampler="exact", **kw), 300)
    agg = sample_stats(RoutingModel(g, sampler="aggregated", **kw), 300)
    mean_tol = 0.03 if node_limit is None else 0.08  # node-limited: documented approximation
    for name, (m_exact, v_exact) in exact.items():
        m_agg, v_agg = agg[name]
        assert np.max(np.abs(m_agg - m_exact) / m_exact) < mean_tol, name
        ratio = v_agg / v_exact
        assert 0.8 < np.median(ratio) < 1.25, (name, ratio)


def test_expert_choice_balanced_and_unrouted_matches_analytic():
    g = make_group(experts=8, ep=4, nodes=2, tokens=128, k=2)
    for sampler in ("exact", "aggregated"):
        model = RoutingModel(g, num_layers=1, routing="expert_choice", capacity_factor=1.0,
                             sampler=sampler, seed=3)
        draws = [model.draw(0, 0, mb) for mb in range(60)]
        cap = 128  # ceil(1.0 * 512 * 2 / 8)
        for d in draws[:3]:
            np.testing.assert_array_equal(d.tokens_per_expert, np.full(8, cap))
            assert d.dropped_assignments == 0 and d.expert_load_max_over_mean == 1.0
        q = cap / 512
        unrouted = np.mean([d.unrouted_tokens_per_src.sum() / 512 for d in draws])
        assert unrouted == pytest.approx((1 - q) ** 8, rel=0.06)  # 0.1001
        rank_tokens = np.mean([d.tokens_per_src_dst_rank.mean() for d in draws])
        assert rank_tokens == pytest.approx(128 * (1 - (1 - q) ** 2), rel=0.02)


# --- popularity, drift, trace ----------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300), st.floats(0, 3), st.floats(0.01, 10), st.integers(0, 2**32 - 1))
def test_popularity_vectors_sum_to_one(n, s, alpha, seed):
    rng = np.random.default_rng(seed)
    for p in (zipf_popularity(n, s, rng), dirichlet_popularity(n, alpha, rng)):
        assert p.sum() == pytest.approx(1.0) and (p > 0).all()
    for kind in ("collapse", "aux_loss", "bias_balancing"):
        q = DriftPolicy(kind).apply(zipf_popularity(n, s, rng), 700, top_k=1)
        assert q.sum() == pytest.approx(1.0) and (q >= 0).all()


def test_drift_policies():
    p0 = zipf_popularity(64, 1.2, np.random.default_rng(0))
    assert max_over_mean(p0) > 5
    aux, bias = DriftPolicy("aux_loss"), DriftPolicy("bias_balancing")
    assert max_over_mean(aux.apply(p0, 100_000, top_k=8)) == pytest.approx(1.25)
    assert max_over_mean(bias.apply(p0, 100_000, top_k=8)) == pytest.approx(1.05)
    # Bias balancing recovers faster than the aux loss.
    assert max_over_mean(bias.apply(p0, 200, top_k=8)) < max_over_mean(aux.apply(p0, 200, top_k=8))
    collapse = DriftPolicy("collapse", collapse_experts=4)
    late = collapse.apply(np.full(64, 1 / 64), 100_000, top_k=8, tie_break=np.arange(64))
    assert np.sort(late)[-4:].sum() == pytest.approx(0.9)
    early = collapse.apply(np.full(64, 1 / 64), 100, top_k=8, tie_break=np.arange(64))
    assert max_over_mean(early) < max_over_mean(late)
    np.testing.assert_array_equal(DriftPolicy("none").apply(p0, 10**6, top_k=8), p0)
    with pytest.raises(InputError, match="drift"):
        DriftPolicy("sometimes")


def test_trace_replay(tmp_path):
    rows = [(0, 0, 30, 0), (0, 1, 10, 0), (1, 2, 5, 0), (1, 3, 5, 0),
            (0, 0, 10, 100), (0, 1, 30, 100), (1, 2, 5, 100), (1, 3, 5, 100)]
    path = write_trace(tmp_path / "t.parquet", rows, schema=("layer", "expert", "tokens", "step"))
    trace = load_expert_trace(path, num_experts=4)
    np.testing.assert_allclose(trace.popularity(0, 0), [0.75, 0.25, 0, 0])
    np.testing.assert_allclose(trace.popularity(0, 99), [0.75, 0.25, 0, 0])
    np.testing.assert_allclose(trace.popularity(0, 250), [0.25, 0.75, 0, 0])
    model = RoutingModel(EPGroup(np.array([0, 0, 1, 1]), np.array([0, 0]), 64, 1),
                         num_layers=2, popularity="trace", trace=trace)
    np.testing.assert_allclose(model.popularity(150, 1), [0, 0, 0.5, 0.5])
    assert not model.popularity_is_static


@pytest.mark.parametrize("rows, schema, field, message", [
    ([(0, 0)], ("layer", "expert"), "tokens", "missing column"),
    ([(0, 0.5, 3)], None, "expert", "integer"),
    ([(0, 0, -3)], None, "tokens", ">= 0"),
    ([(0, 9, 3)], None, "expert", "out of range"),
    ([(0, 1, 3), (0, 1, 4)], None, "expert", "duplicate"),
])
def test_bad_trace_files_name_file_and_column(tmp_path, rows, schema, field, message):
    path = write_trace(tmp_path / "bad.parquet", rows, schema=schema)
    with pytest.raises(InputError, match=message) as err:
        load_expert_trace(path, num_experts=4)
    assert err.value.file == str(path) and err.value.field == field


def test_unreadable_or_missing_trace(tmp_path):
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(InputError, match="cannot read as Parquet") as err:
        load_expert_trace(junk, 4)
    assert str(junk) in str(err.value)
    with pytest.raises(InputError, match="not found"):
        load_expert_trace(tmp_path / "nope.parquet", 4)
    ok = write_trace(tmp_path / "ok.parquet", [(0, 0, 1), (0, 1, 1)])
    model = RoutingModel(EPGroup(np.array([0, 0, 1, 1]), np.array([0, 0]), 8, 1), num_layers=2,
                         popularity="trace", trace=ok)
    with pytest.raises(InputError, match="no rows for MoE layer 1") as err:
        model.draw(0, 1, 0)
    assert err.value.file == str(ok)
    too_few = RoutingModel(EPGroup(np.array([0, 0, 1, 1]), np.array([0, 0]), 8, 3),
                           num_layers=1, popularity="trace", trace=ok)
    with pytest.raises(InputError, match="fewer than top_k"):
        too_few.draw(0, 0, 0)


# --- validation -----------------------------------------------------------------------------------

def test_invalid_arguments_raise_input_errors():
    g = make_group()
    with pytest.raises(InputError, match="expert_choice|expert-choice"):
        RoutingModel(g, num_layers=1, routing="expert_choice")
    with pytest.raises(InputError, match="capacity factor"):
        RoutingModel(g, num_layers=1, pad_to_capacity=True)
    with pytest.raises(InputError, match="rank outside"):
        EPGroup(np.array([0, 5]), np.array([0, 0]), 8, 1)
    with pytest.raises(InputError, match="top_k"):
        EPGroup(np.array([0, 1]), np.array([0, 0]), 8, 3)
    with pytest.raises(InputError, match="fewer than top_k"):
        RoutingModel(make_group(experts=8, ep=4, nodes=4, k=4), num_layers=1, max_nodes_per_token=1)
    with pytest.raises(InputError, match="out of range"):
        RoutingModel(g, num_layers=2).draw(0, 2, 0)


# --- hypothesis: conservation, bounds, determinism -------------------------------------------------

group_params = st.tuples(
    st.sampled_from([(8, 4, 2), (16, 4, 4), (16, 8, 2), (12, 6, 3), (6, 2, 1)]),  # E, ep, nodes
    st.integers(1, 4),  # k
    st.integers(1, 64),  # tokens per rank
    st.sampled_from(["uniform", "zipf", "dirichlet"]),
    st.sampled_from([None, 0.5, 1.0, 1.25]),
    st.sampled_from(["aggregated", "exact"]),
    st.sampled_from([None, 1, 2]),
    st.integers(0, 2**31 - 1),
)


@settings(max_examples=60, deadline=None)
@given(group_params)
def test_conservation_and_bounds(params):
    (experts, ep, nodes), k, tokens, pop, cf, sampler, limit, seed = params
    g = make_group(experts, ep, nodes, tokens, k)
    if limit is not None and (limit >= nodes or limit * experts // nodes < k):
        limit = None
    model = RoutingModel(g, num_layers=2, popularity=pop, capacity_factor=cf, sampler=sampler,
                         max_nodes_per_token=limit, zipf_s=1.2, dirichlet_alpha=0.3, seed=seed)
    d = model.draw(seed % 5, 1, seed % 3)
    a = d.tokens_per_src_expert
    assert (a.sum(axis=1) == tokens * k).all() and (a >= 0).all() and (a <= tokens).all()
    np.testing.assert_array_equal(d.processed_tokens_per_src_expert
                                  + d.dropped_tokens_per_src_expert, a)
    assert (d.dropped_tokens_per_src_expert >= 0).all()
    if cf is None:
        assert d.dropped_assignments == 0
    dst = d.tokens_per_src_dst_rank
    per_rank = np.array([a[:, g.expert_to_rank == r].sum(axis=1) for r in range(ep)]).T
    assert (dst <= tokens).all() and (dst <= per_rank).all() and (dst >= 0).all()
    assert ((per_rank > 0) <= (dst > 0)).all()
    node = d.tokens_per_src_dst_node
    for n in range(g.num_nodes):
        on_node = dst[:, g.rank_node_index == n]
        assert (node[:, n] <= tokens).all() and (node[:, n] >= on_node.max(axis=1)).all()
        assert (node[:, n] <= on_node.sum(axis=1)).all()
    again = RoutingModel(g, num_layers=2, popularity=pop, capacity_factor=cf, sampler=sampler,
                         max_nodes_per_token=limit, zipf_s=1.2, dirichlet_alpha=0.3, seed=seed)
    d2 = again.draw(seed % 5, 1, seed % 3)
    for name in ("tokens_per_src_expert", "tokens_per_src_dst_rank", "tokens_per_src_dst_node"):
        np.testing.assert_array_equal(getattr(d, name), getattr(d2, name))


def test_draws_are_independent_of_order_and_keyed_by_indices():
    g = make_group()
    m1 = RoutingModel(g, num_layers=3, popularity="zipf", seed=9)
    m2 = RoutingModel(g, num_layers=3, popularity="zipf", seed=9)
    keys = list(itertools.product(range(2), range(3), range(3)))
    first = {key: m1.draw(*key).tokens_per_src_expert for key in keys}
    for key in reversed(keys):  # other order, other instance: same draws
        np.testing.assert_array_equal(m2.draw(*key).tokens_per_src_expert, first[key])
    assert not np.array_equal(first[(0, 0, 0)], first[(0, 0, 1)])
    assert not np.array_equal(m1.draw(0, 0, 0, replica=1).tokens_per_src_expert, first[(0, 0, 0)])
    other_seed = RoutingModel(g, num_layers=3, popularity="zipf", seed=10)
    assert not np.array_equal(other_seed.draw(0, 0, 0).tokens_per_src_expert, first[(0, 0, 0)])
    a, b = draw_rng(1, 2, 3, 4).random(4), draw_rng(1, 2, 3, 4).random(4)
    np.testing.assert_array_equal(a, b)


def test_exact_sampler_counts_match_selection():
    g = make_group(experts=8, ep=2, nodes=1, tokens=16, k=3)
    w = np.ones(8)
    raw = exact_token_choice(g, w, np.random.default_rng(0))
    sel = token_choice_selection(g, w, np.random.default_rng(0))
    np.testing.assert_array_equal(raw.tokens_per_src_expert, sel.reshape(2, 16, 8).sum(axis=1))
    assert (raw.tokens_per_src_dst_node == 16).all()  # one node: every token reaches it


# --- blocks of micro-batches (the aggregated token-choice sampler) --------------------------------

FIELDS = ("tokens_per_src_expert", "tokens_per_src_dst_rank", "tokens_per_src_dst_node",
          "compute_tokens_per_expert", "compute_tokens_per_rank",
          "dispatch_tokens_per_src_dst_rank", "dispatch_tokens_per_src_dst_node")


def assert_same_draw(a, b):
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=name)
        else:
            assert x == y, name


# An irregular placement: experts scattered over ranks, ranks holding 1-5 experts, ranks of a node
# not numbered together. Exercises the general (non-contiguous, unequal) paths of the block sampler.
IRREGULAR = EPGroup(expert_to_rank=np.array([3, 0, 1, 3, 2, 5, 4, 4, 0, 3, 5, 1, 3, 2, 4, 3]),
                    rank_to_node=np.array([1, 0, 1, 0, 1, 0]), tokens_per_rank=96, top_k=3)


@pytest.mark.parametrize("group", [make_group(experts=16, ep=4, nodes=2, tokens=100, k=4),
                                   IRREGULAR])
def test_single_draw_is_its_slice_of_the_batch(group):
    model = RoutingModel(group, num_layers=2, popularity="zipf", zipf_s=1.0, seed=4)
    batch = model.draw_batch(3, 1, range(20))  # three blocks, the last one partly used
    other = RoutingModel(group, num_layers=2, popularity="zipf", zipf_s=1.0, seed=4)
    for mb in (17, 0, 9, 7, 8, 19, 1):  # any order, another instance, blocks revisited
        assert_same_draw(other.draw(3, 1, mb), batch[mb])
    # Fewer micro-batches (a smaller run) or a subset: the same draws.
    for mb, d in zip([5, 2, 16], model.draw_batch(3, 1, [5, 2, 16])):
        assert_same_draw(d, batch[mb])
    for mb, d in enumerate(model.draw_batch(3, 1, range(3))):
        assert_same_draw(d, batch[mb])
    # Every micro-batch is a draw of its own; replicas, layers and steps have their own streams.
    counts = [d.tokens_per_src_expert for d in batch]
    assert all(not np.array_equal(counts[i], counts[j]) for i in range(20) for j in range(i))
    for key in ((3, 1, 0, 1), (3, 0, 0, 0), (2, 1, 0, 0)):
        assert not np.array_equal(model.draw(*key[:3], replica=key[3]).tokens_per_src_expert,
                                  counts[0])


def test_block_draws_are_consistent_and_bounded_on_an_irregular_placement():
    g = IRREGULAR
    model = RoutingModel(g, num_layers=1, popularity="dirichlet", dirichlet_alpha=0.5,
                         max_nodes_per_token=1, seed=8)
    for d in model.draw_batch(0, 0, range(16)):
        a = d.tokens_per_src_expert
        assert a.dtype == np.int64 and (a.sum(axis=1) == 96 * 3).all()
        assert (a >= 0).all() and (a <= 96).all()
        np.testing.assert_array_equal(d.compute_tokens_per_expert, a.sum(axis=0))
        per_rank = np.array([a[:, g.expert_to_rank == r].sum(axis=1) for r in range(g.ep)]).T
        np.testing.assert_array_equal(d.compute_tokens_per_rank, per_rank.sum(axis=0))
        dst = d.tokens_per_src_dst_rank
        max_expert = np.array([a[:, g.expert_to_rank == r].max(axis=1) for r in range(g.ep)]).T
        assert (dst <= per_rank).all() and (dst >= max_expert).all() and (dst <= 96).all()
        node = d.tokens_per_src_dst_node
        for n in range(g.num_nodes):
            on_node = dst[:, g.rank_node_index == n]
            assert (node[:, n] >= on_node.max(axis=1)).all()
            assert (node[:, n] <= np.minimum(on_node.sum(axis=1), 96)).all()
        # Node limit 1: every token's experts sit on one node, so distinct tokens per node sum
        # to the rank's tokens in expectation (checked loosely: never more than 2x).
        assert (node.sum(axis=1) <= 2 * 96).all()


def _field_stats(draws, name):
    arr = np.array([getattr(d, name) for d in draws], dtype=float)
    return arr.mean(axis=0), arr.var(axis=0, ddof=1)


@pytest.mark.parametrize("tokens, kw", [
    (100, dict(popularity="zipf", zipf_s=0.8)),  # variances < 30: binomial columns
    (1000, dict(popularity="zipf", zipf_s=0.8)),  # mostly the normal approximation
    (1000, dict(popularity="zipf", zipf_s=1.2, max_nodes_per_token=2)),
    (400, dict(popularity="uniform")),
])
def test_block_sampler_matches_the_per_draw_sampler_in_distribution(tokens, kw):
    # The engine's block sampler against sample_raw (one stream per draw, the plain form of the
    # same model), entry by entry: means within 4.5 standard errors, variances within 25% (and
    # their median ratio within 10%).
    g = EPGroup(np.arange(64) // 4, np.arange(16) // 4, tokens, 4)
    model = RoutingModel(g, num_layers=1, seed=21, **kw)
    n = 800
    block = model.draw_batch(0, 0, range(n))
    probs = model.probabilities(0, 0)
    plain = [model._finish_draw(sample_raw(g, probs, draw_rng(99, 0, 0, mb))) for mb in range(n)]
    for name in FIELDS:
        m_b, v_b = _field_stats(block, name)
        m_p, v_p = _field_stats(plain, name)
        se = np.sqrt((v_b + v_p) / n)
        live = v_p > 0.5  # entries that vary at all (e.g. not a forced expert's full rank)
        assert (np.abs(m_b - m_p) <= 4.5 * se + 1e-9).all(), name
        ratio = v_b[live] / v_p[live]
        assert 0.9 < np.median(ratio) < 1.1, (name, np.median(ratio))
        # Sampling error of a variance from 800 draws is ~5%: 25% is far outside it.
        assert ((ratio > 0.75) & (ratio < 1.33)).mean() > 0.99, (name, ratio.min(), ratio.max())


def test_micro_batches_of_a_block_are_uncorrelated():
    g = make_group(experts=16, ep=4, nodes=2, tokens=256, k=4)
    model = RoutingModel(g, num_layers=1, popularity="zipf", zipf_s=0.5, seed=6)
    loads = np.array([d.compute_tokens_per_expert for d in model.draw_batch(0, 0, range(1600))],
                     dtype=float)
    assert (loads.var(axis=0) > 0).all()
    c = loads - loads.mean(axis=0)
    for lag in range(1, 9):  # within a block (lags < 8) and across its boundary
        r = (c[:-lag] * c[lag:]).mean(axis=0) / c.var(axis=0)
        assert np.abs(r).mean() < 4 / np.sqrt(len(loads)), (lag, r)
