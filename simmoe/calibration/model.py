"""ProfileModel: a ComputeModel that takes its times from a calibration profile (docs/calibration.md).

Each kernel family (dense GEMM and grouped GEMM per dtype, attention forward/backward, memory-bound
kernels) has one table, built here once, over log-spaced shape axes (simmoe/calibration/interp.py):
either the measured/roofline ratio (the roofline then carries tile and wave quantization between
measured shapes) or the measured time itself, whichever cross-validates better on the profile's own
grid. A query inside the measured range is answered from the table; outside it, from the nearest
measured point scaled by the roofline's ratio of the two shapes, and never faster than the roofline.
The roofline also carries what the grid does not span: a grouped kernel's skewed token histogram,
attention's batch and head count, the number of memory-bound launches.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from simmoe.calibration.grid import expert_histogram
from simmoe.calibration.interp import FittedTable, fit_table
from simmoe.calibration.schema import MEMORY_OPS, REQUIRED_OPS, STREAMING_MEMORY_OPS, Profile, read_profile
from simmoe.compute.model import ComputeModel
from simmoe.compute.params import access_slowdown
from simmoe.compute.roofline import CLOCKS, RooflineModel
from simmoe.errors import InputError, ProfileError


def _as_output(x):
    x = np.asarray(x, dtype=np.float64)
    return float(x) if x.ndim == 0 else x


class ProfileModel:
    """Compute model from a calibration profile, bounded by ``roofline``. Implements ComputeModel."""

    kind = "profile"

    def __init__(self, path: str | Path, *, gpu_name: str, roofline: RooflineModel | None = None,
                 dtypes: tuple[str, ...] | list[str] | None = None, clocks: str = "sustained") -> None:
        self.path = str(path)
        self.profile: Profile = read_profile(path)
        meta = self.profile.metadata
        # The profile's own kernels ran at burst clocks: it is read against the burst roofline.
        self.roofline = roofline if roofline is not None else RooflineModel(gpu_name, clocks="burst")
        if self.roofline.spec.name != gpu_name or self.roofline.clocks != "burst":
            raise ValueError(f"roofline is {self.roofline.identifier}; a profile needs {gpu_name}'s at burst "
                             "clocks")  # caller's bug
        if meta["gpu"] and meta["gpu"] != gpu_name:
            raise ProfileError(f"profile was measured on {meta['gpu']} ({meta['device']}), but the scenario's GPU "
                               f"is {gpu_name}", file=self.path, field="gpu", value=meta["gpu"],
                               allowed=f"a profile of {gpu_name}")
        if clocks not in CLOCKS:
            raise InputError("unknown clocks", field="clocks", value=clocks, allowed=", ".join(CLOCKS))
        # dtype -> sustained / burst time of a large GEMM ("Sustained clocks" in docs/calibration.md)
        self.sustained = sustained_factors(meta, self.path) if clocks == "sustained" else {}
        self.clocks = clocks
        self.identifier: str = meta["profile_id"] + ("@sustained" if self.sustained else "")
        self.extrapolated: Counter = Counter()  # evaluations outside the measured range, per op
        self.fallbacks: Counter = Counter()  # calls answered by the roofline alone (op not measured)
        self._cache: dict[tuple, float] = {}
        self._build()
        for dtype in dtypes or ():
            self._check_dtype("gemm", dtype)
            self._check_dtype("grouped_gemm", dtype)
            self._check_dtype("grouped_gemm_wgrad", dtype)

    # -- building the tables (once) ---------------------------------------------------------------

    def _ops_present(self) -> set[str]:
        return set(self.profile.table.column("op").to_pylist())

    def _build(self) -> None:
        present = self._ops_present()
        for op in REQUIRED_OPS:
            if op not in present:
                raise ProfileError("op has no rows", file=self.path, field="op", value=op,
                                   allowed=f"a profile with rows for {', '.join(REQUIRED_OPS)} "
                                           f"(this one has {', '.join(sorted(present))})")
        usable = set(self.roofline.gemm_efficiency)  # dtypes this GPU has tensor cores for
        self._gemm: dict[str, FittedTable] = {}
        self._grouped: dict[str, FittedTable] = {}
        self._wgrad: dict[str, FittedTable] = {}
        self.skew_check: dict[str, float] = {}
        dtypes = set(self.profile.table.column("dtype").to_pylist())
        for dtype in sorted(dtypes & usable):
            rows = self.profile.rows("gemm", dtype)
            if rows["op"].size:
                m, n, k = rows["m"], rows["n"], rows["k"]
                log_roof = np.log(self.roofline.gemm_s(m, n, k, dtype))
                self._gemm[dtype] = fit_table(np.stack([m, n, k], -1), np.log(rows["median_s"]),
                                              {"roofline-ratio": log_roof, "direct": np.zeros(m.shape)})
            for op, store, roof_fn in (("grouped_gemm", self._grouped, self.roofline.grouped_gemm_s),
                                       ("grouped_gemm_wgrad", self._wgrad, self.roofline.grouped_gemm_wgrad_s)):
                table = self._build_grouped(op, dtype, roof_fn)
                if table is not None:
                    store[dtype] = table
        self._attention: dict[tuple[str, bool, bool], FittedTable] = {}
        self._build_attention()
        self._memory: dict[str, FittedTable] = {}
        for op in MEMORY_OPS:
            rows = self.profile.rows(op)
            if rows["op"].size:
                log_roof = np.log(self.roofline.memory_bound_s(rows["bytes"], 1))
                self._memory[op] = fit_table(rows["bytes"][:, None], np.log(rows["median_s"]),
                                             {"roofline-ratio": log_roof})

    def _build_grouped(self, op: str, dtype: str, roof_fn) -> FittedTable | None:
        rows = self.profile.rows(op, dtype)
        if not rows["op"].size:
            return None
        shapes = list(zip(rows["experts"], rows["tokens_per_expert"], rows["skew"], rows["n"], rows["k"]))
        roof = np.array([roof_fn(expert_histogram(int(e), t, s), n, k, dtype) for e, t, s, n, k in shapes])
        balanced_roof = np.array([roof_fn(np.full(int(e), t), n, k, dtype) for e, t, _, n, k in shapes])
        coords = np.stack([rows["experts"], rows["tokens_per_expert"], rows["n"], rows["k"]], -1)
        log_times = np.log(rows["median_s"])
        # Both bases keep the roofline's skew factor (histogram vs balanced at the same total):
        # the grid spans balanced loads, the roofline carries a skewed histogram's extra tiles.
        structure = {"roofline-ratio": np.log(roof), "direct": np.log(roof / balanced_roof)}
        balanced = rows["skew"] == "balanced"
        fit = balanced if balanced.any() else np.ones(balanced.shape, dtype=bool)
        table = fit_table(coords[fit], log_times[fit], {b: v[fit] for b, v in structure.items()})
        if (~fit).any():
            # Skewed rows are held out: how well does the roofline's skew factor carry?
            predicted, _ = table.table(coords[~fit])
            error = np.expm1(predicted + structure[table.basis][~fit] - log_times[~fit])
            self.skew_check[f"{op}:{dtype}"] = float(np.max(np.abs(error)))
        return table

    def _build_attention(self) -> None:
        fwd = self.profile.rows("attention_fwd")
        both = self.profile.rows("attention_fwd_bwd")
        key_fields = ("dtype", "batch", "seq_len", "heads", "head_dim", "causal")
        forward_s = {tuple(fwd[f][i] for f in key_fields): fwd["median_s"][i] for i in range(fwd["op"].size)}
        groups: dict[tuple[str, bool, bool], list[tuple[float, float, float, float]]] = {}
        for i in range(fwd["op"].size):
            dtype, b, s, h, d, causal = (fwd[f][i] for f in key_fields)
            roof = self.roofline.attention_s(b, s, h, d, d, bool(causal), dtype, False)
            groups.setdefault((dtype, bool(causal), False), []).append((s, d, fwd["median_s"][i], roof))
        for i in range(both["op"].size):
            key = tuple(both[f][i] for f in key_fields)
            if key not in forward_s:
                raise ProfileError("attention_fwd_bwd row has no attention_fwd row of the same shape (the "
                                   "backward is their difference)", file=self.path, field="op",
                                   value=f"attention_fwd_bwd {dict(zip(key_fields, key))}",
                                   allowed="both ops measured on the same shapes")
            dtype, b, s, h, d, causal = key
            try:
                roof = self.roofline.attention_s(b, s, h, d, d, bool(causal), dtype, True)
            except InputError:  # the roofline has no such kernel (FP8 backward): nothing to scale
                continue
            # The backward runs 2.5x the forward's matmul FLOPs and reads more: never faster than it.
            backward_s = max(both["median_s"][i] - forward_s[key], forward_s[key])
            groups.setdefault((dtype, bool(causal), True), []).append((s, d, backward_s, roof))
        for key, points in groups.items():
            pts = np.array(points, dtype=np.float64)
            # Ratio basis only: the query's batch and heads differ from the grid's, the roofline scales them.
            self._attention[key] = fit_table(pts[:, :2], np.log(pts[:, 2]), {"roofline-ratio": np.log(pts[:, 3])})

    # -- checks -----------------------------------------------------------------------------------

    def _tables(self, op: str) -> dict:
        return {"gemm": self._gemm, "grouped_gemm": self._grouped, "grouped_gemm_wgrad": self._wgrad}[op]

    def _check_dtype(self, op: str, dtype: str) -> FittedTable:
        tables = self._tables(op)
        if dtype not in tables:
            raise ProfileError(f"profile has no {op} rows in this dtype", file=self.path, field="dtype", value=dtype,
                               allowed=", ".join(sorted(tables)) or "none")
        return tables[dtype]

    def _apply(self, op: str, fitted: FittedTable, points, roof, roof_at, direct_at=None) -> np.ndarray:
        """``exp(table(z0)) * roof(x) / D(z0)``: z0 = the query's table coordinates clamped into the
        grid, D = 1 for the roofline-ratio basis, the roofline at z0 for the direct basis
        (``direct_at``, default ``roof_at``). Inside the grid that is the table's own answer; outside,
        the nearest measured point scaled by the roofline's ratio, floored at the roofline."""
        clamped, inside = fitted.table.clamp(points)
        value, _ = fitted.table(clamped)
        roof = np.asarray(roof, dtype=np.float64)
        if fitted.basis == "roofline-ratio":
            out = np.exp(value) * roof
        else:
            at = np.asarray((direct_at or roof_at)(clamped), dtype=np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                out = np.where(at > 0, np.exp(value) * roof / np.where(at > 0, at, 1.0), 0.0)
        out = np.where(inside, out, np.maximum(out, roof))  # extrapolated: never beat the roofline
        self.extrapolated[op] += int(np.size(inside) - np.count_nonzero(inside))
        return out

    # -- ComputeModel -----------------------------------------------------------------------------

    def gemm_s(self, m, n, k, dtype: str):
        scalar = np.ndim(m) == np.ndim(n) == np.ndim(k) == 0
        if scalar:
            key = ("gemm", float(m), float(n), float(k), dtype)
            if key in self._cache:
                return self._cache[key]
        fitted = self._check_dtype("gemm", dtype)
        parts = self.roofline.gemm_parts(m, n, k, dtype)
        roof = parts["total_s"]
        points = np.stack(np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (m, n, k))), -1)
        out = self._apply("gemm", fitted, points, roof,
                          lambda z: self.roofline.gemm_s(z[..., 0], z[..., 1], z[..., 2], dtype))
        out = _as_output(out * self._clock_factor(dtype, parts))
        if scalar:
            self._cache[key] = out
        return out

    def _grouped_call(self, op: str, parts_fn, tokens_per_expert, n, k, dtype: str):
        fitted = self._check_dtype(op, dtype)
        parts = parts_fn(tokens_per_expert, n, k, dtype)  # validates the arguments
        roof = parts["total_s"]
        roof_fn = lambda *args: _as_output(parts_fn(*args)["total_s"])  # noqa: E731
        tokens = np.asarray(tokens_per_expert, dtype=np.float64)
        experts = tokens.shape[-1]
        mean = tokens.sum(axis=-1) / experts
        points = np.stack(np.broadcast_arrays(np.float64(experts), mean, np.float64(n), np.float64(k)), -1)

        def balanced_roof(z):  # the roofline of a balanced load at table coordinates z
            flat = z.reshape(-1, 4)
            out = [roof_fn(np.full(max(int(round(e)), 1), t), int(round(nn)), int(round(kk)), dtype)
                   for e, t, nn, kk in flat]
            return np.asarray(out, dtype=np.float64).reshape(z.shape[:-1])

        return _as_output(self._apply(op, fitted, points, roof, balanced_roof) * self._clock_factor(dtype, parts))

    def grouped_gemm_s(self, tokens_per_expert, n, k, dtype: str):
        return self._grouped_call("grouped_gemm", self.roofline.grouped_gemm_parts, tokens_per_expert, n, k, dtype)

    def grouped_gemm_wgrad_s(self, tokens_per_expert, n, k, dtype: str):
        return self._grouped_call("grouped_gemm_wgrad", self.roofline.grouped_gemm_wgrad_parts, tokens_per_expert,
                                  n, k, dtype)

    def _clock_factor(self, dtype: str, parts: dict | None = None):
        """1 + (sustained/burst - 1) x the share of the kernel's time its tensor cores set (the
        roofline's compute over its compute-or-memory body): a lower SM clock slows math, not HBM."""
        factor = self.sustained.get(dtype)
        if factor is None:
            return 1.0
        if parts is None:
            return factor
        body = np.asarray(parts["total_s"], dtype=np.float64) - np.asarray(parts["overhead_s"], dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(body > 0, np.clip(np.asarray(parts["compute_s"]) / np.where(body > 0, body, 1), 0, 1), 0)
        return 1.0 + (factor - 1.0) * share

    def attention_s(self, batch, seq_len, heads, head_dim_qk, head_dim_v, causal: bool, dtype: str,
                    backward: bool):
        args = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64)
                                     for x in (batch, seq_len, heads, head_dim_qk, head_dim_v)))
        key = None
        if args[0].ndim == 0:
            key = ("attention", *(float(a) for a in args), bool(causal), dtype, bool(backward))
            if key in self._cache:
                return self._cache[key]
        roof = self.roofline.attention_s(batch, seq_len, heads, head_dim_qk, head_dim_v, causal, dtype, backward)
        op = "attention_bwd" if backward else "attention_fwd"
        # A mask not measured borrows the other mask's ratio (the roofline carries the triangle).
        fitted = self._attention.get((dtype, bool(causal), bool(backward))) or \
            self._attention.get((dtype, not causal, bool(backward)))
        if fitted is None:
            self.fallbacks[f"{op}:{dtype}"] += 1
            out = _as_output(roof)
        else:
            # FlashAttention is tensor-core bound: the whole of its time follows the SM clock.
            out = _as_output(self._apply(op, fitted, np.stack([args[1], args[3]], -1), roof, None)
                             * self._clock_factor(dtype))
        if key is not None:
            self._cache[key] = out
        return out

    def memory_op_s(self, op: str, bytes_moved, kernels=1):
        """``memory_bound_s`` from one measured memory-bound op's table (copy, rmsnorm, ...)."""
        if op not in self._memory:
            raise ProfileError("profile has no rows for this memory-bound op", file=self.path, field="op",
                               value=op, allowed=", ".join(sorted(self._memory)))
        return self._memory_s({op: self._memory[op]}, bytes_moved, kernels)

    def _memory_s(self, tables: dict[str, FittedTable], bytes_moved, kernels):
        roof = self.roofline.memory_bound_s(bytes_moved, kernels)  # validates the arguments
        per_kernel = np.asarray(bytes_moved, dtype=np.float64) / np.maximum(np.asarray(kernels, dtype=np.float64), 1)
        log_ratio, inside = (np.array(x) for x in zip(*(t.table(per_kernel[..., None]) for t in tables.values())))
        # Pool the ops whose measured range covers the query; where none does, all of them,
        # extrapolated (floored at 1).
        covered = inside.any(axis=0)
        weight = np.where(covered, inside, True).astype(np.float64)
        ratio = np.exp((weight * log_ratio).sum(axis=0) / weight.sum(axis=0))
        ratio = np.where(covered, ratio, np.maximum(ratio, 1.0))
        self.extrapolated["memory_bound"] += int(np.size(covered) - np.count_nonzero(covered))
        return _as_output(np.asarray(roof) * ratio)

    def memory_bound_s(self, bytes_moved, kernels=1, access: str = "stream"):
        """Geometric mean of the measured streaming ops' ratios (copy, norms) at the bytes one kernel
        moves (those ops whose measured range covers it): the engine does not say which streaming
        kernel it is (norm, activation, optimizer). Gathers and scatter-adds are left out: their
        speed is set by L2 reuse and atomics (schema.STREAMING_MEMORY_OPS; copy is required).
        ``access`` other than "stream" (a last-dimension cat, a strided element-wise op): the
        streaming time times the roofline's measured slowdown of that class (profiles time
        neither). A row gather ("gather", its bytes counted per output row) is a copy with index
        loads: the measured copy alone, times the gather's slowdown over a copy; a sum of gathered
        rows ("gather_sum"), the measured copy alone (the profile's norms stream more slowly than a
        copy and do not stand for either)."""
        ops = ("copy",) if access in ("gather", "gather_sum") else STREAMING_MEMORY_OPS
        streaming = {op: t for op, t in self._memory.items() if op in ops}
        seconds = self._memory_s(streaming, bytes_moved, kernels)
        slow = access_slowdown(self.roofline.params, access)
        return seconds if slow == 1.0 else _as_output(np.asarray(seconds) * slow)

    def tables(self) -> dict:
        """Per table: basis, method, cross-validation error, axes (what describe() summarises)."""
        out = {}
        for name, store in (("gemm", self._gemm), ("grouped_gemm", self._grouped), ("grouped_gemm_wgrad", self._wgrad),
                            ("memory", self._memory)):
            for dtype, fitted in store.items():
                out[f"{name}:{dtype}"] = fitted.describe()
        for (dtype, causal, backward), fitted in self._attention.items():
            out[f"attention_{'bwd' if backward else 'fwd'}:{dtype}:{'causal' if causal else 'full'}"] = \
                fitted.describe()
        return out

    def with_sms_held(self, extra: int):
        """Measured kernels with ``extra`` SMs held by communication (simmoe.compute.sm_share)."""
        from simmoe.compute.sm_share import FewerSms

        sms = int(self.roofline.spec.sms)
        return FewerSms(self, sms, min(int(extra), sms - 1))

    def describe(self) -> dict:
        meta = self.profile.metadata
        return {
            "kind": self.kind,
            "device": meta["device"],
            "gpu": meta["gpu"] or None,
            "source": self.path,
            "identifier": self.identifier,
            "provenance": meta["provenance"],
            "command": meta["command"],
            "date_utc": meta["date_utc"],
            "torch": meta["torch"],
            "cuda": meta["cuda"],
            "driver": meta["driver"],
            "grid": meta["grid"],
            "skipped": json.loads(meta["skipped"]),
            "dtypes": sorted(self._gemm),
            "roofline": self.roofline.identifier,
            "tables": {name: {k: v for k, v in t.items() if k != "axes"} for name, t in self.tables().items()},
            "grouped_skew_check_max_rel_error": dict(self.skew_check),
            "clocks": self.clocks if self.sustained or self.clocks == "burst" else
            "burst (the profile has no sustained_gemm measurement: kernel times as measured)",
            "sustained_factor": dict(self.sustained),
            "extrapolated": dict(self.extrapolated),
            "fallbacks": dict(self.fallbacks),
        }


def load_compute_model(gpu_name: str, calibration: str | Path | None, *,
                       dtypes: tuple[str, ...] | list[str] | None = None,
                       comm_sms: int = 0, clocks: str = "sustained") -> ComputeModel:
    """The compute model a simulation uses: the roofline of ``gpu_name`` when ``calibration`` is
    None, else a ProfileModel of that file bounded by it. ``dtypes`` (optional) are checked up front.
    ``comm_sms``: SMs communication kernels hold throughout (the scenario's parallelism.comm_sms);
    the profile was measured on all SMs, so its tensor-core kernels are scaled by the SM ratio."""
    if calibration is None:
        return RooflineModel(gpu_name, comm_sms=comm_sms, comm_sms_field="parallelism.comm_sms", clocks=clocks)
    profile = ProfileModel(calibration, gpu_name=gpu_name, roofline=RooflineModel(gpu_name, clocks="burst"),
                           dtypes=dtypes, clocks=clocks)
    return profile.with_sms_held(comm_sms) if comm_sms else profile


def sustained_factors(meta: dict[str, str], file: str) -> dict[str, float]:
    """dtype -> sustained_s / burst_s from a profile's ``sustained_gemm`` metadata (absent: {})."""
    text = meta.get("sustained_gemm")
    if not text:
        return {}
    try:
        entries = json.loads(text)
        factors = {str(dtype): float(entry["sustained_s"]) / float(entry["burst_s"]) for dtype, entry in entries.items()}
    except (ValueError, TypeError, KeyError, ZeroDivisionError) as exc:
        raise ProfileError(f"unreadable sustained-load measurement ({exc})", file=file, field="sustained_gemm",
                           allowed='JSON {dtype: {"burst_s": s, "sustained_s": s, ...}}') from exc
    bad = {d: f for d, f in factors.items() if not (np.isfinite(f) and 0.5 <= f <= 3.0)}
    if bad:
        raise ProfileError("sustained/burst GEMM time out of range", file=file, field="sustained_gemm",
                           value=bad, allowed="a ratio between 0.5 and 3")
    return factors
