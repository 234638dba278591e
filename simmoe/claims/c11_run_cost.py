"""Claim 11: DeepSeek-V3's $5.576M and Kimi K2's ~$4.6M against simmoe's forecasts at $2/GPU-hour."""

from __future__ import annotations

from simmoe.claims.common import Context, load_spec, mode_value, run_forecast
from simmoe.claims.result import DOES_NOT_HOLD, HOLDS, HOLDS_ONLY_WHEN, ClaimResult, Metric

SPEC = "c11-deepseek-kimi-cost"


def flops_scaled_cost(reference_usd: float, *, ref_flops_per_token: float, ref_tokens: float,
                      flops_per_token: float, tokens: float) -> float:
    """First-order: a run costs the reference's dollars per model FLOP."""
    return reference_usd * flops_per_token * tokens / (ref_flops_per_token * ref_tokens)


def forecasts(ctx: Context) -> dict:
    """Both forecasts (p50 rows, memory breakdowns, scenarios); claim 12 reuses DeepSeek-V3's."""
    spec = load_spec(SPEC)
    ov = mode_value(spec["overrides"], ctx.quick)
    mp = mode_value(spec["m_points"], ctx.quick)
    fc = spec["forecast"]
    out = {}
    for key, name in spec["scenarios"].items():
        f, mem, src = run_forecast(ctx, name, ov, samples=mode_value(fc["samples"], ctx.quick),
                                   steps=mode_value(fc["steps"], ctx.quick), m_points=mp)
        out[key] = {"p50": f.summary("p50"), "p10": f.summary("p10"), "p90": f.summary("p90"), "mem": mem,
                    "scenario": src.scenario}
    return out


def check(ctx: Context) -> ClaimResult:
    from simmoe.workload.flops import model_flops_per_token

    spec = load_spec(SPEC)
    inp, tol = spec["inputs"], spec["tolerance"]
    fc = forecasts(ctx)
    ds, k2 = fc["deepseek"], fc["kimi"]
    ds_h, k2_usd = ds["p50"].gpu_hours, k2["p50"].cost_usd
    ds_err = ds_h / inp["deepseek_pretrain_gpu_hours"] - 1
    ds_ok = abs(ds_err) <= tol["deepseek"]
    k2_ok = inp["kimi_claimed_usd"] >= (1 - tol["kimi"]) * k2_usd
    scaled = flops_scaled_cost(inp["deepseek_claimed_usd"],
                               ref_flops_per_token=model_flops_per_token(ds["scenario"]),
                               ref_tokens=ds["scenario"].training.total_tokens,
                               flops_per_token=model_flops_per_token(k2["scenario"]),
                               tokens=k2["scenario"].training.total_tokens)
    mem_notes = [f"simmoe's memory model puts {n} at {v['mem'].total_bytes / 2**30:.1f} GiB of "
                 f"{v['mem'].hbm_bytes / 2**30:.1f} (forecast anyway: the run was made)"
                 for n, v in (("DeepSeek-V3", ds), ("Kimi K2", k2)) if v["mem"].fits is False]
    detail = (f"simmoe forecasts DeepSeek-V3's pre-training at {ds_h / 1e6:.2f}M H800 GPU-hours "
              f"(${ds['p50'].cost_usd / 1e6:.2f}M; published 2.664M pre-training of 2.788M, {ds_err:+.0%}, "
              f"MFU {ds['p50'].mfu:.0%}) and Kimi K2 at ${k2_usd / 1e6:.2f}M ({k2['p50'].gpu_hours / 1e6:.2f}M "
              f"GPU-hours, MFU {k2['p50'].mfu:.0%}, BF16 GEMMs and our assumed layout); scaling DeepSeek-V3's "
              f"published $5.576M by model FLOPs x tokens gives ${scaled / 1e6:.2f}M for K2"
              + ("" if not mem_notes else ". " + "; ".join(mem_notes)))
    if ds_ok and k2_ok:
        verdict, finding = HOLDS, "K2's $4.6M is plausible: " + detail
    elif k2_ok or inp["kimi_claimed_usd"] >= (1 - tol["kimi"]) * scaled:
        verdict = HOLDS_ONLY_WHEN
        finding = ("K2 trained at DeepSeek-V3's efficiency (FP8 GEMMs, its overlap): " + detail)
    else:
        verdict, finding = DOES_NOT_HOLD, "K2's $4.6M is below what simmoe forecasts: " + detail
    metrics = [Metric("deepseek_gpu_hours_p50", ds_h, "GPU-h"), Metric("deepseek_usd_p50", ds["p50"].cost_usd, "USD"),
               Metric("deepseek_mfu", ds["p50"].mfu, ""), Metric("deepseek_days_p50", ds["p50"].time_to_train_days, "days"),
               Metric("deepseek_gpu_hours_error", ds_err, "", "vs 2.664M pre-training"),
               Metric("kimi_usd_p50", k2_usd, "USD"), Metric("kimi_gpu_hours_p50", k2["p50"].gpu_hours, "GPU-h"),
               Metric("kimi_mfu", k2["p50"].mfu, ""), Metric("kimi_days_p50", k2["p50"].time_to_train_days, "days"),
               Metric("kimi_usd_flops_scaled_from_deepseek", scaled, "USD")]
    return ClaimResult(
        headline=(f"DeepSeek-V3 {ds_h / 1e6:.2f}M GPU-h ({ds_err:+.0%}); K2 ${k2_usd / 1e6:.2f}M forecast, "
                  f"${scaled / 1e6:.2f}M FLOP-scaled"),
        number=11, title="DeepSeek-V3 $5.576M and Kimi K2 ~$4.6M", claim=spec["claim"], metrics=metrics,
        verdict=verdict, finding=finding,
        rule=(f"DeepSeek-V3 consistent if simmoe's pre-training GPU-hours are within +-{tol['deepseek']:.0%} of 2.664M; "
              f"K2's figure plausible (holds) if it is no more than {tol['kimi']:.0%} below simmoe's K2 forecast and "
              "DeepSeek-V3 is consistent; holds only when (at DeepSeek-V3's efficiency) if it is plausible against "
              "either the forecast or the FLOP-scaled DeepSeek-V3 cost; otherwise does not hold"),
        assumptions=["K2's cluster and layout are assumed (scenarios/kimi-k2-h800.yaml); its GEMMs run in BF16",
                     "quick mode: no batch ramp, step times extrapolated from two reduced micro-batch counts",
                     "network fidelity: analytical (both modes; the claim is about cost, not the network)"],
        sources=[f"scenarios/claims/sweeps/{SPEC}.yaml", "scenarios/deepseek-v3-h800.yaml", "scenarios/kimi-k2-h800.yaml"])
