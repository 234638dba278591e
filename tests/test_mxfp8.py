"""MXFP8 (training.precision = mxfp8): GEMMs in FP8 with E8M0 block scales, as Transformer Engine's
MXFP8BlockScaling recipe runs them (simmoe.workload.builder docstring, docs/workload.md)."""

from __future__ import annotations

import pytest
import yaml

from simmoe.compute.params import DEFAULT_ROOFLINE_FILE
from simmoe.compute.roofline import RooflineModel
from simmoe.config import load_scenario
from simmoe.errors import InputError
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
    assert (g.m, g.n, g.k, g.dtype) == (64, 256, 64, "mxfp8")
    # Forward: read 64 x 64 BF16 (8192 B), write a row-wise and a column-wise copy (2 x 4224 B).
    assert f["L0.ffn.fc1.quant"].bytes_moved == pytest.approx(8192 + 2 * 4224)
    # Backward: the 64 x 256 output gradient, read (32768 B) and written twice (2 x 16896 B); the
    # saved input's column-wise copy is read as it is (no re-quantization term).
    assert b["L0.ffn.fc1.bwd_quant"].bytes_moved == pytest.approx(32768 + 2 * 16896)
    for op in prog.forward:
        if isinstance(op, GemmOp) and op.dtype == "mxfp8":
            assert f[f"{op.name}.quant"].bytes_moved == pytest.approx(op.m * op.k * (2 + 2 * MX))
    check_dependencies(prog.forward)
    check_dependencies(prog.backward)


def test_mx_runs_the_same_gemms_and_flops_as_fine_grained_fp8_in_its_own_dtype():
    mx = build_stage_program(scenario(MLA, precision="mxfp8"), 0)
    fp8 = build_stage_program(scenario(MLA, precision="fp8"), 0)

    def gemms(prog, fp8_dtype):
        return [(op.name, "fp8" if op.dtype == fp8_dtype else op.dtype, op.model_flops)
                for op in prog.forward + prog.backward if isinstance(op, (GemmOp, ExpertGemmOp))]

    assert gemms(mx, "mxfp8") == gemms(fp8, "fp8")
    assert {op.dtype for op in mx.forward if isinstance(op, GemmOp)} >= {"mxfp8"}
    assert "fp8" not in {op.dtype for op in mx.forward + mx.backward if isinstance(op, (GemmOp, ExpertGemmOp))}
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


# -- GEMM timing (simmoe.compute.roofline, roofline.yaml block_scaled.mxfp8) -----------------------

# Transformer Engine's GEMM profiling guide (roofline.yaml block_scaled.mxfp8 source): one layer of
# hidden 4096, FFN 16384, 15,872 tokens; MxKxN as the guide writes them, fprop, dgrad and wgrad.
TE_GUIDE_SHAPES_MKN = [
    (15872, 4096, 12288), (15872, 4096, 4096), (15872, 4096, 16384), (15872, 16384, 4096),
    (15872, 12288, 4096), (15872, 4096, 4096), (15872, 16384, 4096), (15872, 4096, 16384),
    (4096, 15872, 12288), (4096, 15872, 4096), (4096, 15872, 16384), (16384, 15872, 4096),
]
TE_GUIDE_MX_OVER_PER_TENSOR = 7.161 / 6.812  # pre-quantized per-layer GEMM time, MXFP8 / FP8 current


def test_mx_gemms_reproduce_te_guide_layer_ratio_over_per_tensor_fp8():
    model = RooflineModel("B200", clocks="burst")
    mx = sum(model.gemm_s(m, n, k, "mxfp8") for m, k, n in TE_GUIDE_SHAPES_MKN)
    fp8 = sum(model.gemm_s(m, n, k, "fp8") for m, k, n in TE_GUIDE_SHAPES_MKN)
    # Compute-bound shapes: the main-loop factor carries through whole; the 3 us launch and the
    # fixed per-tile cost dilute it by well under 1%.
    assert mx / fp8 == pytest.approx(TE_GUIDE_MX_OVER_PER_TENSOR, rel=0.005)


def test_mx_factor_slows_the_main_loop_not_hbm_bound_gemms():
    model = RooflineModel("B200")
    factor = model.params.block_scaled["mxfp8"].main_loop_time_factor
    big = model.gemm_parts(16384, 16384, 16384, "mxfp8"), model.gemm_parts(16384, 16384, 16384, "fp8")
    assert float(big[0]["compute_s"]) == pytest.approx(float(big[1]["compute_s"]) * factor)
    # A decode-like GEMM (8 rows; 256 output tiles, more than the SMs, so no split-K) reads its
    # weight: bytes, with MX scales on the weight too (1/32 byte per element, where fine-grained
    # FP8 has one FP32 scale per 128 x 128 block).
    small = model.gemm_parts(8, 65536, 8192, "mxfp8")
    assert float(small["split_k"]) == 1 and float(small["memory_s"]) > float(small["compute_s"])
    weight = 8192 * 65536 * (1 + 1 / 32)
    rows = 8 * 8192 * (1 + 1 / 32) + 8 * 65536 * 2
    assert float(small["memory_s"]) == pytest.approx((weight + rows) / model.hbm_bytes_per_s)
    grouped = [model.grouped_gemm_s([4096] * 8, 2048, 7168, d) for d in ("mxfp8", "fp8")]
    assert 1.0 < grouped[0] / grouped[1] <= factor


def test_mx_gemm_needs_blackwell_and_the_format_in_the_parameter_file(tmp_path):
    with pytest.raises(InputError, match="H100-SXM has no MXFP8 tensor cores"):
        RooflineModel("H100-SXM").gemm_s(4096, 4096, 4096, "mxfp8")
    with pytest.raises(InputError, match=r"unknown dtype \(allowed: bf16, fp8\)"):  # attention: no MX kernel
        RooflineModel("B200").attention_s(1, 4096, 32, 128, 128, True, "mxfp8", False)
    tree = yaml.safe_load(DEFAULT_ROOFLINE_FILE.read_text())
    for edit, field, allowed in (
            (lambda t: t["block_scaled"]["mxfp8"].update(runs_as="fp4"), "block_scaled.mxfp8.runs_as", "bf16, fp8"),
            (lambda t: t["block_scaled"]["mxfp8"].update(main_loop_time_factor=7), "main_loop_time_factor",
             "between 0.5 and 3"),
            (lambda t: t["block_scaled"].update(nvfp4=t["block_scaled"]["mxfp8"]), "block_scaled.nvfp4", "mxfp8"),
            (lambda t: t["block_scaled"]["mxfp8"].pop("b_scale_bytes_per_element"),
             "block_scaled.mxfp8.b_scale_bytes_per_element", "")):
        bad = yaml.safe_load(yaml.safe_dump(tree))
        edit(bad)
        path = tmp_path / "roofline.yaml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(InputError) as info:
            RooflineModel("B200", params_file=path)
        text = str(info.value)
        assert "roofline.yaml" in text and field in text and allowed in text
    del tree["block_scaled"]  # an older parameter file: the format is unknown, said so
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(InputError, match="unknown dtype.*allowed: bf16, fp8"):
        RooflineModel("B200", params_file=path).gemm_s(4096, 4096, 4096, "mxfp8")
