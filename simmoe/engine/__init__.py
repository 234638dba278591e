"""The training-step engine: pipeline schedules, SimPy streams, one network process (docs/engine.md)."""

from simmoe.engine.api import InfeasibleScenario, RunResult, simulate
from simmoe.engine.schedules import (
    SCHEDULES,
    Item,
    build_schedule,
    dualpipe,
    interleaved_1f1b,
    makespan,
    one_f_one_b,
)

__all__ = ["SCHEDULES", "InfeasibleScenario", "Item", "RunResult", "build_schedule",
           "dualpipe", "interleaved_1f1b", "makespan", "one_f_one_b", "simulate"]
