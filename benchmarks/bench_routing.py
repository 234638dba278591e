"""Time to draw the routing of one DeepSeek-V3-sized training step.

EP64 over 8 nodes (8 GPUs each), 256 routed experts (4 per rank), top-8, node-limited to 4 nodes,
4096 tokens per rank per micro-batch, 58 MoE layers x N micro-batches. Prints a table of CPU
seconds (``time.process_time``); nothing here is asserted (timings depend on the machine).

    .venv/bin/python benchmarks/bench_routing.py [--microbatches 8 120] [--seed 0]

Columns: prep = per-(step, layer) probabilities; batch = all draws a layer at a time
(``draw_batch``, the engine's path: blocks of DRAW_BLOCK micro-batches from one stream each);
per_draw = the same number of draws by the plain per-draw sampler (``sample_raw``, one
SeedSequence stream per draw: the cost model of the former engine path, for comparison).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from simmoe.routing import EPGroup, RoutingModel, draw_rng, sample_raw


def deepseek_v3_group() -> EPGroup:
    ep, experts, gpus_per_node = 64, 256, 8
    return EPGroup(expert_to_rank=np.arange(experts) // (experts // ep),
                   rank_to_node=np.arange(ep) // gpus_per_node, tokens_per_rank=4096, top_k=8)


def time_step(model: RoutingModel, layers: int, microbatches: int, step: int
              ) -> tuple[float, float, float]:
    """CPU seconds for the per-(step, layer) probabilities, for all draws a layer at a time, and
    for as many draws of the plain per-draw sampler."""
    t0 = time.process_time()
    for layer in range(layers):
        model.probabilities(step, layer)
    t1 = time.process_time()
    for layer in range(layers):
        model.draw_batch(step, layer, range(microbatches))
    t2 = time.process_time()
    for layer in range(layers):
        probs = model.probabilities(step, layer)
        for mb in range(microbatches):
            model._finish_draw(sample_raw(model.group, probs,
                                          draw_rng(model.seed, step, layer, mb)))
    return t1 - t0, t2 - t1, time.process_time() - t2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--microbatches", type=int, nargs="+", default=[8, 120])
    parser.add_argument("--layers", type=int, default=58)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inclusion", nargs="+", default=["threshold"],
                        choices=("threshold", "exact"))
    args = parser.parse_args()
    group = deepseek_v3_group()
    rows = []
    for drift in ("none", "aux_loss"):
        for mb in args.microbatches:
            for method in args.inclusion:
                model = RoutingModel(group, num_layers=args.layers, popularity="zipf", zipf_s=0.5,
                                     drift=drift, max_nodes_per_token=4, capacity_factor=None,
                                     inclusion_method=method, seed=args.seed)
                prep, batch, per_draw = time_step(model, args.layers, mb, step=1)
                n = args.layers * mb
                rows.append((drift, mb, method, prep, batch, 1e3 * batch / n, per_draw,
                             1e3 * per_draw / n))
    print(f"{'drift':<9} {'micro-batches':>13} {'inclusion':>9} {'prep_s':>7} {'batch_s':>8} "
          f"{'ms/draw':>8} {'per_draw_s':>10} {'ms/draw':>8}")
    for drift, mb, method, prep, batch, per, plain, plain_per in rows:
        print(f"{drift:<9} {mb:>13} {method:>9} {prep:>7.2f} {batch:>8.2f} {per:>8.3f} "
              f"{plain:>10.2f} {plain_per:>8.3f}")
    print("CPU seconds. prep: probabilities of 58 layers (cached across steps when popularity is"
          " static); batch: the draws a layer at a time (draw_batch, the engine's path);"
          " per_draw: the plain per-draw sampler, one stream per draw")


if __name__ == "__main__":
    main()
