"""Sweeps: grid expansion, point keys, up-front validation, results on disk, failing points, CLI.

Points are evaluated by the fast evaluators of tests/test_sweep_evaluators.py (injected through the
documented ``evaluator`` hook) on the built-in 16-GPU scenario; tests/test_sweep_engine.py runs the
real engine, tests/test_sweep_resume.py kills a sweep and resumes it, tests/test_sweep_dask.py
runs one on Dask.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from simmoe.config import load_scenario
from simmoe.errors import ConfigError, InputError
from simmoe.sweep import SweepError, SweepStore, expand_grid, load_sweep, make_executor, point_key, run_sweep
from simmoe.sweep.executors import DaskExecutor, LocalExecutor, SerialExecutor
from simmoe.sweep.fields import scenario_field_paths

TESTS = Path(__file__).resolve().parent
LAYOUT = "test_sweep_evaluators:layout_point"
FAILING = "test_sweep_evaluators:failing_point"
# parallelism.ep must divide the 16 experts and dp=8 of the built-in scenario.
EP_CF = {"parallelism.ep": [1, 2, 4, 8], "routing.capacity_factor": [1.0, 1.25, 2.0]}


def write_sweep(folder: Path, data: dict, name: str = "s.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def ep_cf_sweep(folder: Path, **extra) -> Path:
    data = {"name": "epcf", "base": "default", "set": {"routing.execution": "padded"}, "grid": EP_CF, **extra}
    return write_sweep(folder, data)


# -------------------------------------------------------------------------------- grid expansion


def test_product_varies_the_last_field_fastest():
    points = expand_grid({"a": [1, 2], "b": ["x", "y", "z"]}, "product")
    assert points == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"},
                      {"a": 2, "b": "x"}, {"a": 2, "b": "y"}, {"a": 2, "b": "z"}]


def test_zip_pairs_the_ith_values():
    assert expand_grid({"a": [1, 2, 3], "b": [4, 8, 16]}, "zip") == [
        {"a": 1, "b": 4}, {"a": 2, "b": 8}, {"a": 3, "b": 16}]
    with pytest.raises(ValueError):
        expand_grid({"a": [1, 2], "b": [1]}, "zip")


@given(st.dictionaries(st.text("abc.", min_size=1, max_size=4),
                       st.lists(st.integers(), min_size=1, max_size=4, unique=True), min_size=1, max_size=4))
def test_product_is_every_combination_once(grid):
    points = expand_grid(grid, "product")
    assert len(points) == math.prod(len(v) for v in grid.values())
    assert len({tuple(p.values()) for p in points}) == len(points)
    assert all(list(p) == list(grid) for p in points)


@given(st.integers(1, 5), st.integers(1, 4))
def test_zip_has_as_many_points_as_each_list(n, fields):
    grid = {f"f{i}": list(range(i * 10, i * 10 + n)) for i in range(fields)}
    points = expand_grid(grid, "zip")
    assert len(points) == n
    assert all(p[f"f{i}"] == i * 10 + j for j, p in enumerate(points) for i in range(fields))


def test_sweep_file_points_are_the_grid_over_base_and_set(tmp_path):
    spec = load_sweep(ep_cf_sweep(tmp_path), evaluator=LAYOUT)
    assert [p.values for p in spec.points] == expand_grid(EP_CF, "product")
    assert [p.index for p in spec.points] == list(range(12))
    for p in spec.points:
        assert p.scenario.parallelism.ep == p.values["parallelism.ep"]
        assert p.scenario.routing.capacity_factor == p.values["routing.capacity_factor"]
        assert p.scenario.routing.execution == "padded"  # from set:
        assert p.scenario.model.hidden == 1024  # from the base
    assert spec.name == "epcf" and spec.swept_fields == ("parallelism.ep", "routing.capacity_factor")


def test_base_is_relative_to_the_sweep_file_and_name_defaults_to_its_stem(tmp_path):
    (tmp_path / "sc").mkdir()
    shutil.copy(Path(load_scenario("default").source_file), tmp_path / "sc" / "mine.yaml")
    (tmp_path / "sweeps").mkdir()
    path = write_sweep(tmp_path / "sweeps", {"base": "../sc/mine.yaml", "grid": {"parallelism.ep": [2, 4]}},
                       name="my-sweep.yaml")
    spec = load_sweep(path, evaluator=LAYOUT)
    assert spec.base == (tmp_path / "sc" / "mine.yaml").resolve() and spec.name == "my-sweep"


def test_a_section_can_be_swept_whole(tmp_path):
    gqa = {"type": "gqa", "heads": 16, "kv_heads": 4, "head_dim": 64}
    mha = {"type": "mha", "heads": 16, "head_dim": 64}
    spec = load_sweep(write_sweep(tmp_path, {"base": "default", "grid": {"model.attention": [gqa, mha]}}),
                      evaluator=LAYOUT)
    assert [p.scenario.model.attention.type for p in spec.points] == ["gqa", "mha"]


# ------------------------------------------------------------------------------------ point keys


def test_key_is_stable_across_processes_and_working_folders(tmp_path):
    spec = load_sweep(ep_cf_sweep(tmp_path), evaluator=LAYOUT)
    code = ("import json,sys; from simmoe.sweep import load_sweep; "
            f"s = load_sweep(sys.argv[1], evaluator={LAYOUT!r}); print(json.dumps([p.key for p in s.points]))")
    env = {**os.environ, "PYTHONHASHSEED": "123", "PYTHONPATH": str(TESTS)}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.yaml")], cwd="/", env=env,
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [p.key for p in spec.points]
    assert all(len(p.key) == 64 and int(p.key, 16) >= 0 for p in spec.points)
    assert len({p.key for p in spec.points}) == len(spec.points)


def test_key_follows_file_contents_not_paths(tmp_path):
    base = load_scenario("default")
    topo = tmp_path / "topo.yaml"
    shutil.copy(base.topology_path, topo)
    moved = load_scenario("default", {"cluster.topology": str(topo)})
    assert point_key(moved, evaluator=LAYOUT) == point_key(base, evaluator=LAYOUT)  # same bytes elsewhere
    topo.write_text(topo.read_text() + "\n# edited\n")
    edited = load_scenario("default", {"cluster.topology": str(topo)})
    assert point_key(edited, evaluator=LAYOUT) != point_key(base, evaluator=LAYOUT)


def test_key_changes_with_anything_that_changes_the_result():
    base = load_scenario("default")
    key = point_key(base, evaluator=LAYOUT)
    for overrides in ({"simulation.seed": 1}, {"simulation.steps": 6}, {"parallelism.ep": 4},
                      {"routing.imbalance.s": 0.6}, {"costs.pue": 1.3}):
        assert point_key(load_scenario("default", overrides), evaluator=LAYOUT) != key, overrides
    assert point_key(base, evaluator="simmoe.sweep.evaluators:engine_point") != key
    assert point_key(base, evaluator=LAYOUT, options={"reduce": False}) != key
    assert point_key(base, evaluator=LAYOUT, version="0.0.0-other") != key


def test_key_ignores_how_a_value_was_spelled():
    a = load_scenario("default", {"costs.pue": 2})  # an int for a float field
    b = load_scenario("default", {"costs.pue": 2.0})
    c = load_scenario("default", {"parallelism.dp": 8})  # dp is derived as 8 anyway
    assert point_key(a, evaluator=LAYOUT) == point_key(b, evaluator=LAYOUT)
    assert point_key(c, evaluator=LAYOUT) == point_key(load_scenario("default"), evaluator=LAYOUT)


# ------------------------------------------------------------------- bad sweep files fail up front


def _fails_before_any_point(tmp_path, data: dict, *, field: str | None, says: list[str], evaluator=LAYOUT):
    path = write_sweep(tmp_path, data)
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as info:
        run_sweep(path, out, executor="serial", evaluator=evaluator, progress=False)
    err = info.value
    assert "s.yaml" in str(err.file)
    if field is not None:
        assert err.field == field
    for text in says:
        assert text in str(err), str(err)
    assert not out.exists()  # nothing ran, nothing was written
    return err


def test_unknown_grid_field_names_close_matches(tmp_path):
    _fails_before_any_point(tmp_path, {"base": "default", "grid": {"routing.capcity_factor": [1.0]}},
                            field="grid.routing.capcity_factor", says=["did you mean routing.capacity_factor"])


def test_unknown_nested_field_is_checked_against_the_schema(tmp_path):
    # model.moe.top_kk: the schema's nested Moe section; kv_head: one attention type of the union.
    _fails_before_any_point(tmp_path, {"base": "default", "grid": {"model.moe.top_kk": [1, 2]}},
                            field="grid.model.moe.top_kk", says=["model.moe.top_k"])
    _fails_before_any_point(tmp_path, {"base": "default", "grid": {"model.attention.kv_head": [1, 2]}},
                            field="grid.model.attention.kv_head", says=["model.attention.kv_heads"])
    _fails_before_any_point(tmp_path, {"base": "default", "grid": {"parallelism.ep.x": [1]}},
                            field="grid.parallelism.ep.x", says=["parallelism.ep is a value, not a section"])
    _fails_before_any_point(tmp_path, {"base": "default", "set": {"simulaton.seed": 1},
                                       "grid": {"parallelism.ep": [1]}},
                            field="set.simulaton.seed", says=["simulation.seed"])


def test_every_schema_field_is_a_known_sweep_field():
    fields = scenario_field_paths()
    for path in ("routing.capacity_factor", "routing.imbalance.drift.model", "model.moe.top_k",
                 "model.attention.kv_lora_rank", "training.optimizer.type", "training.batch_ramp.ramp_tokens",
                 "simulation.seed", "cluster.topology"):
        assert path in fields, path


def test_empty_grid_and_empty_value_list(tmp_path):
    _fails_before_any_point(tmp_path, {"base": "default", "grid": {}}, field="grid", says=["empty"])
    _fails_before_any_point(tmp_path, {"base": "default"}, field="grid", says=["empty"])
    _fails_before_any_point(tmp_path, {"base": "default", "grid": {"parallelism.ep": []}},
                            field="grid.parallelism.ep", says=["empty list"])
    _fails_before_any_point(tmp_path, {"base": "default", "grid": {"parallelism.ep": 4}},
                            field="grid.parallelism.ep", says=["list of values"])


def test_wrong_type_values_name_the_first_bad_point(tmp_path):
    err = _fails_before_any_point(
        tmp_path, {"base": "default", "grid": {"parallelism.ep": [2, 4], "training.micro_batch": [4, "2"]}},
        field="training.micro_batch", says=["point 1", "parallelism.ep=2", "training.micro_batch='2'",
                                            "wrong type", "an integer > 0"])
    assert err.value == "2"


def test_values_that_break_a_cross_field_rule_name_the_point(tmp_path):
    _fails_before_any_point(tmp_path, {"base": "default", "grid": {"parallelism.ep": [2, 3]}},
                            field="parallelism.ep", says=["point 1 (parallelism.ep=3)", "divisors of 16"])


def test_zip_lengths_must_match(tmp_path):
    _fails_before_any_point(tmp_path, {"base": "default", "mode": "zip",
                                       "grid": {"parallelism.ep": [2, 4], "costs.pue": [1.1, 1.2, 1.3]}},
                            field="grid", says=["equal length", "parallelism.ep: 2", "costs.pue: 3"])


def test_missing_or_unknown_base(tmp_path):
    _fails_before_any_point(tmp_path, {"grid": {"parallelism.ep": [2]}}, field="base", says=["missing"])
    _fails_before_any_point(tmp_path, {"base": "no-such-scenario", "grid": {"parallelism.ep": [2]}},
                            field="base", says=["not found"])


def test_other_sweep_file_mistakes(tmp_path):
    grid = {"parallelism.ep": [2, 4]}
    _fails_before_any_point(tmp_path, {"base": "default", "grids": grid}, field="grids", says=["did you mean grid"])
    _fails_before_any_point(tmp_path, {"base": "default", "grid": grid, "mode": "cartesian"}, field="mode",
                            says=["product", "zip"])
    _fails_before_any_point(tmp_path, {"base": "default", "grid": {"parallelism.ep": [2, 2]}},
                            field="grid.parallelism.ep", says=["twice"])
    _fails_before_any_point(tmp_path, {"base": "default", "grid": grid, "set": {"parallelism.ep": 8}},
                            field="grid.parallelism.ep", says=["both swept and set"])
    _fails_before_any_point(tmp_path, {"base": "default", "grid": grid, "metrics": ["gpus", "gpu"]},
                            field="metrics", says=["did you mean gpus"])
    # dp null resolves to the derived 8: two points would be one scenario.
    _fails_before_any_point(tmp_path, {"base": "default", "grid": {"parallelism.dp": [None, 8]}},
                            field="grid", says=["points 0", "same scenario"])


def test_bad_executor_fails_before_any_point(tmp_path):
    path = ep_cf_sweep(tmp_path)
    for executor in ("dask:/host:1", "dask://host", "ray://x:1", "dask://h:99999"):
        with pytest.raises(InputError) as info:
            run_sweep(path, tmp_path / "out", executor=executor, evaluator=LAYOUT, progress=False)
        assert info.value.field == "--executor"
    assert not (tmp_path / "out").exists()
    assert isinstance(make_executor("dask://scheduler.example:8786"), DaskExecutor)
    assert isinstance(make_executor("serial"), SerialExecutor)
    assert make_executor(None, 3).workers == 3 and isinstance(make_executor("local"), LocalExecutor)


# -------------------------------------------------------------------------------- results on disk


def _expected_layout_row(values: dict) -> dict:
    ep = values["parallelism.ep"]
    return {"ep": ep, "experts_per_ep_rank": 16 // ep, "capacity_factor": values["routing.capacity_factor"],
            "gpus": 16}


def test_results_one_file_per_point_and_one_dataset(tmp_path):
    out = tmp_path / "out"
    outcome = run_sweep(ep_cf_sweep(tmp_path), out, executor="serial", evaluator=LAYOUT, progress=False)
    spec = load_sweep(tmp_path / "s.yaml", evaluator=LAYOUT)
    assert (outcome.points, outcome.ran, outcome.skipped, outcome.ok, outcome.errors) == (12, 12, 0, 12, [])
    assert sorted(p.name for p in (out / "points").iterdir()) == sorted(f"{p.key}.parquet" for p in spec.points)
    table = pq.read_table(out / "sweep.parquet")
    assert table.column_names[:4] == ["point_index", "point_key", "parallelism.ep", "routing.capacity_factor"]
    assert table.column_names[4:] == ["status", "error", "error_type", "elapsed_s", "ep", "experts_per_ep_rank",
                                      "capacity_factor", "gpus"]
    rows = table.to_pylist()
    assert [r["point_index"] for r in rows] == list(range(12))
    for row, point in zip(rows, spec.points):
        assert row["point_key"] == point.key and row["status"] == "ok" and row["error"] is None
        assert {k: row[k] for k in point.values} == point.values
        assert {k: row[k] for k in ("ep", "experts_per_ep_rank", "capacity_factor", "gpus")} == \
            _expected_layout_row(point.values)
    one = pq.read_table(out / "points" / f"{spec.points[5].key}.parquet")
    assert one.num_rows == 1 and one.to_pylist()[0]["parallelism.ep"] == spec.points[5].values["parallelism.ep"]
    meta = one.schema.metadata
    assert json.loads(meta[b"simmoe.sweep.scenario"])["parallelism"]["ep"] == spec.points[5].values["parallelism.ep"]


def test_rerun_skips_finished_points(tmp_path):
    out = tmp_path / "out"
    run_sweep(ep_cf_sweep(tmp_path), out, executor="serial", evaluator=LAYOUT, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "points").iterdir()}
    again = run_sweep(tmp_path / "s.yaml", out, executor="serial", evaluator=LAYOUT, progress=False)
    assert (again.ran, again.skipped, again.ok) == (0, 12, 12)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "points").iterdir()} == before
    assert pq.read_table(out / "sweep.parquet").num_rows == 12


def test_grown_grid_runs_only_new_points_and_dataset_follows_the_sweep(tmp_path):
    out = tmp_path / "out"
    small = {"base": "default", "set": {"routing.execution": "padded"},
             "grid": {"parallelism.ep": [2, 4], "routing.capacity_factor": [1.0]}}
    run_sweep(write_sweep(tmp_path, small), out, executor="serial", evaluator=LAYOUT, progress=False)
    grown = run_sweep(ep_cf_sweep(tmp_path), out, executor="serial", evaluator=LAYOUT, progress=False)
    assert (grown.skipped, grown.ran) == (2, 10)
    rows = pq.read_table(out / "sweep.parquet").to_pylist()
    assert [r["point_index"] for r in rows] == list(range(12))
    shrunk = run_sweep(write_sweep(tmp_path, small), out, executor="serial", evaluator=LAYOUT, progress=False)
    assert shrunk.ran == 0 and pq.read_table(out / "sweep.parquet").num_rows == 2


def test_metrics_keeps_only_the_named_columns(tmp_path):
    out = tmp_path / "out"
    run_sweep(ep_cf_sweep(tmp_path, metrics=["experts_per_ep_rank"]), out, executor="serial", evaluator=LAYOUT,
              progress=False)
    table = pq.read_table(out / "sweep.parquet")
    assert table.column_names[-1] == "experts_per_ep_rank" and "gpus" not in table.column_names


def test_derived_evaluator_gives_the_loaders_values(tmp_path):
    path = write_sweep(tmp_path, {"base": "default", "set": {"parallelism.ep": 4},
                                  "grid": {"parallelism.pp": [1, 2, 4]}})
    run_sweep(path, tmp_path / "out", executor="serial", evaluator="derived", progress=False)
    rows = pq.read_table(tmp_path / "out" / "sweep.parquet").to_pylist()
    # 16 GPUs, tp=cp=1: dp = 16 / pp; micro-batches = 256 / (4 * dp).
    assert [(r["parallelism.pp"], r["dp"], r["micro_batches_per_step"]) for r in rows] == \
        [(1, 16, 4), (2, 8, 8), (4, 4, 16)]


def test_stale_temp_files_are_removed_and_a_second_writer_is_refused(tmp_path):
    out = tmp_path / "out"
    (out / "points").mkdir(parents=True)
    stale = [out / "points" / ".abc.parquet.x1.tmp", out / ".sweep.parquet.x2.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    with SweepStore(out):
        assert not any(p.exists() for p in stale)
        with pytest.raises(SweepError, match="another simmoe sweep"):
            with SweepStore(out):
                pass
    with SweepStore(out):  # the lock went with the first writer
        pass


# ------------------------------------------------------------------------------ a failing point


def test_failing_point_records_its_error_and_the_others_complete(tmp_path):
    out = tmp_path / "out"
    outcome = run_sweep(ep_cf_sweep(tmp_path), out, executor="serial", evaluator=FAILING, progress=False)
    assert outcome.ok == 9 and len(outcome.errors) == 3
    assert {e["values"]["parallelism.ep"] for e in outcome.errors} == {4}
    rows = pq.read_table(out / "sweep.parquet").to_pylist()
    assert len(rows) == 12
    for row in rows:
        if row["parallelism.ep"] == 4:
            assert row["status"] == "error" and row["error_type"] == "ValueError"
            assert "ep=4 is the point that fails" in row["error"] and row["experts_per_ep_rank"] is None
        else:
            assert row["status"] == "ok" and row["error"] is None
            assert row["experts_per_ep_rank"] == 16 // row["parallelism.ep"]
    # A failed point is a result: a re-run skips it, --retry-errors runs it again.
    assert run_sweep(tmp_path / "s.yaml", out, executor="serial", evaluator=FAILING, progress=False).ran == 0
    retried = run_sweep(tmp_path / "s.yaml", out, executor="serial", evaluator=FAILING, progress=False,
                        retry_errors=True)
    assert retried.ran == 3 and len(retried.errors) == 3


def test_local_pool_gives_the_serial_results(tmp_path):
    serial = run_sweep(ep_cf_sweep(tmp_path), tmp_path / "a", executor="serial", evaluator=FAILING,
                       progress=False)
    pooled = run_sweep(tmp_path / "s.yaml", tmp_path / "b", executor="local", workers=2, evaluator=FAILING,
                       progress=False)
    assert pooled.ran == 12 and len(pooled.errors) == len(serial.errors) == 3
    drop = ["elapsed_s"]
    a = pq.read_table(serial.dataset).drop_columns(drop)
    b = pq.read_table(pooled.dataset).drop_columns(drop)
    assert a.equals(b)


# ------------------------------------------------------------------------- readable without simmoe


def test_dataset_opens_with_plain_pyarrow_and_pandas_without_simmoe(tmp_path):
    out = tmp_path / "out"
    run_sweep(ep_cf_sweep(tmp_path), out, executor="serial", evaluator=FAILING, progress=False)
    code = """
import importlib.util, json, sys
import pyarrow.dataset as ds, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1] + "/sweep.parquet")
points = ds.dataset(sys.argv[1] + "/points", format="parquet").to_table(columns=["point_key", "status"])
out = {"rows": t.num_rows, "cols": t.column_names, "points": points.num_rows,
       "errors": sum(s == "error" for s in t.column("status").to_pylist())}
if importlib.util.find_spec("pandas"):
    df = t.to_pandas()
    out["pandas_ep4_errors"] = int((df[df["parallelism.ep"] == 4]["status"] == "error").sum())
out["simmoe_imported"] = any(m == "simmoe" or m.startswith("simmoe.") for m in sys.modules)
print(json.dumps(out))
"""
    res = subprocess.run([sys.executable, "-I", "-c", code, str(out)], cwd=tmp_path, capture_output=True,
                         text=True, check=True)
    got = json.loads(res.stdout)
    assert got["rows"] == 12 and got["points"] == 12 and got["errors"] == 3
    assert "parallelism.ep" in got["cols"] and "experts_per_ep_rank" in got["cols"]
    assert got.get("pandas_ep4_errors", 3) == 3
    assert got["simmoe_imported"] is False


# ------------------------------------------------------------------------------------------- CLI


def test_cli_json_and_exit_status(tmp_path):
    path = ep_cf_sweep(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    cmd = [sys.executable, "-m", "simmoe", "sweep", str(path), "--out", str(tmp_path / "out"),
           "--executor", "serial", "--evaluator", FAILING, "--json", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert (summary["points"], summary["ok"], summary["error"]) == (12, 9, 3)
    assert Path(summary["dataset"]) == tmp_path / "out" / "sweep.parquet"
    bad = write_sweep(tmp_path, {"base": "default", "grid": {"parallelism.epp": [2]}}, name="bad.yaml")
    res = subprocess.run([sys.executable, "-m", "simmoe", "sweep", str(bad), "--out", str(tmp_path / "bad")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 2 and "bad.yaml" in res.stderr and "parallelism.ep" in res.stderr
    assert not (tmp_path / "bad").exists()


def test_cli_default_out_is_results_slash_name(tmp_path):
    path = ep_cf_sweep(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    res = subprocess.run([sys.executable, "-m", "simmoe", "sweep", str(path), "--executor", "serial",
                          "--evaluator", LAYOUT, "--no-progress"], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "results" / "epcf" / "sweep.parquet").is_file()
    assert "12 ok, 0 failed" in res.stdout


@settings(max_examples=5, deadline=None)
@given(st.permutations([1, 2, 4, 8]))
def test_grid_order_changes_indices_not_keys(order):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        a = load_sweep(write_sweep(Path(folder), {"base": "default", "grid": {"parallelism.ep": [1, 2, 4, 8]}},
                                   name="a.yaml"), evaluator=LAYOUT)
        b = load_sweep(write_sweep(Path(folder), {"base": "default", "grid": {"parallelism.ep": list(order)}},
                                   name="b.yaml"), evaluator=LAYOUT)
    key_a = {p.values["parallelism.ep"]: p.key for p in a.points}
    assert {p.values["parallelism.ep"]: p.key for p in b.points} == key_a
