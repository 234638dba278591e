"""Parameter counts against published model sizes and hand-derived oracles."""

from __future__ import annotations

import pytest

from simmoe.config.schema import Model
from simmoe.workload.params import block_params, param_counts

# Configurations from the models' published config.json files.
DEEPSEEK_V3 = dict(
    name="DeepSeek-V3", layers=61, dense_layers=3, hidden=7168,
    attention=dict(type="mla", heads=128, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
                   qk_rope_head_dim=64, v_head_dim=128),
    dense_ffn=18432, vocab=129280, mtp_depth=1,
    moe=dict(routed_experts=256, shared_experts=1, top_k=8, expert_ffn=2048))
MIXTRAL_8X22B = dict(
    name="Mixtral-8x22B", layers=56, hidden=6144,
    attention=dict(type="gqa", heads=48, kv_heads=8, head_dim=128),
    dense_ffn=16384, vocab=32768, moe=dict(routed_experts=8, top_k=2, expert_ffn=16384))
LLAMA4_MAVERICK = dict(  # text model; MoE in every other layer (interleave_moe_layer_step = 2)
    name="Llama-4-Maverick", layers=48, hidden=5120,
    attention=dict(type="gqa", heads=40, kv_heads=8, head_dim=128),
    dense_ffn=16384, vocab=202048,
    moe=dict(routed_experts=128, shared_experts=1, top_k=1, expert_ffn=8192, layer_pattern="every_other"))
GPT3_175B = dict(name="GPT-3", layers=96, hidden=12288, attention=dict(type="mha", heads=96),
                 dense_ffn=49152, vocab=50257, activation="gelu", tied_embeddings=True)


def counts(d):
    return param_counts(Model.model_validate(d))


def test_deepseek_v3_matches_report():
    p = counts(DEEPSEEK_V3)
    # "671B total parameters, 37B activated for each token" (arXiv 2412.19437, abstract).
    assert p.main_model == pytest.approx(671e9, rel=0.01)
    assert p.active == pytest.approx(37e9, rel=0.03)
    # Hugging Face card: 685B = 671B main model + 14B MTP module (stored with its own
    # embedding and head copies).
    assert p.main_model + p.mtp_stored == pytest.approx(685e9, rel=0.01)
    assert p.total == p.main_model + p.mtp  # trained: shared embedding/head counted once


def test_deepseek_v3_mla_block_by_hand():
    # q_down 7168*1536, q_up 1536*128*(128+64), kv_down 7168*(512+64), kv_up 512*128*(128+128),
    # o 128*128*7168, latent norms 1536 + 512.
    attn = 7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 * 128 * 256 + 128 * 128 * 7168 + 1536 + 512
    b = block_params(Model.model_validate(DEEPSEEK_V3), 10)
    assert b.attention == attn == 187_107_328
    assert b.routed_expert == 3 * 7168 * 2048
    assert b.routed_experts == 256 * b.routed_expert
    assert b.shared_experts == b.routed_expert
    assert b.router == 7168 * 256
    dense = block_params(Model.model_validate(DEEPSEEK_V3), 0)
    assert dense.dense_ffn == 3 * 7168 * 18432 and dense.routed_experts == 0
    mtp = block_params(Model.model_validate(DEEPSEEK_V3), 61)
    assert mtp.mtp_extra == 2 * 7168 * 7168 + 3 * 7168 and mtp.routed_experts == b.routed_experts


@pytest.mark.parametrize("cfg,total,active", [
    (MIXTRAL_8X22B, 141e9, 39e9),  # Mistral AI announcement: 141B total, 39B active
    (LLAMA4_MAVERICK, 400e9, 17e9),  # Meta: 400B total, 17B active
    (GPT3_175B, 175e9, 175e9),  # Brown et al. 2020
])
def test_published_sizes(cfg, total, active):
    p = counts(cfg)
    assert p.total == pytest.approx(total, rel=0.02)
    assert p.active == pytest.approx(active, rel=0.03)


def test_small_gqa_moe_by_hand():
    cfg = dict(name="tiny", layers=3, dense_layers=1, hidden=16, vocab=100,
               attention=dict(type="gqa", heads=4, kv_heads=2), dense_ffn=32,
               moe=dict(routed_experts=4, shared_experts=1, top_k=2, expert_ffn=8, shared_expert_ffn=12))
    p = counts(cfg)
    attn = 16 * (4 * 4 + 2 * 2 * 4) + 16 * 16  # qkv (head_dim 4) + o = 512
    dense_block = attn + 2 * 16 + 3 * 16 * 32  # + norms + SwiGLU
    expert = 3 * 16 * 8
    moe_block = attn + 2 * 16 + 16 * 4 + 3 * 16 * 12 + 4 * expert
    assert p.main_blocks == dense_block + 2 * moe_block
    assert p.total == 2 * 100 * 16 + 16 + dense_block + 2 * moe_block
    assert p.active == p.total - 2 * 2 * expert  # two of four experts idle per MoE layer


def test_tied_embeddings_and_gelu():
    cfg = dict(GPT3_175B, layers=1, hidden=8, vocab=10, dense_ffn=32, attention=dict(type="mha", heads=2))
    p = counts(cfg)
    assert p.lm_head == 0
    assert p.total == 10 * 8 + 8 + (4 * 8 * 8 + 2 * 8 + 2 * 8 * 32)
    assert counts(dict(cfg, tied_embeddings=False)).total == p.total + 10 * 8
