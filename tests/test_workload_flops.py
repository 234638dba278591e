"""FLOP accounting: hand-derived oracles and the 6*N*D rule of thumb plus attention."""

from __future__ import annotations

import pytest

from simmoe.config.schema import Scenario
from simmoe.workload import build_stage_program
from simmoe.workload.flops import (
    forward_flops_per_token,
    hardware_flops_per_token,
    model_flops_per_token,
    recompute_flops_per_token,
)
from simmoe.workload.params import param_counts

TINY_MOE = dict(name="tiny", layers=3, dense_layers=1, hidden=16, vocab=128,
                attention=dict(type="gqa", heads=4, kv_heads=2), dense_ffn=32,
                moe=dict(routed_experts=4, shared_experts=1, top_k=2, expert_ffn=8))
TINY_MLA = dict(name="tiny-mla", layers=7, dense_layers=1, hidden=32, vocab=256, mtp_depth=1,
                attention=dict(type="mla", heads=4, q_lora_rank=16, kv_lora_rank=8, qk_nope_head_dim=8,
                               qk_rope_head_dim=4, v_head_dim=8),
                dense_ffn=64, moe=dict(routed_experts=8, shared_experts=1, top_k=2, expert_ffn=16))
GPT3 = dict(name="GPT-3", layers=96, hidden=12288, attention=dict(type="mha", heads=96),
            dense_ffn=49152, vocab=50257, activation="gelu", tied_embeddings=True)


def scenario(model, seq_len=64, **kw):
    training = dict(seq_len=seq_len, global_batch=16, micro_batch=2, total_tokens=1e9)
    training.update(kw.pop("training", {}))
    par = dict(dp=1)
    par.update(kw.pop("parallelism", {}))
    return Scenario.model_validate(dict(model=model, training=training, parallelism=par,
                                        cluster=dict(topology="none"), **kw))


def test_tiny_moe_forward_by_hand():
    s = 64
    f = forward_flops_per_token(scenario(TINY_MOE, seq_len=s))
    assert f.attention_proj == 3 * 2 * (16 * 32 + 16 * 16)  # qkv 16->(16+8+8), o 16->16
    assert f.attention_core == 3 * 4 * (s + 1) * (4 + 4)  # heads*(s+1)*(d_qk+d_v)
    assert f.router == 2 * 2 * 16 * 4
    assert f.routed_experts == 2 * (2 * 3 * 16 * 8 * 2)  # 2 MoE layers, top-2 SwiGLU experts
    assert f.shared_experts == 2 * (2 * 3 * 16 * 8)
    assert f.dense_ffn == 2 * 3 * 16 * 32
    assert f.lm_head == 2 * 16 * 128
    assert model_flops_per_token(scenario(TINY_MOE, seq_len=s)) == 3 * f.total


@pytest.mark.parametrize("cfg", [TINY_MOE, TINY_MLA])
def test_six_n_plus_attention(cfg):
    """Training FLOPs = 6 x (active matmul weights, input embedding excluded: a lookup) + 3 x core
    attention; norms are not matmuls. MTP modules: one extra pass through the LM head each."""
    sc = scenario(cfg)
    p = param_counts(sc.model)
    m = sc.model
    d = m.hidden
    blocks = m.layers + m.mtp_depth
    att = m.attention
    latent_norms = (att.kv_lora_rank + (att.q_lora_rank or 0)) if att.type == "mla" else 0
    norms = blocks * (2 * d + latent_norms) + d + m.mtp_depth * 3 * d
    matmul_active = p.active_with_mtp - p.embedding - norms + m.mtp_depth * p.lm_head
    core = forward_flops_per_token(sc).attention_core
    assert model_flops_per_token(sc) == pytest.approx(6 * matmul_active + 3 * core, rel=1e-12)


def test_gpt3_against_megatron_formula():
    """Narayanan et al. 2021: 72*L*h^2*(1 + s/(6h) + V/(12*h*L)) per token for fwd+bwd, with
    non-causal attention 4*s*h per layer forward. Causal attention sees (s+1)/2 keys on average."""
    L, h, V, s = 96, 12288, 50257, 2048
    megatron_no_attention = 72 * L * h**2 * (1 + V / (12 * h * L))
    causal_attention = 3 * L * 4 * h * (s + 1) / 2
    got = model_flops_per_token(scenario(GPT3, seq_len=s))
    assert got == pytest.approx(megatron_no_attention + causal_attention, rel=1e-12)
    # Rule of thumb: 6 * 175B + attention, within 1%.
    assert got == pytest.approx(6 * 174.6e9 + causal_attention, rel=0.01)


def test_recompute_is_hardware_not_model_flops():
    base = scenario(TINY_MLA)
    full = scenario(TINY_MLA, training=dict(activation_recompute="full"))
    sel = scenario(TINY_MLA, training=dict(activation_recompute="selective"))
    assert model_flops_per_token(full) == model_flops_per_token(sel) == model_flops_per_token(base)
    f = forward_flops_per_token(base)
    assert recompute_flops_per_token(full) == pytest.approx(f.total - f.lm_head)
    # selective: MLA up-projections q_up 16->4*12 and kv_up 8->4*16, in each of 8 blocks
    assert recompute_flops_per_token(sel) == 8 * 2 * (16 * 48 + 8 * 64)
    assert hardware_flops_per_token(base) > model_flops_per_token(base)
    assert hardware_flops_per_token(full) > hardware_flops_per_token(sel) > hardware_flops_per_token(base)


LAYOUTS = [
    dict(),
    dict(tp=2, sequence_parallel=True),
    dict(tp=2, pp=2, cp=2, ep=2, dp=2),
    dict(tp=4, pp=2, ep=4, dp=1),  # TP without SP: MoE slices the replicated rows
    dict(pp=2, vpp=2, schedule="interleaved", ep=4, expert_tp=2, dp=8),
]


@pytest.mark.parametrize("par", LAYOUTS)
@pytest.mark.parametrize("recompute", ["none", "full"])
def test_ops_carry_exactly_the_model_flops(par, recompute):
    """Summed over every virtual stage, one rank's ops times the tp*cp ranks that share a
    micro-batch equal model FLOPs per token x the micro-batch's tokens (recompute adds none)."""
    sc = scenario(TINY_MLA, parallelism=dict(dict(dp=1), **par),
                  training=dict(activation_recompute=recompute))
    total = 0.0
    for v in range(sc.parallelism.virtual_stages):
        prog = build_stage_program(sc, v)
        total += sum(op.model_flops for op in prog.forward + prog.backward)
    p, t = sc.parallelism, sc.training
    assert total * p.tp * p.cp == pytest.approx(model_flops_per_token(sc) * t.micro_batch * t.seq_len, rel=1e-12)
