"""Claim 5: 1T parameters in FP16 = 2 TB = 25 H100 for weights alone; and for training."""

from __future__ import annotations

import math

from simmoe.claims.common import CLAIMS_DIR, Context, load_spec
from simmoe.claims.result import DOES_NOT_HOLD, HOLDS, HOLDS_ONLY_WHEN, ClaimResult, Metric

SPEC = "c05-1t-weights"


def weights_arithmetic(*, params: float, bytes_per_param: float, hbm_GB: float) -> dict:
    """Weight bytes and the GPUs their HBM needs (decimal GB, as HBM is sold)."""
    weight_bytes = params * bytes_per_param
    return {"weight_bytes": weight_bytes, "gpus": weight_bytes / (hbm_GB * 1e9),
            "gpus_whole": math.ceil(weight_bytes / (hbm_GB * 1e9) - 1e-9)}


def training_state_bytes_per_param(scenario) -> float:  # noqa: ANN001
    """BF16 weights + FP32 gradients + master weights + moments, as simmoe.memory counts them."""
    opt = scenario.training.optimizer
    master = 4.0 if opt.master_weights_dtype == "fp32" else 0.0
    moments = {"adam": 2, "adamw": 2, "sgd": 1, "muon": 1}[opt.type]
    return 2.0 + 4.0 + master + moments * (4.0 if opt.moments_dtype == "fp32" else 2.0)


def check(ctx: Context) -> ClaimResult:
    from simmoe.config import load_scenario
    from simmoe.memory import memory_breakdown
    from simmoe.workload import param_counts

    spec = load_spec(SPEC)
    inp = spec["inputs"]
    ar = weights_arithmetic(params=inp["params"], bytes_per_param=inp["bytes_per_param"], hbm_GB=inp["hbm_GB"])
    sc = load_scenario((CLAIMS_DIR / f"{spec['scenario']}.yaml").resolve())
    total = param_counts(sc.model).total
    mem = memory_breakdown(sc)
    usable = mem.hbm_bytes - mem.reserve_bytes
    weights_gpus = math.ceil(total * 2.0 / usable)
    bpp = training_state_bytes_per_param(sc)
    state_gpus = math.ceil(total * bpp / usable)
    ok = abs(ar["gpus_whole"] - inp["claimed_gpus"]) <= spec["tolerance_gpus"] and \
        abs(ar["weight_bytes"] / (inp["claimed_TB"] * 1e12) - 1) <= 0.01
    detail = (f"1e12 x 2 bytes = {ar['weight_bytes'] / 1e12:.0f} TB = {ar['gpus']:.0f} x 80 GB; with simmoe's usable "
              f"HBM ({usable / 2**30:.1f} GiB after the reserve) Kimi K2's {total / 1e12:.2f}T parameters need "
              f"{weights_gpus} GPUs for BF16 weights, and {state_gpus} for its training state "
              f"({bpp:.0f} bytes per parameter: weights, FP32 gradients, master weights and moments) before "
              f"activations; K2's own layout holds {mem.total_bytes / 2**30:.1f} GiB on its fullest GPU of 2048")
    verdict = HOLDS if ok and weights_gpus <= inp["claimed_gpus"] + spec["tolerance_gpus"] else (
        HOLDS_ONLY_WHEN if ok else DOES_NOT_HOLD)
    finding = detail if verdict != HOLDS_ONLY_WHEN else "in decimal GB with all 80 GB usable: " + detail
    metrics = [Metric("weight_bytes", ar["weight_bytes"], "B"), Metric("gpus_for_weights", ar["gpus"], "GPUs"),
               Metric("k2_total_params", float(total), "params"),
               Metric("k2_gpus_for_weights_usable_hbm", float(weights_gpus), "GPUs"),
               Metric("k2_state_bytes_per_param", bpp, "B"), Metric("k2_gpus_for_training_state", float(state_gpus), "GPUs"),
               Metric("k2_layout_peak_gib", mem.total_bytes / 2**30, "GiB"), Metric("k2_layout_fits", float(bool(mem.fits)), "")]
    return ClaimResult(
        headline=f"2 TB / 80 GB = {ar['gpus']:.0f}; K2: {weights_gpus} GPUs (usable HBM), {state_gpus} for training state",
        number=5, title="1T parameters: 2 TB of FP16 weights, 25 H100", claim=spec["claim"], metrics=metrics,
        verdict=verdict, finding=finding,
        rule=(f"holds if 1e12 x 2 bytes / 80 GB is within +-{spec['tolerance_gpus']} GPU of 25 and simmoe's usable "
              "HBM changes that by at most the same; holds only when (decimal, all HBM usable) if only the first is true"),
        assumptions=["usable HBM = simmoe.memory's HBM minus its 2 GiB reserve",
                     "training-state bytes per parameter from the K2 scenario's optimizer (Muon, FP32 master)"],
        sources=[f"scenarios/claims/sweeps/{SPEC}.yaml", "scenarios/kimi-k2-h800.yaml"])
