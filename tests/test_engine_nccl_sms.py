"""NCCL collectives in flight keep SMs from the compute kernels of their rank (docs/compute.md):
hand oracles for the re-rating of a running kernel, and bounds on a whole step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from simmoe.config.loader import load_scenario
from simmoe.engine.core import _RunningKernel
from simmoe.engine.runner import Simulation
from simmoe.network.params import DEFAULT_NETWORK_PARAMS

LLAMA = Path(__file__).parents[1] / "scenarios/validation/scenarios/llama3-8b-h100x8-fp8.yaml"


def _run_kernel(free_s, held_s, changes, held_at_start=False):
    """When a kernel of ``free_s`` alone / ``held_s`` beside NCCL ends, the share changing at the
    (time, held) ``changes`` (done by hand, as the engine's interrupt handler does)."""
    kernel = _RunningKernel(None, (), held_s if held_at_start else free_s, 0.0)
    for at, held in changes:
        if at >= kernel.since + kernel.remaining_s():
            break  # it ended before this change
        kernel.rerate(at, held_s if held else free_s)
    return kernel.since + kernel.remaining_s()


def _llama_step_s(**over) -> float:
    params = over.pop("params", DEFAULT_NETWORK_PARAMS)
    sc = load_scenario(str(LLAMA), [f"{k}={v}" for k, v in over.items()])
    return Simulation(sc, network_params=params).run_step(0).step_time_s


def test_fsdp_traffic_slows_the_step_between_no_sm_loss_and_sms_lost_all_step():
    # FSDP gathers/reduces over NVLink during ~27% of the compute: the step must be slower than
    # with NCCL holding no SMs and faster than losing H100's 32 NCCL SMs for the whole step.
    none = dataclasses.replace(DEFAULT_NETWORK_PARAMS, nccl_channels_per_nvlink=0, nccl_min_channels=0)
    free = _llama_step_s(params=none)
    held = _llama_step_s()
    always = _llama_step_s(params=none, **{"parallelism.comm_sms": 32})
    assert free < held < always
    # and holding no SMs is exactly the engine without the effect: same as comm_sms 0
    assert free == pytest.approx(_llama_step_s(params=none, **{"parallelism.comm_sms": 0}), rel=0)
