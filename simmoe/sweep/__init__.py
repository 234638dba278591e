"""Parameter sweeps: a grid of scenario variations, run in parallel, resumable (docs/sweep.md).

    spec = load_sweep("scenarios/sweeps/ep-capacity.yaml")   # validates every point up front
    outcome = run_sweep(spec, "results/ep-capacity", workers=2)
    pyarrow.parquet.read_table(outcome.dataset)              # one row per point
"""

from simmoe.sweep.evaluators import ALIASES as EVALUATORS
from simmoe.sweep.evaluators import derived_point, engine_point
from simmoe.sweep.executors import DaskExecutor, LocalExecutor, SerialExecutor, make_executor
from simmoe.sweep.keys import canonical_json, point_key
from simmoe.sweep.runner import SweepOutcome, run_sweep
from simmoe.sweep.spec import SweepPoint, SweepSpec, expand_grid, load_sweep
from simmoe.sweep.store import SweepError, SweepStore

__all__ = ["EVALUATORS", "DaskExecutor", "LocalExecutor", "SerialExecutor", "SweepError", "SweepOutcome",
           "SweepPoint", "SweepSpec", "SweepStore", "canonical_json", "derived_point", "engine_point",
           "expand_grid", "load_sweep", "make_executor", "point_key", "run_sweep"]
