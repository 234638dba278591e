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
- ``overlapped_1f1b(p, m)``: in the spirit of DualPipe (DeepSeek-V3 §3.2.1): one more warm-up
  forward than 1F1B (``min(p - r, m)``), then every steady-state forward is *paired* with a
  backward of an earlier micro-batch: the pair runs on one compute stream, interleaving its ops, so
  the EP all-to-all of one hides behind the compute of the other. A paired item carries
  ``overlap=True``: it runs together with the item just before it. This is a single-direction
  schedule (DualPipe's second, reversed pipeline halves the bubble at twice the parameter memory;
  not modelled: see docs/engine.md).

All three keep every micro-batch's forward before its backward on each chunk, and every rank runs
each (micro-batch, chunk, phase) exactly once (tests check both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from simmoe.errors import InputError

Phase = Literal["fwd", "bwd"]
SCHEDULES = ("1f1b", "interleaved", "dualpipe")


@dataclass(frozen=True)
class Item:
    mb: int  # micro-batch index, 0..m-1
    chunk: int  # model chunk on this rank, 0..v-1 (virtual stage chunk * p + rank)
    phase: Phase
    overlap: bool = False  # runs together with the previous item of this rank (a paired slot)

    def __repr__(self) -> str:  # compact: F3, B0c1, +F4
        c = f"c{self.chunk}" if self.chunk else ""
        return f"{'+' if self.overlap else ''}{self.phase[0].upper()}{self.mb}{c}"


def _check(p: int, m: int, field_p: str = "parallelism.pp") -> None:
    if not isinstance(p, int) or p < 1:
        raise InputError("pipeline size must be a positive integer", field=field_p, value=p,
                         allowed="1, 2, 3, ...")
    if not isinstance(m, int) or m < 1:
        raise InputError("micro-batches per step must be a positive integer",
                         field="micro_batches", value=m,
                         allowed="training.global_batch / (training.micro_batch * dp) >= 1")


def one_f_one_b(p: int, m: int) -> list[list[Item]]:
    """1F1B (PipeDream-Flush): per rank, warm-up forwards, steady 1F1B, cool-down backwards."""
    _check(p, m)
    out = []
    for r in range(p):
        warm = min(p - r - 1, m)
        items = [Item(i, 0, "fwd") for i in range(warm)]
        for k in range(m - warm):
            items += [Item(warm + k, 0, "fwd"), Item(k, 0, "bwd")]
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


def interleaved_1f1b(p: int, m: int, v: int) -> list[list[Item]]:
    """Megatron's interleaved 1F1B with ``v`` chunks per rank (``v = 1`` gives 1F1B)."""
    _check(p, m)
    if not isinstance(v, int) or v < 1:
        raise InputError("virtual stages per rank must be a positive integer",
                         field="parallelism.vpp", value=v, allowed="1, 2, 3, ...")
    if v == 1:
        return one_f_one_b(p, m)
    if m % p:
        raise InputError(f"the interleaved schedule needs the micro-batches per step ({m}) to be "
                         f"a multiple of parallelism.pp={p}", field="training.global_batch",
                         value=m, allowed=f"global_batch / (micro_batch * dp) a multiple of {p}")
    total = m * v
    out = []
    for r in range(p):
        warm = total if m == p else min((p - r - 1) * 2 + (v - 1) * p, total)
        items = [Item(*_interleaved_ids(k, p, v, True), "fwd") for k in range(warm)]
        for k in range(total - warm):
            items.append(Item(*_interleaved_ids(warm + k, p, v, True), "fwd"))
            items.append(Item(*_interleaved_ids(k, p, v, False), "bwd"))
        items += [Item(*_interleaved_ids(k, p, v, False), "bwd") for k in range(total - warm, total)]
        out.append(items)
    return out


def overlapped_1f1b(p: int, m: int) -> list[list[Item]]:
    """DualPipe-style pairing: steady-state forward of micro-batch i+w with backward of i."""
    _check(p, m)
    out = []
    for r in range(p):
        warm = min(p - r, m)
        items = [Item(i, 0, "fwd") for i in range(warm)]
        for k in range(m - warm):
            # Backward first in the pair: it is on the critical path; the forward fills its gaps.
            items += [Item(k, 0, "bwd"), Item(warm + k, 0, "fwd", overlap=True)]
        items += [Item(k, 0, "bwd") for k in range(m - warm, m)]
        out.append(items)
    return out


def build_schedule(name: str, p: int, m: int, v: int = 1) -> list[list[Item]]:
    """The schedule named by ``parallelism.schedule``."""
    if name == "1f1b":
        if v != 1:
            raise InputError("1f1b runs one model chunk per rank", field="parallelism.vpp", value=v,
                             allowed="1, or parallelism.schedule: interleaved")
        return one_f_one_b(p, m)
    if name == "interleaved":
        return interleaved_1f1b(p, m, v)
    if name == "dualpipe":
        if v != 1:
            raise InputError("the overlapped (dualpipe) schedule runs one model chunk per rank",
                             field="parallelism.vpp", value=v, allowed="1")
        return overlapped_1f1b(p, m)
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


def makespan(schedule: list[list[Item]], t_fwd: float, t_bwd: float) -> float:
    """Step time of a schedule with constant op times and free communication (a pure oracle).

    Each rank runs its slots in order; a forward of virtual stage s waits for the forward of s-1,
    a backward of s for the backward of s+1 (the last stage's for its own forward). The items of a
    paired slot share the rank's compute stream: the one whose input is ready first runs first.
    """
    p = len(schedule)
    v = 1 + max(it.chunk for items in schedule for it in items)
    stages = p * v
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
                starts = []
                ok = True
                for it in slot:
                    ready = clock[r]
                    s = it.chunk * p + r
                    if it.phase == "fwd":
                        dep = ("fwd", it.mb, s - 1) if s > 0 else None
                    else:
                        dep = ("bwd", it.mb, s + 1) if s < stages - 1 else ("fwd", it.mb, s)
                    if dep is not None:
                        if dep not in done:
                            ok = False
                            break
                        ready = max(ready, done[dep])
                    starts.append(ready)
                if not ok:
                    break
                # A paired slot shares one compute stream: whichever item can start first runs
                # first (the backward on a tie), the other follows.
                order = sorted(zip(starts, range(len(slot))),
                               key=lambda x: (x[0], slot[x[1]].phase != "bwd"))
                t = clock[r]
                for start, i in order:
                    it = slot[i]
                    t = max(t, start) + (t_fwd if it.phase == "fwd" else t_bwd)
                    done[(it.phase, it.mb, it.chunk * p + r)] = t
                clock[r] = t
                pos[r] += 1
                progress = True
    if any(pos[r] < len(queues[r]) for r in range(p)):
        raise RuntimeError("schedule deadlocks")
    return max(clock)
