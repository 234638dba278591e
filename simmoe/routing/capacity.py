"""Expert capacity, dropped assignments and the two execution styles.

capacity = ceil(C * tokens * k / E), C the capacity factor. Where it is counted (``scope``):

- ``"source"`` (default): per (source rank, expert), tokens = that rank's tokens. This is what
  GShard (capacity per group, a group being one device's local batch), Switch (Mesh-TF) and
  DeepSpeed-MoE (``_capacity`` from the local gate's token count) implement: each rank's gate
  drops locally before the all-to-all, and the padded all-to-all moves E x capacity slots per rank.
- ``"group"``: per expert over the whole EP group's tokens (tokens = ep * tokens_per_rank), the
  definition in many papers' prose. Drops are shared among sources in proportion to what each sent
  (largest-remainder rounding, deterministic).

Execution styles:

- ``"padded"``: static shapes (GShard/Switch/DeepSpeed). Every expert computes its full capacity
  (ep * capacity slots with source scope, capacity with group scope) and, with source scope, the
  all-to-all moves capacity slots per (source, expert) - no de-duplication of a token sent to two
  experts on one rank.
- ``"dropped"``: capacity enforced but no padding (Megatron-Core with a capacity factor and without
  ``pad_expert_input_to_capacity``): work and traffic equal what survived the drop.
- ``"dropless"`` (C = None; MegaBlocks, Megatron-Core default): nothing dropped, work equals the
  real load, so the busiest expert/rank sets the pace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simmoe.errors import InputError

CAPACITY_SCOPES = ("source", "group")
EXECUTION_STYLES = ("padded", "dropped", "dropless")


def expert_capacity(capacity_factor: float, tokens: int, top_k: int, num_experts: int) -> int:
    """ceil(C * tokens * k / E), at least 1 (a zero-slot expert would drop everything)."""
    # Round the product first so that e.g. 1.1 * 10 does not become 11.000000000000002 -> 12.
    return max(1, math.ceil(round(capacity_factor * tokens * top_k / num_experts, 9)))


def execution_style(capacity_factor: float | None, pad_to_capacity: bool) -> str:
    if capacity_factor is None:
        if pad_to_capacity:
            raise InputError("padding to capacity needs a capacity factor", field="capacity_factor",
                             value=None, has_value=True,
                             allowed="a number > 0, or pad_to_capacity=false (dropless)")
        return "dropless"
    if not (isinstance(capacity_factor, (int, float)) and math.isfinite(capacity_factor)
            and capacity_factor > 0):
        raise InputError("capacity factor must be a number > 0, or null for dropless",
                         field="capacity_factor", value=capacity_factor, allowed="> 0 or null")
    return "padded" if pad_to_capacity else "dropped"


@dataclass(frozen=True)
class CapacityResult:
    capacity: int | None  # slots per (source, expert) with source scope, per expert with group
    processed_tokens_per_src_expert: np.ndarray  # (ep, E)
    compute_tokens_per_expert: np.ndarray  # (E,) rows each expert's GEMM processes (incl. padding)
    padded_tokens_per_src_expert: np.ndarray | None  # (ep, E) slots moved when padded (source)


def apply_capacity(tokens_per_src_expert: np.ndarray, *, tokens_per_rank: int, top_k: int,
                   capacity_factor: float | None, pad_to_capacity: bool = True,
                   scope: str = "source") -> CapacityResult:
    counts = np.asarray(tokens_per_src_expert, dtype=np.int64)
    ep, num_experts = counts.shape
    style = execution_style(capacity_factor, pad_to_capacity)
    if scope not in CAPACITY_SCOPES:
        raise InputError("unknown capacity scope", field="capacity_scope", value=scope,
                         allowed=", ".join(CAPACITY_SCOPES))
    if style == "dropless":
        return CapacityResult(None, counts.copy(), counts.sum(axis=0), None)
    if scope == "source":
        cap = expert_capacity(capacity_factor, tokens_per_rank, top_k, num_experts)
        processed = np.minimum(counts, cap)
        if style == "padded":
            padded = np.full_like(counts, cap)
            return CapacityResult(cap, processed, padded.sum(axis=0), padded)
        return CapacityResult(cap, processed, processed.sum(axis=0), None)
    cap = expert_capacity(capacity_factor, ep * tokens_per_rank, top_k, num_experts)
    totals = counts.sum(axis=0)
    kept = np.minimum(totals, cap)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(totals > 0, counts * (kept / np.maximum(totals, 1))[None, :], 0.0)
    processed = np.floor(share).astype(np.int64)
    short = kept - processed.sum(axis=0)  # < ep per expert: largest remainders get one more
    rank = np.argsort(np.argsort(-(share - processed), axis=0, kind="stable"), axis=0)
    processed += (rank < short[None, :]).astype(np.int64)
    compute = np.full(num_experts, cap, dtype=np.int64) if style == "padded" else kept
    return CapacityResult(cap, processed, compute, None)
