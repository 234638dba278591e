"""Kernel stacks (training.kernels) and QK-norm: the memory-bound ops between the attention
projections and core attention, and autograd's gradient adds, with bytes derived by hand."""

from __future__ import annotations

import pytest
from test_config import expect, variant, write
from test_workload_builder import MLA, MOE, by_name, check_dependencies, scenario

from simmoe.workload import build_stage_program
from simmoe.workload.params import block_local_params, stage_local_params

# MOE: hidden 64, 8 query / 4 KV heads of 64/8 = 8; micro-batch 2 x 32 tokens = T 64.
# Q and K: 64 tokens x (8 + 4) heads x 8 x 2 B = 12288 B.
GQA_QK_BYTES = 64 * 12 * 8 * 2
# MLA: 8 heads, nope 8, rope 4, v 8. RoPE parts: 64 x (8 + 1) x 4 x 2 = 4608 B; whole Q (and K):
# 64 x 8 x 12 x 2 = 12288 B; K nope + V: 64 x 8 x 16 x 2 = 16384 B; the rope K over the heads:
# 64 x 8 x 4 x 2 = 4096 B.
MLA_ROPE, MLA_Q, MLA_KV, MLA_K_ROPE_HEADS = 4608, 12288, 16384, 4096


def ops_of(sc, stage=0):
    prog = build_stage_program(sc, stage)
    return by_name(prog.forward), by_name(prog.backward)


def test_fused_gqa_rope_reads_and_writes_q_and_k_once_each_way():
    fwd, bwd = ops_of(scenario())
    assert fwd["L0.attn.rope"].bytes_moved == 2 * GQA_QK_BYTES
    assert bwd["L0.attn.rope_bwd"].bytes_moved == 2 * GQA_QK_BYTES
    assert not any("qk_norm" in n or "grad_accum" in n or "qk_cat" in n for n in list(fwd) + list(bwd))


def test_eager_gqa_rope_is_nine_passes_forward_ten_backward_and_qk_norm_is_a_norm():
    model = {**MOE, "attention": {**MOE["attention"], "qk_norm": True}}
    fwd, bwd = ops_of(scenario(model, kernels="eager"))
    # cat(x1*cos - x2*sin, x2*cos + x1*sin): four multiplies of half-rows, S/2 read and S/2
    # written each (4S, strided); subtract and add read S and write S/2 each (3S); the cat of the
    # two contiguous halves reads and writes S (2S). Backward: the same plus the negation (S,
    # strided) of the rotation.
    assert fwd["L0.attn.rope"].bytes_moved == 4 * GQA_QK_BYTES
    assert fwd["L0.attn.rope_sum_cat"].bytes_moved == 5 * GQA_QK_BYTES
    assert bwd["L0.attn.rope_bwd"].bytes_moved == 5 * GQA_QK_BYTES
    assert bwd["L0.attn.rope_bwd_sum_cat"].bytes_moved == 5 * GQA_QK_BYTES
    assert [fwd["L0.attn.rope"].access, fwd["L0.attn.rope_sum_cat"].access, bwd["L0.attn.rope_bwd"].access,
            bwd["L0.attn.rope_bwd_sum_cat"].access] == ["strided", "stream", "strided", "stream"]
    assert fwd["L0.attn.qk_norm"].bytes_moved == 2 * GQA_QK_BYTES  # read, write
    assert bwd["L0.attn.qk_norm_bwd"].bytes_moved == 3 * GQA_QK_BYTES  # read x and dy, write dx
    names = list(fwd)
    assert names.index("L0.attn.qkv") < names.index("L0.attn.qk_norm") < names.index("L0.attn.rope") \
        < names.index("L0.attn.core")


def test_tensor_parallel_splits_the_heads():
    fwd, _ = ops_of(scenario(par=dict(tp=2, dp=1)))
    assert fwd["L0.attn.rope"].bytes_moved == 2 * 64 * (4 + 2) * 8 * 2


def test_mla_eager_ropes_the_rope_parts_then_concatenates():
    fwd, bwd = ops_of(scenario(MLA, kernels="eager"))
    assert fwd["L0.attn.rope"].bytes_moved == 9 * MLA_ROPE
    assert fwd["L0.attn.qk_cat"].bytes_moved == 2 * (MLA_Q + MLA_Q)
    assert bwd["L0.attn.qk_cat_bwd"].bytes_moved == 2 * (MLA_Q + MLA_KV) + MLA_K_ROPE_HEADS
    assert fwd["L0.attn.qk_cat"].access == bwd["L0.attn.qk_cat_bwd"].access == "last_dim_cat"
    assert fwd["L0.attn.rope"].access == "stream"  # DeepSeek's complex form has no cat
    assert bwd["L0.attn.rope_bwd"].bytes_moved == 9 * MLA_ROPE


def test_mla_fused_writes_whole_q_and_k_in_one_kernel():
    fwd, bwd = ops_of(scenario(MLA))
    assert fwd["L0.attn.rope"].bytes_moved == 2 * (MLA_Q + MLA_Q)
    assert bwd["L0.attn.rope_bwd"].bytes_moved == 2 * (MLA_Q + MLA_Q)
    assert "L0.attn.qk_cat" not in fwd


@pytest.mark.parametrize("master, grad_bytes", [("fp32", 4), ("bf16", 2)])
def test_eager_adds_each_micro_batch_gradient_but_the_first(master, grad_bytes):
    # global 32, micro 2, dp 1: 16 micro-batches, 15 of them added into .grad
    sc = scenario(kernels="eager", optimizer=dict(type="adam", master_weights_dtype=master, moments_dtype=master))
    prog = build_stage_program(sc, 0)
    _, bwd = by_name(prog.forward), by_name(prog.backward)
    for b in prog.blocks:
        lp = block_local_params(sc, b)
        assert bwd[f"L{b}.grad_accum"].bytes_moved == pytest.approx(3 * (lp.dense + lp.experts) * grad_bytes * 15 / 16)
    extras = stage_local_params(sc, 0).dense - sum(block_local_params(sc, b).dense for b in prog.blocks)
    assert extras > 0  # embedding and head on the only stage
    assert bwd["stage.grad_accum"].bytes_moved == pytest.approx(3 * extras * grad_bytes * 15 / 16)
    check_dependencies(prog.backward)


def test_one_micro_batch_accumulates_nothing():
    prog = build_stage_program(scenario(kernels="eager", global_batch=2), 0)
    assert not any(op.name.endswith("grad_accum") for op in prog.backward)


def test_full_recompute_repeats_the_forward_prep():
    prog = build_stage_program(scenario(MLA, kernels="eager", activation_recompute="full"), 0)
    bwd = by_name(prog.backward)
    assert bwd["L0.attn.rope.rc"].bytes_moved == 9 * MLA_ROPE
    assert bwd["L0.attn.qk_cat.rc"].bytes_moved == 2 * (MLA_Q + MLA_Q)


def test_eager_is_slower_than_fused_in_a_step():
    from test_engine import SMALL

    from simmoe.config import load_default_scenario
    from simmoe.engine.runner import Simulation

    fused = Simulation(load_default_scenario(SMALL)).run_step(0).step_time_s
    eager = Simulation(load_default_scenario(SMALL + ["training.kernels=eager"])).run_step(0).step_time_s
    assert eager > fused


def test_unknown_kernel_stack_is_named(tmp_path):
    path = write(tmp_path, "s.yaml", variant(training__kernels="compiled"))
    expect(path, "training.kernels='compiled'", "not an allowed value", "one of fused, eager")


# Where one tensor feeds several ops autograd sums the input gradients that come back, one add
# per extra consumer; the shared expert's output is added to the routed one. Each add reads two
# T x d tensors and writes one: 3 x 64 x 64 x 2 B.
ADD = 3 * 64 * 64 * 2
NO_SHARED = {**MOE, "moe": {**MOE["moe"], "shared_experts": 0}}


@pytest.mark.parametrize("model, kernels, moe_adds, attn_adds", [
    (MOE, "fused", 2, 0),  # the norm's output: router + permute, shared expert; fused QKV GEMM
    (MOE, "eager", 3, 2),  # and the shared gate and up GEMMs apart; Q, K and V projections apart
    (NO_SHARED, "eager", 1, 2),
    (MLA, "fused", 2, 1),  # MLA's Q and KV down-projections read the same normed input
])
def test_fan_out_gradients_are_summed_and_shared_output_added(model, kernels, moe_adds, attn_adds):
    fwd, bwd = ops_of(scenario(model, kernels=kernels))
    assert bwd["L1.moe.fanout_bwd"].bytes_moved == moe_adds * ADD
    if attn_adds:
        assert bwd["L1.attn.fanout_bwd"].bytes_moved == attn_adds * ADD
    else:
        assert "L1.attn.fanout_bwd" not in bwd
    shared = model["moe"]["shared_experts"] > 0
    assert ("L1.moe.shared_add" in fwd) == shared
    if shared:
        assert fwd["L1.moe.shared_add"].bytes_moved == ADD
        assert fwd["L1.moe.shared_add"].after == ("L1.moe.unpermute", "L1.shared.fc2")
    names = list(bwd)  # each sum after the last consumer's backward, before the norm's
    assert names.index("L1.moe.router.bwd") < names.index("L1.moe.fanout_bwd") < names.index("L1.ln2_bwd")
    if attn_adds:
        assert names.index("L1.attn.fanout_bwd") + 1 == names.index("L1.ln1_bwd")


def test_sequence_parallel_sums_the_rank_s_rows():
    fwd, bwd = ops_of(scenario(MLA, par=dict(tp=2, dp=1, sequence_parallel=True)))
    assert bwd["L1.attn.fanout_bwd"].bytes_moved == ADD / 2  # the down-projections read T/tp rows
    assert bwd["L1.moe.fanout_bwd"].bytes_moved == 2 * ADD / 2
    assert fwd["L1.moe.shared_add"].bytes_moved == ADD / 2
