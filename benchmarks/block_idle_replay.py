"""Would per-kernel host issue cost explain the GPU idle time of the measured Automodel blocks?

    python benchmarks/block_idle_replay.py                      # host costs of host_issue.py
    python benchmarks/block_idle_replay.py --forward-us 100 --backward-us 100

Replays the kernel sequence of each committed one-block trace
(results/gpu-ground-truth/h100-automodel-block-kernels-*.parquet) through a two-stage pipeline:
the host issues the kernels in trace order at a fixed cost each (memsets free: issued inside
another op), the GPU starts a kernel when it is issued and the previous one is done, and a
device-to-host copy (DeepEP's wait for the receive counts) makes the host wait for the GPU before
it issues anything more. Prints the GPU idle this predicts per block, by phase (forward,
recompute, backward: the trace is cut where the recompute repeats the forward's first kernel
after the first sync). Defaults: the H100 host costs of results/gpu-ground-truth/h100-host-issue.csv
(13 us per forward op, 53 us per kernel of a backward linear, 12 us per sync round trip).
Kernel durations are the traced ones; streams are not modelled (one queue).
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "results" / "gpu-ground-truth"
CASES = ("qwen3-30b-a3b", "deepseek-v3", "kimi-k2")


def replay_idle_s(kernels: list[str], durations_s: list[float], host_s: list[float]) -> list[float]:
    """GPU idle before each kernel when the host issues kernel i at cumulative cost ``host_s``
    and waits for the GPU after every device-to-host copy."""
    host = gpu = 0.0
    idle = []
    for name, dur, cost in zip(kernels, durations_s, host_s):
        host += cost
        start = max(gpu, host)
        idle.append(start - gpu)
        gpu = start + dur
        if name.startswith("Memcpy DtoH"):
            host = max(host, gpu)  # the host waits for the copy (its round trip is in ``cost``)
    return idle


def phases(kernels: list[str]) -> list[int]:
    """0 forward, 1 recompute, 2 backward, per kernel."""
    first_sync = next(i for i, k in enumerate(kernels) if k.startswith("Memcpy DtoH"))
    n = next(i for i in range(first_sync, len(kernels)) if kernels[i] == kernels[0])
    return [0 if i < n else 1 if i < 2 * n else 2 for i in range(len(kernels))]


def case_idle_ms(case: str, forward_us: float, backward_us: float, sync_us: float) -> tuple[float, float, float]:
    import pyarrow.parquet as pq

    rows = pq.read_table(TRACES / f"h100-automodel-block-kernels-{case}.parquet").to_pylist()
    rows = sorted((r for r in rows if r["blocks"] == 1), key=lambda r: r["start_us"])
    names = [r["kernel"] for r in rows]
    phase = phases(names)
    cost = [0.0 if k.startswith("Memset") else (sync_us if k.startswith("Memcpy DtoH") else
            backward_us if p == 2 else forward_us) * 1e-6 for k, p in zip(names, phase)]
    idle = replay_idle_s(names, [r["duration_us"] * 1e-6 for r in rows], cost)
    out = [0.0, 0.0, 0.0]
    for p, s in zip(phase, idle):
        out[p] += s * 1e3
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--forward-us", type=float, default=13.0, help="host us per forward/recompute kernel")
    ap.add_argument("--backward-us", type=float, default=53.0, help="host us per backward kernel")
    ap.add_argument("--sync-us", type=float, default=12.0, help="device-to-host round trip, us")
    a = ap.parse_args(argv)
    print(f"host costs: forward {a.forward_us} us, backward {a.backward_us} us, sync {a.sync_us} us per kernel")
    print(f"{'block':<16}{'idle fwd ms':>12}{'recompute':>11}{'bwd':>8}{'total':>8}")
    for case in CASES:
        f, r, b = case_idle_ms(case, a.forward_us, a.backward_us, a.sync_us)
        print(f"{case:<16}{f:>12.2f}{r:>11.2f}{b:>8.2f}{f + r + b:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
