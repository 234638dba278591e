"""What the host costs an eager PyTorch training step: seconds of CPU per issued kernel, against the
GPU's seconds per small kernel, and the round trip of a device-to-host sync.

    python benchmarks/host_issue.py --out host.csv      # on a CUDA machine
    python benchmarks/host_issue.py --device cpu        # smoke test (numbers say nothing)

Why: simmoe times GPU kernels back to back. A layer made of many small kernels, issued one by one
from Python, can instead be paced by the host, and a device-to-host sync (e.g. an all-to-all
dispatcher copying split sizes to the CPU) empties the GPU's queue so the host's issue time is no
longer hidden. Rows (one per probe): probe, ops, host_s_per_op (wall seconds of the issuing loop
per op while the GPU is parked behind a sleep kernel: pure issue cost), gpu_s_per_op (CUDA-event
seconds per op of the same ops back to back: the kernels alone), paced_s_per_op (wall seconds per
op with nothing parked: the slower of the two wins), and for the sync probe the round trip.
Probes: elementwise ``mul`` (no autograd), ``linear`` 256x256 (no autograd), the same ``linear``
with autograd recording, its backward (``torch.autograd.backward`` of a chain, per op),
``item`` (an idle device-to-host copy of one element), and ``mul_cpu``: the same ``mul`` on a
256-element CPU tensor, the probe benchmarks/megatron_host_calls.py times beside Megatron's layer,
so a layer timed on one CPU can be carried to this host by CPU speed alone (its Python) plus this
host's GPU issue cost (docs/validation.md, "How sure the host costs are").
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

from simmoe.atomic import atomic_write
from simmoe.calibration.bench import SLEEP_CYCLES, import_torch, open_bench

FIELDS = ("probe", "ops", "host_s_per_op", "gpu_s_per_op", "paced_s_per_op", "repeats")


def _median(xs):
    return statistics.median(xs)


def _probes(torch, dev, n: int, size: int = 256, dtype: str = "bfloat16"):
    dt = getattr(torch, dtype)
    x = torch.randn(size, size, device=dev, dtype=dt)
    w = torch.randn(size, size, device=dev, dtype=dt) / (size ** 0.5)  # keeps the chain finite
    wg = w.clone().requires_grad_(True)

    def mul():
        y = x
        for _ in range(n):
            y = y * 1.0001
        return y

    def linear():
        y = x
        for _ in range(n):
            y = torch.nn.functional.linear(y, w)
        return y

    def linear_autograd():
        y = x
        for _ in range(n):
            y = torch.nn.functional.linear(y, wg)
        return y

    return {"mul": mul, "linear": linear, "linear_autograd": linear_autograd}


def _time(torch, bench, fn, park: bool):
    """(wall seconds of issuing fn, CUDA-event seconds of its kernels)."""
    bench.sync()
    if park and bench.cuda and hasattr(torch.cuda, "_sleep"):
        torch.cuda._sleep(SLEEP_CYCLES * 5)  # ~50 ms: longer than any probe's issue loop
    start = torch.cuda.Event(enable_timing=True) if bench.cuda else None
    end = torch.cuda.Event(enable_timing=True) if bench.cuda else None
    t0 = time.perf_counter()
    if start is not None:
        start.record()
    out = fn()
    if end is not None:
        end.record()
    host = time.perf_counter() - t0
    bench.sync()
    wall = time.perf_counter() - t0
    gpu = start.elapsed_time(end) * 1e-3 if start is not None else wall
    return host, gpu, wall, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None)
    ap.add_argument("--ops", type=int, default=1000, help="ops per timed loop")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--size", type=int, default=256,
                    help="probe tensors are size x size (8 on a CPU: the issue path, not the kernel)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--out")
    a = ap.parse_args()
    torch = import_torch()
    bench = open_bench(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n = a.ops
    rows = []
    for name, fn in _probes(torch, bench.device, n, a.size, a.dtype).items():
        for _ in range(3):
            _time(torch, bench, fn, park=False)
        host, gpu, paced = [], [], []
        for _ in range(a.repeats):
            h, _g, _w, _o = _time(torch, bench, fn, park=True)
            host.append(h / n)
            _h, g, w, _o = _time(torch, bench, fn, park=False)
            gpu.append(g / n)
            paced.append(w / n)
        rows.append({"probe": name, "ops": n, "host_s_per_op": _median(host), "gpu_s_per_op": _median(gpu),
                     "paced_s_per_op": _median(paced), "repeats": a.repeats})
        if name == "linear_autograd":
            # Backward of the chain: autograd's engine issues n dgrad + n wgrad GEMMs.
            host_b, paced_b = [], []
            for _ in range(a.repeats):
                y = fn()
                bench.sync()
                if bench.cuda and hasattr(torch.cuda, "_sleep"):
                    torch.cuda._sleep(SLEEP_CYCLES * 5)
                t0 = time.perf_counter()
                y.float().sum().backward()
                host_b.append((time.perf_counter() - t0) / n)
                bench.sync()
                y = fn()
                bench.sync()
                t0 = time.perf_counter()
                y.float().sum().backward()
                bench.sync()
                paced_b.append((time.perf_counter() - t0) / n)
            rows.append({"probe": "linear_autograd_backward", "ops": n, "host_s_per_op": _median(host_b),
                         "gpu_s_per_op": float("nan"), "paced_s_per_op": _median(paced_b), "repeats": a.repeats})
    one = torch.ones(1, device=bench.device)
    rt = []
    for _ in range(a.repeats * 10):
        bench.sync()
        t0 = time.perf_counter()
        one.item()
        rt.append(time.perf_counter() - t0)
    rows.append({"probe": "item", "ops": 1, "host_s_per_op": _median(rt), "gpu_s_per_op": float("nan"),
                 "paced_s_per_op": _median(rt), "repeats": len(rt)})
    a_cpu = torch.randn(256, dtype=torch.bfloat16)
    cpu = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        y = a_cpu
        for _ in range(n):
            y = y * 1.0
        cpu.append((time.perf_counter() - t0) / n)
    rows.append({"probe": "mul_cpu", "ops": n, "host_s_per_op": _median(cpu), "gpu_s_per_op": float("nan"),
                 "paced_s_per_op": _median(cpu), "repeats": a.repeats})
    print(f"{'probe':>26} {'host us/op':>11} {'gpu us/op':>10} {'paced us/op':>12}")
    for r in rows:
        print(f"{r['probe']:>26} {r['host_s_per_op'] * 1e6:>11.2f} {r['gpu_s_per_op'] * 1e6:>10.2f} "
              f"{r['paced_s_per_op'] * 1e6:>12.2f}")
    if a.out:
        def write(handle):
            w = csv.DictWriter(handle, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(rows)
        atomic_write(Path(a.out), write, binary=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
