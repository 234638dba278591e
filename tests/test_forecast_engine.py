"""End to end: `forecast` on the built-in default scenario through the engine (few steps, few samples)."""

from __future__ import annotations

import json

import pytest

from simmoe.config import load_default_scenario
from simmoe.forecast import forecast, run_shape_of
from simmoe.forecast.records import COLUMNS, rows_as_dicts

SMALL = ["training.total_tokens=1e9"]  # 1908 steps of 0.5M tokens: keeps the numbers small


@pytest.fixture(scope="module")
def default_forecast():
    return forecast(load_default_scenario(SMALL), samples=2, steps=1)


def test_default_forecast_rows_and_identities(default_forecast):
    f = default_forecast
    assert [r.kind for r in f.rows] == ["sample", "sample", "p10", "p50", "p90"]
    assert [r.seed for r in f.samples] == [0, 1]
    for r in f.samples:
        assert r.steps == 1908 and r.ramp_steps == 0 and r.simulated_steps == 1
        # one stratum covering the whole run: compute time is steps x the simulated step time
        assert r.compute_time_s == pytest.approx(r.steps * r.step_time_s, rel=1e-12)
        assert 0 < r.goodput <= 1 and r.time_to_train_s == pytest.approx(r.compute_time_s / r.goodput)
        assert r.gpu_hours == pytest.approx(16 * r.time_to_train_s / 3600)
        assert 0 < r.mfu < 1 and 0 < r.gpu_busy_fraction <= 1
        assert 70.0 <= r.avg_gpu_power_w <= 700.0  # between 10% of H100 TDP and TDP
    p10, p50, p90 = (f.summary(k) for k in ("p10", "p50", "p90"))
    assert p10.time_to_train_s <= p50.time_to_train_s <= p90.time_to_train_s


def test_engine_forecast_is_deterministic_under_a_seed(default_forecast):
    again = forecast(load_default_scenario(SMALL), samples=2, steps=1)
    assert rows_as_dicts(again.rows) == rows_as_dicts(default_forecast.rows)


def test_metadata_has_everything_run_writes(default_forecast):
    from simmoe.engine import simulate

    run_meta = simulate(load_default_scenario(SMALL), steps=1).metadata
    meta = default_forecast.metadata
    assert set(run_meta) - {"schema"} <= set(meta)
    for key in ("simmoe_version", "scenario_yaml", "seed", "calibration_id"):
        assert meta[key] == run_meta[key], key
    assert meta["schema"] == "simmoe.forecast.ForecastRow v1"


def test_default_forecast_with_a_batch_ramp():
    sc = load_default_scenario(SMALL + ["training.batch_ramp={start_global_batch: 64, ramp_tokens: 2.0e8}"])
    shape = run_shape_of(sc)
    assert shape.ramp_batch.tolist() == [64, 96, 128, 160, 192, 224]  # increments of micro_batch * dp = 32
    f = forecast(sc, samples=1, steps=1)
    r = f.samples[0]
    assert r.ramp_steps == shape.ramp_total_steps > 0
    assert r.simulated_steps == 3  # ramp points 64 and 256 sequences, plus one steady step


def test_cli_writes_forecast_parquet(tmp_path):
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from simmoe.cli import _register_all, app

    _register_all()
    out = tmp_path / "fc"
    res = CliRunner().invoke(app, ["forecast", "default", "--samples", "1", "--steps", "1", "--tokens", "1e9",
                                   "--out", str(out), "--json", "--set", "forecast.failures.enabled=false"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["p50"]["goodput"] == 1.0 and summary["steps"] == 1908
    table = pq.read_table(out / "forecast.parquet")
    assert tuple(table.schema.names) == COLUMNS
    assert table.column("kind").to_pylist() == ["sample", "p10", "p50", "p90"]
    assert table.schema.metadata[b"seed"] == b"0"


def test_cli_bad_forecast_field_is_an_input_error(tmp_path):
    from typer.testing import CliRunner

    from simmoe.cli import _register_all, app

    _register_all()
    res = CliRunner().invoke(app, ["forecast", "default", "--samples", "1", "--out", str(tmp_path),
                                   "--set", "forecast.failures.mtbf=3"])
    assert res.exit_code == 2
    assert "forecast.failures.mtbf" in res.output
