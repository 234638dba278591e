"""Megatron-Core's host work per transformer layer, counted and timed on a CPU (or on one GPU).

    pip install --no-deps --target /tmp/mcore megatron-core==0.16.1
    PYTHONPATH=/tmp/mcore python benchmarks/megatron_host_calls.py --attention gqa \
        --repeats 300 --runs 3 --out simmoe/data/host/megatron-core-0.16.1-cpu.csv
    PYTHONPATH=/tmp/mcore python benchmarks/megatron_host_calls.py --ep 1 --repeats 1000 \
        --runs 5 --out simmoe/data/host/megatron-core-0.16.1-attention.csv
    PYTHONPATH=/tmp/mcore python benchmarks/megatron_host_calls.py \
        --parts-out simmoe/data/host/megatron-core-0.16.1-parts.csv

Why: on an eager Megatron-Core run (no CUDA graphs) every PyTorch op a layer calls is issued from
Python, one by one; where the GPU's kernels are shorter than the host's issue time, or where the MoE
dispatcher's device-to-host copy of the split sizes has emptied the GPU's queue, the host sets the
pace (docs/engine.md, "Host issue"). simmoe's op list is ~25-40 fused ops per layer; the host issues
several hundred. This script measures, for Megatron-Core's own layer code (megatron-core 0.16.1,
the local-module spec, no Transformer Engine: that needs a GPU), with tiny shapes so that the CPU
kernels cost little next to the Python around them:

- ``ops``: PyTorch ops that would launch a kernel on a GPU (aten ops less views and metadata ops),
  per layer, forward and backward, by part of the layer (attention, router, experts, dispatcher,
  rest), counted with a TorchDispatchMode;
- ``host_s``: wall seconds of the layer's forward / backward on this CPU (median of repeats),
  and ``host_s_per_op`` = host_s / ops;
- ``load_1m``: the machine's one-minute load average as the layer's timing starts (the files
  committed before this column, all of simmoe/data/host/ so far, lack it): other work on the
  machine inflates the framework's share per op far more than the bare probes below, so a
  reference run wants a quiet machine, and says so;
- the bare-op probes of benchmarks/host_issue.py on this device, timed between the layer's
  repeats (the same load): ``probe_mul_s`` (``mul``, no autograd: one forward op) and
  ``probe_bwd_kernel_s`` (the backward of a chain of ``linear`` ops with autograd, per kernel: two
  GEMMs and one gradient add per linear), so the framework's own work per op (host_s_per_op less
  the probe of its phase) can be carried to a GPU host measured by that script
  (simmoe.engine.host).

With ``--device cuda`` (one GPU, ``--ep 1``) the same layer runs on the GPU with its real CUDA calls:
at these tiny shapes every kernel is shorter than its issue, so the wall time of the layer's forward
and backward is the host's issue time on that machine, device-to-host syncs included, with no
CPU-to-GPU-host conversion (simmoe.engine.host carries a CPU run as the framework's share plus the
GPU host's bare issue per op; run both on one GPU host to test that: docs/validation.md, "How
sure the host costs are"). The probes then run on the GPU too.

With ``--parts-out FILE`` it counts instead (no timing), for the CUDA-graph scopes
(simmoe.engine.host): each layer's ops by the part of the layer Megatron-Core's graph scopes
name, forward and backward. A forward op belongs to the innermost part running; a backward op to
the part whose forward created the autograd node running it (``torch._C._current_autograd_node``
and the nodes' creation order), a gradient accumulation to the part owning the parameter.

Layers: ``--attention gqa`` is Qwen3's grouped-query attention with QK norm (the reference run,
megatron-core-0.16.1-cpu.csv; the layer is called without RoPE, which the model passes in);
``mla`` is DeepSeek-V3's multi-latent attention (down- and up-projections, the latents' norms,
YaRN RoPE inside the layer, through Megatron's fused MLA RoPE as Megatron-Bridge turns it on:
one op each way for the queries and for the keys and values, standing in for its Triton kernels;
the local core attention sized for MLA's value heads, as Transformer Engine's takes both sizes).
The two timed side by side in one process (megatron-core-0.16.1-attention.csv) give simmoe the
ratio of their framework shares per op (simmoe.engine.host).

Rows: one per (layer kind, attention, phase). ``ep`` > 1 runs that many processes over gloo so the
all-to-all dispatcher's exchange is counted (its timing then includes gloo and is not used).
CUDA-only calls (streams, events, the CUDA RNG tracker, Transformer Engine's router GEMM,
grouped_gemm's kernel) are replaced by CPU stand-ins that issue the same number of ops: one per
grouped GEMM forward, two backward (dgrad, wgrad), as the grouped_gemm package's kernels do.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import statistics
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

FIELDS = ("layer", "attention", "local_experts", "ep", "phase", "ops", "attention_ops", "router_ops",
          "experts_ops", "dispatcher_ops", "other_ops", "host_s", "host_s_per_op",
          "probe_mul_s", "probe_bwd_kernel_s", "load_1m", "megatron_core", "torch", "device", "run")

PARTS_FIELDS = ("layer", "attention", "local_experts", "ep", "phase", "part", "ops", "megatron_core", "torch")

# Parts of a layer as Megatron-Core 0.16.1's CUDA-graph scopes cut it (transformer_layer.py,
# ``_get_submodules_under_cudagraphs``; moe/moe_layer.py): the layer's methods and modules that
# run each, innermost first in the forward. "other" is the rest (the MLP's residual add).
PART_METHODS = {"layer": {"_forward_attention": "attention",  # input norm, attention, its residual
                          "_forward_pre_mlp_layernorm": "mlp_norm"},
                "mlp": {"route": "router", "preprocess": "preprocess",
                        "shared_experts_compute": "shared_experts", "dispatch": "dispatcher",
                        "routed_experts_compute": "dispatcher", "combine": "dispatcher",
                        "postprocess": "dispatcher"}}
PARAM_PARTS = (("input_layernorm.", "attention"), ("self_attention.", "attention"),
               ("pre_mlp_layernorm.", "mlp_norm"), ("mlp.router.", "router"),
               ("mlp.shared_experts.", "shared_experts"), ("mlp.experts.", "experts"),
               ("mlp.", "mlp"))

# aten ops that change only metadata (no kernel on a GPU)
_NO_KERNEL = {"view", "_unsafe_view", "t", "transpose", "permute", "expand", "unsqueeze", "squeeze",
              "split", "split_with_sizes", "slice", "select", "as_strided", "alias", "detach",
              "reshape", "chunk", "unbind", "narrow", "_reshape_alias", "view_as", "expand_as",
              "empty", "empty_like", "new_empty", "empty_strided", "lift_fresh", "_local_scalar_dense",
              "alltoall_base_", "allreduce_", "_allgather_base_", "_reduce_scatter_base_"}


def _stub_cuda(torch):
    """CPU stand-ins for the CUDA-only calls Megatron-Core's layer makes."""

    class Stream:
        def __init__(self, *a, **k): pass
        def wait_stream(self, *a): pass
        def wait_event(self, *a): pass
        def record_event(self, *a): return Event()
        def synchronize(self): pass

    class Event:
        def __init__(self, *a, **k): pass
        def record(self, *a): pass
        def wait(self, *a): pass
        def synchronize(self): pass
        def query(self): return True

    torch.cuda.Stream, torch.cuda.Event = Stream, Event
    torch.cuda.current_stream = lambda *a, **k: Stream()
    torch.cuda.default_stream = lambda *a, **k: Stream()
    torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()
    torch.cuda.current_device = lambda: "cpu"
    torch.Tensor.record_stream = lambda self, *a: None
    import torch.distributed as dist
    a2a = dist.all_to_all_single

    def a2a_lists(out, inp, output_split_sizes=None, input_split_sizes=None, group=None,
                  async_op=False):  # gloo takes split sizes as lists only
        tl = lambda x: x.tolist() if isinstance(x, torch.Tensor) else x  # noqa: E731
        return a2a(out, inp, tl(output_split_sizes), tl(input_split_sizes), group=group,
                   async_op=async_op)

    dist.all_to_all_single = a2a_lists


def _stub_megatron(torch, cuda: bool):
    import megatron.core.fusions.fused_softmax as fs
    import megatron.core.transformer.moe.experts as ex
    import megatron.core.transformer.moe.grouped_gemm_util as gg
    import megatron.core.transformer.moe.moe_utils as mu
    import megatron.core.transformer.utils as tu
    from megatron.core import tensor_parallel

    if not cuda:  # on a GPU these are Megatron's own
        mask = lambda sq, *a, **k: torch.triu(torch.ones(sq, sq), diagonal=1).bool()  # noqa: E731
        tu.get_default_causal_mask = fs.get_default_causal_mask = mask
        tensor_parallel.get_cuda_rng_tracker().fork = lambda *a, **k: contextlib.nullcontext()
    mu.te_general_gemm = None  # the router GEMM in plain torch

    class Gmm(torch.autograd.Function):  # one op forward, two backward, as a grouped kernel
        @staticmethod
        def forward(ctx, a, b, batch_sizes, trans_b=False):
            ctx.save_for_backward(a, b)
            ctx.trans_b = trans_b
            w = b[0]
            return a @ (w.t() if trans_b else w)

        @staticmethod
        def backward(ctx, g):
            a, b = ctx.saved_tensors
            w = b[0]
            return g @ (w if ctx.trans_b else w.t()), torch.zeros_like(b), None, None

    class Ops:
        @staticmethod
        def gmm(a, b, batch_sizes, trans_b=False):
            return Gmm.apply(a, b, batch_sizes, trans_b)

    gg.grouped_gemm, gg.ops = object(), Ops
    ex.gg = gg

    # Multi-latent attention's fused RoPE (Megatron's Triton kernels, on with Megatron-Bridge's
    # apply_rope_fusion): one kernel forward and one backward for the queries, the same for the
    # keys and values, as the fused kernels issue.
    import megatron.core.transformer.multi_latent_attention as mla

    if not cuda:  # no Transformer Engine here, though its wrapper module imports (names as None)
        mla.HAVE_TE = False

    class RopeQ(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, cos, sin, qk_dim, emb_dim, *_):
            return q * 1.0

        @staticmethod
        def backward(ctx, g):
            return g * 1.0, None, None, None, None

    class RopeKV(torch.autograd.Function):  # the counts matter, not the values: one op each way
        @staticmethod
        def forward(ctx, kv, k_pos, cos, sin, emb_dim, qk_dim, v_dim, *_):
            ctx.pos_shape = k_pos.shape
            out = torch.cat([kv, k_pos.expand(*kv.shape[:-1], emb_dim)], dim=-1)
            return out[..., :qk_dim + emb_dim], out[..., out.shape[-1] - v_dim:]

        @staticmethod
        def backward(ctx, g_key, g_value):
            g = torch.cat([g_key, g_value], dim=-1)
            emb = ctx.pos_shape[-1]
            width = g.shape[-1] - emb  # qk_dim + v_dim
            return g[..., :width], g[:, :, :1, :emb], None, None, None, None, None

    # Transformer Engine's fused RoPE for the other attentions: one kernel each way per tensor.
    import megatron.core.models.common.embeddings.rope_utils as rope_utils

    class Rope(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t * 1.0

        @staticmethod
        def backward(ctx, g):
            return g * 1.0

    rope_utils.fused_apply_rotary_pos_emb = lambda t, freqs, interleaved=False: Rope.apply(t)
    mla.fused_apply_mla_rope_for_q = lambda q, cos, sin, qk, emb, *a: RopeQ.apply(
        q, cos, sin, qk, emb)
    mla.fused_apply_mla_rope_for_kv = lambda kv, kp, cos, sin, emb, qk, v, *a: RopeKV.apply(
        kv, kp, cos, sin, emb, qk, v)


def _layer(torch, kind: str, local_experts: int, ep: int, attention: str = "gqa"):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.spec_utils import build_module
    from megatron.core.transformer.transformer_config import (MLATransformerConfig,
                                                              TransformerConfig)

    moe = kind.startswith("moe")
    experts = local_experts * ep if moe else None
    common = dict(num_layers=1, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128,
                  add_bias_linear=False, gated_linear_unit=True,
                  activation_func=torch.nn.functional.silu, normalization="RMSNorm",
                  hidden_dropout=0.0, attention_dropout=0.0, use_cpu_initialization=True,
                  bf16=True, params_dtype=torch.bfloat16, qk_layernorm=True,
                  **(dict(num_moe_experts=experts, moe_ffn_hidden_size=32,
                          moe_router_topk=min(8, experts), moe_token_dispatcher_type="alltoall",
                          moe_grouped_gemm=True, moe_use_legacy_grouped_gemm=True,
                          moe_router_load_balancing_type="aux_loss", moe_aux_loss_coeff=1e-3)
                     if moe else {}))
    if attention in ("gqa", "gqa_rope"):  # Qwen3's: grouped queries with QK norm
        # gqa_rope: with the RoPE the model passes in, through TE's fused kernel as
        # Megatron-LM and Megatron-Bridge turn it on (apply_rope_fusion)
        cfg = TransformerConfig(**common, num_query_groups=2,
                                apply_rope_fusion=attention == "gqa_rope")
    else:  # DeepSeek-V3's multi-latent attention (down/up projections, latent norms, YaRN RoPE)
        cfg = MLATransformerConfig(**common, q_lora_rank=32, kv_lora_rank=16, qk_head_dim=16,
                                   qk_pos_emb_head_dim=8, v_head_dim=16, rope_type="yarn",
                                   apply_rope_fusion=True)
    spec = get_gpt_layer_local_spec(num_experts=experts, moe_grouped_gemm=moe, qk_layernorm=True,
                                    moe_use_legacy_grouped_gemm=moe,
                                    multi_latent_attention=attention == "mla")
    if attention == "mla":
        # The local core attention takes one head size; MLA's keys and values differ (Transformer
        # Engine's attention takes both). The same unfused ops, sized for the values.
        class LocalMLACoreAttention(DotProductAttention):
            def __init__(self, *a, k_channels=None, v_channels=None, **k):
                super().__init__(*a, **k)
                if v_channels is not None:  # Attention's own init builds one without them first
                    self.hidden_size_per_partition = (self.num_attention_heads_per_partition
                                                      * v_channels)

        spec.submodules.self_attention.submodules.core_attention = LocalMLACoreAttention
    return build_module(spec, config=cfg, layer_number=1)


def _count_parts(torch, layer, moe: bool, forward) -> dict:
    """{(phase, part): ops} of one forward and backward of ``layer`` (see the module docstring)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    part, counting, bounds = ["other"], [True], []  # bounds: (first node's sequence nr, part)

    def mark(name):  # the next autograd node created belongs to ``name``
        counting[0] = False
        seq = (torch.ones(1, requires_grad=True) * 1).grad_fn._sequence_nr()
        counting[0] = True
        bounds.append((seq + 1, name))

    def wrap(obj, method, name):
        inner = getattr(obj, method)

        def run(*a, **k):
            part.append(name)
            mark(name)
            try:
                return inner(*a, **k)
            finally:
                part.pop()
                mark(part[-1])
        setattr(obj, method, run)

    for owner, methods in PART_METHODS.items():
        obj = layer if owner == "layer" else layer.mlp
        for method, name in methods.items():
            if hasattr(obj, method) and (owner == "layer" or moe):
                wrap(obj, method, name)
    inner_mods = [(layer.mlp.experts, "experts")] if moe else [(layer.mlp, "mlp")]
    for mod, name in inner_mods:
        wrap(mod, "forward", name)
    param_part = {}
    for pname, prm in layer.named_parameters():
        param_part[id(prm)] = next(p for prefix, p in PARAM_PARTS if pname.startswith(prefix))

    def part_of_node(node):
        if node is None:
            return "other"
        if type(node).__name__ == "AccumulateGrad":
            return param_part.get(id(node.variable), "other")
        seq, found = node._sequence_nr(), "other"
        for first, name in bounds:
            if first > seq:
                break
            found = name
        return found

    class Count(TorchDispatchMode):
        def __init__(self, backward):
            super().__init__()
            self.ops, self.backward = Counter(), backward

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if counting[0] and func.overloadpacket.__name__ not in _NO_KERNEL:
                where = (part_of_node(torch._C._current_autograd_node()) if self.backward
                         else part[-1])
                self.ops[where] += 1
            return func(*args, **(kwargs or {}))

    mark("other")
    with Count(False) as fwd:
        out = forward()
    loss = out.sum()
    with Count(True) as bwd:
        loss.backward()
    return {**{("fwd", p): n for p, n in fwd.ops.items()},
            **{("bwd", p): n for p, n in bwd.ops.items()}}


def _measure(rank: int, args, queue) -> None:
    warnings.filterwarnings("ignore")
    import torch
    import torch.distributed as dist
    from torch.utils._python_dispatch import TorchDispatchMode

    cuda = args.device == "cuda"
    if not cuda:
        _stub_cuda(torch)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(args.port))
    dist.init_process_group("gloo", rank=rank, world_size=args.ep)
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(1, 1, expert_model_parallel_size=args.ep)
    if cuda:
        from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(0)
    _stub_megatron(torch, cuda)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    import megatron.core

    rows = []
    for attention, kind in [(a, k) for a in args.attention for k in args.layers]:
        moe = kind.startswith("moe")
        for local in (args.local_experts if moe else [0]):
            torch.manual_seed(0)
            layer = _layer(torch, kind, local, args.ep, attention).to(dev)
            part = ["other"]

            def enter(name):
                return lambda *_a, **_k: part.append(name)

            def leave(*_a, **_k):
                part.pop()

            for name, mod in (("attention", layer.input_layernorm),
                              ("attention", layer.self_attention),
                              ("router", getattr(layer.mlp, "router", None)),
                              ("experts", getattr(layer.mlp, "experts", None)),
                              ("dispatcher", layer.mlp if moe else None)):
                if mod is not None:
                    mod.register_forward_pre_hook(enter(name))
                    mod.register_forward_hook(leave)

            class Count(TorchDispatchMode):
                def __init__(self):
                    super().__init__()
                    self.ops = Counter()

                def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                    name = func.overloadpacket.__name__
                    if name not in _NO_KERNEL:
                        self.ops[part[-1]] += 1
                    return func(*args, **(kwargs or {}))

            x = torch.randn(32, 1, 64, dtype=torch.bfloat16, device=dev, requires_grad=True)

            # The model computes the rotary embedding once per step and passes it to every layer.
            rope = (torch.randn(x.shape[0], 1, 1, 16, device=dev) if attention == "gqa_rope"
                    else None)

            def forward():
                out = layer(x, attention_mask=None, rotary_pos_emb=rope)
                return out[0] if isinstance(out, tuple) else out

            for _ in range(3):
                forward().sum().backward()
            if args.parts_out is not None:
                for (phase, name), n in sorted(_count_parts(torch, layer, moe, forward).items()):
                    rows.append({"layer": kind, "attention": attention, "local_experts": local,
                                 "ep": args.ep, "phase": phase, "part": name, "ops": n,
                                 "megatron_core": megatron.core.__version__,
                                 "torch": torch.__version__})
                continue
            with Count() as fwd:
                out = forward()
            loss = out.sum()
            with Count() as bwd:
                loss.backward()
            times = {"fwd": [], "bwd": []}
            # What else ran on the machine: load inflates the framework's share per op far more
            # than the bare probes beside it (docs/validation.md, "How sure the host costs are").
            load_1m = os.getloadavg()[0]
            a = torch.randn(256, dtype=torch.bfloat16, device=dev)
            pw = (torch.randn(8, 8, device=dev) / 8).requires_grad_(True)
            px = torch.randn(8, 8, device=dev)
            chain = 50  # backward kernels: 2 x 50 - 1 GEMMs + 49 gradient adds
            probe, probe_bwd = [], []
            for _ in range(args.repeats):  # the probe interleaved with the layer: same CPU load
                sync()
                t0 = time.perf_counter()
                for _ in range(200):
                    a = a * 1.0
                probe.append((time.perf_counter() - t0) / 200)
                y = px
                for _ in range(chain):
                    y = torch.nn.functional.linear(y, pw)
                y = y.sum()
                pw.grad = None
                sync()
                t0 = time.perf_counter()
                y.backward()
                sync()
                probe_bwd.append((time.perf_counter() - t0) / (3 * chain - 2))
                sync()
                t0 = time.perf_counter()
                out = forward()
                sync()  # the GPU is idle between kernels here: the wait is one kernel's tail
                t1 = time.perf_counter()
                loss = out.sum()
                sync()
                t2 = time.perf_counter()
                loss.backward()
                sync()
                t3 = time.perf_counter()
                times["fwd"].append(t1 - t0)
                times["bwd"].append(t3 - t2)
            for phase, c in (("fwd", fwd), ("bwd", bwd)):
                ops = sum(c.ops.values())
                host = statistics.median(times[phase])
                rows.append({"layer": kind, "attention": attention, "local_experts": local,
                             "ep": args.ep, "phase": phase, "ops": ops,
                             **{f"{p}_ops": c.ops.get(p, 0) for p in
                                ("attention", "router", "experts", "dispatcher", "other")},
                             "host_s": host if args.ep == 1 else "",
                             "host_s_per_op": host / ops if args.ep == 1 else "",
                             "probe_mul_s": statistics.median(probe),
                             "probe_bwd_kernel_s": statistics.median(probe_bwd),
                             "load_1m": round(load_1m, 2),
                             "megatron_core": megatron.core.__version__, "torch": torch.__version__,
                             "device": torch.cuda.get_device_name() if cuda else "cpu"})
    if rank == 0:
        queue.put(rows)
    dist.destroy_process_group()


def run_ranks(target, args, ranks: int, timeout_s: float):
    """Run ``target(rank, args, queue)`` in ``ranks`` spawned processes; rank 0 puts the result on
    the queue. Returns it, or None when a process fails (a failed rank would otherwise leave the
    others, and this wait, blocked until the timeout)."""
    import queue as queue_mod

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, args, queue)) for r in range(ranks)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    got = None
    while got is None and time.monotonic() < deadline:
        try:
            got = queue.get(timeout=1.0)
        except queue_mod.Empty:
            if any(p.exitcode not in (None, 0) for p in procs):
                break
    for p in procs:
        if got is None:
            p.terminate()
        p.join()
    return got if got is not None and not any(p.exitcode for p in procs) else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="CSV file (default: print only)")
    ap.add_argument("--layers", nargs="+", default=["dense", "moe"], choices=["dense", "moe"])
    ap.add_argument("--attention", nargs="+", default=["gqa", "gqa_rope", "mla"],
                    choices=["gqa", "gqa_rope", "mla"],
                    help="gqa: Qwen3's grouped-query attention (no RoPE passed: the reference "
                         "run); gqa_rope: with the model's RoPE; mla: DeepSeek-V3's multi-latent")
    ap.add_argument("--local-experts", nargs="+", type=int, default=[4, 16])
    ap.add_argument("--ep", type=int, nargs="+", default=[1, 2],
                    help="expert-parallel sizes (processes over gloo); timing only from ep 1")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--runs", type=int, default=1, help="timed (ep 1) runs, each in fresh processes")
    ap.add_argument("--port", type=int, default=29517)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: time the layer on one GPU with its real CUDA calls (ep 1 only)")
    ap.add_argument("--parts-out", type=Path, default=None,
                    help="count each layer's ops by part (no timing) into this CSV instead")
    args = ap.parse_args(argv)
    if args.device == "cuda" and args.ep != [1]:
        ap.error("--device cuda runs one process on one GPU: give --ep 1")
    try:
        import megatron.core  # noqa: F401
    except ImportError:
        print("megatron-core is not importable: pip install --no-deps --target DIR "
              "megatron-core==0.16.1 and put DIR on PYTHONPATH", file=sys.stderr)
        return 2

    rows = []
    for ep in args.ep:
        # Timed (ep 1) runs are repeated in fresh processes: on a shared machine the seconds drift
        # with its load from run to run; the counts (ep > 1) need one.
        for i in range(args.runs if ep == 1 and args.parts_out is None else 1):
            run = argparse.Namespace(**{**vars(args), "ep": ep, "port": args.port + 10 * i + ep})
            got = run_ranks(_measure, run, ep, timeout_s=1800)
            if got is None:
                print(f"a process of the ep {ep} run failed", file=sys.stderr)
                return 1
            rows += [{**r, "run": i} for r in got] if args.parts_out is None else got
    fields, path = (FIELDS, args.out) if args.parts_out is None else (PARTS_FIELDS, args.parts_out)
    w = csv.DictWriter(sys.stdout, fields)
    w.writeheader()
    w.writerows(rows)
    if path is not None:
        from simmoe.atomic import atomic_write

        def write(f):
            out = csv.DictWriter(f, fields, lineterminator="\n")
            out.writeheader()
            out.writerows(rows)

        atomic_write(path, write, binary=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
