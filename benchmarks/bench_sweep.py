"""Points per second of `simmoe sweep`: 200 small scenarios on a local pool of 2 workers.

The points are the built-in scenario cut down to one recorded step of a 2-layer, single-stage model
(analytical network, padded execution), swept over 10 capacity factors x 4 EP sizes x 5 seeds,
simulated by the real engine (the default evaluator). Reports, separately: validating and keying
every point up front, the sweep itself (worker start-up included), and a re-run that finds every
point done. ``--evaluator derived`` measures the sweep machinery alone (no simulation). Nothing is
asserted (timings depend on the machine).

    .venv/bin/python benchmarks/bench_sweep.py [--workers 2] [--evaluator engine|derived]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from simmoe.sweep import load_sweep, run_sweep

TINY = {"model.layers": 2, "parallelism.pp": 1, "training.global_batch": 64, "simulation.steps": 1,
        "simulation.warmup_steps": 0, "simulation.fidelity": "analytical", "routing.execution": "padded"}
GRID = {"routing.capacity_factor": [1.0, 1.1, 1.2, 1.25, 1.3, 1.4, 1.5, 1.75, 2.0, 3.0],
        "parallelism.ep": [1, 2, 4, 8],
        "simulation.seed": [0, 1, 2, 3, 4]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--evaluator", default="engine")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        sweep = Path(folder) / "bench.yaml"
        sweep.write_text(yaml.safe_dump({"name": "bench", "base": "default", "set": TINY, "grid": GRID}))
        t0 = time.perf_counter()
        spec = load_sweep(sweep, evaluator=args.evaluator)
        validate_s = time.perf_counter() - t0
        out = Path(folder) / "out"
        outcome = run_sweep(spec, out, executor="local", workers=args.workers, progress=False)
        t1 = time.perf_counter()
        again = run_sweep(spec, out, executor="local", workers=args.workers, progress=False)
        rerun_s = time.perf_counter() - t1
        elapsed = pq.read_table(outcome.dataset, columns=["elapsed_s"]).column("elapsed_s").to_pylist()
    n = len(spec.points)
    print(f"evaluator {spec.evaluator}, {n} points, {args.workers} workers")
    print(f"  validate + key every point: {validate_s:.2f} s ({n / validate_s:.0f} points/s)")
    print(f"  sweep: {outcome.elapsed_s:.2f} s, {outcome.ran / outcome.elapsed_s:.1f} points/s "
          f"({outcome.ok} ok, {len(outcome.errors)} failed)")
    print(f"  one point in its worker: mean {sum(elapsed) / len(elapsed):.3f} s "
          "(the first of each worker includes its imports)")
    if outcome.errors:
        print(f"  first failure: {outcome.errors[0]}")
    print(f"  re-run with every point done: {rerun_s:.2f} s ({again.skipped} skipped, {again.ran} run)")


if __name__ == "__main__":
    main()
