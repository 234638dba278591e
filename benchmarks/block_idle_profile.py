"""Where an Automodel block's GPU idle time goes, measured in the timed loop itself.

    python benchmarks/block_idle_profile.py --out idle.csv --gaps gaps.csv   # CUDA
    python benchmarks/block_idle_profile.py --device cpu --tiny             # smoke test

Why: on one H100 the blocks of benchmarks/automodel_block_ground_truth.py take 4-5 ms longer per
iteration (CUDA events) than the kernels of one traced iteration add up to, and a replay at
measured per-kernel host costs explains ~0.04 ms of it (benchmarks/block_idle_replay.py). The
trace came from a separate iteration after the timed ones, so this measures the same iterations
three ways, after the same warm-up and preheat:

1. ``plain``: no profiler. Per iteration the CUDA-event time and the host's issue time (wall
   seconds until the step returns: past any device-to-host wait, the host is ahead by the rest).
2. ``cuda``: a CUDA-only profile (CUPTI, no CPU ops recorded: near the plain loop's host speed).
   Per iteration: event time, kernel busy time (union over streams), span, idle = event - busy,
   busy by kernel class. Settles "idle" against "kernels slower in the timed loop".
3. ``cpu+cuda``: CPU ops and launches recorded as well (slows the host). Each idle gap on the
   GPU is split by when the next kernel was launched: ``host`` (the GPU was empty before the
   host launched it), ``sync`` (part of a host gap that contains a device-to-host wait: the host
   was blocked, then had to refill the queue) and ``device`` (launched in time; waited on another
   stream or on launch latency). The gaps file sums idle by (previous kernel, next kernel,
   launching op) so the largest sources can be read off.

A step here is one block forward under full recompute plus its backward (``--blocks`` chains
more), DeepEP's host wait kept unless ``--no-host-sync``; ``--dispatch-us N`` keeps the GPU busy
N us after each wait (a spin kernel counted as busy), as DeepEP's transfer would.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
LAUNCH_CATS = {"cuda_runtime", "cuda_driver"}
SYNC_CALLS = ("Synchronize", "cudaMemcpy", "cuMemcpy")  # host calls that can block on the GPU


def _ground_truth():
    spec = importlib.util.spec_from_file_location("automodel_block_ground_truth",
                                                  HERE / "automodel_block_ground_truth.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _short(name: str, width: int = 70) -> str:
    return name if len(name) <= width else name[: width - 3] + "..."


def _merge(intervals: list[tuple[float, float, dict]]) -> list[tuple[float, float, dict, dict]]:
    """Busy stretches of the GPU (any stream): (start, end, first event, last-ending event)."""
    out: list[list] = []
    for a, b, ev in sorted(intervals, key=lambda t: t[0]):
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1][1], out[-1][3] = b, ev
        else:
            out.append([a, b, ev, ev])
    return [tuple(x) for x in out]


def idle_breakdown(events: list[dict], windows: list[tuple[float, float]], min_gap_us: float = 1.0):
    """Per host window (one iteration): GPU busy, span and idle split into host / sync / device,
    and the gaps themselves. ``events`` are Chrome-trace events (torch.profiler's export):
    GPU activity (cat kernel, gpu_memcpy, gpu_memset) carries ``args.correlation`` naming its
    launch (cat cuda_runtime or cuda_driver); times in microseconds."""
    xs = [e for e in events if e.get("ph") == "X" and "ts" in e]
    launches = {e["args"]["correlation"]: e for e in xs
                if e.get("cat") in LAUNCH_CATS and "correlation" in e.get("args", {})}
    syncs = sorted((e["ts"], e["ts"] + e.get("dur", 0.0)) for e in xs
                   if e.get("cat") in LAUNCH_CATS and any(s in e.get("name", "") for s in SYNC_CALLS))
    ops_by_tid: dict = defaultdict(list)
    for e in xs:
        if e.get("cat") == "cpu_op":
            ops_by_tid[e.get("tid")].append(e)

    def launching_op(launch: dict | None) -> str:
        if launch is None:
            return "?"
        inner = None
        for op in ops_by_tid.get(launch.get("tid"), ()):
            if op["ts"] <= launch["ts"] and launch["ts"] <= op["ts"] + op.get("dur", 0.0):
                if inner is None or op["ts"] >= inner["ts"]:
                    inner = op
        return inner["name"] if inner else launch.get("name", "?")

    gpu = [e for e in xs if e.get("cat") in GPU_CATS]
    rows, gaps = [], []
    for i, (w0, w1) in enumerate(windows):
        mine = [e for e in gpu if w0 <= launches.get(e.get("args", {}).get("correlation"), e)["ts"] <= w1]
        if not mine:
            rows.append({"iteration": i, "kernels": 0})
            continue
        stretches = _merge([(e["ts"], e["ts"] + e.get("dur", 0.0), e) for e in mine])
        busy = sum(b - a for a, b, _, _ in stretches)
        split = {"host": 0.0, "sync": 0.0, "device": 0.0}
        for (_, g0, _, prev), (g1, _, nxt, _) in zip(stretches, stretches[1:]):
            gap = g1 - g0
            if gap < min_gap_us:
                split["device"] += gap
                continue
            launch = launches.get(nxt.get("args", {}).get("correlation"))
            launched = launch["ts"] + launch.get("dur", 0.0) if launch else g0
            late = min(max(launched - g0, 0.0), gap)
            blocked = any(s0 < g1 and s1 > g0 for s0, s1 in syncs)
            split["sync" if blocked else "host"] += late
            split["device"] += gap - late
            gaps.append({"iteration": i, "gap_us": gap, "host_late_us": late, "sync": blocked,
                         "prev": _short(prev.get("name", "?")), "next": _short(nxt.get("name", "?")),
                         "op": launching_op(launch)})
        rows.append({"iteration": i, "kernels": len(mine), "span_us": stretches[-1][1] - stretches[0][0],
                     "busy_us": busy, **{f"idle_{k}_us": v for k, v in split.items()}})
    return rows, gaps


def top_gaps(gaps: list[dict], n: int = 25) -> list[dict]:
    """Idle summed by (previous kernel, next kernel, launching op, sync), largest first."""
    acc: dict = defaultdict(lambda: [0, 0.0, 0.0])
    for g in gaps:
        a = acc[(g["prev"], g["next"], g["op"], g["sync"])]
        a[0] += 1
        a[1] += g["gap_us"]
        a[2] += g["host_late_us"]
    ranked = sorted(acc.items(), key=lambda kv: -kv[1][1])[:n]
    return [{"prev": k[0], "next": k[1], "op": k[2], "sync": k[3], "count": c, "gap_us": t, "host_late_us": h}
            for k, (c, t, h) in ranked]


def _profiled(torch, block, x, iterations: int, cpu: bool) -> tuple[list[dict], list[tuple[float, float]], list[float]]:
    """Run ``iterations`` timed steps under torch.profiler; return the trace's events, each
    iteration's host window (trace clock, us) and its CUDA-event seconds."""
    from torch.profiler import ProfilerActivity, profile, record_function
    acts = ([ProfilerActivity.CPU] if cpu or not block.cuda else []) + ([ProfilerActivity.CUDA] if block.cuda else [])
    names, event_s = [], []
    with profile(activities=acts) as prof:
        for i in range(iterations):
            name = f"simmoe_iteration_{i}"
            names.append(name)
            with record_function(name):
                a = torch.cuda.Event(enable_timing=True) if block.cuda else None
                b = torch.cuda.Event(enable_timing=True) if block.cuda else None
                t0 = time.perf_counter()
                if a is not None:
                    a.record()
                block.step(x)
                if b is not None:
                    b.record()
                    b.synchronize()
                event_s.append(a.elapsed_time(b) * 1e-3 if a is not None else time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text()).get("traceEvents", [])
    marks = {e["name"]: (e["ts"], e["ts"] + e.get("dur", 0.0)) for e in events
             if e.get("ph") == "X" and e.get("name", "").startswith("simmoe_iteration_")
             and e.get("cat") != "gpu_user_annotation"}  # the host range, not its GPU mirror
    windows = [marks.get(n, (0.0, -1.0)) for n in names]
    if not cpu and block.cuda:  # no CPU ops recorded: windows from the launches' own order
        windows = _windows_from_launches(events, iterations)
    return events, windows, event_s


def _windows_from_launches(events: list[dict], iterations: int) -> list[tuple[float, float]]:
    """Without CPU ops the iterations are told apart by the host's event-synchronize call that
    ends each one."""
    ends = sorted(e["ts"] + e.get("dur", 0.0) for e in events
                  if e.get("ph") == "X" and e.get("cat") in LAUNCH_CATS and "EventSynchronize" in e.get("name", ""))
    starts = [float("-inf")] + ends
    if len(ends) < iterations:  # no launches recorded: one window, the caller divides
        return [(float("-inf"), float("inf"))]
    return [(starts[i], ends[i]) for i in range(iterations)]


def _class_busy(gt, events: list[dict], windows) -> dict[str, float]:
    """Kernel seconds by class (GEMM, attention, other) per window, in ms; a kernel belongs to the
    window of its launch (its own start when no launch was recorded), as in idle_breakdown."""
    launches = {e["args"]["correlation"]: e["ts"] for e in events if e.get("ph") == "X"
                and e.get("cat") in LAUNCH_CATS and "correlation" in e.get("args", {})}
    out: dict = defaultdict(float)
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in GPU_CATS:
            t = launches.get(e.get("args", {}).get("correlation"), e["ts"])
            if any(w0 <= t <= w1 for w0, w1 in windows):
                out[gt.kernel_class(e.get("name", ""))] += e.get("dur", 0.0)
    n = max(len(windows), 1)
    return {f"{k}_ms": v * 1e-3 / n for k, v in out.items()}


def measure(torch, gt, case: str, blocks: int, device, tiny: bool, host_sync: bool, preheat_s: float,
            iterations: int, trace_path: str | None = None, dispatch_us: float = 0.0,
            gmm: str = "loop") -> tuple[dict, list[dict]]:
    shape = gt.shape_of(case, tiny)
    torch.manual_seed(0)
    block = gt.Block(torch, shape, device, compile=device.type == "cuda", host_sync=host_sync, blocks=blocks,
                     dispatch_us=dispatch_us, gmm=gmm)
    x = torch.randn(shape.tokens, shape.hidden, device=device, dtype=torch.bfloat16, requires_grad=True)
    block.grad_out = torch.randn_like(x)
    sync = torch.cuda.synchronize if block.cuda else (lambda: None)
    for _ in range(3):
        block.step(x)
    sync()
    t_end = time.perf_counter() + preheat_s
    while time.perf_counter() < t_end:
        block.step(x)
        sync()
    plain_event, plain_host = [], []
    for _ in range(iterations):
        if block.cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
        t0 = time.perf_counter()
        block.step(x)
        plain_host.append(time.perf_counter() - t0)
        if block.cuda:
            b.record()
            b.synchronize()
            plain_event.append(a.elapsed_time(b) * 1e-3)
        else:
            plain_event.append(plain_host[-1])
    row = {"case": case, "blocks": blocks, "host_sync": host_sync, "dispatch_us": dispatch_us, "gmm": gmm, "tiny": tiny,
           "iterations": iterations,
           "plain_event_ms": statistics.median(plain_event) * 1e3 / blocks,
           "plain_host_issue_ms": statistics.median(plain_host) * 1e3 / blocks}
    gaps: list[dict] = []
    for label, cpu in (("cuda", False), ("cpu+cuda", True)):
        if label == "cuda" and not block.cuda:
            continue
        events, windows, event_s = _profiled(torch, block, x, iterations, cpu)
        per_it, its_gaps = idle_breakdown(events, windows)
        per_window = iterations if len(windows) == 1 and iterations > 1 else 1
        per_it = [r for r in per_it if r.get("kernels")]
        key = "cuda" if label == "cuda" else "cpu"
        row[f"{key}_windows"] = len(windows)
        row[f"{key}_event_ms"] = statistics.median(event_s) * 1e3 / blocks
        if per_it:
            for field in ("busy_us", "span_us", "idle_host_us", "idle_sync_us", "idle_device_us"):
                row[f"{key}_{field[:-3]}_ms"] = statistics.median(r[field] for r in per_it) * 1e-3 / blocks / per_window
            row[f"{key}_kernels"] = statistics.median(r["kernels"] for r in per_it) / blocks / per_window
            row[f"{key}_idle_ms"] = row[f"{key}_event_ms"] - row[f"{key}_busy_ms"]
            for cls, ms in _class_busy(gt, events, windows).items():
                row[f"{key}_{cls}"] = ms / blocks / per_window
        if cpu:
            gaps = [{"case": case, "blocks": blocks, "host_sync": host_sync, **g}
                    for g in top_gaps(its_gaps)]
            if trace_path:
                with gzip.open(trace_path, "wt") as fh:
                    json.dump({"traceEvents": events}, fh)
    del block, x
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row, gaps


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: allowed integers >= 1")
    return value


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", help="default: all of automodel_block_ground_truth's cases")
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None)
    ap.add_argument("--tiny", action="store_true", help="toy sizes (CPU smoke test; says nothing about a GPU)")
    ap.add_argument("--no-host-sync", dest="host_sync", action="store_false")
    ap.add_argument("--dispatch-us", type=float, default=0.0,
                    help="GPU busy this long after each dispatch's host wait (a spin standing in for "
                    "DeepEP's transfer; CUDA only)")
    ap.add_argument("--gmm", choices=("loop", "grouped"), default="loop",
                    help="expert GEMMs: the per-expert loop (default) or one torch._grouped_mm per call (CUDA)")
    ap.add_argument("--blocks", type=_positive_int, default=1, help="blocks chained per step (default 1)")
    ap.add_argument("--iterations", type=_positive_int, default=5, help="steps measured each way (default 5)")
    ap.add_argument("--preheat", type=float, default=None, help="seconds of back-to-back steps first (default 2 on CUDA)")
    ap.add_argument("--out", help="one row per case: .csv or .parquet")
    ap.add_argument("--gaps", help="largest idle sources per case: .csv or .parquet")
    ap.add_argument("--trace", help="gzipped Chrome trace of the cpu+cuda profile (last case)")
    args = ap.parse_args(argv)
    import torch
    gt = _ground_truth()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tiny = args.tiny or device.type == "cpu"
    preheat = args.preheat if args.preheat is not None else (2.0 if device.type == "cuda" else 0.0)
    rows, gaps = [], []
    for case in args.case or list(gt.CASES):
        if case not in gt.CASES:
            ap.error(f"--case {case!r}: allowed {', '.join(sorted(gt.CASES))}")
        row, its_gaps = measure(torch, gt, case, args.blocks, device, tiny, args.host_sync, preheat,
                                args.iterations, args.trace, args.dispatch_us, args.gmm)
        rows.append(row)
        gaps += its_gaps
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        n = args.iterations
        for g in its_gaps[:12]:  # per step: idle, of it host-late, how many gaps; where
            print(f"  gap {g['gap_us'] / n:8.1f} us/it  host-late {g['host_late_us'] / n:8.1f}  x{g['count'] / n:.0f}"
                  f" sync={g['sync']}  {g['op']}  | {g['prev']} -> {g['next']}", flush=True)
        if args.out:
            gt.write(rows, args.out)
        if args.gaps and gaps:
            gt.write(gaps, args.gaps)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
