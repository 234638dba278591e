"""Ground truth for one transformer block as NeMo Automodel runs it, timed on one GPU, against
simmoe's prediction of the same block in the validation scenario.

    python benchmarks/automodel_block_ground_truth.py --out block.csv --kernels kernels.parquet  # CUDA
    python benchmarks/automodel_block_ground_truth.py --device cpu --tiny                      # smoke test

Why: simmoe is 35-64% optimistic on NeMo Automodel's published MoE rows (docs/validation.md) with
the work (FLOPs per token) right to 0.5%. This times what one EP rank's GPU does for one MoE block
and one micro-batch, built from the same ops Automodel's DeepEP path runs (read in its source,
2025-09/10: nemo_automodel/components/moe/layers.py GroupedExpertsDeepEP, megatron/
token_dispatcher.py, the Qwen3-MoE and DeepSeek-V3 model files), so the difference per kernel class
says which of simmoe's op times are too short for that software stack.

The block, per case (dimensions from the scenario; tokens = micro_batch x seq_len):

- RMSNorm as one fused kernel each way (TE's; here ``torch.compile``);
- attention: Qwen3: separate q, k, v projections, per-head q/k RMSNorm, rotary in plain PyTorch ops
  (chunk, multiply, cat); DeepSeek-V3 / Kimi K2 (MLA): q_a -> norm -> q_b, kv_a -> norm -> kv_b,
  rotary in FP32 complex arithmetic, ``cat`` of the nope and rope parts (K's rope part expanded over
  the heads); causal attention as cuDNN's fused kernel (``F.scaled_dot_product_attention``, cuDNN
  backend first: TE's choice on Hopper); output projection; residual;
- MoE: the "fake balanced gate" (token t -> experts (t*k+i) mod E), the shared expert (three
  GEMMs, SiLU and multiply unfused), the permutation of the tokens this rank receives (exactly
  which tokens and local experts, from the cyclic rule, for rank 0), expert GEMMs as
  grouped_gemm's cuBLAS path does them (one ``mm`` per expert spread over 4 streams, forward, input
  and weight gradients), the weighted SwiGLU as one compiled kernel each way, unpermute (a sum of a
  token's rows), residual;
- DeepEP's dispatch and combine are not run (no peers): the received tokens are a copy of the
  local ones (2x for DeepSeek-V3, whose tokens go to two ranks) and combine sums them back, small
  copies kept in the timing. DeepEP's CPU wait for the receive counts is kept (off with
  ``--no-host-sync``): a device-to-host read at each dispatch, in the forward and in the recompute.
  ``--dispatch-us N`` keeps the GPU busy N us after it (a spin kernel), as DeepEP's transfer would
  while the host issues what follows.
- full activation recompute: ``torch.utils.checkpoint`` around the block, as Automodel's
  ``ptd_checkpoint_wrapper``.

Measured: the forward alone and forward + backward (recompute included), CUDA events around each
iteration (host stalls count), median after warm-up and ``--preheat`` seconds of back-to-back
iterations (sustained clocks). ``--kernels`` writes a torch.profiler kernel trace of one iteration;
the table sums it by kernel class (GEMM, attention, other) and reports the GPU's idle time.

Predicted: the scenario's block (``--layer``) from ``simmoe.engine.runner.Simulation``: the sum of
its compute ops' seconds (forward, recompute, backward; collectives excluded), as the engine times
them on the critical rank, with the shipped profile of the GPU.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "scenarios" / "validation" / "scenarios"
CASES = {  # case -> (scenario file, a MoE layer on a middle stage)
    "qwen3-30b-a3b": ("qwen3-30b-a3b-h100x8-bf16-automodel.yaml", 3),
    "deepseek-v3": ("deepseek-v3-h100x256-bf16-automodel.yaml", 5),
    "kimi-k2": ("kimi-k2-h100x256-bf16-automodel.yaml", 5),
}
GMM_STREAMS = 4  # grouped_gemm's cuBLAS path spreads the per-expert GEMMs over 4 streams


@dataclass(frozen=True)
class Shape:
    """One EP rank's block: the model's dimensions and the tokens it receives (rank 0)."""
    name: str
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    mla: dict | None
    experts: int
    top_k: int
    ep: int
    expert_ffn: int
    shared_ffn: int
    batch: int
    seq_len: int

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len

    @property
    def local_experts(self) -> int:
        return self.experts // self.ep

    def received(self) -> tuple[np.ndarray, np.ndarray]:
        """(source token of each received token, its local expert ids as a (received, k_local)
        array) for rank 0 under the cyclic gate; every source sends the same pattern. Tokens with
        fewer local experts than the most are padded with -1."""
        t = np.arange(self.tokens)
        ids = (t[:, None] * self.top_k + np.arange(self.top_k)) % self.experts
        local = ids < self.local_experts
        hit = local.any(axis=1)
        k_max = int(local.sum(axis=1).max())
        per_source = np.full((int(hit.sum()), k_max), -1, np.int64)
        for row, (ids_t, loc_t) in enumerate(zip(ids[hit], local[hit])):
            per_source[row, :loc_t.sum()] = ids_t[loc_t]
        src = np.tile(t[hit], self.ep)
        return src, np.tile(per_source, (self.ep, 1))


def shape_of(case: str, tiny: bool) -> Shape:
    from simmoe.config import load_scenario

    sc = load_scenario(SCENARIOS / CASES[case][0])
    m, tr, par = sc.model, sc.training, sc.parallelism
    att = m.attention
    mla = None
    if att.type == "mla":
        mla = dict(q_lora=att.q_lora_rank, kv_lora=att.kv_lora_rank, nope=att.qk_nope_head_dim,
                   rope=att.qk_rope_head_dim, v=att.v_head_dim)
    shape = Shape(case, m.hidden, att.heads, getattr(att, "kv_heads", None) or att.heads,
                  getattr(att, "head_dim", None) or 128, mla, m.moe.routed_experts, m.moe.top_k,
                  par.ep, m.moe.expert_ffn, m.moe.expert_ffn * (m.moe.shared_experts or 0),
                  tr.micro_batch, tr.seq_len)
    if tiny:  # CPU smoke test: same structure, toy sizes
        shrink = dict(hidden=64, heads=4, kv_heads=min(4, shape.kv_heads), head_dim=16, expert_ffn=32,
                      shared_ffn=32 if shape.shared_ffn else 0, batch=1, seq_len=64,
                      experts=shape.experts // shape.ep * 4, ep=4)
        if mla:
            shrink["mla"] = dict(q_lora=32, kv_lora=16, nope=16, rope=8, v=16)
        shape = Shape(**{**shape.__dict__, **shrink})
    return shape


# ----------------------------------------------------------------------------- the prediction


def predict(case: str) -> dict[str, float]:
    """simmoe's compute seconds of the case's block for one micro-batch: forward, recompute,
    backward (collectives excluded), as the engine times them on rank 0 of the EP group."""
    import itertools

    from simmoe.config import load_scenario
    from simmoe.engine.runner import Simulation
    from simmoe.workload.ops import AttentionOp, CollectiveOp, ExpertGemmOp, GemmOp

    file, layer = CASES[case]
    sim = Simulation(load_scenario(SCENARIOS / file))
    for v in itertools.count():
        fwd, bwd = sim._source.stage_program(v)
        if any(op.name.startswith(f"L{layer}.") for op in fwd):
            break
    out = {"fwd": 0.0, "recompute": 0.0, "bwd": 0.0, "gemm": 0.0, "attention": 0.0, "other": 0.0}
    for op in list(fwd) + list(bwd):
        if not op.name.startswith(f"L{layer}.") or isinstance(op, CollectiveOp):
            continue
        if isinstance(op, ExpertGemmOp) and not op.shared:
            seconds = float(sim._expert_times(0, op, 0)[0][0])
        else:
            seconds = sim._op_time_s(op)
        out[op.phase] += seconds
        out["gemm" if isinstance(op, (GemmOp, ExpertGemmOp)) else "attention" if isinstance(op, AttentionOp)
            else "other"] += seconds
    return out


# ------------------------------------------------------------------------------- the block


def _spin_cycles_per_us(torch) -> float:
    """GPU clock cycles per microsecond of ``torch.cuda._sleep``, timed once (CUDA events)."""
    cycles = 2_000_000
    torch.cuda._sleep(cycles)  # warm
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    torch.cuda._sleep(cycles)
    b.record()
    b.synchronize()
    return cycles / (a.elapsed_time(b) * 1e3)


class Block:
    """The block's parameters and its forward (autograd does the backward)."""

    def __init__(self, torch, shape: Shape, device, compile: bool, host_sync: bool, blocks: int = 1,
                 expand_gqa: bool = False, dispatch_us: float = 0.0, gmm: str = "loop") -> None:
        self.torch, self.s, self.device, self.host_sync, self.blocks = torch, shape, device, host_sync, blocks
        self.dispatch_cycles = 0  # GPU spin standing in for DeepEP's dispatch transfer
        if dispatch_us > 0:
            if device.type != "cuda":
                raise SystemExit("--dispatch-us needs CUDA (a GPU spin kernel)")
            self.dispatch_cycles = int(dispatch_us * _spin_cycles_per_us(torch))
        self.attention_path = "cudnn, K/V heads expanded" if expand_gqa else ""
        F = torch.nn.functional
        bf16 = torch.bfloat16
        if compile:  # static shapes: one compile per tensor shape; allow them all (else eager fallback)
            for knob in ("cache_size_limit", "recompile_limit"):
                if hasattr(torch._dynamo.config, knob):
                    setattr(torch._dynamo.config, knob, max(getattr(torch._dynamo.config, knob), 256))
        wrap = (lambda fn: torch.compile(fn, dynamic=False)) if compile else (lambda fn: fn)
        self.cuda = device.type == "cuda"

        def w(*dims):
            return (torch.randn(*dims, device=device, dtype=bf16) / math.sqrt(dims[-1])).requires_grad_()

        def rms(x, weight):
            xf = x.float()
            return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * weight

        def weighted_swiglu(h, probs):
            gate, up = h.chunk(2, dim=-1)
            return (F.silu(gate.float()) * up.float() * probs.unsqueeze(-1)).to(h.dtype)

        self.rms, self.weighted_swiglu = wrap(rms), wrap(weighted_swiglu)
        d = shape.hidden
        self.ln1, self.ln2 = (torch.ones(d, device=device, dtype=bf16, requires_grad=True) for _ in range(2))
        if shape.mla:
            a = shape.mla
            self.q_a, self.q_b = w(a["q_lora"], d), w(shape.heads * (a["nope"] + a["rope"]), a["q_lora"])
            self.kv_a = w(a["kv_lora"] + a["rope"], d)
            self.kv_b = w(shape.heads * (a["nope"] + a["v"]), a["kv_lora"])
            self.q_ln = torch.ones(a["q_lora"], device=device, dtype=bf16, requires_grad=True)
            self.kv_ln = torch.ones(a["kv_lora"], device=device, dtype=bf16, requires_grad=True)
            self.o = w(d, shape.heads * a["v"])
            rot = a["rope"] // 2
        else:
            hd = shape.head_dim
            self.q, self.k, self.v = w(shape.heads * hd, d), w(shape.kv_heads * hd, d), w(shape.kv_heads * hd, d)
            self.q_ln = torch.ones(hd, device=device, dtype=bf16, requires_grad=True)
            self.k_ln = torch.ones(hd, device=device, dtype=bf16, requires_grad=True)
            self.o = w(d, shape.heads * hd)
            rot = hd // 2
        angles = torch.outer(torch.arange(shape.seq_len, device=device, dtype=torch.float32),
                             1.0 / 10000 ** (torch.arange(rot, device=device, dtype=torch.float32) / rot))
        self.freqs_cis = torch.polar(torch.ones_like(angles), angles)  # (seq, rot) complex64
        self.cos = angles.cos().to(bf16)[None, :, None, :]
        self.sin = angles.sin().to(bf16)[None, :, None, :]
        E, f = shape.local_experts, shape.expert_ffn
        self.w1, self.w2 = w(E, d, 2 * f), w(E, f, d)  # grouped_gemm's (E, K, N) layout
        if shape.shared_ffn:
            self.s_gate, self.s_up, self.s_down = w(shape.shared_ffn, d), w(shape.shared_ffn, d), w(d, shape.shared_ffn)

        src, local = shape.received()  # rows sorted by local expert: permutation and its inverse
        flat_tok = np.repeat(np.arange(len(src)), local.shape[1])
        flat_exp = local.reshape(-1)
        keep = flat_exp >= 0
        order = np.lexsort((flat_tok[keep], flat_exp[keep]))
        self.perm_token = torch.as_tensor(flat_tok[keep][order], device=device)
        self.hist = np.bincount(flat_exp[keep], minlength=E)
        self.bounds = [(e, int(a), int(b)) for e, (a, b) in
                       enumerate(zip(np.cumsum(self.hist) - self.hist, np.cumsum(self.hist))) if b > a]
        slot = np.full(local.shape, -1, np.int64)  # each received token's rows (-1: none)
        pos = np.empty(order.size, np.int64)
        pos[order] = np.arange(order.size)
        slot.reshape(-1)[np.flatnonzero(keep)] = pos
        self.slots = torch.as_tensor(slot, device=device)
        self.received_tokens, self.rows = len(src), int(keep.sum())
        self.repeat = self.received_tokens / shape.tokens
        self.probs = torch.full((self.rows,), 1.0 / shape.top_k, device=device, dtype=torch.float32)
        self.streams = [torch.cuda.Stream(device) for _ in range(GMM_STREAMS)] if self.cuda else []
        self.params = [p for p in vars(self).values() if isinstance(p, torch.Tensor) and p.requires_grad]
        self._gmm = self._gmm_function()
        if gmm == "grouped":  # one CUTLASS kernel per call: no host loop over the experts
            if not (self.cuda and hasattr(torch, "_grouped_mm")):
                raise SystemExit("--gmm grouped needs CUDA and torch._grouped_mm")
            offs = torch.as_tensor(np.cumsum(self.hist), device=device, dtype=torch.int32)
            self._gmm = lambda x, w: torch._grouped_mm(x, w, offs=offs)
        self._unpermute = self._unpermute_function(wrap)

    # grouped_gemm (fanshiqing v1.1.4) on Hopper: cublasGemmEx per expert over 4 streams, forward,
    # dgrad (trans_b) and wgrad (trans_a, variable K) alike.
    def _gmm_function(self):
        torch, block = self.torch, self

        def per_expert(out, pairs):
            main = torch.cuda.current_stream() if block.cuda else None
            if main is not None:
                ready = torch.cuda.Event()
                ready.record(main)
            for i, (e, fn) in enumerate(pairs):
                if main is None:
                    fn()
                    continue
                s = block.streams[i % GMM_STREAMS]
                s.wait_event(ready)
                with torch.cuda.stream(s):
                    fn()
            for s in block.streams:
                main.wait_stream(s)
            return out

        class Gmm(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, w):
                ctx.save_for_backward(x, w)
                out = x.new_empty(x.shape[0], w.shape[2])
                return per_expert(out, [(e, lambda e=e, a=a, b=b: torch.mm(x[a:b], w[e], out=out[a:b]))
                                        for e, a, b in block.bounds])

            @staticmethod
            def backward(ctx, g):
                x, w = ctx.saved_tensors
                g = g.contiguous()
                dx = x.new_empty(x.shape)
                dw = torch.zeros_like(w)
                per_expert(dx, [(e, lambda e=e, a=a, b=b: torch.mm(g[a:b], w[e].t(), out=dx[a:b]))
                                for e, a, b in block.bounds])
                per_expert(dw, [(e, lambda e=e, a=a, b=b: torch.mm(x[a:b].t(), g[a:b], out=dw[e]))
                                for e, a, b in block.bounds])
                return dx, dw

        return Gmm.apply

    # TE's moe_unpermute without merging probs: each received token sums its rows (gather);
    # its backward gathers the token's gradient to each of its rows.
    def _unpermute_function(self, wrap):
        torch, block = self.torch, self

        def gather_sum(y, slots):
            acc = torch.zeros(slots.shape[0], y.shape[1], device=y.device, dtype=torch.float32)
            for j in range(slots.shape[1]):
                idx = slots[:, j]
                acc = acc + torch.where((idx >= 0).unsqueeze(-1), y.index_select(0, idx.clamp(min=0)).float(), 0.0)
            return acc.to(y.dtype)

        gsum = wrap(gather_sum)

        class Unpermute(torch.autograd.Function):
            @staticmethod
            def forward(ctx, y):
                return gsum(y, block.slots)

            @staticmethod
            def backward(ctx, g):
                return g.index_select(0, block.perm_token)

        class Permute(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x.index_select(0, block.perm_token)

            @staticmethod
            def backward(ctx, g):
                return gsum(g, block.slots)

        self._permute = Permute.apply
        return Unpermute.apply

    def attention(self, h):
        torch, s = self.torch, self.s
        F = torch.nn.functional
        b, n = s.batch, s.seq_len
        if s.mla:
            a = s.mla
            q = F.linear(self.rms(F.linear(h, self.q_a), self.q_ln), self.q_b).view(b, n, s.heads, a["nope"] + a["rope"])
            q_nope, q_pe = q.split([a["nope"], a["rope"]], -1)
            kv = F.linear(h, self.kv_a)
            c, k_pe = kv.split([a["kv_lora"], a["rope"]], -1)
            kv = F.linear(self.rms(c, self.kv_ln), self.kv_b).view(b, n, s.heads, a["nope"] + a["v"])
            k_nope, v = kv.split([a["nope"], a["v"]], -1)
            q_pe = self.rope_complex(q_pe)
            k_pe = self.rope_complex(k_pe.view(b, n, 1, a["rope"]))
            q = torch.cat([q_nope, q_pe], -1)
            k = torch.cat([k_nope, k_pe.expand(-1, -1, s.heads, -1)], -1)
        else:
            hd = s.head_dim
            q = self.rms(F.linear(h, self.q).view(b, n, s.heads, hd), self.q_ln)
            k = self.rms(F.linear(h, self.k).view(b, n, s.kv_heads, hd), self.k_ln)
            v = F.linear(h, self.v).view(b, n, s.kv_heads, hd)
            q, k = self.rope_torch(q), self.rope_torch(k)
        out = self.sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return F.linear(out.transpose(1, 2).reshape(b * n, -1), self.o)

    def rope_torch(self, x):  # Qwen3's apply_rotary_emb: plain ops
        x1, x2 = x.chunk(2, dim=-1)
        return self.torch.cat((x1 * self.cos - x2 * self.sin, x2 * self.cos + x1 * self.sin), dim=-1)

    def rope_complex(self, x):  # DeepSeek-V3's apply_rotary_emb: FP32 complex
        torch = self.torch
        xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * self.freqs_cis[None, :, None, :]).flatten(3).to(x.dtype)

    def sdpa(self, q, k, v):
        torch = self.torch
        F = torch.nn.functional
        gqa = q.shape[1] != k.shape[1]
        if not self.cuda:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        from torch.nn.attention import SDPBackend, sdpa_kernel
        if gqa and self.attention_path != "cudnn, K/V heads expanded":
            # TE runs GQA natively; so does cuDNN's SDPA in recent PyTorch (enable_gqa).
            try:
                with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                self.attention_path = "cudnn, native GQA"
                return out
            except RuntimeError:
                self.attention_path = "cudnn, K/V heads expanded"
        if gqa:  # fallback: expand the K/V heads (copies a fused GQA kernel does not make)
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        self.attention_path = self.attention_path or "cudnn"
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def moe(self, h):
        torch, s = self.torch, self.s
        F = torch.nn.functional
        shared = None
        if s.shared_ffn:
            shared = F.linear(F.silu(F.linear(h, self.s_gate)) * F.linear(h, self.s_up), self.s_down)
        # Stand-in for DeepEP's dispatch: the received tokens (a copy when they outnumber the local).
        whole, part = divmod(self.received_tokens, s.tokens)
        recv = torch.cat([h] * whole + ([h[:part]] if part else []), 0) if self.received_tokens != s.tokens else h
        if self.host_sync:  # DeepEP normal dispatch: the CPU waits for the receive counts
            recv[:1, :1].sum().item()
        if self.dispatch_cycles:  # then the GPU moves the tokens while the host issues what follows
            torch.cuda._sleep(self.dispatch_cycles)
        x = self._permute(recv)
        y = self._gmm(self.weighted_swiglu(self._gmm(x, self.w1), self.probs), self.w2)
        back = self._unpermute(y)
        if self.received_tokens != s.tokens:  # stand-in for combine
            pad = whole * s.tokens + (s.tokens if part else 0) - self.received_tokens
            if pad:
                back = torch.cat([back, back.new_zeros(pad, back.shape[1])], 0)
            back = back.view(-1, s.tokens, back.shape[1]).sum(0)
        return back if shared is None else back + shared

    def forward(self, x):
        h = x + self.attention(self.rms(x, self.ln1))
        return h + self.moe(self.rms(h, self.ln2))

    def _chain(self, x):
        """``blocks`` applications of the block, each its own checkpoint (the weights are shared:
        the same kernels as distinct layers, without their memory)."""
        from torch.utils.checkpoint import checkpoint
        for _ in range(self.blocks):
            x = checkpoint(self.forward, x, use_reentrant=False, preserve_rng_state=True)
        return x

    def step(self, x):
        """Forward under full recompute and backward, as one micro-batch of training."""
        self._chain(x).backward(self.grad_out)

    def forward_only(self, x):
        with self.torch.no_grad():
            self._chain(x)


# --------------------------------------------------------------------------------- measuring


def kernel_class(name: str) -> str:
    n = name.lower()
    if any(t in n for t in ("fmha", "flash", "cudnn", "attn", "sdpa")):
        return "attention"
    if any(t in n for t in ("gemm", "nvjet", "xmma", "cutlass", "sm90_", "cublas")):
        return "gemm"
    return "other"


def time_case(torch, block: Block, x, warmup: int, repeats: int, preheat_s: float) -> dict:
    cuda = block.cuda
    sync = (lambda: torch.cuda.synchronize()) if cuda else (lambda: None)

    def timed(fn) -> list[float]:
        for _ in range(warmup):
            fn(x)
        sync()
        t_end = time.perf_counter() + preheat_s
        while time.perf_counter() < t_end:
            fn(x)
            sync()
        out = []
        for _ in range(repeats):
            if cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn(x)
                b.record()
                b.synchronize()
                out.append(a.elapsed_time(b) * 1e-3)
            else:
                t0 = time.perf_counter()
                fn(x)
                out.append(time.perf_counter() - t0)
        return out

    step = timed(block.step)
    fwd = timed(block.forward_only)
    return {"measured_step_ms": statistics.median(step) * 1e3, "measured_step_p10_ms": np.percentile(step, 10) * 1e3,
            "measured_step_p90_ms": np.percentile(step, 90) * 1e3, "measured_fwd_ms": statistics.median(fwd) * 1e3}


def kernel_trace(torch, block: Block, x) -> tuple[list[dict], float]:
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if block.cuda else [])
    block.step(x)
    if block.cuda:
        torch.cuda.synchronize()
    with profile(activities=acts) as prof:
        block.step(x)
        if block.cuda:
            torch.cuda.synchronize()
    rows = []
    for ev in prof.events():
        if block.cuda and getattr(ev, "device_type", None) is not None and str(ev.device_type).endswith("CUDA"):
            rows.append({"kernel": ev.name, "start_us": float(ev.time_range.start),
                         "duration_us": float(ev.time_range.end - ev.time_range.start)})
    span = (max(r["start_us"] + r["duration_us"] for r in rows) - min(r["start_us"] for r in rows)) if rows else 0.0
    return rows, span


def union_us(rows: list[dict]) -> float:
    iv = sorted((r["start_us"], r["start_us"] + r["duration_us"]) for r in rows)
    total, cur_a, cur_b = 0.0, None, None
    for a, b in iv:
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    return total + ((cur_b - cur_a) if cur_b is not None else 0.0)


def write(rows: list[dict], path: str) -> None:
    """Rows to CSV or Parquet, atomically (simmoe.atomic): a run cut short keeps the last file."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from simmoe.atomic import atomic_write
    table = pa.Table.from_pylist(rows)
    atomic_write(path, lambda handle: (pq.write_table if path.endswith(".parquet") else pacsv.write_csv)(table, handle))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="default: all")
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None)
    ap.add_argument("--tiny", action="store_true", help="toy sizes (CPU smoke test; says nothing about a GPU)")
    ap.add_argument("--dispatch-us", type=float, default=0.0,
                    help="GPU busy this long after each dispatch's host wait, standing in for DeepEP's "
                    "transfer (CUDA; 0: none)")
    ap.add_argument("--gmm", choices=("loop", "grouped"), default="loop",
                    help="expert GEMMs: grouped_gemm's per-expert cuBLAS loop (default), or one "
                    "torch._grouped_mm kernel per call (no host loop; CUDA)")
    ap.add_argument("--no-host-sync", dest="host_sync", action="store_false",
                    help="leave out DeepEP's CPU wait at each dispatch")
    ap.add_argument("--blocks", type=int, action="append",
                    help="blocks chained per step (repeatable; default 1): the per-block time of a "
                    "long chain leaves out the start and end of one step")
    ap.add_argument("--expand-gqa", action="store_true",
                    help="expand the K/V heads before attention instead of cuDNN's native GQA")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--preheat", type=float, default=None, help="seconds of back-to-back steps first (default 2 on CUDA)")
    ap.add_argument("--out", help="rows: .csv or .parquet")
    ap.add_argument("--kernels", help="kernel trace of one step per case: .csv or .parquet (CUDA)")
    args = ap.parse_args(argv)
    import torch
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    preheat = args.preheat if args.preheat is not None else (2.0 if device.type == "cuda" else 0.0)
    rows, kernels = [], []
    tiny = args.tiny or device.type == "cpu"
    for case, blocks in [(c, n) for c in args.case or list(CASES) for n in args.blocks or [1]]:
        shape = shape_of(case, tiny)
        pred = predict(case)
        torch.manual_seed(0)
        block = Block(torch, shape, device, compile=device.type == "cuda", host_sync=args.host_sync, blocks=blocks,
                      dispatch_us=args.dispatch_us, gmm=args.gmm,
                      expand_gqa=args.expand_gqa)
        x = torch.randn(shape.tokens, shape.hidden, device=device, dtype=torch.bfloat16, requires_grad=True)
        block.grad_out = torch.randn_like(x)
        got = time_case(torch, block, x, args.warmup, args.repeats, preheat)
        row = {"case": case, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "host_sync": args.host_sync, "dispatch_us": args.dispatch_us, "gmm": args.gmm, "tiny": tiny,
               "tokens": shape.tokens, "received_tokens": block.received_tokens, "expert_rows": block.rows,
               "local_experts": shape.local_experts, "blocks": blocks, "attention_path": block.attention_path,
               **got, "measured_block_ms": got["measured_step_ms"] / blocks,
               "simmoe_fwd_ms": pred["fwd"] * 1e3,
               "simmoe_block_ms": (pred["fwd"] + pred["recompute"] + pred["bwd"]) * 1e3,
               **{f"simmoe_{cls}_ms": pred[cls] * 1e3 for cls in ("gemm", "attention", "other")}}
        if args.kernels and device.type == "cuda":
            trace, span = kernel_trace(torch, block, x)
            for cls in ("gemm", "attention", "other"):  # per block
                row[f"kernel_{cls}_ms"] = sum(r["duration_us"] for r in trace
                                              if kernel_class(r["kernel"]) == cls) * 1e-3 / blocks
            row["kernel_busy_ms"] = union_us(trace) * 1e-3 / blocks
            row["kernel_span_ms"] = span * 1e-3 / blocks
            row["kernels"] = len(trace)
            kernels += [{"case": case, "blocks": blocks, "class": kernel_class(r["kernel"]), **r} for r in trace]
        row["error_pct"] = 100 * (row["simmoe_block_ms"] / row["measured_block_ms"] - 1)
        rows.append(row)
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        del block, x
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if args.out:
            write(rows, args.out)
        if args.kernels and kernels:
            write(kernels, args.kernels)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
