"""The workload vocabulary: what one pipeline stage does for one micro-batch, as ordered ops.

CONTRACT between the workload builder (model -> ops) and the engine (ops -> simulated time).
The engine never computes a FLOP count or a byte count: it reads them from these records and asks
the compute model (simmoe.compute) or the network (simmoe.network) for seconds. Ops are listed in
execution order for one rank of a (virtual) pipeline stage; `after` names the ops an op waits for
when it is not simply the previous op (e.g. a shared expert that overlaps the dispatch).

All byte and FLOP figures are per GPU (one rank), for one micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Phase = Literal["fwd", "bwd", "recompute", "step"]
Dtype = Literal["bf16", "fp8", "mxfp8", "fp32"]
# Parallel groups a collective runs over (simmoe.placement.ParallelLayout.groups names).
Group = Literal["tp", "cp", "dp", "dp_cp", "ep", "edp", "pp", "expert_tp"]


@dataclass(frozen=True)
class OpBase:
    name: str  # e.g. "L12.attn.qkv" or "L12.moe.dispatch"
    layer: int | None  # transformer block index (None: embedding, head, optimizer)
    phase: Phase
    model_flops: float = 0.0  # useful FLOPs this op contributes (for MFU); 0 for comm/memory
    after: tuple[str, ...] = field(default=())  # explicit dependencies beyond program order


@dataclass(frozen=True)
class GemmOp(OpBase):
    """`count` identical GEMMs (m x k) @ (k x n). In phase "bwd" the op stands for both products
    of the backward of that forward GEMM, dgrad and wgrad (simmoe.compute.gemm_backward_s)."""

    m: int = 0
    n: int = 0
    k: int = 0
    dtype: Dtype = "bf16"
    count: int = 1


@dataclass(frozen=True)
class ExpertGemmOp(OpBase):
    """A grouped GEMM over this rank's local experts. The token count per expert is not known
    when the workload is built: the engine takes it from the routing draw of (step, layer,
    micro-batch). Each expert computes (tokens_e x k) @ (k x n), `gemms_per_token` times
    (e.g. SwiGLU forward: gate+up fused as n = 2*ffn, then down)."""

    n: int = 0
    k: int = 0
    dtype: Dtype = "bf16"
    shared: bool = False  # shared expert: every token, no routing


@dataclass(frozen=True)
class AttentionOp(OpBase):
    batch: int = 0  # sequences
    seq_len: int = 0
    heads: int = 0  # heads on this rank (after TP)
    head_dim_qk: int = 0
    head_dim_v: int = 0
    causal: bool = True
    dtype: Dtype = "bf16"


@dataclass(frozen=True)
class MemoryOp(OpBase):
    """Bandwidth-bound work (norms, activations, permute/unpermute, optimizer): bytes moved."""

    bytes_moved: float = 0.0
    # Kernel class (simmoe.compute.params.MEMORY_ACCESS): "stream" for coalesced reads and writes,
    # "last_dim_cat" for torch.cat along the last dimension of non-contiguous inputs, "strided"
    # for an element-wise op over a slice of the last dimension (eager stacks), "gather" for a row
    # gather whose bytes count a read per output row (the MoE permute), "gather_sum" for a sum of
    # each token's k gathered rows into its row (the MoE unpermute, the permute's backward).
    access: str = "stream"


@dataclass(frozen=True)
class CollectiveOp(OpBase):
    """A collective over a parallel group. For EP dispatch/combine the bytes per (src, dst) pair
    come from the routing draw: `bytes_per_token` says how many bytes one routed token moves."""

    group: Group = "tp"
    collective: Literal[
        "allreduce", "reduce_scatter", "all_gather", "alltoall_dispatch", "alltoall_combine", "p2p_send"
    ] = "allreduce"
    size_bytes: float = 0.0  # per-rank message (NCCL --bytes); unused for dispatch/combine
    bytes_per_token: float = 0.0  # dispatch/combine only
    # False: a transfer that keeps no SMs from compute (TE userbuffers' copy-engine ring exchange
    # under parallelism.tp_comm_overlap); True: an NCCL kernel holding its SMs (docs/compute.md).
    holds_sms: bool = True


Op = GemmOp | ExpertGemmOp | AttentionOp | MemoryOp | CollectiveOp
