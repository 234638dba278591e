"""The shape of a training run: batch-size ramp plateaus, then steady steps at the full batch.

The ramp follows Megatron-LM's ``--rampup-batch-size START INCREMENT SAMPLES``
(RampupBatchsizeNumMicroBatchesCalculator): the batch grows by INCREMENT sequences each time the
consumed samples cross the next multiple of SAMPLES / n_increments, so the batch is linear in
consumed tokens. A plateau's threshold is cumulative, so one plateau's overshoot (a step is never
split) shortens the next. LR warm-up changes no step time and has no phase of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simmoe.errors import InputError


@dataclass(frozen=True)
class RunShape:
    seq_len: int
    ramp_batch: np.ndarray  # (plateaus,) sequences per step on each ramp plateau
    ramp_steps: np.ndarray  # (plateaus,) optimizer steps on each plateau
    global_batch: int  # sequences per step after the ramp
    steady_steps: int

    @property
    def ramp_total_steps(self) -> int:
        return int(self.ramp_steps.sum())

    @property
    def total_steps(self) -> int:
        return self.ramp_total_steps + self.steady_steps

    @property
    def ramp_tokens(self) -> float:
        return float((self.ramp_batch * self.ramp_steps).sum()) * self.seq_len

    @property
    def tokens(self) -> float:
        """Tokens actually trained (whole steps: at least the target)."""
        return self.ramp_tokens + float(self.steady_steps) * self.global_batch * self.seq_len


def run_shape(*, total_tokens: float, seq_len: int, global_batch: int,
              start_global_batch: int | None = None, ramp_tokens: float = 0.0,
              batch_increment: int = 1) -> RunShape:
    """Steps of a run of ``total_tokens`` tokens (docs/forecast.md, "Run shape")."""
    for name, v in (("total_tokens", total_tokens), ("seq_len", seq_len), ("global_batch", global_batch),
                    ("batch_increment", batch_increment)):
        if not v > 0:
            raise InputError("must be > 0", field=name, value=v, allowed="> 0")
    start = global_batch if start_global_batch is None else int(start_global_batch)
    if not 0 < start <= global_batch:
        raise InputError("the ramp must start between 1 and the global batch",
                         field="training.batch_ramp.start_global_batch", value=start,
                         allowed=f"1 .. {global_batch}")
    batches: list[int] = []
    steps: list[int] = []
    consumed = 0.0  # tokens
    if start < global_batch and ramp_tokens > 0:
        n = math.ceil((global_batch - start) / batch_increment)
        per_plateau = ramp_tokens / n
        for i in range(n):
            b = min(start + i * batch_increment, global_batch)
            threshold = min((i + 1) * per_plateau, total_tokens)
            k = max(0, math.ceil((threshold - consumed) / (b * seq_len) - 1e-9))
            batches.append(b)
            steps.append(k)
            consumed += k * b * seq_len
    left = total_tokens - consumed
    steady = max(0, math.ceil(left / (global_batch * seq_len) - 1e-9))
    return RunShape(seq_len=int(seq_len), ramp_batch=np.array(batches, np.int64),
                    ramp_steps=np.array(steps, np.int64), global_batch=int(global_batch),
                    steady_steps=int(steady))


def batch_increment_of(scenario) -> int:  # noqa: ANN001 - Scenario
    """micro_batch * dp: the smallest batch change that keeps a whole number of micro-batches on
    every data-parallel rank (the schema has no explicit increment)."""
    return scenario.training.micro_batch * scenario.parallelism.dp


def run_shape_of(scenario, tokens: float | None = None) -> RunShape:  # noqa: ANN001 - Scenario
    """The run shape of a loaded scenario; ``tokens`` replaces training.total_tokens."""
    t = scenario.training
    ramp = t.batch_ramp
    return run_shape(total_tokens=float(t.total_tokens if tokens is None else tokens), seq_len=t.seq_len,
                     global_batch=t.global_batch,
                     start_global_batch=ramp.start_global_batch if ramp else None,
                     ramp_tokens=ramp.ramp_tokens if ramp else 0.0,
                     batch_increment=batch_increment_of(scenario))
