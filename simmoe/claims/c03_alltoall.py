"""Claim 3: all-to-all bytes per layer and step, and their time on HDR, vs a dense all-reduce."""

from __future__ import annotations

from simmoe.claims.common import Context, load_spec
from simmoe.claims.result import DOES_NOT_HOLD, HOLDS, HOLDS_ONLY_WHEN, ClaimResult, Metric

SPEC = "c03-alltoall-bytes"
MiB = 2**20


def alltoall_arithmetic(*, experts: int, tokens_per_expert_per_gpu: int, hidden: int, bytes_per_element: int,
                        moe_layers: int, link_gbps: float) -> dict:
    """Bytes each GPU sends per layer = tokens per expert x experts x hidden x bytes; per step x layers;
    time = bytes / line rate (the claim's arithmetic: every byte at the NIC's full rate)."""
    per_layer = tokens_per_expert_per_gpu * experts * hidden * bytes_per_element
    per_step = per_layer * moe_layers
    return {"bytes_per_layer": per_layer, "bytes_per_step": per_step,
            "line_rate_s_per_step": per_step * 8 / (link_gbps * 1e9)}


def simulated_times(*, topology: str, gpus: int, bytes_per_layer: float, bytes_per_step: float) -> dict:
    """One uniform all-to-all of ``bytes_per_layer`` per GPU and one ring all-reduce of
    ``bytes_per_step`` over the first ``gpus`` GPUs, on simmoe's flow-level network."""
    from simmoe.network import collectives as C
    from simmoe.network.backends import FlowBackend
    from simmoe.paths import resolve_topology
    from simmoe.topology.loader import load_topology

    topo = load_topology(resolve_topology(topology))
    backend = FlowBackend(topo)
    a2a = backend.collective_time_s(C.alltoall(range(gpus), bytes_per_layer))
    ar = backend.collective_time_s(C.allreduce(range(gpus), bytes_per_step, server_of_gpu=topo.server_of_gpu))
    return {"alltoall_s_per_layer": a2a.time_s, "alltoall_busbw_GBps": a2a.busbw_GBps,
            "allreduce_s": ar.time_s, "allreduce_busbw_GBps": ar.busbw_GBps}


def check(ctx: Context) -> ClaimResult:
    spec = load_spec(SPEC)
    inp, tol = spec["inputs"], spec["tolerance"]
    ar = alltoall_arithmetic(experts=inp["experts"], tokens_per_expert_per_gpu=inp["tokens_per_expert_per_gpu"],
                             hidden=inp["hidden"], bytes_per_element=inp["bytes_per_element"],
                             moe_layers=inp["moe_layers"], link_gbps=inp["link_gbps"])
    sim = simulated_times(topology=spec["topology"], gpus=inp["gpus"], bytes_per_layer=ar["bytes_per_layer"],
                          bytes_per_step=ar["bytes_per_step"])
    a2a_step_s = sim["alltoall_s_per_layer"] * inp["moe_layers"]
    train_step_s = a2a_step_s * inp["alltoalls_per_layer_in_training"]
    a2a_ok = abs(a2a_step_s / (inp["claimed_ms_per_step"] / 1e3) - 1) <= tol
    ar_ok = abs(sim["allreduce_s"] / (inp["claimed_allreduce_ms"] / 1e3) - 1) <= tol
    bytes_ok = abs(ar["bytes_per_layer"] / (inp["claimed_mb_per_layer"] * MiB) - 1) <= 0.05
    detail = (f"{ar['bytes_per_layer'] / MiB:.0f} MiB per layer and {ar['bytes_per_step'] / MiB:.0f} MiB per step as "
              f"stated; line rate gives {ar['line_rate_s_per_step'] * 1e3:.2f} ms; simmoe's network "
              f"{a2a_step_s * 1e3:.2f} ms for the 32 all-to-alls (one direction, forward only) and "
              f"{sim['allreduce_s'] * 1e3:.2f} ms for a ring all-reduce of the same {ar['bytes_per_step'] / MiB:.0f} MiB; "
              f"a training step moves the tokens {inp['alltoalls_per_layer_in_training']} times "
              f"(dispatch and combine, forward and backward): {train_step_s * 1e3:.1f} ms")
    if bytes_ok and a2a_ok and ar_ok:
        verdict, finding = HOLDS, detail
    elif bytes_ok and (a2a_ok or ar_ok):
        verdict, finding = HOLDS_ONLY_WHEN, "for one direction of the forward pass only: " + detail
    else:
        verdict, finding = DOES_NOT_HOLD, detail
    metrics = [
        Metric("bytes_per_layer", ar["bytes_per_layer"], "B"),
        Metric("bytes_per_step", ar["bytes_per_step"], "B"),
        Metric("line_rate_ms_per_step", ar["line_rate_s_per_step"] * 1e3, "ms"),
        Metric("sim_alltoall_ms_per_layer", sim["alltoall_s_per_layer"] * 1e3, "ms"),
        Metric("sim_alltoall_ms_per_step", a2a_step_s * 1e3, "ms", "32 layers, one direction"),
        Metric("sim_alltoall_ms_per_training_step", train_step_s * 1e3, "ms", "x4: dispatch+combine, fwd+bwd"),
        Metric("sim_alltoall_busbw_GBps", sim["alltoall_busbw_GBps"], "GB/s"),
        Metric("sim_allreduce_ms", sim["allreduce_s"] * 1e3, "ms", "ring, 128 GPUs"),
        Metric("sim_allreduce_busbw_GBps", sim["allreduce_busbw_GBps"], "GB/s"),
    ]
    return ClaimResult(
        headline=(f"4 MiB/layer, 128 MiB/step; all-to-alls {a2a_step_s * 1e3:.1f} ms (x4 in training: "
                  f"{train_step_s * 1e3:.0f} ms); all-reduce {sim['allreduce_s'] * 1e3:.1f} ms"),
        number=3, title="All-to-all bytes and time on HDR vs a dense all-reduce", claim=spec["claim"], metrics=metrics,
        verdict=verdict, finding=finding,
        rule=(f"holds if the bytes match (+-5%) and simmoe's all-to-all time per step and all-reduce time are both "
              f"within +-{tol:.0%} of 5 ms and 2 ms; holds only when (one direction) if the bytes and one time do; "
              "otherwise does not hold"),
        assumptions=["HDR cluster = topologies/a100-hdr.yaml (16 DGX A100, one 200G NIC per GPU, 97% link efficiency)",
                     "uniform all-to-all (no imbalance), NCCL-style flat; ring all-reduce over 8 rail channels"],
        sources=[f"scenarios/claims/sweeps/{SPEC}.yaml"])
