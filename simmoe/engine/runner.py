"""From a validated Scenario to simulated training steps.

Builds once per scenario: the topology, the parallel layout, expert placement, one routing model
per (stage, placement), the compute model, the compiled stage programs and the schedule. Then each
step is an independent SimPy run (a step ends when every rank is idle, so no state crosses steps;
routing drift enters through the step index).

Reduced run (the default, docs/engine.md): one pipeline is simulated, one rank per pipeline stage
standing for its EP group (dropless: the busiest EP rank's expert GEMMs set the pace, since the
combine all-to-all waits for it). Collectives still carry their whole group's flows, and the
traffic of the symmetric copies (other EP groups and DP replicas of the stage) on shared links is
counted through per-link replica multiplicities. A full run (``reduce=False``) simulates every rank
and starts each collective when all its members have arrived; it is the oracle of the reduction.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Protocol

import numpy as np

from simmoe.compute.model import gemm_backward_s, grouped_gemm_backward_s
from simmoe.engine.core import CommRequest, EngineEnvironment, SimRank, StepEngine, StepTimeline
from simmoe.engine.host import host_costs, program_host_s
from simmoe.engine.moe_comm import moe_alltoall
from simmoe.engine.program import Program, compile_program, weight_gradient_ops
from simmoe.engine.schedules import build_plan, build_schedule, stage_rank, virtual_stage
from simmoe.errors import InputError
from simmoe.network import collectives as coll
from simmoe.network.coflow import AnalyticalSimNetwork, CoflowFabric, CoflowNetwork, ReplicaSimNetwork
from simmoe.network.flows import Collective, FlowSet, Stage
from simmoe.hardware import gpu_spec
from simmoe.network.params import DEFAULT_NETWORK_PARAMS, NetworkParams
from simmoe.routing.model import LayerDraws
from simmoe.routing.popularity import max_over_mean
from simmoe.workload.ops import AttentionOp, CollectiveOp, ExpertGemmOp, GemmOp, MemoryOp

COMM_CATEGORY = {"tp": "tp", "cp": "tp", "expert_tp": "tp", "dp": "dp", "dp_cp": "dp", "edp": "dp",
                 "ep": "ep", "pp": "pp"}


class ProgramSource(Protocol):
    """Where the ops come from (simmoe.workload's builder, or hand-made lists in tests)."""

    def stage_program(self, virtual_stage: int) -> tuple[list, list]:
        """(forward ops, backward ops) of one micro-batch on one rank of ``virtual_stage``."""

    def step_ops(self, pp_rank: int) -> list:
        """Once-per-step ops of one rank of pipeline rank ``pp_rank`` (gradients, optimizer)."""


class WorkloadPrograms:
    """ProgramSource backed by simmoe.workload's builder."""

    def __init__(self, scenario) -> None:
        try:
            from simmoe.workload import builder
        except ImportError as err:  # the builder is another module's job; say what is missing
            raise InputError("the workload builder (simmoe.workload.builder) is not available",
                             field="simmoe.workload.builder", value=str(err), has_value=True,
                             allowed="an installed simmoe with the workload builder") from None
        self._builder = builder
        self.scenario = scenario

    def stage_program(self, virtual_stage: int):
        prog = self._builder.build_stage_program(self.scenario, virtual_stage)
        self.moe_tokens = getattr(prog, "moe_tokens", None)
        return list(prog.forward), list(prog.backward)

    def step_ops(self, pp_rank: int):
        # The chunks the schedule puts on pp_rank: virtual stages pp_rank + j * pp; DualPipe's
        # pp_rank and pp - 1 - pp_rank (both copies' gradients are reduced and updated).
        return list(self._builder.build_rank_step_ops(self.scenario, pp_rank))


@dataclass
class StepStats:
    """Routing statistics of one step (over every (MoE layer, micro-batch) draw)."""

    assignments: int = 0
    dropped: int = 0
    load_max_over_mean: list = field(default_factory=list)

    @property
    def dropped_fraction(self) -> float:
        return self.dropped / self.assignments if self.assignments else 0.0

    @property
    def expert_load_max_over_mean(self) -> float:
        return float(np.mean(self.load_max_over_mean)) if self.load_max_over_mean else float("nan")


def _interval_union(iv: np.ndarray) -> np.ndarray:
    if len(iv) == 0:
        return iv.reshape(0, 2)
    iv = iv[np.argsort(iv[:, 0], kind="stable")]
    ends = np.maximum.accumulate(iv[:, 1])
    new = np.ones(len(iv), bool)
    new[1:] = iv[1:, 0] > ends[:-1]
    starts = iv[new, 0]
    idx = np.flatnonzero(new)
    stop = np.append(idx[1:], len(iv)) - 1
    return np.column_stack([starts, ends[stop]])


def _measure(iv: np.ndarray) -> float:
    return float((iv[:, 1] - iv[:, 0]).sum()) if len(iv) else 0.0


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Measure of the intersection of two unions of disjoint sorted intervals."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i, 0], b[j, 0]), min(a[i, 1], b[j, 1])
        if hi > lo:
            total += hi - lo
        if a[i, 1] < b[j, 1]:
            i += 1
        else:
            j += 1
    return total


@dataclass
class StepResult:
    step: int
    timeline: StepTimeline
    stats: StepStats
    critical: int  # index of the rank that finished last

    @property
    def step_time_s(self) -> float:
        return self.timeline.step_time_s

    def breakdown(self) -> dict:
        """Per-rank sums on the critical rank (docs/output.md)."""
        tl = self.timeline.timelines[self.critical]
        comp = _interval_union(np.array([(a, b) for a, b, *_ in tl.compute], float).reshape(-1, 2))
        comm = _interval_union(np.array([(a, b) for a, b, *_ in tl.comm], float).reshape(-1, 2))
        busy = _interval_union(np.vstack([comp, comm]))
        cat = {}
        for a, b, _label, category, phase in tl.comm:
            cat[category] = cat.get(category, 0.0) + (b - a)
        return {
            "expert_compute_s": tl.expert_s,
            "a2a_dispatch_s": cat.get("dispatch", 0.0),
            "a2a_combine_s": cat.get("combine", 0.0),
            "exposed_comm_s": _measure(comm) - _overlap(comm, comp),
            "pipeline_bubble_s": self.step_time_s - _measure(busy),
            "host_late_s": tl.host_late_s,
            "dp_comm_s": cat.get("dp", 0.0),
            "optimizer_s": tl.step_compute_s,
        }


class Simulation:
    """Everything built once for a scenario; ``run_step(step)`` simulates one step."""

    def __init__(self, scenario, *, seed: int | None = None, reduce: bool = True,
                 programs: ProgramSource | None = None, compute=None, topology=None,
                 network_params: NetworkParams = DEFAULT_NETWORK_PARAMS,
                 fidelity: str | None = None, coflow: bool = True) -> None:
        from simmoe.placement import ParallelLayout

        self.scenario = scenario
        self.seed = scenario.simulation.seed if seed is None else int(seed)
        self.reduce = reduce
        self.fidelity = fidelity or scenario.simulation.fidelity
        self.network_params = network_params
        self.coflow = coflow
        par = scenario.parallelism
        self.pp, self.vpp = par.pp, par.vpp
        self.stages = par.pp * par.vpp
        if topology is None:
            from simmoe.topology.loader import load_topology

            topology = load_topology(scenario.topology_path, nodes=scenario.cluster.nodes)
        self.topology = topology
        self.layout = ParallelLayout(tp=par.tp, pp=par.pp, cp=par.cp, dp=par.dp, ep=par.ep,
                                     expert_tp=par.expert_tp, vpp=par.vpp)
        if self.layout.world_size > topology.num_gpus:
            raise InputError(f"the layout needs {self.layout.world_size} GPUs but the topology has "
                             f"{topology.num_gpus}", field="parallelism", value=self.layout.world_size)
        gpu = scenario.gpu_model or topology.gpu_model
        if compute is None:
            from simmoe.compute import RooflineModel

            # parallelism.comm_sms, SMs held by overlapped communication kernels, are taken from
            # every compute kernel (docs/compute.md, "Communication SMs"). Not via
            # calibration.load_compute_model: that module pulls in pyarrow, ~0.5 s of setup.
            compute = RooflineModel(gpu, comm_sms=scenario.parallelism.comm_sms,
                                    comm_sms_field="parallelism.comm_sms")
        self.compute = compute
        # SMs an NCCL collective in flight keeps from this GPU's compute (docs/compute.md).
        self.nccl_sms = network_params.nccl_sms(gpu_spec(gpu).nvlink_links)
        self._compute_held = None
        self.m = scenario.micro_batches_per_step
        if self.m < 1:
            raise InputError("fewer sequences per step than micro_batch * dp", field="training.global_batch",
                             value=scenario.training.global_batch,
                             allowed=f">= micro_batch * dp = {scenario.training.micro_batch * par.dp}")
        blocking = par.pipeline_p2p == "blocking"
        self.schedule = build_schedule(par.schedule, par.pp, self.m, par.vpp, par.schedule_micro_batches,
                                       lockstep=blocking and par.schedule == "interleaved",
                                       ep_overlap=par.ep_comm_overlap)
        # Blocking pipeline sends: each rank's slots and commits in order (docs/engine.md).
        self.p2p_plan = build_plan(par.schedule, par.pp, self.m, par.vpp, par.schedule_micro_batches,
                                   schedule=self.schedule) if blocking else None
        # Micro-batches each (pp rank, virtual stage) runs: all m, or under DualPipe the half that
        # enters from the end the rank's copy of the stage serves. All-to-all link loads are built
        # for those only.
        at: dict[tuple[int, int], set] = {}
        for rank, items in enumerate(self.schedule):
            for it in items:
                at.setdefault((rank, virtual_stage(it, par.pp, rank)), set()).add(it.mb)
        self._mbs_at = {k: np.array(sorted(v), np.int64) for k, v in at.items()}
        source = programs if programs is not None else WorkloadPrograms(scenario)
        self._source = source
        self.programs: dict[tuple[int, str], Program] = {}
        split = any(it.defer_w for items in self.schedule for it in items)
        for v in range(self.stages):
            fwd, bwd = source.stage_program(v)
            self.programs[(v, "fwd")] = compile_program(fwd, f"stage {v} forward")
            self.programs[(v, "bwd")] = compile_program(bwd, f"stage {v} backward")
            if split:  # zero-bubble backwards: input gradient now, weight gradient later
                self.programs[(v, "bwd_in")] = compile_program(bwd, f"stage {v} backward", grad="input")
                self.programs[(v, "wgt")] = compile_program(weight_gradient_ops(bwd),
                                                            f"stage {v} weight gradient", grad="weight")
        self.step_programs = {s: compile_program(source.step_ops(s), f"pp rank {s} step")
                              for s in range(par.pp)}
        self._server = np.asarray(topology.server_of_gpu)
        self._rows: dict[str, np.ndarray] = {}
        self._setup_ranks()
        self._setup_routing()
        self._static_s: dict = {}
        self._routed_ops: dict = {}  # (program key, node) -> its routed-expert ops
        self._node_expert_s: dict = {}  # (program key, node) -> expert seconds per micro-batch
        self._ep_coord: dict = {}  # global rank -> EP coordinate
        self._static_coll: dict = {}
        self._multiplicity: dict = {}
        self._fabric: CoflowFabric | None = None  # the coflow network's state across steps
        host = scenario.host
        self.host_costs = (None if host.stack == "none"
                           else host_costs(host.stack, host.cpu, tuple(host.cuda_graph_scope),
                                           ep_overlap=scenario.parallelism.ep_comm_overlap,
                                           attention=scenario.model.attention.type))
        self._moe_layer_set = frozenset(self._moe_layers())
        self._host_s: dict = {}  # (program key, id of host_costs) -> program_host_s
        self._a2a_rows: dict = {}  # (moe layer, combine, EP group) -> per micro-batch coflow rows
        self._a2a_groups: dict = {}  # moe layer -> EP groups still to build their rows
        self._ep_gpu_tuples: dict = {}
        self._requests: dict = {}

    # ------------------------------------------------------------------ ranks
    def _setup_ranks(self) -> None:
        lay = self.layout
        coords = [(0, 0, 0)] if self.reduce else list(
            itertools.product(range(lay.dp), range(lay.cp), range(lay.tp)))
        ranks = []
        for q, (d, c, t) in enumerate(coords):
            for s in range(self.pp):
                g = lay.rank_of(tp=t, cp=c, dp=d, pp=s)
                ranks.append(SimRank(len(ranks), q, s, int(g)))
        self.ranks = ranks
        self._simulated = np.zeros(lay.world_size, bool)
        self._simulated[[r.global_rank for r in ranks]] = True

    def _row_of(self, dim: str) -> np.ndarray:
        """(world,) the row of layout.groups(dim) holding each rank."""
        if dim not in self._rows:
            groups = self.layout.groups(dim)
            row = np.empty(self.layout.world_size, np.int64)
            row[groups] = np.arange(len(groups))[:, None]
            self._rows[dim] = row
        return self._rows[dim]

    def _gpus(self, ranks) -> np.ndarray:
        return self.layout.rank_to_gpu[np.asarray(ranks)]

    def _gpu_tuple(self, ep_row: int, gpus) -> tuple:
        got = self._ep_gpu_tuples.get(ep_row)
        if got is None:
            got = self._ep_gpu_tuples[ep_row] = tuple(int(x) for x in gpus)
        return got

    # ------------------------------------------------------------------ routing
    def _moe_layers(self) -> list[int]:
        layers = set()
        for prog in self.programs.values():
            for op in prog.ops:
                if (isinstance(op, ExpertGemmOp) and not op.shared) or (
                        isinstance(op, CollectiveOp) and op.collective.startswith("alltoall")):
                    layers.add(op.layer)
        return sorted(layers)

    def _setup_routing(self) -> None:
        model = self.scenario.model
        layers = self._moe_layers()
        self.moe_index = {layer: i for i, layer in enumerate(layers)}
        self._routing: dict[int, object] = {}  # moe layer -> RoutingModel
        self._experts_of_rank: dict[int, np.ndarray] = {}
        self._layer_stage: dict[int, int] = {}
        self._layer_vstage: dict[int, int] = {}
        self._draws: dict = {}
        self._batch_draws: dict = {}
        self._layer_arr: dict = {}
        self._layer_stat: dict = {}
        self.stats = StepStats()
        if not layers:
            return
        if model.moe is None:
            raise InputError("the ops contain expert GEMMs or all-to-alls but the model has no moe section",
                             field="model.moe", value=None)
        from simmoe.placement import experts_of_rank, place_experts
        from simmoe.routing import EPGroup, RoutingModel

        moe = model.moe
        par = self.scenario.parallelism
        r = self.scenario.routing
        imb = r.imbalance
        tr = self.scenario.training
        tokens = getattr(self._source, "moe_tokens", None) or -(-tr.micro_batch * tr.seq_len // (par.tp * par.cp))
        # Layer -> pipeline rank holding it.
        for (v, _phase), prog in self.programs.items():
            for op in prog.ops:
                if op.layer in self.moe_index:
                    self._layer_stage[self.moe_index[op.layer]] = v % self.pp
                    self._layer_vstage[self.moe_index[op.layer]] = v
        kw = dict(num_layers=len(layers), popularity=imb.model,
                  zipf_s=imb.s if imb.s is not None else 1.0,
                  dirichlet_alpha=imb.alpha if imb.alpha is not None else 1.0,
                  trace=imb.trace_file, drift=imb.drift.model, routing=r.policy,
                  max_nodes_per_token=r.node_limited_max_nodes, capacity_factor=r.capacity_factor,
                  pad_to_capacity=(r.execution == "padded") if r.capacity_factor is not None else False,
                  seed=self.seed)
        ep_row = self._row_of("ep")
        groups = self.layout.groups("ep")
        cache: dict = {}
        probe = None
        for moe_i in range(len(layers)):
            s = self._layer_stage[moe_i]
            rep = self.ranks[s].global_rank  # pipeline 0's rank of stage s
            gpus = self._gpus(groups[ep_row[rep]])
            nodes = self._server[gpus]
            if r.expert_placement == "topology_aware":
                if probe is None:
                    g0 = EPGroup(np.arange(moe.routed_experts) // (moe.routed_experts // par.ep),
                                 nodes, tokens, moe.top_k)
                    probe = RoutingModel(g0, **kw)
                load = probe.popularity(0, moe_i)
                placement = place_experts(moe.routed_experts, par.ep, "topology_aware",
                                          ep_group_gpus=gpus, topology=self.topology, expert_load=load)
            else:
                placement = place_experts(moe.routed_experts, par.ep, r.expert_placement)
            key = (s, placement.tobytes())
            if key not in cache:
                cache[key] = RoutingModel(EPGroup(placement, nodes, tokens, moe.top_k), **kw)
            self._routing[moe_i] = cache[key]
            self._experts_of_rank[moe_i] = experts_of_rank(placement, par.ep)

    def _layer_draws(self, step: int, moe_i: int) -> list:
        """Every micro-batch's draw of one MoE layer, drawn at once (the same draws as one by one:
        each (step, layer, micro-batch) keeps its own random stream)."""
        ds = self._batch_draws.get(moe_i)
        if ds is None:
            ds = self._batch_draws[moe_i] = self._routing[moe_i].draw_batch(step, moe_i, range(self.m))
        return ds

    def _layer_arrays(self, step: int, moe_i: int):
        """The layer's draws of micro-batches 0 .. m-1 as stacked arrays
        (:class:`simmoe.routing.model.LayerDraws`: compute tokens per expert, dispatch tokens per
        (source, destination) rank and per (source, destination node)); from the draws when the
        layer's draw objects are already made, else straight from the routing model's blocks."""
        got = self._layer_arr.get(moe_i)
        if got is None:
            ds = self._batch_draws.get(moe_i)
            if ds is None and not (self.fidelity == "flow" and self.coflow):
                ds = self._layer_draws(step, moe_i)  # the other networks use the draw objects
            if ds is None:
                got = self._routing[moe_i].draw_layer(step, moe_i, self.m)
            else:
                got = LayerDraws(np.stack([d.compute_tokens_per_expert for d in ds]),
                                 np.stack([d.dispatch_tokens_per_src_dst_rank for d in ds]),
                                 np.stack([d.dispatch_tokens_per_src_dst_node for d in ds]))
            self._layer_arr[moe_i] = got
        return got

    def _count_draw(self, step: int, moe_i: int, mb: int) -> None:
        """Count a draw's statistics at its first use (as :meth:`_draw`) without making the draw
        object where the layer's arrays suffice (dropless block draws: work = load)."""
        if (moe_i, mb) in self._draws:
            return
        model = self._routing[moe_i]
        if mb < self.m and model.draws_in_blocks and model.execution == "dropless":
            sums, ratios = self._layer_stats(step, moe_i)
            self._draws[(moe_i, mb)] = None  # counted; the object is made on demand
            self.stats.assignments += sums[mb]
            self.stats.load_max_over_mean.append(ratios[mb])
        else:
            self._draw(step, moe_i, mb)

    def _layer_stats(self, step: int, moe_i: int) -> tuple[list, list]:
        """Per micro-batch of a layer: assignments (int) and ``max_over_mean`` of the compute
        tokens per expert, for all micro-batches at once. The same numbers as one by one: integer
        sums, and sums of integer-valued floats far below 2**53 are exact in any order, so the
        means, and the max / mean quotients, are bit for bit those of ``max_over_mean``."""
        got = self._layer_stat.get(moe_i)
        if got is None:
            comp = self._layer_arrays(step, moe_i).compute_tokens_per_expert
            load = comp.astype(float)
            mean = load.mean(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(mean > 0, load.max(axis=1) / mean, 1.0)
            got = self._layer_stat[moe_i] = (comp.sum(axis=1).tolist(), ratio.tolist())
        return got

    def _draw(self, step: int, moe_i: int, mb: int):
        key = (moe_i, mb)
        d = self._draws.get(key)
        if d is None and key in self._draws:  # counted by _count_draw
            d = self._draws[key] = self._layer_draws(step, moe_i)[mb]
        elif d is None:
            d = self._layer_draws(step, moe_i)[mb] if mb < self.m else \
                self._routing[moe_i].draw(step, moe_i, mb)
            # Statistics are counted at first use, in the engine's order, as before batching.
            self._draws[key] = d
            if d.execution == "dropless" and d.routing == "token_choice":
                # Work equals load: the per-expert totals are already summed (same integers).
                self.stats.assignments += int(d.compute_tokens_per_expert.sum())
                self.stats.load_max_over_mean.append(max_over_mean(d.compute_tokens_per_expert))
            else:
                self.stats.assignments += d.assignments
                self.stats.dropped += d.dropped_assignments
                self.stats.load_max_over_mean.append(d.expert_load_max_over_mean)
        return d

    # ------------------------------------------------------------------ compute
    def _dtype(self, op) -> str:
        d = getattr(op, "dtype", "bf16")
        return "bf16" if d == "fp32" else d  # FP32 GEMMs (router) timed as BF16: tiny, documented

    def _model(self, held: bool):
        """The compute model of kernels that run beside an NCCL collective (``held``) or not."""
        if not held:
            return self.compute
        if self._compute_held is None:
            self._compute_held = self.compute.with_sms_held(self.nccl_sms)
        return self._compute_held

    def _op_time_s(self, op, grad: str = "both", held: bool = False) -> float:
        """Seconds of one op; ``grad`` picks the part of a backward GEMM (program.GRADS)."""
        c = self._model(held)
        bwd = op.phase == "bwd"
        if isinstance(op, GemmOp):
            if bwd:
                return float(_grad_part(gemm_backward_s(c, op.m, op.n, op.k, self._dtype(op)), grad)) * op.count
            return float(c.gemm_s(op.m, op.n, op.k, self._dtype(op))) * op.count
        if isinstance(op, AttentionOp):
            return float(c.attention_s(op.batch, op.seq_len, op.heads, op.head_dim_qk, op.head_dim_v,
                                       op.causal, self._dtype(op), bwd))
        if isinstance(op, MemoryOp):
            return float(c.memory_bound_s(op.bytes_moved, 1, op.access)) if op.bytes_moved > 0 else 0.0
        if isinstance(op, ExpertGemmOp) and op.shared:
            tr, par = self.scenario.training, self.scenario.parallelism
            m = -(-tr.micro_batch * tr.seq_len // (par.tp * par.cp))
            if bwd:
                return float(_grad_part(gemm_backward_s(c, m, op.n, op.k, self._dtype(op)), grad))
            return float(c.gemm_s(m, op.n, op.k, self._dtype(op)))
        return 0.0

    def _layer_gemm_times(self, step: int, moe_i: int, op: ExpertGemmOp, held: bool = False):
        """A grouped GEMM of a MoE layer timed on every EP rank for micro-batches 0 .. m-1 in one
        call of the compute model: (micro-batches, ep) seconds forward, their BackwardTimes
        backward (timed once: the input- and weight-gradient programs take their parts)."""
        key = ("x", moe_i, op.n, op.k, op.dtype, op.phase, held)
        got = self._static_s.get(key)
        if got is None:
            comp = self._layer_arrays(step, moe_i).compute_tokens_per_expert
            tokens = comp[:, self._experts_of_rank[moe_i]]  # (micro-batches, ep, local experts)
            c = self._model(held)
            if op.phase == "bwd":
                got = grouped_gemm_backward_s(c, tokens, op.n, op.k, self._dtype(op))
            else:
                got = c.grouped_gemm_s(tokens, op.n, op.k, self._dtype(op))
            self._static_s[key] = got
        return got

    def _expert_times(self, step: int, op: ExpertGemmOp, mb: int,
                      grad: str = "both", held: bool = False) -> tuple[np.ndarray, float]:
        """((ep,) seconds of this grouped GEMM on each EP rank of the group, their max). One call
        of the compute model times every micro-batch of the layer (its arrays take a batch axis)."""
        moe_i = self.moe_index[op.layer]
        if op.phase != "bwd":
            grad = "both"
        if held and mb < self.m:
            return self._held_expert_times(step, moe_i, op, mb, grad)
        got = self._expert_layer_times(step, moe_i, op, grad, held)
        if mb >= got[0].shape[0]:  # outside the step's micro-batches (tests poke at it)
            d = self._draw(step, moe_i, mb)
            tokens = np.asarray(d.compute_tokens_per_expert)[self._experts_of_rank[moe_i]]
            c = self._model(held)
            fn = (lambda x: _grad_part(grouped_gemm_backward_s(c, x, op.n, op.k, self._dtype(op)), grad)) \
                if op.phase == "bwd" else (lambda x: c.grouped_gemm_s(x, op.n, op.k, self._dtype(op)))
            t = np.asarray(fn(tokens), float)
            return t, float(t.max())
        return got[0][mb], got[1][mb]

    def _expert_layer_times(self, step: int, moe_i: int, op: ExpertGemmOp, grad: str,
                            held: bool) -> tuple[np.ndarray, list]:
        """((micro-batches, ep) seconds of a grouped GEMM's part ``grad``, per micro-batch their
        max over the EP ranks), for every micro-batch of the layer at once."""
        key = ("x", moe_i, op.n, op.k, op.dtype, op.phase, grad, held)
        got = self._static_s.get(key)
        if got is None:
            times = self._layer_gemm_times(step, moe_i, op, held)
            t = np.asarray(_grad_part(times, grad) if op.phase == "bwd" else times, float)
            t = t.reshape(len(t), -1)
            got = self._static_s[key] = (t, t.max(axis=1).tolist())
        return got

    def _held_expert_times(self, step: int, moe_i: int, op: ExpertGemmOp, mb: int,
                           grad: str) -> tuple[np.ndarray, float]:
        """:meth:`_expert_times` of a kernel beside an NCCL collective (SMs held): a few
        micro-batches of a layer need it (~3% of the calls at DeepSeek size), so one micro-batch is
        timed at a time instead of the whole layer; the compute model works row by row along the
        batch axis, so these are the batched call's numbers (tests compare)."""
        key = ("x", "held", moe_i, op.n, op.k, op.dtype, op.phase, mb)
        times = self._static_s.get(key)
        if times is None:
            comp = self._layer_arrays(step, moe_i).compute_tokens_per_expert
            tokens = comp[mb][self._experts_of_rank[moe_i]]  # (ep, local experts)
            c = self._model(True)
            times = self._static_s[key] = (
                grouped_gemm_backward_s(c, tokens, op.n, op.k, self._dtype(op)) if op.phase == "bwd"
                else c.grouped_gemm_s(tokens, op.n, op.k, self._dtype(op)))
        t = np.asarray(_grad_part(times, grad) if op.phase == "bwd" else times, float).reshape(-1)
        return t, float(t.max())

    def node_time_s(self, r: SimRank, key: tuple, prog: Program, k: int, mb: int, held: bool = False):
        skey = (key, k, held)
        base = self._static_s.get(skey)
        node = prog.nodes[k]
        if base is None:
            base = sum(self._op_time_s(prog.ops[i], prog.grad, held) for i in node.ops
                       if not (isinstance(prog.ops[i], ExpertGemmOp) and not prog.ops[i].shared))
            self._static_s[skey] = base
        if not prog.has_expert[k]:
            return base, 0.0
        # Called ~70k times per step at 2048 GPUs: the routed-expert ops of a node and a rank's EP
        # coordinate are looked up once.
        routed = self._routed_ops.get((key, k))
        if routed is None:
            routed = self._routed_ops[(key, k)] = tuple(
                prog.ops[i] for i in node.ops if isinstance(prog.ops[i], ExpertGemmOp) and not prog.ops[i].shared)
        if self.reduce:
            ep_coord = None
            if not held and mb < self.m:
                per_mb = self._node_expert_s.get((key, k))
                if per_mb is None:
                    per_mb = self._node_expert_s[(key, k)] = self._node_expert_maxima(prog, routed)
                ex = per_mb[mb]
                return base + ex, ex
        else:
            ep_coord = self._ep_coord.get(r.global_rank)
            if ep_coord is None:
                ep_coord = self._ep_coord[r.global_rank] = int(self.layout.coords(r.global_rank)["ep"])
        ex = 0.0
        for op in routed:
            t, t_max = self._expert_times(self._step, op, mb, prog.grad, held)
            # Reduced: the busiest EP rank sets the pace (all-to-all synchronises the group).
            ex += t_max if ep_coord is None else float(t[ep_coord])
        return base + ex, ex

    def _node_expert_maxima(self, prog: Program, routed: tuple) -> list[float]:
        """Per micro-batch of the step: a node's routed-expert seconds on the busiest EP rank, summed
        over its ops in their order (what node_time_s adds op by op: the same floats)."""
        ex = [0.0] * self.m
        for op in routed:
            grad = prog.grad if op.phase == "bwd" else "both"
            maxima = self._expert_layer_times(self._step, self.moe_index[op.layer], op, grad, False)[1]
            ex = [a + b for a, b in zip(ex, maxima)]
        return ex

    # ------------------------------------------------------------------ host issue
    def node_host_s(self, key: tuple, prog: Program):
        """Host seconds and syncs per node of a program (simmoe.engine.host); None: host.stack
        none."""
        if self.host_costs is None:
            return None
        # The engine is rebuilt every step; a program's host costs are not.
        ckey = (key, id(self.host_costs))
        got = self._host_s.get(ckey)
        if got is None:
            # a recompute in a backward program costs its forward op's share (step programs: none)
            forward = self.programs.get((key[0], "fwd"))
            got = self._host_s[ckey] = program_host_s(prog, self.host_costs, self._moe_layer_set,
                                                      forward)
        return got

    @property
    def host_sync_s(self) -> float:
        return self.host_costs.sync_s

    # ------------------------------------------------------------------ communication
    def _replica_multiplicity(self, dim: str, s: int, hierarchical: bool,
                              dst_stage: int | None = None) -> np.ndarray | None:
        """Per-link ratio (all symmetric copies' load) / (the simulated group's load), for the
        uniform pattern of ``dim`` collectives on pipeline rank ``s`` (pipeline sends: from s to
        ``dst_stage``); None when nothing shares."""
        key = (dim, s, hierarchical, dst_stage)
        if key in self._multiplicity:
            return self._multiplicity[key]
        lay = self.layout
        stage_ranks = np.flatnonzero(lay.stage_of_rank == s)
        rep = self.ranks[s].global_rank
        if dim == "pp":
            c = lay.coords(stage_ranks)
            dst = lay.rank_of(tp=c["tp"], cp=c["cp"], dp=c["dp"], pp=np.full(len(stage_ranks), dst_stage))
            src_g, dst_g = self._gpus(stage_ranks), self._gpus(dst)
            is_rep = stage_ranks == rep
            flows = [(src_g, dst_g, np.ones(len(src_g)), is_rep)]
        else:
            groups = lay.groups(dim)
            rows = groups[lay.stage_of_rank[groups[:, 0]] == s]
            if len(rows) <= 1:
                self._multiplicity[key] = None
                return None
            flows = []
            for row in rows:
                gpus = self._gpus(row)
                n = len(gpus)
                if n < 2:
                    continue
                if dim == "ep":
                    nn = len(np.unique(self._server[gpus]))
                    cl = moe_alltoall(gpus, np.ones((n, n)), 1.0, server_of_gpu=self._server,
                                      tokens_src_node=np.ones((n, nn)), hierarchical=hierarchical)
                else:
                    cl = coll.allreduce(gpus, 1.0, server_of_gpu=self._server)
                f = cl.stages[0].flows
                flows.append((f.src, f.dst, f.size_bytes, np.full(len(f), rep in row)))
        if not flows:
            self._multiplicity[key] = None
            return None
        src = np.concatenate([f[0] for f in flows])
        dst = np.concatenate([f[1] for f in flows])
        size = np.concatenate([f[2] for f in flows])
        mine = np.concatenate([f[3] for f in flows])
        keep = src != dst
        R = self.topology.route_matrix(src[keep], dst[keep])
        load_all = np.asarray(R.T @ size[keep]).reshape(-1)
        load_rep = np.asarray(R.T @ (size[keep] * mine[keep])).reshape(-1)
        mult = np.ones(len(load_all))
        used = load_rep > 0
        mult[used] = load_all[used] / load_rep[used]
        out = None if np.allclose(mult, 1.0) else mult
        self._multiplicity[key] = out
        return out

    def _engine_name(self, base: str | None, dim: str, s: int, hierarchical: bool = False,
                     dst_stage: int | None = None) -> str | None:
        """The transport-engine name a collective carries: ``base``, or in a reduced flow-level
        run the name under which the network holds its replica multiplicities."""
        if self.reduce and self.fidelity == "flow":
            mult = self._replica_multiplicity(dim, s, hierarchical, dst_stage)
            return self.network.replica_engine(base, f"{dim}:{s}:{int(hierarchical)}:{dst_stage}", mult)
        return base

    def _finish(self, collective, dim: str, s: int, hierarchical: bool = False,
                dst_stage: int | None = None):
        collective.meta["engine"] = self._engine_name(collective.meta.get("engine"), dim, s,
                                                      hierarchical, dst_stage)
        return collective

    def _a2a_row(self, step: int, moe_i: int, mb: int, combine: bool, row: int, gpus, s: int,
                 hier: bool):
        """(coflow row, tokens moved, route latency) of one dispatch / combine; a layer's
        micro-batches are built at once, both directions, by the network's link-load table of
        the EP group."""
        rows = self._a2a_rows.get((moe_i, combine, row))
        if rows is None:
            self._build_a2a_rows(step, moe_i, row, gpus, s, hier)
            rows = self._a2a_rows[(moe_i, combine, row)]
        i = rows[2].get(mb)
        if i is None:  # outside the micro-batches this rank runs on the stage (tests poke at it)
            d = self._draw(step, moe_i, mb)
            loads = self._fabric.moe_link_loads(("ep", row, hier), gpus, self._server, hier)
            x = loads.inputs(d.dispatch_tokens_per_src_dst_rank, d.dispatch_tokens_per_src_dst_node)
            return self._fabric.moe_rows(loads, x, combine, rows[1])[0], rows[1]
        return rows[0][i], rows[1]

    def _build_a2a_rows(self, step: int, moe_i: int, row: int, gpus, s: int, hier: bool) -> None:
        """Coflow rows of every dispatch and combine of a MoE layer by EP group ``row``: one
        link-load product per direction over the micro-batches the group's rank runs there. The
        token counts in (about 4 MB a layer at DeepSeek size) are dropped once every EP group
        that runs the layer has its rows: memory freed this way is reused for the next layers
        instead of being faulted in fresh (at 2048 GPUs: 207,000 -> 79,000 page faults a step,
        0.5 -> 0.2 s of system time)."""
        loads = self._fabric.moe_link_loads(("ep", row, hier), gpus, self._server, hier)
        v = self._layer_vstage[moe_i]
        mbs = self._mbs_at.get((s, v), np.zeros(0, np.int64))
        arr = self._layer_arrays(step, moe_i)
        if arr.dispatch_tokens_per_src_dst_rank is None:  # dropped: a group not foreseen
            arr = self._routing[moe_i].draw_layer(step, moe_i, self.m)  # the same draws
        x = loads.inputs(arr.dispatch_tokens_per_src_dst_rank, arr.dispatch_tokens_per_src_dst_node,
                         rows=mbs)
        engine = self._engine_name(self.scenario.routing.a2a_engine_name, "ep", s, hier)
        index = {int(b): i for i, b in enumerate(mbs)}
        for combine in (False, True):
            self._a2a_rows[(moe_i, combine, row)] = (self._fabric.moe_rows(loads, x, combine, engine),
                                                     engine, index)
        waiting = self._a2a_groups.get(moe_i)
        if waiting is None:  # EP groups of the simulated ranks that run the layer's stage
            ep_row = self._row_of("ep")
            waiting = self._a2a_groups[moe_i] = {int(ep_row[r.global_rank]) for r in self.ranks
                                                 if (r.pp_rank, v) in self._mbs_at}
        waiting.discard(row)
        if not waiting and moe_i in self._layer_arr:
            self._layer_arr[moe_i] = self._layer_arr[moe_i]._replace(
                dispatch_tokens_per_src_dst_rank=None, dispatch_tokens_per_src_dst_node=None)

    def node_collective(self, r: SimRank, key: tuple, prog: Program, k: int, mb: int) -> CommRequest:
        ck = (r.index, key, k)
        make = self._requests.get(ck)
        if make is None:
            make = self._requests[ck] = self._request_maker(r, key, prog, k)
        return make(mb)

    def _request_maker(self, r: SimRank, key: tuple, prog: Program, k: int) -> Callable[[int], CommRequest]:
        """micro-batch -> the CommRequest of one communication node of one rank's program (what
        does not depend on the micro-batch is worked out once per step)."""
        op = prog.ops[prog.nodes[k].ops[0]]
        dim = op.group
        g = r.global_rank
        s = r.pp_rank
        if op.collective == "p2p_send":
            v, phase = key[0], key[1]
            dst_v = v + 1 if phase == "fwd" else v - 1
            dst_pp = stage_rank(dst_v, self.pp, reverse=len(key) > 2)  # DualPipe's reversed pipeline
            c = self.layout.coords(g)
            dst = self.layout.rank_of(tp=c["tp"], cp=c["cp"], dp=c["dp"], pp=dst_pp)
            skey = ("p2p", g, dst, op.size_bytes)

            def build():
                cl = self._static_coll.get(skey)
                if cl is None:
                    src_gpu, dst_gpu = self._gpus([g, dst])
                    cl = coll.p2p([src_gpu, dst_gpu], op.size_bytes, pairs=[(src_gpu, dst_gpu)]) \
                        if src_gpu != dst_gpu else _empty([src_gpu])
                    cl = self._finish(cl, "pp", s, dst_stage=dst_pp)
                    cl.meta["cache_key"] = skey
                    self._static_coll[skey] = cl
                return cl
            req = CommRequest(build, "pp")
            return lambda mb: req
        row = self._row_of(dim)[g]
        members = 1 if self.reduce else len(self.layout.groups(dim)[row])
        ranks = self.layout.groups(dim)[row]
        if op.collective in ("alltoall_dispatch", "alltoall_combine"):
            moe_i = self.moe_index[op.layer]
            hier = self.scenario.routing.hierarchical_a2a
            gpus = self._gpus(ranks)
            combine = op.collective == "alltoall_combine"
            category = "combine" if combine else "dispatch"
            coflow = self.fidelity == "flow" and self.coflow
            ep_row = int(row)
            name = "moe_combine" if combine else "moe_dispatch"

            def build(step: int, mb: int):
                if coflow:
                    self._count_draw(step, moe_i, mb)
                    # The coflow network needs only link rows: no flow list is built.
                    (crow, tokens, lat), engine = self._a2a_row(step, moe_i, mb, combine, ep_row, gpus, s, hier)
                    total = tokens * op.bytes_per_token
                    return Collective(op=name, gpus=self._gpu_tuple(ep_row, gpus), size_bytes=total / len(gpus),
                                      stages=_NO_FLOWS, meta={"engine": engine, "coflow_rows": [(crow, total, lat)]})
                d = self._draw(step, moe_i, mb)
                cl = moe_alltoall(gpus, d.dispatch_tokens_per_src_dst_rank, op.bytes_per_token,
                                  server_of_gpu=self._server,
                                  tokens_src_node=d.dispatch_tokens_per_src_dst_node,
                                  hierarchical=hier, combine=combine,
                                  engine=self.scenario.routing.a2a_engine_name)
                return self._finish(cl, "ep", s, hier)

            # SM-based all-to-alls (DeepEP) hold the reserved parallelism.comm_sms throughout;
            # without a reservation they hold NCCL's SM count while in flight, whichever
            # routing.a2a_engine moves them (HybridEP's own 16-32 SMs are not modelled apart).
            holds = self.scenario.parallelism.comm_sms == 0

            def request(mb: int) -> CommRequest:
                rv = None if members == 1 else (dim, ep_row, key, mb, k)
                return CommRequest(partial(build, self._step, mb), category, rv, members, holds)
            return request
        skey = (op.collective, dim, int(row), op.size_bytes)

        def build():
            cl = self._static_coll.get(skey)
            if cl is None:
                gpus = self._gpus(ranks)
                if len(gpus) < 2 or op.size_bytes <= 0:
                    cl = _empty(gpus)
                else:
                    fn = {"allreduce": coll.allreduce, "reduce_scatter": coll.reduce_scatter,
                          "all_gather": coll.all_gather}.get(op.collective)
                    if fn is None:
                        raise InputError("unsupported collective for a group", field=f"ops.{op.name}",
                                         value=op.collective,
                                         allowed="allreduce, reduce_scatter, all_gather, "
                                                 "alltoall_dispatch, alltoall_combine, p2p_send")
                    cl = fn(gpus, op.size_bytes, server_of_gpu=self._server)
                cl = self._finish(cl, dim, s)
                cl.meta["cache_key"] = skey
                self._static_coll[skey] = cl
            return cl
        category = COMM_CATEGORY.get(dim, "other")
        if members == 1:
            req = CommRequest(build, category, holds_sms=op.holds_sms)
            return lambda mb: req
        return lambda mb: CommRequest(build, category, (dim, int(row), key, mb, k), members, op.holds_sms)

    # ------------------------------------------------------------------ steps
    def run_step(self, step: int) -> StepResult:
        env = EngineEnvironment()
        if self.fidelity == "analytical":
            self.network = AnalyticalSimNetwork(env, self.topology, self.network_params)
        elif self.coflow:
            if self._fabric is None:  # routed collectives and scales outlive the step
                self._fabric = CoflowFabric(self.topology, self.network_params)
            self.network = CoflowNetwork(env, fabric=self._fabric)
        else:
            self.network = ReplicaSimNetwork(env, self.topology, self.network_params)
        self._step = step
        self._draws = {}
        self._batch_draws = {}
        self._layer_arr = {}
        self._layer_stat = {}
        self._a2a_rows = {}
        self._a2a_groups = {}
        self._node_expert_s = {}  # expert times depend on the step's draws
        self._requests = {}  # (rank, program key, node) -> micro-batch -> CommRequest
        self.stats = StepStats()
        # Expert times depend on the step's draws; static times and collectives do not.
        self._static_s = {k: v for k, v in self._static_s.items() if k[0] != "x"}
        if self.fidelity == "flow" and not self.coflow:
            self._static_coll.clear()  # collectives carry engine names registered per network
        engine = StepEngine(env, self.network, self.ranks, self.schedule, self.programs,
                            self.step_programs, self, pp=self.pp, vpp=self.vpp, p2p_plan=self.p2p_plan,
                            pairs="interleaved" if self.scenario.parallelism.ep_comm_overlap else "fused",
                            pipeline_sync=self.host_costs is not None and self.scenario.host_pipeline_sync)
        timeline = engine.run()
        finish = [t.finish_s for t in timeline.timelines]
        return StepResult(step, timeline, self.stats, int(np.argmax(finish)))

    # ------------------------------------------------------------------ accounting
    def model_flops_per_step(self) -> float:
        """Useful FLOPs of one step over the whole cluster (sum of the ops' model_flops)."""
        lay = self.layout
        per_stage = lay.tp * lay.cp * lay.dp
        total = 0.0
        for (_v, phase), prog in self.programs.items():
            if phase in ("fwd", "bwd"):  # "bwd_in" and "wgt" are the same backward, split
                total += sum(op.model_flops for op in prog.ops) * self.m * per_stage
        for prog in self.step_programs.values():
            total += sum(op.model_flops for op in prog.ops) * per_stage
        return total


def _grad_part(times, grad: str) -> float | np.ndarray:
    """The part of a backward GEMM's BackwardTimes a program runs (simmoe.engine.program.GRADS)."""
    if grad == "input":
        return times.dgrad_s
    if grad == "weight":
        return times.wgrad_s
    return times.total_s


_NO_FLOWS = (Stage(FlowSet(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)), 1),)


def _empty(gpus):
    from simmoe.network.flows import Collective, FlowSet, Stage

    return Collective(op="noop", gpus=tuple(int(x) for x in gpus), size_bytes=0.0,
                      stages=(Stage(FlowSet(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)), 0),))
