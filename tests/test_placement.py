"""Placement: rank <-> coordinates <-> GPU (Megatron RankGenerator order) and expert <-> EP rank."""

from __future__ import annotations

from math import prod

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simmoe.errors import InputError
from simmoe.placement import (
    GROUP_DIMS,
    ParallelLayout,
    ep_group_num_nodes,
    ep_rank_node,
    experts_of_rank,
    experts_per_rank,
    node_of_expert,
    place_experts,
)

# ---------------------------------------------------------------------------------------------
# Hand-derived oracles


def test_tp2_dp4_pp2_default_order():
    layout = ParallelLayout(tp=2, pp=2, cp=1, dp=4, ep=2)
    assert layout.world_size == 16
    assert layout.groups("tp").tolist() == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15]]
    assert layout.groups("dp").tolist() == [[0, 2, 4, 6], [1, 3, 5, 7], [8, 10, 12, 14], [9, 11, 13, 15]]
    assert layout.groups("pp").tolist() == [[r, r + 8] for r in range(8)]
    assert layout.groups("dp_cp").tolist() == layout.groups("dp").tolist()  # cp = 1
    # MoE view: expert_tp=1, ep=2 (stride 1), edp=4 (stride 2), pp (stride 8)
    assert layout.edp == 4
    assert layout.groups("ep").tolist() == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15]]
    assert layout.groups("edp").tolist() == [[0, 2, 4, 6], [1, 3, 5, 7], [8, 10, 12, 14], [9, 11, 13, 15]]
    assert layout.groups("expert_tp").tolist() == [[r] for r in range(16)]
    assert layout.stage_of_rank.tolist() == [0] * 8 + [1] * 8


def test_expert_tp_refactors_a_stage():
    # tp=2, dp=4 per stage re-factored as expert_tp=2 (stride 1) x ep=4 (stride 2) x edp=1
    layout = ParallelLayout(tp=2, pp=2, cp=1, dp=4, ep=4, expert_tp=2)
    assert layout.edp == 1
    assert layout.groups("ep").tolist() == [[0, 2, 4, 6], [1, 3, 5, 7], [8, 10, 12, 14], [9, 11, 13, 15]]
    assert layout.groups("expert_tp").tolist() == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15]]
    assert layout.groups("edp").tolist() == [[r] for r in range(16)]
    assert layout.groups("expert_tp_ep").tolist() == [list(range(8)), list(range(8, 16))]


def test_context_parallel_and_dp_cp():
    layout = ParallelLayout(tp=2, pp=1, cp=2, dp=2, ep=4)
    assert layout.groups("cp").tolist() == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert layout.groups("dp").tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout.groups("dp_cp").tolist() == [[0, 2, 4, 6], [1, 3, 5, 7]]
    # MoE: ep=4 over the 8 ranks of the single stage, edp = 8/4 = 2
    assert layout.groups("ep").tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert layout.groups("edp").tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_megatron_docstring_example():
    # Megatron-LM initialize_model_parallel docstring: 16 GPUs, tp=2, pp=4 (so dp=2).
    layout = ParallelLayout(tp=2, pp=4, cp=1, dp=2, ep=1)
    assert layout.groups("dp").tolist() == [[0, 2], [1, 3], [4, 6], [5, 7], [8, 10], [9, 11], [12, 14], [13, 15]]
    assert layout.groups("tp").tolist() == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15]]
    assert layout.groups("pp").tolist() == [[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14], [3, 7, 11, 15]]


def test_pp_before_dp_order():
    # PP not last needs edp == dp (Megatron's rule), hence expert_tp = tp here.
    layout = ParallelLayout(tp=2, pp=2, cp=1, dp=2, ep=1, expert_tp=2, order="tp-pp-dp")
    assert layout.order == "tp-pp-dp-cp-ep"
    assert layout.groups("pp").tolist() == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert layout.groups("dp").tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout.stage_of_rank.tolist() == [0, 0, 1, 1, 0, 0, 1, 1]


def test_dp_innermost_order():
    layout = ParallelLayout(tp=2, pp=1, cp=1, dp=2, ep=1, order="dp-tp-pp")
    assert layout.groups("dp").tolist() == [[0, 1], [2, 3]]
    assert layout.groups("tp").tolist() == [[0, 2], [1, 3]]


def test_coords_and_rank_of_by_hand():
    layout = ParallelLayout(tp=2, pp=2, cp=1, dp=4, ep=2)
    assert layout.coords(13) == {"tp": 1, "cp": 0, "dp": 2, "pp": 1, "expert_tp": 0, "ep": 1, "edp": 2}
    assert layout.rank_of(tp=1, dp=2, pp=1) == 13
    assert layout.rank_of(ep=1, edp=2, pp=1) == 13
    assert layout.rank_of(tp=np.array([0, 1]), dp=3, pp=0).tolist() == [6, 7]


def test_virtual_stages():
    layout = ParallelLayout(tp=1, pp=4, cp=1, dp=1, ep=1, vpp=2)
    assert layout.virtual_stage_of_rank.tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_rank_to_gpu_permutation():
    perm = np.array([3, 2, 1, 0])
    layout = ParallelLayout(tp=2, pp=1, cp=1, dp=2, ep=1, rank_to_gpu=perm)
    assert layout.gpu_groups("tp").tolist() == [[3, 2], [1, 0]]
    assert layout.groups("tp").tolist() == [[0, 1], [2, 3]]


def test_ep_rank_node_and_span():
    # 16 GPUs, 8 per server; ep=2 pairs are adjacent ranks: one node each.
    servers = np.repeat([0, 1], 8)
    layout = ParallelLayout(tp=2, pp=2, cp=1, dp=4, ep=2)
    assert ep_rank_node(layout, servers).tolist() == [[0, 0]] * 4 + [[1, 1]] * 4
    assert ep_group_num_nodes(layout, servers).tolist() == [1] * 8
    # 4 GPUs per server, ep=8 inside each of 2 stages: each EP group spans 2 servers.
    servers4 = np.repeat([0, 1, 2, 3], 4)
    wide = ParallelLayout(tp=1, pp=2, cp=1, dp=8, ep=8)
    assert ep_rank_node(wide, servers4).tolist() == [[0] * 4 + [1] * 4, [2] * 4 + [3] * 4]
    assert ep_group_num_nodes(wide, servers4).tolist() == [2, 2]


def test_ep_rank_node_topology_too_small():
    layout = ParallelLayout(tp=2, pp=1, cp=1, dp=4, ep=2)
    with pytest.raises(InputError, match="topology has 4 GPUs"):
        ep_rank_node(layout, np.zeros(4, dtype=int))


def test_contiguous_and_round_robin():
    assert place_experts(8, 4, "contiguous").tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert place_experts(8, 4, "round_robin").tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert experts_of_rank([0, 1, 2, 3, 0, 1, 2, 3], 4).tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert experts_per_rank([0, 0, 1, 1, 2, 2, 3, 3], 4).tolist() == [2, 2, 2, 2]


TWO_NODES = dict(ep_group_gpus=np.arange(4), topology=np.array([0, 0, 1, 1]))
LOAD = [8, 7, 6, 5, 4, 3, 2, 1]


def test_topology_aware_by_hand():
    # Node LPT (4 experts per node): 8,5,4,1 -> node 0 and 7,6,3,2 -> node 1 (18 each); then per
    # node, LPT over two ranks of two slots: {8,1},{5,4} and {7,2},{6,3} -> 9 on every rank.
    p = place_experts(8, 4, "topology_aware", expert_load=LOAD, **TWO_NODES)
    assert p.tolist() == [0, 2, 3, 1, 1, 3, 2, 0]
    assert np.bincount(p, weights=LOAD).tolist() == [9, 9, 9, 9]
    assert node_of_expert(p, [0, 0, 1, 1]).tolist() == [0, 1, 1, 0, 0, 1, 1, 0]


def test_topology_aware_keeps_router_groups_on_nodes():
    # 4 groups of 2 contiguous experts (loads 15, 11, 7, 3): 15+3 on node 0, 11+7 on node 1.
    p = place_experts(8, 4, "topology_aware", expert_load=LOAD, router_num_groups=4, **TWO_NODES)
    assert p.tolist() == [0, 1, 2, 3, 3, 2, 1, 0]
    # 2 groups = 2 nodes: node loads are fixed (26/10); inside node 0, {8,5},{7,6} beats contiguous.
    p2 = place_experts(8, 4, "topology_aware", expert_load=LOAD, router_num_groups=2, **TWO_NODES)
    assert p2.tolist() == [0, 1, 1, 0, 2, 3, 3, 2]


def test_topology_aware_uniform_load_keeps_contiguous():
    assert place_experts(16, 4, "topology_aware").tolist() == place_experts(16, 4, "contiguous").tolist()


# ---------------------------------------------------------------------------------------------
# Reference: Megatron's masked orthogonal rank groups, written as the plain loops it describes.


def _reference_groups(sizes: list[int], mask: list[bool]) -> list[list[int]]:
    strides = [prod(sizes[:i]) for i in range(len(sizes))]
    fixed = [(s, d) for s, d, m in zip(sizes, strides, mask) if not m]
    vary = [(s, d) for s, d, m in zip(sizes, strides, mask) if m]

    def expand(index, dims):
        total = 0
        for s, d in dims:  # first dim varies fastest
            total += (index % s) * d
            index //= s
        return total

    n_vary = prod(s for s, _ in vary)
    n_groups = prod(sizes) // n_vary
    return [[expand(g, fixed) + expand(i, vary) for i in range(n_vary)] for g in range(n_groups)]


_DIGITS = {"tp": ("dense", {"tp"}), "cp": ("dense", {"cp"}), "dp": ("dense", {"dp"}),
           "pp": ("dense", {"pp"}), "dp_cp": ("dense", {"dp", "cp"}), "ep": ("expert", {"ep"}),
           "expert_tp": ("expert", {"tp"}), "edp": ("expert", {"dp"}),
           "expert_tp_ep": ("expert", {"tp", "ep"})}


@st.composite
def layouts(draw):
    tp, cp, dp, pp = (draw(st.sampled_from([1, 2, 3, 4])) for _ in range(4))
    stage = tp * cp * dp
    divisors = [(e, t) for e in range(1, stage + 1) for t in range(1, stage + 1) if stage % (e * t) == 0]
    ep, expert_tp = draw(st.sampled_from(divisors))
    names = list(draw(st.permutations(["tp", "cp", "ep", "dp", "pp"])))
    sizes = dict(tp=tp, pp=pp, cp=cp, dp=dp, ep=ep, expert_tp=expert_tp)
    try:
        return ParallelLayout(**sizes, order="-".join(names))
    except InputError as err:
        # PP not last is refused when the two views would disagree on pipeline groups (Megatron's
        # rule); with PP last every size combination is valid.
        assert err.field == "parallelism.order" and names[-1] != "pp" and pp > 1
        names.remove("pp")
        return ParallelLayout(**sizes, order="-".join(names + ["pp"]))


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_groups_match_megatron_reference_and_partition(layout):
    order = layout.order.split("-")
    sizes = {"dense": {"tp": layout.tp, "cp": layout.cp, "ep": 1, "dp": layout.dp, "pp": layout.pp},
             "expert": {"tp": layout.expert_tp, "cp": 1, "ep": layout.ep, "dp": layout.edp, "pp": layout.pp}}
    expected_size = {"tp": layout.tp, "cp": layout.cp, "dp": layout.dp, "pp": layout.pp,
                     "dp_cp": layout.dp * layout.cp, "ep": layout.ep, "expert_tp": layout.expert_tp,
                     "edp": layout.edp, "expert_tp_ep": layout.expert_tp * layout.ep}
    for dim in GROUP_DIMS:
        view, varying = _DIGITS[dim]
        g = layout.groups(dim)
        ref = _reference_groups([sizes[view][n] for n in order], [n in varying for n in order])
        assert g.tolist() == ref
        assert g.shape == (layout.world_size // expected_size[dim], expected_size[dim])
        assert np.array_equal(np.sort(g, axis=None), np.arange(layout.world_size))


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_coords_rank_of_bijection_and_group_coords(layout):
    ranks = np.arange(layout.world_size)
    c = layout.coords(ranks)
    assert np.array_equal(layout.rank_of(tp=c["tp"], cp=c["cp"], dp=c["dp"], pp=c["pp"]), ranks)
    assert np.array_equal(layout.rank_of(expert_tp=c["expert_tp"], ep=c["ep"], edp=c["edp"], pp=c["pp"]), ranks)
    # Dense and expert coordinates are each a bijection onto their grid.
    dense = np.stack([c[k] for k in ("tp", "cp", "dp", "pp")], axis=1)
    expert = np.stack([c[k] for k in ("expert_tp", "ep", "edp", "pp")], axis=1)
    assert len({tuple(x) for x in dense}) == len({tuple(x) for x in expert}) == layout.world_size
    # Inside a group, the group's own coordinate runs 0..n-1 and every other one is fixed.
    for dim, own in (("tp", "tp"), ("dp", "dp"), ("pp", "pp"), ("ep", "ep"), ("edp", "edp"),
                     ("expert_tp", "expert_tp")):
        g = layout.groups(dim)
        assert np.array_equal(c[own][g], np.broadcast_to(np.arange(g.shape[1]), g.shape))
        others = [k for k in (("tp", "cp", "dp", "pp") if own in ("tp", "cp", "dp", "pp")
                              else ("expert_tp", "ep", "edp", "pp")) if k != own]
        for k in others:
            assert np.all(c[k][g] == c[k][g][:, :1])
    assert np.array_equal(layout.stage_of_rank, c["pp"])


@st.composite
def expert_cases(draw):
    nodes = draw(st.integers(1, 4))
    ranks_per_node = draw(st.sampled_from([1, 2, 4]))
    ep = nodes * ranks_per_node
    per_rank = draw(st.integers(1, 6))
    num_experts = ep * per_rank
    load = np.array(draw(st.lists(st.floats(0, 1e3), min_size=num_experts, max_size=num_experts)))
    zipf = draw(st.booleans())
    if zipf:  # skewed: Zipf-like popularity over a random permutation of experts
        load = 1.0 / np.arange(1, num_experts + 1) ** draw(st.floats(0.5, 2.0))
        load = load[draw(st.permutations(list(range(num_experts))))]
    gpus = np.array(draw(st.permutations(list(range(ep)))))
    node_of_gpu = np.repeat(np.arange(nodes), ranks_per_node)
    return num_experts, ep, load, gpus, node_of_gpu


def _balance(placement, load, node_of_rank, ep):
    rank_load = np.bincount(placement, weights=load, minlength=ep)
    node_load = np.bincount(node_of_rank, weights=rank_load) / np.bincount(node_of_rank)
    return node_load.max(), rank_load.max()


@settings(max_examples=150, deadline=None)
@given(expert_cases(), st.sampled_from(["contiguous", "round_robin", "topology_aware"]))
def test_every_expert_once_and_equal_counts(case, policy):
    num_experts, ep, load, gpus, node_of_gpu = case
    p = place_experts(num_experts, ep, policy, expert_load=load, ep_group_gpus=gpus, topology=node_of_gpu)
    assert p.shape == (num_experts,)
    assert np.all((p >= 0) & (p < ep))
    assert experts_per_rank(p, ep).tolist() == [num_experts // ep] * ep
    inv = experts_of_rank(p, ep)
    assert np.array_equal(np.sort(inv, axis=None), np.arange(num_experts))
    assert np.all(p[inv] == np.arange(ep)[:, None])


@settings(max_examples=150, deadline=None)
@given(expert_cases())
def test_topology_aware_balances_at_least_as_well(case):
    num_experts, ep, load, gpus, node_of_gpu = case
    node_of_rank = node_of_gpu[gpus]
    aware = place_experts(num_experts, ep, "topology_aware", expert_load=load, ep_group_gpus=gpus,
                          topology=node_of_gpu)
    tol = 1e-8 * max(load.sum(), 1.0)
    for simple in ("contiguous", "round_robin"):
        ref = _balance(place_experts(num_experts, ep, simple), load, node_of_rank, ep)
        got = _balance(aware, load, node_of_rank, ep)
        # Lexicographic: busiest node first, then busiest rank.
        assert got[0] < ref[0] - tol or (abs(got[0] - ref[0]) <= tol and got[1] <= ref[1] + tol)
    # Without a topology only the busiest rank counts.
    flat = place_experts(num_experts, ep, "topology_aware", expert_load=load)
    for simple in ("contiguous", "round_robin"):
        ref_max = np.bincount(place_experts(num_experts, ep, simple), weights=load, minlength=ep).max()
        assert np.bincount(flat, weights=load, minlength=ep).max() <= ref_max + tol


@settings(max_examples=100, deadline=None)
@given(expert_cases(), st.data())
def test_router_groups_stay_on_whole_nodes(case, data):
    num_experts, ep, load, gpus, node_of_gpu = case
    nodes = len(np.unique(node_of_gpu))
    per_node = num_experts // nodes
    group_size = data.draw(st.sampled_from([g for g in range(1, per_node + 1) if per_node % g == 0]))
    p = place_experts(num_experts, ep, "topology_aware", expert_load=load, ep_group_gpus=gpus,
                      topology=node_of_gpu, router_num_groups=num_experts // group_size)
    node_of_e = node_of_expert(p, node_of_gpu[gpus]).reshape(-1, group_size)
    assert np.all(node_of_e == node_of_e[:, :1])


# ---------------------------------------------------------------------------------------------
# Bad input: every error names its field.


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(tp=0, pp=1, cp=1, dp=1, ep=1), "parallelism.tp"),
        (dict(tp=1, pp=1.5, cp=1, dp=1, ep=1), "parallelism.pp"),
        (dict(tp=1, pp=1, cp=True, dp=1, ep=1), "parallelism.cp"),
        (dict(tp=2, pp=1, cp=1, dp=2, ep=3), "parallelism.ep"),
        (dict(tp=2, pp=1, cp=1, dp=2, ep=2, expert_tp=4), "parallelism.ep"),
        (dict(tp=1, pp=1, cp=1, dp=2, ep=1, vpp=2), "parallelism.vpp"),
        (dict(tp=2, pp=1, cp=1, dp=2, ep=1, world_size=8), "parallelism"),
        (dict(tp=2, pp=1, cp=1, dp=2, ep=1, order="tp-dp-xp"), "parallelism.order"),
        (dict(tp=2, pp=1, cp=1, dp=2, ep=1, order="tp-dp-tp"), "parallelism.order"),
        (dict(tp=2, pp=1, cp=2, dp=2, ep=1, order="tp-dp-pp"), "parallelism.order"),
        (dict(tp=2, pp=1, cp=1, dp=2, ep=2, order="tp-dp-pp"), "parallelism.order"),
        (dict(tp=2, pp=1, cp=1, dp=2, ep=1, order=""), "parallelism.order"),
        (dict(tp=2, pp=2, cp=1, dp=2, ep=1, order="tp-cp-ep-pp-dp"), "parallelism.order"),
        (dict(tp=2, pp=1, cp=1, dp=2, ep=1, rank_to_gpu=[0, 1, 1, 2]), "parallelism.rank_to_gpu"),
        (dict(tp=2, pp=1, cp=1, dp=2, ep=1, rank_to_gpu=[0, 1, 2]), "parallelism.rank_to_gpu"),
    ],
)
def test_layout_errors_name_the_field(kwargs, field):
    with pytest.raises(InputError) as err:
        ParallelLayout(**kwargs)
    assert err.value.field == field
    assert field in str(err.value)


def test_order_error_lists_allowed_values():
    with pytest.raises(InputError, match=r"unknown dimension 'xp'.*allowed: .*tp, cp, ep, dp, pp"):
        ParallelLayout(tp=1, pp=1, cp=1, dp=1, ep=1, order="tp-xp")


def test_pp_not_last_accepted_when_edp_equals_dp():
    # Megatron's --use-tp-pp-dp-mapping order; tp=2 re-factored as ep=2 keeps edp == dp.
    layout = ParallelLayout(tp=2, pp=2, cp=1, dp=2, ep=2, order="tp-cp-ep-pp-dp")
    assert layout.groups("pp").tolist() == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert layout.groups("ep").tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_layout_lookup_errors():
    layout = ParallelLayout(tp=2, pp=1, cp=1, dp=2, ep=1)
    for call, field in ((lambda: layout.groups("mp"), "groups(dim)"), (lambda: layout.coords(4), "rank"),
                        (lambda: layout.rank_of(tp=2, dp=0), "rank_of(tp)"),
                        (lambda: layout.rank_of(tp=0), "rank_of"),
                        (lambda: layout.rank_of(tp=0, dp=0, ep=0), "rank_of")):
        with pytest.raises(InputError) as err:
            call()
        assert err.value.field == field


@pytest.mark.parametrize(
    "args, kwargs, field",
    [
        ((10, 4, "contiguous"), {}, "model.moe.experts"),
        ((0, 4, "contiguous"), {}, "model.moe.experts"),
        ((8, 0, "contiguous"), {}, "parallelism.ep"),
        ((8, 4, "random"), {}, "parallelism.expert_placement"),
        ((8, 4, "topology_aware"), dict(expert_load=[1.0] * 7), "expert_load"),
        ((8, 4, "topology_aware"), dict(expert_load=[-1.0] + [1.0] * 7), "expert_load"),
        ((8, 4, "topology_aware"), dict(topology=np.zeros(4, dtype=int)), "ep_group_gpus"),
        ((8, 4, "topology_aware"), dict(topology=np.zeros(4, dtype=int), ep_group_gpus=[0, 1, 2, 2]),
         "ep_group_gpus"),
        ((8, 4, "topology_aware"), dict(router_num_groups=3), "model.moe.router_num_groups"),
        ((8, 4, "topology_aware"), dict(router_num_groups=1, **TWO_NODES), "model.moe.router_num_groups"),
    ],
)
def test_place_experts_errors_name_the_field(args, kwargs, field):
    with pytest.raises(InputError) as err:
        place_experts(*args, **kwargs)
    assert err.value.field == field
    assert field in str(err.value)


def test_inverse_mapping_errors():
    with pytest.raises(InputError) as err:
        experts_of_rank([0, 0, 1], 2)
    assert err.value.field == "placement"
    with pytest.raises(InputError):
        experts_per_rank([0, 5], 2)


def test_default_order_is_megatrons():
    assert ParallelLayout(1, 1, 1, 1, 1).order == "tp-cp-ep-dp-pp"
