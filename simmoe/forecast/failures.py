"""Failures of a synchronous training job: cluster MTBF, optimal checkpoint interval, goodput.

Any failed GPU or node stops every rank, so the cluster fails at the sum of its parts' rates.
Between checkpoints the job computes for tau seconds, then stalls delta seconds writing one; a
failure costs a restart R plus the work since the last checkpoint.

- Young, J. W. (1974). A first order approximation to the optimum checkpoint interval.
  Communications of the ACM 17(9), 530-531: tau = sqrt(2 delta M).
- Daly, J. T. (2006). A higher order estimate of the optimum checkpoint interval for restart
  dumps. Future Generation Computer Systems 22(3), 303-312: the expected wall time under Poisson
  failures, T_w = M e^{R/M} (e^{(tau + delta)/M} - 1) T_s / tau, and its perturbation optimum
  tau = sqrt(2 delta M) [1 + (1/3) sqrt(delta / 2M) + (1/9) (delta / 2M)] - delta for
  delta < 2M, tau = M otherwise.
"""

from __future__ import annotations

import math

import numpy as np

from simmoe.errors import InputError


def cluster_mtbf_s(*, gpus: int, nodes: int, gpu_mtbf_s: float, node_mtbf_s: float = math.inf) -> float:
    """M: mean time between interruptions of a job spanning ``gpus`` GPUs on ``nodes`` nodes
    (independent exponential failures: rates add)."""
    rate = gpus / gpu_mtbf_s + nodes / node_mtbf_s
    return math.inf if rate == 0 else 1.0 / rate


def young_interval_s(checkpoint_write_s: float, mtbf_s: float) -> float:
    """Young (1974): tau = sqrt(2 delta M)."""
    return math.sqrt(2.0 * checkpoint_write_s * mtbf_s)


def daly_interval_s(checkpoint_write_s: float, mtbf_s: float) -> float:
    """Daly (2006), higher-order optimum compute time between checkpoints."""
    d, m = checkpoint_write_s, mtbf_s
    if math.isinf(m):
        return math.inf
    if d >= 2.0 * m:
        return m
    x = d / (2.0 * m)
    return math.sqrt(2.0 * d * m) * (1.0 + math.sqrt(x) / 3.0 + x / 9.0) - d


def expected_wall_time_s(solve_s, *, interval_s: float, checkpoint_write_s: float, restart_s: float,
                         mtbf_s: float):
    """Daly (2006): expected wall time to finish ``solve_s`` seconds of failure-free compute.
    Without failures (M infinite) it is T_s (tau + delta) / tau. Vectorised over ``solve_s``."""
    t, d, r, m = interval_s, checkpoint_write_s, restart_s, mtbf_s
    if not (t > 0 or (t == 0 and d == 0)):
        raise InputError("the checkpoint interval must be > 0 s", field="forecast.failures.checkpoint_interval_s",
                         value=interval_s, allowed="> 0 (0 only with free checkpoints)")
    solve = np.asarray(solve_s, float)
    if math.isinf(t):  # no failures and no checkpoints worth writing
        return solve * 1.0
    if t == 0:  # free checkpoints taken continuously: only restarts cost time (the tau -> 0 limit)
        return solve * (1.0 if math.isinf(m) else math.exp(r / m))
    if math.isinf(m):
        factor = (t + d) / t
    else:
        # expm1 keeps the factor exact when (tau + delta) << M.
        factor = m * math.exp(r / m) * math.expm1((t + d) / m) / t
    return solve * factor


def goodput(*, interval_s: float, checkpoint_write_s: float, restart_s: float, mtbf_s: float) -> float:
    """T_s / T_w: the share of wall time that advances training."""
    return float(1.0 / expected_wall_time_s(1.0, interval_s=interval_s, checkpoint_write_s=checkpoint_write_s,
                                            restart_s=restart_s, mtbf_s=mtbf_s))


def idle_time_s(solve_s, wall_s, *, interval_s: float, checkpoint_write_s: float, restart_s: float,
                mtbf_s: float):
    """Expected wall time with the GPUs idle: checkpoint writes (T_s / tau of them) and restarts
    (T_w / M of them), capped at the whole overhead T_w - T_s; the rest of the overhead is
    recomputing lost work, at training power. Vectorised."""
    solve = np.asarray(solve_s, float)
    wall = np.asarray(wall_s, float)
    ckpt = 0.0 if (math.isinf(interval_s) or checkpoint_write_s == 0) else solve / interval_s * checkpoint_write_s
    restarts = 0.0 if math.isinf(mtbf_s) else wall / mtbf_s * restart_s
    return np.minimum(wall - solve, ckpt + restarts)
