"""Model -> ops: what ONE rank of one virtual pipeline stage does for ONE micro-batch.

``build_stage_program(scenario, v)`` lists the forward and the backward ops of virtual stage ``v``
(docs/workload.md has the table of ops per block); ``build_step_ops(scenario, v)`` lists what that
rank does once per optimizer step (gradient reduction, optimizer update, parameter all-gather).

Dependencies (the ``after`` field of simmoe.workload.ops): an op waits for the op before it in the
list, unless ``after`` is non-empty, in which case it waits for exactly the ops named there. Side
branches (shared experts overlapping the dispatch, ZeRO-3 parameter prefetch, ZeRO-2/3 gradient
reduce-scatters) use ``after``; the op that joins a branch names both parents.

Token counts per rank and micro-batch: ``tokens = micro_batch * seq_len / cp`` rows enter every
tensor-parallel GEMM; norms, residual adds and pipeline sends see ``tokens / tp`` with sequence
parallelism. An MoE layer routes ``moe_tokens = ceil(tokens / tp)`` per rank: with SP these are the
rank's own rows; without SP (tp > 1) each TP rank routes its 1/tp slice of the replicated rows and
an all-gather over TP rebuilds them after the combine (DeepSpeed-MoE's trick; Megatron-Core
requires SP instead).

FP8 (training.precision = fp8) follows DeepSeek-V3: the GEMMs of linear layers (attention
projections, dense FFN, shared and routed experts, the MTP projection; fprop, dgrad and wgrad) run
in FP8; core attention, router, embedding, LM head, norms and the optimizer stay in BF16/FP32.
Every FP8 GEMM input is quantized by its own memory-bound kernel (``*.quant`` forward: read BF16,
write FP8 with 1x128 scales; ``*.bwd_quant`` backward: the output gradient quantized twice, 1x128
for dgrad and 128x1 for wgrad, and the saved FP8 input re-quantized transposed for wgrad), as
DeepSeek-V3 describes its own kernels (report section 3.5.2: activations are read from HBM for
quantization and the FP8 values written back, "only to be read again for MMA"; in the backward
"the matrix needs to be read out, dequantized, transposed, re-quantized into 128x1 tiles, and
stored in HBM"). Tokens dispatched in FP8 are quantized once before the dispatch (``moe.quant``)
and enter the routed experts' first GEMM already in FP8.

MXFP8 (training.precision = mxfp8) runs the same GEMMs in FP8 with one E8M0 scale per 32
elements, which Blackwell's tensor cores apply themselves, as Transformer Engine's
MXFP8BlockScaling recipe does: its quantization kernel writes a row-wise and a column-wise copy of
each GEMM input in the forward (the column-wise one is what wgrad reads) and of each output
gradient in the backward, and nothing is re-quantized (``MX_QUANT``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from simmoe.errors import InputError
from simmoe.dtypes import (
    BF16_BYTES_PER_ELEMENT,
    FP8_BYTES_PER_ELEMENT,
    MXFP8_BYTES_PER_ELEMENT,
    FP8_GEMM_DTYPES,
)
from simmoe.workload.ops import AttentionOp, CollectiveOp, ExpertGemmOp, GemmOp, MemoryOp, Op
from simmoe.workload.params import (
    block_local_params,
    stage_blocks,
    stage_has_main_head,
    stage_local_params,
)
from simmoe.workload.shapes import attention_linears, block_is_moe, head_dims, kv_heads, shared_expert_ffn

BF16 = 2  # bytes per activation element
FP32 = 4
# Megatron keeps main gradients in FP32 and reduces them in FP32 (its default without
# --grad-reduce-in-bf16; DeepSeek-V3 also keeps gradients in FP32).
GRAD_BYTES = 4


@dataclass(frozen=True)
class QuantBytes:
    """Bytes per element of the quantized tensor moved by the kernels that quantize FP8 GEMM
    inputs (module docstring), one set per recipe."""

    fwd: float  # forward, GEMM input: read BF16, write the FP8 copies the step needs
    grad: float  # backward, output gradient: read BF16, write the dgrad and the wgrad copies
    requant_input: float  # backward, saved FP8 input: read it, write it transposed for wgrad


# DeepSeek-V3's fine-grained FP8 (training.precision fp8): forward writes one 1x128-scaled copy;
# the output gradient gets a 1x128 and a 128x1 copy; the saved input is re-quantized transposed.
FINE_GRAINED_QUANT = QuantBytes(fwd=BF16_BYTES_PER_ELEMENT + FP8_BYTES_PER_ELEMENT,
                                grad=BF16_BYTES_PER_ELEMENT + 2 * FP8_BYTES_PER_ELEMENT,
                                requant_input=2 * FP8_BYTES_PER_ELEMENT)
# MXFP8 (training.precision mxfp8), as Transformer Engine's MXFP8BlockScaling recipe quantizes:
# one kernel writes a row-wise and a column-wise copy (scales along each GEMM's reduction
# dimension) of the input in the forward, whose column-wise copy wgrad reads, and of the output
# gradient in the backward; nothing is re-quantized.
MX_QUANT = QuantBytes(fwd=BF16_BYTES_PER_ELEMENT + 2 * MXFP8_BYTES_PER_ELEMENT,
                      grad=BF16_BYTES_PER_ELEMENT + 2 * MXFP8_BYTES_PER_ELEMENT,
                      requant_input=0.0)

# Roles of forward ops, used to pick what selective recompute re-runs.
SELECTIVE_ROLES = frozenset({"norm", "mla_up", "act"})


@dataclass(frozen=True)
class StageProgram:
    virtual_stage: int
    blocks: tuple[int, ...]  # block indices; >= model.layers are MTP modules
    tokens: int  # rows per rank per micro-batch in TP GEMMs: micro_batch * seq_len / cp
    moe_tokens: int  # tokens each rank routes per MoE layer (tokens_per_rank of the routing draw)
    forward: tuple[Op, ...]
    backward: tuple[Op, ...]  # recompute ops (phase "recompute") precede each block's backward


# ----------------------------------------------------------------------------------- context


class _Ctx:
    """Everything the builder needs from the scenario, as plain numbers."""

    def __init__(self, scenario: Any) -> None:
        self.s = scenario
        m, par, tr = scenario.model, scenario.parallelism, scenario.training
        self.m = m
        self.d = m.hidden
        self.tp, self.cp, self.ep, self.etp = par.tp, par.cp, par.ep, par.expert_tp
        self.sp = par.sequence_parallel and par.tp > 1
        self.tp_overlap = self.sp and par.tp_comm_overlap
        self.mb, self.seq = tr.micro_batch, tr.seq_len
        self.T = tr.micro_batch * tr.seq_len // par.cp
        self.Tsp = self.T // par.tp if self.sp else self.T
        self.Tm = -(-self.T // par.tp)
        # The linear layers' GEMM dtype: bf16, fp8 or mxfp8 (its own main-loop rate: docs/compute.md).
        self.lin = tr.precision
        self.quant = MX_QUANT if tr.precision == "mxfp8" else FINE_GRAINED_QUANT
        self.recompute = tr.activation_recompute
        self.eager = tr.kernels == "eager"
        # Eager autograd adds each micro-batch's weight gradient into .grad (the first one is
        # stored, not added), in the parameters' dtype.
        micro_batches = scenario.micro_batches_per_step
        self.grad_accum_fraction = (micro_batches - 1) / micro_batches if micro_batches > 1 else 0.0
        self.param_grad_bytes = 4 if tr.optimizer.master_weights_dtype == "fp32" else BF16
        self.zero = tr.zero_stage
        self.dp_cp = par.cp * scenario._dp()
        self.edp = par.edp if m.moe is not None else 1
        self.vocab_local = -(-m.vocab // par.tp)
        if m.moe is not None:
            moe = m.moe
            self.E, self.k = moe.routed_experts, moe.top_k
            self.router_dtype = "bf16" if moe.router_dtype == "bf16" else "fp32"  # fp64 timed as fp32
            self.fe = moe.expert_ffn
            self.fs = shared_expert_ffn(m)
            disp = FP8_BYTES_PER_ELEMENT if scenario.routing.dispatch_dtype == "fp8" else BF16_BYTES_PER_ELEMENT
            self.dispatch_bytes_per_token = self.d * disp
            self.combine_bytes_per_token = self.d * BF16_BYTES_PER_ELEMENT

    def width(self, f: int) -> int:
        """FC1 output width for FFN width f (SwiGLU fuses gate and up)."""
        return 2 * f if self.m.activation == "swiglu" else f

    def act_bytes(self, rows: float, f_local: int, backward: bool) -> float:
        """Elementwise activation: SwiGLU reads gate+up and writes f (bwd: reads gate, up, dout,
        writes dgate, dup); GELU reads and writes f (bwd: reads x, dout, writes dx)."""
        if self.m.activation == "swiglu":
            return rows * f_local * BF16 * (5 if backward else 3)
        return rows * f_local * BF16 * (3 if backward else 2)


# ------------------------------------------------------------------------------- op sequence


class _Seq:
    """Ops of one phase in execution order, with the dependency rule of the module docstring."""

    def __init__(self, phase: str, suffix: str = "", *, quant: QuantBytes) -> None:
        self.phase = phase
        self.suffix = suffix
        self.quant = quant
        self.ops: list[Op] = []
        self.roles: list[str] = []
        self.last_main: str | None = None
        self.prev_main: str | None = None  # the main op before last_main
        # Side ops the first main op after the next GEMM must wait for (an all-gather overlapped
        # with that GEMM): [full name, a GEMM has been listed since].
        self.pending: list[list] = []

    def _n(self, base: str) -> str:
        return base + self.suffix

    def _push(self, op: Op, role: str) -> str:
        if self.phase == "recompute":
            op = replace(op, model_flops=0.0)
        self.ops.append(op)
        self.roles.append(role)
        return op.name

    def main(self, cls: type, base: str, role: str = "", also: tuple[str | None, ...] = (), **fields: Any) -> str:
        extra = tuple(self._n(a) for a in also if a)
        if self.pending:
            extra += tuple(name for name, past_gemm in self.pending if past_gemm)
            self.pending = [p for p in self.pending if not p[1]]
        deps: tuple[str, ...] = ()
        if self.ops and (self.ops[-1].name != self.last_main or extra):
            deps = ((self.last_main,) if self.last_main else ()) + extra
        name = self._push(cls(name=self._n(base), phase=self.phase, after=deps, **fields), role)
        self.prev_main, self.last_main = self.last_main, name
        if cls is GemmOp:
            for p in self.pending:
                p[1] = True
        return base

    def side(self, cls: type, base: str, after: tuple[str | None, ...], role: str = "", **fields: Any) -> str:
        deps = tuple(self._n(a) for a in after if a)
        self._push(cls(name=self._n(base), phase=self.phase, after=deps, **fields), role)
        return base

    def last_main_base(self) -> str | None:
        if self.last_main is None:
            return None
        return self.last_main[: len(self.last_main) - len(self.suffix)] if self.suffix else self.last_main

    # shorthands -------------------------------------------------------------------------------
    def gemm(self, base: str, m: int, n: int, k: int, dtype: str, *, role: str = "", redundancy: int = 1,
             also: tuple[str | None, ...] = (), side_after: tuple[str | None, ...] | None = None,
             quantized_input: bool = False) -> str:
        if dtype in FP8_GEMM_DTYPES and not quantized_input:  # quantize the (m x k) input first (docstring)
            qname = self.mem(f"{base}.quant", m * k * self.quant.fwd, role=role, also=also, side_after=side_after)
            also, side_after = (), (None if side_after is None else (qname,))
        fields = dict(layer=_layer(base), m=int(m), n=int(n), k=int(k), dtype=dtype,
                      model_flops=2.0 * m * n * k / redundancy)
        if side_after is not None:
            return self.side(GemmOp, base, side_after, role, **fields)
        return self.main(GemmOp, base, role, also, **fields)

    def mem(self, base: str, bytes_moved: float, *, role: str = "", also: tuple[str | None, ...] = (),
            side_after: tuple[str | None, ...] | None = None, access: str = "stream") -> str:
        fields = dict(layer=_layer(base), bytes_moved=float(bytes_moved), access=access)
        if side_after is not None:
            return self.side(MemoryOp, base, side_after, role, **fields)
        return self.main(MemoryOp, base, role, also, **fields)

    def coll(self, base: str, group: str, collective: str, *, size_bytes: float = 0.0,
             bytes_per_token: float = 0.0, role: str = "comm", also: tuple[str | None, ...] = (),
             side_after: tuple[str | None, ...] | None = None, holds_sms: bool = True) -> str:
        fields = dict(layer=_layer(base), group=group, collective=collective, size_bytes=float(size_bytes),
                      bytes_per_token=float(bytes_per_token), holds_sms=holds_sms)
        if side_after is not None:
            return self.side(CollectiveOp, base, side_after, role, **fields)
        return self.main(CollectiveOp, base, role, also, **fields)

    def beside(self, base: str, group: str, collective: str, size_bytes: float, start_after: str | None) -> str:
        """A copy-engine collective that starts when op ``start_after`` (a full name) is done and
        runs beside whatever the compute stream does next (TP comm overlap)."""
        op = CollectiveOp(name=self._n(base), phase=self.phase, layer=_layer(base),
                          after=(start_after,) if start_after else (), group=group, collective=collective,
                          size_bytes=float(size_bytes), holds_sms=False)
        return self._push(op, "comm")


def _layer(base: str) -> int | None:
    if base.startswith("L"):
        head = base[1:].split(".", 1)[0]
        if head.isdigit():
            return int(head)
    return None


def _gemm_bwd(q: _Seq, base: str, m: int, n: int, k: int, dtype: str, *, redundancy: int = 1,
              also: tuple[str | None, ...] = (), side_after: tuple[str | None, ...] | None = None) -> str:
    """Backward of a forward (m x k) @ (k x n): ONE op with the forward's shapes standing for dgrad
    + wgrad (2x the forward FLOPs; the engine times it with simmoe.compute.gemm_backward_s)."""
    if dtype in FP8_GEMM_DTYPES:  # output gradient (m x n) and saved input (m x k) re-quantized (docstring)
        qname = q.mem(f"{base}.bwd_quant", m * n * q.quant.grad + m * k * q.quant.requant_input,
                      also=also, side_after=side_after)
        also, side_after = (), (None if side_after is None else (qname,))
    fields = dict(layer=_layer(base), m=int(m), n=int(n), k=int(k), dtype=dtype,
                  model_flops=2.0 * 2.0 * m * n * k / redundancy)
    if side_after is not None:
        return q.side(GemmOp, f"{base}.bwd", side_after, **fields)
    return q.main(GemmOp, f"{base}.bwd", also=also, **fields)


def _tp_out(c: _Ctx, q: _Seq, base: str, overlap: bool = False, **kw: Any) -> str | None:
    """Collective after a row-parallel layer: reduce-scatter (SP) or all-reduce; none at tp=1.
    The backward of an SP all-gather is this reduce-scatter, and the backward of a column-parallel
    layer's input (Megatron's "f") is this all-reduce.

    ``overlap`` (a transformer layer's linear, under parallelism.tp_comm_overlap): the GEMM just
    listed is computed in tp chunks and each chunk's share is reduce-scattered while the next one
    computes (TE userbuffers' pipelined / ring-exchange reduce-scatter): (tp-1)/tp of the bytes run
    beside the GEMM on copy engines, the last chunk's 1/tp after it."""
    if c.tp == 1:
        return None
    kind = "reduce_scatter" if c.sp else "allreduce"
    size = c.T * c.d * BF16
    if overlap and c.tp_overlap:
        q.beside(f"{base}.overlap", "tp", kind, size * (c.tp - 1) / c.tp, q.prev_main)
        return q.coll(base, "tp", kind, size_bytes=size / c.tp, also=(f"{base}.overlap",), holds_sms=False, **kw)
    return q.coll(base, "tp", kind, size_bytes=size, **kw)


def _tp_in(c: _Ctx, q: _Seq, base: str, overlap: bool = False, **kw: Any) -> str | None:
    """All-gather before a column-parallel layer under SP (its backward: after a row-parallel one).

    ``overlap`` (under parallelism.tp_comm_overlap): TE userbuffers' ring exchange, the GEMM starts
    on the rank's own shard while the others arrive: the all-gather runs beside the next GEMM on
    copy engines, and the op after that GEMM waits for it."""
    if not c.sp:
        return None
    if overlap and c.tp_overlap:
        name = q.beside(base, "tp", "all_gather", c.T * c.d * BF16, q.last_main)
        q.pending.append([name, False])
        return name
    return q.coll(base, "tp", "all_gather", size_bytes=c.T * c.d * BF16, **kw)


# ------------------------------------------------------------------------------ attention


def _mla(c: _Ctx) -> Any:
    return c.m.attention if c.m.attention.type == "mla" else None


def _attention_core_fields(c: _Ctx, backward: bool) -> dict:
    h = c.m.attention.heads // c.tp
    dqk, dv = head_dims(c.m)
    fwd = c.T * h * (c.seq + 1) * dqk + c.T * h * (c.seq + 1) * dv
    # With CP, load-balanced ring attention gives each rank 1/cp of the causal work: the same
    # FLOPs as cp sequences of seq_len/cp tokens each.
    return dict(batch=c.mb * c.cp, seq_len=c.seq // c.cp, heads=h, head_dim_qk=dqk, head_dim_v=dv,
                causal=True, dtype="bf16", model_flops=float(fwd * (2 if backward else 1)))


def _cp_kv_bytes(c: _Ctx) -> float:
    """K and V of the whole sequence for this rank's heads (what ring attention circulates)."""
    dqk, dv = head_dims(c.m)
    heads = c.m.attention.heads if _mla(c) else kv_heads(c.m)
    return c.mb * c.seq * (heads // c.tp) * (dqk + dv) * BF16


EAGER_ROPE_PASSES = 9  # rotate-half in plain ops, below
EAGER_ROPE_STRIDED_PASSES = 4  # of which the four multiplies of half-rows (kernel class "strided")
EAGER_ROPE_BWD_PASSES = 10  # its backward: the same plus the rotation's negation
EAGER_ROPE_BWD_STRIDED_PASSES = 5  # of which the four multiplies and the negation
FUSED_ROPE_PASSES = 2  # one kernel: read and write the rotated part once


def _rope_passes(c: _Ctx) -> int:
    """Bytes moved by RoPE per byte of the rotated tensor S. Fused (TE's kernel): read S, write S.
    Eager (x1, x2 = chunk(x); cat(x1*cos - x2*sin, x2*cos + x1*sin)): four multiplies read and
    write S/2 each (4S), the subtract and add read S and write S/2 each (3S), cat reads and writes
    S (2S): 9S. The multiplies read half-rows (a slice of the last dimension): PyTorch's strided
    kernel class. The backward adds the rotation's negation (S, strided): 10S. DeepSeek's
    complex-number form moves about as much (10S) in contiguous kernels."""
    return EAGER_ROPE_PASSES if c.eager else FUSED_ROPE_PASSES


def _gqa_qk_bytes(c: _Ctx) -> float:
    """Bytes of this rank's Q and K (what RoPE and QK-norm touch) for MHA/GQA."""
    dh, _ = head_dims(c.m)
    heads_q = c.m.attention.heads // c.tp
    heads_kv = -(-kv_heads(c.m) // c.tp)
    return c.T * (heads_q + heads_kv) * dh * BF16


def _mla_sizes(c: _Ctx, mla: Any) -> tuple[float, float, float, float]:
    """MLA bytes on this rank: (rope part of Q and the shared K rope, full Q, full K, K nope + V)."""
    heads = c.m.attention.heads // c.tp
    dqk = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    rope = c.T * (heads + 1) * mla.qk_rope_head_dim * BF16
    full = c.T * heads * dqk * BF16
    kv = c.T * heads * (mla.qk_nope_head_dim + mla.v_head_dim) * BF16
    return rope, full, full, kv


def _gqa_rope(c: _Ctx, q: _Seq, name: str, qk: float, role: str = "", backward: bool = False) -> None:
    """RoPE of Q and K (``qk`` bytes), forward or backward. Eager: the multiplies of half-rows
    (and the backward's negation) as strided kernels, then the subtract, add and cat, which
    stream (the cat's inputs are contiguous: PyTorch's vectorized cat)."""
    if not c.eager:
        q.mem(name, qk * _rope_passes(c), role=role)
        return
    total, strided = ((EAGER_ROPE_BWD_PASSES, EAGER_ROPE_BWD_STRIDED_PASSES) if backward
                      else (EAGER_ROPE_PASSES, EAGER_ROPE_STRIDED_PASSES))
    q.mem(name, qk * strided, role=role, access="strided")
    q.mem(f"{name}_sum_cat", qk * (total - strided), role=role)


def _qk_prep_fwd(c: _Ctx, q: _Seq, P: str, mla: Any) -> None:
    """QK-norm and RoPE between the projections and core attention. MLA: fused, one kernel
    rotates the rope parts and writes whole Q and K (TE's MLA RoPE); eager, RoPE on the rope
    parts, then torch.cat assembles Q and K (the shared rope K expanded over the heads)."""
    if mla is None:
        qk = _gqa_qk_bytes(c)
        if getattr(c.m.attention, "qk_norm", False):
            q.mem(f"{P}.attn.qk_norm", qk * 2, role="norm")
        _gqa_rope(c, q, f"{P}.attn.rope", qk, role="rope")
        return
    rope, full_q, full_k, _ = _mla_sizes(c, mla)
    if c.eager:
        q.mem(f"{P}.attn.rope", rope * EAGER_ROPE_PASSES, role="rope")
        q.mem(f"{P}.attn.qk_cat", 2 * (full_q + full_k), role="rope", access="last_dim_cat")
    else:
        q.mem(f"{P}.attn.rope", 2 * (full_q + full_k), role="rope")


def _qk_prep_bwd(c: _Ctx, q: _Seq, P: str, mla: Any) -> None:
    """Backward of :func:`_qk_prep_fwd`. Eager MLA: split's backward is a cat (dQ, and d of the
    kv up-projection's output: K nope and V), RoPE's backward, and the sum of the expanded rope
    K's gradient over the heads."""
    if mla is None:
        qk = _gqa_qk_bytes(c)
        _gqa_rope(c, q, f"{P}.attn.rope_bwd", qk, backward=True)
        if getattr(c.m.attention, "qk_norm", False):
            q.mem(f"{P}.attn.qk_norm_bwd", qk * 3)
        return
    rope, full_q, full_k, kv = _mla_sizes(c, mla)
    if c.eager:
        heads = c.m.attention.heads // c.tp
        k_rope_expanded = c.T * heads * mla.qk_rope_head_dim * BF16
        q.mem(f"{P}.attn.qk_cat_bwd", 2 * (full_q + kv) + k_rope_expanded, access="last_dim_cat")
        q.mem(f"{P}.attn.rope_bwd", rope * EAGER_ROPE_PASSES)
    else:
        q.mem(f"{P}.attn.rope_bwd", 2 * (full_q + full_k))


def _attention_fwd(c: _Ctx, q: _Seq, P: str, start_also: tuple[str | None, ...]) -> None:
    d, T, tp = c.d, c.T, c.tp
    lin = {x.name: x for x in attention_linears(c.m)}
    q.mem(f"{P}.ln1", c.Tsp * d * BF16 * 2, role="norm", also=start_also)
    mla = _mla(c)
    if mla is None:
        _tp_in(c, q, f"{P}.attn.ag", overlap=True)
        q.gemm(f"{P}.attn.qkv", T, lin["qkv"].out_features // tp, d, c.lin)
    else:
        rope = mla.qk_rope_head_dim
        if mla.q_lora_rank is not None:
            # Megatron-Core MLA: down-projections on the rank's own rows, then gather the latents.
            rows, red = (c.Tsp, 1) if c.sp else (T, tp)
            q.gemm(f"{P}.attn.q_down", rows, mla.q_lora_rank, d, c.lin, redundancy=red)
            q.gemm(f"{P}.attn.kv_down", rows, mla.kv_lora_rank + rope, d, c.lin, redundancy=red)
            if c.sp:
                q.coll(f"{P}.attn.ag_latent", "tp", "all_gather",
                       size_bytes=T * (mla.q_lora_rank + mla.kv_lora_rank + rope) * BF16)
            q.mem(f"{P}.attn.q_norm", T * mla.q_lora_rank * BF16 * 2, role="norm")
            q.gemm(f"{P}.attn.q_up", T, lin["q_up"].out_features // tp, mla.q_lora_rank, c.lin, role="mla_up")
        else:
            _tp_in(c, q, f"{P}.attn.ag", overlap=True)
            q.gemm(f"{P}.attn.q", T, lin["q"].out_features // tp, d, c.lin)
            q.gemm(f"{P}.attn.kv_down", T, mla.kv_lora_rank + rope, d, c.lin, redundancy=tp)
        q.mem(f"{P}.attn.kv_norm", T * mla.kv_lora_rank * BF16 * 2, role="norm")
        q.gemm(f"{P}.attn.kv_up", T, lin["kv_up"].out_features // tp, mla.kv_lora_rank, c.lin, role="mla_up")
    _qk_prep_fwd(c, q, P, mla)
    if c.cp > 1:
        q.coll(f"{P}.attn.cp_kv", "cp", "all_gather", size_bytes=_cp_kv_bytes(c))
    q.main(AttentionOp, f"{P}.attn.core", "core_attn", layer=_layer(P), **_attention_core_fields(c, False))
    q.gemm(f"{P}.attn.o", T, d, lin["o"].in_features // tp, c.lin)
    _tp_out(c, q, f"{P}.attn.tp_out", overlap=True)
    q.mem(f"{P}.attn.residual", 3 * c.Tsp * d * BF16, role="residual")


def _attention_bwd(c: _Ctx, q: _Seq, P: str) -> None:
    d, T, tp = c.d, c.T, c.tp
    lin = {x.name: x for x in attention_linears(c.m)}
    q.mem(f"{P}.attn.residual_bwd", 3 * c.Tsp * d * BF16)
    _tp_in(c, q, f"{P}.attn.tp_out_bwd", overlap=True)
    _gemm_bwd(q, f"{P}.attn.o", T, d, lin["o"].in_features // tp, c.lin)
    q.main(AttentionOp, f"{P}.attn.core_bwd", layer=_layer(P), **_attention_core_fields(c, True))
    if c.cp > 1:
        q.coll(f"{P}.attn.cp_kv_bwd", "cp", "reduce_scatter", size_bytes=_cp_kv_bytes(c))
    mla = _mla(c)
    _qk_prep_bwd(c, q, P, mla)
    if mla is None:
        _gemm_bwd(q, f"{P}.attn.qkv", T, lin["qkv"].out_features // tp, d, c.lin)
        _tp_out(c, q, f"{P}.attn.ag_bwd", overlap=True)
    else:
        rope = mla.qk_rope_head_dim
        _gemm_bwd(q, f"{P}.attn.kv_up", T, lin["kv_up"].out_features // tp, mla.kv_lora_rank, c.lin)
        q.mem(f"{P}.attn.kv_norm_bwd", T * mla.kv_lora_rank * BF16 * 3)
        if mla.q_lora_rank is not None:
            _gemm_bwd(q, f"{P}.attn.q_up", T, lin["q_up"].out_features // tp, mla.q_lora_rank, c.lin)
            q.mem(f"{P}.attn.q_norm_bwd", T * mla.q_lora_rank * BF16 * 3)
            if tp > 1:  # latent gradients are partial sums over the column-parallel up-projections
                q.coll(f"{P}.attn.latent_bwd", "tp", "reduce_scatter" if c.sp else "allreduce",
                       size_bytes=T * (mla.q_lora_rank + mla.kv_lora_rank + rope) * BF16)
            rows, red = (c.Tsp, 1) if c.sp else (T, tp)
            _gemm_bwd(q, f"{P}.attn.kv_down", rows, mla.kv_lora_rank + rope, d, c.lin, redundancy=red)
            _gemm_bwd(q, f"{P}.attn.q_down", rows, mla.q_lora_rank, d, c.lin, redundancy=red)
        else:
            if tp > 1:
                q.coll(f"{P}.attn.latent_bwd", "tp", "allreduce", size_bytes=T * (mla.kv_lora_rank + rope) * BF16)
            _gemm_bwd(q, f"{P}.attn.kv_down", T, mla.kv_lora_rank + rope, d, c.lin, redundancy=tp)
            _gemm_bwd(q, f"{P}.attn.q", T, lin["q"].out_features // tp, d, c.lin)
            _tp_out(c, q, f"{P}.attn.ag_bwd", overlap=True)
    # The norm's output feeds several projections whose input gradients autograd sums: MLA's Q
    # and KV down-projections (one add); eager GQA's separate Q, K and V projections (two).
    fanout = 1 if mla is not None else 2 * int(c.eager)
    if fanout:
        rows = c.Tsp if (mla is not None and c.sp) else T
        q.mem(f"{P}.attn.fanout_bwd", fanout * 3 * rows * d * BF16)
    q.mem(f"{P}.ln1_bwd", c.Tsp * d * BF16 * 3)


# ------------------------------------------------------------------------------------- FFN


def _dense_ffn_fwd(c: _Ctx, q: _Seq, P: str) -> None:
    d, T, f = c.d, c.T, c.m.dense_ffn // c.tp
    q.mem(f"{P}.ln2", c.Tsp * d * BF16 * 2, role="norm")
    _tp_in(c, q, f"{P}.ffn.ag", overlap=True)
    q.gemm(f"{P}.ffn.fc1", T, c.width(f), d, c.lin)
    q.mem(f"{P}.ffn.act", c.act_bytes(T, f, False), role="act")
    q.gemm(f"{P}.ffn.fc2", T, d, f, c.lin)
    _tp_out(c, q, f"{P}.ffn.tp_out", overlap=True)
    q.mem(f"{P}.ffn.residual", 3 * c.Tsp * d * BF16, role="residual")


def _dense_ffn_bwd(c: _Ctx, q: _Seq, P: str) -> None:
    d, T, f = c.d, c.T, c.m.dense_ffn // c.tp
    q.mem(f"{P}.ffn.residual_bwd", 3 * c.Tsp * d * BF16)
    _tp_in(c, q, f"{P}.ffn.tp_out_bwd", overlap=True)
    _gemm_bwd(q, f"{P}.ffn.fc2", T, d, f, c.lin)
    q.mem(f"{P}.ffn.act_bwd", c.act_bytes(T, f, True))
    _gemm_bwd(q, f"{P}.ffn.fc1", T, c.width(f), d, c.lin)
    _tp_out(c, q, f"{P}.ffn.ag_bwd", overlap=True)
    q.mem(f"{P}.ln2_bwd", c.Tsp * d * BF16 * 3)


def _expert_gemm(q: _Seq, base: str, n: int, k: int, c: _Ctx, backward: bool, also=(),
                 quantized_input: bool = False) -> str:
    """A grouped GEMM over the rank's experts, forward shapes; in the backward it stands for dgrad +
    wgrad (simmoe.compute.grouped_gemm_backward_s). model_flops at the balanced load: the rank's
    experts receive moe_tokens*top_k rows on average (an expert_tp shard sees etp times the rows
    with 1/etp of the weights); summed over an EP group this is exact whatever the imbalance."""
    mean_rows = c.Tm * c.k * c.etp
    flops = 2.0 * mean_rows * n * k * (2 if backward else 1)
    if c.lin in FP8_GEMM_DTYPES and (backward or not quantized_input):  # at the balanced load, as other memory ops
        nbytes = (mean_rows * n * c.quant.grad + mean_rows * k * c.quant.requant_input if backward
                  else mean_rows * k * c.quant.fwd)
        q.mem(f"{base[:-4] if backward else base}.{'bwd_quant' if backward else 'quant'}", nbytes, also=also)
        also = ()
    return q.main(ExpertGemmOp, base, also=also, layer=_layer(base), n=int(n), k=int(k), dtype=c.lin,
                  model_flops=flops)


def _moe_fwd(c: _Ctx, q: _Seq, P: str) -> None:
    d, T, Tm, k = c.d, c.T, c.Tm, c.k
    fe = c.fe // c.etp
    mean_rows = Tm * k * c.etp
    q.mem(f"{P}.ln2", c.Tsp * d * BF16 * 2, role="norm")
    q.gemm(f"{P}.moe.router", Tm, c.E, d, c.router_dtype)
    q.mem(f"{P}.moe.topk", Tm * c.E * FP32 * 2)
    # The permute gathers each token's row into its k expert rows: every output row reads its
    # token's row, from HBM when the source exceeds L2 (roofline.yaml hbm.gather_slowdown).
    permute = q.mem(f"{P}.moe.permute", 2 * Tm * k * d * BF16, access="gather")
    fp8_tokens = c.ep > 1 and c.s.routing.dispatch_dtype == "fp8"
    if fp8_tokens:  # tokens are quantized once, then dispatched and fed to fc1 in FP8
        permute = q.mem(f"{P}.moe.quant", Tm * d * c.quant.fwd)
    if c.ep > 1:
        q.coll(f"{P}.moe.dispatch", "ep", "alltoall_dispatch", bytes_per_token=c.dispatch_bytes_per_token)
    if c.etp > 1:
        q.coll(f"{P}.moe.etp_ag", "expert_tp", "all_gather", size_bytes=mean_rows * d * BF16)
    shared_last = None
    if c.fs:
        fs = c.fs // c.tp
        prev = permute
        if c.sp:
            prev = q.coll(f"{P}.shared.ag", "tp", "all_gather", size_bytes=T * d * BF16, side_after=(prev,))
        prev = q.gemm(f"{P}.shared.fc1", T, c.width(fs), d, c.lin, side_after=(prev,))
        prev = q.mem(f"{P}.shared.act", c.act_bytes(T, fs, False), role="act", side_after=(prev,))
        prev = q.gemm(f"{P}.shared.fc2", T, d, fs, c.lin, side_after=(prev,))
        if c.tp > 1:
            prev = q.coll(f"{P}.shared.tp_out", "tp", "reduce_scatter" if c.sp else "allreduce",
                          size_bytes=T * d * BF16, side_after=(prev,))
        shared_last = prev
    _expert_gemm(q, f"{P}.moe.fc1", c.width(fe), d, c, False, also=(shared_last,),
                 quantized_input=fp8_tokens and c.etp == 1)
    q.mem(f"{P}.moe.act", c.act_bytes(mean_rows, fe, False), role="act")
    _expert_gemm(q, f"{P}.moe.fc2", d, fe, c, False)
    if c.etp > 1:
        q.coll(f"{P}.moe.etp_rs", "expert_tp", "reduce_scatter", size_bytes=mean_rows * d * BF16)
    if c.ep > 1:
        q.coll(f"{P}.moe.combine", "ep", "alltoall_combine", bytes_per_token=c.combine_bytes_per_token)
    # Each token's k expert rows gathered and summed (weighted, if the probabilities apply here).
    q.mem(f"{P}.moe.unpermute", Tm * k * d * BF16 + Tm * d * BF16, access="gather_sum")
    if c.tp > 1 and not c.sp:
        q.coll(f"{P}.moe.tp_ag", "tp", "all_gather", size_bytes=T * d * BF16)
    if shared_last is not None:  # routed + shared: its own add (Megatron's MoELayer, Automodel) before the residual
        shared_last = q.mem(f"{P}.moe.shared_add", 3 * c.Tsp * d * BF16, also=(shared_last,))
    q.mem(f"{P}.moe.residual", 3 * c.Tsp * d * BF16, role="residual", also=(shared_last,))


def _moe_bwd(c: _Ctx, q: _Seq, P: str) -> None:
    d, T, Tm, k = c.d, c.T, c.Tm, c.k
    fe = c.fe // c.etp
    mean_rows = Tm * k * c.etp
    start = q.mem(f"{P}.moe.residual_bwd", 3 * c.Tsp * d * BF16)
    q.mem(f"{P}.moe.unpermute_bwd", 2 * Tm * k * d * BF16, access="gather")  # the permute's gather
    if c.s.routing.probs_applied_at == "combine":
        # The probabilities' gradient: each expert row's output dotted with its token's output
        # gradient, a gather of the rows (a token's gradient row read once for its k rows).
        q.mem(f"{P}.moe.probs_bwd", (Tm * k + Tm) * d * BF16, access="gather")
    if c.ep > 1:  # gradients of the combine travel along the dispatch pattern
        q.coll(f"{P}.moe.combine_bwd", "ep", "alltoall_dispatch", bytes_per_token=c.combine_bytes_per_token)
    shared_last = None
    if c.fs:
        fs = c.fs // c.tp
        prev = start
        if c.sp:
            prev = q.coll(f"{P}.shared.tp_out_bwd", "tp", "all_gather", size_bytes=T * d * BF16,
                          side_after=(prev,))
        prev = _gemm_bwd(q, f"{P}.shared.fc2", T, d, fs, c.lin, side_after=(prev,))
        prev = q.mem(f"{P}.shared.act_bwd", c.act_bytes(T, fs, True), side_after=(prev,))
        prev = _gemm_bwd(q, f"{P}.shared.fc1", T, c.width(fs), d, c.lin, side_after=(prev,))
        if c.tp > 1:
            prev = q.coll(f"{P}.shared.ag_bwd", "tp", "reduce_scatter" if c.sp else "allreduce",
                          size_bytes=T * d * BF16, side_after=(prev,))
        shared_last = prev
    if c.etp > 1:
        q.coll(f"{P}.moe.etp_rs_bwd", "expert_tp", "all_gather", size_bytes=mean_rows * d * BF16)
    _expert_gemm(q, f"{P}.moe.fc2.bwd", d, fe, c, True, also=(shared_last,))
    q.mem(f"{P}.moe.act_bwd", c.act_bytes(mean_rows, fe, True))
    _expert_gemm(q, f"{P}.moe.fc1.bwd", c.width(fe), d, c, True)
    if c.etp > 1:
        q.coll(f"{P}.moe.etp_ag_bwd", "expert_tp", "reduce_scatter", size_bytes=mean_rows * d * BF16)
    if c.ep > 1:  # gradients of the dispatch travel along the combine pattern
        q.coll(f"{P}.moe.dispatch_bwd", "ep", "alltoall_combine", bytes_per_token=c.combine_bytes_per_token)
    q.mem(f"{P}.moe.permute_bwd", Tm * k * d * BF16 + Tm * d * BF16, access="gather_sum")
    q.mem(f"{P}.moe.topk_bwd", Tm * c.E * FP32 * 3)
    _gemm_bwd(q, f"{P}.moe.router", Tm, c.E, d, c.router_dtype)
    # The norm's output feeds the router and the permute, and the shared expert: autograd sums
    # the gradients that come back (one add per extra consumer; eager runs the shared gate and up
    # projections as two GEMMs, one more).
    fanout = 1 + (1 + int(c.eager) if c.fs else 0)
    q.mem(f"{P}.moe.fanout_bwd", fanout * 3 * c.Tsp * d * BF16, also=(shared_last,))
    q.mem(f"{P}.ln2_bwd", c.Tsp * d * BF16 * 3)


# ------------------------------------------------------------------- embedding, head, MTP


def _embedding_fwd(c: _Ctx, q: _Seq, base: str) -> None:
    q.mem(f"{base}", c.T * c.d * BF16 * 2)  # vocab-parallel lookup: zeros outside the local shard
    _tp_out(c, q, f"{base}.tp_out")


def _embedding_bwd(c: _Ctx, q: _Seq, base: str) -> None:
    _tp_in(c, q, f"{base}.tp_out_bwd")
    # scatter-add of BF16 gradients into FP32 rows of the local shard (read + write)
    q.mem(f"{base}_bwd", c.T * c.d * (BF16 + 2 * GRAD_BYTES))


def _head_fwd(c: _Ctx, q: _Seq, base: str) -> None:
    T, V = c.T, c.vocab_local
    q.mem(f"{base}.norm", c.Tsp * c.d * BF16 * 2, role="norm")
    _tp_in(c, q, f"{base}.ag")
    q.gemm(f"{base}.logits", T, V, c.d, "bf16")
    q.mem(f"{base}.loss", T * V * BF16 * 2)  # softmax cross-entropy: two passes over the logits
    if c.tp > 1:  # vocab-parallel cross-entropy: max, sum of exp, target logit per token
        q.coll(f"{base}.loss_ar", "tp", "allreduce", size_bytes=T * FP32 * 3)


def _head_bwd(c: _Ctx, q: _Seq, base: str) -> None:
    T, V = c.T, c.vocab_local
    q.mem(f"{base}.loss_bwd", T * V * BF16 * 2)
    _gemm_bwd(q, f"{base}.logits", T, V, c.d, "bf16")
    _tp_out(c, q, f"{base}.ag_bwd")
    q.mem(f"{base}.norm_bwd", c.Tsp * c.d * BF16 * 3)


def _mtp_pre_fwd(c: _Ctx, q: _Seq, base: str) -> None:
    _embedding_fwd(c, q, f"{base}.embed")
    q.mem(f"{base}.enorm", c.Tsp * c.d * BF16 * 2, role="norm")
    q.mem(f"{base}.hnorm", c.Tsp * c.d * BF16 * 2, role="norm")
    # The projection 2d -> d is replicated over TP, on the rank's own rows under SP.
    rows, red = (c.Tsp, 1) if (c.sp or c.tp == 1) else (c.T, c.tp)
    q.gemm(f"{base}.proj", rows, c.d, 2 * c.d, c.lin, redundancy=red)


def _mtp_pre_bwd(c: _Ctx, q: _Seq, base: str) -> None:
    rows, red = (c.Tsp, 1) if (c.sp or c.tp == 1) else (c.T, c.tp)
    _gemm_bwd(q, f"{base}.proj", rows, c.d, 2 * c.d, c.lin, redundancy=red)
    q.mem(f"{base}.hnorm_bwd", c.Tsp * c.d * BF16 * 3)
    q.mem(f"{base}.enorm_bwd", c.Tsp * c.d * BF16 * 3)
    _embedding_bwd(c, q, f"{base}.embed")


# --------------------------------------------------------------------------------- blocks


def _block_fwd(c: _Ctx, q: _Seq, b: int, start_also: tuple[str | None, ...] = ()) -> None:
    P = f"L{b}"
    _attention_fwd(c, q, P, start_also)
    if block_is_moe(c.m, b):
        _moe_fwd(c, q, P)
    else:
        _dense_ffn_fwd(c, q, P)


def _block_bwd(c: _Ctx, q: _Seq, b: int) -> None:
    P = f"L{b}"
    if block_is_moe(c.m, b):
        _moe_bwd(c, q, P)
    else:
        _dense_ffn_bwd(c, q, P)
    _attention_bwd(c, q, P)


def _recompute_ops(c: _Ctx, b: int) -> list[Op]:
    """Forward ops re-run before block b's backward. full: the whole block, collectives included
    (Megatron's full/uniform recompute, one block per checkpoint). selective: norms, activation
    functions and MLA up-projections (DeepSeek-V3's choice; with FlashAttention, core attention
    already keeps no s^2 state, so recomputing it would save nothing)."""
    if c.recompute == "none":
        return []
    q = _Seq("recompute", ".rc", quant=c.quant)
    _block_fwd(c, q, b)
    if c.recompute == "full":
        return q.ops
    return [replace(op, after=()) for op, role in zip(q.ops, q.roles) if role in SELECTIVE_ROLES]


# ------------------------------------------------------------------------------------ ZeRO


def _zero_gathers(c: _Ctx, q: _Seq, base: str, dense: int, experts: int, prev: str | None) -> str | None:
    """ZeRO-3: all-gather this block's BF16 parameters (side ops: they may run ahead, as FSDP's
    prefetch). Returns the last gather's base name."""
    if c.zero < 3:
        return prev
    if dense and c.dp_cp > 1:
        prev = q.coll(f"{base}.zero3_ag", "dp_cp", "all_gather", size_bytes=dense * BF16,
                      side_after=(prev,) if prev else (q.last_main_base(),))
    if experts and c.edp > 1:
        prev = q.coll(f"{base}.zero3_ag_experts", "edp", "all_gather", size_bytes=experts * BF16,
                      side_after=(prev,) if prev else (q.last_main_base(),))
    return prev


def _grad_accum(c: _Ctx, q: _Seq, base: str, params: int) -> None:
    """Eager stacks: autograd adds this micro-batch's weight gradients into the accumulated ones
    (read both, write one: 3 x the gradient bytes). Fused stacks accumulate inside the weight-
    gradient GEMM (TE's gradient_accumulation_fusion: the GEMM's output is the FP32 main_grad)."""
    if c.eager and params and c.grad_accum_fraction:
        q.mem(f"{base}.grad_accum", 3 * params * c.param_grad_bytes * c.grad_accum_fraction)


def _zero_grad_rs(c: _Ctx, q: _Seq, base: str, dense: int, experts: int) -> None:
    """ZeRO-2/3: gradients are partitioned, so each micro-batch's gradients are reduce-scattered
    as soon as a block's backward is done (DeepSpeed), off the critical path."""
    if c.zero < 2:
        return
    last = q.last_main_base()
    if dense and c.dp_cp > 1:
        q.coll(f"{base}.zero_rs", "dp_cp", "reduce_scatter", size_bytes=dense * GRAD_BYTES, side_after=(last,))
    if experts and c.edp > 1:
        q.coll(f"{base}.zero_rs_experts", "edp", "reduce_scatter", size_bytes=experts * GRAD_BYTES,
               side_after=(last,))


# ---------------------------------------------------------------------------------- public


def _check_stage(scenario: Any, virtual_stage: int) -> None:
    n = scenario.parallelism.virtual_stages
    if isinstance(virtual_stage, bool) or not isinstance(virtual_stage, int) or not 0 <= virtual_stage < n:
        raise InputError("no such virtual pipeline stage", field="virtual_stage", value=virtual_stage,
                         has_value=True, allowed=f"0..{n - 1} (pp*vpp = {n})")


def build_stage_program(scenario: Any, virtual_stage: int) -> StageProgram:
    """Forward and backward ops of one rank of ``virtual_stage`` for one micro-batch."""
    _check_stage(scenario, virtual_stage)
    c = _Ctx(scenario)
    m = c.m
    blocks = stage_blocks(scenario, virtual_stage)
    last_stage = scenario.parallelism.virtual_stages - 1
    has_head = stage_has_main_head(scenario, virtual_stage)
    extras = stage_local_params(scenario, virtual_stage).dense - sum(
        block_local_params(scenario, b).dense for b in blocks)

    # Segments in forward order: (kind, key). Backward runs them in reverse.
    segments: list[tuple[str, Any]] = []
    if virtual_stage == 0:
        segments.append(("embedding", None))
    for b in blocks:
        if b >= m.layers:
            if b == m.layers and has_head:
                segments.append(("head", "head"))
            segments.append(("mtp_pre", b - m.layers))
        segments.append(("block", b))
        if b >= m.layers:
            segments.append(("head", f"mtp{b - m.layers}.head"))
    if has_head and not m.mtp_depth:
        segments.append(("head", "head"))

    fwd = _Seq("fwd", quant=c.quant)
    _emit_segments(c, scenario, fwd, segments, extras, backward=False)
    if virtual_stage < last_stage:
        fwd.coll("p2p.fwd", "pp", "p2p_send", size_bytes=c.Tsp * c.d * BF16)

    bwd = _Seq("bwd", quant=c.quant)
    _emit_segments(c, scenario, bwd, list(reversed(segments)), extras, backward=True)
    _grad_accum(c, bwd, "stage", extras)
    _zero_grad_rs(c, bwd, "stage", extras, 0)
    if virtual_stage > 0:
        bwd.coll("p2p.bwd", "pp", "p2p_send", size_bytes=c.Tsp * c.d * BF16)

    return StageProgram(virtual_stage=virtual_stage, blocks=blocks, tokens=c.T,
                        moe_tokens=c.Tm if m.moe is not None else 0,
                        forward=tuple(fwd.ops), backward=tuple(bwd.ops))


def _emit_segments(c: _Ctx, scenario: Any, q: _Seq, ordered: list[tuple[str, Any]], extras: int,
                   backward: bool) -> None:
    """Emit ``ordered`` segments (forward order, or reversed for the backward) with their ZeRO-3
    parameter all-gathers. Each block's gather is issued one block ahead, before the ops of the
    segment that precedes it, so it overlaps that segment's compute: FSDP implementations
    prefetch the next unit's parameters while the current one computes (PyTorch FSDP
    forward_prefetch / BACKWARD_PRE, Megatron-FSDP's bucket prefetch). A rank issues its ops in
    program order, so a gather listed right before its own block could only start once the
    previous block had finished: fully exposed."""
    chain = _zero_gathers(c, q, "stage", extras, 0, None)
    first_waits: tuple[str, ...] = (chain,) if chain else ()
    blocks = [i for i, (kind, _) in enumerate(ordered) if kind == "block"]
    gate: dict[int, str] = {}  # segment index -> the gather its first op waits for
    issued = 0  # gathers issued so far, in block order

    def issue_through(limit: int) -> None:
        nonlocal chain, issued
        while issued < len(blocks) and blocks[issued] <= limit:
            i = blocks[issued]
            lp = block_local_params(scenario, ordered[i][1])
            g = _zero_gathers(c, q, f"L{ordered[i][1]}", lp.dense, lp.experts, chain)
            if g != chain:
                gate[i], chain = g, g
            issued += 1

    for i, (kind, key) in enumerate(ordered):
        # This segment's own gather, then the next block's (the prefetch).
        later = [b for b in blocks if b > i]
        issue_through(later[0] if later else i)
        waits = (first_waits if i == 0 else ()) + ((gate[i],) if i in gate else ())
        if kind == "block":
            if backward:
                _joined(q, waits, lambda: (_append(q, _recompute_ops(c, key)), _block_bwd(c, q, key)))
                lp = block_local_params(scenario, key)
                _grad_accum(c, q, f"L{key}", lp.dense + lp.experts)
                _zero_grad_rs(c, q, f"L{key}", lp.dense, lp.experts)
            else:
                _joined(q, waits, lambda: _block_fwd(c, q, key))
        else:
            _joined(q, waits, lambda: _segment(c, q, kind, key, backward=backward))


def _segment(c: _Ctx, q: _Seq, kind: str, key: Any, backward: bool) -> None:
    if kind == "embedding":
        (_embedding_bwd if backward else _embedding_fwd)(c, q, "embed")
    elif kind == "head":
        (_head_bwd if backward else _head_fwd)(c, q, key)
    else:
        (_mtp_pre_bwd if backward else _mtp_pre_fwd)(c, q, f"mtp{key}")


def _append(q: _Seq, ops: list[Op]) -> None:
    """Append ready-made main-line ops (recompute), keeping the dependency rule."""
    if not ops:
        return
    if q.ops and q.ops[-1].name != q.last_main and not ops[0].after:
        ops = [replace(ops[0], after=(q.last_main,) if q.last_main else ())] + ops[1:]
    q.ops.extend(ops)
    q.roles.extend(["recompute"] * len(ops))
    q.last_main = ops[-1].name


def _joined(q: _Seq, waits: tuple[str, ...], emit: Any) -> None:
    """Run ``emit``; the first op it adds also waits for ``waits`` (ZeRO-3 gathers)."""
    n0, prev = len(q.ops), q.last_main
    emit()
    if not waits or n0 == len(q.ops):
        return
    first = q.ops[n0]
    base = first.after or ((prev,) if prev else ())
    q.ops[n0] = replace(first, after=tuple(dict.fromkeys(base + tuple(q._n(w) for w in waits))))


def optimizer_bytes_per_param(scenario: Any) -> float:
    """HBM bytes the optimizer update moves per parameter it owns: read the FP32 gradient, read and
    write the master weight and each moment, write the BF16 weight (with BF16 master weights, the
    weight is the master)."""
    opt = scenario.training.optimizer
    moments = {"adam": 2, "adamw": 2, "muon": 1, "sgd": 1}[opt.type]
    mom = 4 if opt.moments_dtype == "fp32" else 2
    master = (2 * 4 + BF16) if opt.master_weights_dtype == "fp32" else 2 * BF16
    return GRAD_BYTES + master + moments * 2 * mom


def build_step_ops(scenario: Any, virtual_stage: int) -> tuple[Op, ...]:
    """Once-per-step ops of one rank for the parameters of ``virtual_stage`` (phase "step").

    ZeRO-0: all-reduce dense gradients over dp_cp and expert gradients over edp. ZeRO-1 (Megatron's
    distributed optimizer): reduce-scatter them, update the local shard, all-gather the BF16
    parameters. ZeRO-2: the reduce-scatters ran per micro-batch in the backward; update, all-gather.
    ZeRO-3: the per-block parameter all-gathers run in every forward and backward; only the update
    remains here. Collectives over a group of one rank are left out.
    """
    _check_stage(scenario, virtual_stage)
    c = _Ctx(scenario)
    lp = stage_local_params(scenario, virtual_stage)
    q = _Seq("step", quant=c.quant)
    groups = (("dense", "dp_cp", c.dp_cp, lp.dense), ("experts", "edp", c.edp, lp.experts))
    if c.zero <= 1:
        kind = "allreduce" if c.zero == 0 else "reduce_scatter"
        for what, group, size, n in groups:
            if n and size > 1:
                q.coll(f"step.grad_{kind}.{what}", group, kind, size_bytes=n * GRAD_BYTES)
    shard = sum(n / size if c.zero >= 1 else n for _, _, size, n in groups)
    q.mem("step.optimizer", shard * optimizer_bytes_per_param(scenario))
    if c.zero in (1, 2):
        for what, group, size, n in groups:
            if n and size > 1:
                q.coll(f"step.param_all_gather.{what}", group, "all_gather", size_bytes=n * BF16)
    return tuple(q.ops)


def rank_virtual_stages(scenario: Any, pp_rank: int) -> tuple[int, ...]:
    """Virtual stages whose weights pipeline rank ``pp_rank`` holds: 1F1B one; interleaved
    pp_rank + j*pp (Megatron); DualPipe pp_rank and pp-1-pp_rank (its two copies)."""
    par = scenario.parallelism
    if isinstance(pp_rank, bool) or not isinstance(pp_rank, int) or not 0 <= pp_rank < par.pp:
        raise InputError("no such pipeline rank", field="pp_rank", value=pp_rank, has_value=True,
                         allowed=f"0..{par.pp - 1}")
    if par.schedule == "dualpipe":
        return tuple(sorted({pp_rank, par.pp - 1 - pp_rank}))
    return tuple(pp_rank + j * par.pp for j in range(par.vpp))


def build_rank_step_ops(scenario: Any, pp_rank: int) -> tuple[Op, ...]:
    """Once-per-step ops of one rank of pipeline rank ``pp_rank``: build_step_ops of each virtual
    stage it holds (rank_virtual_stages), names prefixed ``v{stage}.``, run one after another."""
    out: list[Op] = []
    for v in rank_virtual_stages(scenario, pp_rank):
        out += [replace(op, name=f"v{v}.{op.name}", after=tuple(f"v{v}.{a}" for a in op.after))
                for op in build_step_ops(scenario, v)]
    return tuple(out)
