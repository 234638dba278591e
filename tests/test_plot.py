"""simmoe plot: every kind draws a non-empty PNG with the expected axes (checked on the figure)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simmoe.errors import InputError
from simmoe.plot import detect_kind, plot_results, save_plot
from simmoe.plot.common import label_of
from simmoe.results import COLUMNS as STEP_COLUMNS


def _write(path, columns: dict, meta: dict):
    table = pa.table(columns).replace_schema_metadata({k.encode(): v.encode() for k, v in meta.items()})
    pq.write_table(table, path)
    return path


@pytest.fixture
def steps_file(tmp_path):
    n = 3
    cols = {c: np.full(n, 0.01) for c in STEP_COLUMNS}
    cols["step"] = np.arange(n, dtype=np.int64)
    cols["step_time_s"] = np.full(n, 0.2)
    cols["expert_compute_s"] = np.full(n, 0.08)
    cols["exposed_comm_s"] = np.full(n, 0.03)
    cols["pipeline_bubble_s"] = np.full(n, 0.04)
    return _write(tmp_path / "steps.parquet", cols, {"schema": "simmoe.results.StepRecord v1",
                                                     "scenario_name": "toy", "seed": "0", "fidelity": "flow"})


def _sweep_file(tmp_path, grid: dict, n: int, mode="product"):
    cols = {"point_index": np.arange(n, dtype=np.int64), "point_key": [f"k{i}" for i in range(n)]}
    for f, vals in grid.items():
        cols[f] = vals
    cols["status"] = ["ok"] * (n - 1) + ["error"]
    cols["step_time_s_mean"] = np.linspace(0.1, 0.2, n)
    meta = {"simmoe.sweep.name": "toy-sweep", "simmoe.sweep.mode": mode,
            "simmoe.sweep.grid": json.dumps({f: sorted(set(v)) for f, v in grid.items()})}
    return _write(tmp_path / "sweep.parquet", cols, meta)


@pytest.fixture
def forecast_file(tmp_path):
    k = 12
    days = list(np.linspace(10, 12, k)) + [10.2, 11.0, 11.8]
    return _write(tmp_path / "forecast.parquet",
                  {"kind": ["sample"] * k + ["p10", "p50", "p90"], "time_to_train_days": days,
                   "cost_usd": [d * 1000 for d in days]},
                  {"schema": "simmoe.forecast.ForecastRow v1", "scenario_name": "toy"})


@pytest.fixture
def study_file(tmp_path):
    from simmoe.study.table import COLUMN_NAMES, rank_rows, write_study_parquet

    rows = []
    for name, usd, days in (("slow", 0.3, 9.0), ("fast", 0.1, 3.0), ("broken", None, None)):
        r = {c: None for c in COLUMN_NAMES}
        r.update(variant=name, status="ok" if usd else "error", usd_per_million_tokens=usd,
                 total_cost_usd=usd and usd * 1e6, fabric_capex_usd=usd and usd * 1e5,
                 time_to_train_days_p50=days, time_to_train_days_p10=days and days * 0.9,
                 time_to_train_days_p90=days and days * 1.1, energy_mwh=days and days * 2)
        rows.append(r)
    return write_study_parquet(rank_rows(rows), tmp_path / "study.parquet",
                               {"schema": "simmoe.study.StudyRow v1", "simmoe.study.name": "toy-study"})


def _png_ok(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_breakdown(steps_file, tmp_path):
    fig = plot_results(steps_file)
    left, right = fig.axes[:2]
    assert left.get_ylabel() == "seconds on the critical rank" and left.get_xlabel() == "step"
    assert "breakdown" in left.get_title()
    labels = [t.get_text() for t in left.get_legend().get_texts()]
    assert labels == ["expert compute", "other compute", "optimizer", "exposed comm", "pipeline bubble"]
    assert [t.get_text() for t in right.get_legend().get_texts()] == ["a2a dispatch", "a2a combine", "dp comm"]
    # The stacked segments of each bar add up to its step time (0.2 s).
    heights = np.zeros(3)
    for patch in left.patches:
        heights[int(round(patch.get_x() + patch.get_width() / 2))] += patch.get_height()
    assert heights == pytest.approx([0.2] * 3)
    _png_ok(save_plot(steps_file, tmp_path / "b.png"))


def test_sweep_line(tmp_path):
    path = _sweep_file(tmp_path, {"routing.capacity_factor": [1.0, 1.25, 1.5, 2.0]}, 4)
    fig = plot_results(path)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "routing.capacity_factor" and ax.get_ylabel() == "step time, mean (s)"
    assert "1 failed" in ax.get_title()
    ys = ax.lines[0].get_ydata()
    assert np.isnan(ys[-1]) and not np.isnan(ys[:-1]).any()  # the failed point is not drawn
    _png_ok(save_plot(path, tmp_path / "s.png"))


def test_heatmap(tmp_path):
    path = _sweep_file(tmp_path, {"parallelism.ep": [2, 2, 4, 4], "routing.capacity_factor": [1.0, 2.0, 1.0, 2.0]}, 4)
    with pq.ParquetFile(path) as f:
        table = f.read()
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert detect_kind(table, meta) == "heatmap"
    fig = plot_results(path)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "routing.capacity_factor" and ax.get_ylabel() == "parallelism.ep"
    assert [t.get_text() for t in ax.texts].count("failed") == 1
    assert fig.axes[1].get_ylabel() == "step time, mean (s)"  # the colour bar
    _png_ok(save_plot(path, tmp_path / "h.png", kind="heatmap"))
    # The same file as lines, one per capacity factor.
    assert len(plot_results(path, kind="sweep").axes[0].lines) == 2


def test_forecast(forecast_file, tmp_path):
    fig = plot_results(forecast_file)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("time to train (days")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [lab.split(":")[0] for lab in labels[1:]] == ["P10", "P50", "P90"]
    assert labels[2].startswith("P50: 11 days")
    _png_ok(save_plot(forecast_file, tmp_path / "f.png"))


def test_study(study_file, tmp_path):
    fig = plot_results(study_file)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "USD per million tokens"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1. fast", "2. slow", "-. broken (failed)"]
    assert fig.axes[1].get_xlabel() == "time to train, P50 (days)"
    assert fig.axes[2].get_xlabel() == "energy (MWh, PUE included)"
    _png_ok(save_plot(tmp_path, tmp_path / "st.png"))  # a folder holding one results file


def test_errors(tmp_path, steps_file):
    with pytest.raises(InputError, match="unknown plot kind"):
        plot_results(steps_file, kind="pie")
    with pytest.raises(InputError, match="no such file"):
        plot_results(tmp_path / "nope.parquet")
    bad = _write(tmp_path / "x.parquet", {"a": [1]}, {})
    with pytest.raises(InputError, match="cannot tell"):
        plot_results(bad)
    line = _sweep_file(tmp_path, {"parallelism.ep": [2, 4, 8]}, 3)
    with pytest.raises(InputError, match="two swept fields"):
        plot_results(line, kind="heatmap")


def test_label_of():
    assert label_of("time_to_train_days_p50") == "time to train, P50 (days)"
    assert label_of("mfu_mean") == "mfu, mean"


def test_cli(steps_file, tmp_path):
    from typer.testing import CliRunner

    from simmoe.cli import _register_all, app

    _register_all()
    result = CliRunner().invoke(app, ["plot", str(steps_file), "--out", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    _png_ok(tmp_path / "c.png")
    result = CliRunner().invoke(app, ["plot", str(steps_file), "--kind", "pie"])
    assert result.exit_code == 2
