"""Cyclic routing (NeMo Automodel's fake balanced gate): hand-derived oracles and scenario rules."""

from __future__ import annotations

import numpy as np
import pytest

from simmoe.config.rules import check_routing
from simmoe.config.schema import Scenario
from simmoe.routing import EPGroup, RoutingModel
from simmoe.routing.cyclic import cyclic_draw


def contiguous(experts: int, ep: int, ranks_per_node: int, tokens: int, k: int) -> EPGroup:
    return EPGroup(np.arange(experts) // (experts // ep), np.arange(ep) // ranks_per_node, tokens, k)


def test_small_group_by_hand():
    # 8 experts on 4 ranks (2 each), 2 nodes; top-2; 3 tokens per rank. Token t takes experts
    # {2t, 2t+1} mod 8: token 0 -> experts 0,1 (rank 0), token 1 -> 2,3 (rank 1), token 2 -> 4,5
    # (rank 2). Every source does the same.
    raw = cyclic_draw(contiguous(8, 4, 2, tokens=3, k=2))
    assert raw.tokens_per_src_expert.tolist() == [[1, 1, 1, 1, 1, 1, 0, 0]] * 4
    assert raw.tokens_per_src_dst_rank.tolist() == [[1, 1, 1, 0]] * 4
    assert raw.tokens_per_src_dst_node.tolist() == [[2, 1]] * 4
    assert not raw.unrouted_tokens_per_src.any()


def test_tokens_straddling_ranks():
    # 3 experts per rank, top-2: token 1 takes experts 2 (rank 0) and 3 (rank 1), so it reaches
    # two ranks; tokens 0 and 2 reach one each. 6 experts, 2 ranks on one node, 3 tokens.
    raw = cyclic_draw(contiguous(6, 2, 2, tokens=3, k=2))
    assert raw.tokens_per_src_expert[0].tolist() == [1, 1, 1, 1, 1, 1]
    assert raw.tokens_per_src_dst_rank[0].tolist() == [2, 2]  # rank 0: tokens 0, 1; rank 1: 1, 2
    assert raw.tokens_per_src_dst_node[0].tolist() == [3]


@pytest.mark.parametrize("experts,ep,per_node,k", [(256, 64, 8, 8), (128, 8, 8, 8), (384, 32, 8, 8)])
def test_published_layouts_are_balanced_and_local(experts, ep, per_node, k):
    # DeepSeek-V3 (EP64), Qwen3-30B-A3B (EP8), Kimi K2 (EP32) as in Automodel's table: the
    # tokens * k assignments are 0 .. tokens*k - 1 mod E, so the first (tokens*k mod E) experts get
    # one row more than the rest; a token's k consecutive experts sit on one node.
    tokens = 4096
    g = contiguous(experts, ep, per_node, tokens, k)
    raw = cyclic_draw(g)
    base, extra = divmod(tokens * k, experts)
    assert (raw.tokens_per_src_expert == base + (np.arange(experts) < extra)).all()
    assert (raw.tokens_per_src_dst_node.sum(axis=1) == tokens).all()  # one node per token
    assert (raw.tokens_per_src_dst_rank.sum(axis=1) <= tokens * k).all()
    per_rank = experts // ep
    if per_rank % k == 0:  # k consecutive experts never straddle a rank boundary
        assert (raw.tokens_per_src_dst_rank.sum(axis=1) == tokens).all()


def test_routing_model_ignores_seed_step_and_layer():
    g = contiguous(16, 4, 2, tokens=32, k=4)
    a = RoutingModel(g, num_layers=3, routing="cyclic", seed=1).draw(0, 0, 0)
    b = RoutingModel(g, num_layers=3, routing="cyclic", seed=2).draw(5, 2, 7)
    assert a.routing == "cyclic" and a.execution == "dropless"
    for field in ("tokens_per_src_expert", "dispatch_tokens_per_src_dst_rank", "compute_tokens_per_expert"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert a.expert_load_max_over_mean == 1.0 and a.dropped_fraction == 0.0


def _scenario(**routing):
    return Scenario.model_validate(dict(
        model=dict(name="m", layers=2, hidden=64, vocab=128, attention=dict(type="mha", heads=4), dense_ffn=128,
                   moe=dict(routed_experts=8, top_k=2, expert_ffn=32)),
        training=dict(seq_len=32, global_batch=8, micro_batch=1, total_tokens=1e9),
        parallelism=dict(ep=2, dp=2), routing=routing, cluster=dict(topology="none")))


def test_rules_reject_inputs_cyclic_routing_would_ignore():
    assert check_routing(_scenario(policy="cyclic")) == []
    fields = {p.field for p in check_routing(_scenario(policy="cyclic", imbalance=dict(model="zipf", s=1.2)))}
    assert "routing.imbalance.model" in fields
    drift = check_routing(_scenario(policy="cyclic", imbalance=dict(drift="collapse")))
    assert [p.field for p in drift] == ["routing.imbalance.drift.model"]
    limited = check_routing(_scenario(policy="cyclic", node_limited_max_nodes=1))
    assert [p.field for p in limited] == ["routing.node_limited_max_nodes"]


def test_engine_cyclic_routing_moves_less_all_to_all_than_random():
    # Direction oracle: a token's k consecutive experts reach at most two ranks, k random experts
    # up to k, so the engine's dispatch and combine times must fall; the load is exactly balanced.
    from simmoe.config.loader import load_default_scenario
    from simmoe.engine.runner import Simulation

    base = ["simulation.steps=1", "simulation.warmup_steps=0", "routing.imbalance.model=uniform",
            "routing.imbalance.s=null", "routing.imbalance.drift=none"]
    rand_step = Simulation(load_default_scenario(base)).run_step(0)
    cyc_step = Simulation(load_default_scenario(base + ["routing.policy=cyclic"])).run_step(0)
    rand, cyc = rand_step.breakdown(), cyc_step.breakdown()
    assert cyc["a2a_dispatch_s"] < rand["a2a_dispatch_s"] and cyc["a2a_combine_s"] < rand["a2a_combine_s"]
    assert cyc_step.stats.dropped == 0 and max(cyc_step.stats.load_max_over_mean) <= 1.0 + 1e-12
