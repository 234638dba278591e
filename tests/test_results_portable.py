"""Every result simmoe writes opens with plain pyarrow, pandas and DuckDB, with no simmoe import.

The reader runs in a separate interpreter started with -I (isolated: no user site, no PYTHONPATH,
no current folder on sys.path), and proves that simmoe was never imported.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from simmoe.cli import main

pytest.importorskip("pandas")
pytest.importorskip("duckdb")

READER = r"""
import json, sys
import pyarrow.parquet as pq
import pandas as pd
import duckdb

out = {}
for path in sys.argv[1:]:
    table = pq.read_table(path)
    frame = pd.read_parquet(path)
    rows = duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()[0][0]
    out[path] = {"arrow_rows": table.num_rows, "pandas_rows": len(frame), "duckdb_rows": rows,
                 "columns": table.column_names,
                 "metadata_keys": sorted(k.decode() for k in (table.schema.metadata or {}))}
out["simmoe_imported"] = any(name.split(".")[0] == "simmoe" for name in sys.modules)
print(json.dumps(out))
"""


def _cli(*args: str) -> None:
    with pytest.raises(SystemExit) as done:
        main(list(args))
    assert done.value.code == 0


def test_run_forecast_and_sweep_results_open_without_simmoe(tmp_path):
    fast = ["--set", "simulation.fidelity=analytical"]
    _cli("run", "--steps", "1", "--out", str(tmp_path / "run"), *fast)
    _cli("forecast", "--steps", "1", "--samples", "2", "--out", str(tmp_path / "forecast"), *fast)
    _cli("sweep", "scenarios/sweeps/experts-per-rank.yaml", "--out", str(tmp_path / "sweep"),
         "--evaluator", "derived", "--executor", "serial", "--no-progress")
    files = [tmp_path / "run" / "steps.parquet", tmp_path / "forecast" / "forecast.parquet",
             tmp_path / "sweep" / "sweep.parquet"]
    done = subprocess.run([sys.executable, "-I", "-c", READER, *map(str, files)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got.pop("simmoe_imported") is False
    steps, forecast, sweep = (got[str(f)] for f in files)
    assert steps["arrow_rows"] == steps["pandas_rows"] == steps["duckdb_rows"] == 1
    assert "tokens_per_s_per_gpu" in steps["columns"] and "calibration_id" in steps["metadata_keys"]
    assert forecast["arrow_rows"] == forecast["pandas_rows"] == forecast["duckdb_rows"] == 2 + 3
    assert "time_to_train_days" in forecast["columns"] and "seed" in forecast["metadata_keys"]
    assert sweep["arrow_rows"] == sweep["pandas_rows"] == sweep["duckdb_rows"] == 3
    assert "parallelism.ep" in sweep["columns"]
