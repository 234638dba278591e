"""What turns one validated scenario into a row of numbers: an *evaluator*.

An evaluator is a plain function ``fn(scenario: Scenario) -> Mapping[str, scalar]`` (scalars: int,
float, bool, str or None), importable by name as ``"package.module:function"`` so that worker
processes and Dask workers can find it. Built-in names:

- ``engine`` (default): simulate the scenario's steps with :func:`simmoe.engine.simulate` and return
  :func:`simmoe.results.summarize` of its step records (``step_time_s_mean``, ``mfu_mean``, ...).
- ``derived``: what the scenario loader derives (GPUs, dp, edp, micro-batches per step, ...): no
  simulation, milliseconds per point; for checking a layout sweep, and for fast tests.

This is the documented hook for other point functions (``--evaluator module:function``). An
evaluator may declare its columns as an attribute ``metric_names`` (a tuple of str) so a sweep's
``metrics:`` list is checked before any point runs.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

from simmoe.errors import InputError

ALIASES = {
    "engine": "simmoe.sweep.evaluators:engine_point",
    "derived": "simmoe.sweep.evaluators:derived_point",
}


def engine_point(scenario: Any) -> dict[str, Any]:
    """The engine's summary of the scenario's recorded steps."""
    from simmoe.engine import simulate
    from simmoe.results import summarize

    return summarize(simulate(scenario).records)


def _engine_metric_names() -> tuple[str, ...]:
    # Ask summarize itself (on a stand-in record) rather than copy its column rules here.
    from dataclasses import fields

    from simmoe.results import StepRecord, summarize

    record = StepRecord(**{f.name: (1 if f.name == "step" else 1.0) for f in fields(StepRecord)})
    return tuple(summarize([record]))


def derived_point(scenario: Any) -> dict[str, Any]:
    """The loader's derived values that are numbers (stage_layers, a list, is left out)."""
    return {k: v for k, v in scenario.derived().items() if v is None or isinstance(v, (int, float, str, bool))}


derived_point.metric_names = ("gpus", "nodes", "gpus_per_node", "gpu_model", "topology_path", "dp", "edp",
                              "experts_per_ep_rank", "micro_batches_per_step", "tokens_per_step",
                              "steps_at_full_batch", "moe_layers")


def evaluator_id(name: str | Callable) -> str:
    """``module:qualname`` of an evaluator given by alias, by that string, or as a function."""
    if callable(name):
        return f"{name.__module__}:{name.__qualname__}"
    if not isinstance(name, str) or not name:
        raise InputError("an evaluator is named module:function", field="--evaluator", value=name,
                         allowed=f"{', '.join(ALIASES)} or package.module:function")
    name = ALIASES.get(name, name)
    if ":" not in name:
        raise InputError("an evaluator is named module:function", field="--evaluator", value=name,
                         allowed=f"{', '.join(ALIASES)} or package.module:function")
    resolve_evaluator(name)  # fail now, not in every worker
    return name


def resolve_evaluator(name: str) -> Callable[[Any], Mapping[str, Any]]:
    name = ALIASES.get(name, name)
    module_name, _, qualname = name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise InputError(f"cannot import the evaluator ({err})", field="--evaluator", value=name,
                         allowed=f"{', '.join(ALIASES)} or an importable package.module:function") from None
    if not callable(obj):
        raise InputError("the evaluator is not a function", field="--evaluator", value=name,
                         allowed="a function taking a Scenario and returning a mapping of column -> scalar")
    return obj


def metric_names(name: str | Callable) -> tuple[str, ...] | None:
    """The columns an evaluator declares, or None when it does not say."""
    ev_id = evaluator_id(name)
    if ev_id == ALIASES["engine"]:
        return _engine_metric_names()
    declared = getattr(resolve_evaluator(ev_id), "metric_names", None)
    return tuple(declared) if declared is not None else None
