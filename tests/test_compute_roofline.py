"""Roofline compute model: oracles by hand from the published anchors, and invariants (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from simmoe.compute import (
    ComputeModel,
    RooflineModel,
    attention_flops,
    gemm_backward_s,
    gemm_flops,
    grouped_gemm_backward_s,
    grouped_gemm_flops,
    load_roofline_params,
)
from simmoe.compute.params import DEFAULT_ROOFLINE_FILE
from simmoe.errors import InputError

H100 = RooflineModel("H100-SXM", clocks="burst")  # the anchors and hand oracles are burst figures
OVERHEAD_S = 3.0e-6  # kernel_overhead_s in simmoe/data/roofline.yaml
SMS = 132  # H100-SXM
BF16_PEAK = 989e12
FP8_PEAK = 1979e12


def useful_tflops(flops, seconds):
    return flops / seconds / 1e12


# -- large GEMMs: the published anchor ------------------------------------------------------------


def test_anchor_gemm_reproduces_published_h100_bf16_rate():
    # 8192^3 BF16 on H100 measured at 798 of 989 TFLOPS (shared/reference/hardware.yaml).
    m = n = k = 8192
    assert H100.gemm_s(m, n, k, "bf16") == pytest.approx(2 * m * n * k / (BF16_PEAK * 798 / 989), rel=0.01)


def test_full_wave_gemm_runs_at_solved_main_loop_efficiency():
    # By hand: at 8192^3 a 128x256 tiling gives 2048 tiles = 15.5 waves of 132 -> 16 waves, so the
    # main loop must run at e = 16*132*(2*128*256*8192) / (989e12 * (t_anchor - 3us)).
    t_anchor = 2 * 8192**3 / 798e12
    e = 16 * 132 * (2 * 128 * 256 * 8192) / (BF16_PEAK * (t_anchor - OVERHEAD_S))
    assert H100.gemm_efficiency["bf16"] == pytest.approx(e, rel=1e-9)
    # 16896 x 1024 = exactly 8 waves of 128x128 tiles (4 of 128x256): no quantization loss.
    m, n, k = 128 * 132, 1024, 8192
    assert H100.gemm_s(m, n, k, "bf16") == pytest.approx(OVERHEAD_S + 2 * m * n * k / (BF16_PEAK * e), rel=1e-9)


def test_fp8_beats_bf16_on_large_gemms_but_not_on_tiny_ones():
    big_bf16, big_fp8 = H100.gemm_s(8192, 8192, 8192, "bf16"), H100.gemm_s(8192, 8192, 8192, "fp8")
    assert big_bf16 / big_fp8 > 1.5
    # FP8 anchor: DeepGEMM's published 1358 TFLOPS at 4096x7168x16384 on H800 (same SMs and peak).
    anchor = H100.gemm_s(4096, 7168, 16384, "fp8")
    assert useful_tflops(gemm_flops(4096, 7168, 16384), anchor) == pytest.approx(1358, rel=1e-6)
    tiny_bf16, tiny_fp8 = H100.gemm_s(64, 64, 64, "bf16"), H100.gemm_s(64, 64, 64, "fp8")
    assert tiny_fp8 >= 0.95 * tiny_bf16  # launch-bound: the faster tensor cores buy nothing


# -- tile and wave quantization -------------------------------------------------------------------


def test_one_tile_more_than_a_full_wave_costs_a_second_wave():
    # 1536 x 1408 = 12 x 11 = 132 tiles of 128x128: one full wave on 132 SMs.
    # 896 x 2432 = 7 x 19 = 133 tiles: one tile more -> two waves (the 128x256 tiling, 7 x 10 = 70
    # double-size tiles, is no better). K = 8192 keeps both compute bound.
    one = H100.gemm_parts(1536, 1408, 8192, "bf16")
    two = H100.gemm_parts(896, 2432, 8192, "bf16")
    assert float(two["compute_s"]) == pytest.approx(2 * float(one["compute_s"]), rel=1e-12)
    assert float(one["compute_s"]) > float(one["memory_s"]) and float(two["compute_s"]) > float(two["memory_s"])
    wave_s = 2 * 128 * 128 * 8192 / (BF16_PEAK / SMS * H100.gemm_efficiency["bf16"])
    assert float(one["compute_s"]) == pytest.approx(wave_s, rel=1e-12)
    assert H100.gemm_s(896, 2432, 8192, "bf16") / H100.gemm_s(1536, 1408, 8192, "bf16") == pytest.approx(
        (OVERHEAD_S + 2 * wave_s) / (OVERHEAD_S + wave_s), rel=1e-9)


def test_a_few_tokens_make_a_gemm_bandwidth_bound():
    # 1 x 7168 @ 7168 x 4096 BF16: the 58.7 MB weight read at 3.0 TB/s sets the time.
    parts = H100.gemm_parts(1, 4096, 7168, "bf16")
    weight_bytes = 7168 * 4096 * 2
    assert float(parts["memory_s"]) >= float(parts["compute_s"])
    assert float(parts["total_s"]) == pytest.approx(OVERHEAD_S + weight_bytes / 3.0e12, rel=0.01)


@settings(max_examples=150, deadline=None)
@given(
    m=st.integers(1, 20000), n=st.integers(1, 20000), k=st.integers(1, 20000),
    dm=st.integers(0, 3000), dn=st.integers(0, 3000), dk=st.integers(0, 3000),
    dtype=st.sampled_from(["bf16", "fp8"]),
)
def test_gemm_time_is_monotone_in_each_dimension(m, n, k, dm, dn, dk, dtype):
    t = H100.gemm_s(m, n, k, dtype)
    assert H100.gemm_s(m + dm, n, k, dtype) >= t
    assert H100.gemm_s(m, n + dn, k, dtype) >= t
    assert H100.gemm_s(m, n, k + dk, dtype) >= t
    assert t <= H100.gemm_s(m + dm, n + dn, k + dk, dtype)


def test_gemm_accepts_arrays_and_matches_scalar_calls():
    m = np.array([1, 100, 4096, 8192])
    out = H100.gemm_s(m, 4096, 7168, "bf16")
    assert out.shape == (4,)
    assert out == pytest.approx([H100.gemm_s(int(x), 4096, 7168, "bf16") for x in m], rel=1e-12)
    assert H100.gemm_s(0, 4096, 7168, "bf16") == 0.0  # empty: no kernel


# -- grouped expert GEMMs -------------------------------------------------------------------------


def test_grouped_gemm_of_equal_experts_equals_separate_gemms_without_extra_launches():
    # Per expert 1408 x 1536 = 11 x 12 = 132 tiles: each separate GEMM is one full wave; grouped,
    # 8 experts are 8 full waves. Same compute, one launch instead of eight.
    n, k, experts = 1536, 7168, 8
    single = H100.gemm_parts(1408, n, k, "bf16")
    grouped = H100.grouped_gemm_parts(np.full(experts, 1408), n, k, "bf16")
    assert grouped["compute_s"] == pytest.approx(experts * float(single["compute_s"]), rel=1e-12)
    assert H100.grouped_gemm_s(np.full(experts, 1408), n, k, "bf16") == pytest.approx(
        experts * (H100.gemm_s(1408, n, k, "bf16") - OVERHEAD_S) + OVERHEAD_S, rel=1e-12)
    # Partial waves of separate GEMMs pack together in one grouped kernel: never slower.
    for tokens in (300, 1000, 5000):
        assert H100.grouped_gemm_s(np.full(experts, tokens), 2048, k, "bf16") <= experts * H100.gemm_s(
            tokens, 2048, k, "bf16")


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_grouped_gemm_efficiency_falls_as_tokens_per_expert_fall(dtype):
    # Same 32768 routed tokens, hidden 7168 -> expert width 2048, finer and finer experts.
    n, k, total = 2048, 7168, 32768
    rates = []
    for experts in (64, 256, 1024):
        tokens = np.full(experts, total // experts)
        rates.append(useful_tflops(grouped_gemm_flops(tokens, n, k), H100.grouped_gemm_s(tokens, n, k, dtype)))
    assert rates[0] > rates[1] > rates[2]
    assert rates[2] < 0.25 * rates[0]  # 32 tokens/expert: weight reads dominate


def test_grouped_gemm_empty_experts_cost_nothing_but_the_launch():
    assert H100.grouped_gemm_s(np.zeros(64), 2048, 7168, "bf16") == pytest.approx(OVERHEAD_S)
    with_empty = np.array([512] * 8 + [0] * 56)
    assert H100.grouped_gemm_s(with_empty, 2048, 7168, "bf16") == pytest.approx(
        H100.grouped_gemm_s(np.full(8, 512), 2048, 7168, "bf16"), rel=1e-12)


def test_grouped_gemm_batches_independent_calls_on_leading_axes():
    batch = np.array([[512] * 16, [0] * 8 + [1024] * 8, [100] * 16])
    out = H100.grouped_gemm_s(batch, 2048, 7168, "bf16")
    assert out.shape == (3,)
    assert out == pytest.approx([H100.grouped_gemm_s(row, 2048, 7168, "bf16") for row in batch], rel=1e-12)


@st.composite
def skewed_counts(draw, experts: int, per_expert: int, allow_empty: bool):
    """A random split of experts * per_expert tokens over the experts."""
    low = 0 if allow_empty else 1
    total = experts * per_expert
    cuts = sorted(draw(st.lists(st.integers(0, total - experts * low), min_size=experts - 1, max_size=experts - 1)))
    parts = np.diff([0, *cuts, total - experts * low]) + low
    return np.array(parts)


@settings(max_examples=100, deadline=None)
@given(tokens=skewed_counts(experts=32, per_expert=512, allow_empty=False), dtype=st.sampled_from(["bf16", "fp8"]))
def test_skewed_load_is_not_faster_than_balanced_when_every_expert_is_used(tokens, dtype):
    balanced = np.full(32, 512)  # 512 = 4 whole 128-row tiles: the fewest tiles the total allows
    assert tokens.sum() == balanced.sum()
    assert H100.grouped_gemm_s(tokens, 2048, 7168, dtype) >= H100.grouped_gemm_s(balanced, 2048, 7168, dtype)


@settings(max_examples=100, deadline=None)
@given(tokens=skewed_counts(experts=8, per_expert=4096, allow_empty=True))
def test_skewed_load_is_not_faster_than_balanced_when_compute_bound(tokens):
    # 4096 tokens per expert is compute bound; skew (even leaving experts idle) cannot beat it.
    balanced = np.full(8, 4096)
    parts = H100.grouped_gemm_parts(balanced, 4096, 7168, "bf16")
    assert parts["compute_s"] > parts["memory_s"]
    assert H100.grouped_gemm_s(tokens, 4096, 7168, "bf16") >= H100.grouped_gemm_s(balanced, 4096, 7168, "bf16")


@settings(max_examples=100, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 3000), min_size=1, max_size=40),
    index=st.integers(0, 39), extra=st.integers(1, 500),
)
def test_grouped_gemms_are_monotone_in_each_experts_tokens(tokens, index, extra):
    tokens = np.array(tokens)
    more = tokens.copy()
    more[index % len(tokens)] += extra
    for method in (H100.grouped_gemm_s, H100.grouped_gemm_wgrad_s):
        assert method(more, 2048, 7168, "bf16") >= method(tokens, 2048, 7168, "bf16")


# -- backward helpers -----------------------------------------------------------------------------


def test_gemm_backward_is_dgrad_plus_wgrad():
    back = gemm_backward_s(H100, 4096, 2048, 7168, "bf16")
    assert back.dgrad_s == H100.gemm_s(4096, 7168, 2048, "bf16")  # (m x n) @ (n x k)
    assert back.wgrad_s == H100.gemm_s(7168, 2048, 4096, "bf16")  # (k x m) @ (m x n)
    square = gemm_backward_s(H100, 8192, 8192, 8192, "bf16")
    assert square.total_s == pytest.approx(2 * H100.gemm_s(8192, 8192, 8192, "bf16"), rel=1e-12)


def test_grouped_backward_wgrad_by_hand():
    # 8 experts x 4096 tokens, n=2048, k=7168. dgrad: per expert (4096 x 2048) @ (2048 x 7168).
    tokens = np.full(8, 4096)
    back = grouped_gemm_backward_s(H100, tokens, 2048, 7168, "bf16")
    assert back.dgrad_s == H100.grouped_gemm_s(tokens, 7168, 2048, "bf16")
    # wgrad: per expert a 7168 x 2048 output = 56 x 16 = 896 tiles of 128x128 (56 x 8 = 448 of
    # 128x256), depth 4096. 8 x 896 = 7168 tiles = 54.3 -> 55 waves of 132 (128x256: 3584 -> 28
    # double waves = 56 single). One wave lasts 2*128*128*4096 / (peak/132 * e).
    wave_s = 2 * 128 * 128 * 4096 / (BF16_PEAK / SMS * H100.gemm_efficiency["bf16"])
    assert back.wgrad_s == pytest.approx(OVERHEAD_S + 55 * wave_s, rel=1e-12)


def test_grouped_wgrad_with_uneven_depths_waits_for_long_tiles():
    # One expert with 4096 tokens and seven with 128: 8 x 896 tiles; longest first, the first
    # 896 tiles (4096 deep) fill 6.8 waves -> waves 1-7 are long, the rest are short.
    tokens = np.array([4096] + [128] * 7)
    parts = H100.grouped_gemm_wgrad_parts(tokens, 2048, 7168, "bf16")
    per_sm = BF16_PEAK / SMS * H100.gemm_efficiency["bf16"]
    long_s, short_s = 2 * 128 * 128 * 4096 / per_sm, 2 * 128 * 128 * 128 / per_sm
    # 128x128: 7168 tiles; wave starts at 0,132,...; first 896 long -> 7 waves start in long tiles
    # (0..792), 55 - 7 = 48 short waves. (128x256 tiles do the same work in 28 double-size waves,
    # 4 long + 24 short = 8 long + 48 short single-wave equivalents: worse.)
    assert float(parts["compute_s"]) == pytest.approx(7 * long_s + 48 * short_s, rel=1e-12)


# -- attention ------------------------------------------------------------------------------------


def test_causal_attention_costs_about_half_of_full_attention():
    args = dict(batch=4, seq_len=8192, heads=32, head_dim_qk=128, head_dim_v=128, dtype="bf16")
    for backward in (False, True):
        causal = H100.attention_parts(**args, causal=True, backward=backward)["compute_s"]
        full = H100.attention_parts(**args, causal=False, backward=backward)["compute_s"]
        # 64 query blocks: the causal triangle with whole diagonal blocks is 65/128 of the square.
        assert causal / full == pytest.approx(65 / 128, rel=0.02)
    exact = attention_flops(4, 8192, 32, 128, 128, causal=True) / attention_flops(4, 8192, 32, 128, 128, causal=False)
    assert exact == pytest.approx(8193 / 16384, rel=1e-12)


def test_attention_forward_rate_by_hand():
    # 4 x 32 heads x 64 query blocks = 8192 CTAs of 64 key blocks each = 62.06 -> 63 waves.
    parts = H100.attention_parts(4, 8192, 32, 128, 128, causal=False, dtype="bf16", backward=False)
    block_s = 2 * 128 * 128 * 256 / (BF16_PEAK / SMS * 0.662)
    assert parts["compute_s"] == pytest.approx(63 * 64 * block_s, rel=1e-12)
    back = H100.attention_parts(4, 8192, 32, 128, 128, causal=False, dtype="bf16", backward=True)
    # Backward: five matmuls (2.5x the forward's FLOPs) at 0.586 instead of 0.662 of peak.
    assert back["compute_s"] / parts["compute_s"] == pytest.approx(2.5 * 0.662 / 0.586, rel=1e-12)
    # DeepSeek-V3's head shape (d_qk 192, d_v 128): the same blocks, 320 instead of 256 FLOP per
    # (q, k) pair and element, at the measured rate factor (roofline.yaml head_dim_factor).
    mla = H100.attention_parts(4, 8192, 32, 192, 128, causal=False, dtype="bf16", backward=False)
    assert mla["compute_s"] == pytest.approx(63 * 64 * block_s * 320 / 256 / 1.115, rel=1e-12)


def test_attention_accepts_arrays():
    out = H100.attention_s(np.array([1, 2]), 4096, 16, 128, 128, True, "bf16", False)
    assert out[1] > out[0]
    assert out[0] == H100.attention_s(1, 4096, 16, 128, 128, True, "bf16", False)


# -- memory-bound kernels -------------------------------------------------------------------------


def test_memory_bound_time_is_bytes_over_achievable_hbm_bandwidth():
    # H100 HBM 3.35 TB/s x (3.0 / 3.35 measured copy) = 3.0e12 B/s.
    assert H100.memory_bound_s(1e9, kernels=0) == pytest.approx(1e9 / 3.0e12, rel=1e-12)
    assert H100.memory_bound_s(1e9) == pytest.approx(1e9 / 3.0e12 + OVERHEAD_S, rel=1e-12)
    a100 = RooflineModel("A100-SXM-80GB", clocks="burst")
    assert a100.memory_bound_s(1e9, kernels=0) == pytest.approx(1e9 / (2.039e12 * 3.0 / 3.35), rel=1e-12)
    assert H100.memory_bound_s(np.array([0, 1e6, 1e9]), kernels=0).shape == (3,)


@pytest.mark.parametrize("access, rate_TBps", [("last_dim_cat", 0.91), ("strided", 1.23), ("gather", 2.83)])
def test_slow_kernel_classes_are_the_measured_slowdown_of_a_copy(access, rate_TBps):
    # roofline.yaml: 3.0 TB/s streaming over the median rate of the measured kernels of the class.
    slow = {"last_dim_cat": H100.params.last_dim_cat_slowdown, "strided": H100.params.strided_slowdown,
            "gather": H100.params.gather_slowdown}[access]
    assert slow == pytest.approx(3.0 / rate_TBps, rel=0.01)
    assert H100.memory_bound_s(1e9, 0, access) == pytest.approx(slow * 1e9 / 3.0e12, rel=1e-12)
    assert H100.memory_bound_s(1e9, 1, access) == pytest.approx(slow * 1e9 / 3.0e12 + OVERHEAD_S)
    assert H100.with_sms_held(16).memory_bound_s(1e9, 1, access) == H100.memory_bound_s(1e9, 1, access)


def test_a_sum_of_gathered_rows_is_timed_as_a_copy():
    # measured: the unpermute's kernels at the copy rate (tests/test_gpu_measurements.py)
    assert H100.memory_bound_s(1e9, 1, "gather_sum") == H100.memory_bound_s(1e9, 1, "stream")


def test_an_unknown_kernel_class_names_the_allowed_ones():
    with pytest.raises(InputError, match="last_dim_cat, strided, gather"):
        H100.memory_bound_s(1e9, 1, "scatter")


# -- interface, provenance, errors ----------------------------------------------------------------


def test_roofline_model_satisfies_the_interface_and_describes_itself():
    assert isinstance(H100, ComputeModel)
    info = H100.describe()
    assert info["kind"] == "roofline" and info["device"] == "H100-SXM"
    assert info["source"] == "simmoe/data/roofline.yaml"
    assert info["identifier"] == H100.identifier and load_roofline_params().sha256[:12] in H100.identifier


def test_unknown_gpu_names_the_field():
    with pytest.raises(InputError) as err:
        RooflineModel("H200-NVL", file="cluster.yaml", field="cluster.gpu")
    assert err.value.field == "cluster.gpu" and "H100-SXM" in err.value.allowed


@pytest.mark.parametrize("call", [
    lambda m: m.gemm_s(1024, 1024, 1024, "fp8"),
    lambda m: m.grouped_gemm_s(np.full(4, 64), 1024, 1024, "fp8"),
    lambda m: m.attention_s(1, 1024, 8, 128, 128, True, "fp8", False),
])
def test_fp8_on_a100_is_refused_naming_the_dtype(call):
    with pytest.raises(InputError) as err:
        call(RooflineModel("A100-SXM-80GB"))
    assert err.value.field == "dtype" and err.value.value == "fp8" and err.value.allowed == "bf16"
    assert "A100-SXM-80GB" in str(err.value)


def test_other_bad_arguments_are_refused():
    with pytest.raises(InputError, match="dtype='fp16'"):
        H100.gemm_s(1, 1, 1, "fp16")
    with pytest.raises(InputError) as err:
        H100.gemm_s(-1, 1, 1, "bf16")
    assert err.value.field == "m"
    with pytest.raises(InputError, match="no fp8 attention backward"):
        H100.attention_s(1, 1024, 8, 128, 128, True, "fp8", True)
    with pytest.raises(InputError) as err:
        H100.grouped_gemm_s(512, 2048, 7168, "bf16")
    assert err.value.field == "tokens_per_expert"


def test_every_parameter_group_cites_a_source():
    tree = yaml.safe_load(DEFAULT_ROOFLINE_FILE.read_text())

    def check(node, path, cited):
        if isinstance(node, dict):
            here = cited or any("source" in str(key) for key in node)
            for key, value in node.items():
                check(value, f"{path}.{key}", here)
        elif isinstance(node, (int, float)) and not isinstance(node, bool) and path != ".schema":
            assert cited, f"{path} has no source"

    check(tree, "", False)
    assert "assumption" in DEFAULT_ROOFLINE_FILE.read_text()


def test_broken_parameter_file_names_the_field(tmp_path):
    tree = yaml.safe_load(DEFAULT_ROOFLINE_FILE.read_text())
    del tree["gemm"]["tile_k"]["fp8"]
    bad = tmp_path / "roofline.yaml"
    bad.write_text(yaml.safe_dump(tree))
    with pytest.raises(InputError) as err:
        RooflineModel("H100-SXM", params_file=bad)
    assert err.value.field == "gemm.tile_k.fp8" and str(bad) in str(err.value)
    tree = yaml.safe_load(DEFAULT_ROOFLINE_FILE.read_text())
    tree["gemm"]["anchors"]["bf16"]["measured_tflops"] = 2000  # faster than the datasheet peak
    bad.write_text(yaml.safe_dump(tree))
    with pytest.raises(InputError) as err:
        RooflineModel("H100-SXM", params_file=bad)
    assert err.value.field == "gemm.anchors.bf16"
    for key, value, field in (("192x128", {"forward": 1.0, "backward": 1.0}, "attention.head_dim_factor.192x128"),
                              ("192/128", {"forward": 1.0}, "attention.head_dim_factor.192/128"),
                              ("192/128", {"forward": -1.0, "backward": 1.0},
                               "attention.head_dim_factor.192/128.forward")):
        tree = yaml.safe_load(DEFAULT_ROOFLINE_FILE.read_text())
        tree["attention"]["head_dim_factor"] = {key: value}
        bad = tmp_path / f"roofline-{len(field)}.yaml"  # a new file: parameter files are cached by path
        bad.write_text(yaml.safe_dump(tree))
        with pytest.raises(InputError) as err:
            RooflineModel("H100-SXM", params_file=bad)
        assert err.value.field == field and str(bad) in str(err.value)


def test_efficiency_does_not_exceed_peak_anywhere():
    sizes = np.array([1, 7, 64, 128, 129, 1000, 4096, 8192, 16384, 32768])
    m, n, k = np.meshgrid(sizes, sizes, sizes, indexing="ij")
    for dtype, peak in (("bf16", BF16_PEAK), ("fp8", FP8_PEAK)):
        rate = gemm_flops(m, n, k) / H100.gemm_s(m, n, k, dtype)
        assert np.all(rate <= peak) and math.isfinite(float(rate.max()))


def test_skewed_grouped_gemm_pays_each_experts_own_roofline():
    """Two experts, n = k = 4096 BF16: one with 8192 tokens (compute-bound), one with 128 (its 32 MiB
    of weights take longer to read than its tile takes to compute). By hand: each expert's time is
    max(its padded tile FLOPs / rate, its bytes / HBM rate); the kernel takes at least their sum,
    more than max(total compute, total bytes) (which a balanced load reaches)."""
    n = k = 4096
    tokens = np.array([8192.0, 128.0])
    p, rate, bw = H100.params, H100._flops_per_s("bf16"), H100.hbm_bytes_per_s
    kpad = np.ceil(k / p.tile_k["bf16"]) * p.tile_k["bf16"] + p.tile_fixed_k["bf16"]
    per_expert = min(
        sum(max(np.ceil(t / tm) * np.ceil(n / tn) * 2 * tm * tn * kpad / rate, (t * (k + n) * 2 + k * n * 2) / bw)
            for t in tokens)
        for tm, tn in p.tile_shapes)
    parts = H100.grouped_gemm_parts(tokens, n, k, "bf16")
    assert float(parts["per_expert_s"]) == pytest.approx(per_expert, rel=1e-12)
    assert float(parts["total_s"]) == pytest.approx(p.kernel_overhead_s + per_expert, rel=1e-12)
    assert per_expert > max(float(parts["compute_s"]), float(parts["memory_s"]))
    # Balanced (same total): the per-expert sum is no bound beyond max(compute, memory).
    even = H100.grouped_gemm_parts(np.full(2, 4160.0), n, k, "bf16")
    assert float(even["total_s"]) == pytest.approx(
        p.kernel_overhead_s + max(float(even["compute_s"]), float(even["memory_s"])), rel=1e-12)
    assert float(parts["total_s"]) > float(even["total_s"])


def test_skewed_wgrad_pays_each_experts_own_roofline():
    """Weight gradient, same two experts: the light one writes a full (k x n) gradient for 128 tokens."""
    n = k = 4096
    tokens = np.array([8192.0, 128.0])
    parts = H100.grouped_gemm_wgrad_parts(tokens, n, k, "bf16")
    p, rate, bw = H100.params, H100._flops_per_s("bf16"), H100.hbm_bytes_per_s
    depth = lambda t: np.ceil(t / p.tile_k["bf16"]) * p.tile_k["bf16"] + p.tile_fixed_k["bf16"]  # noqa: E731
    per_expert = min(
        sum(max(np.ceil(k / tm) * np.ceil(n / tn) * 2 * tm * tn * depth(t) / rate, (t * (k + n) * 2 + k * n * 2) / bw)
            for t in tokens)
        for tm, tn in p.tile_shapes)
    assert float(parts["per_expert_s"]) == pytest.approx(per_expert, rel=1e-12)
    assert float(parts["total_s"]) >= p.kernel_overhead_s + per_expert * (1 - 1e-12)


def test_sustained_clocks_slow_tensor_cores_not_hbm():
    """The default model runs at sustained clocks: compute-bound GEMM and attention times x the
    roofline.yaml factor, a memory-bound kernel unchanged, the identifier says which."""
    hot = RooflineModel("H100-SXM")
    factor = hot.params.sustained_clock_factor
    assert hot.clocks == "sustained" and 1.0 < factor["bf16"] < 1.5 and 1.0 < factor["fp8"] < 1.5
    for dtype in ("bf16", "fp8"):
        burst_parts = H100.gemm_parts(8192, 8192, 8192, dtype)
        assert hot.gemm_s(8192, 8192, 8192, dtype) == pytest.approx(
            float(burst_parts["overhead_s"] + factor[dtype] * burst_parts["compute_s"]),
            rel=1e-12)
    attn = lambda m: m.attention_parts(1, 8192, 16, 128, 128, True, "bf16", False)  # noqa: E731
    assert float(attn(hot)["compute_s"]) == pytest.approx(factor["bf16"] * float(attn(H100)["compute_s"]), rel=1e-12)
    assert hot.memory_bound_s(1e9) == H100.memory_bound_s(1e9)
    assert hot.identifier != H100.identifier and "/burst" in H100.identifier and "/burst" not in hot.identifier
    with pytest.raises(InputError):
        RooflineModel("H100-SXM", clocks="turbo")


# -- anchors per architecture ----------------------------------------------------------------------


def test_blackwell_gemms_reproduce_their_published_b200_rates():
    # roofline.yaml gemm.architecture_anchors.blackwell: OpenXLA's sm_100 table (4 x 4096^3 BF16 at
    # 1670 TFLOPS) and vLLM PR 19566 (16384x6144x4096 FP8, per-tensor scales, at 2545 TFLOPS).
    b200 = RooflineModel("B200", clocks="burst")
    assert useful_tflops(2 * 16384 * 4096 * 4096, b200.gemm_s(16384, 4096, 4096, "bf16")) == pytest.approx(1670)
    assert useful_tflops(2 * 16384 * 6144 * 4096, b200.gemm_s(16384, 6144, 4096, "fp8")) == pytest.approx(2545)
    # Below the Hopper efficiency carried over by datasheet peaks (what simmoe used before).
    assert b200.gemm_efficiency["bf16"] < H100.gemm_efficiency["bf16"]
    assert b200.gemm_efficiency["fp8"] < H100.gemm_efficiency["fp8"]


def test_the_bf16_source_table_agrees_with_the_h100_anchor():
    # The same OpenXLA table's sm_90 row (4 x 4096^3 BF16: 789 TFLOPS) against simmoe's H100 model,
    # whose BF16 anchor is an independent measurement (8192^3 at 798): within 2%.
    assert useful_tflops(2 * 16384 * 4096 * 4096, H100.gemm_s(16384, 4096, 4096, "bf16")) == pytest.approx(789, rel=0.02)


def test_b200_fp8_linear_matches_a_third_published_measurement():
    # NVIDIA/TransformerEngine issue 1747: an FP8 te.Linear forward at 8192^3 on B200 at 2377 TFLOPS,
    # input and weight quantization included (each a memory-bound pass: BF16 read, FP8 written).
    b200 = RooflineModel("B200", clocks="burst")
    quantize_s = b200.memory_bound_s(8192 * 8192 * 3, 1)
    seconds = b200.gemm_s(8192, 8192, 8192, "fp8") + 2 * quantize_s
    assert useful_tflops(2 * 8192**3, seconds) == pytest.approx(2377, rel=0.05)


def test_gb200_shares_b200_efficiency_and_scales_by_its_datasheet_peak():
    b200, gb200 = RooflineModel("B200", clocks="burst"), RooflineModel("GB200", clocks="burst")
    assert gb200.gemm_efficiency == b200.gemm_efficiency
    # Same SM count (148), so a compute-bound GEMM is faster by exactly the peak ratio 2500/2250.
    m, n, k = 16384, 4096, 4096
    busy_b = b200.gemm_parts(m, n, k, "bf16")["compute_s"]
    busy_gb = gb200.gemm_parts(m, n, k, "bf16")["compute_s"]
    assert float(busy_b / busy_gb) == pytest.approx(2500 / 2250, rel=1e-9)
    # Hopper GPUs are untouched by the Blackwell anchors.
    assert RooflineModel("H200-SXM", clocks="burst").gemm_efficiency == H100.gemm_efficiency


def test_architecture_anchor_on_a_gpu_of_another_architecture_is_refused(tmp_path):
    tree = yaml.safe_load(DEFAULT_ROOFLINE_FILE.read_text())
    tree["gemm"]["architecture_anchors"]["blackwell"]["bf16"]["gpu"] = "H100-SXM"
    bad = tmp_path / "roofline-arch.yaml"
    bad.write_text(yaml.safe_dump(tree))
    with pytest.raises(InputError) as err:
        RooflineModel("B200", params_file=bad)
    assert err.value.field == "gemm.architecture_anchors.blackwell.bf16.gpu" and "blackwell" in str(err.value)
    RooflineModel("H100-SXM", params_file=bad)  # a Hopper GPU never reads the Blackwell anchors
    tree["gemm"]["architecture_anchors"]["blackwell"] = {"fp16": tree["gemm"]["anchors"]["bf16"]}
    bad = tmp_path / "roofline-dtype.yaml"
    bad.write_text(yaml.safe_dump(tree))
    with pytest.raises(InputError) as err:
        RooflineModel("B200", params_file=bad)
    assert err.value.field == "gemm.architecture_anchors.blackwell.fp16"
