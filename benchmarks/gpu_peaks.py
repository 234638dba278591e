"""Measured peaks of one GPU against its datasheet: dense BF16 and FP8 GEMM TFLOP/s, HBM bandwidth.

    python benchmarks/gpu_peaks.py                 # CUDA; GPU name guessed (or --gpu H100-SXM)
    python benchmarks/gpu_peaks.py --out peaks.csv

GEMMs: square M = N = K in {4096, 8192, 16384}, random N(0, 1) inputs (never zeros: they run faster),
BF16 via ``torch.mm``, FP8 (e4m3, tensor-wise scales) via ``torch._scaled_mm``; the peak is the best
median. HBM: ``Tensor.copy_`` of 1, 4 and 8 GiB, bytes read + bytes written over the median time.
Timing is simmoe.calibration.bench's (CUDA events after ``torch.cuda._sleep``, rotated inputs,
median of the repeats after warm-up). Datasheet figures come from simmoe/data/hardware.yaml.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from simmoe.calibration.bench import open_bench
from simmoe.hardware import gpu_spec

GEMM_SIZES = (4096, 8192, 16384)
COPY_GIB = (1, 4, 8)


def measure(bench, warmup: int, repeats: int) -> list[dict]:
    torch = bench.torch
    rows = []
    one = torch.ones((), device=bench.device, dtype=torch.float32)
    for dtype in ("bf16", "fp8"):
        for n in GEMM_SIZES:
            sets = [(bench.randn(n, n), bench.randn(n, n)) for _ in range(2)]
            if dtype == "fp8":
                sets = [(a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)) for a, b in sets]
                fn = lambda s: torch._scaled_mm(s[0], s[1].t(), scale_a=one, scale_b=one,  # noqa: E731
                                                out_dtype=torch.bfloat16)
            else:
                fn = lambda s: torch.mm(s[0], s[1].t())  # noqa: E731
            seconds = float(np.median(bench.time(fn, sets, warmup, repeats)))
            rows.append({"what": f"{dtype} GEMM {n}^3", "kind": dtype, "seconds": seconds,
                         "rate": 2.0 * n**3 / seconds / 1e12, "unit": "TFLOP/s"})
            del sets
    for gib in COPY_GIB:
        elems = gib * 2**30 // 2
        src = bench.randn(elems)
        dst = torch.empty_like(src)
        seconds = float(np.median(bench.time(lambda s: s[1].copy_(s[0]), [(src, dst)], warmup, repeats)))
        rows.append({"what": f"copy {gib} GiB", "kind": "hbm", "seconds": seconds,
                     "rate": 2.0 * gib * 2**30 / seconds / 1e12, "unit": "TB/s (read + write)"})
        del src, dst
        torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", help="simmoe's GPU name (simmoe/data/hardware.yaml); guessed from the device")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", help="write the rows as .csv")
    args = ap.parse_args(argv)
    bench = open_bench("cuda")
    torch = bench.torch
    from simmoe.cli.calibrate import guess_gpu

    name = args.gpu or guess_gpu(torch.cuda.get_device_name(bench.device))
    if not name:
        sys.exit(f"cannot tell simmoe's name of {torch.cuda.get_device_name(bench.device)!r}: pass --gpu")
    spec = gpu_spec(name)
    sheet = {"bf16": spec.bf16_dense_tflops, "fp8": spec.fp8_dense_tflops, "hbm": spec.hbm_TBps}
    rows = measure(bench, args.warmup, args.repeats)
    for row in rows:
        row.update(gpu=name, device=torch.cuda.get_device_name(bench.device), torch=torch.__version__,
                   datasheet=sheet[row["kind"]], fraction_of_datasheet=row["rate"] / sheet[row["kind"]])
    print(f"{name} ({rows[0]['device']}, torch {torch.__version__})")
    print(f"{'what':<18} {'median ms':>10} {'measured':>10} {'datasheet':>10} {'fraction':>9}  unit")
    for r in rows:
        print(f"{r['what']:<18} {r['seconds'] * 1e3:>10.3f} {r['rate']:>10.1f} {r['datasheet']:>10.1f} "
              f"{r['fraction_of_datasheet']:>9.3f}  {r['unit']}")
    for kind in ("bf16", "fp8", "hbm"):
        best = max((r for r in rows if r["kind"] == kind), key=lambda r: r["rate"])
        print(f"peak {kind}: {best['rate']:.1f} {best['unit']} = {best['fraction_of_datasheet']:.1%} of the "
              f"datasheet's {best['datasheet']:.1f} ({best['what']})")
    if args.out:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        pacsv.write_csv(pa.Table.from_pylist(rows), args.out)
    return rows


if __name__ == "__main__":
    main()
