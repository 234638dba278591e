"""Time-to-train of one Monte Carlo sample from simulated steps (docs/forecast.md, "Monte Carlo").

A sample is one possible run: the engine with its own seed (its own per-layer expert popularity
and per-micro-batch routing draws). Its steps are simulated at step indices stratified over the
run, so routing drift (which depends on the step index) is seen early, middle and late: the run is
cut into n equal strata of step indices, one index is drawn uniformly inside each, and the stratum's
steps are all charged that step's time (a stratified estimate of the sum over every step).

Ramp plateaus run fewer micro-batches per step. The ramp is simulated at a few batch sizes
("ramp points", evenly spaced in micro-batch count from the ramp's first batch to the full batch),
each at the same stratified ramp indices; a plateau's step time, busy fraction and MFU are
linearly interpolated in micro-batch count between them. Exact for two points when step time is
affine in the micro-batch count m, as in 1F1B ((m + pp - 1) slots) and interleaved 1F1B.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from simmoe.forecast.shape import RunShape


class StepSource(Protocol):
    """Simulated steps: anything with ``records(global_batch, step_indices)`` returning objects with
    ``step_time_s``, ``mfu``, ``exposed_comm_s`` and ``pipeline_bubble_s`` (simmoe.results.StepRecord)."""

    def records(self, global_batch: int, step_indices: Sequence[int]) -> list: ...


def stratified_indices(lo: int, hi: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights): ``min(n, hi - lo)`` step indices, one drawn uniformly in each of as many
    near-equal strata of [lo, hi); each weight is its stratum's size (they sum to hi - lo)."""
    span = hi - lo
    n = min(int(n), span)
    if n <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    edges = lo + (np.arange(n + 1) * span) // n
    width = np.diff(edges)
    idx = edges[:-1] + np.floor(rng.random(n) * width).astype(np.int64)
    return idx.astype(np.int64), width.astype(np.int64)


def busy_fraction(rec) -> float:
    """Share of the step the critical rank computes: step - bubble - exposed communication."""
    t = rec.step_time_s
    return float(np.clip((t - rec.pipeline_bubble_s - rec.exposed_comm_s) / t, 0.0, 1.0)) if t > 0 else 0.0


def _columns(recs: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.array([r.step_time_s for r in recs], float)
    u = np.array([busy_fraction(r) for r in recs], float)
    mfu = np.array([r.mfu for r in recs], float)
    return t, u, mfu


@dataclass(frozen=True)
class SampleTime:
    compute_s: float  # failure-free time to train: ramp + steady steps
    ramp_s: float
    steady_step_time_s: float  # mean full-batch step time over the steady phase (stratum-weighted)
    busy_fraction: float  # time-weighted over the run
    mfu: float  # time-weighted over the run
    simulated_steps: int


def ramp_point_batches(shape: RunShape, quantum: int, points: int, *, min_micro_batches: int = 1,
                       micro_batch_multiple: int = 1) -> np.ndarray:
    """Global batches (sequences) the ramp is simulated at: ``points`` evenly spaced in
    micro-batch count from the first plateau's batch to the full batch, whole micro-batches.

    A schedule may not run every micro-batch count (DualPipe: even, at least 2*pp); points are
    then raised to the nearest count it runs, and plateaus below the lowest point are
    extrapolated linearly in micro-batch count (:func:`interp_linear`)."""
    m_lo = shape.ramp_batch[0] / quantum
    m_hi = shape.global_batch / quantum
    m = np.round(np.linspace(m_lo, m_hi, max(2, points))).astype(np.int64)
    m = np.maximum(m, max(1, min_micro_batches))
    m = -(-m // micro_batch_multiple) * micro_batch_multiple
    return np.unique(np.minimum(m, int(round(m_hi)))) * quantum


def interp_linear(x, xp, fp) -> np.ndarray:
    """Piecewise-linear interpolation that extrapolates the end segments (np.interp would hold
    the end values constant, which overstates the step time of a smaller batch)."""
    x, xp, fp = (np.asarray(v, dtype=np.float64) for v in (x, xp, fp))
    if len(xp) == 1:
        return np.full_like(x, fp[0])
    inner = np.interp(x, xp, fp)
    lo_slope = (fp[1] - fp[0]) / (xp[1] - xp[0])
    hi_slope = (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    return np.where(x < xp[0], fp[0] + (x - xp[0]) * lo_slope,
                    np.where(x > xp[-1], fp[-1] + (x - xp[-1]) * hi_slope, inner))


def sample_time(shape: RunShape, source: StepSource, *, steps: int, rng: np.random.Generator,
                quantum: int = 1, ramp_points: int = 2, min_micro_batches: int = 1,
                micro_batch_multiple: int = 1) -> SampleTime:
    """One sample's failure-free time to train (module docstring)."""
    total_t = total_ut = total_mt = 0.0
    simulated = 0
    ramp_s = 0.0
    plateaus = shape.ramp_steps > 0
    if plateaus.any():
        idx, _w = stratified_indices(0, shape.ramp_total_steps, steps, rng)
        batches = ramp_point_batches(shape, quantum, ramp_points, min_micro_batches=min_micro_batches,
                                     micro_batch_multiple=micro_batch_multiple)
        pt_t, pt_u, pt_m = [], [], []
        for b in batches:
            t, u, m = _columns(source.records(int(b), idx))
            simulated += len(t)
            pt_t.append(t.mean())
            pt_u.append(u.mean())
            pt_m.append(m.mean())
        mb = batches / quantum
        m_i = shape.ramp_batch[plateaus] / quantum
        n_i = shape.ramp_steps[plateaus]
        t_i = interp_linear(m_i, mb, pt_t)
        time_i = n_i * t_i
        ramp_s = float(time_i.sum())
        total_t += ramp_s
        total_ut += float((time_i * np.clip(interp_linear(m_i, mb, pt_u), 0.0, 1.0)).sum())
        total_mt += float((time_i * np.clip(interp_linear(m_i, mb, pt_m), 0.0, 1.0)).sum())
    steady_mean = float("nan")
    if shape.steady_steps > 0:
        lo = shape.ramp_total_steps
        idx, w = stratified_indices(lo, lo + shape.steady_steps, steps, rng)
        t, u, m = _columns(source.records(shape.global_batch, idx))
        simulated += len(t)
        time_j = w * t
        steady = float(time_j.sum())
        steady_mean = steady / float(w.sum())
        total_t += steady
        total_ut += float((time_j * u).sum())
        total_mt += float((time_j * m).sum())
    if total_t <= 0:
        return SampleTime(0.0, 0.0, steady_mean, 0.0, 0.0, simulated)
    return SampleTime(compute_s=total_t, ramp_s=ramp_s, steady_step_time_s=steady_mean,
                      busy_fraction=total_ut / total_t, mfu=total_mt / total_t, simulated_steps=simulated)
