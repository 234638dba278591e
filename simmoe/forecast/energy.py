"""Energy, carbon and water of a run (docs/forecast.md, "Energy").

GPU power follows a straight line between idle and TDP, driven by the share of the step a GPU is
computing: P(u) = P_idle + (P_tdp - P_idle) u. Facility energy = PUE x (GPU energy + node
overhead energy). Carbon = facility energy x grid intensity. Water = IT energy x water-usage
effectiveness (The Green Grid defines WUE per kWh of IT energy, not facility energy).
"""

from __future__ import annotations

import numpy as np

J_PER_KWH = 3.6e6


def gpu_power_w(busy_fraction, *, idle_w: float, tdp_w: float):
    """P(u) = P_idle + (P_tdp - P_idle) u, u clipped to [0, 1]. Vectorised."""
    u = np.clip(np.asarray(busy_fraction, float), 0.0, 1.0)
    return idle_w + (tdp_w - idle_w) * u


def it_energy_kwh(*, gpus: int, duration_s, avg_gpu_power_w, nodes: int = 0,
                  node_overhead_w: float = 0.0):
    """Energy drawn by the IT equipment (GPUs plus node overhead), kWh. Vectorised."""
    watts = gpus * np.asarray(avg_gpu_power_w, float) + nodes * node_overhead_w
    return watts * np.asarray(duration_s, float) / J_PER_KWH


def energy_mwh(*, gpus: int, duration_s, avg_gpu_power_w, pue: float, nodes: int = 0,
               node_overhead_w: float = 0.0):
    """Facility energy, MWh: PUE x (gpus x P_gpu + nodes x P_node) x duration. Vectorised.

    The function every forecast uses; the GPT-3 validation case (Patterson et al. 2021) calls it
    with node_overhead_w=0 because its 330 W average already counts the whole server per chip."""
    return pue * it_energy_kwh(gpus=gpus, duration_s=duration_s, avg_gpu_power_w=avg_gpu_power_w,
                               nodes=nodes, node_overhead_w=node_overhead_w) / 1000.0


def co2_tonnes(energy_mwh_, *, grid_kgco2_per_kwh: float):
    """t CO2e = MWh x 1000 kWh/MWh x kg/kWh / 1000 kg/t = MWh x kg/kWh."""
    return np.asarray(energy_mwh_, float) * grid_kgco2_per_kwh


def water_litres(it_energy_kwh_, *, water_l_per_kwh: float):
    """Litres of water = IT energy (kWh) x WUE (L/kWh)."""
    return np.asarray(it_energy_kwh_, float) * water_l_per_kwh
