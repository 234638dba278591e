"""Claim 9: below 300 Gb/s per GPU across nodes, keep experts inside a node."""

from __future__ import annotations

from simmoe.claims.common import CLAIMS_DIR, Context, engine_source, load_spec, step_summary
from simmoe.claims.result import DOES_NOT_HOLD, HOLDS, HOLDS_ONLY_WHEN, ClaimResult, Metric

SPEC = "c09-cross-node-bandwidth"


def crossover_gbps(rows: list[dict], inside: str, across: str) -> float | None:
    """Lowest swept bandwidth at which the across-nodes layout is at least as fast (None: never)."""
    for bw in sorted({r["gbps_per_gpu"] for r in rows}):
        t = {r["layout"]: r["step_time_s"] for r in rows if r["gbps_per_gpu"] == bw}
        if t[across] <= t[inside]:
            return float(bw)
    return None


def check(ctx: Context) -> ClaimResult:
    spec = load_spec(SPEC)
    threshold = spec["inputs"]["claimed_threshold_gbps"]
    rows = []
    for bw in spec["bandwidths_gbps"]:
        topo = (CLAIMS_DIR / spec["topology_pattern"].format(bw=bw)).resolve()
        for lay in spec["layouts"]:
            ov = [f"cluster.topology={topo}", f"parallelism.ep={lay['ep']}", f"simulation.fidelity={spec['fidelity']}"]
            s = step_summary(engine_source(ctx, spec["scenario"], ov))
            rows.append({"gbps_per_gpu": bw, "layout": lay["label"], "ep": lay["ep"], "step_time_s": s["step_time_s_mean"],
                         "a2a_s": s["a2a_dispatch_s_mean"] + s["a2a_combine_s_mean"], "dp_comm_s": s["dp_comm_s_mean"],
                         "exposed_comm_s": s["exposed_comm_s_mean"], "mfu": s["mfu_mean"]})
    inside, across = spec["layouts"][0]["label"], spec["layouts"][1]["label"]
    x = crossover_gbps(rows, inside, across)
    swept = sorted(spec["bandwidths_gbps"])
    above = [b for b in swept if b >= threshold]
    below = [b for b in swept if b < threshold]
    table = "; ".join(f"{bw} Gb/s: " + " vs ".join(f"{r['step_time_s']:.2f} s" for r in rows if r["gbps_per_gpu"] == bw)
                      for bw in swept)
    detail = f"step time EP8 vs EP64 by bandwidth per GPU: {table}"
    if x is not None and below and x > max(below) and (not above or x <= min(above)):
        verdict, finding = HOLDS, f"spreading experts across nodes first pays at {x:.0f} Gb/s per GPU: " + detail
    elif x is None:
        verdict = HOLDS_ONLY_WHEN
        finding = ("read as 'keep experts inside a node' at ANY swept bandwidth for this model (the threshold is not "
                   "where the trade-off turns): " + detail)
    else:
        verdict = DOES_NOT_HOLD
        finding = f"spreading experts across nodes is already as fast at {x:.0f} Gb/s per GPU: " + detail
    metrics = [Metric("crossover_gbps_per_gpu", float(x) if x is not None else float("nan"), "Gb/s",
                      "lowest swept bandwidth where EP64 >= EP8 speed")]
    metrics += [Metric(f"step_s_ep{r['ep']}_{r['gbps_per_gpu']}g", r["step_time_s"], "s") for r in rows]
    return ClaimResult(
        headline=("EP8 faster than EP64 at every swept bandwidth" if x is None else f"EP64 catches up at {x:.0f} Gb/s")
                 + f" (50 Gb/s: {rows[0]['step_time_s']:.1f} vs {rows[1]['step_time_s']:.1f} s)",
        number=9, title="Below 300 Gb/s per GPU, keep experts inside a node", claim=spec["claim"], metrics=metrics,
        verdict=verdict, finding=finding, table=rows,
        rule=(f"holds if EP across nodes first matches EP inside a node at the first swept bandwidth >= {threshold} Gb/s "
              "(and not below); holds only when (at any bandwidth) if it never does; does not hold if it already "
              f"does below {threshold} Gb/s"),
        assumptions=["model and batch of claim 1's MoE (50.7B total, 64 experts, top-2, 4.2M tokens per step)",
                     "EP8: expert gradients all-reduced over 16 nodes; EP64: over 2 (the trade-off the sweep shows)",
                     "one NIC per GPU from 100 Gb/s up; 50 Gb/s = 4 x 100 GbE per 8 GPUs"],
        sources=[f"scenarios/claims/sweeps/{SPEC}.yaml", "scenarios/claims/moe-50b-bw.yaml",
                 "scenarios/claims/sweeps/topologies/"])
