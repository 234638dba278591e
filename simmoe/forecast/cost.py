"""GPU-hours and dollars: rented by the GPU-hour, or owned (capex amortized plus power)."""

from __future__ import annotations

import numpy as np

HOURS_PER_YEAR = 365.25 * 24.0


def gpu_hours(*, gpus: int, wall_s):
    """GPUs x wall-clock hours (every GPU of the job is paid for the whole run, failures included)."""
    return gpus * np.asarray(wall_s, float) / 3600.0


def cloud_cost_usd(gpu_hours_, *, price_per_gpu_hour_usd: float):
    return np.asarray(gpu_hours_, float) * price_per_gpu_hour_usd


def owned_capex_usd(*, gpus: int, wall_s, capex_per_gpu_usd: float, amortization_years: float,
                    utilization: float):
    """The run's pro-rata share of straight-line depreciation. A cluster that runs paid work a
    share ``utilization`` of its life charges each busy hour 1 / utilization hours of it:
    gpus x capex x hours / (years x 8766 h x utilization)."""
    hours = np.asarray(wall_s, float) / 3600.0
    return gpus * capex_per_gpu_usd * hours / (amortization_years * HOURS_PER_YEAR * utilization)


def power_cost_usd(energy_mwh_, *, power_price_usd_per_kwh: float):
    """Facility energy (PUE included) x price."""
    return np.asarray(energy_mwh_, float) * 1000.0 * power_price_usd_per_kwh
