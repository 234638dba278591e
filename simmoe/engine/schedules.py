"""Pipeline schedules as pure functions: who runs which (micro-batch, chunk, fwd|bwd), in what order.

Each schedule returns, per pipeline rank, the ordered list of :class:`Item`. A rank holds ``v``
model chunks (virtual stages); chunk ``c`` on rank ``r`` is virtual stage ``c * p + r`` (Megatron's
interleaving), so with ``v = 1`` chunk 0 is simply stage ``r``.

- ``one_f_one_b(p, m)``: PipeDream-Flush / Megatron 1F1B. Rank r runs ``min(p - r - 1, m)``
  warm-up forwards, then alternates one forward and one backward, then drains the backwards.
  With equal op times t_f, t_b and no communication the step takes (m + p - 1)(t_f + t_b): the
  bubble fraction is (p - 1) / (m + p - 1).
- ``interleaved_1f1b(p, m, v)``: Megatron's interleaved schedule (Narayanan et al. 2021). Needs
  m a multiple of p. Forward k (0..m*v-1) of a rank is chunk (k // p) % v of micro-batch
  (k // (p v)) p + k % p; backward k walks the chunks in reverse. Warm-up:
  (p - r - 1) * 2 + (v - 1) * p forwards (all m v when m == p). Bubble shrinks by v.
- ``dualpipe(p, m)``: DualPipe (DeepSeek-V3 report §3.2.1; the order of deepseek-ai/DualPipe's
  reference schedule). Micro-batches enter from both ends: 0..m/2-1 at rank 0 (rank r runs them on
  stage r), m/2..m-1 at rank p-1 (rank r runs them on stage p-1-r, ``reverse=True``), so each rank
  holds two model chunks. Per rank, eight phases (below, :func:`dualpipe`): warm-up forwards of
  both directions, zero-bubble backwards (``defer_w``: input gradient only, the weight gradient
  later as a ``wgt`` item), the steady state of *paired* slots, a forward of one direction with a
  backward of the other, whose ops share the compute stream so each one's all-to-all runs under
  the other's compute; then the cool-down backwards with the deferred weight gradients filling the
  bubbles. Needs p even and m even with m >= 2p (as the reference). With op times F, B (input
  gradient), W (weight gradient) and free communication the bubble is (p/2 - 1)(F&B + B - 3W).
- ``interleaved_lockstep(p, m, v)``: the same interleaving as torch.distributed.pipelining's
  ScheduleInterleaved1F1B up to torch 2.9 (a PipelineScheduleMulti) tabulates it, one action per
  time step with idle steps where a rank waits, and each item carries its time ``step``. That
  runtime ends every time step with one batched send/recv that the next step waits for
  (``parallelism.pipeline_p2p: blocking``, docs/engine.md). Its warm-up is Megatron's but capped
  at m v forwards, which differs from Megatron's all-forwards-first when m == p.
- Blocking plans (``build_plan``; ``parallelism.pipeline_p2p: blocking``): per rank its slots and
  the commits between them, each a batch of sends and receives the rank waits for; the torch
  table's (``lockstep_plan``) and DualPipe's reference's (``dualpipe_plan``). ``plan_makespan``
  is their constant-time oracle.
- EP all-to-all overlap (``build_schedule(..., ep_overlap=True)``, ``parallelism.ep_comm_overlap``):
  Megatron's ``--overlap-moe-expert-parallel-comm`` (docs/user-guide/features/moe_a2a_overlap.md,
  megatron/core/pipeline_parallel/combined_1f1b.py). Every steady-state step of the interleaved
  schedule becomes a paired slot, the forward of one micro-batch with the backward of another,
  after one extra warm-up forward (so the pair's backward never waits for its own forward); with
  pp = 1, forward 0 alone, then forward i+1 paired with backward i, then the last backward alone.
  Megatron runs it on the interleaved schedule (vpp > 1) or without a pipeline, nothing else.
- Runs (``build_schedule(..., per_run=k)``, ``parallelism.schedule_micro_batches``): the step's m
  micro-batches as m/k schedules of k back to back, each filled and drained, as
  torch.distributed.pipelining runs gradient accumulation (one ``step()`` per local batch).
A paired item carries ``overlap=True``: it runs together with the item just before it. Every
schedule keeps each micro-batch's forward before its backward (and a deferred weight gradient after
its backward) on each stage, and every rank runs each (micro-batch, stage, phase) exactly once
(tests check both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from simmoe.errors import InputError

Phase = Literal["fwd", "bwd", "wgt"]
SCHEDULES = ("1f1b", "interleaved", "dualpipe")


@dataclass(frozen=True)
class Item:
    mb: int  # micro-batch index, 0..m-1
    chunk: int  # model chunk on this rank, 0..v-1 (virtual stage chunk * p + rank)
    phase: Phase  # "wgt": a weight gradient deferred by an earlier backward with defer_w
    overlap: bool = False  # runs together with the previous item of this rank (a paired slot)
    defer_w: bool = False  # backward of the input gradient only; its weight gradient is a later wgt
    reverse: bool = False  # DualPipe's reversed pipeline (fed from rank p-1): stage p-1-rank
    step: int | None = None  # time step in a lockstep table (interleaved_lockstep); else None

    def __repr__(self) -> str:  # compact: F3, B0c1, +F4, b2 (input gradient only), W2, F9r
        c = f"c{self.chunk}" if self.chunk else ""
        tag = "b" if self.defer_w else self.phase[0].upper()
        return f"{'+' if self.overlap else ''}{tag}{self.mb}{c}{'r' if self.reverse else ''}"


def virtual_stage(it: Item, p: int, rank: int) -> int:
    """The virtual stage an item of pipeline rank ``rank`` runs: ``chunk * p + rank``, or on
    DualPipe's reversed pipeline ``p - 1 - rank`` (stage s of it lives on rank p - 1 - s)."""
    return p - 1 - rank if it.reverse else it.chunk * p + rank


def stage_rank(stage: int, p: int, reverse: bool) -> int:
    """Pipeline rank that runs virtual ``stage`` (of the reversed pipeline when ``reverse``)."""
    return p - 1 - stage % p if reverse else stage % p


def _check(p: int, m: int, field_p: str = "parallelism.pp") -> None:
    if not isinstance(p, int) or p < 1:
        raise InputError("pipeline size must be a positive integer", field=field_p, value=p,
                         allowed="1, 2, 3, ...")
    if not isinstance(m, int) or m < 1:
        raise InputError("micro-batches per step must be a positive integer",
                         field="micro_batches", value=m,
                         allowed="training.global_batch / (training.micro_batch * dp) >= 1")


def one_f_one_b(p: int, m: int, ep_overlap: bool = False) -> list[list[Item]]:
    """1F1B (PipeDream-Flush): per rank, warm-up forwards, steady 1F1B, cool-down backwards.
    ``ep_overlap`` (pp = 1 only, as Megatron): one more warm-up forward, and each steady-state
    forward paired with the backward after it."""
    _check(p, m)
    if ep_overlap and p != 1:
        raise InputError("Megatron's EP all-to-all overlap pairs 1F1B steps only without a pipeline "
                         "or on the interleaved schedule", field="parallelism.ep_comm_overlap",
                         value=True, allowed="false, pp: 1, or schedule: interleaved with vpp >= 2")
    out = []
    for r in range(p):
        warm = min(p - r - 1 + int(ep_overlap), m)
        items = [Item(i, 0, "fwd") for i in range(warm)]
        for k in range(m - warm):
            items += [Item(warm + k, 0, "fwd"), Item(k, 0, "bwd", overlap=ep_overlap)]
        items += [Item(k, 0, "bwd") for k in range(m - warm, m)]
        out.append(items)
    return out


def _interleaved_ids(k: int, p: int, v: int, forward: bool) -> tuple[int, int]:
    """(micro-batch, chunk) of a rank's k-th forward (or backward) in Megatron's interleaving."""
    group = k // (p * v)
    chunk = (k // p) % v
    if not forward:
        chunk = v - 1 - chunk
    return group * p + k % p, chunk


def _check_interleaved(p: int, m: int, v: int, multiple: bool = True) -> None:
    """p, m and v of an interleaved schedule; with ``multiple``, m a multiple of p."""
    _check(p, m)
    if not isinstance(v, int) or v < 1:
        raise InputError("virtual stages per rank must be a positive integer",
                         field="parallelism.vpp", value=v, allowed="1, 2, 3, ...")
    if multiple and m % p:
        raise InputError(f"the interleaved schedule needs the micro-batches per step ({m}) to be "
                         f"a multiple of parallelism.pp={p}", field="training.global_batch",
                         value=m, allowed=f"global_batch / (micro_batch * dp) a multiple of {p}")


def interleaved_1f1b(p: int, m: int, v: int, ep_overlap: bool = False) -> list[list[Item]]:
    """Megatron's interleaved 1F1B with ``v`` chunks per rank (``v = 1`` gives 1F1B).
    ``ep_overlap`` (Megatron's --overlap-moe-expert-parallel-comm): one more warm-up forward, then
    each steady-state forward and the backward after it run as one paired slot."""
    _check_interleaved(p, m, v, multiple=v > 1)
    if v == 1:
        return one_f_one_b(p, m, ep_overlap)
    total = m * v
    out = []
    for r in range(p):
        warm = total if m == p else min((p - r - 1) * 2 + (v - 1) * p + int(ep_overlap), total)
        items = [Item(*_interleaved_ids(k, p, v, True), "fwd") for k in range(warm)]
        for k in range(total - warm):
            items.append(Item(*_interleaved_ids(warm + k, p, v, True), "fwd"))
            items.append(Item(*_interleaved_ids(k, p, v, False), "bwd", overlap=ep_overlap))
        items += [Item(*_interleaved_ids(k, p, v, False), "bwd") for k in range(total - warm, total)]
        out.append(items)
    return out


def interleaved_lockstep(p: int, m: int, v: int) -> list[list[Item]]:
    """torch.distributed.pipelining's interleaved 1F1B table (PipelineScheduleMulti, torch <= 2.9):
    per rank the items in order, each with the time ``step`` it runs at.

    Rank r idles r steps, runs ``w = min((v - 1) p + 2 (p - 1 - r), m v)`` warm-up forwards, idles
    until step v p + 2 (p - 1 - r) - 1 (its first backward's input arrives then with unit op times
    and free sends), alternates a forward and a backward, then runs the remaining w backwards one
    every other step (an idle step before each, keeping the steps aligned with the ranks still in
    1F1B). A rank's k-th forward runs chunk (k // p) % v, its k-th backward chunk
    v - 1 - (k // p) % v (k from 0); micro-batches run in order on each chunk. Needs m a multiple
    of p (as :func:`interleaved_1f1b`)."""
    _check_interleaved(p, m, v)
    total = m * v
    out = []
    for r in range(p):
        warm = min((v - 1) * p + 2 * (p - 1 - r), total)
        next_f, next_b = [0] * v, [0] * v
        items: list[Item] = []
        t = r

        def add(k: int, forward: bool) -> None:
            nonlocal t
            if forward:
                chunk = (k // p) % v
                mb, next_f[chunk] = next_f[chunk], next_f[chunk] + 1
            else:
                chunk = v - 1 - ((k - warm) // p) % v
                mb, next_b[chunk] = next_b[chunk], next_b[chunk] + 1
            items.append(Item(mb, chunk, "fwd" if forward else "bwd", step=t))
            t += 1

        for k in range(total + warm):
            if k < warm:
                add(k, True)
                if k == warm - 1:
                    t += max(0, v * p + 2 * (p - 1 - r) - (warm + r))
            elif k < total:
                add(k, True)
                add(k, False)
            else:
                t += 1
                add(k, False)
        out.append(items)
    return out


# A blocking plan (``parallelism.pipeline_p2p: blocking``): per rank, what it does in order. ("slot", k)
# runs the rank's k-th slot (:func:`slots`); ("commit", sends, receives) posts those sends and
# receives as one batch and waits until all are done. A key names a transfer by what it delivers:
# ("fwd", micro-batch, stage receiving it) or ("bwd", micro-batch, stage receiving it), stages
# counted along the micro-batch's own pipeline (DualPipe's reversed one for its second half).


def send_key(it: Item, p: int, rank: int, stages: int) -> tuple | None:
    """The transfer an item's output goes out as; None when it stays on the rank or leaves the
    pipeline (the last stage's forward, the first stage's backward, a weight gradient)."""
    s = virtual_stage(it, p, rank)
    to = s + 1 if it.phase == "fwd" else s - 1 if it.phase == "bwd" else -1
    if not 0 <= to < stages or stage_rank(to, p, it.reverse) == rank:
        return None
    return (it.phase, it.mb, to)


def receives_input(it: Item, p: int, rank: int, stages: int) -> bool:
    """Whether an item's input comes from another rank (a forward after the first stage, a
    backward before the last)."""
    s = virtual_stage(it, p, rank)
    frm = s - 1 if it.phase == "fwd" else s + 1 if it.phase == "bwd" else -1
    return 0 <= frm < stages and stage_rank(frm, p, it.reverse) != rank


def exchange_calls(before: Item | None, after: Item | None, p: int, rank: int, stages: int) -> int:
    """Megatron-Core's pipeline exchange calls between two consecutive items of a rank's 1F1B
    order (None: the start or the end of the rank's items): the send of ``before``'s output and
    the receive of ``after``'s input go as one batched call when one is a forward and the other a
    backward (send_forward_recv_backward, send_backward_recv_forward), as two calls when both are
    forwards (warm-up: send_forward, recv_forward) or both backwards (cool-down), and a side with
    nothing to move is no call (Megatron's first stage receives no forward input, its last stage no
    output gradient). With batch_p2p_sync each call ends in a device synchronize."""
    send = before is not None and send_key(before, p, rank, stages) is not None
    recv = after is not None and receives_input(after, p, rank, stages)
    if send and recv:
        return 2 if before.phase == after.phase else 1
    return int(send or recv)


def lockstep_plan(schedule: list[list[Item]]) -> list[list[tuple]]:
    """The blocking plan of a lockstep table (:func:`interleaved_lockstep`, items with ``step``):
    at each time step a rank runs its item, then commits its send with the receives of what its
    neighbours computed in that step (torch <= 2.9's PipelineScheduleMulti); an idle step commits
    its receives only."""
    p = len(schedule)
    stages = p * (1 + max(it.chunk for items in schedule for it in items))
    steps = 1 + max(it.step for items in schedule for it in items)
    incoming: dict[tuple[int, int], list] = {}
    for rank, items in enumerate(schedule):
        for it in items:
            key = send_key(it, p, rank, stages)
            if key is not None:
                incoming.setdefault((stage_rank(key[2], p, False), it.step), []).append(key)
    plan = []
    for rank, items in enumerate(schedule):
        at = {it.step: k for k, it in enumerate(items)}
        entries: list[tuple] = []
        for t in range(steps):
            sends: tuple = ()
            if t in at:
                entries.append(("slot", at[t]))
                key = send_key(items[at[t]], p, rank, stages)
                sends = () if key is None else (key,)
            recvs = tuple(incoming.get((rank, t), ()))
            if sends or recvs:
                entries.append(("commit", sends, recvs))
        plan.append(entries)
    return plan


def dualpipe_plan(p: int, m: int) -> list[list[tuple]]:
    """The blocking plan of :func:`dualpipe`, as deepseek-ai/DualPipe's reference runs it: before
    each chunk a rank posts the receives that chunk needs (in step 2 the next forward's one chunk
    early) and commits them together with the sends queued since its last commit (the outputs of
    the chunks before), waiting for all of them; a weight-gradient chunk commits what is queued.
    Slot k of the plan is slot k of ``slots(dualpipe(p, m)[rank])`` (checked here)."""
    sched = dualpipe(p, m)
    n, half = m // 2, p // 2
    plan = []
    for r in range(p):
        h = min(r, p - 1 - r)
        second = r >= half
        middle = r in (half - 1, half)
        ids = {k: [0, 0] for k in ("rf", "sf", "rb", "sb")}
        ops: list[tuple[str, tuple]] = []
        entries: list[tuple] = []
        computes: list[tuple] = []

        def stage(d: int) -> int:  # this rank's stage in direction d's pipeline
            return r if d == 0 else p - 1 - r

        def transfer(what: str, kind: str, d: int, to: int) -> None:
            if not 0 <= to < p:
                return
            mb = d * n + ids[what][d]
            ids[what][d] += 1
            ops.append((what[0], (kind, mb, to if what[0] == "s" else stage(d))))

        def recv_f(phase):
            d = phase ^ second
            if stage(d) > 0:
                transfer("rf", "fwd", d, stage(d))

        def send_f(phase):
            d = phase ^ second
            transfer("sf", "fwd", d, stage(d) + 1)

        def recv_b(phase):
            d = phase ^ second
            if stage(d) < p - 1:
                transfer("rb", "bwd", d, stage(d))

        def send_b(phase):
            d = phase ^ second
            transfer("sb", "bwd", d, stage(d) - 1)

        def commit():
            if ops:
                entries.append(("commit", tuple(k for w, k in ops if w == "s"),
                                tuple(k for w, k in ops if w == "r")))
                ops.clear()

        def compute(*what):
            entries.append(("slot", len(computes)))
            computes.append(what)

        def chunk(kind, phase, recv=True, send=True):  # the reference's _forward/_backward_chunk
            if recv:
                (recv_f if kind == "F" else recv_b)(phase)
            commit()
            compute(kind, phase ^ second)
            if send:
                (send_f if kind == "F" else send_b)(phase)

        def fwd_bwd_chunk(phase0, phase1, recv0=True):
            if recv0:
                recv_f(phase0)
            recv_b(phase1)
            commit()
            compute("F", phase0 ^ second, "B", phase1 ^ second)
            send_f(phase0)
            send_b(phase1)

        def weight_chunk():
            commit()
            compute("W")

        for _ in range((half - h - 1) * 2):  # 1
            chunk("F", 0)
        recv_f(0)  # 2
        for i in range(h + 1):
            chunk("F", 0, recv=False, send=middle)
            recv_f(0)
            chunk("F", 1, send=not middle or i < h)
            if not middle:
                send_f(0)
        for _ in range(half - h - 1):  # 3
            chunk("B", 1)
            recv_f(1)
            weight_chunk()
            chunk("F", 1, recv=False)
        for i in range(n - p + h + 1):  # 4
            if i == 0 and middle:
                chunk("F", 0, recv=False, send=False)
                send_f(1)
                chunk("B", 1, send=False)
                send_f(0)
                send_b(1)
            else:
                fwd_bwd_chunk(0, 1, recv0=i > 0)
            fwd_bwd_chunk(1, 0)
        for _ in range(half - h - 1):  # 5
            chunk("B", 1)
            fwd_bwd_chunk(1, 0)
        for _ in range(h + 1):  # 6
            chunk("B", 1)
            chunk("B", 0)
        for _ in range(half - h - 1):  # 7
            weight_chunk()
            chunk("B", 0)
        for _ in range(h + 1):  # 8
            weight_chunk()
        commit()
        # The computes must be the schedule's slots, in order.
        got = [tuple(x for it in slot for x in ("W",) if it.phase == "wgt") or
               tuple(x for it in slot for x in (it.phase[0].upper(), int(it.reverse)))
               for slot in slots(sched[r])]
        if got != computes:
            raise AssertionError(f"DualPipe plan of rank {r} does not follow dualpipe({p}, {m})")
        plan.append(entries)
    return plan


def plan_makespan(schedule: list[list[Item]], plan: list[list[tuple]], t_fwd: float, t_bwd: float,
                  t_wgt: float = 0.0, t_send: float = 0.0) -> float:
    """Step time of a blocking plan with constant op times (a pure oracle; times as
    :func:`makespan`). A rank runs its entries in order: a slot takes the sum of its items' times;
    a commit posts its sends and receives when the rank reaches it, each transfer starts when both
    ends have posted it and takes ``t_send``, and the rank goes on when all of the commit's are
    done."""
    p = len(schedule)
    dur = {"fwd": t_fwd, "bwd": t_bwd, "wgt": t_wgt}
    rank_slots = [slots(items) for items in schedule]
    posted: dict[tuple, list] = {}  # key -> [send posted at, receive posted at]
    clock = [0.0] * p
    pos = [0] * p
    reached = [False] * p  # the rank has posted its current commit
    progress = True
    while progress:
        progress = False
        for r in range(p):
            while pos[r] < len(plan[r]):
                entry = plan[r][pos[r]]
                if entry[0] == "slot":
                    clock[r] += sum(dur[it.phase] - (t_wgt if it.defer_w else 0.0)
                                    for it in rank_slots[r][entry[1]])
                else:
                    _, sends, recvs = entry
                    if not reached[r]:
                        for i, keys in ((0, sends), (1, recvs)):
                            for key in keys:
                                posted.setdefault(key, [None, None])[i] = clock[r]
                        reached[r] = True
                        progress = True
                    ends = [posted[key] for key in sends + recvs]
                    if any(None in e for e in ends):
                        break
                    clock[r] = max([clock[r]] + [max(e) + t_send for e in ends])
                    reached[r] = False
                pos[r] += 1
                progress = True
    if any(pos[r] < len(plan[r]) for r in range(p)):
        raise RuntimeError("blocking plan deadlocks")
    return max(clock)


def lockstep_makespan(schedule: list[list[Item]], t_fwd: float, t_bwd: float,
                      t_send: float) -> float:
    """Step time of a lockstep table (:func:`interleaved_lockstep`) with constant op times and
    sends of ``t_send`` seconds: :func:`plan_makespan` of its :func:`lockstep_plan`."""
    return plan_makespan(schedule, lockstep_plan(schedule), t_fwd, t_bwd, 0.0, t_send)


def build_plan(name: str, p: int, m: int, v: int = 1, per_run: int | None = None,
               schedule: list[list[Item]] | None = None) -> list[list[tuple]]:
    """The blocking plan of ``build_schedule(name, p, m, v, per_run, lockstep=True)`` (interleaved:
    torch's table; DualPipe: the reference's commits; runs one after another). ``schedule``: that
    schedule when the caller has built it already."""
    if name == "interleaved":
        return lockstep_plan(schedule or build_schedule(name, p, m, v, per_run, lockstep=True))
    if name != "dualpipe":
        raise InputError("blocking pipeline sends are modelled for torch's interleaved runtime and "
                         "DualPipe's reference", field="parallelism.pipeline_p2p", value="blocking",
                         allowed="async, or parallelism.schedule: interleaved or dualpipe")
    run = m if per_run is None or per_run >= m else per_run

    def shifted(keys: tuple, offset: int) -> tuple:
        return tuple((kind, mb + offset, stage) for kind, mb, stage in keys)

    out = []
    for entries in dualpipe_plan(p, run):
        per = sum(1 for e in entries if e[0] == "slot")
        out.append([("slot", e[1] + j * per) if e[0] == "slot" else
                    ("commit", shifted(e[1], j * run), shifted(e[2], j * run))
                    for j in range(m // run) for e in entries])
    return out


def micro_batch_constraint(schedule: str, pp: int, per_run: int | None = None) -> tuple[int, int]:
    """(minimum, multiple) of the micro-batch counts ``schedule`` can run on ``pp`` stages, in runs
    of ``per_run`` micro-batches when given (parallelism.schedule_micro_batches)."""
    if schedule == "dualpipe":
        minimum, multiple = 2 * pp, 2  # half enter from each end; pairing needs both directions
    else:
        minimum, multiple = 1, 1
    if per_run is not None:
        minimum, multiple = max(minimum, per_run), math.lcm(multiple, per_run)
    return minimum, multiple


def dualpipe(p: int, m: int) -> list[list[Item]]:
    """DualPipe, bidirectional, in the order of deepseek-ai/DualPipe's reference schedule.

    Rank r with h = min(r, p-1-r) calls "near" the direction in which it sits in the first half of
    the pipeline (for r < p/2 the one fed from rank 0, stage r; else the reversed one, stage
    p-1-r) and "far" the other. With n = m/2 micro-batches per direction, P = p/2:

    1. 2(P-h-1) forwards near;            2. h+1 times: forward near, forward far;
    3. P-h-1 times: backward far with its weight gradient deferred, that weight gradient, forward far;
    4. n-p+h+1 times: pair (forward near, backward far), pair (forward far, backward near) (the
       middle ranks run their first near forward and far backward unpaired);
    5. P-h-1 times: backward far, pair (forward far, backward near);
    6. h+1 times: backward far, backward near (the second half of them defer their weight gradients);
    7. P-h-1 times: a deferred weight gradient, backward near (deferred);
    8. the remaining h+1 weight gradients.

    Backwards within a direction follow its forwards' order; deferred weight gradients run first
    in, first out.
    """
    _check(p, m)
    if p < 2 or p % 2:
        raise InputError("DualPipe feeds micro-batches from both ends of the pipeline and needs an "
                         "even pp >= 2", field="parallelism.pp", value=p, allowed="an even pp >= 2")
    if m % 2 or m < 2 * p:
        raise InputError(f"DualPipe needs an even number of micro-batches per step, at least 2 x "
                         f"pp = {2 * p} (got {m} micro-batches)", field="training.global_batch",
                         value=m,
                         allowed=f"global_batch / (micro_batch * dp) even and >= {2 * p}")
    n, half = m // 2, p // 2
    out = []
    for r in range(p):
        h = min(r, p - 1 - r)
        middle = h == half - 1
        # Direction 0 is fed from rank 0 (micro-batches 0..n-1), 1 from rank p-1 (n..m-1).
        near, far = (0, 1) if r < half else (1, 0)
        next_f = [0, n]
        next_b = [0, n]
        deferred: list[Item] = []  # weight gradients waiting, first in first out
        items: list[Item] = []

        def fwd(d: int, overlap: bool = False) -> None:
            items.append(Item(next_f[d], 0, "fwd", overlap=overlap, reverse=d == 1))
            next_f[d] += 1

        def bwd(d: int, defer: bool = False, overlap: bool = False) -> None:
            it = Item(next_b[d], 0, "bwd", overlap=overlap, defer_w=defer, reverse=d == 1)
            next_b[d] += 1
            items.append(it)
            if defer:
                deferred.append(Item(it.mb, 0, "wgt", reverse=it.reverse))

        def wgt() -> None:
            items.append(deferred.pop(0))

        for _ in range(2 * (half - h - 1)):  # 1
            fwd(near)
        for _ in range(h + 1):  # 2
            fwd(near)
            fwd(far)
        for _ in range(half - h - 1):  # 3
            bwd(far, defer=True)
            wgt()
            fwd(far)
        for i in range(n - p + h + 1):  # 4
            if i == 0 and middle:
                # The reference runs these two unpaired on the middle ranks to shorten the bubble.
                fwd(near)
                bwd(far)
            else:
                fwd(near)
                bwd(far, overlap=True)
            fwd(far)
            bwd(near, overlap=True)
        for _ in range(half - h - 1):  # 5
            bwd(far)
            fwd(far)
            bwd(near, overlap=True)
        defer = False
        for i in range(h + 1):  # 6
            if i == (h + 1) // 2 and h % 2 == 1:
                defer = True
            bwd(far, defer=defer)
            if i == (h + 1) // 2 and h % 2 == 0:
                defer = True
            bwd(near, defer=defer)
        for _ in range(half - h - 1):  # 7
            wgt()
            bwd(near, defer=True)
        while deferred:  # 8: h + 1 of them
            wgt()
        out.append(items)
    return out


def build_schedule(name: str, p: int, m: int, v: int = 1, per_run: int | None = None,
                   lockstep: bool = False, ep_overlap: bool = False) -> list[list[Item]]:
    """The schedule named by ``parallelism.schedule``. ``per_run``
    (``parallelism.schedule_micro_batches``): the step's ``m`` micro-batches run as ``m / per_run``
    schedules of ``per_run`` micro-batches back to back, each with its own fill and drain (run j
    holds micro-batches j*per_run ..); None or >= m: one run. ``lockstep``
    (``parallelism.pipeline_p2p: blocking``): torch's time-step table of the interleaved schedule
    (:func:`interleaved_lockstep`), runs following each other in time steps too. ``ep_overlap``
    (``parallelism.ep_comm_overlap``): Megatron's EP all-to-all overlap, steady-state forwards and
    backwards paired (1f1b with p = 1, interleaved)."""
    if per_run is None or per_run >= m:
        return _one_run(name, p, m, v, lockstep, ep_overlap)
    if not isinstance(per_run, int) or per_run < 1 or m % per_run:
        raise InputError(f"the micro-batches per step ({m}) are not a whole number of schedule runs",
                         field="parallelism.schedule_micro_batches", value=per_run,
                         allowed=f"a divisor of {m} (global_batch / (micro_batch * dp)), or null")
    run = _one_run(name, p, per_run, v, lockstep, ep_overlap)
    steps = 1 + max((it.step for items in run for it in items if it.step is not None), default=-1)
    return [[replace(it, mb=it.mb + j * per_run,
                     step=None if it.step is None else it.step + j * steps)
             for j in range(m // per_run) for it in items]
            for items in run]


def _one_run(name: str, p: int, m: int, v: int, lockstep: bool = False,
             ep_overlap: bool = False) -> list[list[Item]]:
    if ep_overlap and (lockstep or name == "dualpipe"):
        raise InputError("Megatron's EP all-to-all overlap pairs the steps of its own 1F1B "
                         "schedules (DualPipe pairs its steady state already; torch's lockstep "
                         "runtime has no such pairing)", field="parallelism.ep_comm_overlap",
                         value=True, allowed="false, or schedule 1f1b (pp 1) / interleaved with "
                         "pipeline_p2p: async")
    if lockstep:
        if name != "interleaved":
            raise InputError("a lockstep table is torch.distributed.pipelining's looped runtime "
                             "(PipelineScheduleMulti): the interleaved schedule only",
                             field="parallelism.pipeline_p2p", value="blocking",
                             allowed="async, or parallelism.schedule: interleaved")
        return interleaved_lockstep(p, m, v)
    if name == "1f1b":
        if v != 1:
            raise InputError("1f1b runs one model chunk per rank", field="parallelism.vpp", value=v,
                             allowed="1, or parallelism.schedule: interleaved")
        return one_f_one_b(p, m, ep_overlap)
    if name == "interleaved":
        return interleaved_1f1b(p, m, v, ep_overlap)
    if name == "dualpipe":
        if v != 1:
            raise InputError("DualPipe runs its two model chunks (stages r and pp-1-r) without "
                             "virtual stages", field="parallelism.vpp", value=v, allowed="1")
        return dualpipe(p, m)
    raise InputError("unknown pipeline schedule", field="parallelism.schedule", value=name,
                     allowed=", ".join(SCHEDULES))


def slots(items: list[Item]) -> list[tuple[Item, ...]]:
    """Group a rank's items into slots: an item with ``overlap`` joins the slot before it."""
    out: list[tuple[Item, ...]] = []
    for it in items:
        if it.overlap and out:
            out[-1] = out[-1] + (it,)
        else:
            out.append((it,))
    return out


def makespan(schedule: list[list[Item]], t_fwd: float, t_bwd: float, t_wgt: float = 0.0) -> float:
    """Step time of a schedule with constant op times and free communication (a pure oracle).

    ``t_bwd`` is a whole backward (input and weight gradients), ``t_wgt`` its weight-gradient part:
    a backward with ``defer_w`` takes ``t_bwd - t_wgt``, its ``wgt`` item ``t_wgt``. Each rank runs
    its slots in order; a forward of virtual stage s waits for the forward of s-1, a backward of s
    for the backward of s+1 (the last stage's for its own forward); a weight gradient waits only
    for the rank's earlier items. A paired slot is one fused chunk, as in DualPipe's reference
    (inputs of both received, then the overlapped forward-backward, then both outputs sent): it
    starts when the inputs of all its items are in, takes the sum of their times, and hands every
    output on at its end.
    """
    p = len(schedule)
    v = 1 + max(it.chunk for items in schedule for it in items)
    stages = p * v
    dur = {"fwd": t_fwd, "bwd": t_bwd, "wgt": t_wgt}
    done: dict[tuple[str, int, int], float] = {}
    queues = [slots(items) for items in schedule]
    pos = [0] * p
    clock = [0.0] * p
    progress = True
    while progress:
        progress = False
        for r in range(p):
            while pos[r] < len(queues[r]):
                slot = queues[r][pos[r]]
                ready = clock[r]
                ok = True
                for it in slot:
                    s = virtual_stage(it, p, r)
                    if it.phase == "fwd":
                        dep = ("fwd", it.mb, s - 1) if s > 0 else None
                    elif it.phase == "bwd":
                        dep = ("bwd", it.mb, s + 1) if s < stages - 1 else ("fwd", it.mb, s)
                    else:
                        dep = None
                    if dep is not None:
                        if dep not in done:
                            ok = False
                            break
                        ready = max(ready, done[dep])
                if not ok:
                    break
                t = ready + sum(dur[it.phase] - (t_wgt if it.defer_w else 0.0) for it in slot)
                for it in slot:
                    done[(it.phase, it.mb, virtual_stage(it, p, r))] = t
                clock[r] = t
                pos[r] += 1
                progress = True
    if any(pos[r] < len(queues[r]) for r in range(p)):
        raise RuntimeError("schedule deadlocks")
    return max(clock)
