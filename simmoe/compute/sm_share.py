"""Compute kernels on fewer SMs: what a kernel costs while communication kernels hold some SMs.

NCCL's kernels and DeepEP-style all-to-alls run as CTAs that keep their SMs for their whole
duration and never share them with compute (NVIDIA/nccl issue 689, maintainer), so a compute kernel
that runs beside them gets the other SMs. The roofline answers this itself (its ``comm_sms``); a
measured profile does not know it, so :class:`FewerSms` scales its tensor-core kernels (GEMMs,
grouped GEMMs, attention) by the SM ratio and leaves streaming kernels alone (HBM bandwidth does
not need every SM). Wave quantization on the smaller SM count is not modelled here.
"""

from __future__ import annotations

from simmoe.errors import InputError


def check_sms_held(sms_total: int, held: int, *, gpu: str = "the GPU", file: str | None = None,
                   field: str = "comm_sms") -> int:
    if isinstance(held, bool) or int(held) != held or not 0 <= held < sms_total:
        raise InputError(f"{gpu} has {sms_total} SMs; compute needs at least one", file=file,
                         field=field, value=held, allowed=f"0..{sms_total - 1}")
    return int(held)


class FewerSms:
    """``base`` (measured on all ``sms_total`` SMs) with ``held`` of them taken by communication.
    Implements ComputeModel."""

    def __init__(self, base, sms_total: int, held: int) -> None:
        self.base = base
        self.kind = getattr(base, "kind", "profile")
        self.sms_total = int(sms_total)
        self.held = check_sms_held(self.sms_total, held)
        self.slowdown = self.sms_total / (self.sms_total - self.held)
        self.identifier = f"{base.identifier}/{self.sms_total - self.held}sm"

    def gemm_s(self, m, n, k, dtype: str):
        return self.base.gemm_s(m, n, k, dtype) * self.slowdown

    def grouped_gemm_s(self, tokens_per_expert, n, k, dtype: str):
        return self.base.grouped_gemm_s(tokens_per_expert, n, k, dtype) * self.slowdown

    def grouped_gemm_wgrad_s(self, tokens_per_expert, n, k, dtype: str):
        return self.base.grouped_gemm_wgrad_s(tokens_per_expert, n, k, dtype) * self.slowdown

    def attention_s(self, batch, seq_len, heads, head_dim_qk, head_dim_v, causal: bool, dtype: str,
                    backward: bool):
        return self.base.attention_s(batch, seq_len, heads, head_dim_qk, head_dim_v, causal, dtype,
                                     backward) * self.slowdown

    def memory_bound_s(self, bytes_moved, kernels=1, access: str = "stream"):
        return self.base.memory_bound_s(bytes_moved, kernels, access)

    def with_sms_held(self, extra: int):
        return FewerSms(self.base, self.sms_total, self.held + int(extra))

    def describe(self) -> dict:
        return {**self.base.describe(), "identifier": self.identifier,
                "sms_held_by_communication": self.held}
