"""Claim 12: GPT-3's 1287 MWh / 552 t CO2 through the forecast's energy model; DeepSeek-V3's forecast."""

from __future__ import annotations

from simmoe.claims.c11_run_cost import forecasts
from simmoe.claims.common import Context, load_spec
from simmoe.claims.result import DOES_NOT_HOLD, HOLDS, ClaimResult, Metric

SPEC = "c12-energy"


def gpt3_energy(*, chips: int, avg_power_w: float, days: float, pue: float, grid_kgco2_per_kwh: float) -> dict:
    """Patterson et al.'s inputs through simmoe.forecast's energy_mwh and co2_tonnes (no node overhead)."""
    from simmoe.forecast import co2_tonnes, energy_mwh

    mwh = float(energy_mwh(gpus=chips, duration_s=days * 86400.0, avg_gpu_power_w=avg_power_w, pue=pue))
    return {"energy_mwh": mwh, "tco2e": float(co2_tonnes(mwh, grid_kgco2_per_kwh=grid_kgco2_per_kwh))}


def check(ctx: Context) -> ClaimResult:
    spec = load_spec(SPEC)
    inp, tol = spec["inputs"], spec["tolerance"]
    g = gpt3_energy(chips=inp["chips"], avg_power_w=inp["avg_power_w"], days=inp["days"], pue=inp["pue"],
                    grid_kgco2_per_kwh=inp["grid_kgco2_per_kwh"])
    e_err = g["energy_mwh"] / inp["claimed_mwh"] - 1
    c_err = g["tco2e"] / inp["claimed_tco2"] - 1
    ds = forecasts(ctx)["deepseek"]["p50"]
    ok = abs(e_err) <= tol and abs(c_err) <= tol
    detail = (f"10,000 V100 x 330 W x 14.8 days x PUE 1.10 = {g['energy_mwh']:.0f} MWh ({e_err:+.1%}), x 0.429 kg/kWh = "
              f"{g['tco2e']:.0f} t ({c_err:+.1%}). simmoe's forecast for DeepSeek-V3's pre-training: "
              f"{ds.energy_mwh:,.0f} MWh and {ds.tco2e:,.0f} t CO2e at the US-average grid ({ds.avg_gpu_power_w:.0f} W "
              f"average per GPU, PUE 1.2, {ds.time_to_train_days:.0f} days on 2048 H800), {ds.water_l / 1e6:.1f} ML water")
    verdict = HOLDS if ok else DOES_NOT_HOLD
    metrics = [Metric("gpt3_energy_mwh", g["energy_mwh"], "MWh"), Metric("gpt3_tco2e", g["tco2e"], "t"),
               Metric("deepseek_energy_mwh", ds.energy_mwh, "MWh", "forecast P50"),
               Metric("deepseek_tco2e", ds.tco2e, "t", "0.429 kgCO2e/kWh"),
               Metric("deepseek_avg_gpu_power_w", ds.avg_gpu_power_w, "W"), Metric("deepseek_water_l", ds.water_l, "L")]
    return ClaimResult(
        headline=(f"GPT-3 {g['energy_mwh']:.0f} MWh, {g['tco2e']:.0f} t; DeepSeek-V3 {ds.energy_mwh:,.0f} MWh, "
                  f"{ds.tco2e:,.0f} t"),
        number=12, title="GPT-3 1287 MWh / 552 t CO2; DeepSeek-V3's energy", claim=spec["claim"], metrics=metrics,
        verdict=verdict, finding=detail,
        rule=f"holds if simmoe's energy model reproduces both published GPT-3 figures within +-{tol:.0%}",
        assumptions=["GPT-3: Patterson et al.'s own inputs (measured average power, not simmoe's power model)",
                     "DeepSeek-V3: forecast defaults (docs/forecast.md); grid intensity assumed (US average)"],
        sources=[f"scenarios/claims/sweeps/{SPEC}.yaml", "scenarios/deepseek-v3-h800.yaml"])
