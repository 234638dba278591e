"""All-to-all and all-reduce timings through torch.distributed, one spawned process per GPU.

Only on CUDA with more than one visible GPU (NCCL); otherwise the profile records why not.
``measure_collectives`` also runs on CPU with the gloo backend, which the tests use to exercise
the code path. Per repeat every rank times the collective after a barrier; the repeat's time is
the slowest rank's (a collective ends when its last rank does), as nccl-tests reports.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from simmoe.calibration.grid import Grid

BF16_BYTES = 2


def _worker(rank: int, world: int, backend: str, init_file: str, out_file: str, sizes: list[int],
            warmup: int, repeats: int) -> None:
    import time

    import torch
    import torch.distributed as dist

    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world)
    cuda = backend == "nccl"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    results = []
    try:
        for op in ("alltoall", "allreduce"):
            for size in sizes:
                # alltoall splits the buffer into one equal chunk per rank
                numel = max(world, size // BF16_BYTES // world * world)
                send = torch.randn(numel, device=device, dtype=torch.bfloat16)
                recv = torch.empty_like(send)
                call = (lambda: dist.all_to_all_single(recv, send)) if op == "alltoall" else \
                    (lambda: dist.all_reduce(send))
                for _ in range(warmup):
                    call()
                samples = []
                for _ in range(repeats):
                    dist.barrier()
                    if cuda:
                        torch.cuda.synchronize(device)
                        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        start.record()
                        call()
                        end.record()
                        end.synchronize()
                        samples.append(start.elapsed_time(end) * 1e-3)
                    else:
                        t0 = time.perf_counter()
                        call()
                        samples.append(time.perf_counter() - t0)
                times = torch.tensor(samples, dtype=torch.float64, device=device)
                gathered = [torch.empty_like(times) for _ in range(world)]
                dist.all_gather(gathered, times)
                slowest = torch.stack(gathered).max(dim=0).values.cpu().numpy()
                results.append({"op": op, "bytes": float(numel * BF16_BYTES), "samples": slowest.tolist()})
        if rank == 0:
            with open(out_file, "w") as fh:
                json.dump(results, fh)
    finally:
        dist.destroy_process_group()


def measure_collectives(world: int, backend: str, sizes: list[int], warmup: int, repeats: int) -> list[dict]:
    """Rows (op, gpus, bytes, times) from ``world`` spawned ranks on ``backend`` (nccl or gloo)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="simmoe-calibrate-") as tmp:
        init_file, out_file = os.path.join(tmp, "init"), os.path.join(tmp, "out.json")
        mp.spawn(_worker, args=(world, backend, init_file, out_file, sizes, warmup, repeats), nprocs=world,
                 join=True)
        with open(out_file) as fh:
            results = json.load(fh)
    rows = []
    for r in results:
        p10, median, p90 = np.percentile(r["samples"], [10, 50, 90])
        rows.append({"op": r["op"], "dtype": "bf16", "impl": f"torch.distributed:{backend}", "gpus": world,
                     "bytes": r["bytes"], "median_s": float(median), "p10_s": float(p10), "p90_s": float(p90),
                     "n_repeats": len(r["samples"])})
    return rows


def run_collectives(bench, grid: Grid) -> tuple[list[dict], str | None]:
    """(rows, None), or ([], why they were skipped)."""
    torch = bench.torch
    if not bench.cuda:
        return [], "collectives are measured on CUDA only (NCCL over the visible GPUs)"
    world = torch.cuda.device_count()
    if world < 2:
        return [], f"{world} GPU visible: all-to-all and all-reduce need at least 2"
    if not torch.distributed.is_available() or not torch.distributed.is_nccl_available():
        return [], "torch.distributed with NCCL is not available in this PyTorch build"
    try:
        return measure_collectives(world, "nccl", list(grid.collective_bytes), grid.warmup, grid.repeats), None
    except Exception as exc:  # noqa: BLE001 - recorded in the profile, the compute rows still count
        return [], f"collectives failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
