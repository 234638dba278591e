"""The SimPy training-step engine: pipeline ranks, their compute and communication streams.

One SimPy process per simulated pipeline rank walks that rank's schedule (simmoe.engine.schedules).
Each schedule item runs a compiled program (simmoe.engine.program): compute nodes in order on the
rank's compute stream, collectives as their own tasks (callbacks on SimPy events, in the event
order a process per collective would have) on the rank's communication stream, handed to ONE
network backend (simmoe.network.simnet.SimNetwork, or the analytical stand-in) that
owns every in-flight flow, so EP all-to-all, DP reduce-scatter and PP sends of all ranks contend
for the same links.

The engine knows no physics: a :class:`Resolver` turns a node into seconds (compute) or a
Collective (communication). Which ranks are simulated, and how a collective is shared between
them, is also the resolver's business: a collective names a rendezvous key and how many simulated
ranks join it; it starts when the last one arrives (a full run), or at once when only one
simulated rank stands for the whole group (a reduced run, docs/engine.md).

Timeline of one rank: for each slot of its schedule, wait for the item's input (the previous
virtual stage's pipeline send, or the next stage's gradient), run its program. A paired slot
(DualPipe's overlapped forward-backward chunk) waits for the inputs of both items, runs them as two
processes sharing the compute stream (backward first when both are ready), each with its own
communication stream, so one's all-to-all runs under the other's compute, and sends both outputs
when both are computed (DualPipe's reference order). A deferred weight gradient (``wgt``) waits for
nothing but the rank's earlier items. When every item and every collective it started is done,
the rank runs the once-per-step program (gradient reduction, optimizer). The step ends when all
ranks do. With a blocking plan (parallelism.pipeline_p2p: blocking) a rank walks its plan instead:
its slots, and between them commits of sends and receives it waits for, each send starting when
its receiver has committed the matching receive.

Communication streams: one per rank and pipeline direction (DualPipe's two directions; the other
schedules use one), first in first out; pipeline sends have their own (NCCL p2p). The compute
stream a paired slot shares is the same kind of stream with priorities (DualPipe: backward first).
Megatron's EP all-to-all overlap (``pairs="interleaved"``) pairs a forward and a backward of the
same direction: they share its communication stream, their ops take the compute stream in the
order they become ready, and each output is sent as soon as its item is computed. (In a full,
unreduced run with unequal expert loads two ranks may then claim that stream for the pair's
collectives in different orders and wait for each other: the run then stops with an error.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from heapq import heappop, heappush
from typing import Callable, Hashable, Protocol

import simpy
from simpy.events import URGENT, Event, Timeout

from simmoe.engine.program import Program
from simmoe.engine.schedules import Item, exchange_calls, send_key, slots, virtual_stage


@dataclass(frozen=True)
class SimRank:
    index: int  # position in the engine's rank list
    pipeline: int  # which simulated pipeline (0 in a reduced run)
    pp_rank: int
    global_rank: int


@dataclass(frozen=True)
class CommRequest:
    build: Callable[[], object]  # -> simmoe.network.flows.Collective, built once per rendezvous
    category: str  # dispatch | combine | tp | dp | pp | ep | other (docs/output.md)
    rendezvous: Hashable | None = None  # key shared by the simulated members of the group
    members: int = 1  # simulated ranks that join; the collective starts when all have arrived
    # An NCCL kernel that keeps SMs from compute while in flight (docs/compute.md); False for
    # SM-based all-to-alls the scenario already reserves parallelism.comm_sms for.
    holds_sms: bool = True


class Resolver(Protocol):
    def node_time_s(self, rank: SimRank, key: tuple, program: Program, node: int,
                    mb: int, held: bool = False) -> tuple[float, float]:
        """(seconds, of which expert GEMM seconds) of a compute node; ``held``: while an NCCL
        collective of the rank holds SMs."""

    def node_collective(self, rank: SimRank, key: tuple, program: Program, node: int,
                        mb: int) -> CommRequest:
        """The collective of a communication node."""

    def node_host_s(self, key: tuple, program: Program) -> tuple[tuple, tuple] | None:
        """Per node of a program: (host seconds to issue it, whether the host then waits for it
        to start: the dispatcher's device-to-host sync); None: the host is not modelled
        (simmoe.engine.host)."""


@dataclass
class RankTimeline:
    """What one simulated rank did during a step (times in seconds from the step's start)."""

    compute: list = field(default_factory=list)  # (start, end, label, phase)
    comm: list = field(default_factory=list)  # (start, end, label, category, phase)
    expert_s: float = 0.0
    step_compute_s: float = 0.0  # compute of the once-per-step program (optimizer)
    host_late_s: float = 0.0  # compute stream idle, waiting for the host to issue (host issue)
    finish_s: float = 0.0


@dataclass
class StepTimeline:
    ranks: list[SimRank]
    timelines: list[RankTimeline]

    @property
    def step_time_s(self) -> float:
        return max(t.finish_s for t in self.timelines)


class EngineEnvironment(simpy.Environment):
    """A ``simpy.Environment`` that skips event hops which cannot change anything.

    Many events of a step are triggered for the current instant only to pass control on: a stream
    granted at once, a transfer's completion handed to its task, a task's completion handed to the
    rank waiting for it. When such an event is triggered as the last action of the last callback
    of the event being processed, and nothing else is scheduled for this instant, it is the very
    next event SimPy would process: processing it at once (its callbacks run now, in their order)
    is the same sequence of actions, one heap push and pop fewer. :meth:`alone` is that test;
    :meth:`succeed_last` and :meth:`_Stream.take_now` use it. Event order, and so every simulated
    time, is unchanged (tests compare whole timelines with a plain Environment)."""

    def __init__(self, initial_time: float = 0) -> None:
        super().__init__(initial_time)
        self.tail = False  # the callback running is the last of its event's

    def run_until(self, until: Event) -> None:
        """``run(until=until)``: the same events in the same order, in one loop (no method call
        per event; a DeepSeek-V3 step has ~275,000 of them), keeping :attr:`tail` up to date."""
        queue = self._queue
        while until.callbacks is not None:  # until it has been processed
            try:
                self._now, _, _, event = heappop(queue)
            except IndexError:
                raise RuntimeError(f'No scheduled events left but "until" event was not triggered: '
                                   f"{until}") from None
            callbacks, event.callbacks = event.callbacks, None
            if len(callbacks) == 1:
                self.tail = True
                callbacks[0](event)
            else:
                last = len(callbacks) - 1
                for i, callback in enumerate(callbacks):
                    self.tail = i == last
                    callback(event)
            if not event._ok and not hasattr(event, "_defused"):
                exc = type(event._value)(*event._value.args)  # as Environment.step re-raises it
                exc.__cause__ = event._value
                raise exc

    def alone(self) -> bool:
        """Whether an event triggered now, by a caller that does nothing after, would be the next
        one processed: the running callback is its event's last and nothing is scheduled for this
        instant (an event scheduled now would come after everything already queued for now)."""
        queue = self._queue
        return self.tail and (not queue or queue[0][0] > self._now)

    def succeed_last(self, event: Event, value=None) -> None:
        """``event.succeed(value)`` as the caller's last action: processed at once when
        :meth:`alone` (what processing it next would do)."""
        if not self.alone():
            event.succeed(value)
            return
        event._ok, event._value = True, value
        callbacks, event.callbacks = event.callbacks, None
        last = len(callbacks) - 1
        for i, callback in enumerate(callbacks):
            self.tail = i == last
            callback(event)


def _never() -> bool:
    return False


class _Stream:
    """A stream of capacity one: ``simpy.PriorityResource(env, 1)`` without its bookkeeping, in the
    same event order (requests are served by priority, lower first, then first come first served;
    a request made while the stream is free is granted at once; a release frees the stream now
    and grants the head of the queue when a release event is processed, unless a request made in
    between granted it first). With one priority it is first in first out."""

    __slots__ = ("env", "busy", "queue", "_seq", "_succeed_on_release")

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self.busy = False
        self.queue: list = []  # heap of (priority, arrival number, event)
        self._seq = 0
        # A grant made by a release event is that event's last action: EngineEnvironment may
        # process it at once.
        self._succeed_on_release = env.succeed_last if isinstance(env, EngineEnvironment) else Event.succeed

    def request(self, priority: int = 0) -> Event:
        ev = Event(self.env)
        heappush(self.queue, (priority, self._seq, ev))
        self._seq += 1
        self._grant(Event.succeed)  # the caller yields the request next: an ordinary event
        return ev

    def take_now(self, alone: Callable[[], bool]) -> bool:
        """Claim the stream without an event where a request would be granted at once and its
        grant would be the next event processed (``alone``: EngineEnvironment.alone); False: make
        the request as usual."""
        if self.busy or self.queue or not alone():
            return False
        self.busy = True
        return True

    def _grant(self, succeed: Callable[[Event], None]) -> None:
        """Grant the head of the queue unless the stream is busy (a request made since took it)."""
        if not self.busy and self.queue:
            self.busy = True
            succeed(heappop(self.queue)[2])

    def _granted_on_release(self, _event) -> None:
        self._grant(self._succeed_on_release)

    def release(self) -> None:
        self.busy = False
        if not self.queue:
            # Nobody waits: the release event would find the stream busy again (a request made
            # before it is processed is granted at once) or the queue still empty, and do
            # nothing; leaving it out keeps every other event's order.
            return
        ev = Event(self.env)
        ev.callbacks.append(self._granted_on_release)
        ev.succeed()


class _RunningKernel:
    """A compute node running on a rank, at the rate of the rank's current SM share: when an NCCL
    collective starts or ends beside it, the fraction done so far is kept and the rest re-timed
    at the new share. Pure arithmetic; the engine interrupts the node's process to re-time it."""

    __slots__ = ("process", "args", "seconds", "since", "done_fraction")

    def __init__(self, process, args: tuple, seconds: float, now: float) -> None:
        self.process, self.args = process, args
        self.seconds, self.since, self.done_fraction = seconds, now, 0.0

    def rerate(self, now: float, seconds: float) -> None:
        """From ``now`` on, the whole node would take ``seconds`` (at the new SM share)."""
        self.done_fraction = min(1.0, self.done_fraction + (now - self.since) / self.seconds)
        self.since, self.seconds = now, seconds

    def remaining_s(self) -> float:
        return (1.0 - self.done_fraction) * self.seconds


class _CommTask:
    """One collective node of a program, run by callbacks with the events a SimPy process running
    it would have (an urgent start event, then: wait for its inputs, claim its communication
    stream, hand the collective to the network, release the stream), so the event order is the
    same, without a generator and a Process per collective. ``done`` is what the process event
    was: it triggers (normal priority) when the collective is done and the stream released. Hops
    that could change nothing are skipped (EngineEnvironment), in the same order of actions."""

    __slots__ = ("eng", "r", "key", "prog", "k", "mb", "events", "phase", "lane", "gate",
                 "req", "stream", "start", "done", "issued_s", "started")

    def __init__(self, eng: "StepEngine", r: SimRank, key: tuple, prog: Program, k: int, mb: int,
                 events: list, phase: str, lane: int, gate, issued_s: float | None = None,
                 started: Event | None = None) -> None:
        self.eng, self.r, self.key, self.prog, self.k, self.mb = eng, r, key, prog, k, mb
        self.events, self.phase, self.lane, self.gate = events, phase, lane, gate
        # Host issue: the collective is launched no earlier than the host issues it; ``started``
        # triggers when it starts (a host waiting for it: the dispatcher's sync).
        self.issued_s, self.started = issued_s, started
        env = eng.env
        self.done = Event(env)
        start = Event(env)  # what simpy.events.Initialize does for a process
        start._ok, start._value = True, None
        start.callbacks.append(self._begin)
        env.schedule(start, URGENT)

    def _begin(self, _event) -> None:
        # (An event's callbacks are None once it has been processed.)
        waits = [e for e in map(self.events.__getitem__, self.prog.nodes[self.k].deps)
                 if e is not None and e.callbacks is not None]
        gate = self.gate
        if gate is not None and gate.callbacks is not None:
            waits.append(gate)
        if self.issued_s is not None and self.issued_s > self.eng.env._now:
            waits.append(self.eng.env.timeout(self.issued_s - self.eng.env._now))
        if len(waits) == 1:
            waits[0].callbacks.append(self._claim)
        elif waits:
            self.eng.env.all_of(waits).callbacks.append(self._claim)
        else:
            self._claim(None)

    def _claim(self, _event) -> None:
        eng, r = self.eng, self.r
        req = self.req = eng.resolver.node_collective(r, self.key, self.prog, self.k, self.mb)
        if req.category == "pp":
            self.stream = None
            self._send(None)
        else:
            self.stream = eng._comm_stream[r.index][self.lane]
            if self.stream.take_now(eng._alone):  # (the last action: nothing can come first)
                self._send(None)
            else:
                self.stream.request().callbacks.append(self._send)

    def _send(self, _event) -> None:
        eng, req = self.eng, self.req
        self.start = eng.env._now
        if self.started is not None:
            self.started.succeed()
        if req.holds_sms:  # NCCL's kernel is up from here, waiting for its peers included
            eng._hold_sms(self.r.index, +1)
        if req.rendezvous is None or req.members <= 1:
            eng.network.transfer(req.build()).callbacks.append(self._finish)
            return
        slot = eng._rendezvous.get(req.rendezvous)
        if slot is None:
            slot = eng._rendezvous[req.rendezvous] = [0, eng.env.event()]
        slot[0] += 1
        done = slot[1]
        if slot[0] == req.members:
            del eng._rendezvous[req.rendezvous]
            eng.network.transfer(req.build()).callbacks.append(lambda _e: done.succeed())
        done.callbacks.append(self._finish)

    def _finish(self, _event) -> None:
        if self.stream is not None:
            self.stream.release()
        eng = self.eng
        if self.req.holds_sms:
            eng._hold_sms(self.r.index, -1)
        eng.timelines[self.r.index].comm.append((self.start, eng.env._now,
                                                 self.prog.nodes[self.k].label, self.req.category,
                                                 self.phase))
        eng._succeed_last(self.done)


class StepEngine:
    """Simulate one training step. ``schedule[s]`` is pp rank s's item list; ``programs`` maps
    (virtual stage, "fwd"|"bwd") to a compiled program, and for schedules that defer weight
    gradients also (virtual stage, "bwd_in") (input gradient only) and (virtual stage, "wgt");
    ``step_program`` runs once per rank."""

    def __init__(self, env: simpy.Environment, network, ranks: list[SimRank],
                 schedule: list[list[Item]], programs: dict[tuple[int, str], Program],
                 step_programs: dict[int, Program] | None, resolver: Resolver, *, pp: int,
                 vpp: int = 1, p2p_plan: list[list[tuple]] | None = None,
                 pairs: str = "fused", pipeline_sync: bool = False) -> None:
        self.env = env
        self.network = network
        self.ranks = ranks
        self.schedule = schedule
        self.programs = programs
        self.step_programs = step_programs or {}
        self.resolver = resolver
        self.pp = pp
        self.stages = pp * vpp
        self.timelines = [RankTimeline() for _ in ranks]
        self._signals: dict[tuple, simpy.Event] = {}
        # Blocking pipeline sends (parallelism.pipeline_p2p: blocking): per pp rank its slots and
        # commits in order (simmoe.engine.schedules.build_plan); None: sends go as computed.
        self.plan = p2p_plan
        # How a paired slot runs. "fused" (DualPipe's reference): backward ops first when both
        # wait, outputs sent when both items are computed. "interleaved" (Megatron's EP
        # all-to-all overlap, which alternates the two micro-batches' sub-modules layer by layer):
        # ops in the order they become ready, each output sent as soon as its item is computed.
        if pairs not in ("fused", "interleaved"):
            raise ValueError(f"pairs must be 'fused' or 'interleaved', not {pairs!r}")
        self.pairs = pairs
        # Host issue: the host waits for the whole GPU and the exchange at each pipeline send and
        # receive (Megatron-Core's batch_p2p_sync on 1F1B; host.pipeline_sync).
        if pipeline_sync and (p2p_plan is not None or getattr(resolver, "node_host_s", None) is None):
            raise ValueError("pipeline_sync needs a modelled host and async pipeline sends")
        self.pipeline_sync = pipeline_sync
        self._rendezvous: dict[Hashable, list] = {}
        self._comm_stream = [(_Stream(env), _Stream(env)) for _ in ranks]
        self._outstanding: list[list] = [[] for _ in ranks]
        self._nccl_in_flight = [0] * len(ranks)  # NCCL collectives holding SMs, per rank
        self._kernel: list[_RunningKernel | None] = [None] * len(ranks)  # compute node running
        # Host issue (simmoe.engine.host): per rank, the time its host has issued everything
        # visited so far; per program key, its nodes' host seconds and syncs (None: not modelled).
        self._host_t = [0.0] * len(ranks)
        self._host: dict = {}
        self._node_host_s = getattr(resolver, "node_host_s", None)
        # Event hops skipped where nothing can come between (EngineEnvironment; none otherwise).
        if isinstance(env, EngineEnvironment):
            self._alone, self._succeed_last = env.alone, env.succeed_last
        else:
            self._alone, self._succeed_last = _never, lambda event: event.succeed()

    def _hold_sms(self, i: int, delta: int) -> None:
        before = self._nccl_in_flight[i] > 0
        self._nccl_in_flight[i] += delta
        after = self._nccl_in_flight[i] > 0
        kernel = self._kernel[i]
        if before != after and kernel is not None:
            kernel.rerate(self.env.now, self.resolver.node_time_s(*kernel.args, after)[0])
            kernel.process.interrupt()  # its process re-times the rest (URGENT, at this instant)

    # ------------------------------------------------------------------ public
    def run(self) -> StepTimeline:
        procs = [self.env.process(self._rank(r)) for r in self.ranks]
        if isinstance(self.env, EngineEnvironment):
            self.env.run_until(self.env.all_of(procs))
        else:
            self.env.run(until=self.env.all_of(procs))
        for r in self.ranks:
            if self.timelines[r.index].finish_s == 0.0 and self.schedule[r.pp_rank]:
                raise RuntimeError(f"rank {r.global_rank} did not finish (deadlock)")
        return StepTimeline(self.ranks, self.timelines)

    # ------------------------------------------------------------------ signals
    def _signal(self, key: tuple) -> simpy.Event:
        ev = self._signals.get(key)
        if ev is None:
            ev = self._signals[key] = self.env.event()
        return ev

    # ------------------------------------------------------------------ processes
    def _rank_blocking(self, r: SimRank):
        """A rank walking its blocking plan: slots as usual, but an output leaves only at the
        rank's next commit, when the receiver has posted the matching receive at one of its own;
        a commit waits until every send and receive in it is done (docs/engine.md)."""
        q, me = r.pipeline, r.pp_rank
        env, signal = self.env, self._signal
        rank_slots = slots(self.schedule[me])
        gpu = None

        def gate(it: Item):  # a send starts when both ends have committed it
            key = send_key(it, self.pp, me, self.stages)
            if key is None:
                return None
            return env.all_of([signal(("send_posted", q) + key), signal(("recv_posted", q) + key)])

        for entry in self.plan[me]:
            if entry[0] == "commit":
                _, sends, recvs = entry
                for key in sends:
                    signal(("send_posted", q) + key).succeed()
                for key in recvs:
                    signal(("recv_posted", q) + key).succeed()
                waits = [w for w in (signal((k[0], q) + k[1:]) for k in sends + recvs)
                         if not w.processed]
                if waits:
                    yield env.all_of(waits)
                continue
            slot = rank_slots[entry[1]]
            waits = [w for w in (self._input(r, it) for it in slot) if w is not None and not w.processed]
            if waits:
                yield env.all_of(waits)
            if len(slot) == 1:
                yield from self._item(r, slot[0], None, gate(slot[0]))
            else:
                if gpu is None:
                    gpu = _Stream(env)
                yield env.all_of([env.process(self._item(r, it, gpu, gate(it))) for it in slot])

    def _rank(self, r: SimRank):
        if self.plan is not None:
            yield from self._rank_blocking(r)
            yield from self._finish_rank(r)
            return
        gpu = None
        before = None  # the rank's previous single item (pipeline_sync)
        for slot in slots(self.schedule[r.pp_rank]):
            if len(slot) == 1:
                it = slot[0]
                wait = self._input(r, it)
                if wait is not None and not wait.processed:
                    yield wait
                if self.pipeline_sync:
                    yield from self._exchange_sync(r, before, it)
                    before = it
                yield from self._item(r, it, None, None)
            else:
                if gpu is None:
                    gpu = _Stream(self.env)
                waits = [w for w in (self._input(r, it) for it in slot)
                         if w is not None and not w.processed]
                if waits:
                    yield self.env.all_of(waits)
                # Both items' compute done: their outputs may go (fused pairs only).
                computed = self.env.event() if self.pairs == "fused" else None
                yield self.env.all_of([self.env.process(self._item(r, it, gpu, computed))
                                       for it in slot])
                if computed is not None:
                    computed.succeed()
        if self.pipeline_sync:
            yield from self._exchange_sync(r, before, None)
        yield from self._finish_rank(r)

    def _exchange_sync(self, r: SimRank, before: Item | None, after: Item | None):
        """The host at a pipeline exchange with batch_p2p_sync (``after``'s input, if any, is in):
        each of Megatron-Core's calls there ends in torch.cuda.synchronize(), so the host resumes
        when everything the rank has issued, the exchange's transfers included, is done, plus a
        device round trip per call."""
        calls = exchange_calls(before, after, self.pp, r.pp_rank, self.stages)
        if not calls:
            return
        i = r.index
        pending = self._outstanding[i] = [e for e in self._outstanding[i] if not e.processed]
        if pending:
            yield self.env.all_of(pending)
        self._host_t[i] = max(self._host_t[i], self.env.now) + calls * self.resolver.host_sync_s

    def _finish_rank(self, r: SimRank):
        """After the rank's last item: its collectives done, then the once-per-step program."""
        pending = [e for e in self._outstanding[r.index] if not e.processed]
        if pending:
            yield self.env.all_of(pending)
        prog = self.step_programs.get(r.pp_rank)
        if prog is not None and not prog.empty:
            events = yield from self._program(r, ("step", r.pp_rank), prog, 0, None, "step")
            pending = [e for e in events if e is not None and not e.processed]
            if pending:
                yield self.env.all_of(pending)
        self.timelines[r.index].finish_s = self.env.now

    def _input(self, r: SimRank, it: Item) -> simpy.Event | None:
        """The event an item's input arrives with (None: nothing to wait for)."""
        v = virtual_stage(it, self.pp, r.pp_rank)
        q, mb = r.pipeline, it.mb
        if it.phase == "fwd":
            return self._signal(("fwd", q, mb, v)) if v > 0 else None
        if it.phase == "bwd":
            return self._signal(("bwd", q, mb, v)) if v < self.stages - 1 else \
                self._signal(("fwd_done", q, mb, v))
        return None  # a deferred weight gradient: its backward ran earlier on this rank

    def _item(self, r: SimRank, it: Item, gpu, computed):
        """Run one item whose input is in. ``computed``: in a paired slot, the event of both items'
        compute being done; the item's outputs (pipeline sends) wait for it."""
        v = virtual_stage(it, self.pp, r.pp_rank)
        q, mb = r.pipeline, it.mb
        phase = "bwd_in" if it.defer_w else it.phase
        prog = self.programs[(v, phase)]
        key = (v, phase, "reverse") if it.reverse else (v, phase)
        # Communication lane: one per DualPipe direction. A Megatron pair's two micro-batches
        # share one, as Megatron's EP overlap runs dispatch and combine on one communication
        # stream (so their all-to-alls queue behind each other rather than share the links).
        lane = int(it.reverse)
        events = yield from self._program(r, key, prog, mb, gpu, it.phase, lane, computed)
        if it.phase == "wgt":
            return
        # Hand the output on: the pipeline send when the program has one, else the whole item.
        if it.phase == "fwd":
            target = ("fwd", q, mb, v + 1) if v < self.stages - 1 else ("fwd_done", q, mb, v)
        else:
            target = ("bwd", q, mb, v - 1) if v > 0 else None
        if target is None:
            return
        if prog.p2p_nodes and target[0] != "fwd_done":
            done = [events[k] for k in prog.p2p_nodes]  # they wait for ``computed``
        else:
            done = [e for e in events if e is not None] + ([computed] if computed is not None else [])
        self._when_all(done, self._signal(target))

    def _when_all(self, events: list, signal: simpy.Event) -> None:
        pending = [e for e in events if not e.processed]
        if not pending:
            signal.succeed()
        elif len(pending) == 1:
            pending[0].callbacks.append(lambda _e: signal.succeed())
        else:
            self.env.all_of(pending).callbacks.append(lambda _e: signal.succeed())

    def _program(self, r: SimRank, key: tuple, prog: Program, mb: int, gpu, phase: str,
                 lane: int = 0, computed=None):
        """Run a program's compute nodes here, its collectives as tasks on communication stream
        ``lane`` (pipeline sends also wait for ``computed`` when given). Returns one entry
        per node: the completion event of a collective, None for compute (done on return)."""
        env = self.env
        i = r.index
        tl = self.timelines[i]
        log = tl.compute
        events: list = [None] * len(prog.nodes)
        priority = 0 if phase == "bwd" or self.pairs == "interleaved" else 1
        node_time_s = self.resolver.node_time_s
        nccl, alone = self._nccl_in_flight, self._alone
        host = self._host.get(key, False)
        if host is False:
            host = self._host[key] = (None if self._node_host_s is None
                                      else self._node_host_s(key, prog))
        host_t = self._host_t
        for k, node in enumerate(prog.nodes):
            if node.kind == "comm":
                started = None
                if host is not None:
                    host_t[i] += host[0][k]
                    if host[1][k]:
                        started = Event(env)
                task = _CommTask(self, r, key, prog, k, mb, events, phase, lane,
                                 computed if k in prog.p2p_nodes else None,
                                 None if host is None else host_t[i], started)
                events[k] = task.done
                self._outstanding[i].append(task.done)
                if started is not None:  # the host waits for the split sizes
                    if started.callbacks is not None:
                        yield started
                    host_t[i] = max(host_t[i], env._now) + self.resolver.host_sync_s
                continue
            if node.deps:  # (an event's callbacks are None once it has been processed)
                waits = [e for e in map(events.__getitem__, node.deps)
                         if e is not None and e.callbacks is not None]
                if len(waits) == 1:
                    yield waits[0]
                elif waits:
                    yield env.all_of(waits)
            if gpu is not None and not gpu.take_now(alone):
                yield gpu.request(priority)
            start = env._now
            dur, expert = node_time_s(r, key, prog, k, mb, nccl[i] > 0)
            if host is not None:
                host_t[i] += host[0][k]
                late = host_t[i] - (start + dur)
                if late > 0:  # the node's last op is issued after the GPU could have run it all
                    yield Timeout(env, late)
                    tl.host_late_s += late
                    start = env._now
            if dur > 0:
                kernel = self._kernel[i] = _RunningKernel(env._active_proc, (r, key, prog, k, mb),
                                                          dur, start)
                remaining = dur
                while True:
                    try:
                        yield Timeout(env, remaining)
                        break
                    except simpy.Interrupt:  # an NCCL collective started or ended beside it
                        remaining = kernel.remaining_s()
                self._kernel[i] = None
            if gpu is not None:
                gpu.release()
            end = env._now
            log.append((start, end, node.label, phase))
            tl.expert_s += expert
            if phase == "step":
                tl.step_compute_s += end - start
        return events
