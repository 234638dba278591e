"""Compile an op list (simmoe.workload.ops) into the node graph the engine runs.

Dependency rule (docs/engine.md): an op waits for the ops named in ``after``, or, when ``after``
is empty, for the op just before it in the list. On top of that, compute ops run one at a time in
list order on the rank's compute stream, and collectives one at a time in list order on its
communication stream (point-to-point sends have their own stream, as NCCL p2p does).

Consecutive compute ops that form a plain chain (each depends only on the previous one, and nothing
else waits for the ones in the middle) are merged into one node: the engine then pays one event
for the chain instead of one per op.

Weight gradients deferred (zero-bubble schedules, DualPipe): a backward op of a weight-carrying
GEMM stands for dgrad + wgrad (simmoe.workload.ops). The same backward op list then compiles twice:
with ``grad="input"`` (the backward proper, its GEMMs timed as dgrad only) and, through
:func:`weight_gradient_ops`, with ``grad="weight"`` (those GEMMs' wgrad, one chain).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from simmoe.errors import InputError
from simmoe.workload.ops import CollectiveOp, ExpertGemmOp, GemmOp, Op

GRADS = ("both", "input", "weight")


@dataclass(frozen=True)
class Node:
    kind: str  # "compute" | "comm"
    ops: tuple[int, ...]  # indices into Program.ops
    deps: tuple[int, ...]  # indices of nodes this node waits for
    label: str


@dataclass(frozen=True)
class Program:
    ops: tuple
    nodes: tuple[Node, ...]
    referenced: tuple[bool, ...]  # node i is waited on by a later node (needs an event)
    p2p_nodes: tuple[int, ...]  # nodes holding a pipeline send
    has_expert: tuple[bool, ...]  # node i contains an ExpertGemmOp
    grad: str = "both"  # backward GEMMs timed as dgrad + wgrad, dgrad only ("input"), wgrad only

    @property
    def empty(self) -> bool:
        return not self.nodes


def _is_comm(op: Op) -> bool:
    return isinstance(op, CollectiveOp)


def weight_gradient_ops(backward: list[Op] | tuple[Op, ...]) -> list[Op]:
    """The weight-gradient GEMMs of a backward op list, as one chain (they wait for nothing but
    each other: their inputs were saved by the backward that ran before)."""
    return [replace(op, after=()) for op in backward
            if isinstance(op, (GemmOp, ExpertGemmOp)) and op.phase == "bwd"]


def compile_program(ops: list[Op] | tuple[Op, ...], where: str = "program",
                    grad: str = "both") -> Program:
    if grad not in GRADS:
        raise InputError("unknown gradient part", field=f"{where}.grad", value=grad,
                         allowed=", ".join(GRADS))
    ops = tuple(ops)
    index = {}
    for i, op in enumerate(ops):
        if op.name in index:
            raise InputError("two ops of one program share a name", field=f"{where}.ops",
                             value=op.name, allowed="distinct op names (after refers to them)")
        index[op.name] = i
    deps: list[tuple[int, ...]] = []
    for i, op in enumerate(ops):
        if op.after:
            missing = [a for a in op.after if a not in index or index[a] >= i]
            if missing:
                raise InputError(f"op {op.name!r} waits for an op that does not come before it",
                                 field=f"{where}.{op.name}.after", value=missing[0],
                                 allowed="names of earlier ops of the same program")
            deps.append(tuple(sorted({index[a] for a in op.after})))
        else:
            deps.append((i - 1,) if i else ())
    dependents = [0] * len(ops)
    for ds in deps:
        for d in ds:
            dependents[d] += 1

    node_of_op = [-1] * len(ops)
    nodes: list[list] = []  # [kind, ops, deps(set of op idx)]
    for i, op in enumerate(ops):
        comm = _is_comm(op)
        prev = nodes[-1] if nodes else None
        chain = (not comm and prev is not None and prev[0] == "compute" and deps[i] == (i - 1,)
                 and node_of_op[i - 1] == len(nodes) - 1 and dependents[i - 1] == 1)
        if chain:
            prev[1].append(i)
        else:
            nodes.append(["comm" if comm else "compute", [i], set(deps[i])])
        node_of_op[i] = len(nodes) - 1
    out = []
    for k, (kind, members, dep_ops) in enumerate(nodes):
        node_deps = tuple(sorted({node_of_op[d] for d in dep_ops} - {k}))
        names = [ops[i].name for i in members]
        label = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]} ({len(names)} ops)"
        out.append(Node(kind, tuple(members), node_deps, label))
    referenced = [False] * len(out)
    for n in out:
        for d in n.deps:
            referenced[d] = True
    p2p = tuple(k for k, n in enumerate(out) if n.kind == "comm"
                and ops[n.ops[0]].collective == "p2p_send")
    has_expert = tuple(any(isinstance(ops[i], ExpertGemmOp) and not ops[i].shared for i in n.ops)
                       for n in out)
    return Program(ops, tuple(out), tuple(referenced), p2p, has_expert, grad)
