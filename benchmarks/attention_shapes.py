"""Causal self-attention kernels at the head dimensions real models use, per PyTorch SDPA backend,
against simmoe's roofline (simmoe/data/roofline.yaml, ``attention``).

    python benchmarks/attention_shapes.py --out attn.csv          # CUDA: every shape x backend
    python benchmarks/attention_shapes.py --device cpu --quick    # smoke test (tiny shapes)
    python benchmarks/attention_shapes.py --fit results/gpu-ground-truth/h100-attention-shapes*.csv

Why: the roofline's attention rate is FlashAttention-3's at head dim 128 and does not depend on the
head dimension. Models differ: DeepSeek-V3's MLA attends with d_qk = 192 (128 + 64 RoPE) and
d_v = 128; most others use 128, some 64 or 256. Each case times one BF16 causal
``F.scaled_dot_product_attention`` call (forward, and forward + backward via ``torch.autograd.grad``)
inside ``torch.nn.attention.sdpa_kernel(backend)`` for each backend PyTorch has (flash, efficient,
cudnn); a backend that rejects a shape is recorded as skipped with PyTorch's reason. Timing is
simmoe.calibration.bench's (CUDA events, stream parked behind a sleep kernel so launch latency is
hidden, rotated inputs, median of the repeats) after ``--preheat`` seconds of the same call back
to back, so the GPU is at its sustained (power-capped) clock, which is what the roofline predicts
by default (``clocks="sustained"``); ``burst`` predictions are written beside it.

``--fit ROWS`` measures nothing: it derives roofline.yaml's ``attention.fraction_of_peak`` (BF16
forward and backward) from the measured rows at head dim 128 (most models use it), and
``attention.head_dim_factor`` (the rate at another head shape over the rate at 128, for the same
tokens and heads) from the others. Per shape it takes the backend fastest at forward + backward,
the backward as (forward + backward) - forward of that backend; each fraction is scaled by the
geometric mean of roofline compute time over measured time (minus the kernel overhead), so the
roofline reproduces those kernels on average, and each factor makes it reproduce its shape.

Rows: gpu, backend, direction (fwd | fwd_bwd), batch, heads, seq_len, d_qk, d_v, median_s, p10_s,
p90_s, flops (simmoe.compute.ops.attention_flops), tflops, roofline_s (sustained), roofline_burst_s,
error_pct = 100 (roofline_s / median_s - 1), skipped (reason, else empty).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from simmoe.atomic import atomic_write
from simmoe.calibration.bench import import_torch, open_bench
from simmoe.compute.ops import attention_flops
from simmoe.compute.roofline import RooflineModel

# (batch, heads, seq_len, d_qk, d_v): one GPU's share of a layer. DeepSeek-V3 (TP1: 128 heads,
# seq 4096, micro-batch 1); the same tokens at d 64 / 128 / 256 and d_qk = d_v = 192; Llama 3 8B
# (32 query heads, seq 8192); Qwen3-30B-A3B (32 query heads, seq 4096, micro-batch 2). GQA's shared
# key/value heads change bytes, not FLOPs: timed here as plain multi-head attention.
FULL = [(1, 128, 4096, 64, 64), (1, 128, 4096, 128, 128), (1, 128, 4096, 192, 128),
        (1, 128, 4096, 192, 192), (1, 128, 4096, 256, 256), (1, 32, 8192, 128, 128),
        (2, 32, 4096, 128, 128)]
QUICK_CPU = [(1, 2, 64, 16, 16), (1, 2, 64, 24, 16)]
DIRECTIONS = ("fwd", "fwd_bwd")
FIELDS = ("gpu", "backend", "direction", "batch", "heads", "seq_len", "d_qk", "d_v", "median_s", "p10_s",
          "p90_s", "flops", "tflops", "roofline_s", "roofline_burst_s", "error_pct", "skipped")


def _backends(torch):
    from torch.nn.attention import SDPBackend
    names = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION"}
    return {k: getattr(SDPBackend, v) for k, v in names.items() if hasattr(SDPBackend, v)}


def _case_fn(bench, backend, shape, direction):
    torch = bench.torch
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    b, h, s, dqk, dv = shape
    backward = direction == "fwd_bwd"
    per_set = 2 * b * h * s * (2 * dqk + dv) * (2 if backward else 1)
    sets = []
    for _ in range(bench.n_sets(per_set)):
        q, k = (bench.randn(b, h, s, dqk).requires_grad_(backward) for _ in range(2))
        v = bench.randn(b, h, s, dv).requires_grad_(backward)
        sets.append((q, k, v, bench.randn(b, h, s, dv)))

    def fn(x):
        with sdpa_kernel(backend):
            if not backward:
                with torch.no_grad():
                    F.scaled_dot_product_attention(x[0], x[1], x[2], is_causal=True)
            else:
                out = F.scaled_dot_product_attention(x[0], x[1], x[2], is_causal=True)
                torch.autograd.grad(out, (x[0], x[1], x[2]), x[3])
    return fn, sets


def _predict(model: RooflineModel, shape, direction) -> float:
    b, h, s, dqk, dv = shape
    t = model.attention_s(b, s, h, dqk, dv, True, "bf16", False)
    if direction == "fwd_bwd":
        t += model.attention_s(b, s, h, dqk, dv, True, "bf16", True)
    return float(t)


FIT_HEAD_DIM = 128


def _best_backend(rows: list[dict], shape: tuple) -> tuple[float, float]:
    """(forward s, backward s) of the backend fastest at forward + backward at ``shape``
    (batch, heads, seq_len, d_qk, d_v); backward = (forward + backward) - forward."""
    here = [r for r in rows if not r["skipped"] and tuple(int(r[k]) for k in
            ("batch", "heads", "seq_len", "d_qk", "d_v")) == shape]
    both = {r["backend"]: float(r["median_s"]) for r in here if r["direction"] == "fwd_bwd"}
    fwd = {r["backend"]: float(r["median_s"]) for r in here if r["direction"] == "fwd"}
    backend = min((k for k in both if k in fwd), key=both.get)
    return fwd[backend], both[backend] - fwd[backend]


def fit_attention(rows: list[dict], gpu: str, params_file=None) -> dict:
    """roofline.yaml's ``attention.fraction_of_peak`` (BF16) and ``attention.head_dim_factor`` that
    reproduce the measured rows (module docstring, ``--fit``)."""
    import math

    model = RooflineModel(gpu, params_file=params_file, clocks="sustained")
    current = model.params.attention_fraction_of_peak
    factors_now = model.params.attention_head_dim_factor
    directions = ("forward", "backward")

    def log_ratio(shape, measured: dict) -> dict:
        """log(model compute time at head-dim-128 fractions / measured time), per direction."""
        b, h, s, dqk, dv = shape
        out = {}
        for i, d in enumerate(directions):
            part = model.attention_parts(b, s, h, dqk, dv, True, "bf16", d == "backward")
            compute = part["compute_s"] * factors_now.get((dqk, dv), {}).get(d, 1.0)
            out[d] = math.log(compute / (measured[i] - part["overhead_s"]))
        return out

    shapes = sorted({tuple(int(r[k]) for k in ("batch", "heads", "seq_len", "d_qk", "d_v"))
                     for r in rows if not r["skipped"]})
    base = [sh for sh in shapes if sh[3] == sh[4] == FIT_HEAD_DIM]
    if not base:
        raise ValueError(f"no measured rows at head dim {FIT_HEAD_DIM}")
    logs = [log_ratio(sh, _best_backend(rows, sh)) for sh in base]
    fraction = {f"bf16_{d}": current[f"bf16_{d}"] * math.exp(sum(x[d] for x in logs) / len(logs))
                for d in directions}
    factor = {}
    for sh in shapes:
        if sh[3:] == (FIT_HEAD_DIM, FIT_HEAD_DIM):
            continue
        ref = (*sh[:3], FIT_HEAD_DIM, FIT_HEAD_DIM)
        if ref not in base:
            continue  # no head-dim-128 measurement with the same tokens and heads to compare with
        here, at_ref = log_ratio(sh, _best_backend(rows, sh)), log_ratio(ref, _best_backend(rows, ref))
        factor[f"{sh[3]}/{sh[4]}"] = {d: math.exp(here[d] - at_ref[d]) for d in directions}
    return {"fraction_of_peak": fraction, "head_dim_factor": factor}


def fit_attention_runs(runs: list[list[dict]], gpu: str, params_file=None) -> dict:
    """The geometric mean of each run's :func:`fit_attention` (repeated measurements of the same
    shapes, e.g. on two lent machines)."""
    import math

    fits = [fit_attention(rows, gpu, params_file) for rows in runs]

    def gmean(values):
        return math.exp(sum(math.log(v) for v in values) / len(values))

    keys = set.intersection(*(set(f["head_dim_factor"]) for f in fits))
    return {"fraction_of_peak": {k: gmean([f["fraction_of_peak"][k] for f in fits]) for k in fits[0]["fraction_of_peak"]},
            "head_dim_factor": {k: {d: gmean([f["head_dim_factor"][k][d] for f in fits]) for d in ("forward", "backward")}
                                for k in sorted(keys)}}


def _read(path: str) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _write(rows: list[dict], out: str) -> None:
    def write(handle):
        w = csv.DictWriter(handle, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    atomic_write(Path(out), write, binary=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda if PyTorch sees one")
    ap.add_argument("--gpu", default="H100-SXM", help="simmoe's GPU name for the roofline (hardware.yaml)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (CPU smoke test)")
    ap.add_argument("--preheat", type=float, default=None, metavar="SECONDS",
                    help="run each case back to back this long before timing (default 2 on CUDA, 0 on CPU)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", help="write the rows as CSV (atomically, after every case)")
    ap.add_argument("--fit", metavar="ROWS", nargs="+", help="measure nothing: print the attention "
                    "parameters that reproduce these measured rows (docstring); several files: the "
                    "geometric mean of their fits")
    a = ap.parse_args()
    if a.fit:
        runs = [_read(path) for path in a.fit]
        fit = fit_attention_runs(runs, runs[0][0]["gpu"])
        print("attention:\n  fraction_of_peak:")
        for key, value in fit["fraction_of_peak"].items():
            print(f"    {key}: {value:.3f}")
        print("  head_dim_factor:")
        for key, value in fit["head_dim_factor"].items():
            print(f'    "{key}": {{forward: {value["forward"]:.3f}, backward: {value["backward"]:.3f}}}')
        return 0

    torch = import_torch()
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    bench = open_bench(device)
    preheat = a.preheat if a.preheat is not None else (2.0 if bench.cuda else 0.0)
    shapes = QUICK_CPU if (a.quick or not bench.cuda) else FULL
    sustained = RooflineModel(a.gpu, clocks="sustained")
    burst = RooflineModel(a.gpu, clocks="burst")
    rows: list[dict] = []
    print(f"{'backend':>9} {'dir':>7} {'b':>2} {'h':>4} {'s':>6} {'dqk':>4} {'dv':>4} {'TFLOPS':>8} "
          f"{'roofline':>9} {'err%':>7}")
    for shape in shapes:
        for direction in DIRECTIONS:
            for name, backend in _backends(torch).items():
                b, h, s, dqk, dv = shape
                row = {"gpu": a.gpu, "backend": name, "direction": direction, "batch": b, "heads": h,
                       "seq_len": s, "d_qk": dqk, "d_v": dv, "skipped": ""}
                flops = float(attention_flops(b, s, h, dqk, dv, True, False))
                if direction == "fwd_bwd":
                    flops += float(attention_flops(b, s, h, dqk, dv, True, True))
                row.update(flops=flops, roofline_s=_predict(sustained, shape, direction),
                           roofline_burst_s=_predict(burst, shape, direction))
                try:
                    fn, sets = _case_fn(bench, backend, shape, direction)
                    fn(sets[0])
                    deadline = time.perf_counter() + preheat
                    i = 0
                    while time.perf_counter() < deadline:
                        fn(sets[i % len(sets)])
                        i += 1
                        if i % 8 == 0:
                            bench.sync()  # keep the queue short so the deadline means GPU time
                    samples = sorted(bench.time(fn, sets, a.warmup, a.repeats))
                except Exception as exc:  # noqa: BLE001 - a backend that rejects a shape is a finding
                    row["skipped"] = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
                    rows.append(row)
                    print(f"{name:>9} {direction:>7} {b:>2} {h:>4} {s:>6} {dqk:>4} {dv:>4}  skipped: {row['skipped'][:80]}")
                    continue
                finally:
                    sets = None
                    if bench.cuda:
                        torch.cuda.empty_cache()
                n = len(samples)
                med, p10, p90 = samples[n // 2], samples[n // 10], samples[(9 * n) // 10]
                row.update(median_s=med, p10_s=p10, p90_s=p90, tflops=flops / med / 1e12,
                           error_pct=100.0 * (row["roofline_s"] / med - 1.0))
                rows.append(row)
                print(f"{name:>9} {direction:>7} {b:>2} {h:>4} {s:>6} {dqk:>4} {dv:>4} {row['tflops']:>8.1f} "
                      f"{flops / row['roofline_s'] / 1e12:>9.1f} {row['error_pct']:>+7.1f}", flush=True)
                if a.out:
                    _write(rows, a.out)
    if a.out:
        _write(rows, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
