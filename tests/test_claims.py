"""simmoe.claims: each claim computes what its description says (docs/claims.md). Oracles are the
claims' own arithmetic done by hand; verdict texts are not tested. Heavy claims are checked through
their pure functions (the engine itself is tested elsewhere)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simmoe.claims import MODULES, Context, claim_check
from simmoe.claims.common import CLAIMS_DIR, SPEC_DIR, extrapolate_record, load_spec
from simmoe.claims.result import VERDICTS


def test_every_claim_has_a_definition_and_loadable_scenarios():
    from simmoe.config import load_scenario

    specs = sorted(SPEC_DIR.glob("c*.yaml"))
    assert [int(p.name[1:3]) for p in specs] == list(range(1, 13)) == sorted(MODULES)
    for path in sorted(CLAIMS_DIR.glob("*.yaml")):  # every claims scenario validates
        load_scenario(path)


def test_claim1_formula_as_written():
    from simmoe.claims.c01_budget import budget_arithmetic

    inp = load_spec("c01-dense-vs-moe-cost")["inputs"]
    kw = {k: inp[k] for k in ("dense_params", "tokens", "gpus", "price_per_gpu_hour_usd", "experts", "top_k",
                              "router_overhead", "comm_overhead")}
    at_1979 = budget_arithmetic(tflops=1979, **kw)
    # By hand: 6 * 50e9 * 1e12 = 3e23 FLOPs over 128 x 1979e12 FLOP/s = 1,184,310 s of wall time.
    assert at_1979["dense_wall_s"] == pytest.approx(3e23 / (128 * 1979e12))
    assert at_1979["dense_wall_s"] == pytest.approx(1.184e6, rel=1e-3)  # the "1.2M" of the claim
    # x 128 GPUs x $2 / 3600 = $84,217.6; the MoE: 6*2*50e9/64*1e12*1.1 FLOPs, x 1.2 time.
    assert at_1979["dense_usd"] == pytest.approx(84217.6, rel=1e-6)
    moe_s = 6 * 2 * 50e9 / 64 * 1e12 * 1.1 / (128 * 1979e12) * 1.2
    assert at_1979["moe_usd"] == pytest.approx(moe_s * 128 * 2 / 3600)
    assert at_1979["ratio"] == pytest.approx(64 / 2 / (1.1 * 1.2))  # 24.2x, whatever the peak
    at_989 = budget_arithmetic(tflops=989, **kw)
    assert at_989["dense_usd"] / at_1979["dense_usd"] == pytest.approx(1979 / 989)
    assert at_989["moe_usd"] / at_1979["moe_usd"] == pytest.approx(1979 / 989)


def test_claim2_overhead_is_exposed_comm_over_compute():
    from simmoe.claims.c02_weak_network import comm_overhead

    s = {"step_time_s_mean": 10.0, "exposed_comm_s_mean": 4.0, "pipeline_bubble_s_mean": 1.0}
    assert comm_overhead(s) == pytest.approx(4.0 / 5.0)


def test_claim3_bytes_and_line_rate():
    from simmoe.claims.c03_alltoall import alltoall_arithmetic

    a = alltoall_arithmetic(experts=64, tokens_per_expert_per_gpu=8, hidden=4096, bytes_per_element=2, moe_layers=32,
                            link_gbps=200)
    assert a["bytes_per_layer"] == 8 * 64 * 4096 * 2 == 4 * 2**20
    assert a["bytes_per_step"] == 128 * 2**20
    assert a["line_rate_s_per_step"] == pytest.approx(128 * 2**20 * 8 / 200e9)  # 5.37 ms


def test_claim3_network_side_is_simmoes_flow_backend():
    from simmoe.claims.c03_alltoall import simulated_times
    from simmoe.network import collectives as C
    from simmoe.network.backends import FlowBackend
    from simmoe.paths import resolve_topology
    from simmoe.topology.loader import load_topology

    got = simulated_times(topology="dgx-h100-2node", gpus=16, bytes_per_layer=2**22, bytes_per_step=2**27)
    topo = load_topology(resolve_topology("dgx-h100-2node"))
    fb = FlowBackend(topo)
    assert got["alltoall_s_per_layer"] == pytest.approx(fb.collective_time_s(C.alltoall(range(16), 2**22)).time_s)
    ar = C.allreduce(range(16), 2**27, server_of_gpu=topo.server_of_gpu)
    assert got["allreduce_s"] == pytest.approx(fb.collective_time_s(ar).time_s)
    # Bandwidth-bound at 128 MiB: at least the ring's bytes over one 400G NIC per GPU (8 channels).
    assert got["allreduce_s"] > 2 * 15 / 16 * 2**27 / 8 / 50e9


def test_claim4_theoretical_reduction_and_share():
    from simmoe.claims.c04_flop_reduction import share_of_speedup, theoretical_reduction
    from simmoe.claims.common import load_claim_scenario
    from simmoe.workload import param_counts
    from simmoe.workload.flops import model_flops_per_token

    sc = load_claim_scenario("moe-1.5t")
    p = param_counts(sc.model)
    f = model_flops_per_token(sc)
    assert theoretical_reduction(sc) == pytest.approx((f + 6 * (p.total - p.active)) / f)
    assert 20 < theoretical_reduction(sc) < p.total / p.active  # ~ total/active, attention makes it a little less
    assert share_of_speedup(0.3, 0.4) == pytest.approx(0.75)


def test_claim5_two_tb_over_80_gb_is_25():
    from simmoe.claims.c05_weights import training_state_bytes_per_param, weights_arithmetic
    from simmoe.config import load_scenario

    a = weights_arithmetic(params=1e12, bytes_per_param=2, hbm_GB=80)
    assert a["weight_bytes"] == 2e12 and a["gpus"] == pytest.approx(25.0) and a["gpus_whole"] == 25
    assert training_state_bytes_per_param(load_scenario("kimi-k2-h800")) == 2 + 4 + 4 + 4  # Muon: one FP32 moment
    assert training_state_bytes_per_param(load_scenario("budget-50b-64e-ib")) == 2 + 4 + 4 + 8  # AdamW


def test_claim6_inference_share():
    from simmoe.claims.c06_mixtral import inference_fits

    share, ok = inference_fits(total_params=140.6e9, bytes_per_param=2, gpus_per_node=8, hbm_GB=80)
    assert share == pytest.approx(281.2e9 / 640e9) and ok


def test_claim7_uses_simmoe_routing_capacity():
    from simmoe.claims.c07_capacity import drop_stats, routing_model

    m = routing_model(experts=64, top_k=2, ep=8, tokens_per_rank=4096, capacity_factor=1.25, popularity="uniform")
    s = drop_stats(m, 2)
    assert s["capacity"] == math.ceil(1.25 * 4096 * 2 / 64) == 160
    m2 = routing_model(experts=128, top_k=1, ep=16, tokens_per_rank=8192, capacity_factor=1.25, popularity="zipf", s=1.0)
    assert drop_stats(m2, 1)["capacity"] == math.ceil(1.25 * 8192 / 128)
    # A hot expert cannot take more than its capacity: skew raises the drops.
    assert drop_stats(m2, 2)["dropped_fraction"] > s["dropped_fraction"]


def test_claim8_two_level_moves_fewer_bytes():
    from simmoe.claims.c08_hierarchical import layer_comm_s
    from simmoe import dispatch as D
    from simmoe.paths import resolve_topology
    from simmoe.topology.loader import load_topology

    topo = load_topology(resolve_topology("h800-deepseek"), nodes=2)
    rng = np.random.default_rng(0)
    kw = dict(topology=topo, experts=32, hidden=1024, fp8_bytes_per_element=1.03125, backend="analytical")
    flat = np.stack([D.grouped_topk_experts(rng, 256, 32, 4, groups=2, top_k_groups=2) for _ in range(16)])
    one = np.stack([D.grouped_topk_experts(rng, 256, 32, 4, groups=2, top_k_groups=1) for _ in range(16)])
    assert layer_comm_s(one, hierarchical=True, **kw) < layer_comm_s(flat, hierarchical=False, **kw)


def test_claim9_crossover_rule():
    from simmoe.claims.c09_bandwidth import crossover_gbps

    rows = [{"gbps_per_gpu": bw, "layout": lay, "step_time_s": t} for bw, lay, t in
            [(100, "in", 1.0), (100, "across", 2.0), (400, "in", 1.0), (400, "across", 0.9)]]
    assert crossover_gbps(rows, "in", "across") == 400
    assert crossover_gbps(rows[:2], "in", "across") is None


def test_claim11_flops_scaling():
    from simmoe.claims.c11_run_cost import flops_scaled_cost

    assert flops_scaled_cost(5.576e6, ref_flops_per_token=2.0, ref_tokens=14.8e12, flops_per_token=1.0,
                             tokens=15.5e12) == pytest.approx(5.576e6 * 15.5 / (2 * 14.8))


def test_claim12_goes_through_the_forecast_energy_functions(monkeypatch):
    import simmoe.forecast as F
    from simmoe.claims.c12_energy import gpt3_energy

    g = gpt3_energy(chips=10000, avg_power_w=330, days=14.8, pue=1.10, grid_kgco2_per_kwh=0.429)
    assert g["energy_mwh"] == pytest.approx(10000 * 330 * 14.8 * 24 * 1.10 / 1e6)  # 1289.4 MWh
    assert g["tco2e"] == pytest.approx(g["energy_mwh"] * 0.429)
    calls = []
    real = F.energy_mwh
    monkeypatch.setattr(F, "energy_mwh", lambda **kw: calls.append(kw) or real(**kw))
    gpt3_energy(chips=1, avg_power_w=1, days=1, pue=1, grid_kgco2_per_kwh=1)
    assert calls and calls[0]["gpus"] == 1


def test_extrapolation_is_affine_in_micro_batches():
    from simmoe.results import StepRecord

    def rec(m, t):
        return StepRecord(step=0, step_time_s=t, tokens_per_s=m * 10 / t, tokens_per_s_per_gpu=m * 10 / t / 4,
                          model_tflops_per_gpu=m * 2.0 / t, mfu=m * 2.0 / t / 100, dropped_token_fraction=0.0,
                          expert_load_max_over_mean=1.0, expert_compute_s=0.1 * m, a2a_dispatch_s=0.0,
                          a2a_combine_s=0.0, exposed_comm_s=0.01 * m, pipeline_bubble_s=3.0, host_late_s=0.0,
                          dp_comm_s=0.5,
                          optimizer_s=0.2, peak_memory_gib=1.0)
    a, b = rec(8, 1.0 + 8 * 0.5), rec(16, 1.0 + 16 * 0.5)
    x = extrapolate_record(a, b, 8, 16, 120, tokens_per_step=1200)
    assert x.step_time_s == pytest.approx(61.0) and x.expert_compute_s == pytest.approx(12.0)
    assert x.pipeline_bubble_s == pytest.approx(3.0) and x.optimizer_s == 0.2
    assert x.mfu == pytest.approx(120 * 2.0 / 61.0 / 100) and x.tokens_per_s == pytest.approx(1200 / 61.0)


@pytest.mark.parametrize("n", [3, 5, 6, 7])
def test_cheap_claims_run_end_to_end(n):
    r = claim_check(n)(Context(quick=True))
    assert r.number == n and r.verdict in VERDICTS and r.metrics
    assert all(isinstance(m.value, float) or isinstance(m.value, int) for m in r.metrics)
