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
A layer's host seconds are spread evenly over simmoe's ops of that layer and phase (simmoe's ~25-40
fused ops stand for the ~100-140 the framework issues).
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from functools import lru_cache

import yaml

from simmoe.errors import InputError
from simmoe.paths import PACKAGE_DATA_DIR
from simmoe.workload.ops import CollectiveOp

HOST_DIR = PACKAGE_DATA_DIR / "host"
CPUS_FILE = "cpus.yaml"
STACKS = {"megatron_core": "megatron-core-0.16.1-cpu.csv"}


@dataclass(frozen=True)
class HostCosts:
    """Host seconds of one layer's ops on one host CPU."""

    stack: str
    cpu: str
    layer_s: dict  # (kind "dense"|"moe", phase "fwd"|"bwd") -> host seconds per layer and micro-batch
    op_s: float  # one bare forward op (embedding, head, loss: ops outside the layers)
    sync_s: float  # a device-to-host read of an idle GPU


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


def host_costs(stack: str, cpu: str) -> HostCosts:
    """Per-layer host seconds of ``stack`` on ``cpu`` (names in simmoe/data/host/)."""
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
    layer_s = {}
    for kind in ("dense", "moe"):
        for phase in ("fwd", "bwd"):
            gpu_op_s, probe_column = bare[phase]
            mine = [r for r in rows if r["layer"] == kind and r["phase"] == phase]
            ops = max(int(r["ops"]) for r in mine)  # counted with the dispatcher's exchange
            framework = statistics.median((float(r["host_s_per_op"]) - float(r[probe_column]))
                                          / float(r["probe_mul_s"])
                                          for r in timed if r["layer"] == kind and r["phase"] == phase)
            layer_s[(kind, phase)] = ops * (framework * cpu_op_s + gpu_op_s)
    return HostCosts(stack, cpu, layer_s, bare["fwd"][0], factor * float(entry["sync_s"]))


def host_scale_factor(scaled: dict) -> float:
    """How many times a measured host's costs a scaled host's are: the published host seconds of
    one and the same call on the two CPUs (simmoe/data/host/cpus.yaml, ``scaled``)."""
    return float(scaled["host_us"]) / float(scaled["of_host_us"])


def is_host_sync(op) -> bool:
    """The dispatcher copies the split sizes to the host before the forward all-to-all."""
    return (isinstance(op, CollectiveOp) and op.collective == "alltoall_dispatch"
            and op.phase in ("fwd", "recompute"))


def program_host_s(prog, costs: HostCosts, moe_layers) -> tuple[tuple[float, ...], tuple[bool, ...]]:
    """(host seconds, host waits for it) per node of a compiled program. A layer's seconds of a
    phase are shared evenly by the program's ops of that layer and phase; ops outside the layers
    cost one bare op each. A weight-gradient program (deferred W) issues nothing more: its
    layer's backward was charged in full to the backward proper."""
    if prog.grad == "weight":
        return (0.0,) * len(prog.nodes), (False,) * len(prog.nodes)
    count: dict = {}
    for op in prog.ops:
        if op.layer is not None:
            key = (op.layer, "bwd" if op.phase == "bwd" else "fwd")
            count[key] = count.get(key, 0) + 1
    per_op = []
    for op in prog.ops:
        if op.layer is None or op.phase == "step":
            per_op.append(costs.op_s if op.phase != "step" else 0.0)
            continue
        phase = "bwd" if op.phase == "bwd" else "fwd"
        kind = "moe" if op.layer in moe_layers else "dense"
        per_op.append(costs.layer_s[(kind, phase)] / count[(op.layer, phase)])
    seconds = tuple(sum(per_op[i] for i in node.ops) for node in prog.nodes)
    syncs = tuple(node.kind == "comm" and is_host_sync(prog.ops[node.ops[0]]) for node in prog.nodes)
    return seconds, syncs
