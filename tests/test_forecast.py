"""Forecast formulas with hand-derived or published oracles (docs/forecast.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simmoe.errors import InputError
from simmoe.forecast import (
    ClusterFacts,
    ForecastSettings,
    apply_overrides,
    cloud_cost_usd,
    cluster_mtbf_s,
    co2_tonnes,
    daly_interval_s,
    energy_mwh,
    expected_wall_time_s,
    forecast,
    goodput,
    gpu_hours,
    gpu_power_w,
    it_energy_kwh,
    owned_capex_usd,
    power_cost_usd,
    project,
    run_shape,
    sample_time,
    stratified_indices,
    water_litres,
    young_interval_s,
)
from simmoe.forecast.records import COLUMNS, ForecastRow, summary_rows
from simmoe.forecast.settings import Failures, OwnedCluster, Power

DAY_S = 86400.0
HOUR_S = 3600.0

# ------------------------------------------------------------------------------ run shape


def test_ramp_plateaus_follow_megatron_cumulative_thresholds():
    # start 2, global 8, increment 2 -> plateaus at 2, 4, 6 with 30,000 / 3 = 10,000 tokens each
    # (seq 1000). Plateau 0: 10,000 / 2,000 = 5 steps (consumed 10,000). Plateau 1: threshold
    # 20,000, (20,000 - 10,000) / 4,000 = 2.5 -> 3 steps (consumed 22,000). Plateau 2: threshold
    # 30,000, 8,000 / 6,000 -> 2 steps (consumed 34,000). Steady: 66,000 / 8,000 = 8.25 -> 9.
    s = run_shape(total_tokens=100_000, seq_len=1000, global_batch=8, start_global_batch=2,
                  ramp_tokens=30_000, batch_increment=2)
    assert s.ramp_batch.tolist() == [2, 4, 6]
    assert s.ramp_steps.tolist() == [5, 3, 2]
    assert s.steady_steps == 9
    assert s.total_steps == 19
    assert s.ramp_tokens == 34_000
    assert s.tokens == 34_000 + 9 * 8_000


def test_no_ramp_is_ceil_of_tokens_over_batch():
    s = run_shape(total_tokens=100_000, seq_len=1000, global_batch=8)
    assert (s.ramp_total_steps, s.steady_steps) == (0, 13)  # 12.5 -> 13


def test_ramp_longer_than_run_is_cut_at_total_tokens():
    # 3 plateaus of 10,000 tokens but only 12,000 tokens to train: 5 steps at 2, then
    # (12,000 - 10,000) / 4,000 -> 1 step at 4, nothing at 6, no steady steps.
    s = run_shape(total_tokens=12_000, seq_len=1000, global_batch=8, start_global_batch=2,
                  ramp_tokens=30_000, batch_increment=2)
    assert s.ramp_steps.tolist() == [5, 1, 0]
    assert s.steady_steps == 0


def test_deepseek_v3_ramp_shape():
    # DeepSeek-V3: 3072 -> 15360 sequences of 4096 over the first 469B of 14.8T tokens. With an
    # increment of 128 sequences: 96 plateaus; after the ramp (14.8e12 - 469e9) / (15360 * 4096)
    # = 14.331e12 / 62,914,560 = 227,785.1 steps remain, so 227,786, or 227,785 when the ramp's
    # overshoot (under one full step in all, the thresholds being cumulative) takes the 0.1.
    s = run_shape(total_tokens=14.8e12, seq_len=4096, global_batch=15360, start_global_batch=3072,
                  ramp_tokens=469e9, batch_increment=128)
    assert len(s.ramp_batch) == 96 and s.ramp_batch[0] == 3072 and s.ramp_batch[-1] == 15232
    assert 469e9 <= s.ramp_tokens < 469e9 + 15360 * 4096
    assert s.steady_steps in (227_785, 227_786)


@settings(max_examples=60, deadline=None)
@given(start=st.integers(1, 64), extra=st.integers(0, 64), inc=st.integers(1, 16), seq=st.integers(1, 64),
       ramp=st.floats(0, 1e5), total=st.floats(1, 1e6))
def test_run_shape_invariants(start, extra, inc, seq, ramp, total):
    g = start + extra
    s = run_shape(total_tokens=total, seq_len=seq, global_batch=g, start_global_batch=start,
                  ramp_tokens=ramp, batch_increment=inc)
    assert np.all(np.diff(s.ramp_batch) > 0) and np.all(s.ramp_batch <= g)
    assert np.all(s.ramp_steps >= 0)
    assert s.tokens >= total - 1e-6 * total  # whole steps: at least the target
    assert s.tokens < total + g * seq + 1e-6 * total  # ...and less than one full step more


def test_bad_ramp_start_is_an_input_error():
    with pytest.raises(InputError, match="start_global_batch"):
        run_shape(total_tokens=1e6, seq_len=10, global_batch=8, start_global_batch=16, ramp_tokens=1e5)

# ------------------------------------------------------------------------------ failures


def test_young_interval_by_hand():
    # delta 5 min, M 24 h = 1440 min: sqrt(2 * 5 * 1440) = sqrt(14400) = 120 min.
    assert young_interval_s(300.0, 24 * HOUR_S) == pytest.approx(120 * 60.0, rel=1e-12)


@pytest.mark.parametrize("mtbf_min, expected_min", [(24 * 60, 117), (6 * 60, 57), (15, 9.1)])
def test_daly_interval_matches_daly_2006_figures(mtbf_min, expected_min):
    # Daly (2006), Figs. 3-5: delta = 5 min, R = 10 min; the model predicts tau_opt = 117, 57 and
    # 9.1 min for M = 24 h, 6 h and 15 min (rounded as printed).
    tau = daly_interval_s(300.0, mtbf_min * 60.0) / 60.0
    assert tau == pytest.approx(expected_min, abs=0.5 if expected_min > 10 else 0.05)


def test_daly_interval_is_m_when_delta_exceeds_2m():
    assert daly_interval_s(3 * HOUR_S, 1 * HOUR_S) == HOUR_S


def test_cluster_mtbf_adds_rates():
    # 8 GPUs at 80 h and 1 node at 20 h: 8/80 + 1/20 = 0.15 per hour -> 6.667 h.
    assert cluster_mtbf_s(gpus=8, nodes=1, gpu_mtbf_s=80.0, node_mtbf_s=20.0) == pytest.approx(20.0 / 3.0)


def test_default_mtbfs_reproduce_llama3_interruption_rate():
    # Llama 3 405B: 419 unexpected interruptions in 54 days on 16,384 GPUs (2,048 nodes):
    # one every 54 * 24 / 419 = 3.093 h.
    f = Failures()
    m = cluster_mtbf_s(gpus=16384, nodes=2048, gpu_mtbf_s=f.gpu_mtbf_hours * HOUR_S,
                       node_mtbf_s=f.node_mtbf_hours * HOUR_S)
    assert m / HOUR_S == pytest.approx(54 * 24 / 419, rel=0.02)


def test_goodput_without_failures_is_tau_over_tau_plus_delta():
    assert goodput(interval_s=3600, checkpoint_write_s=60, restart_s=600, mtbf_s=math.inf) == pytest.approx(3600 / 3660)


def test_goodput_with_failures_by_hand():
    # M = 10 h = 36,000 s, R = 600 s, delta = 60 s, tau = 3600 s:
    # T_w / T_s = M e^{R/M} (e^{(tau+delta)/M} - 1) / tau = 10 * e^{1/60} * (e^{0.1016667} - 1)
    #           = 10 * 1.0168064 * 0.1070144 = 1.088130, goodput 0.919008.
    g = goodput(interval_s=3600, checkpoint_write_s=60, restart_s=600, mtbf_s=36_000)
    assert g == pytest.approx(1 / 1.088130, rel=1e-5)
    # First order (Young): 1 - delta/tau - tau/(2M) - R/M = 1 - 1/60 - 1/20 - 1/60 = 0.91667.
    assert g == pytest.approx(0.91667, rel=0.01)


def test_daly_optimum_maximises_goodput():
    d, r, m = 120.0, 1800.0, 5 * HOUR_S
    best = daly_interval_s(d, m)
    g_best = goodput(interval_s=best, checkpoint_write_s=d, restart_s=r, mtbf_s=m)
    for tau in (best * 0.5, best * 0.8, best * 1.25, best * 2):
        assert goodput(interval_s=tau, checkpoint_write_s=d, restart_s=r, mtbf_s=m) < g_best


def test_wall_time_scales_with_solve_time():
    w = expected_wall_time_s(np.array([1.0, 2.0]), interval_s=100, checkpoint_write_s=10, restart_s=5, mtbf_s=1000)
    assert w[1] == pytest.approx(2 * w[0])

# ------------------------------------------------------------------------------ energy and money


def test_gpt3_energy_case_through_the_forecast_energy_model():
    # Patterson et al. 2021 (arXiv 2104.10350, Table 4), shared/validation/public_cases.yaml
    # gpt3-energy: 10,000 V100 for 14.8 days at 330 W average, PUE 1.10, 0.429 kgCO2e/kWh ->
    # 1287 MWh and 552.1 tCO2e, within 2%. By hand: 10,000 * 330 W * 355.2 h * 1.10 = 1289.4 MWh.
    mwh = float(energy_mwh(gpus=10_000, duration_s=14.8 * DAY_S, avg_gpu_power_w=330.0, node_overhead_w=0.0,
                           nodes=0, pue=1.10))
    t = float(co2_tonnes(mwh, grid_kgco2_per_kwh=0.429))
    assert mwh == pytest.approx(1287, rel=0.02)
    assert t == pytest.approx(552.1, rel=0.02)
    assert mwh == pytest.approx(1289.376, rel=1e-9)


def test_energy_with_node_overhead_by_hand():
    # 8 GPUs * 700 W + 1 node * 4600 W = 10,200 W for 1 h = 10.2 kWh IT, x PUE 1.2 = 12.24 kWh.
    kw = dict(gpus=8, duration_s=HOUR_S, avg_gpu_power_w=700.0, nodes=1, node_overhead_w=4600.0)
    assert float(it_energy_kwh(**kw)) == pytest.approx(10.2)
    assert float(energy_mwh(pue=1.2, **kw)) == pytest.approx(0.01224)


def test_gpu_power_curve_between_idle_and_tdp():
    assert gpu_power_w(0.5, idle_w=70, tdp_w=700) == pytest.approx(385.0)
    assert gpu_power_w(0.0, idle_w=70, tdp_w=700) == 70
    assert gpu_power_w(1.7, idle_w=70, tdp_w=700) == 700  # clipped


def test_co2_and_water_by_hand():
    assert float(co2_tonnes(10.0, grid_kgco2_per_kwh=0.429)) == pytest.approx(4.29)  # 10,000 kWh * 0.429 kg
    assert float(water_litres(1000.0, water_l_per_kwh=1.8)) == pytest.approx(1800.0)


def test_dollars_by_hand():
    h = gpu_hours(gpus=16, wall_s=10 * HOUR_S)
    assert float(h) == 160.0
    assert float(cloud_cost_usd(h, price_per_gpu_hour_usd=2.0)) == 320.0
    # 16 * 35,000 USD * 10 h / (4 y * 8766 h * 0.8) = 5,600,000 / 28,051.2 = 199.635 USD.
    capex = owned_capex_usd(gpus=16, wall_s=10 * HOUR_S, capex_per_gpu_usd=35_000, amortization_years=4,
                            utilization=0.8)
    assert float(capex) == pytest.approx(199.635, rel=1e-5)
    assert float(power_cost_usd(1.0, power_price_usd_per_kwh=0.10)) == pytest.approx(100.0)


FACTS = ClusterFacts(gpus=8, nodes=1, gpu_tdp_w=700.0, price_per_gpu_hour_usd=2.0, power_price_usd_per_kwh=0.10,
                     pue=1.2, grid_kgco2_per_kwh=0.429, water_l_per_kwh=1.8)


def test_project_without_failures_by_hand():
    s = ForecastSettings(failures=Failures(enabled=False))
    c = project([HOUR_S], [1.0], settings=s, facts=FACTS)
    assert c["goodput"][0] == 1.0 and c["time_to_train_s"][0] == HOUR_S
    assert c["gpu_hours"][0] == 8.0 and c["cost_usd"][0] == 16.0
    assert c["avg_gpu_power_w"][0] == 700.0
    assert c["energy_mwh"][0] == pytest.approx(0.01224)  # as test_energy_with_node_overhead_by_hand
    assert c["tco2e"][0] == pytest.approx(0.01224 * 0.429)
    assert c["water_l"][0] == pytest.approx(10.2 * 1.8)  # IT energy, not facility
    assert np.isnan(c["owned_capex_usd"][0])


def test_project_owned_cluster_and_idle_power_during_overhead():
    # No failures but checkpoints: tau 3600 s, delta 400 s. T_s = 3600 s -> T_w = 4000 s, of which
    # 400 s idle at 70 W and 3600 s at 700 W: average (3600*700 + 400*70) / 4000 = 637 W.
    s = ForecastSettings(failures=Failures(gpu_mtbf_hours=1e300, node_mtbf_hours=1e300, checkpoint_write_s=400.0,
                                           checkpoint_interval_s=3600.0),
                         owned_cluster=OwnedCluster(capex_per_gpu_usd=35_000), power=Power(gpu_idle_w=70.0))
    c = project([HOUR_S], [1.0], settings=s, facts=FACTS)
    assert c["time_to_train_s"][0] == pytest.approx(4000.0, rel=1e-9)
    assert c["avg_gpu_power_w"][0] == pytest.approx(637.0, rel=1e-9)
    capex = 8 * 35_000 * (4000 / 3600) / (4 * 8766 * 0.8)
    assert c["cost_usd"][0] == pytest.approx(capex + c["energy_mwh"][0] * 1000 * 0.10)


def test_settings_overrides_and_errors():
    s = apply_overrides(ForecastSettings(), {"forecast.failures.restart_s": 600,
                                             "forecast.owned_cluster.capex_per_gpu_usd": 30000})
    assert s.failures.restart_s == 600.0 and s.owned_cluster.capex_per_gpu_usd == 30000
    with pytest.raises(InputError, match="forecast.power.gpu_idle_W"):
        apply_overrides(ForecastSettings(), {"forecast.power.gpu_idle_W": 50})
    with pytest.raises(InputError, match="forecast.failures.restart_s"):
        apply_overrides(ForecastSettings(), {"forecast.failures.restart_s": -1})

# ------------------------------------------------------------------------------ Monte Carlo


@settings(max_examples=50, deadline=None)
@given(lo=st.integers(0, 1000), span=st.integers(0, 5000), n=st.integers(1, 50), seed=st.integers(0, 2**32 - 1))
def test_stratified_indices_cover_the_range(lo, span, n, seed):
    idx, w = stratified_indices(lo, lo + span, n, np.random.default_rng(seed))
    assert len(idx) == min(n, span) and int(w.sum()) == span
    edges = lo + np.concatenate([[0], np.cumsum(w)])
    assert np.all((idx >= edges[:-1]) & (idx < edges[1:]))


@dataclass(frozen=True)
class FakeRecord:
    step_time_s: float
    mfu: float
    exposed_comm_s: float
    pipeline_bubble_s: float


class AffineSteps:
    """Step time affine in micro-batches (as 1F1B): t = 0.5 + 0.1 m, plus optional seeded noise."""

    def __init__(self, quantum: int, noise: float = 0.0, seed: int = 0) -> None:
        self.quantum, self.noise = quantum, noise
        self.rng = np.random.default_rng(seed)

    def records(self, global_batch, step_indices):
        out = []
        for _ in step_indices:
            t = 0.5 + 0.1 * global_batch / self.quantum + self.noise * self.rng.random()
            out.append(FakeRecord(step_time_s=t, mfu=0.4, exposed_comm_s=0.1 * t, pipeline_bubble_s=0.2 * t))
        return out


def test_sample_time_is_exact_for_affine_step_time():
    # Plateaus 2, 4, 6 sequences (1, 2, 3 micro-batches of 2) with 5, 3, 2 steps, then 9 steps of 8
    # (4 micro-batches): 5*0.6 + 3*0.7 + 2*0.8 + 9*0.9 = 3.0 + 2.1 + 1.6 + 8.1 = 14.8 s.
    shape = run_shape(total_tokens=100_000, seq_len=1000, global_batch=8, start_global_batch=2,
                      ramp_tokens=30_000, batch_increment=2)
    t = sample_time(shape, AffineSteps(quantum=2), steps=4, rng=np.random.default_rng(0), quantum=2)
    assert t.compute_s == pytest.approx(14.8)
    assert t.ramp_s == pytest.approx(6.7)
    assert t.steady_step_time_s == pytest.approx(0.9)
    assert t.busy_fraction == pytest.approx(0.7)  # 1 - bubble 0.2 - exposed comm 0.1
    assert t.mfu == pytest.approx(0.4)


class DefaultLike:
    """A loaded-scenario stand-in with just what forecast() reads."""

    class _T:
        seq_len, global_batch, micro_batch, total_tokens, batch_ramp = 1000, 8, 1, 100_000.0, None

    class _P:
        dp, pp, schedule, schedule_micro_batches = 2, 1, "1f1b", None

    class _S:
        seed, steps = 7, 3

    class _C:
        price_per_gpu_hour_usd, power_price_usd_per_kwh, pue, grid_kgco2_per_kwh, water_l_per_kwh = 2.0, 0.1, 1.2, 0.429, 1.8

    training, parallelism, simulation, costs = _T(), _P(), _S(), _C()
    forecast = ForecastSettings()
    gpus, gpus_per_node, gpu_model, name = 16, 8, "H100-SXM", "fake"

    class cluster:  # noqa: N801
        topology = "none"


@pytest.fixture
def fake_forecast(monkeypatch):
    import simmoe.forecast.model as m

    monkeypatch.setattr(m, "_metadata", lambda *a, **k: {})  # the stand-in has no YAML to dump

    def run(samples: int, seed: int | None = None):
        return forecast(DefaultLike(), samples=samples, seed=seed,
                        source_factory=lambda s: AffineSteps(quantum=2, noise=0.3, seed=s))
    return run


def test_percentiles_are_ordered_and_rows_complete(fake_forecast):
    f = fake_forecast(samples=9)
    assert [r.kind for r in f.rows] == ["sample"] * 9 + ["p10", "p50", "p90"]
    assert [r.seed for r in f.samples] == list(range(7, 16))  # simulation.seed + k
    p10, p50, p90 = (f.summary(k) for k in ("p10", "p50", "p90"))
    for c in COLUMNS:
        if c in ("kind", "sample", "seed", "owned_capex_usd"):
            continue
        assert getattr(p10, c) <= getattr(p50, c) <= getattr(p90, c), c
    times = sorted(r.time_to_train_s for r in f.samples)
    assert times[0] <= p10.time_to_train_s and p90.time_to_train_s <= times[-1]


def test_same_seed_same_forecast(fake_forecast):
    from simmoe.forecast.records import rows_as_dicts  # NaN (owned_capex_usd) -> None, comparable

    def rows(**kw):
        return rows_as_dicts(fake_forecast(samples=3, **kw).rows)

    assert rows() == rows()
    assert rows() != rows(seed=99)


def test_summary_rows_are_per_column_percentiles():
    base = dict(kind="sample", seed=0, tokens=1.0, steps=1, ramp_steps=0, simulated_steps=1)
    rows = [ForecastRow(sample=i, **base, **{c: float(i) for c in COLUMNS if c not in base and c != "sample"})
            for i in range(11)]
    p10, p50, p90 = summary_rows(rows)
    assert (p10.kind, p10.sample, p10.time_to_train_s, p50.energy_mwh, p90.cost_usd) == ("p10", -1, 1.0, 5.0, 9.0)


def test_ramp_points_respect_the_schedule_and_extrapolate_linearly():
    from simmoe.forecast.montecarlo import interp_linear, ramp_point_batches

    shape = SimpleNamespace(ramp_batch=np.array([24.0, 48.0]), global_batch=120.0)
    # DualPipe on 16 stages runs only even counts >= 32: the low point is raised to 32.
    pts = ramp_point_batches(shape, 1, 2, min_micro_batches=32, micro_batch_multiple=2)
    assert pts.tolist() == [32, 120]
    # Below the lowest simulated point the end segment continues (np.interp would hold it flat).
    assert interp_linear([24.0, 76.0], [32.0, 120.0], [4.0, 12.0]).tolist() == pytest.approx([3.2727, 8.0], rel=1e-4)
