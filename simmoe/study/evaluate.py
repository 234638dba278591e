"""The study's point function (a sweep evaluator): forecast one variant and keep its step metrics.

``study_point(scenario, samples=K, forecast_overrides={...})`` runs simmoe.forecast (K Monte
Carlo samples, each an engine run) and averages the full-batch step records the forecast itself
simulated, so step metrics and the forecast come from the same engine steps (nothing is simulated
twice). Fabric capex is not computed here: it depends only on the topology and the price table,
so the coordinator adds it, and a new price table reuses every simulated point.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

# Step metrics kept (means over the steady full-batch steps every sample simulated).
STEP_COLUMNS = ("step_time_s", "tokens_per_s_per_gpu", "mfu", "a2a_dispatch_s", "a2a_combine_s",
                "exposed_comm_s", "dp_comm_s", "expert_compute_s", "pipeline_bubble_s",
                "dropped_token_fraction", "expert_load_max_over_mean", "peak_memory_gib")
# Forecast columns kept, from the P10 / P50 / P90 rows.
FORECAST_COLUMNS = ("tokens", "steps", "time_to_train_s", "time_to_train_days", "gpu_hours", "cost_usd",
                    "energy_mwh", "tco2e", "goodput")


def _recording_factory(scenario, full_batch: int, sink: list):
    from simmoe.forecast.model import EngineSteps

    shared: dict = {"compute": None}

    class RecordingSteps(EngineSteps):
        def records(self, global_batch, step_indices):  # noqa: ANN001
            recs = super().records(global_batch, step_indices)
            shared["compute"] = self.compute
            if global_batch == full_batch:
                sink.extend(recs)
            return recs

    def factory(seed: int):
        return RecordingSteps(scenario, seed=seed, compute=shared["compute"])

    return factory


def study_point(scenario: Any, *, samples: int = 3,
                forecast_overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Step metrics (means) + forecast P10/P50/P90 for one scenario, as flat columns."""
    from simmoe.engine.api import check_memory
    from simmoe.forecast import apply_overrides, forecast, settings_of

    mem = check_memory(scenario)  # InfeasibleScenario: the point's result is an error row, the study goes on
    settings = settings_of(scenario)
    if forecast_overrides:
        settings = apply_overrides(settings, dict(forecast_overrides), file="study forecast:")
    recs: list = []
    fc = forecast(scenario, samples=int(samples), settings=settings,
                  source_factory=_recording_factory(scenario, scenario.training.global_batch, recs))
    out: dict[str, Any] = {"gpus": int(scenario.gpus), "samples": int(samples),
                           "steps_simulated": len(recs)}
    for c in STEP_COLUMNS:
        v = np.array([getattr(r, c) for r in recs], float)
        out[c] = float(np.nanmean(v)) if len(v) and not np.all(np.isnan(v)) else None
    out["peak_memory_gib"] = float(mem.total_bytes) / 2**30
    for kind in ("p10", "p50", "p90"):
        row = fc.summary(kind)
        for c in FORECAST_COLUMNS:
            out[f"{c}_{kind}"] = float(getattr(row, c))
    return out


study_point.metric_names = (("gpus", "samples", "steps_simulated") + STEP_COLUMNS
                            + tuple(f"{c}_{k}" for k in ("p10", "p50", "p90") for c in FORECAST_COLUMNS))
