"""Forecast a whole training run: time-to-train (P10/P50/P90), GPU-hours, dollars, energy, CO2,
water, with failures and checkpoints (docs/forecast.md)."""

from simmoe.forecast.cost import cloud_cost_usd, gpu_hours, owned_capex_usd, power_cost_usd
from simmoe.forecast.energy import co2_tonnes, energy_mwh, gpu_power_w, it_energy_kwh, water_litres
from simmoe.forecast.failures import (
    cluster_mtbf_s,
    daly_interval_s,
    expected_wall_time_s,
    goodput,
    young_interval_s,
)
from simmoe.forecast.model import ClusterFacts, EngineSteps, Forecast, cluster_facts, forecast, project
from simmoe.forecast.montecarlo import SampleTime, sample_time, stratified_indices
from simmoe.forecast.records import COLUMNS, ForecastRow, summary_rows, write_forecast_parquet
from simmoe.forecast.settings import Failures, ForecastSettings, OwnedCluster, Power, apply_overrides, settings_of
from simmoe.forecast.shape import RunShape, run_shape, run_shape_of

__all__ = [
    "COLUMNS", "ClusterFacts", "EngineSteps", "Failures", "Forecast", "ForecastRow", "ForecastSettings",
    "OwnedCluster", "Power", "RunShape", "SampleTime", "apply_overrides", "cloud_cost_usd", "cluster_facts",
    "cluster_mtbf_s", "co2_tonnes", "daly_interval_s", "energy_mwh", "expected_wall_time_s", "forecast",
    "goodput", "gpu_hours", "gpu_power_w", "it_energy_kwh", "owned_capex_usd", "power_cost_usd", "project",
    "run_shape", "run_shape_of", "sample_time", "settings_of", "stratified_indices", "summary_rows",
    "water_litres", "write_forecast_parquet", "young_interval_s",
]
