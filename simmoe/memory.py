"""Memory per GPU: weights, gradients, optimizer states, activations, all-to-all buffers, reserve.

``memory_breakdown(scenario)`` returns the breakdown of the worst pipeline rank (the peak), with every
rank's in ``per_pp_rank``, and whether it fits the GPU's HBM (simmoe/data/hardware.yaml).
docs/workload.md ("Memory") derives every term; the short version:

- weights: BF16 copies of the rank's shard (simmoe.workload.params.stage_local_params: dense part
  split by TP and PP, routed experts by EP and expert-TP); ZeRO-3 also shards them over dp_cp /
  edp and keeps a working set of two gathered blocks (current + prefetch).
- gradients: FP32 main gradients (Megatron's default); sharded from ZeRO-2 on.
- optimizer: FP32 (or BF16) master weights + moments (Adam 2, Muon/SGD-momentum 1) in
  moments_dtype; sharded from ZeRO-1 on. Dense states over dp_cp, expert states over edp.
- activations: bytes each saved tensor of a block keeps for the backward (Korthikanti et al. 2022
  adapted to FlashAttention, SwiGLU, MoE and MLA; no dropout), per micro-batch, times the micro-batches
  in flight under the pipeline schedule.
- all-to-all buffers: the dispatch receive and combine buffers, sized for the worst case (dropless)
  or the capacity (padded).
- a fixed reserve for the CUDA context, NCCL, library workspaces and allocator fragmentation.

With ``training.activation_offload`` the saved activations live in host RAM between a micro-batch's
forward and its backward (Kimi K2); the GPU keeps at most ``OFFLOAD_RESIDENT_MICRO_BATCHES`` of the
rank's largest stage-micro-batches, the rest is reported as ``host_activations_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from simmoe.errors import InputError
from simmoe.hardware import gpu_spec
from simmoe.dtypes import BF16_BYTES_PER_ELEMENT, FP8_BYTES_PER_ELEMENT
from simmoe.workload.builder import GRAD_BYTES, rank_virtual_stages
from simmoe.workload.params import block_local_params, stage_blocks, stage_has_main_head, stage_local_params
from simmoe.workload.shapes import block_is_moe, head_dims, kv_heads, shared_expert_ffn

GiB = 2**30
BF16 = 2
FP32 = 4
# Assumption, not a measurement: CUDA context (~0.5 GiB), NCCL channel buffers and cuBLAS/TE
# workspaces (~0.5-1 GiB), and PyTorch caching-allocator fragmentation. Real runs vary by 1-3 GiB.
RESERVE_BYTES = 2 * GiB
# Activation offload (Kimi K2 report, arXiv 2507.20534, section 2.4.3 and Figure 7): "we offload the
# forward activations of the previous micro-batch while prefetching the backward activations of the
# next". At any moment a rank then holds on the GPU the micro-batch whose forward runs, the one being
# offloaded, the one whose backward runs and the one being prefetched: 4 stage-micro-batches, an
# upper bound (a transfer that finishes early frees its buffer sooner).
OFFLOAD_RESIDENT_MICRO_BATCHES = 4


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes on one GPU of pipeline rank ``pp_rank`` (the peak rank for the top-level result)."""

    pp_rank: int
    virtual_stages: tuple[int, ...]
    parameters_bytes: float
    gradients_bytes: float
    optimizer_bytes: float
    activations_bytes: float
    a2a_buffers_bytes: float
    reserve_bytes: float
    activation_per_micro_batch_bytes: float  # summed over the rank's virtual stages
    in_flight_micro_batches: float  # saved activations (less the recompute working set) / per micro-batch
    hbm_bytes: float | None
    # Saved activations parked in host RAM (training.activation_offload); not in total_bytes.
    host_activations_bytes: float = 0.0
    per_pp_rank: tuple[MemoryBreakdown, ...] = field(default=(), repr=False)

    @property
    def total_bytes(self) -> float:
        return (self.parameters_bytes + self.gradients_bytes + self.optimizer_bytes + self.activations_bytes
                + self.a2a_buffers_bytes + self.reserve_bytes)

    @property
    def fits(self) -> bool | None:
        """None when the GPU is unknown."""
        return None if self.hbm_bytes is None else self.total_bytes <= self.hbm_bytes

    def gib(self) -> dict[str, float]:
        """The breakdown in GiB (2**30 bytes)."""
        keys = ("parameters_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes",
                "a2a_buffers_bytes", "reserve_bytes", "total_bytes", "host_activations_bytes")
        out = {k.removesuffix("_bytes"): getattr(self, k) / GiB for k in keys}
        out["hbm"] = None if self.hbm_bytes is None else self.hbm_bytes / GiB
        return out


# --------------------------------------------------------------------------- activations


class _Act:
    """Saved-for-backward bytes per micro-batch on one rank (docs/workload.md, "Activations")."""

    def __init__(self, s: Any) -> None:
        m, par, tr = s.model, s.parallelism, s.training
        self.s, self.m = s, m
        self.d = m.hidden
        self.tp, self.etp = par.tp, par.expert_tp
        sp = par.sequence_parallel and par.tp > 1
        self.T = tr.micro_batch * tr.seq_len // par.cp
        self.Tsp = self.T // par.tp if sp else self.T
        self.Tm = -(-self.T // par.tp)
        self.sel = tr.activation_recompute == "selective"
        # FP8 training stores activations as DeepSeek-V3 does (report, section 3.3.3): inputs of
        # FP8 linears in FP8 with 1x128 scales; the SwiGLU input of routed experts in FP8 too; the
        # output-projection input (attention output) in E5M6, 12 bits.
        # MXFP8 as Transformer Engine runs it: each FP8 linear saves its input's column-wise MXFP8
        # copy (what wgrad reads); the SwiGLU input and the attention output stay BF16.
        fp8 = tr.precision == "fp8"
        self.lin_in = FP8_BYTES_PER_ELEMENT if tr.fp8_gemms else BF16_BYTES_PER_ELEMENT
        self.expert_act_in = FP8_BYTES_PER_ELEMENT if fp8 else BF16_BYTES_PER_ELEMENT
        # Kimi K2 (report, section 2.4.3) stores the routed experts' up-projection input and SwiGLU
        # input in FP8-E4M3 with 1x128 FP32 scales but computes in BF16: the same bytes as above.
        self.expert_fc1_in = FP8_BYTES_PER_ELEMENT if fp8 or tr.fp8_expert_activations else self.lin_in
        if tr.fp8_expert_activations:
            self.expert_act_in = FP8_BYTES_PER_ELEMENT
        self.attn_out = 1.5 if fp8 else BF16_BYTES_PER_ELEMENT
        self.vocab_local = -(-m.vocab // par.tp)

    def width(self, f: int) -> int:
        return 2 * f if self.m.activation == "swiglu" else f

    def attention(self) -> float:
        d, T, Tsp, tp = self.d, self.T, self.Tsp, self.tp
        h = self.m.attention.heads // tp
        dqk, dv = head_dims(self.m)
        out = Tsp * d * BF16  # ln1 input
        out += 0 if self.sel else Tsp * d * self.lin_in  # norm output = projection input (SP-split)
        out += T * h * dv * self.attn_out + T * h * FP32  # O (FlashAttention output, o-proj input) + LSE
        att = self.m.attention
        if att.type == "mla":
            rope = att.qk_rope_head_dim
            if att.q_lora_rank is not None:
                out += T * att.q_lora_rank * BF16  # q_norm input
                out += 0 if self.sel else T * att.q_lora_rank * self.lin_in  # q_up input
            out += T * (att.kv_lora_rank + rope) * BF16  # kv_norm input (+ RoPE key)
            out += 0 if self.sel else T * att.kv_lora_rank * self.lin_in  # kv_up input
            out += 0 if self.sel else T * h * (2 * dqk + dv) * BF16  # Q, K, V (recomputed: mla_up)
        else:
            kv = kv_heads(self.m) // tp
            out += T * (h * dqk + kv * (dqk + dv)) * BF16  # Q, K, V
        return out

    def dense_ffn(self) -> float:
        f = self.m.dense_ffn // self.tp
        out = self.Tsp * self.d * BF16  # ln2 input
        out += 0 if self.sel else self.Tsp * self.d * self.lin_in  # fc1 input
        out += self.T * self.width(f) * BF16  # fc1 output (activation input)
        out += 0 if self.sel else self.T * f * self.lin_in  # fc2 input (activation output)
        return out

    def moe(self) -> float:
        d, Tm, T = self.d, self.Tm, self.T
        moe = self.m.moe
        k = moe.top_k
        fe = moe.expert_ffn // self.etp
        rows = Tm * k * self.etp  # expert rows at the balanced load
        out = self.Tsp * d * BF16  # ln2 input
        out += 0 if self.sel else Tm * d * BF16  # router / permute input (norm output)
        out += Tm * moe.routed_experts * FP32  # router probabilities
        out += rows * d * self.expert_fc1_in  # expert fc1 input (dispatched tokens)
        out += rows * self.width(fe) * self.expert_act_in  # expert fc1 output (activation input)
        out += 0 if self.sel else rows * fe * self.lin_in  # expert fc2 input
        # Router weights are applied inside the expert, in the activation (Megatron-Core's
        # weighted SwiGLU): the combine is an unweighted sum and saves nothing; the weights'
        # gradient needs only the activation input/output already counted.
        out += rows * FP32  # permuted routing weights
        fs = shared_expert_ffn(self.m) // self.tp
        if fs:
            out += 0 if self.sel else T * d * self.lin_in  # shared fc1 input (gathered)
            out += T * self.width(fs) * BF16 + (0 if self.sel else T * fs * self.lin_in)
        return out

    def block(self, b: int) -> float:
        out = self.attention() + (self.moe() if block_is_moe(self.m, b) else self.dense_ffn())
        if b >= self.m.layers:  # MTP module: enorm, hnorm inputs and the projection input
            out += 2 * self.Tsp * self.d * BF16 + self.Tsp * 2 * self.d * self.lin_in
        return out

    def block_input(self) -> float:
        return self.Tsp * self.d * BF16

    def head(self) -> float:
        """Final norm input, head input, FP32 softmax of the local vocabulary shard."""
        return self.Tsp * self.d * BF16 + self.T * self.d * BF16 + self.T * self.vocab_local * FP32

    def stage(self, v: int) -> float:
        """Saved bytes of virtual stage v for one micro-batch under the recompute policy. Full
        recompute keeps only each block's input (the block's own activations are rebuilt during
        its backward: ``recompute_working_set``); the LM heads are not recomputed."""
        m = self.m
        blocks = stage_blocks(self.s, v)
        heads = sum(1 for b in blocks if b >= m.layers) + int(stage_has_main_head(self.s, v))
        if self.s.training.activation_recompute == "full":
            saved = len(blocks) * self.block_input()
        else:
            saved = sum(self.block(b) for b in blocks)
        return saved + heads * self.head()

    def recompute_working_set(self, stages: Sequence[int]) -> float:
        """Full recompute: the whole activations of the one block whose backward is running, the
        largest of the rank's blocks. Held once per rank, not once per micro-batch in flight: a
        rank runs one backward at a time. 0 under the other policies (counted in ``stage``)."""
        if self.s.training.activation_recompute != "full":
            return 0.0
        return max((self.block(b) for v in stages for b in stage_blocks(self.s, v)), default=0.0)


def in_flight(scenario: Any, pp_rank: int) -> dict[int, float]:
    """Micro-batches whose activations virtual stage v of ``pp_rank`` holds at the rank's peak.

    1F1B: pp - pp_rank (Narayanan et al. 2021). Interleaved (Megatron): the rank's warm-up
    forwards (pp - r - 1)*2 + (vpp - 1)*pp, plus the first steady-state one, taken in Megatron's
    order (groups of pp micro-batches per chunk). DualPipe: rank r runs stage r for the
    micro-batches fed from rank 0 (position r on their path: pp - r in flight, as 1F1B) and stage
    pp-1-r for those fed from rank pp-1 (position pp-1-r: r + 1 in flight); pp + 1 in all, the
    DeepSeek-V3 report's figure (Table 2). Capped by the micro-batches of one run of the schedule
    (per direction for DualPipe, which feeds half from each end). Megatron's EP all-to-all overlap
    (parallelism.ep_comm_overlap) warms up with one forward more: one more micro-batch in flight.
    """
    par = scenario.parallelism
    pp, vpp, m = par.pp, par.vpp, scenario.micro_batches_per_step
    if par.schedule_micro_batches is not None:  # one run of the schedule at a time
        m = min(m, par.schedule_micro_batches)
    stages = rank_virtual_stages(scenario, pp_rank)
    if par.schedule == "dualpipe":
        half = -(-m // 2)
        return {pp_rank: float(min(pp - pp_rank, half)), pp - 1 - pp_rank: float(min(pp_rank + 1, half))}
    extra = int(par.ep_comm_overlap)
    if vpp == 1:
        return {stages[0]: float(min(pp - pp_rank + extra, m))}
    warm = min((pp - pp_rank - 1) * 2 + (vpp - 1) * pp + 1 + extra, m * vpp)
    counts = {v: 0.0 for v in stages}
    for i in range(warm):
        counts[pp_rank + ((i // pp) % vpp) * pp] += 1
    return counts


# ------------------------------------------------------------------------------ the model


def _a2a_buffers_bytes(scenario: Any, act: _Act) -> float:
    """Dispatch receive buffer (dispatch dtype) + combine buffer (BF16), one MoE layer at a time.
    Padded: the capacity of the rank's experts, C * moe_tokens * top_k rows. Dropless: the rows
    actually received, at the balanced load moe_tokens * min(top_k, ep) (DeepEP's normal kernels stream
    through fixed-size chunked buffers, covered by the reserve, and allocate the received tensor at
    its real size; the balanced load is the convention of the expert activations above)."""
    m, par, r = scenario.model, scenario.parallelism, scenario.routing
    if m.moe is None or par.ep == 1:
        return 0.0
    if r.execution == "padded" and r.capacity_factor is not None:
        rows = r.capacity_factor * act.Tm * m.moe.top_k
    else:
        rows = act.Tm * min(m.moe.top_k, par.ep)  # a token reaches a rank at most once
    disp = FP8_BYTES_PER_ELEMENT if r.dispatch_dtype == "fp8" else BF16_BYTES_PER_ELEMENT
    return rows * m.hidden * (disp + BF16_BYTES_PER_ELEMENT)


def _state_bytes(scenario: Any, dense: float, experts: float, zero3_block: float) -> tuple[float, float, float]:
    tr, par = scenario.training, scenario.parallelism
    opt = tr.optimizer
    dp_cp = par.cp * scenario._dp()
    edp = par.edp if scenario.model.moe is not None else 1
    z = tr.zero_stage
    sharded = dense / dp_cp + experts / edp
    full = dense + experts
    # ZeRO-3 holds its shard plus two gathered blocks (the current one and the prefetched next).
    params = min(full, sharded + 2 * zero3_block) * BF16 if z >= 3 else full * BF16
    grads = (sharded if z >= 2 else full) * GRAD_BYTES
    moments = {"adam": 2, "adamw": 2, "muon": 1, "sgd": 1}[opt.type]
    per_param = (4 if opt.master_weights_dtype == "fp32" else 0) + moments * (4 if opt.moments_dtype == "fp32" else 2)
    optim = (sharded if z >= 1 else full) * per_param
    return params, grads, optim


def _offload_resident_bytes(per_mb: dict[int, float], counts: dict[int, float]) -> float:
    """With activation offload: the GPU keeps OFFLOAD_RESIDENT_MICRO_BATCHES of the rank's in-flight
    stage-micro-batches, counted as the largest ones (an upper bound: which ones are resident at the
    peak depends on the schedule's order)."""
    sizes = sorted((per_mb[v] for v in per_mb for _ in range(int(counts[v]))), reverse=True)
    return sum(sizes[:OFFLOAD_RESIDENT_MICRO_BATCHES])


def _hbm_bytes(scenario: Any, gpu: str | None) -> float | None:
    name = gpu or scenario.gpu_model
    if name is None:
        return None
    return gpu_spec(name, field="gpu").hbm_GB * 1e9


def memory_breakdown(scenario: Any, gpu: str | None = None) -> MemoryBreakdown:
    """Memory of the worst pipeline rank, with every rank's in ``per_pp_rank``. ``gpu`` names the
    GPU (simmoe/data/hardware.yaml) when the scenario was not loaded with its topology."""
    if scenario.parallelism.dp is None:
        raise InputError("must be resolved before the memory model runs", field="parallelism.dp",
                         allowed="an integer (or load the scenario with load_scenario)")
    act = _Act(scenario)
    hbm = _hbm_bytes(scenario, gpu)
    a2a = _a2a_buffers_bytes(scenario, act)
    ranks = []
    for r in range(scenario.parallelism.pp):
        stages = rank_virtual_stages(scenario, r)
        locals_ = [stage_local_params(scenario, v) for v in stages]
        dense = sum(lp.dense for lp in locals_)
        experts = sum(lp.experts for lp in locals_)
        if 0 in stages and len(stages) > 1:  # DualPipe's rank 0 holds the embedding once
            dense -= sum(lp.embedding_copy for lp in locals_)
        biggest = max((block_local_params(scenario, b).total for v in stages for b in stage_blocks(scenario, v)),
                      default=0)
        params, grads, optim = _state_bytes(scenario, dense, experts, biggest)
        counts = in_flight(scenario, r)
        per_mb = {v: act.stage(v) for v in stages}
        saved = sum(per_mb[v] * counts[v] for v in stages)
        per_mb_total = sum(per_mb.values())
        host = 0.0
        if scenario.training.activation_offload:
            resident = _offload_resident_bytes(per_mb, counts)
            saved, host = resident, saved - resident
        activations = saved + act.recompute_working_set(stages)
        ranks.append(MemoryBreakdown(
            pp_rank=r, virtual_stages=stages, parameters_bytes=params, gradients_bytes=grads,
            optimizer_bytes=optim, activations_bytes=activations, a2a_buffers_bytes=a2a,
            reserve_bytes=RESERVE_BYTES, activation_per_micro_batch_bytes=per_mb_total,
            in_flight_micro_batches=saved / per_mb_total if per_mb_total else 0.0, hbm_bytes=hbm,
            host_activations_bytes=host))
    peak = max(ranks, key=lambda b: b.total_bytes)
    return replace(peak, per_pp_rank=tuple(ranks))
