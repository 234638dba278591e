"""The PyTorch microbenchmark behind `simmoe calibrate` (docs/calibration.md).

PyTorch is imported inside these functions only: simmoe imports and runs without it.

Timing. On CUDA each timed call sits between two CUDA events, after warm-up. Before the timed
calls the stream is parked on a ``torch.cuda._sleep`` kernel so the CPU can queue every call
ahead of the GPU: the events then measure back-to-back GPU time, not Python launch latency
(the engine models kernels in a busy stream). On CPU: time.perf_counter around each call.
Each case rotates several input sets, together at least twice the last-level cache, so no call
finds its operands in cache that a training step would not. A row keeps the median, P10 and P90 of
the repeats. A case that fails (an unsupported kernel, out of memory) is recorded in the profile's
``skipped`` metadata with the reason and the run goes on.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import time
from dataclasses import dataclass, field

import numpy as np

from simmoe.calibration.grid import Grid, expert_histogram, grid_cases
from simmoe.calibration.schema import COLLECTIVE_OPS, common_metadata, rows_to_table
from simmoe.errors import InputError

# Cycles the stream sleeps before the timed calls of a case: long enough (~10 ms at 1.4-2 GHz) for
# the CPU to queue all of them, even a 64-expert loop of matmuls repeated 20 times.
SLEEP_CYCLES = 20_000_000
MAX_INPUT_SETS = 16
CPU_CACHE_BYTES = 64 * 2**20  # last-level cache assumed on a CPU (only sizes the rotation)
MEMORY_FRACTION = 0.25  # at most this share of free GPU memory goes to one case's input sets


def import_torch():
    try:
        import torch
    except ImportError as exc:
        raise InputError("PyTorch is not installed", field="simmoe calibrate",
                         allowed="install it: pip install 'simmoe[calibrate]'") from exc
    return torch


@dataclass
class BenchConfig:
    device: str  # "cuda" or "cpu"
    grid: Grid
    dtypes: tuple[str, ...]
    command: str
    gpu: str = ""  # name in simmoe/data/hardware.yaml ("" when unknown, e.g. a CPU)
    show_progress: bool = True
    collectives: bool = True


@dataclass
class Bench:
    """What the cases share: torch, the device, the cache size, the skip log."""

    torch: object
    device: object
    cache_bytes: int
    free_bytes: int
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def n_sets(self, set_bytes: float) -> int:
        """Input sets to rotate: together >= 2x the cache, within the memory budget, >= 1."""
        want = math.ceil(2 * self.cache_bytes / max(set_bytes, 1))
        fits = int(MEMORY_FRACTION * self.free_bytes // max(set_bytes, 1))
        return max(1, min(MAX_INPUT_SETS, max(2, want), fits))

    def time(self, fn, sets: list, warmup: int, repeats: int) -> list[float]:
        torch = self.torch
        for i in range(warmup):
            fn(sets[i % len(sets)])
        self.sync()
        if self.cuda:
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
            if hasattr(torch.cuda, "_sleep"):
                torch.cuda._sleep(SLEEP_CYCLES)
            for i in range(repeats):
                starts[i].record()
                fn(sets[(warmup + i) % len(sets)])
                ends[i].record()
            torch.cuda.synchronize(self.device)
            return [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)]
        samples = []
        for i in range(repeats):
            t0 = time.perf_counter()
            fn(sets[(warmup + i) % len(sets)])
            samples.append(time.perf_counter() - t0)
        return samples

    def randn(self, *shape, dtype=None):
        return self.torch.randn(*shape, device=self.device, dtype=dtype or self.torch.bfloat16)


# -- the kernels ------------------------------------------------------------------------------------


def _fp8_ok(bench: Bench) -> str | None:
    """None if FP8 GEMMs can run here, else why not."""
    torch = bench.torch
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        return f"torch {torch.__version__} has no torch._scaled_mm / float8_e4m3fn"
    if bench.cuda and torch.cuda.get_device_capability(bench.device) < (8, 9):
        cap = ".".join(map(str, torch.cuda.get_device_capability(bench.device)))
        return f"compute capability {cap} < 8.9 has no FP8 tensor cores"
    try:
        a = bench.randn(16, 32).to(torch.float8_e4m3fn)
        one = torch.ones((), device=bench.device, dtype=torch.float32)
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    except Exception as exc:  # noqa: BLE001 - any failure means "not available here"
        return f"torch._scaled_mm failed: {str(exc).splitlines()[0][:200]}"
    return None


def _to_fp8(bench: Bench, x):
    return x.to(bench.torch.float8_e4m3fn)


def _gemm(bench: Bench, case: dict):
    torch, m, n, k = bench.torch, case["m"], case["n"], case["k"]
    width = 2 if case["dtype"] == "bf16" else 1
    sets = []
    for _ in range(bench.n_sets(width * (m * k + n * k) + 2 * m * n)):
        a, w = bench.randn(m, k), bench.randn(n, k)  # w as nn.Linear stores it: x @ w.T
        sets.append((a, w) if width == 2 else (_to_fp8(bench, a), _to_fp8(bench, w)))
    if width == 2:
        return (lambda s: torch.mm(s[0], s[1].t())), sets, "torch.mm(x, w.t())"
    one = torch.ones((), device=bench.device, dtype=torch.float32)
    fn = lambda s: torch._scaled_mm(s[0], s[1].t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)  # noqa: E731
    return fn, sets, "torch._scaled_mm(tensor-wise scales)"


def _loop(kernel, pieces):
    def fn(s):
        for piece in pieces(s):
            kernel(*piece)
    return fn


def _grouped(bench: Bench, case: dict):
    """Forward (or dgrad) grouped GEMM: torch._grouped_mm if it runs here, else a loop of matmuls."""
    torch = bench.torch
    hist = expert_histogram(case["experts"], case["tokens_per_expert"], case["skew"])
    e, n, k, fp8 = case["experts"], case["n"], case["k"], case["dtype"] == "fp8"
    if fp8:  # FP8 kernels need 16-row blocks: pad each expert's rows as FP8 MoE kernels do
        hist = -(-hist // 16) * 16
    total = int(hist.sum())
    offs = torch.tensor(np.cumsum(hist), device=bench.device, dtype=torch.int32)
    bounds = [(int(a), int(b)) for a, b in zip(np.cumsum(hist) - hist, np.cumsum(hist)) if b > a]
    sets = []
    for _ in range(bench.n_sets((1 if fp8 else 2) * (total * k + e * n * k) + 2 * total * n)):
        x, w = bench.randn(max(total, 1), k), bench.randn(e, n, k)
        sets.append((_to_fp8(bench, x), _to_fp8(bench, w)) if fp8 else (x, w))
    one = torch.ones((), device=bench.device, dtype=torch.float32)
    if not fp8 and hasattr(torch, "_grouped_mm"):
        fn = lambda s: torch._grouped_mm(s[0], s[1].transpose(-2, -1), offs=offs)  # noqa: E731
        note = _try(fn, sets[0])
        if note is None:
            return fn, sets, "torch._grouped_mm"
    elif fp8 and hasattr(torch, "_scaled_grouped_mm"):
        scale_a = torch.ones(max(total, 1), device=bench.device, dtype=torch.float32)
        scale_b = torch.ones(e, n, device=bench.device, dtype=torch.float32)
        fn = lambda s: torch._scaled_grouped_mm(s[0], s[1].transpose(-2, -1), scale_a, scale_b,  # noqa: E731
                                                offs=offs, out_dtype=torch.bfloat16)
        note = _try(fn, sets[0])
        if note is None:
            return fn, sets, "torch._scaled_grouped_mm(row-wise scales)"
    else:
        note = f"torch {torch.__version__} has no {'_scaled_grouped_mm' if fp8 else '_grouped_mm'}"
    if fp8:
        kernel = lambda a, w: torch._scaled_mm(a, w.t(), scale_a=one, scale_b=one,  # noqa: E731
                                               out_dtype=torch.bfloat16)
        impl = "loop:torch._scaled_mm(rows padded to 16)"
    else:
        kernel = lambda a, w: torch.mm(a, w.t())  # noqa: E731
        impl = "loop:torch.mm"
    fn = _loop(kernel, lambda s: [(s[0][a:b], s[1][i]) for i, (a, b) in enumerate(bounds)])
    return fn, sets, f"{impl} ({note})"


def _grouped_wgrad(bench: Bench, case: dict):
    """Weight gradient: expert e does (k x m_e) @ (m_e x n), reduction over its tokens."""
    torch = bench.torch
    hist = expert_histogram(case["experts"], case["tokens_per_expert"], case["skew"])
    e, n, k, fp8 = case["experts"], case["n"], case["k"], case["dtype"] == "fp8"
    if fp8:
        hist = -(-hist // 16) * 16
    total = int(hist.sum())
    offs = torch.tensor(np.cumsum(hist), device=bench.device, dtype=torch.int32)
    bounds = [(int(a), int(b)) for a, b in zip(np.cumsum(hist) - hist, np.cumsum(hist)) if b > a]
    sets = []
    for _ in range(bench.n_sets((1 if fp8 else 2) * total * (k + n) + 2 * e * n * k)):
        x, dy = bench.randn(max(total, 1), k), bench.randn(max(total, 1), n)
        # FP8 training quantizes X^T and dY^T in their own (memory-bound) kernels: time the GEMMs
        # on operands already laid out K-major, as those kernels leave them.
        sets.append((_to_fp8(bench, x.t().contiguous()), _to_fp8(bench, dy.t().contiguous())) if fp8 else (x, dy))
    one = torch.ones((), device=bench.device, dtype=torch.float32)
    note = f"torch {torch.__version__} has no _grouped_mm"
    if not fp8 and hasattr(torch, "_grouped_mm"):
        for layout, fn in (
            ("x.t(), dy", lambda s: torch._grouped_mm(s[0].t(), s[1], offs=offs)),
            ("x.t().contiguous(), dy.t().contiguous().t()",
             lambda s: torch._grouped_mm(s[0].t().contiguous(), s[1].t().contiguous().t(), offs=offs)),
        ):
            note = _try(fn, sets[0])
            if note is None:
                return fn, sets, f"torch._grouped_mm({layout})"
    if fp8:
        note = "no FP8 grouped weight-gradient kernel in torch"
        kernel = lambda xt, dyt: torch._scaled_mm(xt, dyt.t(), scale_a=one, scale_b=one,  # noqa: E731
                                                  out_dtype=torch.bfloat16)
        # Per-expert K-major slices are cut once here, not inside the timed loop.
        sets = [[(xt[:, a:b].contiguous(), dyt[:, a:b].contiguous()) for a, b in bounds] for xt, dyt in sets]
        fn = _loop(kernel, lambda s: s)
        return fn, sets, f"loop:torch._scaled_mm(rows padded to 16) ({note})"
    fn = _loop(lambda x, dy: torch.mm(x.t(), dy), lambda s: [(s[0][a:b], s[1][a:b]) for a, b in bounds])
    return fn, sets, f"loop:torch.mm ({note})"


def _try(fn, inputs) -> str | None:
    try:
        fn(inputs)
    except Exception as exc:  # noqa: BLE001 - any failure means "use the fallback", recorded
        return f"failed: {str(exc).splitlines()[0][:160]}" if str(exc) else f"failed: {type(exc).__name__}"
    return None


def _attention(bench: Bench, case: dict):
    torch = bench.torch
    import torch.nn.functional as F

    b, s, h, d = case["batch"], case["seq_len"], case["heads"], case["head_dim"]
    backward = case["op"] == "attention_fwd_bwd"
    sets = []
    for _ in range(bench.n_sets(2 * b * h * s * d * (8 if backward else 4))):
        q, k, v = (bench.randn(b, h, s, d).requires_grad_(backward) for _ in range(3))
        sets.append((q, k, v, bench.randn(b, h, s, d)))
    if not backward:
        def fn(x):
            with torch.no_grad():
                F.scaled_dot_product_attention(x[0], x[1], x[2], is_causal=case["causal"])
    else:
        def fn(x):
            out = F.scaled_dot_product_attention(x[0], x[1], x[2], is_causal=case["causal"])
            torch.autograd.grad(out, (x[0], x[1], x[2]), x[3])
    return fn, sets, "F.scaled_dot_product_attention" + ("+autograd" if backward else "")


def _memory(bench: Bench, case: dict):
    torch = bench.torch
    import torch.nn.functional as F

    op, rows, hidden, topk = case["op"], case["m"], case["n"], case["k"] or 1
    sets = []
    for _ in range(bench.n_sets(case["bytes"])):
        x = bench.randn(rows, hidden)
        if op == "copy":
            sets.append((x, torch.empty_like(x)))
        elif op in ("rmsnorm", "layernorm"):
            sets.append((x, bench.randn(hidden), bench.randn(hidden)))
        else:
            # Each token goes to topk slots, shuffled as a router's dispatch order would be.
            index = (torch.arange(rows * topk, device=bench.device) % rows)[
                torch.randperm(rows * topk, device=bench.device)]
            y = bench.randn(rows * topk, hidden) if op == "unpermute" else None
            sets.append((x, index, y))
    fns = {
        "copy": (lambda s: s[1].copy_(s[0]), "Tensor.copy_"),
        "rmsnorm": (lambda s: F.rms_norm(s[0], (hidden,), s[1]), "F.rms_norm"),
        "layernorm": (lambda s: F.layer_norm(s[0], (hidden,), s[1], s[2]), "F.layer_norm"),
        "permute": (lambda s: s[0].index_select(0, s[1]), "Tensor.index_select"),
        "unpermute": (lambda s: s[0].index_add_(0, s[1], s[2]), "Tensor.index_add_"),
    }
    fn, impl = fns[op]
    return fn, sets, impl


SUSTAINED_SIZE = 8192  # M = N = K of the sustained-load GEMM
SUSTAINED_CHUNK = 20  # calls per timed chunk (~28 ms of BF16 work on an H100)
IDLE_BEFORE_S = 2.0  # the GPU idles this long first, so the first chunk runs at burst clocks


def _sm_clock_mhz(bench: Bench) -> float | None:
    try:
        return float(bench.torch.cuda.clock_rate(bench.device))
    except Exception:  # noqa: BLE001 - needs NVML (pynvml); the clock is informative only
        return None


def measure_sustained(bench: Bench, dtype: str, seconds: float) -> dict:
    """Throughput of one large GEMM at burst and under sustained load (docs/calibration.md,
    "Sustained clocks"). The grid's kernels each run for milliseconds after an idle gap, so they
    see burst clocks; a training step keeps the GPU at its power cap for hours, where the SM clock
    settles lower. After IDLE_BEFORE_S of idle, 8192^3 GEMMs run back to back for ``seconds`` in
    chunks timed with CUDA events: burst = the first chunk, sustained = the median chunk of the
    last third. ``sustained_s / burst_s`` is the factor ProfileModel applies to tensor-core ops."""
    torch = bench.torch
    fn, sets, impl = _gemm(bench, {"m": SUSTAINED_SIZE, "n": SUSTAINED_SIZE, "k": SUSTAINED_SIZE, "dtype": dtype})
    for i in range(3):
        fn(sets[i % len(sets)])
    bench.sync()
    time.sleep(IDLE_BEFORE_S)
    chunks, calls, clocks = [], 0, []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(SUSTAINED_CHUNK):
            fn(sets[calls % len(sets)])
            calls += 1
        end.record()
        chunks.append((start, end))
        if len(chunks) > 3:  # the CPU stays a few chunks ahead: wall time tracks GPU time
            chunks[-3][1].synchronize()
            if len(chunks) in (4, 5) or len(chunks) % 50 == 0:
                clocks.append(_sm_clock_mhz(bench))
    bench.sync()
    per_call = np.array([s.elapsed_time(e) * 1e-3 / SUSTAINED_CHUNK for s, e in chunks])
    if per_call.size < 6:
        raise RuntimeError(f"only {per_call.size} chunks in {seconds} s: too short to see sustained clocks")
    tail = per_call[-max(per_call.size // 3, 2):]
    flops = 2.0 * SUSTAINED_SIZE**3
    known = [c for c in clocks if c]
    return {"dtype": dtype, "impl": impl, "m": SUSTAINED_SIZE, "n": SUSTAINED_SIZE, "k": SUSTAINED_SIZE,
            "seconds": float(per_call.sum() * SUSTAINED_CHUNK), "calls": int(calls),
            "burst_s": float(per_call[0]), "sustained_s": float(np.median(tail)),
            "burst_tflops": flops / float(per_call[0]) / 1e12, "sustained_tflops": flops / float(np.median(tail)) / 1e12,
            "factor": float(np.median(tail) / per_call[0]),
            "sm_clock_mhz_start": known[0] if known else None, "sm_clock_mhz_end": known[-1] if known else None}


SETUP = {"gemm": _gemm, "grouped_gemm": _grouped, "grouped_gemm_wgrad": _grouped_wgrad,
         "attention_fwd": _attention, "attention_fwd_bwd": _attention,
         **{op: _memory for op in ("copy", "rmsnorm", "layernorm", "permute", "unpermute")}}


# -- the run ----------------------------------------------------------------------------------------


def _summary(samples: list[float]) -> dict:
    arr = np.asarray(samples, dtype=np.float64)
    p10, median, p90 = np.percentile(arr, [10, 50, 90])
    return {"median_s": float(median), "p10_s": float(p10), "p90_s": float(p90), "n_repeats": int(arr.size)}


def _device_metadata(bench: Bench, gpu: str) -> dict[str, str]:
    torch = bench.torch
    meta = {"torch": torch.__version__, "cuda": torch.version.cuda or "", "gpu": gpu}
    if bench.cuda:
        props = torch.cuda.get_device_properties(bench.device)
        meta.update(device=props.name, sm_count=str(props.multi_processor_count),
                    compute_capability=f"{props.major}.{props.minor}", driver=_driver_version(),
                    gpu_memory_bytes=str(props.total_memory), gpus_visible=str(torch.cuda.device_count()))
    else:
        meta.update(device=f"cpu: {platform.processor() or platform.machine()}", sm_count="", driver="",
                    cpu_threads=str(torch.get_num_threads()))
    return meta


def _driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return ""


def _progress(show: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    return Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), disable=not show)


def open_bench(device: str) -> Bench:
    torch = import_torch()
    if device == "cuda":
        if not torch.cuda.is_available():
            raise InputError("CUDA is not available to PyTorch", field="--device", value=device, allowed="cpu")
        dev = torch.device("cuda", torch.cuda.current_device())
        props = torch.cuda.get_device_properties(dev)
        free, _ = torch.cuda.mem_get_info(dev)
        cache = int(getattr(props, "L2_cache_size", 0) or 50 * 2**20)
        return Bench(torch=torch, device=dev, cache_bytes=cache, free_bytes=int(free))
    if device == "cpu":
        return Bench(torch=torch, device=torch.device("cpu"), cache_bytes=CPU_CACHE_BYTES, free_bytes=2**34)
    raise InputError("unknown device", field="--device", value=device, allowed="cuda, cpu")


def run_calibration(config: BenchConfig):
    """Measure the grid; returns (table, metadata) ready for ``write_profile``."""
    bench = open_bench(config.device)
    torch = bench.torch
    threads = torch.get_num_threads()
    if not bench.cuda:
        # One intra-op thread: a CPU profile exercises the harness, and on a shared CPU the wake-up
        # of a second thread (milliseconds when descheduled) would swamp kernels of microseconds.
        torch.set_num_threads(1)
    try:
        return _run(bench, config)
    finally:
        torch.set_num_threads(threads)


def _run(bench: Bench, config: BenchConfig):
    torch = bench.torch
    torch.manual_seed(0)
    dtypes = list(config.dtypes)
    if "fp8" in dtypes:
        reason = _fp8_ok(bench)
        if reason is not None:
            bench.skipped["fp8"] = reason
            dtypes.remove("fp8")
    cases = grid_cases(config.grid, tuple(dtypes))
    rows: list[dict] = []
    with _progress(config.show_progress) as progress:
        task = progress.add_task("calibrating", total=len(cases) + (1 if config.collectives else 0))
        for case in cases:
            label = f"{case['op']}:{case['dtype']}"
            progress.update(task, description=label)
            try:
                fn, sets, impl = SETUP[case["op"]](bench, case)
                samples = bench.time(fn, sets, config.grid.warmup, config.grid.repeats)
                if min(samples) <= 0:
                    raise RuntimeError("a repeat timed at <= 0 s (below the timer's resolution)")
                rows.append({**case, "impl": impl, **_summary(samples)})
            except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                if bench.cuda and isinstance(exc, torch.cuda.OutOfMemoryError):
                    torch.cuda.empty_cache()
                shape = {k: v for k, v in case.items() if k not in ("op", "dtype", "flops", "bytes")}
                bench.skipped.setdefault(label, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                                                f" (first at {shape})")
            finally:
                sets = fn = None  # noqa: F841 - free the inputs before the next case
            progress.advance(task)
        if config.collectives:
            progress.update(task, description="collectives")
            from simmoe.calibration.collectives import run_collectives

            coll_rows, reason = run_collectives(bench, config.grid)
            rows.extend(coll_rows)
            if reason:
                for op in COLLECTIVE_OPS:
                    bench.skipped[op] = reason
            progress.advance(task)
    sustained = {}
    if bench.cuda and config.grid.sustained_seconds > 0:
        for dtype in dtypes:
            try:
                sustained[dtype] = measure_sustained(bench, dtype, config.grid.sustained_seconds)
            except Exception as exc:  # noqa: BLE001 - recorded: the profile then stays at burst clocks
                bench.skipped[f"sustained:{dtype}"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    grouped_impls = sorted({r["impl"] for r in rows if r["op"] == "grouped_gemm"})
    metadata = {
        **common_metadata(config.command),
        **_device_metadata(bench, config.gpu),
        "provenance": "measured",
        "grid": config.grid.name,
        "dtypes": ",".join(dtypes),
        "timer": "cuda-events after torch.cuda._sleep" if bench.cuda else "time.perf_counter",
        "grouped_gemm_impl": "; ".join(grouped_impls),
        "ops": json.dumps(sorted({r["op"] for r in rows})),
        "skipped": json.dumps(bench.skipped),
    }
    if sustained:
        metadata["sustained_gemm"] = json.dumps(sustained)
    return rows_to_table(rows), metadata
