"""Host time that Megatron-Core's EP all-to-all overlap adds per MoE layer, on a CPU.

    mkdir -p /tmp/mcsite && tar xzf .whl/mcsite.tgz -C /tmp/mcsite   # megatron-core 0.16.1
    PYTHONPATH=/tmp/mcsite:$PWD python benchmarks/megatron_overlap_host.py --repeats 300 --ep 2 \
        --out simmoe/data/host/megatron-core-0.16.1-overlap.csv

Why: with ``overlap_moe_expert_parallel_comm`` ("combined 1F1B") Megatron-Core 0.16.1 runs one
micro-batch's forward of a layer together with another micro-batch's backward of that layer,
split into nodes (attention, dispatch, experts, combine:
``TransformerLayerSchedulePlan.run(f_layer, b_layer, ...)``,
megatron/core/models/common/model_chunk_schedule_plan.py, nodes from
megatron/core/models/gpt/fine_grained_callables.py), so the dispatch/combine all-to-alls of one
hide behind the other's compute on a second CUDA stream. On the host this costs more than the plain
schedule (the layer's forward, then ``torch.autograd.backward`` of another micro-batch): one
autograd-engine call per node instead of one per layer, detached node inputs and outputs, event
waits/records and stream switches around every node. This script measures that extra on this
CPU, for Megatron-Core's own code, with the layer and stand-ins of
benchmarks/megatron_host_calls.py (local spec, alltoall dispatcher, ``--ep`` processes over gloo,
tiny shapes so the kernels cost little next to the Python):

- ``plain_s``: wall seconds of the layer's forward for micro-batch A plus the backward
  (``torch.autograd.backward`` of its output with a gradient) of micro-batch B, whose forward ran in
  the previous repeat (the steady state of 1F1B); median over the repeats;
- ``overlap_s``: wall seconds of ``TransformerLayerSchedulePlan.run(f_layer=A, b_layer=B,
  f_input=x, b_grad=g)`` plus B's ``release_state()`` (as the model-chunk schedule does), where B's
  forward ran through its own plan's nodes in the previous repeat; ``build_s``: building A's plan
  (once per micro-batch per layer in the real schedule), timed apart;
- ``plan_fwd_s`` / ``plan_bwd_s`` (and ``plain_fwd_s`` / ``plain_bwd_s``): the forward alone and
  the backward alone through the plan nodes (``run(A, None)``, ``run(None, B)``: the first and last
  micro-batch of the combined schedule) and the plain way, to tell which side the extra is on;
- ``ops_*``: PyTorch ops that would launch a kernel on a GPU (aten ops less views and metadata ops,
  the harness's list), counted with a TorchDispatchMode over one repeat of each;
- ``run_backward``, ``event_calls``, ``stream_ctx``, ``nvtx``: per repeat, the autograd-engine
  calls, CUDA event record/wait calls, ``torch.cuda.stream`` contexts and NVTX range pushes the
  host makes (counted in a separate, untimed pass);
- ``probe_mul_s`` / ``probe_bwd_kernel_s``: the bare-op probes of megatron_host_calls.py (``mul``
  with no autograd; the backward of a chain of 50 ``linear`` ops, per kernel), timed between the
  repeats, so that the extra can be read in bare-op units.

All variants run in one process per rank, interleaved repeat by repeat (the same load), with the
ranks in lockstep: a barrier before each timed part, since every dispatch and combine exchanges
over gloo. The gloo exchanges (the same ones, the same number, in both paths) are inside both times;
the difference is what this measures. One intra-op thread per rank.

Stand-ins (CPU, besides the harness's): ``torch.cuda.nvtx`` range calls are no-ops; the stream and
event stand-ins of the harness are used for the plan's compute/communication streams and its event.
On a GPU those calls go to the CUDA driver (about a microsecond or more each), so the stand-ins
make the measured extra a lower bound for that part; their number is reported to cost it apart.
``delay_wgrad_compute`` is off: Megatron-Core requires the non-legacy grouped GEMM (Transformer
Engine) for it, so the nodes' ``backward_dw`` return at once, as they do on a GPU without it.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import megatron_host_calls as mhc  # noqa: E402

COLUMNS = ("local_experts", "plain_s", "overlap_s", "extra_s", "extra_per_mul", "build_s",
           "plain_fwd_s", "plan_fwd_s", "plain_bwd_s", "plan_bwd_s", "ops_plain", "ops_overlap",
           "ops_plain_fwd", "ops_plan_fwd", "ops_plain_bwd", "ops_plan_bwd", "run_backward",
           "event_calls", "stream_ctx", "nvtx", "probe_mul_s", "probe_bwd_kernel_s")


def _moe_layer(torch, local_experts: int, ep: int):
    """The harness's MoE layer, its config validated with the overlap enabled."""
    import megatron.core.transformer.transformer_config as tc

    real = tc.TransformerConfig

    def config(**kw):  # what overlap_moe_expert_parallel_comm asks of the config (__post_init__)
        return real(**kw, overlap_moe_expert_parallel_comm=True, expert_model_parallel_size=ep)

    tc.TransformerConfig = config
    try:
        return mhc._layer(torch, "moe", local_experts, ep)
    finally:
        tc.TransformerConfig = real


class _Chunk:
    """What the layer's nodes read from the model chunk: no final layer norm (not the last layer)."""

    class decoder:  # noqa: N801
        final_layernorm = None


def _chunk_state():
    from megatron.core.models.common.model_chunk_schedule_plan import ModelChunkState

    state = ModelChunkState()
    for name in ("attention_mask", "rotary_pos_emb", "rotary_pos_cos", "rotary_pos_sin",
                 "packed_seq_params", "sequence_len_offset", "context", "context_mask",
                 "attention_bias"):
        setattr(state, name, None)
    state.model = _Chunk()
    return state


class _Ops:
    """Counts ops that would launch a GPU kernel (the harness's list of metadata-only ops)."""

    def __init__(self, torch):
        from torch.utils._python_dispatch import TorchDispatchMode

        self.ops = Counter()
        ops = self.ops

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.overloadpacket.__name__
                if name not in mhc._NO_KERNEL:
                    ops[name] += 1
                return func(*args, **(kwargs or {}))

        self.mode = Mode()

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)

    def total(self):
        return sum(self.ops.values())


@contextlib.contextmanager
def _host_calls(torch, calls: Counter):
    """Counts autograd-engine calls, event calls, stream contexts and NVTX pushes (untimed pass)."""
    import megatron.core.pipeline_parallel.utils as pu
    from torch.autograd import Variable

    engine = Variable._execution_engine

    class Engine:
        @staticmethod
        def run_backward(*a, **k):
            calls["run_backward"] += 1
            return engine.run_backward(*a, **k)

    class CountedVariable:
        _execution_engine = Engine

    Event = torch.cuda.Event
    saved = (pu.Variable, torch.cuda.stream, torch.cuda.nvtx.range_push, Event.record, Event.wait,
             torch.autograd.backward)
    plain_backward = torch.autograd.backward

    def backward(*a, **k):
        calls["run_backward"] += 1
        return plain_backward(*a, **k)

    def stream(*a, **k):
        calls["stream_ctx"] += 1
        return contextlib.nullcontext()

    def push(*a, **k):
        calls["nvtx"] += 1

    def record(self, *a):
        calls["event_calls"] += 1

    def wait(self, *a):
        calls["event_calls"] += 1

    pu.Variable, torch.cuda.stream, torch.cuda.nvtx.range_push = CountedVariable, stream, push
    Event.record, Event.wait, torch.autograd.backward = record, wait, backward
    try:
        yield
    finally:
        (pu.Variable, torch.cuda.stream, torch.cuda.nvtx.range_push, Event.record, Event.wait,
         torch.autograd.backward) = saved


def _probe_mul(torch, a):
    """Seconds per bare ``mul`` (no autograd), as megatron_host_calls.py's probe_mul_s."""
    t0 = time.perf_counter()
    for _ in range(200):
        a = a * 1.0
    return (time.perf_counter() - t0) / 200


def _probe_bwd_kernel(torch, pw, px, chain=50):
    """Seconds per backward kernel of a chain of linears, as the harness's probe_bwd_kernel_s."""
    y = px
    for _ in range(chain):
        y = torch.nn.functional.linear(y, pw)
    y = y.sum()
    pw.grad = None
    t0 = time.perf_counter()
    y.backward()
    return (time.perf_counter() - t0) / (3 * chain - 2)


def _measure(rank: int, args, queue) -> None:
    warnings.filterwarnings("ignore")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # the ranks share this machine's cores
    mhc._stub_cuda(torch)
    torch.cuda.nvtx.range_push = lambda *a, **k: None  # CPU builds have no NVTX
    torch.cuda.nvtx.range_pop = lambda *a, **k: None
    torch.cuda.nvtx.range = lambda *a, **k: contextlib.nullcontext()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(args.port))
    dist.init_process_group("gloo", rank=rank, world_size=args.ep)
    import megatron.core
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(1, 1, expert_model_parallel_size=args.ep)
    mhc._stub_megatron(torch, False)
    from megatron.core.models.common.model_chunk_schedule_plan import TransformerLayerSchedulePlan

    run = TransformerLayerSchedulePlan.run
    results = []
    for local in args.local_experts:
        torch.manual_seed(0)
        layer = _moe_layer(torch, local, args.ep)
        state, event = _chunk_state(), torch.cuda.Event()
        comp, comm = torch.cuda.Stream(), torch.cuda.Stream()

        def plan():
            return TransformerLayerSchedulePlan(layer, event, state, comp, comm,
                                                {"is_first_layer": False, "is_last_layer": False})

        torch.manual_seed(1 + rank)
        x = torch.randn(32, 1, 64, dtype=torch.bfloat16, requires_grad=True)
        g = torch.randn(32, 1, 64, dtype=torch.bfloat16)

        def forward():
            return layer(x, attention_mask=None)[0]

        def plan_forward(p):
            return run(p, None, f_input=x)[0]

        # warm up both paths; then each variant keeps one micro-batch in flight (1F1B's steady
        # state): the forward of repeat r is the backward of repeat r + 1
        for _ in range(3):
            torch.autograd.backward(forward(), g)
            p = plan()
            plan_forward(p)
            run(None, p, b_grad=g)
            p.release_state()
        prev_out, prev_plan, prev_split = forward(), plan(), plan()
        plan_forward(prev_plan)
        plan_forward(prev_split)

        def plain_pair():
            nonlocal prev_out
            t0 = time.perf_counter()
            out = forward()
            t1 = time.perf_counter()
            torch.autograd.backward(prev_out, g)
            t2 = time.perf_counter()
            prev_out = out
            return t1 - t0, t2 - t1

        def overlap_pair():
            nonlocal prev_plan
            t0 = time.perf_counter()
            p = plan()
            t1 = time.perf_counter()
            run(p, prev_plan, f_input=x, b_grad=g, is_last_layer_in_bwd=False)
            prev_plan.release_state()
            t2 = time.perf_counter()
            prev_plan = p
            return t1 - t0, t2 - t1

        def split_pair():
            nonlocal prev_split
            p = plan()
            t0 = time.perf_counter()
            plan_forward(p)
            t1 = time.perf_counter()
            run(None, prev_split, b_grad=g, is_last_layer_in_bwd=False)
            prev_split.release_state()
            t2 = time.perf_counter()
            prev_split = p
            return t1 - t0, t2 - t1

        # counts: one repeat of each, then the host calls in a separate pass
        counts = {}
        for name, fn in (("plain", plain_pair), ("overlap", overlap_pair), ("split", split_pair)):
            dist.barrier()
            with _Ops(torch) as c:
                fn()
            counts[name] = c
        pieces = {}
        for name, split in (("plain_fwd", lambda: forward()),
                            ("plan_fwd", lambda: plan_forward(plan()))):
            dist.barrier()
            with _Ops(torch) as c:
                out = split()
            pieces[name] = c
        calls = {}
        for name, fn in (("plain", plain_pair), ("overlap", overlap_pair)):
            dist.barrier()
            got = Counter()
            with _host_calls(torch, got):
                fn()
            calls[name] = got
        del out

        times = {k: [] for k in ("plain_fwd", "plain_bwd", "build", "overlap", "plan_fwd",
                                 "plan_bwd", "mul", "bwd_kernel")}
        a = torch.randn(256, dtype=torch.bfloat16)
        pw = (torch.randn(8, 8) / 8).requires_grad_(True)
        px = torch.randn(8, 8)
        for _ in range(args.repeats):
            times["mul"].append(_probe_mul(torch, a))
            times["bwd_kernel"].append(_probe_bwd_kernel(torch, pw, px))
            dist.barrier()
            f, b = plain_pair()
            times["plain_fwd"].append(f)
            times["plain_bwd"].append(b)
            dist.barrier()
            build, both = overlap_pair()
            times["build"].append(build)
            times["overlap"].append(both)
            dist.barrier()
            f, b = split_pair()
            times["plan_fwd"].append(f)
            times["plan_bwd"].append(b)
        med = {k: statistics.median(v) for k, v in times.items()}
        plain = statistics.median([f + b for f, b in zip(times["plain_fwd"], times["plain_bwd"])])
        ops_plain_bwd = counts["plain"].total() - pieces["plain_fwd"].total()
        ops_plan_bwd = counts["split"].total() - pieces["plan_fwd"].total()
        row = {"local_experts": local, "plain_s": plain, "overlap_s": med["overlap"],
               "extra_s": med["overlap"] - plain,
               "extra_per_mul": (med["overlap"] - plain) / med["mul"], "build_s": med["build"],
               "plain_fwd_s": med["plain_fwd"], "plan_fwd_s": med["plan_fwd"],
               "plain_bwd_s": med["plain_bwd"], "plan_bwd_s": med["plan_bwd"],
               "ops_plain": counts["plain"].total(), "ops_overlap": counts["overlap"].total(),
               "ops_plain_fwd": pieces["plain_fwd"].total(),
               "ops_plan_fwd": pieces["plan_fwd"].total(),
               "ops_plain_bwd": ops_plain_bwd, "ops_plan_bwd": ops_plan_bwd,
               "run_backward": f"{calls['plain']['run_backward']}/{calls['overlap']['run_backward']}",
               "event_calls": f"{calls['plain']['event_calls']}/{calls['overlap']['event_calls']}",
               "stream_ctx": f"{calls['plain']['stream_ctx']}/{calls['overlap']['stream_ctx']}",
               "nvtx": f"{calls['plain']['nvtx']}/{calls['overlap']['nvtx']}",
               "probe_mul_s": med["mul"], "probe_bwd_kernel_s": med["bwd_kernel"],
               "rank": rank, "ep": args.ep, "megatron_core": megatron.core.__version__,
               "torch": torch.__version__,
               "op_diff": {k: counts["overlap"].ops[k] - counts["plain"].ops[k]
                           for k in sorted(set(counts["overlap"].ops) | set(counts["plain"].ops))
                           if counts["overlap"].ops[k] != counts["plain"].ops[k]}}
        results.append(row)
    gathered = [None] * args.ep
    dist.all_gather_object(gathered, results)
    if rank == 0:
        queue.put(gathered)
    dist.destroy_process_group()


def _fmt(v):
    if isinstance(v, float):
        return f"{v * 1e6:.1f}us" if abs(v) < 1 else f"{v:.1f}"
    return str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--ep", type=int, default=2, help="expert-parallel processes over gloo (>= 2)")
    ap.add_argument("--local-experts", nargs="+", type=int, default=[4, 16])
    ap.add_argument("--port", type=int, default=29617)
    ap.add_argument("--out", help="also write the rows to this CSV (simmoe/data/host/)")
    args = ap.parse_args(argv)
    if args.ep < 2:  # with one rank the all-to-alls return their input, which the nodes then free
        ap.error("overlap_moe_expert_parallel_comm needs expert parallelism: --ep 2 or more")
    try:
        import megatron.core  # noqa: F401
    except ImportError:
        print("megatron-core is not importable: put megatron-core 0.16.1 on PYTHONPATH",
              file=sys.stderr)
        return 2
    gathered = mhc.run_ranks(_measure, args, args.ep, timeout_s=3600)
    if gathered is None:
        print("a rank failed", file=sys.stderr)
        return 1
    print("times: median per repeat (one layer: forward of micro-batch A + backward of B); "
          "host calls as plain/overlap")
    for rows in gathered:
        for row in rows:
            print(f"rank {row['rank']}: " + "  ".join(f"{k}={_fmt(row[k])}" for k in COLUMNS))
    for row in gathered[0]:
        print(f"local_experts={row['local_experts']} ops overlap - plain by op: {row['op_diff']}")
    if args.out:
        from simmoe.atomic import atomic_write

        fields = ("rank", "ep", *COLUMNS, "megatron_core", "torch")

        def write(f):
            out = csv.DictWriter(f, fields, extrasaction="ignore", lineterminator="\n")
            out.writeheader()
            out.writerows(row for rows in gathered for row in rows)

        atomic_write(args.out, write, binary=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
