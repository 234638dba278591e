"""Claim 6: Mixtral 8x22B fits in one node: for inference, and for training (memory model)."""

from __future__ import annotations

from simmoe.claims.common import Context, load_claim_scenario, load_spec
from simmoe.claims.result import DOES_NOT_HOLD, HOLDS, HOLDS_ONLY_WHEN, ClaimResult, Metric

SPEC = "c06-mixtral-one-node"


def inference_fits(*, total_params: float, bytes_per_param: float, gpus_per_node: int, hbm_GB: float) -> tuple[float, bool]:
    """(weight bytes / node HBM, fits): weights only, no KV cache."""
    share = total_params * bytes_per_param / (gpus_per_node * hbm_GB * 1e9)
    return share, share <= 1.0


def check(ctx: Context) -> ClaimResult:
    from simmoe.memory import memory_breakdown
    from simmoe.workload import param_counts

    spec = load_spec(SPEC)
    inp = spec["inputs"]
    rows = []
    for n in spec["nodes"]:
        sc = load_claim_scenario(spec["scenario"], [f"cluster.nodes={n}", f"training.global_batch={64 * n}"])
        mem = memory_breakdown(sc)
        g = mem.gib()
        rows.append({"nodes": n, "gpus": sc.gpus, "edp": sc.parallelism.edp, "fits": bool(mem.fits),
                     "total_gib": g["total"], "parameters_gib": g["parameters"], "gradients_gib": g["gradients"],
                     "optimizer_gib": g["optimizer"], "activations_gib": g["activations"], "hbm_gib": g["hbm"]})
    total = param_counts(sc.model).total
    share, inf_ok = inference_fits(total_params=total, bytes_per_param=inp["bytes_per_param_inference"],
                                   gpus_per_node=inp["gpus_per_node"], hbm_GB=inp["hbm_GB"])
    first_fit = next((r["nodes"] for r in rows if r["fits"]), None)
    one = rows[0]
    if one["fits"]:
        verdict, finding = HOLDS, f"training fits in one node ({one['total_gib']:.0f} GiB per GPU)"
    elif inf_ok and first_fit is not None:
        verdict = HOLDS_ONLY_WHEN
        finding = (f"for inference: BF16 weights ({total / 1e9:.0f}B parameters) take {share:.0%} of one DGX H100's "
                   f"HBM. Training in one node needs {one['total_gib']:.0f} GiB per GPU (of {one['hbm_gib']:.1f}): "
                   f"weights {one['parameters_gib']:.0f}, gradients {one['gradients_gib']:.0f}, optimizer "
                   f"{one['optimizer_gib']:.0f} GiB even with ZeRO-3 and full recompute; it first fits on {first_fit} "
                   f"nodes. With EP8 inside each node the token routing still never leaves a node; the gradient "
                   f"reduction does")
    else:
        verdict = DOES_NOT_HOLD
        finding = f"weights take {share:.0%} of a node's HBM; training does not fit on up to {rows[-1]['nodes']} nodes"
    metrics = [Metric("total_params", float(total), "params"), Metric("inference_weight_share_of_node_hbm", share, ""),
               *[Metric(f"train_gib_per_gpu_{r['nodes']}_nodes", r["total_gib"], "GiB") for r in rows],
               Metric("first_nodes_that_fit", float(first_fit or 0), "nodes")]
    return ClaimResult(
        headline=(f"inference weights {share:.0%} of a node; training {one['total_gib']:.0f} GiB/GPU on 1 node, "
                  f"fits from {first_fit} nodes"),
        number=6, title="Mixtral 8x22B in one node: inference vs training", claim=spec["claim"], metrics=metrics,
        verdict=verdict, finding=finding, table=rows,
        rule=("holds if training fits in one node (simmoe.memory); holds only when (inference) if only the BF16 "
              "weights fit and training needs more nodes; otherwise does not hold"),
        assumptions=["inference: weights only, no KV cache or activations",
                     "training: EP8, ZeRO-3, full recompute, AdamW FP32 master + moments, sequence 4096, micro-batch 1"],
        sources=[f"scenarios/claims/sweeps/{SPEC}.yaml", "scenarios/claims/mixtral-8x22b-train.yaml"])
