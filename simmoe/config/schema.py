"""The scenario schema: one YAML file describes a model, how it is trained, how it is split over the
cluster, how tokens are routed, what things cost and how to simulate it.

Every section forbids unknown fields (a typo is an error, never a silently ignored setting) and is
strict about types (``layers: "61"`` or ``layers: 61.0`` is an error). Field names follow Megatron-LM
/ DeepSpeed / DeepSeek usage; numbers with units carry them in the name. Rules that tie several
fields together live in :mod:`simmoe.config.rules`; rules that need the topology run in
:mod:`simmoe.config.loader`. docs/scenario.md documents every field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]


class _Section(BaseModel):
    # strict: YAML already gives ints, floats and bools; a quoted "8" is a mistake worth reporting.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# --------------------------------------------------------------------------------------- model


class MhaAttention(_Section):
    """Multi-head attention: one K/V head per query head."""

    type: Literal["mha"]
    heads: PosInt
    head_dim: PosInt | None = None  # null: hidden / heads
    qk_norm: bool = False  # RMSNorm over each head of Q and K before RoPE (Qwen3, OLMo 2)


class GqaAttention(_Section):
    """Grouped-query attention: ``kv_heads`` K/V heads shared by groups of query heads."""

    type: Literal["gqa"]
    heads: PosInt
    kv_heads: PosInt
    head_dim: PosInt | None = None  # null: hidden / heads
    qk_norm: bool = False  # RMSNorm over each head of Q and K before RoPE (Qwen3, OLMo 2)


class MlaAttention(_Section):
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank Q and compressed KV."""

    type: Literal["mla"]
    heads: PosInt
    q_lora_rank: PosInt | None  # null: Q is a full-rank projection (DeepSeek-V2-Lite)
    kv_lora_rank: PosInt
    qk_nope_head_dim: PosInt
    qk_rope_head_dim: PosInt
    v_head_dim: PosInt


Attention = Annotated[Union[MhaAttention, GqaAttention, MlaAttention], Field(discriminator="type")]

LAYER_PATTERNS = ("all_after_dense", "every_other")


class Moe(_Section):
    """Mixture-of-Experts FFN. Absent from ``model`` means a dense model."""

    routed_experts: PosInt
    shared_experts: NonNegInt = 0
    top_k: PosInt
    expert_ffn: PosInt  # intermediate size of one routed expert
    shared_expert_ffn: PosInt | None = None  # per shared expert; null: expert_ffn
    # Which layers are MoE (0-based): "all_after_dense" = every layer from dense_layers on;
    # "every_other" = odd layers (1, 3, 5, ...) from dense_layers on, as Llama 4 and GShard;
    # or an explicit list of layer indices.
    layer_pattern: Literal["all_after_dense", "every_other"] | list[NonNegInt] = "all_after_dense"
    router_dtype: Literal["fp32", "bf16", "fp64"] = "fp32"

    @field_validator("layer_pattern", mode="before")
    @classmethod
    def _pattern_shape(cls, value: Any) -> Any:
        # One clear message instead of pydantic's per-union-member errors.
        if isinstance(value, str):
            if value not in LAYER_PATTERNS:
                raise ValueError(f"unknown layer pattern {value!r}")
            return value
        if isinstance(value, list):
            if not value or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
                raise ValueError("an explicit layer_pattern must be a non-empty list of layer indices >= 0")
            return value
        raise ValueError(f"layer_pattern must be a name or a list of layer indices, got {type(value).__name__}")


class Model(_Section):
    name: str
    layers: PosInt  # transformer blocks of the main model (MTP modules not included)
    dense_layers: NonNegInt = 0  # leading blocks with a dense FFN (DeepSeek first_k_dense_replace)
    hidden: PosInt
    attention: Attention
    dense_ffn: PosInt | None = None  # intermediate size of the dense FFN; needed if any layer is dense
    vocab: PosInt
    activation: Literal["swiglu", "gelu"] = "swiglu"
    mtp_depth: NonNegInt = 0  # multi-token-prediction modules (DeepSeek-V3: 1)
    tied_embeddings: bool = False
    moe: Moe | None = None

    def moe_layer_indices(self) -> tuple[int, ...]:
        """0-based indices of the main model's MoE layers (empty for a dense model)."""
        if self.moe is None:
            return ()
        pattern = self.moe.layer_pattern
        if pattern == "all_after_dense":
            return tuple(range(self.dense_layers, self.layers))
        if pattern == "every_other":
            return tuple(i for i in range(self.dense_layers, self.layers) if i % 2 == 1)
        return tuple(sorted(set(pattern)))

    def dense_layer_indices(self) -> tuple[int, ...]:
        """0-based indices of the main model's layers with a dense FFN."""
        moe = set(self.moe_layer_indices())
        return tuple(i for i in range(self.layers) if i not in moe)


# ------------------------------------------------------------------------------------ training


class BatchRamp(_Section):
    """Global batch grows linearly from ``start_global_batch`` to ``global_batch`` over
    ``ramp_tokens`` (Megatron's --rampup-batch-size; DeepSeek-V3: 3072 -> 15360 over 469B)."""

    start_global_batch: PosInt  # sequences
    ramp_tokens: PosFloat


class Optimizer(_Section):
    # muon: one momentum buffer per parameter (Kimi K2's MuonClip); adam/adamw: two moments.
    type: Literal["adam", "adamw", "sgd", "muon"] = "adamw"
    master_weights_dtype: Literal["fp32", "bf16"] = "fp32"
    moments_dtype: Literal["fp32", "bf16"] = "fp32"


class Training(_Section):
    seq_len: PosInt  # tokens per sequence
    global_batch: PosInt  # sequences per optimizer step
    micro_batch: PosInt  # sequences per micro-batch per data-parallel rank
    # GEMM precision of the linear layers. fp8: DeepSeek-V3's fine-grained FP8 (1x128 activation
    # and 128x128 weight scales; Hopper and later). mxfp8: OCP MX FP8 (one E8M0 scale per 32
    # elements, applied by the tensor cores; Blackwell and later), as Transformer Engine's
    # MXFP8BlockScaling recipe runs it (docs/workload.md).
    precision: Literal["bf16", "fp8", "mxfp8"] = "bf16"
    total_tokens: PosFloat  # tokens over the whole run
    batch_ramp: BatchRamp | None = None
    activation_recompute: Literal["none", "selective", "full"] = "none"
    # Saved activations go to host RAM between a micro-batch's forward and its backward, streamed by
    # copy engines behind compute (Kimi K2, arXiv 2507.20534, section 2.4.3). Memory model only: the
    # GPU keeps the micro-batches being computed or in transfer; PCIe time is not simulated.
    activation_offload: bool = False
    # Store the routed experts' up-projection (fc1) input and SwiGLU input in FP8-E4M3 with 1x128
    # FP32 scales while GEMMs stay BF16 (Kimi K2, section 2.4.3). precision: fp8 already does.
    fp8_expert_activations: bool = False
    optimizer: Optimizer = Optimizer()
    zero_stage: Annotated[int, Field(ge=0, le=3)] = 1  # 1 = Megatron's distributed optimizer
    # The software stack's memory-bound kernels (docs/workload.md, "Kernel stacks"). fused:
    # Megatron-Core with Transformer Engine (fused RoPE, weight gradients accumulated inside the
    # GEMM). eager: PyTorch-native training in plain ops (NeMo Automodel 2025, torchtitan without
    # compile): RoPE in elementwise ops, MLA's Q and K assembled with torch.cat, gradients
    # accumulated by autograd, one add per parameter per micro-batch.
    kernels: Literal["fused", "eager"] = "fused"

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    @property
    def fp8_gemms(self) -> bool:
        """Whether the linear layers' GEMMs run on FP8 tensor cores (fp8 or mxfp8)."""
        return self.precision in ("fp8", "mxfp8")


# --------------------------------------------------------------------------------- parallelism


class Parallelism(_Section):
    tp: PosInt = 1
    pp: PosInt = 1
    vpp: PosInt = 1  # virtual pipeline stages (model chunks) per pipeline rank
    cp: PosInt = 1
    ep: PosInt = 1
    expert_tp: PosInt = 1
    dp: PosInt | None = None  # null: derived as GPUs / (tp * pp * cp); filled in by the loader
    schedule: Literal["1f1b", "interleaved", "dualpipe"] = "1f1b"
    sequence_parallel: bool = False
    # TP all-gathers / reduce-scatters overlapped with the GEMM they feed or drain (Transformer
    # Engine userbuffers, Megatron's --tp-comm-overlap; needs sequence_parallel): docs/workload.md.
    tp_comm_overlap: bool = False
    # Uneven pipeline split (in the spirit of Megatron's --decoder-first/last-pipeline-num-layers):
    # blocks on the first / last virtual stage; the rest split evenly over the other stages.
    first_stage_layers: NonNegInt | None = None
    last_stage_layers: NonNegInt | None = None
    # Or every virtual stage's blocks, in model order (Megatron's --pipeline-model-parallel-layout,
    # torch.distributed.pipelining splitters): any split, a stage may hold none (the embedding
    # stays on the first stage, the output layer and loss on the last).
    stage_layers: list[NonNegInt] | None = None
    # SMs that communication kernels hold while compute runs (DeepEP's all-to-alls take 20 of the
    # H800's 132 SMs in DeepSeek-V3's DualPipe overlap, report section 3.2.2). The compute model then
    # runs every kernel on the GPU's SMs minus these (docs/compute.md). 0: communication on copy
    # engines / no SM reservation modelled (NCCL-style default).
    comm_sms: NonNegInt = 0
    # Micro-batches per run of the pipeline schedule. null: the whole step is one run (Megatron
    # runs every micro-batch of the global batch in one schedule). A number: the step's
    # micro-batches run as global / (micro_batch * dp * this) schedules back to back, each filled
    # and drained on its own: torch.distributed.pipelining under gradient accumulation (NeMo
    # Automodel, torchtitan: one schedule step() per local batch). docs/engine.md.
    schedule_micro_batches: PosInt | None = None
    # How pipeline sends meet the compute. async: each output is sent as soon as it is computed and
    # a rank waits only for the inputs it needs (Megatron's overlapped p2p, torch >= 2.10's
    # runtime). blocking: a rank's sends and receives go in batches it waits for before going on,
    # each send starting when the receiver has posted its receive: torch.distributed.pipelining's
    # looped schedules up to torch 2.9 (PipelineScheduleMulti: NeMo Automodel 2025, torchtitan; a
    # batch at the end of each time step of its table) and deepseek-ai/DualPipe's reference (a
    # batch before each chunk). Interleaved and dualpipe only. docs/engine.md.
    pipeline_p2p: Literal["async", "blocking"] = "async"
    # Megatron's --overlap-moe-expert-parallel-comm: each steady-state step of the 1F1B schedule
    # runs the forward of one micro-batch and the backward of another together, so each one's EP
    # all-to-alls run under the other's compute (one more warm-up forward to make room).
    # Interleaved schedule (vpp >= 2), or pp 1; MoE with ep > 1. docs/engine.md.
    ep_comm_overlap: bool = False

    @property
    def model_parallel_size(self) -> int:
        """tp * pp * cp: GPUs holding one replica of the dense part."""
        return self.tp * self.pp * self.cp

    @property
    def world_size(self) -> int:
        if self.dp is None:
            raise ValueError("parallelism.dp is not resolved yet (load the scenario with load_scenario)")
        return self.tp * self.pp * self.cp * self.dp

    @property
    def edp(self) -> int:
        """Expert-data-parallel size: tp*cp*dp ranks re-factored as expert_tp * ep * edp (Megatron)."""
        if self.dp is None:
            raise ValueError("parallelism.dp is not resolved yet (load the scenario with load_scenario)")
        return (self.tp * self.cp * self.dp) // (self.ep * self.expert_tp)

    @property
    def virtual_stages(self) -> int:
        return self.pp * self.vpp


# ------------------------------------------------------------------------------------- routing


class Drift(_Section):
    """How expert popularity moves over a run."""

    model: Literal["none", "collapse", "aux_loss", "bias_balancing"] = "none"
    # Auxiliary balance-loss weight (Switch: 0.01). Also allowed with bias_balancing, as
    # DeepSeek-V3's complementary sequence-wise loss (0.0001). null: the routing model's default.
    aux_loss_coeff: NonNegFloat | None = None
    # Bias update speed gamma of auxiliary-loss-free balancing (DeepSeek-V3: 0.001).
    bias_update_speed: NonNegFloat | None = None


class Imbalance(_Section):
    """Expert popularity per layer."""

    model: Literal["uniform", "zipf", "dirichlet", "trace"] = "uniform"
    s: PosFloat | None = None  # Zipf exponent (zipf only)
    alpha: PosFloat | None = None  # Dirichlet concentration (dirichlet only)
    trace_file: str | None = None  # Parquet of expert counts (trace only)
    drift: Drift = Drift()

    @field_validator("drift", mode="before")
    @classmethod
    def _drift_shorthand(cls, value: Any) -> Any:
        # `drift: bias_balancing` is shorthand for `drift: {model: bias_balancing}`.
        return {"model": value} if isinstance(value, str) else value


class Routing(_Section):
    # cyclic: token t takes experts (t*k + i) mod E, i < k, the balanced benchmark router of NeMo
    # Automodel's published table (its fake_balanced_gate; simmoe.routing.cyclic).
    policy: Literal["token_choice", "expert_choice", "cyclic"] = "token_choice"
    imbalance: Imbalance = Imbalance()
    capacity_factor: PosFloat | None = None  # null: unlimited (no token is dropped)
    execution: Literal["padded", "dropless"] = "dropless"
    node_limited_max_nodes: Annotated[int, Field(ge=1)] | None = None  # null: off
    expert_placement: Literal["contiguous", "round_robin", "topology_aware"] = "contiguous"
    hierarchical_a2a: bool = False
    dispatch_dtype: Literal["fp8", "bf16"] = "bf16"
    # Where each token's routing probability scales its expert's output. activation: inside the
    # expert's activation kernel, whose backward yields the probability's gradient from what it
    # reads anyway (Megatron-Core 0.16's grouped experts: weighted_bias_swiglu_impl; NeMo
    # Automodel's weighted SwiGLU). combine: in the unpermute (GShard, DeepSpeed-MoE, DeepSeek-V3's
    # reference model code); the backward then gathers every expert row's output again to dot it
    # with its token's output gradient (moe.probs_bwd).
    probs_applied_at: Literal["activation", "combine"] = "activation"
    # The library that moves the EP all-to-all; it sets the share of NVLink line rate reached
    # (simmoe.network.params.engine_link_efficiency). null: DeepEP when hierarchical, else NCCL.
    a2a_engine: Literal["nccl", "deepep", "hybridep"] | None = None

    @property
    def a2a_engine_name(self) -> str | None:
        """The network's engine name for EP all-to-alls (None: NCCL's link efficiencies)."""
        engine = self.a2a_engine or ("deepep" if self.hierarchical_a2a else "nccl")
        return None if engine == "nccl" else engine


# ---------------------------------------------------------------------------- cluster, costs, sim


class Cluster(_Section):
    topology: str  # a path, or a name in topologies/
    nodes: PosInt | None = None  # null: every node of the topology; filled in by the loader


class Host(_Section):
    """The CPU that issues each rank's kernels (simmoe.engine.host, docs/engine.md "Host issue").
    stack none: the host is assumed always ahead of the GPU (CUDA graphs over the whole step, or
    a stack whose host cost was not measured). megatron_core: Megatron-Core's eager layer code,
    its host work per layer measured by benchmarks/megatron_host_calls.py, on host ``cpu`` (a
    name in simmoe/data/host/cpus.yaml, measured by benchmarks/host_issue.py)."""

    stack: Literal["none", "megatron_core"] = "none"
    cpu: str = "x86-lent-1"
    # Megatron-Core's batched pipeline exchange (batch_p2p_comm) ends in torch.cuda.synchronize()
    # (batch_p2p_sync, default on): at each send/receive of the 1F1B schedule the host waits for
    # the whole GPU and the exchange, so it cannot issue ahead across micro-batches. null:
    # Megatron's default, on for schedule 1f1b with pp > 1 (Megatron-LM turns overlap_p2p_comm off
    # without virtual stages, Megatron-Bridge batches the p2p when VP = 1), off for the interleaved
    # schedule (overlapped, unbatched p2p). true: 1f1b, pp > 1, stack megatron_core only.
    pipeline_sync: bool | None = None
    # Megatron-Core's cuda_graph_scope (cuda_graph_impl transformer_engine): the parts of each
    # layer replayed from CUDA graphs, whose ops the host then does not issue one by one
    # (simmoe.engine.host.GRAPH_SCOPE_PARTS). Empty: eager. A whole-iteration graph takes the host
    # off the step: host.stack none.
    cuda_graph_scope: list[Literal["attn", "mlp", "moe_router", "moe_preprocess"]] = []


class Costs(_Section):
    # Defaults are assumptions, not measurements (docs/scenario.md says where each comes from).
    price_per_gpu_hour_usd: NonNegFloat = 2.0
    power_price_usd_per_kwh: NonNegFloat = 0.10
    pue: Annotated[float, Field(ge=1.0)] = 1.2
    grid_kgco2_per_kwh: NonNegFloat = 0.429
    water_l_per_kwh: NonNegFloat = 1.8


class Simulation(_Section):
    seed: NonNegInt = 0
    steps: PosInt = 10  # steps recorded, after the warm-up steps
    warmup_steps: NonNegInt = 2  # simulated first and left out of every statistic
    fidelity: Literal["analytical", "flow"] = "flow"


# ------------------------------------------------------------------------------------ forecast
# Inputs of the whole-run forecast (simmoe.forecast): failures, an owned cluster, power. Every
# default is an assumption, not a measurement; docs/forecast.md gives the source of each.

# Llama 3 405B pre-training (Meta, "The Llama 3 Herd of Models", 2024, section 3.3.4): 419
# unexpected interruptions in 54 days on 16,384 H100 GPUs (2,048 nodes of 8); 58.7% of them GPU
# issues. GPU share: 0.587 * 419 = 246 over 16,384 GPUs * 1,296 h -> ~86,000 h per GPU; the other
# 173 over 2,048 nodes * 1,296 h -> ~15,000 h per node. Together: one interruption every ~3.1 h
# on that cluster, as the paper reports.
LLAMA3_GPU_MTBF_HOURS = 86_000.0
LLAMA3_NODE_MTBF_HOURS = 15_000.0


class Failures(_Section):
    """Interruptions of a synchronous job: any failed GPU or node stops every rank."""

    enabled: bool = True
    gpu_mtbf_hours: PosFloat = LLAMA3_GPU_MTBF_HOURS  # per GPU (GPU, HBM, NVLink faults)
    node_mtbf_hours: PosFloat = LLAMA3_NODE_MTBF_HOURS  # per node (host, NIC, switch, software)
    restart_s: NonNegFloat = 1800.0  # R: detect, reschedule, reload the last checkpoint (assumption)
    checkpoint_write_s: NonNegFloat = 60.0  # delta: training stalls this long per checkpoint (assumption)
    checkpoint_interval_s: PosFloat | None = None  # compute time between checkpoints; null: Daly optimum


class OwnedCluster(_Section):
    """Buy instead of rent: capex spread over the hardware's life, plus the power bill."""

    capex_per_gpu_usd: NonNegFloat  # GPU plus its share of node, fabric and installation
    amortization_years: PosFloat = 4.0  # straight-line life (assumption; 4-6 years is common)
    utilization: Fraction = 0.8  # share of its life the cluster runs paid work (assumption)


class Power(_Section):
    """GPU power at the simulated utilization, and everything else in a node."""

    gpu_idle_w: NonNegFloat | None = None  # null: 10% of TDP (assumption)
    gpu_tdp_w: PosFloat | None = None  # null: tdp_W of the scenario's GPU in simmoe/data/hardware.yaml
    # CPUs, memory, NICs, NVSwitches, fans and a share of the fabric's switches. DGX H100 datasheet:
    # 10.2 kW system maximum minus 8 x 700 W GPU TDP = 4.6 kW; a maximum, so an upper-bound assumption.
    node_overhead_w: NonNegFloat = 4600.0


class Forecast(_Section):
    """Whole-run forecast inputs beyond the step itself (docs/forecast.md)."""

    failures: Failures = Failures()
    owned_cluster: OwnedCluster | None = None  # null: price by costs.price_per_gpu_hour_usd (cloud)
    power: Power = Power()


class Scenario(_Section):
    name: str | None = None
    description: str | None = None
    model: Model
    training: Training
    parallelism: Parallelism = Parallelism()
    routing: Routing = Routing()
    cluster: Cluster
    host: Host = Host()
    costs: Costs = Costs()
    simulation: Simulation = Simulation()
    forecast: Forecast = Forecast()

    # Set by the loader; not part of the file.
    _source_file: str | None = PrivateAttr(default=None)
    _topology_path: str | None = PrivateAttr(default=None)
    _gpus_per_node: int | None = PrivateAttr(default=None)
    _gpu_model: str | None = PrivateAttr(default=None)

    @property
    def source_file(self) -> str | None:
        return self._source_file

    @property
    def topology_path(self) -> Path:
        if self._topology_path is not None:
            return Path(self._topology_path)
        from simmoe.paths import resolve_topology

        return resolve_topology(self.cluster.topology)

    @property
    def gpus(self) -> int:
        return self.parallelism.world_size

    @property
    def gpus_per_node(self) -> int | None:
        return self._gpus_per_node

    @property
    def gpu_model(self) -> str | None:
        return self._gpu_model

    @property
    def micro_batches_per_step(self) -> int:
        """Micro-batches each pipeline runs per optimizer step (gradient-accumulation steps)."""
        return self.training.global_batch // (self.training.micro_batch * self._dp())

    @property
    def host_pipeline_sync(self) -> bool:
        """Whether the host waits for the GPU at each pipeline exchange (host.pipeline_sync, its
        null resolved to Megatron-Core's default for the schedule)."""
        h, p = self.host, self.parallelism
        if h.pipeline_sync is not None:
            return h.pipeline_sync
        return h.stack != "none" and p.schedule == "1f1b" and p.pp > 1 and p.pipeline_p2p == "async"

    def _dp(self) -> int:
        if self.parallelism.dp is None:
            raise ValueError("parallelism.dp is not resolved yet (load the scenario with load_scenario)")
        return self.parallelism.dp

    def stage_layers(self) -> tuple[int, ...]:
        """Transformer blocks per virtual pipeline stage, in model order (chunk c runs on pipeline
        rank c % pp as its (c // pp)-th chunk). Blocks = model.layers + model.mtp_depth; MTP
        modules come last. The loader has checked that the split is valid."""
        from simmoe.config.rules import split_stage_layers

        split = split_stage_layers(self.model.layers + self.model.mtp_depth, self.parallelism)
        if split is None:
            raise ValueError("the pipeline split is invalid (load the scenario with load_scenario)")
        return split

    def derived(self) -> dict[str, Any]:
        """Values the loader derives, for `simmoe check` and result metadata."""
        p = self.parallelism
        out: dict[str, Any] = {
            "gpus": self.gpus,
            "nodes": self.cluster.nodes,
            "gpus_per_node": self.gpus_per_node,
            "gpu_model": self.gpu_model,
            "topology_path": str(self._topology_path) if self._topology_path else None,
            "dp": p.dp,
            "edp": p.edp if self.model.moe is not None else None,
            "experts_per_ep_rank": (self.model.moe.routed_experts // p.ep) if self.model.moe else None,
            "micro_batches_per_step": self.micro_batches_per_step,
            "tokens_per_step": self.training.tokens_per_step,
            "steps_at_full_batch": self.training.total_tokens / self.training.tokens_per_step,
            "moe_layers": len(self.model.moe_layer_indices()),
            "stage_layers": list(self.stage_layers()),
            "host_pipeline_sync": self.host_pipeline_sync,
        }
        return out
