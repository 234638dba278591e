"""FP8 quantization kernels in the stage programs (DeepSeek-V3 report, section 3.5.2)."""

from __future__ import annotations

import pytest

from simmoe.workload import build_stage_program
from simmoe.workload.ops import ExpertGemmOp, GemmOp, MemoryOp
from tests.test_workload_builder import MLA, by_name, check_dependencies, scenario

FP8 = 1 + 4 / 128  # bytes per FP8 element with its 1x128 scale


def test_every_fp8_gemm_input_is_quantized_first():
    prog = build_stage_program(scenario(MLA, precision="fp8"), 0)
    ops = list(prog.forward)
    names = [op.name for op in ops]
    for i, op in enumerate(ops):
        if isinstance(op, GemmOp) and op.dtype == "fp8":
            quant = by_name(ops)[f"{op.name}.quant"]
            assert isinstance(quant, MemoryOp) and names.index(quant.name) < i
            assert quant.bytes_moved == pytest.approx(op.m * op.k * (2 + FP8))  # read BF16, write FP8
            assert quant.name in op.after or names[i - 1] == quant.name
    check_dependencies(prog.forward)
    check_dependencies(prog.backward)


def test_backward_quantizes_the_gradient_twice_and_requantizes_the_input():
    prog = build_stage_program(scenario(MLA, precision="fp8"), 0)
    b = by_name(prog.backward)
    g = b["L0.ffn.fc1.bwd"]  # m = 64 tokens, n = 2 x 128 (SwiGLU), k = 64
    assert b["L0.ffn.fc1.bwd_quant"].bytes_moved == pytest.approx(
        g.m * g.n * (2 + 2 * FP8) + g.m * g.k * 2 * FP8)


def test_bf16_has_no_quantization_and_bf16_gemms_in_fp8_runs_neither():
    bf16 = build_stage_program(scenario(MLA), 0)
    assert not [op for op in bf16.forward + bf16.backward if "quant" in op.name]
    fp8 = by_name(build_stage_program(scenario(MLA, precision="fp8"), 0).forward)
    assert "head.logits.quant" not in fp8 and "L0.attn.core.quant" not in fp8


def test_fp8_dispatch_quantizes_tokens_once_before_the_dispatch():
    sc = scenario(MLA, par=dict(ep=2, dp=2), precision="fp8", routing=dict(dispatch_dtype="fp8"))
    prog = build_stage_program(sc, 0)
    f = by_name(prog.forward)
    names = [op.name for op in prog.forward]
    assert names.index("L1.moe.quant") < names.index("L1.moe.dispatch")
    assert f["L1.moe.quant"].bytes_moved == pytest.approx(prog.moe_tokens * 64 * (2 + FP8))
    assert "L1.moe.fc1.quant" not in f  # dispatched tokens arrive in FP8
    assert isinstance(f["L1.moe.fc2"], ExpertGemmOp) and "L1.moe.fc2.quant" in f
    assert "L1.moe.fc1.bwd_quant" in by_name(prog.backward)
    check_dependencies(prog.forward)


def test_selective_recompute_requantizes_the_recomputed_up_projections():
    prog = build_stage_program(scenario(MLA, precision="fp8", activation_recompute="selective"), 0)
    rc = [op.name for op in prog.backward if op.phase == "recompute"]
    assert "L1.attn.q_up.quant.rc" in rc and rc.index("L1.attn.q_up.quant.rc") < rc.index("L1.attn.q_up.rc")


def test_shared_expert_branch_keeps_overlapping_the_dispatch():
    sc = scenario(MLA, par=dict(ep=2, dp=2), precision="fp8", routing=dict(dispatch_dtype="fp8"))
    f = by_name(build_stage_program(sc, 0).forward)
    assert f["L1.shared.fc1.quant"].after == ("L1.moe.quant",)
    assert f["L1.shared.fc1"].after == ("L1.shared.fc1.quant",)
    assert set(f["L1.moe.fc1"].after) == {"L1.moe.dispatch", "L1.shared.fc2"}
