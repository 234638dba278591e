"""Ground truth for one MoE layer: a real PyTorch layer timed on one device vs simmoe's prediction.

    python benchmarks/moe_layer_ground_truth.py --profile measured:H100-SXM --out gt.csv  # CUDA, full grid
    python benchmarks/moe_layer_ground_truth.py --quick --layer eager --clocks burst --preheat 0
    python benchmarks/moe_layer_ground_truth.py --replay gt.csv --profile h100.parquet  # predict again, no GPU
    python benchmarks/moe_layer_ground_truth.py --device cpu                           # smoke test only

The measured layer (BF16, forward + backward, ``torch.autograd.grad`` w.r.t. the input, the router
and both expert weights): router ``F.linear`` -> FP32 softmax (or sigmoid, top-k renormalized) ->
``topk`` -> ``sort`` of the flat expert ids -> permute -> grouped SwiGLU experts
(``torch._grouped_mm`` over device offsets when it runs forward and backward here, else a loop of
per-expert matmuls) -> unpermute with the routing weights. ``--layer fused`` (default): the
memory-bound steps as a production layer runs them (``FusedKernels``: compiled SwiGLU, gathers
both ways, no atomics); ``--layer eager``: plain PyTorch ops (unfused SiLU and multiply,
``index_add``). The routing is fixed in advance so its histogram is the case's: a constant
(tokens x experts) FP32 bias with +50 on each token's chosen experts is added to the router logits
(one small elementwise kernel the model does not list). ``balanced`` splits tokens*top_k evenly;
``zipf:S`` follows ``simmoe.calibration.grid.expert_histogram``, capped at one slot per token per
expert. Each case runs back to back for ``--preheat`` seconds (default 3 on CUDA) before it is
timed, so it is measured at sustained (power-capped) clocks, which is what ``--clocks sustained``
(default) predicts.

The prediction: a one-layer MoE scenario (same hidden, experts, top-k, expert_ffn, tokens; tp = ep
= 1, router in BF16) through ``simmoe.workload.build_stage_program``; its ``L0.moe.*`` ops
(router GEMM, top-k, permute, fc1, act, fc2, unpermute and their backward; residual excluded) are
timed as the engine times them, the grouped GEMMs with the draw's actual tokens per expert, and
summed (one stream, no overlap). Compute model: ``load_compute_model(--gpu, --profile, clocks=--clocks)``.

Timing: simmoe.calibration.bench (CUDA events after ``torch.cuda._sleep``, rotated input sets,
median of the repeats after warm-up). CPU times say nothing about a GPU; on --device cpu the
shapes are tiny and only the script itself is exercised.

expert_ffn per case (full grid): min(3.5 x hidden, the largest multiple of 128 with all experts'
weights experts x 3 x hidden x expert_ffn x 2 B <= --expert-gib, default 6 GiB), so the weights,
their gradients and the activations fit one 80 GB GPU: hidden 4096: 14336 (8 experts, Mixtral),
4096 (64), 1024 (256); hidden 7168: 18688 (8), 2304 (64), 512 (256). Cases with top_k >= experts
(every token to every expert) are left out.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simmoe.calibration import expert_histogram, load_compute_model
from simmoe.calibration.bench import Bench, import_torch, open_bench
from simmoe.compute.model import ComputeModel, gemm_backward_s, grouped_gemm_backward_s
from simmoe.config.schema import Scenario
from simmoe.workload import build_stage_program
from simmoe.workload.ops import ExpertGemmOp, GemmOp, MemoryOp, Op

ROUTE_BIAS = 50.0  # added to the chosen experts' logits: far above any N(0, 1) router logit
ALIGN = 128
LAYER_PREFIX = "L0.moe."
NOT_IN_LAYER = ("L0.moe.residual", "L0.moe.residual_bwd")  # the block's residual add, not the layer's


@dataclass(frozen=True)
class Case:
    hidden: int
    experts: int
    top_k: int
    routing: str  # "balanced" or "zipf:S"
    tokens: int
    expert_ffn: int

    @property
    def label(self) -> str:
        return f"d{self.hidden}-E{self.experts}-top{self.top_k}-{self.routing}"


# ------------------------------------------------------------------------------------- the grid


def expert_ffn_for(hidden: int, experts: int, budget_bytes: float) -> int:
    """min(3.5 x hidden, largest multiple of 128 whose experts' BF16 SwiGLU weights fit budget_bytes)."""
    fits = int(budget_bytes // (experts * 3 * hidden * 2)) // ALIGN * ALIGN
    return max(ALIGN, min(int(3.5 * hidden) // ALIGN * ALIGN, fits))


def grid(device: str, quick: bool, tokens: int | None, budget_bytes: float) -> list[Case]:
    routings = ("balanced", "zipf:1.0")
    if device == "cpu":  # tiny: exercises the script, says nothing about a GPU
        hiddens, experts, top_ks, tokens = (64,), ((4,) if quick else (4, 8)), (2,), tokens or 128
        ffn = lambda d, e: 64  # noqa: E731
    else:
        hiddens = (4096,) if quick else (4096, 7168)
        experts = (8, 64) if quick else (8, 64, 256)
        top_ks = (2,) if quick else (2, 8)
        tokens = tokens or 8192
        ffn = lambda d, e: expert_ffn_for(d, e, budget_bytes)  # noqa: E731
    return [Case(d, e, k, r, tokens, ffn(d, e)) for d in hiddens for e in experts for k in top_ks
            for r in routings if k < e]


CASE_KEYS = ("hidden", "experts", "top_k", "tokens", "expert_ffn")


def parse_case(spec: str) -> Case:
    """``hidden=2048,experts=16,top_k=8,tokens=16384,expert_ffn=768[,routing=balanced]``: one case
    of a given shape (e.g. one EP rank's share of a real model's layer) instead of the grid."""
    fields = dict(item.split("=", 1) for item in spec.split(",") if "=" in item)
    unknown = set(fields) - set(CASE_KEYS) - {"routing"}
    missing = set(CASE_KEYS) - set(fields)
    if unknown or missing or spec.count("=") != len(fields):
        raise SystemExit(f"--case {spec!r}: give {', '.join(f'{k}=N' for k in CASE_KEYS)} and optionally "
                         f"routing=balanced|zipf:S" + (f"; unknown {sorted(unknown)}" if unknown else "")
                         + (f"; missing {sorted(missing)}" if missing else ""))
    try:
        ints = {k: int(fields[k]) for k in CASE_KEYS}
    except ValueError as exc:
        raise SystemExit(f"--case {spec!r}: {exc}") from None
    if min(ints.values()) < 1 or ints["top_k"] > ints["experts"]:
        raise SystemExit(f"--case {spec!r}: every size must be >= 1 and top_k <= experts")
    return Case(routing=fields.get("routing", "balanced"), **ints)


def routing_histogram(experts: int, tokens: int, top_k: int, routing: str) -> np.ndarray:
    """tokens*top_k assignments split by expert_histogram, then capped at ``tokens`` per expert
    (a token picks an expert once); the excess goes to the others in proportion to their load."""
    hist = expert_histogram(experts, tokens * top_k / experts, routing).astype(np.int64)
    while hist.max() > tokens:
        excess = int(np.clip(hist - tokens, 0, None).sum())
        hist = np.minimum(hist, tokens)
        weight = np.where(hist < tokens, np.maximum(hist, 1), 0).astype(np.float64)
        share = excess * weight / weight.sum()
        add = np.floor(share).astype(np.int64)
        add[np.argsort(-(share - add), kind="stable")[:excess - int(add.sum())]] += 1
        hist += add
    return hist


def assignment(hist: np.ndarray, tokens: int, top_k: int, rng: np.random.Generator) -> np.ndarray:
    """(tokens, top_k) expert ids, distinct per token, with per-expert totals ``hist``: slots sorted by
    expert are dealt round-robin over shuffled tokens (a run of <= tokens slots hits distinct tokens)."""
    slots = np.repeat(np.arange(hist.size), hist)
    assert slots.size == tokens * top_k and hist.max() <= tokens
    i = np.arange(slots.size)
    out = np.empty((tokens, top_k), dtype=np.int64)
    out[rng.permutation(tokens)[i % tokens], i // tokens] = slots
    return out


# ------------------------------------------------------------------------------- the prediction


def moe_scenario(case: Case) -> Scenario:
    """One MoE block on one GPU: only its L0.moe.* ops are used."""
    heads = max(1, case.hidden // 128)
    return Scenario.model_validate(dict(
        model=dict(name="ground-truth", layers=1, hidden=case.hidden, vocab=1024,
                   attention=dict(type="gqa", heads=heads, kv_heads=heads),
                   moe=dict(routed_experts=case.experts, top_k=case.top_k, expert_ffn=case.expert_ffn,
                            router_dtype="bf16")),
        training=dict(seq_len=case.tokens, global_batch=1, micro_batch=1, total_tokens=1e9),
        parallelism=dict(dp=1), cluster=dict(topology="none"),
        routing=dict(probs_applied_at="combine")))  # the layer below weights in its unpermute


def layer_ops(case: Case) -> tuple[list[Op], list[Op]]:
    """(forward, backward) ops the workload builder emits for the case's MoE layer."""
    prog = build_stage_program(moe_scenario(case), 0)
    pick = lambda ops: [op for op in ops if op.name.startswith(LAYER_PREFIX) and op.name not in NOT_IN_LAYER]  # noqa: E731
    return pick(prog.forward), pick(prog.backward)


def op_seconds(model: ComputeModel, op: Op, tokens_per_expert: np.ndarray) -> float:
    """Seconds of one op, as simmoe.engine.runner times it (FP32 GEMMs as BF16, backward GEMMs =
    dgrad + wgrad, routed experts with the draw's tokens per expert)."""
    dtype = "bf16" if getattr(op, "dtype", "bf16") == "fp32" else getattr(op, "dtype", "bf16")
    bwd = op.phase == "bwd"
    if isinstance(op, GemmOp):
        t = gemm_backward_s(model, op.m, op.n, op.k, dtype).total_s if bwd else model.gemm_s(op.m, op.n, op.k, dtype)
        return float(t) * op.count
    if isinstance(op, MemoryOp):
        return float(model.memory_bound_s(op.bytes_moved, 1, op.access)) if op.bytes_moved > 0 else 0.0
    if isinstance(op, ExpertGemmOp) and not op.shared:
        if bwd:
            return float(grouped_gemm_backward_s(model, tokens_per_expert, op.n, op.k, dtype).total_s)
        return float(model.grouped_gemm_s(tokens_per_expert, op.n, op.k, dtype))
    raise TypeError(f"no rule for {type(op).__name__} {op.name} in an MoE layer on one GPU")


def predict(case: Case, tokens_per_expert: np.ndarray, model: ComputeModel) -> dict[str, float]:
    """simmoe's seconds for the layer: forward, backward, and per op."""
    fwd, bwd = layer_ops(case)
    per_op = {op.name: op_seconds(model, op, np.asarray(tokens_per_expert)) for op in fwd + bwd}
    fwd_s = sum(per_op[op.name] for op in fwd)
    bwd_s = sum(per_op[op.name] for op in bwd)
    return {"fwd_s": fwd_s, "bwd_s": bwd_s, "total_s": fwd_s + bwd_s, "per_op": per_op}


# ---------------------------------------------------------------------------------- the layer


def _grouped_fns(torch, hist: np.ndarray, impl: str = "auto"):
    """{impl: fn(x, w, offs)} computing x_e @ w[e].T per expert (x rows sorted by expert), in the
    order to try them: ``auto`` = torch._grouped_mm if present, then the loop."""
    bounds = [(e, int(a), int(b)) for e, (a, b) in enumerate(zip(np.cumsum(hist) - hist, np.cumsum(hist))) if b > a]

    def loop(x, w, offs):
        # Bounds come from the draw's histogram (known on the host): a real loop would read the
        # counts back with a sync, which would time launch latency instead of the GPU.
        return torch.cat([x[a:b] @ w[e].t() for e, a, b in bounds], 0)

    fns = {}
    if impl in ("auto", "grouped_mm") and hasattr(torch, "_grouped_mm"):
        fns["torch._grouped_mm"] = lambda x, w, offs: torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)
    if impl in ("auto", "loop"):
        fns["loop:torch.mm"] = loop
    return fns


class FusedKernels:
    """The memory-bound kernels a production MoE layer runs fused (Megatron-Core with TE's fused
    permute/unpermute and its fused SwiGLU), here as torch.compile'd Triton kernels: one pass over
    the bytes each, no atomics. Permute and unpermute are adjoint gathers: with the sort's order and
    its inverse every direction is a gather (a reduction over a token's top-k rows), never a
    scatter-add. ``compile=False`` runs the same functions eagerly (for CPU tests)."""

    def __init__(self, torch, compile: bool = True) -> None:
        F = torch.nn.functional
        if compile:
            # Static shapes: symbolic row lengths cost the kernels their vector loads (half the
            # bandwidth, seen on an H100). Each (hidden, ffn, top-k) compiles once; allow them all.
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
            if hasattr(torch._dynamo.config, "recompile_limit"):
                torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        wrap = (lambda fn: torch.compile(fn, dynamic=False)) if compile else (lambda fn: fn)

        def swiglu(h):
            gate, up = h.chunk(2, dim=-1)
            return F.silu(gate) * up

        # A token's k rows are summed in one pass (k loads per output element, unrolled), as a
        # fused unpermute kernel does: no (T, k, d) intermediate, no reduction kernel over k.
        def gather_sum(g, inv, tokens: int, k: int):  # permute's backward
            rows = inv.view(tokens, k)
            acc = g.index_select(0, rows[:, 0]).float()
            for j in range(1, k):
                acc = acc + g.index_select(0, rows[:, j]).float()
            return acc.to(g.dtype)

        def gather_weighted_sum(y, inv, w, tokens: int, k: int):  # unpermute
            rows = inv.view(tokens, k)
            acc = y.index_select(0, rows[:, 0]).float() * w[:, 0:1]
            for j in range(1, k):
                acc = acc + y.index_select(0, rows[:, j]).float() * w[:, j:j + 1]
            return acc.to(y.dtype)

        def scaled_rows(dout, src, w_sorted):  # unpermute's backward w.r.t. the expert outputs
            return (dout.index_select(0, src).float() * w_sorted.unsqueeze(-1)).to(dout.dtype)

        def row_dots(dout, y, inv, tokens: int, k: int):  # ... and w.r.t. the routing weights
            return (y.index_select(0, inv).view(tokens, k, -1).float() * dout.view(tokens, 1, -1).float()).sum(-1)

        self.swiglu = wrap(swiglu)
        self.gather_sum, self.gather_weighted_sum = wrap(gather_sum), wrap(gather_weighted_sum)
        self.scaled_rows, self.row_dots = wrap(scaled_rows), wrap(row_dots)
        kernels = self

        class Permute(torch.autograd.Function):
            """x (T, d) -> rows sorted by expert (T*k, d): row p is token src[p]."""

            @staticmethod
            def forward(ctx, x, src, inv, k):
                ctx.save_for_backward(inv)
                ctx.k = k
                return x.index_select(0, src)

            @staticmethod
            def backward(ctx, g):
                (inv,) = ctx.saved_tensors
                return kernels.gather_sum(g, inv, g.shape[0] // ctx.k, ctx.k), None, None, None

        class Unpermute(torch.autograd.Function):
            """Expert outputs y (T*k, d, sorted) and routing weights w (T, k) -> sum_j w[t, j] y[inv[t*k+j]]."""

            @staticmethod
            def forward(ctx, y, w, order, inv, src, k):
                ctx.save_for_backward(y, w, order, inv, src)
                ctx.k = k
                return kernels.gather_weighted_sum(y, inv, w, w.shape[0], k)

            @staticmethod
            def backward(ctx, dout):
                y, w, order, inv, src = ctx.saved_tensors
                w_sorted = w.reshape(-1).index_select(0, order)
                dy = kernels.scaled_rows(dout, src, w_sorted)
                dw = kernels.row_dots(dout, y, inv, w.shape[0], ctx.k).to(w.dtype)
                return dy, dw, None, None, None, None

        self.permute, self.unpermute = Permute.apply, Unpermute.apply


def make_layer(torch, case: Case, score: str, grouped, device=None, fused: FusedKernels | None = None):
    """The layer as a function of (x, router weight, routing bias, w1 (E, 2f, d), w2 (E, d, f)).
    ``fused=None``: plain eager PyTorch (unfused SiLU and multiply, a strided gate read, atomic
    ``index_add`` to unpermute); else the fused kernels of ``FusedKernels``."""
    F = torch.nn.functional
    k = case.top_k
    experts = torch.arange(case.experts, device=device)  # made once: a copy per call would sync
    slots = torch.arange(case.tokens * k, device=device)

    def layer(x, w_router, route_bias, w1, w2):
        logits = F.linear(x, w_router).float() + route_bias
        probs = logits.softmax(-1) if score == "softmax" else logits.sigmoid()
        weights, idx = probs.topk(k, dim=-1)
        if score == "sigmoid":
            weights = weights / weights.sum(-1, keepdim=True)
        sorted_ids, order = idx.reshape(-1).sort(stable=True)
        offs = torch.searchsorted(sorted_ids, experts, right=True).to(torch.int32)  # no host sync
        src = order // k  # the token of each permuted row
        if fused is not None:
            inv = torch.empty_like(order).scatter_(0, order, slots[:order.numel()])  # sorted row of each slot
            xs = fused.permute(x, src, inv, k)
            y = grouped(fused.swiglu(grouped(xs, w1, offs)), w2, offs)
            return fused.unpermute(y, weights, order, inv, src, k)
        xs = x.index_select(0, src)
        gate, up = grouped(xs, w1, offs).chunk(2, dim=-1)
        y = grouped(F.silu(gate) * up, w2, offs)
        y = y * weights.reshape(-1).index_select(0, order).unsqueeze(-1).to(y.dtype)
        return torch.zeros_like(x).index_add(0, src, y)

    return layer


def _sets(bench: Bench, case: Case, assign: np.ndarray) -> list:
    torch = bench.torch
    T, d, E = case.tokens, case.hidden, case.experts
    bias = torch.zeros(T, E, dtype=torch.float32)
    bias.scatter_(1, torch.as_tensor(assign), ROUTE_BIAS)
    bias = bias.to(bench.device)
    n = bench.n_sets(T * d * 2 * 2 + T * E * 4)
    return [(bench.randn(T, d).requires_grad_(True), bench.randn(T, d), bias.clone()) for _ in range(n)]


def kernel_trace(torch, fn) -> list[dict]:
    """The GPU kernels (and copies) of one call of ``fn``, in launch order, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if str(getattr(e, "device_type", "")).endswith("CUDA")]
    events.sort(key=lambda e: e.time_range.start)
    t0 = events[0].time_range.start if events else 0
    return [{"kernel": e.name, "start_us": float(e.time_range.start - t0), "duration_us": float(e.time_range.elapsed_us())}
            for e in events]


def measure(bench: Bench, case: Case, hist: np.ndarray, assign: np.ndarray, score: str,
            warmup: int, repeats: int, impl: str = "auto", kernels: bool = False,
            fused: FusedKernels | None = None, preheat_s: float = 0.0) -> dict:
    """Median seconds of the forward and of forward + backward, the grouped kernel used, and (with
    ``kernels``) the kernel trace of one forward + backward."""
    torch = bench.torch
    d, E, f = case.hidden, case.experts, case.expert_ffn
    w_router = (bench.randn(E, d) / math.sqrt(d)).requires_grad_(True)
    w1 = (bench.randn(E, 2 * f, d) / math.sqrt(d)).requires_grad_(True)
    w2 = (bench.randn(E, d, f) / math.sqrt(f)).requires_grad_(True)
    sets = _sets(bench, case, assign)
    params = (w_router, w1, w2)

    def fwd_bwd(layer, s):
        out = layer(s[0], w_router, s[2], w1, w2)
        torch.autograd.grad(out, (s[0], *params), s[1])

    layer, used, notes = None, None, []
    for name, grouped in _grouped_fns(torch, hist, impl).items():
        candidate = make_layer(torch, case, score, grouped, bench.device, fused)
        try:
            fwd_bwd(candidate, sets[0])
            bench.sync()
        except Exception as exc:  # noqa: BLE001 - not available here: try the next kernel
            notes.append(f"{name} failed: {str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}")
            continue
        layer, used = candidate, name
        break
    if layer is None:
        raise RuntimeError("; ".join(notes) or f"no grouped kernel for --impl {impl} in torch {torch.__version__}")
    with torch.no_grad():  # the draw is the case's: the router picked exactly the chosen experts
        got = layer(sets[0][0], w_router, sets[0][2], w1, w2)
        del got
        idx = (torch.nn.functional.linear(sets[0][0], w_router).float() + sets[0][2]).topk(case.top_k, -1).indices
        counts = np.bincount(idx.reshape(-1).cpu().numpy(), minlength=E)
    if not np.array_equal(counts, hist):
        raise RuntimeError(f"router picked {counts.tolist()}, not the case's histogram {hist.tolist()}")

    def forward(s):
        with torch.no_grad():
            layer(s[0], w_router, s[2], w1, w2)

    # Sustained load first (--preheat): a training step runs at the GPU's power-capped clock, not
    # at the burst clock a cool GPU starts with (docs/calibration.md, "Sustained clocks").
    deadline, i = time.perf_counter() + preheat_s, 0
    while time.perf_counter() < deadline:
        fwd_bwd(layer, sets[i % len(sets)])
        i += 1
        if i % 4 == 0:
            bench.sync()

    fwd = bench.time(forward, sets, warmup, repeats)
    both = bench.time(lambda s: fwd_bwd(layer, s), sets, warmup, repeats)
    trace = kernel_trace(torch, lambda: fwd_bwd(layer, sets[0])) if kernels and bench.cuda else []
    return {"fwd_s": float(np.median(fwd)), "total_s": float(np.median(both)),
            "total_p10_s": float(np.percentile(both, 10)), "total_p90_s": float(np.percentile(both, 90)),
            "impl": used + (f" ({'; '.join(notes)})" if notes else ""), "trace": trace}


# ------------------------------------------------------------------------------------------- run


def _gpu_name(bench: Bench, gpu: str | None) -> str:
    if gpu:
        return gpu
    if not bench.cuda:
        return "H100-SXM"
    from simmoe.cli.calibrate import guess_gpu

    name = guess_gpu(bench.torch.cuda.get_device_name(bench.device))
    if not name:
        raise SystemExit(f"cannot tell simmoe's name of {bench.torch.cuda.get_device_name(bench.device)!r}: "
                         "pass --gpu (a name in simmoe/data/hardware.yaml, e.g. H100-SXM)")
    return name


def run(args: argparse.Namespace) -> list[dict]:
    bench = open_bench(args.device)
    torch = bench.torch
    threads = torch.get_num_threads()
    if not bench.cuda:
        torch.set_num_threads(1)  # as simmoe calibrate: a shared CPU's second thread adds noise
    gpu = _gpu_name(bench, args.gpu)
    model = load_compute_model(gpu, args.profile, dtypes=("bf16",), clocks=args.clocks)
    warmup = args.warmup if args.warmup is not None else (2 if not bench.cuda else 3 if args.quick else 5)
    repeats = args.repeats if args.repeats is not None else (5 if not bench.cuda else 10 if args.quick else 20)
    fused = FusedKernels(torch, compile=bench.cuda) if args.layer == "fused" else None
    rows, kernel_rows = [], []
    try:
        cases = [parse_case(c) for c in args.case] if args.case else \
            grid(args.device, args.quick, args.tokens, args.expert_gib * 2**30)
        for case in cases:
            torch.manual_seed(args.seed)
            hist = routing_histogram(case.experts, case.tokens, case.top_k, case.routing)
            assign = assignment(hist, case.tokens, case.top_k, np.random.default_rng(args.seed))
            pred = predict(case, hist, model)
            row = {"case": case.label, **dataclasses.asdict(case),
                   "load_max_over_mean": float(hist.max() / hist.mean())}
            try:
                if bench.cuda:
                    free, _ = torch.cuda.mem_get_info(bench.device)
                    bench = dataclasses.replace(bench, free_bytes=int(free))
                got = measure(bench, case, hist, assign, args.score, warmup, repeats, args.impl,
                              kernels=bool(args.kernels), fused=fused, preheat_s=args.preheat)
            except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                if bench.cuda and isinstance(exc, torch.cuda.OutOfMemoryError):
                    torch.cuda.empty_cache()
                print(f"skipped {case.label}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", file=sys.stderr)
                continue
            row.update(layer=args.layer, impl=got["impl"], measured_fwd_ms=got["fwd_s"] * 1e3,
                       measured_ms=got["total_s"] * 1e3,
                       measured_p10_ms=got["total_p10_s"] * 1e3, measured_p90_ms=got["total_p90_s"] * 1e3,
                       device=args.device, gpu=gpu, torch=torch.__version__, score=args.score,
                       preheat_s=args.preheat)
            row.update(prediction_columns(pred, row["measured_ms"], model))
            rows.append(row)
            print(f"{case.label}: measured {row['measured_ms']:.3f} ms, simmoe {row['simmoe_ms']:.3f} ms",
                  file=sys.stderr, flush=True)
            kernel_rows += [{"case": case.label, "order": i, **k} for i, k in enumerate(got["trace"])]
            if args.out:  # rewritten after every case: a run cut short keeps what it measured
                write(rows, args.out)
            if args.kernels and kernel_rows:
                write(kernel_rows, args.kernels)
            if bench.cuda:
                torch.cuda.empty_cache()
    finally:
        torch.set_num_threads(threads)
    return rows


def prediction_columns(pred: dict, measured_ms: float, model: ComputeModel) -> dict:
    return {"simmoe_fwd_ms": pred["fwd_s"] * 1e3, "simmoe_ms": pred["total_s"] * 1e3,
            "error_pct": 100.0 * (pred["total_s"] * 1e3 - measured_ms) / measured_ms,
            "compute_model": model.identifier}


def replay(path: str, gpu: str, profile: str | None, clocks: str = "sustained") -> list[dict]:
    """Rows measured earlier (``--out``), predicted again with another compute model: a GPU run
    once, any profile or roofline afterwards, on any machine."""
    rows = read_rows(path)
    model = load_compute_model(gpu, profile, dtypes=("bf16",), clocks=clocks)
    for row in rows:
        case = Case(*(row[f.name] for f in dataclasses.fields(Case)))
        hist = routing_histogram(case.experts, case.tokens, case.top_k, case.routing)
        row.update(prediction_columns(predict(case, hist, model), row["measured_ms"], model))
    return rows


def read_rows(path: str) -> list[dict]:
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    import pyarrow.csv as pacsv

    return pacsv.read_csv(path).to_pylist()


def format_table(rows: list[dict]) -> str:
    head = ("case", "ffn", "max/mean", "measured ms", "simmoe ms", "error %", "fwd meas ms", "fwd simmoe ms",
            "layer: grouped kernel")
    body = [(r["case"], str(r["expert_ffn"]), f"{r['load_max_over_mean']:.2f}", f"{r['measured_ms']:.3f}",
             f"{r['simmoe_ms']:.3f}", f"{r['error_pct']:+.1f}", f"{r['measured_fwd_ms']:.3f}",
             f"{r['simmoe_fwd_ms']:.3f}", f"{r.get('layer') or 'eager'}: {r['impl']}") for r in rows]
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) if i in (0, 8) else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def write(rows: list[dict], path: str) -> None:
    """Atomically: a temporary file beside ``path``, then renamed over it."""
    import os

    import pyarrow as pa

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    tmp = f"{path}.tmp"
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        pq.write_table(table, tmp)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, tmp)
    os.replace(tmp, path)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda if PyTorch sees one")
    ap.add_argument("--gpu", help="simmoe's GPU name (simmoe/data/hardware.yaml); guessed on CUDA, H100-SXM on CPU")
    ap.add_argument("--profile", help="calibration profile (simmoe calibrate); default: the roofline")
    ap.add_argument("--quick", action="store_true", help="4 cases (hidden 4096, 8/64 experts, top-2)")
    ap.add_argument("--case", action="append", metavar="SPEC",
                    help="time this shape instead of the grid (repeatable): hidden=H,experts=E,top_k=K,"
                    "tokens=T,expert_ffn=F[,routing=balanced|zipf:S]")
    ap.add_argument("--tokens", type=int, help="tokens per layer call (default 8192; CPU 128)")
    ap.add_argument("--score", choices=("softmax", "sigmoid"), default="softmax")
    ap.add_argument("--impl", choices=("auto", "grouped_mm", "loop"), default="auto",
                    help="grouped expert kernel: auto = torch._grouped_mm if it runs, else a loop of matmuls")
    ap.add_argument("--expert-gib", type=float, default=6.0, help="budget for all experts' weights (sets expert_ffn)")
    ap.add_argument("--preheat", type=float, default=None, metavar="SECONDS",
                    help="run the layer back to back this long before timing each case, so it is timed "
                    "at sustained (power-capped) clocks, as a training run is (default 3 on CUDA, 0 on CPU)")
    ap.add_argument("--clocks", choices=("sustained", "burst"), default="sustained",
                    help="a profile's kernel times at sustained clocks (its measured sustained/burst GEMM "
                    "ratio; pair with --preheat) or as measured (burst)")
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layer", choices=("fused", "eager"), default="fused",
                    help="fused: SwiGLU and gather-based permute/unpermute as compiled kernels (what "
                    "Megatron-Core with TE runs); eager: plain PyTorch ops (unfused, atomic index_add)")
    ap.add_argument("--replay", metavar="ROWS", help="measure nothing: predict the rows of an earlier --out "
                    "again with --gpu / --profile")
    ap.add_argument("--out", help="write the rows: .csv or .parquet")
    ap.add_argument("--kernels", help="also write each case's kernel trace of one forward + backward "
                    "(torch.profiler; CUDA only): .csv or .parquet")
    return ap


def main(argv: list[str] | None = None) -> list[dict]:
    args = parser().parse_args(argv)
    if args.replay:
        rows = replay(args.replay, args.gpu or read_rows(args.replay)[0]["gpu"], args.profile, args.clocks)
        return _report(rows, args)
    if args.device is None:
        args.device = "cuda" if import_torch().cuda.is_available() else "cpu"
    if args.preheat is None:
        args.preheat = 3.0 if args.device == "cuda" else 0.0
    if args.device == "cpu":
        print("NOTE: --device cpu: tiny shapes, CPU times. They are NOT comparable to simmoe's GPU roofline / "
              "profile prediction; this run only exercises the script.", file=sys.stderr)
    return _report(run(args), args)


def _report(rows: list[dict], args: argparse.Namespace) -> list[dict]:
    print(format_table(rows))
    if rows:
        errors = np.abs([r["error_pct"] for r in rows])
        print(f"\n{len(rows)} cases on {rows[0]['device']} vs {rows[0]['compute_model']}: "
              f"|error| median {np.median(errors):.1f}%, max {errors.max():.1f}%"
              + (" (CPU times: NOT comparable to the GPU prediction)" if rows[0]["device"] == "cpu" else ""))
    if args.out:
        write(rows, args.out)
        print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
