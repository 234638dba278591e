"""forecast.parquet: one documented row schema (docs/forecast.md, "forecast.parquet").

One row per Monte Carlo sample (``kind = "sample"``) and one per summary percentile
(``kind = "p10" | "p50" | "p90"``, ``sample = seed = -1``). A summary row holds each column's own
percentile over the samples, not one sample's row. Written atomically (temporary file in the
destination folder, then ``os.replace``) with string key-value metadata, as steps.parquet.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from simmoe.atomic import dataclass_table, write_parquet_atomic

PERCENTILES = {"p10": 10.0, "p50": 50.0, "p90": 90.0}


@dataclass(frozen=True)
class ForecastRow:
    kind: str  # "sample", "p10", "p50" or "p90"
    sample: int  # sample number 0..K-1; -1 on summary rows
    seed: int  # engine seed of the sample (simulation.seed + sample); -1 on summary rows
    tokens: float  # tokens trained (whole steps)
    steps: int  # optimizer steps, ramp included
    ramp_steps: int  # optimizer steps on batch-ramp plateaus
    simulated_steps: int  # engine steps simulated for this sample
    step_time_s: float  # mean full-batch step time over the steady phase
    mfu: float  # model FLOPs utilization, time-weighted over the run
    gpu_busy_fraction: float  # share of time the critical rank computes, time-weighted
    compute_time_s: float  # failure-free time to train (T_s)
    cluster_mtbf_h: float  # mean time between job interruptions (M); inf without failures
    checkpoint_interval_s: float  # compute time between checkpoints (tau)
    goodput: float  # T_s / T_w
    time_to_train_s: float  # expected wall time, failures included (T_w)
    time_to_train_days: float  # T_w / 86400
    gpu_hours: float  # GPUs x T_w / 3600
    cost_usd: float  # cloud_cost_usd, or owned_capex_usd + power_cost_usd with an owned cluster
    cloud_cost_usd: float  # gpu_hours x costs.price_per_gpu_hour_usd
    owned_capex_usd: float  # amortized capex share; NaN without forecast.owned_cluster
    power_cost_usd: float  # energy_mwh x 1000 x costs.power_price_usd_per_kwh
    avg_gpu_power_w: float  # average GPU power over T_w (training, checkpoint and restart time)
    energy_mwh: float  # facility energy, PUE included
    tco2e: float  # energy_mwh x costs.grid_kgco2_per_kwh
    water_l: float  # IT energy (kWh) x costs.water_l_per_kwh


COLUMNS = tuple(f.name for f in fields(ForecastRow))
_INT = {"sample", "seed", "steps", "ramp_steps", "simulated_steps"}
_STR = {"kind"}


def summary_rows(samples: list[ForecastRow]) -> list[ForecastRow]:
    """P10, P50, P90 of every numeric column over ``samples`` (numpy's linear interpolation)."""
    out = []
    for kind, q in PERCENTILES.items():
        values: dict = {"kind": kind, "sample": -1, "seed": -1}
        for c in COLUMNS:
            if c in values:
                continue
            v = np.array([getattr(r, c) for r in samples], float)
            if np.all(np.isnan(v)):
                p = float("nan")
            elif np.all(v == v[0]):  # e.g. an infinite MTBF without failures: no inf - inf
                p = float(v[0])
            else:
                p = float(np.percentile(v, q, method="linear" if np.all(np.isfinite(v)) else "nearest"))
            values[c] = int(round(p)) if c in _INT else p
        out.append(ForecastRow(**values))
    return out


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def rows_as_dicts(rows: list[ForecastRow]) -> list[dict]:
    """Rows for JSON: NaN becomes null, infinity the string "inf"."""
    return [{k: _clean(v) for k, v in asdict(r).items()} for r in rows]


def write_forecast_parquet(rows: list[ForecastRow], path: str | Path, metadata: dict[str, str]) -> Path:
    """Write ``rows`` to ``path`` atomically, with string key-value ``metadata``."""
    return write_parquet_atomic(dataclass_table(rows, ForecastRow, metadata), path)
