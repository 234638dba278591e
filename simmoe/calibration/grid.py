"""The shapes `simmoe calibrate` measures (docs/calibration.md, "The grid").

Three grids: ``full`` (a GPU: 87 s on an H100, sustained burn included), ``quick`` (a GPU: a few
shapes per family, 3 s burns) and ``cpu`` (tiny shapes: CPU BF16 matmuls are slow, a CPU run takes seconds). The roofline profile
(``simmoe calibrate --roofline GPU``) uses the ``full`` grid so it lines up with a measured one.

Each axis of a family is a product (the interpolation tables are regular grids in log space);
the sizes are powers of two or four so the log-space spacing is even.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simmoe.errors import InputError


@dataclass(frozen=True)
class Grid:
    name: str
    # dense GEMM (m x k) @ (k x n)
    gemm_m: tuple[int, ...]
    gemm_n: tuple[int, ...]
    gemm_k: tuple[int, ...]
    # grouped expert GEMM: balanced products over these axes, plus skewed rows at one (E, n, k)
    grouped_experts: tuple[int, ...]
    grouped_tokens_per_expert: tuple[int, ...]
    grouped_n: tuple[int, ...]
    grouped_k: tuple[int, ...]
    skews: tuple[str, ...]
    skewed_tokens_per_expert: tuple[int, ...]
    # causal self-attention: batch = max(1, attention_tokens // seq_len)
    attention_seq_len: tuple[int, ...]
    attention_head_dim: tuple[int, ...]
    attention_heads: int
    attention_tokens: int
    # memory-bound kernels over (rows x hidden) BF16 activations; permute gathers rows x topk
    memory_rows: tuple[int, ...]
    memory_hidden: int
    memory_topk: int
    # collectives: per-rank message sizes
    collective_bytes: tuple[int, ...]
    warmup: int
    repeats: int
    # seconds of back-to-back 8192^3 GEMMs per dtype after the grid: sustained vs burst rate (0: skip)
    sustained_seconds: float = 0.0


def _pow(base: int, lo: int, hi: int) -> tuple[int, ...]:
    return tuple(base**e for e in range(lo, hi + 1))


FULL = Grid(
    name="full",
    gemm_m=_pow(2, 4, 14),  # 16 .. 16384 tokens
    gemm_n=_pow(2, 10, 14),  # 1024 .. 16384
    gemm_k=_pow(2, 10, 14),
    grouped_experts=(4, 16, 64),
    grouped_tokens_per_expert=_pow(4, 0, 6),  # 1 .. 4096
    grouped_n=(1024, 4096),
    grouped_k=(1024, 4096, 8192),
    skews=("zipf:1.0",),
    skewed_tokens_per_expert=(16, 256, 4096),
    attention_seq_len=_pow(2, 9, 14),  # 512 .. 16384
    attention_head_dim=(64, 128),
    attention_heads=16,
    attention_tokens=16384,
    memory_rows=_pow(4, 2, 8),  # 16 .. 65536 rows of 4096: a copy of up to 1 GiB reaches HBM's rate
    memory_hidden=4096,
    memory_topk=8,
    collective_bytes=_pow(4, 5, 15),  # 1 KiB .. 1 GiB
    warmup=5,
    repeats=20,
    sustained_seconds=15.0,
)

QUICK = Grid(
    name="quick",
    gemm_m=(64, 1024, 8192),
    gemm_n=(1024, 8192),
    gemm_k=(1024, 8192),
    grouped_experts=(16,),
    grouped_tokens_per_expert=(4, 64, 1024),
    grouped_n=(4096,),
    grouped_k=(4096,),
    skews=("zipf:1.0",),
    skewed_tokens_per_expert=(256,),
    attention_seq_len=(1024, 4096),
    attention_head_dim=(128,),
    attention_heads=16,
    attention_tokens=16384,
    memory_rows=(64, 4096, 16384),
    memory_hidden=4096,
    memory_topk=8,
    collective_bytes=(2**10, 2**20, 2**28),
    warmup=3,
    repeats=10,
    sustained_seconds=3.0,
)

CPU = Grid(
    name="cpu",
    gemm_m=(4, 16, 64),
    gemm_n=(16, 64),
    gemm_k=(16, 64),
    grouped_experts=(2, 4),
    grouped_tokens_per_expert=(1, 4, 16),
    grouped_n=(16,),
    grouped_k=(32,),
    skews=("zipf:1.0",),
    skewed_tokens_per_expert=(16,),
    attention_seq_len=(32, 64),
    attention_head_dim=(16,),
    attention_heads=2,
    attention_tokens=64,
    memory_rows=(4, 64),
    memory_hidden=64,
    memory_topk=2,
    collective_bytes=(2**10, 2**14),
    warmup=1,
    repeats=5,
)

GRIDS = {g.name: g for g in (FULL, QUICK, CPU)}


def parse_skew(label: str, *, file: str | None = None, field: str = "skew") -> float | None:
    """``"balanced"`` -> None, ``"zipf:S"`` -> S (the Zipf exponent, > 0)."""
    if label == "balanced":
        return None
    if isinstance(label, str) and label.startswith("zipf:"):
        try:
            exponent = float(label[len("zipf:"):])
        except ValueError:
            exponent = -1.0
        if exponent > 0:
            return exponent
    raise InputError("unknown skew label", file=file, field=field, value=label,
                     allowed="balanced, or zipf:S with S > 0 (e.g. zipf:1.0)")


def expert_histogram(experts: int, tokens_per_expert: float, skew: str = "balanced") -> np.ndarray:
    """Tokens per expert for one grouped kernel: ``experts * tokens_per_expert`` tokens in all,
    split evenly (``balanced``) or in proportion to ``1 / rank**S`` (``zipf:S``), rounded by
    largest remainder so the total is exact. Deterministic: a loader regenerates the histogram of a
    profile row from (experts, tokens_per_expert, skew)."""
    total = int(round(experts * tokens_per_expert))
    exponent = parse_skew(skew)
    weights = np.ones(experts) if exponent is None else 1.0 / np.arange(1, experts + 1) ** exponent
    share = total * weights / weights.sum()
    counts = np.floor(share)
    short = total - int(counts.sum())
    counts[np.argsort(-(share - counts), kind="stable")[:short]] += 1
    return counts.astype(np.int64)


BF16_BYTES = 2


def memory_bytes(op: str, rows: int, hidden: int, topk: int) -> float:
    """Bytes read + written in HBM by one memory-bound kernel over BF16 (rows x hidden) activations;
    permute gathers rows*topk rows (int64 indices), unpermute scatter-adds them back."""
    act = BF16_BYTES * rows * hidden
    if op == "copy":
        return 2.0 * act
    if op == "rmsnorm":
        return 2.0 * act + BF16_BYTES * hidden  # x in, y out, weight
    if op == "layernorm":
        return 2.0 * act + 2 * BF16_BYTES * hidden  # x in, y out, weight and bias
    if op == "permute":
        return 2.0 * act * topk + 8.0 * rows * topk  # gathered rows in and out, indices
    if op == "unpermute":
        return act * topk + 2.0 * act + 8.0 * rows * topk  # expert outputs in, tokens read + written
    raise ValueError(op)


def grid_cases(grid: Grid, dtypes: tuple[str, ...]) -> list[dict]:
    """The compute shapes of ``grid`` as profile rows without times, in the order they are run
    (collectives are added by the harness, which knows the number of GPUs)."""
    from simmoe.compute.ops import attention_flops, gemm_flops

    cases: list[dict] = []
    for dtype in dtypes:
        for m in grid.gemm_m:
            for n in grid.gemm_n:
                for k in grid.gemm_k:
                    cases.append({"op": "gemm", "dtype": dtype, "m": m, "n": n, "k": k,
                                  "flops": float(gemm_flops(m, n, k))})
        for op in ("grouped_gemm", "grouped_gemm_wgrad"):
            shapes = [(e, t, "balanced", n, k) for e in grid.grouped_experts for t in grid.grouped_tokens_per_expert
                      for n in grid.grouped_n for k in grid.grouped_k]
            middle = grid.grouped_experts[len(grid.grouped_experts) // 2]
            shapes += [(middle, t, skew, grid.grouped_n[-1], grid.grouped_k[-1]) for skew in grid.skews
                       for t in grid.skewed_tokens_per_expert]
            for e, t, skew, n, k in shapes:
                cases.append({"op": op, "dtype": dtype, "experts": e, "tokens_per_expert": float(t), "skew": skew,
                              "n": n, "k": k, "flops": float(gemm_flops(e * t, n, k))})
    for op in ("attention_fwd", "attention_fwd_bwd"):
        for s in grid.attention_seq_len:
            for d in grid.attention_head_dim:
                b = max(1, grid.attention_tokens // s)
                flops = float(attention_flops(b, s, grid.attention_heads, d, d, True, False))
                if op == "attention_fwd_bwd":
                    flops += float(attention_flops(b, s, grid.attention_heads, d, d, True, True))
                # Attention runs in BF16 (FP8 training keeps it there, as DeepSeek-V3 does).
                cases.append({"op": op, "dtype": "bf16", "batch": b, "seq_len": s, "heads": grid.attention_heads,
                              "head_dim": d, "causal": True, "flops": flops})
    for op in ("copy", "rmsnorm", "layernorm", "permute", "unpermute"):
        for rows in grid.memory_rows:
            topk = grid.memory_topk if op in ("permute", "unpermute") else None
            cases.append({"op": op, "dtype": "bf16", "m": rows, "n": grid.memory_hidden, "k": topk,
                          "bytes": memory_bytes(op, rows, grid.memory_hidden, topk or 1)})
    return cases
