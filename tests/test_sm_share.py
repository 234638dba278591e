"""Compute on fewer SMs while communication kernels hold some (simmoe.compute.sm_share) and the
NCCL channel rule that says how many they hold (NetworkParams.nccl_sms)."""

from __future__ import annotations

import pytest

from simmoe.compute import RooflineModel
from simmoe.compute.sm_share import FewerSms
from simmoe.errors import InputError
from simmoe.hardware import gpu_spec
from simmoe.network.params import DEFAULT_NETWORK_PARAMS


@pytest.mark.parametrize("gpu,channels", [("H100-SXM", 32), ("H800-SXM", 16), ("A100-SXM-80GB", 24)])
def test_nccl_holds_two_channels_per_nvlink_up_to_32(gpu, channels):
    # NCCL logs and maintainers (docs/compute.md): A100 12 NVLinks -> 24 CTAs, H800 8 -> 16,
    # H100 18 -> 36 capped at MAXCHANNELS 32.
    assert DEFAULT_NETWORK_PARAMS.nccl_sms(gpu_spec(gpu).nvlink_links) == channels
    assert DEFAULT_NETWORK_PARAMS.nccl_sms(0) == 2


def test_roofline_with_sms_held_is_the_roofline_with_more_comm_sms():
    base = RooflineModel("H100-SXM", comm_sms=20)
    held = base.with_sms_held(32)
    ref = RooflineModel("H100-SXM", comm_sms=52)
    assert held.comm_sms == 52
    assert held.gemm_s(8192, 8192, 8192, "bf16") == ref.gemm_s(8192, 8192, 8192, "bf16")
    # a large GEMM is compute-bound: ~132-20 / 132-52 slower (waves over fewer SMs on top)
    ratio = held.gemm_s(8192, 8192, 8192, "bf16") / base.gemm_s(8192, 8192, 8192, "bf16")
    assert ratio == pytest.approx(112 / 80, rel=0.05)
    assert held.memory_bound_s(1e9) == base.memory_bound_s(1e9)


def test_fewer_sms_scales_tensor_kernels_by_the_sm_ratio_and_not_streaming_kernels():
    base = RooflineModel("H100-SXM")
    slow = FewerSms(base, 132, 33)
    assert slow.gemm_s(4096, 4096, 4096, "fp8") == pytest.approx(base.gemm_s(4096, 4096, 4096, "fp8") * 132 / 99)
    assert slow.attention_s(1, 4096, 32, 128, 128, True, "bf16", True) == pytest.approx(
        base.attention_s(1, 4096, 32, 128, 128, True, "bf16", True) * 132 / 99)
    assert slow.grouped_gemm_s([512, 512], 4096, 2048, "fp8") == pytest.approx(
        base.grouped_gemm_s([512, 512], 4096, 2048, "fp8") * 132 / 99)
    assert slow.memory_bound_s(1e9, 2) == base.memory_bound_s(1e9, 2)
    assert slow.with_sms_held(33).slowdown == pytest.approx(132 / 66)
    assert slow.identifier.endswith("/99sm")


def test_holding_every_sm_is_refused_with_the_field():
    with pytest.raises(InputError, match="compute needs at least one") as err:
        FewerSms(RooflineModel("H100-SXM"), 132, 132)
    assert err.value.field == "comm_sms"
    # the roofline caps extra holds below the GPU's SM count rather than failing mid-run
    assert RooflineModel("H100-SXM", comm_sms=120).with_sms_held(32).comm_sms == 131
