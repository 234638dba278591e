"""Roofline compute model: datasheet peaks times shape-dependent efficiency (docs/compute.md).

time = kernel overhead + max(compute, memory), where compute counts the tensor-core work the GPU
actually does (whole output tiles, whole waves of tiles over the SMs, K padded to the main-loop
depth) at an efficiency solved from one published measurement per dtype, and memory is the bytes a
kernel must move over the achievable HBM bandwidth. Small M wastes tile rows and turns a GEMM
bandwidth bound; that is where fine-grained experts and imbalance hurt.
"""

from __future__ import annotations

from functools import reduce
from pathlib import Path

import numpy as np

from simmoe.compute.params import (
    DEFAULT_ROOFLINE_FILE,
    BLOCK_SCALED,
    DTYPES,
    GEMM_DTYPES,
    RooflineParams,
    access_slowdown,
    load_roofline_params,
)
from simmoe.compute.sm_share import check_sms_held
from simmoe.dtypes import MX_ARCHITECTURES
from simmoe.errors import InputError
from simmoe.hardware import GpuSpec, gpu_spec


def _ceil_div(a, b):
    return np.ceil(np.asarray(a, dtype=np.float64) / b)


def _as_output(x):
    x = np.asarray(x, dtype=np.float64)
    return float(x) if x.ndim == 0 else x


def _nonnegative(value, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise InputError("must be finite and >= 0", field=name, value=value, has_value=True)
    return arr


def _positive_int(value, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 1) or np.any(arr != np.round(arr)):
        raise InputError("must be a positive integer", field=name, value=value, has_value=True)
    return arr


def _wave_makespan(durations, counts, slots: int):
    """Time of work items dispatched longest-first in waves of ``slots``, each wave as long as its
    longest item. ``durations`` (..., G) sorted descending on the last axis, ``counts`` (..., G)
    items of each duration. Wave starts fall at item positions 0, slots, 2*slots, ...; the number
    of starts inside group g's positions [C_{g-1}, C_g) is ceil(C_g/slots) - ceil(C_{g-1}/slots)."""
    last = np.cumsum(counts, axis=-1)
    first = last - counts
    starts = np.ceil(last / slots) - np.ceil(first / slots)
    return np.sum(durations * starts, axis=-1)


CLOCKS = ("sustained", "burst")
_SCALARS = (int, float, np.int64, np.float64)


class RooflineModel:
    """Compute model from datasheet figures and simmoe/data/roofline.yaml. Implements ComputeModel."""

    kind = "roofline"

    def __init__(self, gpu_name: str, *, params_file=None, file: str | None = None, field: str = "gpu",
                 comm_sms: int = 0, comm_sms_field: str = "comm_sms", clocks: str = "sustained") -> None:
        """``comm_sms``: SMs that communication kernels hold while compute runs (DeepEP-style
        all-to-alls overlapped with compute, the scenario's ``parallelism.comm_sms``); compute
        kernels get the other ``spec.sms - comm_sms``. ``comm_sms_field`` names it in errors.
        ``clocks``: "sustained" (a training run at the power cap: tensor-core rates divided by
        roofline.yaml's sustained_clocks factor) or "burst" (as the anchors were measured)."""
        if clocks not in CLOCKS:
            raise InputError("unknown clocks", field="clocks", value=clocks, allowed=", ".join(CLOCKS))
        self.spec: GpuSpec = gpu_spec(gpu_name, file=file, field=field)
        self.params: RooflineParams = load_roofline_params(params_file)
        self._params_file = params_file
        self.clocks = clocks
        p = self.params
        self.clock_factor = {d: (p.sustained_clock_factor[d] if clocks == "sustained" else 1.0) for d in DTYPES}
        self.comm_sms = check_sms_held(int(self.spec.sms), comm_sms, gpu=self.spec.name, file=file,
                                       field=comm_sms_field)
        self._sms = int(self.spec.sms) - self.comm_sms
        # The anchors' efficiency is per SM: a kernel on fewer SMs gets that fraction of the peak.
        self.sm_fraction = self._sms / self.spec.sms
        hbm_anchor = gpu_spec(p.hbm_anchor_gpu, file=p.source, field="hbm.anchor_gpu")
        self.hbm_fraction = p.hbm_measured_TBps / hbm_anchor.hbm_TBps
        self.hbm_bytes_per_s = self.spec.hbm_TBps * 1e12 * self.hbm_fraction
        # Main-loop efficiency per dtype, solved from the anchors (dtypes this GPU lacks are absent).
        self.gemm_efficiency = {
            dtype: self._solve_anchor(dtype) for dtype in DTYPES if self._peak_or_none(self.spec, dtype)
        }
        self._scalar_cache: dict[tuple, float] = {}
        sms_tag = "" if self._sms == self.spec.sms else f"/{self._sms}sm"
        clock_tag = "" if clocks == "sustained" else f"/{clocks}"
        self.identifier = f"roofline:{self.spec.name}{sms_tag}{clock_tag}:{p.source}@{p.sha256[:12]}"

    def with_sms_held(self, extra: int) -> "RooflineModel":
        """The same GPU and parameters with ``extra`` more SMs held by communication kernels (an
        NCCL collective in flight beside compute; simmoe.compute.sm_share)."""
        return RooflineModel(self.spec.name, params_file=self._params_file, clocks=self.clocks,
                             comm_sms=min(self.comm_sms + int(extra), int(self.spec.sms) - 1))

    # -- hardware lookups -------------------------------------------------------------------------

    @staticmethod
    def _peak_or_none(spec: GpuSpec, dtype: str) -> float | None:
        tflops = spec.bf16_dense_tflops if dtype == "bf16" else spec.fp8_dense_tflops
        return None if tflops is None else tflops * 1e12

    def _runs_as(self, dtype: str) -> str:
        """The tensor-core dtype whose peak, anchor, tiles and clocks a GEMM in ``dtype`` uses."""
        fmt = self.params.block_scaled.get(dtype)
        return dtype if fmt is None else fmt.runs_as

    def _check_dtype(self, dtype: str, formats: tuple[str, ...] = GEMM_DTYPES) -> None:
        known = tuple(d for d in formats if d in DTYPES or d in self.params.block_scaled)
        if dtype not in known:
            raise InputError("unknown dtype", field="dtype", value=dtype, allowed=", ".join(known))
        runs_as = self._runs_as(dtype)
        # Every block-scaled format simmoe knows (BLOCK_SCALED) is an MX format.
        if self._peak_or_none(self.spec, runs_as) is None or (
                dtype in BLOCK_SCALED and self.spec.architecture not in MX_ARCHITECTURES):
            raise InputError(
                f"{self.spec.name} has no {dtype.upper()} tensor cores (simmoe/data/hardware.yaml)",
                field="dtype", value=dtype,
                allowed=", ".join(d for d in DTYPES if d in self.gemm_efficiency),
            )

    def _flops_per_s(self, dtype: str) -> float:
        """Main-loop rate of a GEMM in ``dtype`` on the compute SMs: datasheet peak x solved
        efficiency x the fraction of SMs compute may use, at the model's clocks; a block-scaled
        format's main loop is its own factor slower than that of the dtype it runs as."""
        runs_as = self._runs_as(dtype)
        fmt = self.params.block_scaled.get(dtype)
        slowdown = 1.0 if fmt is None else fmt.main_loop_time_factor
        return (self._peak_or_none(self.spec, runs_as) * self.gemm_efficiency[runs_as] * self.sm_fraction
                / self.clock_factor[runs_as] / slowdown)

    def _tile_depth(self, k, dtype: str):
        """Main-loop depth one tile pays for: K padded to the main-loop step, plus the per-tile fixed
        cost (pipeline fill, epilogue) expressed in K elements (roofline.yaml gemm.tile_fixed_k)."""
        runs_as = self._runs_as(dtype)
        tile_k = self.params.tile_k[runs_as]
        return _ceil_div(k, tile_k) * tile_k + self.params.tile_fixed_k[runs_as]

    # -- efficiency from the anchor ---------------------------------------------------------------

    def _padded_work_flops(self, m, n, k, dtype: str, sms: int):
        """Tensor-core FLOPs the GPU spends on a GEMM without split-K, idle SM slots of a partial
        last wave included: waves x SMs x one tile's FLOPs (K padded to the main-loop depth);
        the best tile shape."""
        kpad = self._tile_depth(k, dtype)
        work = None
        for tile_m, tile_n in self.params.tile_shapes:
            tiles = _ceil_div(m, tile_m) * _ceil_div(n, tile_n)
            this = np.ceil(tiles / sms) * sms * 2.0 * tile_m * tile_n * kpad
            work = this if work is None else np.minimum(work, this)
        return work

    def _solve_anchor(self, dtype: str) -> float:
        """Efficiency e such that this model's time at the anchor shape on the anchor GPU equals the
        anchor's: overhead + padded_work / (peak * e) = 2mnk / anchor_rate."""
        a, where = self.params.gemm_anchor(self.spec.architecture, dtype)
        spec = gpu_spec(a.gpu, file=self.params.source, field=f"{where}.gpu")
        own_architecture = dtype in self.params.architecture_anchors.get(self.spec.architecture, {})
        if own_architecture and spec.architecture != self.spec.architecture:
            raise InputError("anchor GPU is of another architecture", file=self.params.source,
                             field=f"{where}.gpu", value=a.gpu,
                             allowed=f"a {self.spec.architecture} GPU (simmoe/data/hardware.yaml architecture)")
        peak = self._peak_or_none(spec, dtype)
        if peak is None:
            raise InputError(f"anchor GPU has no {dtype} peak", file=self.params.source, field=f"{where}.gpu",
                             value=a.gpu)
        rate = a.measured_tflops * 1e12 if a.measured_tflops is not None else a.assumed_fraction_of_peak * peak
        anchor_s = 2.0 * a.m * a.n * a.k / rate
        busy_s = anchor_s - self.params.kernel_overhead_s
        work = float(self._padded_work_flops(a.m, a.n, a.k, dtype, spec.sms))
        efficiency = work / (peak * busy_s) if busy_s > 0 else np.inf
        tiles_min = min(np.ceil(a.m / tm) * np.ceil(a.n / tn) for tm, tn in self.params.tile_shapes)
        d = self.params.dtypes[dtype]
        bytes_moved = a.m * a.k * (d.input_bytes + d.a_scale_bytes_per_element) + a.k * a.n * (
            d.input_bytes + d.b_scale_bytes_per_element) + a.m * a.n * d.output_bytes
        memory_s = bytes_moved / (spec.hbm_TBps * 1e12 * self.hbm_fraction)
        if not 0 < efficiency <= 1 or tiles_min <= spec.sms / 2 or memory_s >= busy_s:
            raise InputError(
                "anchor must be a large compute-bound GEMM (at least half a wave of tiles, faster than "
                "memory, slower than the datasheet peak allows)",
                file=self.params.source, field=where, value=f"{a.m}x{a.n}x{a.k}",
            )
        return efficiency

    # -- ComputeModel ------------------------------------------------------------------------------

    def gemm_parts(self, m, n, k, dtype: str) -> dict:
        """Breakdown of ``gemm_s``: compute_s, memory_s, overhead_s, total_s, split_k (arrays)."""
        self._check_dtype(dtype)
        m, n, k = np.broadcast_arrays(_nonnegative(m, "m"), _nonnegative(n, "n"), _nonnegative(k, "k"))
        p, d, sms = self.params, self.params.dtypes[dtype], self._sms
        runs_as = self._runs_as(dtype)
        tile_k, kfix = p.tile_k[runs_as], p.tile_fixed_k[runs_as]
        kblocks = _ceil_div(k, tile_k)
        rate = self._flops_per_s(dtype)
        base_bytes = m * k * (d.input_bytes + d.a_scale_bytes_per_element) + k * n * (
            d.input_bytes + d.b_scale_bytes_per_element) + m * n * d.output_bytes
        bw = self.hbm_bytes_per_s

        best = np.full(m.shape, np.inf)
        compute = np.zeros(m.shape)
        memory = np.zeros(m.shape)
        split = np.ones(m.shape)
        # Split-K candidates 2..SMs (one wave of tiles x splits); tried on a trailing axis.
        s = np.arange(2, sms + 1, dtype=np.float64)
        for tile_m, tile_n in p.tile_shapes:
            tiles = _ceil_div(m, tile_m) * _ceil_div(n, tile_n)
            candidates_c = [np.ceil(tiles / sms) * sms * 2.0 * tile_m * tile_n * (kblocks * tile_k + kfix) / rate]
            candidates_m = [base_bytes / bw]
            candidates_s = [np.ones(m.shape)]
            fits_one_wave = tiles[..., None] * s <= sms
            split_depth = np.ceil(kblocks[..., None] / s) * tile_k + kfix  # each split pays the fixed cost
            c_split = np.where(fits_one_wave, sms * 2.0 * tile_m * tile_n * split_depth / rate, np.inf)
            workspace = p.split_k_workspace_bytes_per_output_element * s * (m * n)[..., None]
            m_split = (base_bytes[..., None] + workspace) / bw
            t_split = np.maximum(c_split, m_split)
            if t_split.shape[-1]:
                pick = np.argmin(t_split, axis=-1)[..., None]
                candidates_c.append(np.take_along_axis(c_split, pick, -1)[..., 0])
                candidates_m.append(np.take_along_axis(m_split, pick, -1)[..., 0])
                candidates_s.append(s[pick[..., 0]])
            for c, mem, sk in zip(candidates_c, candidates_m, candidates_s):
                t = np.maximum(c, mem)
                better = t < best
                best = np.where(better, t, best)
                compute = np.where(better, c, compute)
                memory = np.where(better, mem, memory)
                split = np.where(better, sk, split)

        empty = (m * n * k) == 0  # nothing to compute: no kernel is launched
        overhead = np.where(empty, 0.0, p.kernel_overhead_s)
        compute, memory = np.where(empty, 0.0, compute), np.where(empty, 0.0, memory)
        return {"compute_s": compute, "memory_s": memory, "overhead_s": overhead,
                "total_s": overhead + np.maximum(compute, memory), "split_k": split}

    def gemm_s(self, m, n, k, dtype: str):
        if np.ndim(m) == np.ndim(n) == np.ndim(k) == 0:
            # The engine asks for the same few layer shapes many times: memoise scalar calls.
            key = (float(m), float(n), float(k), dtype)
            if key not in self._scalar_cache:
                self._scalar_cache[key] = _as_output(self.gemm_parts(m, n, k, dtype)["total_s"])
            return self._scalar_cache[key]
        return _as_output(self.gemm_parts(m, n, k, dtype)["total_s"])

    def _tokens(self, tokens_per_expert) -> np.ndarray:
        tokens = _nonnegative(tokens_per_expert, "tokens_per_expert")
        if tokens.ndim == 0:
            raise InputError("must be an array whose last axis runs over experts", field="tokens_per_expert",
                             value=tokens_per_expert, has_value=True)
        return tokens

    def grouped_gemm_parts(self, tokens_per_expert, n, k, dtype: str) -> dict:
        """Breakdown of ``grouped_gemm_s``: tiles of all experts share the SMs in waves (one tile
        shape for the whole kernel); an expert with no tokens reads no weights and adds no tiles.

        Each expert is also a roofline of its own (``per_expert_s``): a heavy expert's tiles are
        compute-bound while a light expert's are bound by reading its weights, and the scheduler
        does not overlap the two, so the kernel takes at least sum_e max(compute_e, memory_e).
        For a balanced load that sum equals max(compute, memory); under skew it is what makes
        a grouped GEMM slower at the same total tokens (docs/compute.md, "Skew")."""
        self._check_dtype(dtype)
        tokens = self._tokens(tokens_per_expert)
        n, k = float(_positive_int(n, "n")), float(_positive_int(k, "k"))
        p, d, sms = self.params, self.params.dtypes[dtype], self._sms
        rate = self._flops_per_s(dtype)
        active = tokens > 0
        # Bytes per expert: its activations in and out, its weights once if it has any token.
        memory_e = (tokens * (k * (d.input_bytes + d.a_scale_bytes_per_element) + n * d.output_bytes)
                    + active * k * n * (d.input_bytes + d.b_scale_bytes_per_element)) / self.hbm_bytes_per_s
        bounds = []  # per tile shape: (wave-quantized compute, each expert's own compute)
        for tile_m, tile_n in p.tile_shapes:
            tiles_e = _ceil_div(tokens, tile_m) * np.ceil(n / tile_n)
            tile_s = 2.0 * tile_m * tile_n * self._tile_depth(k, dtype) / rate
            bounds.append((np.ceil(tiles_e.sum(axis=-1) / sms) * sms * tile_s, tiles_e * tile_s))
        return self._grouped_parts(bounds, memory_e)

    def grouped_gemm_s(self, tokens_per_expert, n, k, dtype: str):
        return _as_output(self.grouped_gemm_parts(tokens_per_expert, n, k, dtype)["total_s"])

    def grouped_gemm_wgrad_parts(self, tokens_per_expert, n, k, dtype: str) -> dict:
        """Breakdown of ``grouped_gemm_wgrad_s``: each active expert has the same (k x n) output
        tiles, but a tile's depth is that expert's token count, so tiles differ in length; they are
        dispatched longest first in waves over the SMs. As in ``grouped_gemm_parts``, no faster
        than the sum of the experts' own rooflines (``per_expert_s``)."""
        self._check_dtype(dtype)
        tokens = self._tokens(tokens_per_expert)
        n, k = float(_positive_int(n, "n")), float(_positive_int(k, "k"))
        p, d, sms = self.params, self.params.dtypes[dtype], self._sms
        rate_per_sm = self._flops_per_s(dtype) / sms
        ordered = -np.sort(-tokens, axis=-1)  # descending: longest tiles first
        active = ordered > 0
        # Both operands are activations here (X^T and dY): activation-style scales on both.
        memory_e = (ordered * (k + n) * (d.input_bytes + d.a_scale_bytes_per_element)
                    + active * k * n * d.output_bytes) / self.hbm_bytes_per_s
        bounds = []
        for tile_m, tile_n in p.tile_shapes:
            tiles = np.where(active, np.ceil(k / tile_m) * np.ceil(n / tile_n), 0.0)
            tile_s = 2.0 * tile_m * tile_n * self._tile_depth(ordered, dtype) / rate_per_sm
            bounds.append((_wave_makespan(tile_s, tiles, sms), tiles * tile_s / sms))
        return self._grouped_parts(bounds, memory_e)

    def _grouped_parts(self, bounds: list, memory_e: np.ndarray) -> dict:
        """A grouped kernel's time from its bounds: per tile shape (the kernel's compute, each
        expert's compute, experts on the last axis) and each expert's memory time. Each bound at
        the tile shape that suits it best (the library's heuristic picks one); the kernel is no
        faster than its compute, its bytes, or the sum of its experts' own rooflines, and pays one
        launch even when every expert is empty."""
        memory = memory_e.sum(axis=-1)
        compute = reduce(np.minimum, [c for c, _ in bounds])
        per_expert = reduce(np.minimum, [np.maximum(e, memory_e).sum(axis=-1) for _, e in bounds])
        overhead = np.full(np.shape(compute), self.params.kernel_overhead_s)
        return {"compute_s": compute, "memory_s": memory, "per_expert_s": per_expert, "overhead_s": overhead,
                "total_s": overhead + np.maximum(np.maximum(compute, memory), per_expert)}

    def grouped_gemm_wgrad_s(self, tokens_per_expert, n, k, dtype: str):
        return _as_output(self.grouped_gemm_wgrad_parts(tokens_per_expert, n, k, dtype)["total_s"])

    def attention_parts(self, batch, seq_len, heads, head_dim_qk, head_dim_v, causal: bool, dtype: str,
                        backward: bool) -> dict:
        """Breakdown of ``attention_s`` for scalar arguments."""
        self._check_dtype(dtype, DTYPES)
        direction = "backward" if backward else "forward"
        fraction = self.params.attention_fraction_of_peak.get(f"{dtype}_{direction}")
        if fraction is None:
            have = sorted(self.params.attention_fraction_of_peak)
            raise InputError(f"no {dtype} attention {direction} kernel is modelled (FlashAttention-3 has "
                             f"no FP8 backward)", field="dtype", value=dtype,
                             allowed=", ".join(h.split("_")[0] for h in have if h.endswith(direction)))
        b, s, h = (float(_positive_int(x, name)) for x, name in
                   ((batch, "batch"), (seq_len, "seq_len"), (heads, "heads")))
        dqk, dv = float(_positive_int(head_dim_qk, "head_dim_qk")), float(_positive_int(head_dim_v, "head_dim_v"))
        # The measured kernel's rate at this head shape relative to head dim 128 (roofline.yaml).
        fraction *= self.params.attention_head_dim_factor.get((int(dqk), int(dv)), {}).get(direction, 1.0)
        p, d, sms = self.params, self.params.dtypes[dtype], self._sms
        bq, bk = p.attention_block_q, p.attention_block_k
        nq, nk = np.ceil(s / bq), np.ceil(s / bk)
        if not backward:
            # One CTA per (batch, head, query block i): it visits key blocks 0..last it can see.
            i = np.arange(nq)
            blocks = np.minimum(nk, np.ceil((i + 1) * bq / bk)) if causal else np.full(i.shape, nk)
            block_flops = 2.0 * bq * bk * (dqk + dv)
            bytes_moved = b * s * h * ((2 * dqk + dv) * d.input_bytes + dv * d.output_bytes + 4)  # +LSE
        else:
            # One CTA per (batch, head, key block j): it visits query blocks that can see it.
            j = np.arange(nk)
            blocks = (nq - np.floor(j * bk / bq)) if causal else np.full(j.shape, nq)
            block_flops = 2.0 * bq * bk * (3 * dqk + 2 * dv)
            # Reads Q, K, V, O, dO, LSE, rowsum(dO*O); writes dQ, dK, dV.
            bytes_moved = b * s * h * ((2 * dqk + 3 * dv) * d.input_bytes + (2 * dqk + dv) * d.output_bytes + 8)
        ordered = -np.sort(-blocks)
        makespan_blocks = _wave_makespan(ordered, np.full(ordered.shape, b * h), sms)
        # Per-SM rate is the whole GPU's over all its SMs; waves run over the compute SMs.
        compute = makespan_blocks * block_flops * self.clock_factor[dtype] / (
            self._peak_or_none(self.spec, dtype) / self.spec.sms * fraction)
        memory = bytes_moved / self.hbm_bytes_per_s
        overhead = p.kernel_overhead_s
        return {"compute_s": float(compute), "memory_s": float(memory), "overhead_s": overhead,
                "total_s": float(overhead + max(compute, memory))}

    def attention_s(self, batch, seq_len, heads, head_dim_qk, head_dim_v, causal: bool, dtype: str,
                    backward: bool):
        args = np.broadcast_arrays(*(np.asarray(x) for x in (batch, seq_len, heads, head_dim_qk, head_dim_v)))
        if args[0].ndim == 0:
            key = ("attention", *(float(a) for a in args), bool(causal), dtype, bool(backward))
            if key not in self._scalar_cache:
                self._scalar_cache[key] = self.attention_parts(*(a.item() for a in args), causal, dtype,
                                                               backward)["total_s"]
            return self._scalar_cache[key]
        out = np.empty(args[0].shape)
        for index in np.ndindex(out.shape):  # per distinct layer shape; the engine calls it rarely
            out[index] = self.attention_parts(*(a[index].item() for a in args), causal, dtype, backward)["total_s"]
        return out

    def memory_bound_s(self, bytes_moved, kernels=1, access: str = "stream"):
        if type(bytes_moved) in _SCALARS and type(kernels) in _SCALARS:
            # The engine asks for the same few byte counts thousands of times: memoise scalar
            # calls (a NaN key never matches, so invalid values still reach the checks).
            key = ("memory", float(bytes_moved), float(kernels), access)
            got = self._scalar_cache.get(key)
            if got is None:
                got = self._scalar_cache[key] = self._memory_bound_s(bytes_moved, kernels, access)
            return got
        return self._memory_bound_s(bytes_moved, kernels, access)

    def _memory_bound_s(self, bytes_moved, kernels, access="stream"):
        bytes_moved = _nonnegative(bytes_moved, "bytes_moved")
        kernels = _nonnegative(kernels, "kernels")
        return _as_output(kernels * self.params.kernel_overhead_s
                          + bytes_moved / self.hbm_bytes_per_s * access_slowdown(self.params, access))

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "device": self.spec.name,
            "source": "simmoe/data/roofline.yaml" if Path(self.params.path) == DEFAULT_ROOFLINE_FILE
            else self.params.path,
            "identifier": self.identifier,
            "params_sha256": self.params.sha256,
            "gemm_efficiency": {dtype: round(e, 6) for dtype, e in self.gemm_efficiency.items()},
            "hbm_fraction": round(self.hbm_fraction, 6),
            "hbm_bytes_per_s": self.hbm_bytes_per_s,
            "kernel_overhead_s": self.params.kernel_overhead_s,
            "compute_sms": self._sms,
            "gpu_sms": int(self.spec.sms),
            "anchored_on": list(self.params.anchor_gpus(self.spec.architecture)),
        }
