"""The FP8 GEMM model against DeepGEMM's published H800 table, and SMs held by communication.

Oracles: deepseek-ai/DeepGEMM README (release table, 2025): FP8 GEMMs with 1x128 activation and
128x128 weight scales, BF16 output, on H800. Two of these points set the model (the anchor
4096x7168x16384 and the per-tile fixed cost from 4096x7168x2048); the others are out of sample.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simmoe.compute import RooflineModel
from simmoe.errors import InputError

H800 = RooflineModel("H800-SXM", clocks="burst")

# (M, N, K, published TFLOPS): normal GEMMs, DeepSeek-V3 shapes, M = 4096 tokens.
DENSE = [(4096, 2112, 7168, 1058), (4096, 24576, 1536, 990), (4096, 32768, 512, 590),
         (4096, 7168, 16384, 1358), (4096, 4096, 7168, 1304), (4096, 7168, 2048, 1025)]
# (groups, M per group, N, K, published TFLOPS): grouped GEMMs, contiguous layout (training).
GROUPED = [(4, 8192, 4096, 7168, 1297), (4, 8192, 7168, 2048, 1099),
           (8, 4096, 4096, 7168, 1288), (8, 4096, 7168, 2048, 1093)]


@pytest.mark.parametrize("m,n,k,tflops", DENSE)
def test_dense_fp8_gemms_match_deepgemm_on_h800(m, n, k, tflops):
    model = 2 * m * n * k / H800.gemm_s(m, n, k, "fp8") / 1e12
    assert model == pytest.approx(tflops, rel=0.03)


@pytest.mark.parametrize("groups,m,n,k,tflops", GROUPED)
def test_grouped_fp8_gemms_match_deepgemm_on_h800(groups, m, n, k, tflops):
    model = 2 * groups * m * n * k / H800.grouped_gemm_s(np.full(groups, m), n, k, "fp8") / 1e12
    assert model == pytest.approx(tflops, rel=0.03)


def test_short_k_runs_slower_than_long_k():
    # The per-tile fixed cost: at equal M and N, K=2048 reaches about 3/4 of K=16384's rate.
    long_k = 2 * 4096 * 7168 * 16384 / H800.gemm_s(4096, 7168, 16384, "fp8")
    short_k = 2 * 4096 * 7168 * 2048 / H800.gemm_s(4096, 7168, 2048, "fp8")
    assert 0.70 < short_k / long_k < 0.80


# -- communication SMs ------------------------------------------------------------------------------


def test_comm_sms_take_their_share_of_a_full_wave_gemm():
    # 14336 x 2048: 112 x 16 tiles of 128x128 = 16 waves on 112 SMs, 13.6 -> 14 waves on 132 SMs.
    reduced = RooflineModel("H800-SXM", clocks="burst", comm_sms=20)
    m, n, k = 112 * 128, 2048, 8192
    full_t, reduced_t = H800.gemm_s(m, n, k, "bf16"), reduced.gemm_s(m, n, k, "bf16")
    e = H800.gemm_efficiency["bf16"]
    busy = reduced_t - 3.0e-6
    # 128x256 tiles: 112 x 8 = 896 tiles = 8 waves of 112; rate 989e12 * e * 112/132.
    assert busy == pytest.approx(8 * 112 * 2 * 128 * 256 * k / (989e12 * e * 112 / 132), rel=1e-9)
    assert reduced_t > full_t
    assert reduced.identifier.startswith("roofline:H800-SXM/112sm/burst:")
    assert reduced.describe()["compute_sms"] == 112


def test_comm_sms_leave_memory_bound_kernels_alone():
    reduced = RooflineModel("H800-SXM", clocks="burst", comm_sms=20)
    assert reduced.memory_bound_s(1e9) == H800.memory_bound_s(1e9)


def test_comm_sms_slow_attention_by_the_sm_ratio_at_full_waves():
    reduced = RooflineModel("H800-SXM", clocks="burst", comm_sms=20)
    # 1 x 112 heads x 1 query block (non-causal, 128 tokens): one wave either way, same time.
    args = (1, 128, 112, 128, 128, False, "bf16", False)
    assert reduced.attention_parts(*args)["compute_s"] == pytest.approx(H800.attention_parts(*args)["compute_s"])
    # 1 x 1120 heads: 10 waves on 112 SMs, 8.48 -> 9 waves on 132.
    args = (1, 128, 1120, 128, 128, False, "bf16", False)
    assert reduced.attention_parts(*args)["compute_s"] == pytest.approx(
        H800.attention_parts(*args)["compute_s"] * 10 / 9)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 20000), st.integers(1, 20000), st.integers(1, 20000), st.integers(0, 100))
def test_fewer_sms_never_run_faster(m, n, k, comm):
    reduced = RooflineModel("H800-SXM", clocks="burst", comm_sms=comm)
    assert reduced.gemm_s(m, n, k, "fp8") >= H800.gemm_s(m, n, k, "fp8") * (1 - 1e-12)


@pytest.mark.parametrize("bad", [-1, 132, 500, 2.5, True])
def test_bad_comm_sms_is_an_input_error(bad):
    with pytest.raises(InputError) as err:
        RooflineModel("H800-SXM", clocks="burst", comm_sms=bad, comm_sms_field="parallelism.comm_sms")
    assert "parallelism.comm_sms" in str(err.value)
