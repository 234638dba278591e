"""Host issue: the CPU that launches a rank's kernels, as a clock beside its GPU streams.

On an eager stack (no CUDA graphs) every op is issued from Python, one by one. The host runs ahead
of the GPU while it can; a kernel cannot start before it has been issued; and the MoE dispatcher's
device-to-host copy of the split sizes (Megatron-Core's alltoall and DeepEP dispatchers, once per
MoE layer forward) makes the host wait for the GPU, after which it must issue the rest of the layer
while the GPU catches up (docs/engine.md, "Host issue").

The engine keeps one host clock per simulated rank: each node adds its host seconds; a compute node
cannot finish before the clock after its issue (the GPU waits for the host: "host-late"); a
collective cannot start before its issue; a dispatch in the forward sets the clock to when the
dispatch starts, plus the device-to-host round trip; with ``host.pipeline_sync`` (Megatron-Core's
batched 1F1B exchange) each pipeline exchange call sets it to when everything the rank issued is
done and the next item's input is in, plus a round trip per call (StepEngine._exchange_sync).

Host seconds per layer come from measurements only (simmoe/data/host/). An op's host time is the
framework's own Python around it plus the issue of its kernel:

    layer seconds = ops x (framework seconds per op + the GPU host's bare issue per op)

``benchmarks/megatron_host_calls.py`` runs Megatron-Core's own layer code on a CPU and gives the
ops per layer and, per op, the host seconds less a bare op of the same phase timed beside it (the
framework's share, as a multiple of a bare op on that CPU); ``benchmarks/host_issue.py`` gives a
GPU host's bare issue per op (forward: an elementwise op; backward: one kernel of autograd's
backward of a linear chain). Where a GPU host's bare CPU op (``cpu_mul_s``) is not measured, its
CPU is assumed as fast as the reference CPU (docs/validation.md, "How sure the host costs are").
A host not measured here (``scaled`` in cpus.yaml: the Grace CPUs) is a measured one with every
cost times a published ratio of the same call's host time on the two CPUs.
A layer's host seconds are split by part of the layer (attention, the pre-MLP norm, router, shared
experts, the dispatcher's preprocessing, the rest of the dispatcher, experts, a dense MLP, the
rest), in proportion to the ops Megatron-Core issues in each (``--parts-out`` of the same
benchmark, forward and backward), and each part's seconds are spread evenly over simmoe's ops of
that part (simmoe's ~25-40 fused ops stand for the ~100-140 the framework issues). A recompute
re-issues only what it recomputes: each recomputed op costs its forward op's share.

The reference run times GQA layers called without RoPE. A model's layers issue their own ops,
counted the same way: GQA with the RoPE the model passes in (MHA models too), or multi-latent
attention. The rest of the layer costs what the reference's does (the same code); its attention
part the reference's framework share per op times the ratio of the two layers timed side by side
in one process (``--attention gqa gqa_rope mla``; attention_share_ratio).

Megatron's EP all-to-all overlap (``parallelism.ep_comm_overlap``) runs each layer as schedule-plan
nodes, one autograd call, event and stream switch per node: its own host work per MoE layer and
micro-batch pair (``benchmarks/megatron_overlap_host.py``, Megatron-Core's own code on a CPU, in
bare CPU ops) is added to the layer's backward, carried by CPU speed like the framework's share.

CUDA graphs (``host.cuda_graph_scope``, Megatron-Core's names) take whole parts off the host: a
graphed part's ops are replayed, and each layer and phase with a graphed part costs one replay
instead (GRAPH_REPLAY_OPS bare ops of the phase). Which parts each scope graphs is Megatron-Core
0.16.1's Transformer Engine path (transformer_layer.py ``_get_submodules_under_cudagraphs``,
moe/moe_layer.py): GRAPH_SCOPE_PARTS.
"""

from __future__ import annotations

import csv
import re
import statistics
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import yaml

from simmoe.errors import InputError
from simmoe.paths import PACKAGE_DATA_DIR
from simmoe.workload.ops import CollectiveOp

HOST_DIR = PACKAGE_DATA_DIR / "host"
CPUS_FILE = "cpus.yaml"
STACKS = {"megatron_core": "megatron-core-0.16.1-cpu.csv"}
PARTS = {"megatron_core": "megatron-core-0.16.1-parts.csv"}  # ops per part of a layer
# Host time Megatron's EP all-to-all overlap adds per MoE layer and micro-batch pair
# (benchmarks/megatron_overlap_host.py)
OVERLAP = {"megatron_core": "megatron-core-0.16.1-overlap.csv"}
# The reference GQA layer and the MLA layer timed side by side (benchmarks/megatron_host_calls.py
# --attention gqa mla): the ratio of MLA's attention's framework share per op to the reference's
ATTENTION = {"megatron_core": "megatron-core-0.16.1-attention.csv"}
# Layers costed at the reference's share per op, their own op counts only: GQA with the model's RoPE
# adds two fused RoPE calls to the reference's attention, below what a side-by-side run resolves
# (one run gave its attention 0.91-1.03x the reference's share, the layers' other ops the same)
COUNTS_ONLY = frozenset({"gqa", "gqa_rope"})
# simmoe's attention types -> the layer measured for them: GQA with the RoPE the model passes in
# (the reference run called it without), which MHA models take too; MLA, its RoPE inside the layer
ATTENTION_LAYER = {"gqa": "gqa_rope", "mha": "gqa_rope", "mla": "mla"}

# Parts each graph scope replays, by layer kind (Megatron-Core 0.16.1, cuda_graph_impl
# transformer_engine): attn the input norm, attention and its residual add; mlp a dense layer's
# pre-MLP norm, MLP and residual add; moe_router the pre-MLP norm, router and (not overlapped)
# shared experts; moe_preprocess the dispatcher's preprocessing (its permute and the split sizes'
# copy to the host, whose wait then comes before the all-to-all).
GRAPH_SCOPE_PARTS = {"attn": {"dense": ("attention",), "moe": ("attention",)},
                     "mlp": {"dense": ("mlp_norm", "mlp", "other"), "moe": ()},
                     "moe_router": {"dense": (), "moe": ("mlp_norm", "router", "shared_experts")},
                     "moe_preprocess": {"dense": (), "moe": ("preprocess",)}}
# A replay's host cost, in bare ops of its phase. Assumption, not measured: the launch plus the
# copies of its inputs into the graph's static buffers (the hidden states and one more).
GRAPH_REPLAY_OPS = 3

# simmoe's op names within a layer (simmoe.workload.builder) -> the part of Megatron-Core's layer
# that issues them; first matching prefix wins.
_OP_PARTS = (("ln1", "attention"), ("attn.", "attention"), ("ln2", "mlp_norm"),
             ("moe.fanout_bwd", "mlp_norm"), ("moe.router", "router"), ("moe.topk", "router"),
             ("shared.", "shared_experts"), ("moe.permute", "preprocess"), ("moe.fc", "experts"),
             ("moe.act", "experts"), ("moe.residual", "other"), ("moe.", "dispatcher"),
             ("ffn.residual", "other"), ("ffn.", "mlp"))


@dataclass(frozen=True)
class HostCosts:
    """Host seconds of one layer's ops on one host CPU."""

    stack: str
    cpu: str
    layer_s: dict  # (kind "dense"|"moe", phase "fwd"|"bwd") -> host seconds per layer and micro-batch
    op_s: float  # one bare forward op (embedding, head, loss: ops outside the layers)
    sync_s: float  # a device-to-host read of an idle GPU
    part_s: dict = None  # (kind, phase) -> {part: eager host seconds}; they sum to layer_s
    graphed: dict = None  # kind -> parts replayed from CUDA graphs (host.cuda_graph_scope)
    replay_s: dict = None  # phase -> host seconds of one graph replay
    # EP all-to-all overlap (parallelism.ep_comm_overlap): the schedule plan's own host seconds per
    # MoE layer and micro-batch, charged to the layer's backward (where the measurement puts it)
    overlap_s: float = 0.0


@lru_cache(maxsize=None)
def _cpus() -> dict:
    with open(HOST_DIR / CPUS_FILE) as f:
        return yaml.safe_load(f)["cpus"]


@lru_cache(maxsize=None)
def _stack_rows(stack: str) -> tuple:
    with open(HOST_DIR / STACKS[stack], newline="") as f:
        return tuple(csv.DictReader(f))


def cpu_names() -> list[str]:
    return list(_cpus())


@lru_cache(maxsize=None)
def part_ops(stack: str, attention: str = "gqa", ep: int | None = None) -> dict:
    """(kind, phase) -> {part: ops Megatron-Core issues} for the measured layer ``attention``
    ("gqa", the reference; "gqa_rope"; "mla"), from the run with ``ep`` ranks (default: the run with the dispatcher's exchange, the
    most ops)."""
    with open(HOST_DIR / PARTS[stack], newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["attention"] == attention]
    ep = max(int(r["ep"]) for r in rows) if ep is None else ep
    out: dict = {}
    for r in rows:
        if int(r["ep"]) == ep:
            got = out.setdefault((r["layer"], r["phase"]), {})
            # the counts do not depend on the local experts; keep one run's
            got.setdefault(r["part"], int(r["ops"]))
    return out


@lru_cache(maxsize=None)
def attention_share_ratio(stack: str, attention: str) -> dict:
    """(kind, phase) -> the framework's host share per op of the attention part of a layer with
    ``attention``, over the per-op share of the same layer with GQA, from the two timed side by side
    in one process (median over runs and local-expert counts). The rest of the two layers is the
    same code issuing the same ops, so all of the difference in their framework seconds is the
    attention's; GQA's attention ops are taken at its layer's mean share (as the model takes
    every op of a layer). The reference run's GQA share times this is the other attention's."""
    if attention in COUNTS_ONLY:
        return {(k, p): 1.0 for k in ("dense", "moe") for p in ("fwd", "bwd")}
    with open(HOST_DIR / ATTENTION[stack], newline="") as f:
        rows = list(csv.DictReader(f))
    probe = {"fwd": "probe_mul_s", "bwd": "probe_bwd_kernel_s"}

    def share(r):  # the framework's seconds per op, in bare CPU ops of the same run
        return (float(r["host_s_per_op"]) - float(r[probe[r["phase"]]])) / float(r["probe_mul_s"])

    runs: dict = {}
    for r in rows:
        runs.setdefault((r["layer"], r["phase"], r["local_experts"], r["run"]), {})[r["attention"]] = r
    gqa_ops, other_ops = part_ops(stack, "gqa", ep=1), part_ops(stack, attention, ep=1)
    ratios: dict = {}
    for (kind, phase, _, _), pair in runs.items():
        gqa, other = pair["gqa"], pair[attention]
        g_att, o_att = gqa_ops[(kind, phase)]["attention"], other_ops[(kind, phase)]["attention"]
        extra = int(other["ops"]) * share(other) - int(gqa["ops"]) * share(gqa)
        ratios.setdefault((kind, phase), []).append((g_att * share(gqa) + extra)
                                                    / (o_att * share(gqa)))
    return {key: statistics.median(v) for key, v in ratios.items()}


def op_part(name: str) -> str:
    """The part of the layer an op of simmoe's (name within its layer, e.g. ``moe.fc1.bwd``)
    stands for."""
    return next((part for prefix, part in _OP_PARTS if name.startswith(prefix)), "other")


def host_costs(stack: str, cpu: str, graph_scope: tuple[str, ...] = (),
               ep_overlap: bool = False, attention: str = "gqa") -> HostCosts:
    """Per-layer host seconds of ``stack`` on ``cpu`` (names in simmoe/data/host/), with the
    parts ``graph_scope`` (Megatron-Core's cuda_graph_scope names) replayed from CUDA graphs,
    with ``ep_overlap`` the EP all-to-all overlap's own host work per MoE layer, for layers with
    ``attention`` (simmoe's model.attention.type)."""
    if stack not in STACKS:
        raise InputError("unknown host stack", field="host.stack", value=stack,
                         allowed=", ".join(["none", *STACKS]))
    cpus = _cpus()
    if cpu not in cpus:
        raise InputError("unknown host CPU", field="host.cpu", value=cpu, allowed=", ".join(cpus))
    entry, factor = cpus[cpu], 1.0
    if "scaled" in entry:  # not measured here: a measured host times a published ratio
        factor = host_scale_factor(entry["scaled"])
        entry = cpus[entry["scaled"]["of"]]
    # The GPU host's bare issue per op, and the column of the same probe in the stack's CPU run.
    bare = {"fwd": (factor * float(entry["probe_mul_s"]), "probe_mul_s"),
            "bwd": (factor * float(entry["bwd_kernel_s"]), "probe_bwd_kernel_s")}
    rows = _stack_rows(stack)
    timed = [r for r in rows if r["host_s_per_op"]]  # the ep > 1 runs' timing includes gloo
    # The framework's Python is carried by CPU speed: as a multiple of a bare CPU op (steady
    # where the seconds drift with the machine's load), times the host's bare CPU op when
    # measured (host_issue.py's mul_cpu), else the reference CPU's (assumption: same speed).
    cpu_op_s = factor * float(entry.get("cpu_mul_s")
                              or statistics.median(float(r["probe_mul_s"]) for r in timed))
    # The reference run times GQA layers without RoPE. The model's layer issues its own ops
    # (counted exactly): the rest of the layer as the reference's, its attention at the
    # reference's framework share per op times the ratio timed side by side (attention_share_ratio).
    layer = ATTENTION_LAYER.get(attention)
    if layer is None:
        raise InputError("no host counts for this attention", field="model.attention.type",
                         value=attention, allowed=", ".join(ATTENTION_LAYER))
    counts, gqa_counts = part_ops(stack, layer), part_ops(stack, "gqa")
    ratio = attention_share_ratio(stack, layer)
    part_s = {}
    for kind in ("dense", "moe"):
        for phase in ("fwd", "bwd"):
            key = (kind, phase)
            gpu_op_s, probe_column = bare[phase]
            ops = max(int(r["ops"]) for r in rows if (r["layer"], r["phase"]) == key)
            if sum(gqa_counts[key].values()) != ops:  # counted with the dispatcher's exchange
                raise ValueError(f"{PARTS[stack]} and {STACKS[stack]} count different ops for {key}")
            framework = statistics.median((float(r["host_s_per_op"]) - float(r[probe_column]))
                                          / float(r["probe_mul_s"])
                                          for r in timed if (r["layer"], r["phase"]) == key)
            part_s[key] = {part: n * ((ratio[key] if part == "attention" else 1.0) * framework
                                      * cpu_op_s + gpu_op_s)
                           for part, n in counts[key].items()}
    layer_s = {key: sum(parts.values()) for key, parts in part_s.items()}
    for scope in graph_scope:
        if scope not in GRAPH_SCOPE_PARTS:
            raise InputError("unknown CUDA graph scope", field="host.cuda_graph_scope", value=scope,
                             allowed=", ".join(GRAPH_SCOPE_PARTS))
    graphed = {kind: frozenset(p for scope in graph_scope for p in GRAPH_SCOPE_PARTS[scope][kind])
               for kind in ("dense", "moe")}
    replay_s = {phase: GRAPH_REPLAY_OPS * b for phase, (b, _) in bare.items()}
    overlap_s = overlap_ops(stack) * cpu_op_s if ep_overlap else 0.0
    return HostCosts(stack, cpu, layer_s, bare["fwd"][0], factor * float(entry["sync_s"]),
                     part_s, graphed, replay_s, overlap_s)


@lru_cache(maxsize=None)
def overlap_ops(stack: str) -> float:
    """The EP overlap's extra host work per MoE layer and micro-batch pair (the schedule plan's
    nodes run against the plain forward and backward, plus building the plan), in bare CPU ops of
    the machine that measured it: pure framework Python (its op count barely changes), so carried
    to a host by CPU speed like the framework's share of each op. Median over the measured rows."""
    with open(HOST_DIR / OVERLAP[stack], newline="") as f:
        rows = list(csv.DictReader(f))
    return statistics.median((float(r["extra_s"]) + float(r["build_s"])) / float(r["probe_mul_s"])
                             for r in rows)


def host_scale_factor(scaled: dict) -> float:
    """How many times a measured host's costs a scaled host's are: the published host seconds of
    one and the same call on the two CPUs (simmoe/data/host/cpus.yaml, ``scaled``)."""
    return float(scaled["host_us"]) / float(scaled["of_host_us"])


def is_host_sync(op) -> bool:
    """The dispatcher copies the split sizes to the host before the forward all-to-all."""
    return (isinstance(op, CollectiveOp) and op.collective == "alltoall_dispatch"
            and op.phase in ("fwd", "recompute"))


_LAYER_PREFIX = re.compile(r"^(v\d+\.)?L\d+\.")


def _layer_key(op) -> tuple[int, str, str]:
    """(layer, host phase, part) of a layer op; a recompute is a forward's issue."""
    return op.layer, "bwd" if op.phase == "bwd" else "fwd", op_part(_LAYER_PREFIX.sub("", op.name))


class _Tally(NamedTuple):
    by_part: dict  # (layer, phase, part) -> ops
    graphed_n: dict  # (layer, phase) -> graphed ops (they share the replay)
    eager_n: dict  # (layer, phase) -> ungraphed ops


def _tally(ops, graphed: dict, moe_layers, phases) -> _Tally:
    """Counts of a program's layer ops in ``phases``."""
    by_part: dict = {}
    graphed_n: dict = {}
    eager_n: dict = {}
    for op in ops:
        if op.layer is None or op.phase not in phases:
            continue
        layer, phase, part = key = _layer_key(op)
        by_part[key] = by_part.get(key, 0) + 1
        into = graphed_n if part in graphed["moe" if layer in moe_layers else "dense"] else eager_n
        into[(layer, phase)] = into.get((layer, phase), 0) + 1
    return _Tally(by_part, graphed_n, eager_n)


def program_host_s(prog, costs: HostCosts, moe_layers,
                   forward=None) -> tuple[tuple[float, ...], tuple[bool, ...]]:
    """(host seconds, host waits for it) per node of a compiled program (op_host_s summed by
    node). A weight-gradient program (deferred W) issues nothing more: its layer's backward was
    charged in full to the backward proper."""
    if prog.grad == "weight":
        return (0.0,) * len(prog.nodes), (False,) * len(prog.nodes)
    per_op = op_host_s(prog.ops, costs, moe_layers, forward.ops if forward is not None else None)
    seconds = tuple(sum(per_op[i] for i in node.ops) for node in prog.nodes)
    syncs = tuple(node.kind == "comm" and is_host_sync(prog.ops[node.ops[0]]) for node in prog.nodes)
    return seconds, syncs


def op_host_s(ops, costs: HostCosts, moe_layers, forward_ops=None) -> list[float]:
    """Host seconds of each op of a program.

    A layer's seconds of a phase are split by part; a part's are shared evenly by simmoe's ops of
    that part in the layer, and a part no simmoe op stands for (``*``: the whole layer, where a
    HostCosts has no parts) by all the layer's ungraphed ops of the phase. Graphed parts cost one
    replay per layer and phase, shared by their ops. Ops outside the layers cost one bare op
    each. A recompute op re-issues only itself: it costs its forward op's share, counted in
    ``forward_ops`` (the stage's forward program's; else in the recompute ops themselves). The EP
    overlap's own seconds (``costs.overlap_s``) are shared by each MoE layer's backward ops."""
    part_s = costs.part_s or {key: {"*": s} for key, s in costs.layer_s.items()}
    graphed = costs.graphed or {"dense": frozenset(), "moe": frozenset()}
    own = _tally(ops, graphed, moe_layers, ("fwd", "bwd", "recompute"))
    ref_rc = _tally(forward_ops, graphed, moe_layers, ("fwd",)) if forward_ops is not None else own
    per_op = []
    for op in ops:
        if op.layer is None or op.phase == "step":
            per_op.append(costs.op_s if op.phase != "step" else 0.0)
            continue
        layer, phase, part = _layer_key(op)
        kind = "moe" if layer in moe_layers else "dense"
        ref = ref_rc if op.phase == "recompute" else own
        overlap = 0.0  # the EP overlap's own work, shared by the layer's backward ops
        if costs.overlap_s and kind == "moe" and op.phase == "bwd":
            overlap = costs.overlap_s / (own.eager_n.get((layer, phase), 0)
                                         + own.graphed_n.get((layer, phase), 0))
        if part in graphed[kind]:
            replay = costs.replay_s[phase] if costs.replay_s else 0.0
            per_op.append(replay / own.graphed_n[(layer, phase)] + overlap)
            continue
        seconds = part_s[(kind, phase)]
        # parts of the framework's layer that no simmoe op of this layer stands for
        orphan = sum(sec for pt, sec in seconds.items()
                     if pt not in graphed[kind] and (layer, phase, pt) not in ref.by_part)
        mine = ref.by_part.get((layer, phase, part)) or own.by_part[(layer, phase, part)]
        eager = ref.eager_n.get((layer, phase)) or own.eager_n[(layer, phase)]
        per_op.append(seconds.get(part, 0.0) / mine + orphan / eager + overlap)
    return per_op
