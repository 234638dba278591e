"""Claim 10: below 10B active parameters dense is more cost-effective than MoE (systems side)."""

from __future__ import annotations

from simmoe.claims.common import Context, engine_source, load_spec, mode_value, step_summary
from simmoe.claims.result import DOES_NOT_HOLD, HOLDS, HOLDS_ONLY_WHEN, NOT_COMPUTED, ClaimResult, Metric

SPEC = "c10-dense-below-10b"


def size_overrides(size: dict, moe: bool) -> list[str]:
    ov = [f"model.hidden={size['hidden']}", f"model.layers={size['layers']}", f"model.attention.heads={size['heads']}",
          f"parallelism.tp={size['tp']}", f"model.dense_ffn={size['ffn']}"]
    if moe:
        ov.append(f"model.moe.expert_ffn={size['ffn'] // 2}")
    return ov


def check(ctx: Context) -> ClaimResult:
    from simmoe.engine import InfeasibleScenario
    from simmoe.engine.api import check_memory
    from simmoe.workload import param_counts

    spec = load_spec(SPEC)
    inp = spec["inputs"]
    fid = mode_value(spec["fidelity"], ctx.quick)
    mp = mode_value(spec["m_points"], ctx.quick)
    rows = []
    for size in spec["sizes"]:
        row = {}
        for kind in ("dense", "moe"):
            src = engine_source(ctx, spec["scenarios"][kind], size_overrides(size, kind == "moe") +
                                [f"simulation.fidelity={fid}"], mp)
            try:
                check_memory(src.scenario)
            except InfeasibleScenario:
                row[f"{kind}_fits"] = False
                continue
            s = step_summary(src)
            p = param_counts(src.scenario.model)
            row.update({f"{kind}_fits": True, f"{kind}_active_params": p.active, f"{kind}_total_params": p.total,
                        f"{kind}_step_s": s["step_time_s_mean"], f"{kind}_mfu": s["mfu_mean"]})
        if row.get("dense_fits") and row.get("moe_fits"):
            row["moe_premium"] = row["moe_step_s"] / row["dense_step_s"]
        rows.append(row)
    done = [r for r in rows if "moe_premium" in r]
    if not done:
        return ClaimResult(number=10, title="Below 10B active, dense beats MoE", claim=spec["claim"], metrics=[],
                           verdict=NOT_COMPUTED, finding="no size fit in memory", rule="", table=rows)
    thr, gain = inp["claimed_threshold_active_params"], inp["break_even_quality_gain"]
    small = [r["moe_premium"] for r in done if r["dense_active_params"] < thr]
    large = [r["moe_premium"] for r in done if r["dense_active_params"] >= thr]
    detail = ("MoE time per token / dense time per token at equal active parameters: "
              + ", ".join(f"{r['moe_premium']:.2f}x at {r['dense_active_params'] / 1e9:.1f}B" for r in done)
              + ". The MoE is the cheaper way to a given quality wherever its quality gain at equal active "
              "parameters exceeds that premium")
    small_bad = bool(small) and max(small) > gain
    large_bad = bool(large) and max(large) > gain
    if small_bad and not large_bad:
        verdict, finding = HOLDS, f"the premium exceeds {gain}x only below 10B: " + detail
    elif small_bad:
        verdict, finding = HOLDS_ONLY_WHEN, f"the premium exceeds {gain}x at every size, not only below 10B: " + detail
    else:
        verdict = DOES_NOT_HOLD
        finding = (f"on the systems side: the premium stays below {gain}x below 10B active, so an MoE whose quality "
                   f"gain is worth at least {max(small or [0]):.2f}x dense compute stays cheaper. " + detail)
    metrics = []
    for r in done:
        b = f"{r['dense_active_params'] / 1e9:.1f}B"
        metrics += [Metric(f"moe_premium_{b}", r["moe_premium"], "x"), Metric(f"dense_mfu_{b}", r["dense_mfu"], ""),
                    Metric(f"moe_mfu_{b}", r["moe_mfu"], "")]
    return ClaimResult(
        headline="MoE premium per token: " + ", ".join(f"{r['moe_premium']:.2f}x at {r['dense_active_params'] / 1e9:.0f}B" for r in done),
        number=10, title="Below 10B active parameters, dense is more cost-effective", claim=spec["claim"],
        metrics=metrics, verdict=verdict, finding=finding, table=rows,
        rule=(f"premium = MoE / dense time per token at equal active parameters; holds if it exceeds the break-even "
              f"quality gain ({gain}x, an assumption) below 10B active but not above; holds only when (at every size) "
              "if it exceeds it everywhere; otherwise does not hold"),
        assumptions=["simmoe has no quality model; the break-even gain is an assumption (scenarios/claims/sweeps/"
                     "c10-dense-below-10b.yaml)", "8 experts, top-2, EP8 inside a node; 128 H100 with 400G IB",
                     f"network fidelity: {fid}"],
        sources=[f"scenarios/claims/sweeps/{SPEC}.yaml", "scenarios/claims/family-dense.yaml",
                 "scenarios/claims/family-moe.yaml"])
