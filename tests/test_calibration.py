"""Calibration profiles and ProfileModel: format, errors, interpolation accuracy against known
functions, extrapolation bounds (hypothesis). No torch needed (tests/test_calibration_bench.py runs
the harness)."""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simmoe.calibration import (
    ARROW_SCHEMA,
    FULL,
    ProfileModel,
    expert_histogram,
    load_compute_model,
    read_profile,
    roofline_profile,
    rows_to_table,
    scale_times,
    write_profile,
)
from simmoe.calibration.interp import fit_table
from simmoe.calibration.schema import COLUMN_NAMES, REQUIRED_METADATA
from simmoe.compute import ComputeModel, RooflineModel, gemm_backward_s, grouped_gemm_backward_s
from simmoe.errors import InputError, ProfileError

GPU = "H100-SXM"
ROOF = RooflineModel(GPU, clocks="burst")  # what profiles are read against


@pytest.fixture(scope="module")
def base():
    """The roofline's profile of an H100 on the full grid: (table, metadata)."""
    return roofline_profile(GPU, command="pytest")


@pytest.fixture(scope="module")
def roof_path(base, tmp_path_factory):
    return write_profile(tmp_path_factory.mktemp("profiles") / "roof.parquet", *base).path


@pytest.fixture(scope="module")
def roof_model(roof_path):
    return ProfileModel(roof_path, gpu_name=GPU, roofline=ROOF)


def derived(base, path, *, keep=lambda row: True, gemm_s=None, scale_ops=(), factor=1.0, meta=None):
    """A profile made from the roofline's: rows filtered by ``keep``, BF16 GEMM times replaced by
    ``gemm_s(m, n, k)``, times of ``scale_ops`` multiplied by ``factor``."""
    table, metadata = base
    rows = []
    for row in table.to_pylist():
        if not keep(row):
            continue
        t = row["median_s"]
        if gemm_s is not None and row["op"] == "gemm" and row["dtype"] == "bf16":
            t = float(gemm_s(row["m"], row["n"], row["k"]))
        if row["op"] in scale_ops:
            t *= factor
        rows.append({**row, "median_s": t, "p10_s": t, "p90_s": t})
    metadata = {**metadata, **(meta or {})}
    if "ops" not in (meta or {}):
        metadata["ops"] = json.dumps(sorted({r["op"] for r in rows}))
    return write_profile(path, rows_to_table(rows), metadata).path


# -- format ------------------------------------------------------------------------------------------


def test_written_profile_has_schema_metadata_and_content_id(roof_path, base, tmp_path):
    table = pq.read_table(roof_path)
    assert table.schema.remove_metadata().equals(ARROW_SCHEMA.remove_metadata())
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert set(REQUIRED_METADATA) <= set(meta)
    assert meta["provenance"] == "datasheet-roofline" and meta["gpu"] == GPU and meta["command"] == "pytest"
    # The id hashes the data, not the date or command: regenerating gives the same id...
    again = write_profile(tmp_path / "again.parquet", *roofline_profile(GPU, command="other"))
    assert again.profile_id == meta["profile_id"]
    # ...and no temporary file is left behind by the atomic write.
    assert os.listdir(tmp_path) == ["again.parquet"]


def test_shape_fields_are_null_where_they_do_not_apply(roof_path):
    rows = pq.read_table(roof_path).to_pylist()
    gemm = next(r for r in rows if r["op"] == "gemm")
    attention = next(r for r in rows if r["op"] == "attention_fwd")
    assert gemm["seq_len"] is None and gemm["experts"] is None and gemm["m"] > 0
    assert attention["m"] is None and attention["seq_len"] > 0 and attention["causal"] is True


def test_editing_a_profile_without_rewriting_its_id_is_caught(roof_path, tmp_path):
    table = pq.read_table(roof_path)
    doubled = pa.compute.multiply(table.column("median_s"), 2.0)
    edited = table.set_column(table.column_names.index("median_s"), "median_s", doubled)
    edited = edited.set_column(table.column_names.index("p90_s"), "p90_s", doubled)
    pq.write_table(edited, tmp_path / "edited.parquet")
    with pytest.raises(ProfileError) as err:
        read_profile(tmp_path / "edited.parquet")
    assert err.value.field == "profile_id" and "edited.parquet" in str(err.value)


def test_expert_histogram_sums_exactly_and_orders_zipf():
    assert expert_histogram(4, 16).tolist() == [16, 16, 16, 16]
    zipf = expert_histogram(16, 256, "zipf:1.0")
    assert zipf.sum() == 16 * 256 and np.all(np.diff(zipf) <= 0) and zipf[0] > 4 * zipf[-1]
    with pytest.raises(InputError) as err:
        expert_histogram(4, 16, "lognormal")
    assert "zipf:S" in str(err.value)


# -- errors a person can act on -------------------------------------------------------------------


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "profile.parquet"
    path.write_text("op,m,n,k\ngemm,1,2,3\n")
    with pytest.raises(ProfileError) as err:
        load_compute_model(GPU, path)
    assert "profile.parquet" in str(err.value) and "not a Parquet file" in str(err.value)
    assert "simmoe calibrate" in err.value.allowed


def test_missing_file(tmp_path):
    with pytest.raises(ProfileError) as err:
        load_compute_model(GPU, tmp_path / "absent.parquet")
    assert "absent.parquet" in str(err.value)


def test_missing_columns(roof_path, tmp_path):
    table = pq.read_table(roof_path).drop_columns(["median_s", "heads"])
    pq.write_table(table, tmp_path / "short.parquet")
    with pytest.raises(ProfileError) as err:
        load_compute_model(GPU, tmp_path / "short.parquet")
    assert err.value.file.endswith("short.parquet")
    assert "median_s" in err.value.field and "heads" in err.value.field
    assert "median_s" in err.value.allowed  # lists every column


def test_empty_profile(base, tmp_path):
    empty = write_profile(tmp_path / "empty.parquet", base[0].slice(0, 0), {**base[1], "ops": "[]"})
    with pytest.raises(ProfileError, match="no rows") as err:
        load_compute_model(GPU, empty.path)
    assert "empty.parquet" in str(err.value)


def test_required_op_with_no_rows(base, tmp_path):
    path = derived(base, tmp_path / "nowgrad.parquet", keep=lambda r: r["op"] != "grouped_gemm_wgrad")
    with pytest.raises(ProfileError) as err:
        load_compute_model(GPU, path)
    assert err.value.field == "op" and err.value.value == "grouped_gemm_wgrad" and "nowgrad.parquet" in str(err.value)


def test_listed_op_with_no_rows(base, tmp_path):
    ops = json.loads(base[1]["ops"]) + ["alltoall"]
    path = derived(base, tmp_path / "listed.parquet", meta={"ops": json.dumps(ops)})
    with pytest.raises(ProfileError) as err:
        read_profile(path)
    assert err.value.field == "op" and err.value.value == "alltoall"


def test_unordered_percentiles_are_rejected(base, tmp_path):
    table, meta = base
    p10 = table.column("p10_s").to_pylist()
    p10[3] = 2 * p10[3]
    bad = table.set_column(table.column_names.index("p10_s"), "p10_s", pa.array(p10))
    path = write_profile(tmp_path / "bad.parquet", bad, meta).path
    with pytest.raises(ProfileError) as err:
        read_profile(path)
    assert err.value.field == "median_s[row 3]" and "p10_s <= median_s <= p90_s" in str(err.value)


def test_dtype_the_scenario_asks_for_but_the_profile_lacks(base, tmp_path):
    path = derived(base, tmp_path / "bf16only.parquet", keep=lambda r: r["dtype"] != "fp8")
    with pytest.raises(ProfileError) as err:
        load_compute_model(GPU, path, dtypes=("fp8",))
    assert err.value.field == "dtype" and err.value.value == "fp8" and err.value.allowed == "bf16"
    assert "bf16only.parquet" in str(err.value)
    # Asked at call time instead of up front: the same error.
    model = load_compute_model(GPU, path)
    with pytest.raises(ProfileError, match="bf16only.parquet: dtype='fp8'"):
        model.gemm_s(4096, 4096, 4096, "fp8")
    with pytest.raises(ProfileError, match="allowed: bf16"):
        model.grouped_gemm_s([64, 64], 4096, 4096, "fp8")


def test_profile_of_another_gpu_is_refused(roof_path):
    with pytest.raises(ProfileError) as err:
        load_compute_model("A100-SXM-80GB", roof_path)
    assert err.value.field == "gpu" and err.value.value == GPU and "A100-SXM-80GB" in str(err.value)


# -- the model ---------------------------------------------------------------------------------------


def test_load_compute_model_without_a_profile_is_the_roofline(roof_path):
    model = load_compute_model(GPU, None)
    assert isinstance(model, RooflineModel)
    profiled = load_compute_model(GPU, roof_path)
    assert isinstance(profiled, ComputeModel) and profiled.describe()["kind"] == "profile"


def test_describe_gives_provenance(roof_model, roof_path):
    info = roof_model.describe()
    assert info["identifier"] == roof_model.identifier == read_profile(roof_path).profile_id
    assert info["provenance"] == "datasheet-roofline" and info["device"] == GPU
    assert info["command"] == "pytest" and info["date_utc"].endswith("+00:00")
    assert info["tables"]["gemm:bf16"]["basis"] in ("roofline-ratio", "direct")


def test_roofline_profile_reproduces_the_roofline_inside_and_outside_the_grid(roof_model):
    m = np.array([1, 16, 100, 3000, 16384, 70000])
    n, k = np.array([[7168], [200], [40000]]), 2048
    for dtype in ("bf16", "fp8"):
        np.testing.assert_allclose(roof_model.gemm_s(m, n, k, dtype), ROOF.gemm_s(m, n, k, dtype), rtol=1e-9)
    tokens = np.array([[0, 0, 0, 0], [5, 100, 0, 37], [1000, 2000, 3000, 50]])
    np.testing.assert_allclose(roof_model.grouped_gemm_s(tokens, 4096, 7168, "bf16"),
                               ROOF.grouped_gemm_s(tokens, 4096, 7168, "bf16"), rtol=1e-9)
    np.testing.assert_allclose(roof_model.grouped_gemm_wgrad_s(tokens, 4096, 7168, "fp8"),
                               ROOF.grouped_gemm_wgrad_s(tokens, 4096, 7168, "fp8"), rtol=1e-9)
    for causal, backward in itertools.product((True, False), (True, False)):
        assert roof_model.attention_s(2, 4096, 32, 192, 128, causal, "bf16", backward) == pytest.approx(
            ROOF.attention_s(2, 4096, 32, 192, 128, causal, "bf16", backward), rel=1e-9)
    sizes = np.array([0.0, 1e3, 1e6, 1e9, 1e11])
    np.testing.assert_allclose(roof_model.memory_bound_s(sizes, 2), ROOF.memory_bound_s(sizes, 2), rtol=1e-9)


def test_doubling_gemm_times_doubles_gemm_and_grouped_gemm(base, roof_model, tmp_path):
    """Every GEMM time x2 in the profile -> every GEMM-family time x2 from the model (inside and
    outside the grid), attention and memory-bound times unchanged."""
    slow_table, slow_meta = scale_times(read_profile(roof_model.path), 2.0)
    slow = ProfileModel(write_profile(tmp_path / "slow.parquet", slow_table, slow_meta).path, gpu_name=GPU)
    assert slow.identifier != roof_model.identifier
    tokens = np.array([[1, 7, 300, 0], [4096, 4096, 4096, 4096], [20000, 1, 1, 1]])
    for dtype in ("bf16", "fp8"):
        for shape in ((4096, 7168, 2048), (37, 1000, 300), (70000, 30000, 20000)):
            assert slow.gemm_s(*shape, dtype) == pytest.approx(2 * roof_model.gemm_s(*shape, dtype), rel=1e-9)
            fwd, fwd2 = gemm_backward_s(roof_model, *shape, dtype), gemm_backward_s(slow, *shape, dtype)
            assert fwd2.total_s == pytest.approx(2 * fwd.total_s, rel=1e-9)
        np.testing.assert_allclose(slow.grouped_gemm_s(tokens, 2048, 7168, dtype),
                                   2 * roof_model.grouped_gemm_s(tokens, 2048, 7168, dtype), rtol=1e-9)
        back, back2 = (grouped_gemm_backward_s(m, tokens, 2048, 7168, dtype) for m in (roof_model, slow))
        np.testing.assert_allclose(back2.wgrad_s, 2 * back.wgrad_s, rtol=1e-9)
        np.testing.assert_allclose(back2.dgrad_s, 2 * back.dgrad_s, rtol=1e-9)
    assert slow.attention_s(1, 8192, 16, 128, 128, True, "bf16", True) == pytest.approx(
        roof_model.attention_s(1, 8192, 16, 128, 128, True, "bf16", True), rel=1e-12)
    assert slow.memory_bound_s(1e8) == pytest.approx(roof_model.memory_bound_s(1e8), rel=1e-12)


@pytest.mark.parametrize("access", ["last_dim_cat", "strided"])
def test_a_profile_times_a_slow_kernel_class_as_its_copy_times_the_roofline_slowdown(roof_model, access):
    # Profiles time neither class: the measured streaming time, times the roofline's ratio.
    params = roof_model.roofline.params
    ratio = {"last_dim_cat": params.last_dim_cat_slowdown, "strided": params.strided_slowdown}[access]
    assert ratio > 1
    for size in (1e6, 1e8, 1e10):
        assert roof_model.memory_bound_s(size, 1, access) == pytest.approx(
            ratio * roof_model.memory_bound_s(size, 1), rel=1e-12)


def test_a_profile_times_a_gather_as_its_measured_copy_times_the_gather_slowdown(roof_model):
    # A row gather is a copy with index loads: the copy's table alone (not the pooled norms); a sum
    # of gathered rows (the unpermute) runs at the copy's rate.
    ratio = roof_model.roofline.params.gather_slowdown
    assert ratio > 1
    for size in (1e6, 1e8, 1e10):
        assert roof_model.memory_bound_s(size, 1, "gather") == pytest.approx(
            ratio * roof_model.memory_op_s("copy", size, 1), rel=1e-12)
        assert roof_model.memory_bound_s(size, 1, "gather_sum") == pytest.approx(
            roof_model.memory_op_s("copy", size, 1), rel=1e-12)


# -- interpolation accuracy against known functions --------------------------------------------------

HELD_OUT = ({"m": (256, 2048)}, {"k": (2048,)})  # grid values removed from the profile, one axis at a time


def _held_out_error(base, tmp_path, truth, held: dict) -> tuple[float, ProfileModel]:
    def keep(row):
        return not (row["op"] == "gemm" and any(row[axis] in values for axis, values in held.items()))

    model = ProfileModel(derived(base, tmp_path / "synthetic.parquet", keep=keep, gemm_s=truth), gpu_name=GPU)
    points = np.array([p for p in itertools.product(FULL.gemm_m, FULL.gemm_n, FULL.gemm_k)
                       if any(p["mnk".index(axis)] in values for axis, values in held.items())])
    predicted = model.gemm_s(points[:, 0], points[:, 1], points[:, 2], "bf16")
    return float(np.max(np.abs(predicted / truth(*points.T) - 1))), model


def smooth_s(m, n, k):
    """t = a + flops / b: a launch cost and one throughput, no quantization."""
    return 4e-6 + 2.0 * np.asarray(m, dtype=float) * n * k / 700e12


def staircase_s(m, n, k):
    """Tile- and wave-quantized (the roofline's tiles on 132 SMs) at an efficiency that drifts
    smoothly with size, 5-25% below the roofline's."""
    flops = 2.0 * np.asarray(m, dtype=float) * n * k
    return ROOF.gemm_s(m, n, k, "bf16") * (1.15 + 0.1 * np.tanh(np.log(flops / 1e10)))


@pytest.mark.parametrize("held", HELD_OUT, ids=lambda h: ",".join(h))
def test_smooth_function_is_recovered_at_held_out_grid_points(base, tmp_path, held):
    error, model = _held_out_error(base, tmp_path, smooth_s, held)
    assert error < 0.02
    assert model.tables()["gemm:bf16"]["basis"] == "direct"  # the roofline's steps are not in the data


@pytest.mark.parametrize("held", HELD_OUT, ids=lambda h: ",".join(h))
def test_wave_quantized_staircase_is_recovered_at_held_out_grid_points(base, tmp_path, held):
    error, model = _held_out_error(base, tmp_path, staircase_s, held)
    assert error < 0.02
    assert model.tables()["gemm:bf16"]["basis"] == "roofline-ratio"


def test_staircase_needs_the_roofline_basis():
    """The same data interpolated as plain times (no roofline) misses the steps by far more than 2%:
    the accuracy above comes from the basis choice, not from an easy function."""
    m_axis = np.array([v for v in FULL.gemm_m if v not in (256, 2048)], dtype=float)
    grid = np.array(list(itertools.product(m_axis, FULL.gemm_n, FULL.gemm_k)), dtype=float)
    direct = fit_table(grid, np.log(staircase_s(*grid.T)), {"direct": np.zeros(len(grid))})
    held = np.array(list(itertools.product((256, 2048), FULL.gemm_n, FULL.gemm_k)), dtype=float)
    predicted, _ = direct.table(held)
    assert np.max(np.abs(np.exp(predicted) / staircase_s(*held.T) - 1)) > 0.10


# -- extrapolation is bounded by the roofline (hypothesis) ------------------------------------------


@pytest.fixture(scope="module")
def fast_model(base, tmp_path_factory):
    """A profile whose every kernel runs at 40% of the roofline's time: faster than the roofline
    inside the grid (measured data may), so only the extrapolation floor keeps it above outside."""
    path = derived(base, tmp_path_factory.mktemp("fast") / "fast.parquet",
                   scale_ops=("gemm", "grouped_gemm", "grouped_gemm_wgrad", "attention_fwd", "attention_fwd_bwd",
                              "copy", "rmsnorm", "layernorm", "permute", "unpermute"), factor=0.4)
    return ProfileModel(path, gpu_name=GPU)


outside = st.one_of(st.integers(1, 15), st.integers(16385, 2**20))
anywhere = st.integers(1, 2**20)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def test_inside_the_grid_measured_speed_is_kept(fast_model):
    assert fast_model.gemm_s(4096, 4096, 4096, "bf16") == pytest.approx(0.4 * ROOF.gemm_s(4096, 4096, 4096, "bf16"))


@FAST
@given(m=outside, n=anywhere, k=anywhere, dtype=st.sampled_from(["bf16", "fp8"]))
def test_extrapolated_gemm_is_never_faster_than_the_roofline(fast_model, m, n, k, dtype):
    assert fast_model.gemm_s(m, n, k, dtype) >= ROOF.gemm_s(m, n, k, dtype) * (1 - 1e-12)


@FAST
@given(tokens=st.lists(st.integers(0, 50000), min_size=1, max_size=80), n=st.integers(1, 40000),
       k=st.integers(8193, 40000), wgrad=st.booleans())
def test_extrapolated_grouped_gemm_is_never_faster_than_the_roofline(fast_model, tokens, n, k, wgrad):
    model_fn = fast_model.grouped_gemm_wgrad_s if wgrad else fast_model.grouped_gemm_s
    roof_fn = ROOF.grouped_gemm_wgrad_s if wgrad else ROOF.grouped_gemm_s
    assert model_fn(tokens, n, k, "bf16") >= roof_fn(tokens, n, k, "bf16") * (1 - 1e-12)


@FAST
@given(seq=st.one_of(st.integers(1, 511), st.integers(16385, 131072)), heads=st.integers(1, 128),
       head_dim=st.sampled_from([32, 64, 128, 192, 256]), backward=st.booleans(), causal=st.booleans())
def test_extrapolated_attention_is_never_faster_than_the_roofline(fast_model, seq, heads, head_dim, backward, causal):
    args = (1, seq, heads, head_dim, head_dim, causal, "bf16", backward)
    assert fast_model.attention_s(*args) >= ROOF.attention_s(*args) * (1 - 1e-12)


@FAST
@given(size=st.one_of(st.floats(0, 2e5), st.floats(3e9, 1e13)), kernels=st.integers(1, 4))
def test_extrapolated_memory_bound_is_never_faster_than_the_roofline(fast_model, size, kernels):
    assert fast_model.memory_bound_s(size * kernels, kernels) >= ROOF.memory_bound_s(size * kernels, kernels) * (
        1 - 1e-12)


# -- the command line (no torch needed for --roofline) -------------------------------------------------


@pytest.fixture(scope="module")
def cli():
    from typer.testing import CliRunner

    from simmoe.cli import _register_all

    _register_all()
    return CliRunner()


def test_cli_writes_a_roofline_profile(cli, tmp_path):
    from simmoe.cli import app

    out = tmp_path / "a100.parquet"
    res = cli.invoke(app, ["calibrate", "--roofline", "A100-SXM-80GB", "--quick", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["provenance"] == "datasheet-roofline" and summary["path"] == str(out)
    profile = read_profile(out)
    assert set(profile.table.column("dtype").to_pylist()) == {"bf16"}  # A100 has no FP8
    assert "fp8" in json.loads(profile.metadata["skipped"])
    assert profile.metadata["command"] == f"simmoe calibrate --out {out} --roofline A100-SXM-80GB --quick --json"
    assert list(profile.table.column_names) == list(COLUMN_NAMES)
    with pytest.raises(ProfileError, match="allowed: bf16"):
        load_compute_model("A100-SXM-80GB", out, dtypes=("bf16", "fp8"))


def test_cli_unknown_gpu_is_one_sentence(tmp_path, capsys):
    from simmoe.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--roofline", "H200", "--out", str(tmp_path / "x.parquet")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--roofline='H200'" in err and "H100-SXM" in err


# -- memory-bound pooling and shipped profiles --------------------------------------------------------


def test_gathers_and_scatter_adds_do_not_set_streaming_kernel_speed(base, roof_model, tmp_path):
    """Atomic scatter-add 10x slower and gather 3x faster than the roofline (as on an H100):
    memory_bound_s (norms, activations, optimizer) follows copy/norms only; memory_op_s still
    answers for each measured op."""
    path = derived(base, tmp_path / "atomics.parquet", scale_ops=("unpermute",), factor=10.0)
    table, meta = read_profile(path).table, read_profile(path).metadata
    rows = [{**r, "median_s": r["median_s"] / 3, "p10_s": r["p10_s"] / 3, "p90_s": r["p90_s"] / 3}
            if r["op"] == "permute" else r for r in table.to_pylist()]
    model = ProfileModel(write_profile(tmp_path / "both.parquet", rows_to_table(rows), meta).path, gpu_name=GPU)
    for size in (1e5, 3e7, 1.4e9):
        assert model.memory_bound_s(size) == pytest.approx(roof_model.memory_bound_s(size), rel=1e-9)
    assert model.memory_op_s("unpermute", 3e7) == pytest.approx(10 * roof_model.memory_op_s("unpermute", 3e7), rel=1e-6)


@pytest.mark.parametrize("gpu, device", [("H100-SXM", "H100"), ("H200-SXM", "H200")])
def test_shipped_profiles_are_measured_and_say_how(gpu, device):
    """The committed profiles load as measured:<GPU> and carry their provenance."""
    model = load_compute_model(gpu, f"measured:{gpu}", dtypes=("bf16", "fp8"))
    meta = read_profile(f"measured:{gpu}").metadata
    assert meta["provenance"] == "measured" and device in meta["device"] and meta["gpu"] == gpu
    for key in ("driver", "cuda", "torch", "date_utc", "command"):
        assert meta[key], key
    assert meta["command"].startswith("simmoe calibrate --device cuda")
    # A measured H100/H200 runs an 8192^3 BF16 GEMM at 70-90% of the 989 TFLOPS datasheet peak in a
    # burst, and 5-30% slower under sustained load (power-capped clocks), as its burn measured.
    burst = load_compute_model(gpu, f"measured:{gpu}", clocks="burst")
    assert 0.7 < 2 * 8192**3 / burst.gemm_s(8192, 8192, 8192, "bf16") / 989e12 < 0.9
    slowdown = model.gemm_s(8192, 8192, 8192, "bf16") / burst.gemm_s(8192, 8192, 8192, "bf16")
    assert 1.05 < slowdown < 1.3 and slowdown == pytest.approx(model.sustained["bf16"], rel=0.02)


def test_unknown_shipped_profile_names_the_ones_there(tmp_path):
    with pytest.raises(InputError) as err:
        read_profile("measured:B300")
    text = str(err.value)
    assert "measured:B300" in text and "measured:H100-SXM" in text and "measured:H200-SXM" in text


def _with_sustained(base, tmp_path, entries):
    table, meta = base
    return write_profile(tmp_path / "sustained.parquet", table, {**meta, "sustained_gemm": json.dumps(entries)}).path


def test_sustained_clocks_slow_tensor_core_time_not_hbm_time(base, roof_model, tmp_path):
    """A profile whose 8192^3 GEMMs ran 1.2x slower under sustained load: compute-bound kernels
    x1.2, attention x1.2, memory-bound kernels x1; a GEMM bound half by HBM (M = 128, N = 65536) moves by half as much;
    clocks="burst" gives the measured (burst) times back."""
    path = _with_sustained(base, tmp_path, {"bf16": {"burst_s": 1.0e-3, "sustained_s": 1.2e-3}})
    hot = ProfileModel(path, gpu_name=GPU)
    cool = ProfileModel(path, gpu_name=GPU, clocks="burst")
    assert hot.identifier.endswith("@sustained") and cool.identifier == roof_model.identifier
    assert hot.describe()["sustained_factor"] == {"bf16": pytest.approx(1.2)}
    assert hot.gemm_s(8192, 8192, 8192, "bf16") == pytest.approx(1.2 * cool.gemm_s(8192, 8192, 8192, "bf16"), rel=1e-9)
    parts = ROOF.gemm_parts(128, 65536, 4096, "bf16")
    share = float(parts["compute_s"] / (parts["total_s"] - parts["overhead_s"]))
    assert share < 0.5
    assert hot.gemm_s(128, 65536, 4096, "bf16") == pytest.approx((1 + 0.2 * share) * cool.gemm_s(128, 65536, 4096, "bf16"))
    tokens = np.full(8, 4096.0)
    assert hot.grouped_gemm_s(tokens, 4096, 4096, "bf16") == pytest.approx(
        1.2 * cool.grouped_gemm_s(tokens, 4096, 4096, "bf16"), rel=1e-9)
    assert hot.attention_s(1, 8192, 16, 128, 128, True, "bf16", False) == pytest.approx(
        1.2 * cool.attention_s(1, 8192, 16, 128, 128, True, "bf16", False), rel=1e-9)
    assert hot.memory_bound_s(1e9) == cool.memory_bound_s(1e9)
    assert hot.gemm_s(8192, 8192, 8192, "fp8") == cool.gemm_s(8192, 8192, 8192, "fp8")  # no fp8 entry


@pytest.mark.parametrize("entries, words", [
    ({"bf16": {"burst_s": 1e-3}}, "unreadable"),
    ({"bf16": {"burst_s": 1e-3, "sustained_s": 9e-3}}, "out of range"),
])
def test_bad_sustained_measurement_is_named(base, tmp_path, entries, words):
    with pytest.raises(ProfileError) as err:
        ProfileModel(_with_sustained(base, tmp_path, entries), gpu_name=GPU)
    assert words in str(err.value) and "sustained_gemm" in str(err.value)


@pytest.mark.parametrize("device, gpu", [("NVIDIA H100 80GB HBM3", "H100-SXM"), ("NVIDIA H200", "H200-SXM"),
                                         ("NVIDIA H200 NVL", ""), ("NVIDIA H800", "H800-SXM"),
                                         ("NVIDIA GB200", "GB200"), ("NVIDIA B200", "B200"), ("Tesla T4", "")])
def test_cuda_device_names_map_to_simmoe_gpus(device, gpu):
    """As torch.cuda.get_device_name reports them (the H100 and H200 strings were read on lent GPUs)."""
    from simmoe.cli.calibrate import guess_gpu

    assert guess_gpu(device) == gpu


def test_a_profile_without_a_sustained_measurement_says_it_runs_at_burst_clocks(roof_model):
    assert roof_model.sustained == {} and roof_model.describe()["clocks"].startswith("burst")
