"""MXFP8 (training.precision = mxfp8): GEMMs in FP8 with E8M0 block scales, as Transformer Engine's
MXFP8BlockScaling recipe runs them (simmoe.workload.builder docstring, docs/workload.md)."""

from __future__ import annotations

import pytest

from simmoe.config import load_scenario
from simmoe.memory import _Act
from simmoe.workload import build_stage_program
from simmoe.workload.ops import ExpertGemmOp, GemmOp
from tests.test_config import expect, variant, write
from tests.test_config import topo  # noqa: F401 (fixture)
from tests.test_workload_builder import MLA, by_name, check_dependencies, scenario

MX = 1 + 1 / 32  # bytes per MXFP8 element with its share of a 1-byte scale per 32 elements


def test_mx_quantization_writes_two_copies_forward_and_backward_and_requantizes_nothing():
    prog = build_stage_program(scenario(MLA, precision="mxfp8"), 0)
    f, b = by_name(prog.forward), by_name(prog.backward)
    # L0.ffn.fc1: m = 64 tokens (micro-batch 2 x seq 32), k = hidden 64, n = 2 x 128 (SwiGLU).
    g = f["L0.ffn.fc1"]
    assert (g.m, g.n, g.k, g.dtype) == (64, 256, 64, "fp8")
    # Forward: read 64 x 64 BF16 (8192 B), write a row-wise and a column-wise copy (2 x 4224 B).
    assert f["L0.ffn.fc1.quant"].bytes_moved == pytest.approx(8192 + 2 * 4224)
    # Backward: the 64 x 256 output gradient, read (32768 B) and written twice (2 x 16896 B); the
    # saved input's column-wise copy is read as it is (no re-quantization term).
    assert b["L0.ffn.fc1.bwd_quant"].bytes_moved == pytest.approx(32768 + 2 * 16896)
    for op in prog.forward:
        if isinstance(op, GemmOp) and op.dtype == "fp8":
            assert f[f"{op.name}.quant"].bytes_moved == pytest.approx(op.m * op.k * (2 + 2 * MX))
    check_dependencies(prog.forward)
    check_dependencies(prog.backward)


def test_mx_runs_the_same_gemms_and_flops_as_fine_grained_fp8():
    mx = build_stage_program(scenario(MLA, precision="mxfp8"), 0)
    fp8 = build_stage_program(scenario(MLA, precision="fp8"), 0)

    def gemms(prog):
        return [(op.name, op.dtype, op.model_flops) for op in prog.forward + prog.backward
                if isinstance(op, (GemmOp, ExpertGemmOp))]

    assert gemms(mx) == gemms(fp8)
    assert [op.name for op in mx.forward] == [op.name for op in fp8.forward]


def test_mx_expert_gemms_quantize_at_the_balanced_load():
    prog = build_stage_program(scenario(MLA, par=dict(ep=2, dp=2), precision="mxfp8"), 0)
    f, b = by_name(prog.forward), by_name(prog.backward)
    rows = prog.moe_tokens * 2  # top-2 at the balanced load, one expert-parallel rank
    assert f["L1.moe.fc1.quant"].bytes_moved == pytest.approx(rows * 64 * (2 + 2 * MX))
    assert b["L1.moe.fc1.bwd_quant"].bytes_moved == pytest.approx(rows * 2 * 32 * (2 + 2 * MX))


def test_mx_activation_memory_saves_quantized_linear_inputs_and_bf16_elsewhere():
    mx, fp8 = _Act(scenario(MLA, precision="mxfp8")), _Act(scenario(MLA, precision="fp8"))
    assert mx.lin_in == fp8.lin_in == pytest.approx(MX)
    assert mx.expert_fc1_in == pytest.approx(MX)
    assert (mx.expert_act_in, mx.attn_out) == (2.0, 2.0)  # TE keeps these BF16
    assert (fp8.expert_act_in, fp8.attn_out) == (pytest.approx(MX), 1.5)  # DeepSeek-V3's choices


def test_mxfp8_needs_blackwell_tensor_cores(tmp_path, topo):  # noqa: F811
    path = write(tmp_path, "s.yaml", variant(training__precision="mxfp8"))
    expect(path, "s.yaml", "training.precision='mxfp8'", "H100-SXM", "architecture hopper",
           "no MX block-scaled tensor cores", "allowed: fp8 or bf16 on this GPU; mxfp8 on blackwell GPUs")
    topo["gpu_model"] = "A100-SXM-80GB"
    expect(path, "training.precision='mxfp8'", "no FP8 tensor cores", "allowed: bf16")
    topo["gpu_model"] = "B200"
    s = load_scenario(path)
    assert s.training.precision == "mxfp8" and s.training.fp8_gemms
