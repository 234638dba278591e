"""The compute model against kernels measured on a lent H100 (results/gpu-ground-truth/, each file's
command in results/README.md). No GPU needed: the measurements are committed, the predictions are
made here. Bounds are the errors the notes report plus a margin; a change to the roofline or the
profile reader that moves a prediction away from the measurement fails here."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest

from simmoe.compute.roofline import RooflineModel

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "results" / "gpu-ground-truth"


ATTENTION_RUNS = ("h100-attention-shapes.csv", "h100-attention-shapes-repeat.csv")  # two lent machines


def _rows(name: str) -> list[dict]:
    with open(MEASURED / name, newline="") as handle:
        return [r for r in csv.DictReader(handle) if not r["skipped"]]


@pytest.fixture(scope="module", params=ATTENTION_RUNS)
def attention_rows(request) -> list[dict]:
    return _rows(request.param)


def _best(rows, direction, d_qk, d_v, heads, seq_len) -> dict:
    """The fastest PyTorch SDPA backend at that shape (cuDNN on Hopper, in practice)."""
    match = [r for r in rows if r["direction"] == direction and int(r["d_qk"]) == d_qk
             and int(r["d_v"]) == d_v and int(r["heads"]) == heads and int(r["seq_len"]) == seq_len]
    assert match, (direction, d_qk, d_v)
    return min(match, key=lambda r: float(r["median_s"]))


SHAPES = [(1, 128, 4096, 64, 64), (1, 128, 4096, 128, 128), (1, 128, 4096, 192, 128),
          (1, 128, 4096, 192, 192), (1, 128, 4096, 256, 256), (1, 32, 8192, 128, 128),
          (2, 32, 4096, 128, 128)]


@pytest.mark.parametrize("direction", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_roofline_attention_matches_the_best_measured_kernel(attention_rows, direction, shape):
    # Every measured shape (batch, heads, seq, d_qk, d_v): head dim 128 (most models), DeepSeek-V3's
    # MLA shape (d_qk 192 = 128 + 64 RoPE, d_v 128), 64, 192, 256; Llama 3 8B's and Qwen3-30B's
    # token counts. Causal BF16 at sustained clocks, fastest PyTorch SDPA backend (cuDNN).
    b, h, s, d_qk, d_v = shape
    best = _best(attention_rows, direction, d_qk, d_v, heads=h, seq_len=s)
    model = RooflineModel("H100-SXM", clocks="sustained")
    predicted = model.attention_s(b, s, h, d_qk, d_v, True, "bf16", False)
    if direction == "fwd_bwd":
        predicted += model.attention_s(b, s, h, d_qk, d_v, True, "bf16", True)
    measured = float(best["median_s"])
    assert abs(predicted / measured - 1) < 0.10, (best["backend"], predicted, measured)


def test_the_measured_file_holds_every_backend_and_what_each_rejected():
    with open(MEASURED / "h100-attention-shapes.csv", newline="") as handle:
        every = list(csv.DictReader(handle))
    assert {r["backend"] for r in every} == {"flash", "efficient", "cudnn"}
    # FlashAttention-2 (PyTorch's flash backend) needs d_v == d_qk: DeepSeek's shape is rejected.
    rejected = [r for r in every if r["backend"] == "flash" and r["d_qk"] == "192" and r["d_v"] == "128"]
    assert rejected and all(r["skipped"] for r in rejected)


@pytest.mark.parametrize("gpu_file,profile", [("h100-fused-preheat.csv", "measured:H100-SXM"),
                                              ("h200-fused-preheat.csv", "measured:H200-SXM")])
def test_moe_layer_ground_truth_replays_within_the_reported_error(load_benchmark, gpu_file, profile):
    # A real BF16 MoE layer (router .. grouped SwiGLU experts .. unpermute, forward + backward), 20
    # cases, against simmoe with the shipped profile measured on the same GPU: the notes report
    # median |error| 4.2% (H100) / 4.3% (H200), worst 10.1% / 10.6% (docs/calibration.md): every
    # memory-bound op now at its traced kernel's time; what is left is the grouped GEMMs.
    gt = load_benchmark("moe_layer_ground_truth")
    rows = gt.replay(str(MEASURED / gpu_file), gt.read_rows(str(MEASURED / gpu_file))[0]["gpu"], profile)
    errors = [abs(r["error_pct"]) for r in rows]
    assert len(errors) == 20
    assert statistics.median(errors) < 5.0
    assert max(errors) < 11.0


def test_roofline_attention_parameters_are_the_fit_of_the_measured_files(load_benchmark):
    # roofline.yaml cites `benchmarks/attention_shapes.py --fit` on the committed files: the
    # numbers written there must be what that fit gives (to the three digits written).
    fit = load_benchmark("attention_shapes").fit_attention_runs([_rows(name) for name in ATTENTION_RUNS], "H100-SXM")
    params = RooflineModel("H100-SXM").params
    for key in ("bf16_forward", "bf16_backward"):
        assert params.attention_fraction_of_peak[key] == pytest.approx(fit["fraction_of_peak"][key], abs=5e-4)
    written = {f"{q}/{v}": f for (q, v), f in params.attention_head_dim_factor.items()}
    assert set(written) == set(fit["head_dim_factor"])
    for key, factors in fit["head_dim_factor"].items():
        for direction, value in factors.items():
            assert written[key][direction] == pytest.approx(value, abs=5e-4), (key, direction)


BLOCK_CASES = ("qwen3-30b-a3b", "deepseek-v3", "kimi-k2")


@pytest.mark.parametrize("case", BLOCK_CASES)
def test_automodel_block_gemm_and_attention_match_and_the_rest_is_what_the_notes_say(load_benchmark, case):
    """The Automodel-style block (benchmarks/automodel_block_ground_truth.py, one lent H100): simmoe's
    GEMMs and attention within 8% of the kernels measured; the whole block still short by 5-22%
    (memory-bound kernels the model lacks, GPU idle time: docs/validation.md), and closer to the
    measurement than the prediction committed beside it (before the cat kernel class)."""
    gt = load_benchmark("automodel_block_ground_truth")
    with open(MEASURED / f"h100-automodel-block-{case}.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["blocks"] == "1")
    pred = gt.predict(case)
    for cls in ("gemm", "attention"):
        assert pred[cls] * 1e3 == pytest.approx(float(row[f"kernel_{cls}_ms"]), rel=0.08), cls
    block_ms = (pred["fwd"] + pred["recompute"] + pred["bwd"]) * 1e3
    measured = float(row["measured_block_ms"])
    assert abs(block_ms - measured) < abs(float(row["simmoe_block_ms"]) - measured)
    assert 0.78 < block_ms / measured < 0.95


IDLE_RUNS = ("h100-block-idle.csv", "h100-block-idle-4-blocks.csv")  # 1 block, 4 chained (per block)


@pytest.mark.parametrize("case", BLOCK_CASES)
def test_automodel_block_matches_the_kernels_of_the_timed_steps_and_the_rest_is_idle(load_benchmark, case):
    """benchmarks/block_idle_profile.py (one lent H100): in the timed steps themselves simmoe's
    block is within 6% of the kernels' busy time, and the unprofiled step is longer than both:
    the rest is GPU idle simmoe does not model (docs/validation.md, "The timed steps profiled")."""
    gt = load_benchmark("automodel_block_ground_truth")
    pred = gt.predict(case)
    block_ms = (pred["fwd"] + pred["recompute"] + pred["bwd"]) * 1e3
    for name in IDLE_RUNS:
        with open(MEASURED / name, newline="") as handle:
            row = next(r for r in csv.DictReader(handle) if r["case"] == case)
        busy = float(row["cuda_busy_ms"])
        assert block_ms == pytest.approx(busy, rel=0.06), name
        assert busy < float(row["plain_event_ms"]) and block_ms < float(row["plain_event_ms"]), name
        assert float(row["cuda_idle_host_ms"]) > 0  # the host launched some kernels late


# The last-dimension cats of the block traces: (case, kernel position in the 1-block trace, bytes
# read + written). MLA (4096 tokens; DeepSeek-V3: 128 heads, Kimi K2: 64): Q = cat(nope 128, rope
# 64) of split views and K likewise, forward and recompute, then the backward's dQ (192) and
# d(K nope, V) (128 + 128) cats. The other cat kernels of those traces are the harness's stand-ins
# for DeepEP (row-wise copies of whole tokens), not modelled ops.
MLA_TOKENS = 4096
# Qwen3-30B-A3B's block runs 4 x 4096 tokens, 32 Q heads and 4 K/V heads of 128.
QWEN3_TOKENS, QWEN3_Q, QWEN3_K = 16384, 16384 * 32 * 128 * 2, 16384 * 4 * 128 * 2


def _cat_bytes(heads: int, head_dim: int) -> int:
    """Bytes a cat into MLA_TOKENS x heads x head_dim BF16 reads and writes."""
    return 2 * MLA_TOKENS * heads * head_dim * 2


LAST_DIM_CATS = (
    [("deepseek-v3", i, _cat_bytes(128, 192)) for i in (15, 16, 71, 72, 187)]
    + [("deepseek-v3", 201, _cat_bytes(128, 256))]
    + [("kimi-k2", i, _cat_bytes(64, 192)) for i in (15, 16, 105, 106, 307)] + [("kimi-k2", 320, _cat_bytes(64, 256))])
# Qwen3's RoPE, cat(x1*cos - x2*sin, x2*cos + x1*sin) of Q and of K, forward (kernels 7-20),
# recompute (105-118), backward (295-310): the four multiplies read half-rows (strided) and write
# S/2 each, the backward's negation likewise (S per kernel); the subtract and add read S and write
# S/2; the cat of the two contiguous halves reads and writes S.
QWEN3_ROPE = {
    "strided": [(i, QWEN3_Q) for i in (7, 8, 10, 11, 105, 106, 108, 109, 303, 304, 305, 306, 308)]
    + [(i, QWEN3_K) for i in (14, 15, 17, 18, 112, 113, 115, 116, 295, 296, 297, 298, 300)],
    "stream": [(i, 1.5 * QWEN3_Q) for i in (9, 12, 107, 110, 307, 309)] + [(i, 2 * QWEN3_Q) for i in (13, 111, 310)]
    + [(i, 2 * QWEN3_K) for i in (20, 118, 302)],
}


def _block_traces(*cases: str) -> dict[str, list[dict]]:
    pq = pytest.importorskip("pyarrow.parquet")
    traces = {}
    for case in cases:  # each trace read once
        table = pq.read_table(MEASURED / f"h100-automodel-block-kernels-{case}.parquet").to_pylist()
        traces[case] = sorted((r for r in table if r["blocks"] == 1), key=lambda r: r["start_us"])
    return traces


def test_last_dimension_cat_slowdown_is_the_median_of_the_traced_cat_kernels():
    model = RooflineModel("H100-SXM", clocks="burst")
    traces = _block_traces(*{case for case, _, _ in LAST_DIM_CATS})
    ratios = []
    for case, index, nbytes in LAST_DIM_CATS:
        kernel = traces[case][index]
        assert "CatArrayBatchedCopy<" in kernel["kernel"], (case, index)  # the unvectorized kernel
        ratios.append(kernel["duration_us"] * 1e-6 / model.memory_bound_s(nbytes, 0, "last_dim_cat"))
    assert statistics.median(ratios) == pytest.approx(1.0, abs=0.02)
    assert 0.7 < min(ratios) and max(ratios) < 1.35  # 0.68-1.24 TB/s against 0.91


def test_gather_slowdown_is_the_median_of_the_traced_permute_gathers():
    """The MoE-layer ground truth's permute (an index_select of each token's row into its k expert
    rows) runs near a copy once every output row's read is counted, not once per token."""
    pq = pytest.importorskip("pyarrow.parquet")
    model = RooflineModel("H100-SXM", clocks="burst")
    kernels = pq.read_table(MEASURED / "h100-kernels-fused.parquet").to_pylist()
    with open(MEASURED / "h100-fused-preheat.csv", newline="") as handle:
        cases = list(csv.DictReader(handle))
    per_row, per_token = [], []
    for case in cases:
        tokens, hidden, k = int(case["tokens"]), int(case["hidden"]), int(case["top_k"])
        gathers = [r for r in kernels if r["case"] == case["case"] and "vectorized_gather_kernel" in r["kernel"]]
        seconds = max(r["duration_us"] for r in gathers) * 1e-6  # the permute: the largest gather
        per_row.append(seconds / model.memory_bound_s(2 * tokens * k * hidden * 2, 0, "stream"))
        per_token.append(seconds / model.memory_bound_s((tokens + tokens * k) * hidden * 2, 0, "stream"))
    assert len(per_row) == 20
    assert statistics.median(per_row) == pytest.approx(model.params.gather_slowdown, abs=0.01)
    assert max(per_row) / min(per_row) < 1.1  # one rate over top-2 and top-8
    assert max(per_token) / min(per_token) > 1.3  # counted per token, the rate falls with top-k


def _fused_layer_kernels(pattern: str):
    """(case row, traced kernel) for the one kernel of each of the 20 fused MoE-layer cases whose
    name holds ``pattern``."""
    pq = pytest.importorskip("pyarrow.parquet")
    kernels = pq.read_table(MEASURED / "h100-kernels-fused.parquet").to_pylist()
    with open(MEASURED / "h100-fused-preheat.csv", newline="") as handle:
        cases = list(csv.DictReader(handle))
    out = []
    for case in cases:
        hits = [r for r in kernels if r["case"] == case["case"] and pattern in r["kernel"]]
        assert len(hits) == 1, (case["case"], pattern)
        out.append((case, hits[0]))
    assert len(out) == 20
    return out


@pytest.mark.parametrize("pattern", ["add_index_select_mul_select_slice",  # the weighted unpermute
                                     "add_index_select_select_view"])  # the permute's backward
def test_sums_of_gathered_rows_run_at_the_copy_rate(pattern):
    """The unpermute and the permute's backward read each token's k expert rows by index and write
    the token's row: counted (rows + tokens) x hidden they run at the copy rate, class gather_sum."""
    model = RooflineModel("H100-SXM", clocks="burst")
    ratios = []
    for case, kernel in _fused_layer_kernels(pattern):
        tokens, hidden, k = int(case["tokens"]), int(case["hidden"]), int(case["top_k"])
        nbytes = (tokens * k + tokens) * hidden * 2
        ratios.append(kernel["duration_us"] * 1e-6 / model.memory_bound_s(nbytes, 0, "gather_sum"))
    assert statistics.median(ratios) == pytest.approx(1.0, abs=0.03)
    assert 0.9 < min(ratios) and max(ratios) < 1.1  # 2.85-3.13 TB/s


def test_the_routing_weights_gradient_runs_near_the_gather_rate():
    """The weights' gradient when they apply at the combine (the ground-truth layer's row_dots):
    each expert row's output gathered and dotted with its token's output gradient, counted
    (rows + tokens) x hidden: 2.25-2.89 TB/s, median 2.67, against the gather class's 2.83."""
    model = RooflineModel("H100-SXM", clocks="burst")
    ratios = []
    for case, kernel in _fused_layer_kernels("triton_red_fused__to_copy_index_select_mul_sum"):
        tokens, hidden, k = int(case["tokens"]), int(case["hidden"]), int(case["top_k"])
        nbytes = (tokens * k + tokens) * hidden * 2
        ratios.append(kernel["duration_us"] * 1e-6 / model.memory_bound_s(nbytes, 0, "gather"))
    assert statistics.median(ratios) == pytest.approx(1.06, abs=0.04)
    assert 0.95 < min(ratios) and max(ratios) < 1.3  # hidden 4096 runs slower than 7168


def test_the_traced_grouped_gemms_against_the_roofline_are_what_the_docs_say(load_benchmark):
    """benchmarks/grouped_gemm_traces.py: the 20 cases' grouped kernels over the roofline's time at
    sustained clocks, within the range docs/calibration.md reports (0.98-1.43), slower than the
    roofline at or below 256 rows per expert (backward medians 1.21 / 1.23)."""
    pytest.importorskip("pyarrow.parquet")
    rows = load_benchmark("grouped_gemm_traces").traced_over_roofline("sustained")
    assert len(rows) == 20
    ratios = [r[op] for r in rows for op in ("fc1", "fc2", "fc2.bwd", "fc1.bwd")]
    assert 0.97 < min(ratios) and max(ratios) < 1.45
    small = [r for r in rows if r["rows_per_expert"] <= 256]
    assert len(small) == 12
    assert statistics.median(r["fc1.bwd"] for r in small) == pytest.approx(1.23, abs=0.01)


def test_eager_rope_kernels_run_at_their_classes_measured_rates():
    """The strided slowdown is the median of the traced half-row kernels; the same RoPE's
    subtract, add and cat (contiguous inputs, vectorized) stream at the copy rate."""
    model = RooflineModel("H100-SXM", clocks="burst")
    kernels = _block_traces("qwen3-30b-a3b")["qwen3-30b-a3b"]
    for access, rows in QWEN3_ROPE.items():
        ratios = []
        for index, nbytes in rows:
            name = kernels[index]["kernel"]
            assert ("vectorized" in name) == (access == "stream"), (index, name)
            ratios.append(kernels[index]["duration_us"] * 1e-6 / model.memory_bound_s(nbytes, 0, access))
        assert statistics.median(ratios) == pytest.approx(1.0, abs=0.03 if access == "strided" else 0.10), access
        assert 0.75 < min(ratios) and max(ratios) < 1.25, access
