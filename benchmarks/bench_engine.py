"""Time to simulate one training step of DeepSeek-V3 (scenarios/deepseek-v3-h800.yaml) at several
cluster sizes, scaling dp (ep = min(64, dp); 120 micro-batches per pipeline whatever dp; the
topology is cut to the nodes used): all micro-batches, all 61 layers + MTP, real routing draws, the
flow-level network (coflow model). One process, one core.

    .venv/bin/python benchmarks/bench_engine.py [--gpus 256 2048 16384] [--fidelity flow]

Up to 2048 GPUs the scenario's h800-deepseek fabric is used; above, topologies/h800-16k.yaml (a
three-tier fat-tree of 2048 HGX H800 servers). Prints wall and CPU (``time.process_time``) seconds:
on a shared machine wall time includes waiting for a core, CPU time does not. Nothing is asserted
(timings are not tests). Targets: <= 10 s at 2048 GPUs, <= 60 s at 16384.
"""

from __future__ import annotations

import argparse
import time


def bench(gpus: int, fidelity: str, micro_batches: int | None) -> dict:
    from simmoe.config.loader import load_scenario
    from simmoe.engine.runner import Simulation

    pp = 16
    dp = gpus // pp
    ep = min(64, dp)
    over = [f"parallelism.dp={dp}", f"parallelism.ep={ep}", f"cluster.nodes={gpus // 8}",
            f"simulation.fidelity={fidelity}", "training.batch_ramp=null"]
    if gpus > 2048:
        over.append("cluster.topology=h800-16k")
    m = micro_batches or 120  # the scenario's 120 micro-batches per pipeline, whatever dp
    over.append(f"training.global_batch={m * dp}")
    t0, c0 = time.perf_counter(), time.process_time()
    sc = load_scenario("deepseek-v3-h800", over)
    sim = Simulation(sc)
    t1, c1 = time.perf_counter(), time.process_time()
    r = sim.run_step(sc.simulation.warmup_steps)
    t2, c2 = time.perf_counter(), time.process_time()
    return {"gpus": gpus, "dp": dp, "micro_batches": sim.m, "setup_s": t1 - t0, "setup_cpu_s": c1 - c0,
            "step_wall_s": t2 - t1,
            "step_cpu_s": c2 - c1, "simulated_step_s": r.step_time_s,
            "tokens_per_s_per_gpu": sc.training.global_batch * sc.training.seq_len / r.step_time_s / gpus}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, nargs="+", default=[256, 1024, 2048])
    ap.add_argument("--fidelity", default="flow", choices=("flow", "analytical"))
    ap.add_argument("--micro-batches", type=int, default=None, help="default 120 (the scenario's)")
    a = ap.parse_args()
    rows = [bench(g, a.fidelity, a.micro_batches) for g in a.gpus]
    cols = ("gpus", "dp", "micro_batches", "setup_s", "setup_cpu_s", "step_wall_s", "step_cpu_s", "simulated_step_s",
            "tokens_per_s_per_gpu")
    print(" | ".join(f"{c:>20}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r[c]:>20.4g}" if isinstance(r[c], float) else f"{r[c]:>20}" for c in cols))


if __name__ == "__main__":
    main()
