"""Claim 7: how many tokens a capacity factor of 1.25 drops, as a function of routing skew."""

from __future__ import annotations

import numpy as np

from simmoe.claims.common import Context, load_spec, mode_value
from simmoe.claims.result import DOES_NOT_HOLD, HOLDS, HOLDS_ONLY_WHEN, ClaimResult, Metric

SPEC = "c07-capacity-factor"


def routing_model(*, experts: int, top_k: int, ep: int, tokens_per_rank: int, capacity_factor: float,
                  popularity: str, s: float | None = None, seed: int = 0):
    """simmoe.routing's model of one EP group (8 ranks per node), padded, capacity per (source, expert)."""
    from simmoe.routing import EPGroup, RoutingModel

    group = EPGroup(expert_to_rank=np.arange(experts) // (experts // ep), rank_to_node=np.arange(ep) // 8,
                    tokens_per_rank=tokens_per_rank, top_k=top_k)
    kw = {"zipf_s": s} if popularity == "zipf" else {}
    return RoutingModel(group, num_layers=1, popularity=popularity, capacity_factor=capacity_factor,
                        pad_to_capacity=True, capacity_scope="source", seed=seed, **kw)


def drop_stats(model, draws: int) -> dict:  # noqa: ANN001
    """Dropped share of assignments (pooled over draws), mean max/mean expert load, the capacity."""
    dropped = total = 0
    load = []
    cap = None
    for mb in range(draws):
        d = model.draw(step=0, layer=0, microbatch=mb)
        dropped += int(d.dropped_assignments)
        total += int(d.assignments)
        load.append(float(d.expert_load_max_over_mean))
        cap = int(d.capacity)
    return {"dropped_fraction": dropped / total, "expert_load_max_over_mean": float(np.mean(load)), "capacity": cap}


def check(ctx: Context) -> ClaimResult:
    spec = load_spec(SPEC)
    inp = spec["inputs"]
    draws = mode_value(spec["draws"], ctx.quick)
    cf, target, tol = inp["capacity_factor"], inp["claimed_drop"], spec["tolerance"]
    rows = []
    for st in spec["settings"]:
        for sk in spec["skews"]:
            model = routing_model(experts=st["experts"], top_k=st["top_k"], ep=st["ep"],
                                  tokens_per_rank=st["tokens_per_rank"], capacity_factor=cf,
                                  popularity=sk["popularity"], s=sk.get("s"))
            r = drop_stats(model, draws)
            rows.append({"setting": st["label"], "skew": sk["popularity"] + (f" s={sk['s']}" if "s" in sk else ""),
                         "zipf_s": float(sk.get("s", 0.0)), **r})
    near = [r for r in rows if abs(r["dropped_fraction"] - target) <= tol]
    uniform = [r for r in rows if r["zipf_s"] == 0.0]
    lo = min(r["dropped_fraction"] for r in rows)
    hi = max(r["dropped_fraction"] for r in rows)
    if near and len(near) == len(rows):
        verdict, finding = HOLDS, f"every skew drops {target - tol:.0%}-{target + tol:.0%}"
    elif near:
        loads = [r["expert_load_max_over_mean"] for r in near]
        uniform_drops = ", ".join(f"{r['dropped_fraction']:.2%}" for r in uniform)
        verdict = HOLDS_ONLY_WHEN
        finding = (f"the router's expert load max/mean is about {min(loads):.2f}-{max(loads):.2f} ("
                   + "; ".join(f"{r['setting']}, {r['skew']}: {r['dropped_fraction']:.1%}" for r in near)
                   + f"). Balanced routing drops {uniform_drops}; "
                   f"drops range {lo:.2%}-{hi:.1%} over the skews swept")
    else:
        verdict = DOES_NOT_HOLD
        finding = f"drops range {lo:.2%}-{hi:.1%} over the skews swept; none is near {target:.0%}"
    metrics = [Metric(f"drop_{r['setting'].split(',')[0].replace(' ', '_')}_{r['skew'].replace(' ', '_')}",
                      r["dropped_fraction"], "of assignments") for r in rows]
    metrics += [Metric("capacity_64e_top2", float(rows[0]["capacity"]), "slots per (source, expert)")]
    return ClaimResult(
        headline=("drops at C=1.25: " + ", ".join(f"{r['dropped_fraction']:.1%}" for r in rows[:len(spec['skews'])])
                  + " (64e top-2, uniform to Zipf 1.25)"),
        number=7, title="Capacity factor 1.25 drops ~5% of tokens", claim=spec["claim"], metrics=metrics,
        verdict=verdict, finding=finding, table=rows,
        rule=(f"holds if every skew swept drops {target:.0%} +-{tol:.0%} of token-expert assignments; holds only when "
              "(at the skews that do) if some do; otherwise does not hold"),
        assumptions=["capacity per (source rank, expert), padded (GShard/Switch/DeepSpeed)",
                     "i.i.d. tokens given the popularity (real routing is burstier: drops are a lower bound)",
                     f"{draws} micro-batch draws per point"],
        sources=[f"scenarios/claims/sweeps/{SPEC}.yaml"])
