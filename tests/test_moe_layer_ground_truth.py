"""benchmarks/moe_layer_ground_truth.py: a CPU smoke run, the prediction path pinned op by op, the
routing draw and the measured layer's arithmetic."""

from __future__ import annotations


import numpy as np
import pytest

from simmoe.calibration import load_compute_model
from simmoe.compute.model import gemm_backward_s, grouped_gemm_backward_s

@pytest.fixture(scope="module")
def gt(load_benchmark):
    return load_benchmark("moe_layer_ground_truth")


def test_cpu_smoke_run_prints_the_table(gt, tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "gt.csv"
    rows = gt.main(["--device", "cpu", "--quick", "--warmup", "1", "--repeats", "3", "--out", str(out)])
    text = capsys.readouterr()
    assert "NOT comparable" in text.err and "NOT comparable" in text.out
    header = text.out.splitlines()[0]
    for column in ("case", "measured ms", "simmoe ms", "error %"):
        assert column in header
    assert [r["case"] for r in rows] == ["d64-E4-top2-balanced", "d64-E4-top2-zipf:1.0"]
    for r in rows:
        assert r["measured_ms"] > 0 and r["simmoe_ms"] > 0 and r["measured_fwd_ms"] > 0 and r["simmoe_fwd_ms"] > 0
        assert r["simmoe_fwd_ms"] < r["simmoe_ms"]
        assert r["error_pct"] == pytest.approx(100 * (r["simmoe_ms"] - r["measured_ms"]) / r["measured_ms"])
        assert r["case"] in text.out
    assert rows[0]["load_max_over_mean"] == 1.0 and rows[1]["load_max_over_mean"] > 1.5
    import pyarrow.csv as pacsv

    assert pacsv.read_csv(out).num_rows == len(rows)
    # Replay: the measured rows predicted again, here with the same roofline, give the same answer;
    # with a slower GPU's roofline (A100) a larger one. The measured times are kept as they were.
    again = gt.main(["--replay", str(out)])
    slower = gt.main(["--replay", str(out), "--gpu", "A100-SXM-80GB"])
    for r, a, b in zip(rows, again, slower):
        assert a["simmoe_ms"] == pytest.approx(r["simmoe_ms"], rel=1e-9) and a["measured_ms"] == r["measured_ms"]
        assert b["simmoe_ms"] > r["simmoe_ms"] and b["measured_ms"] == r["measured_ms"]


def test_balanced_prediction_is_the_sum_of_the_hand_listed_ops(gt):
    """The ops of one MoE layer, written out by hand from docs/workload.md; if the builder or the
    prediction path changes what it sums, this fails."""
    T, d, E, k, f = 8192, 4096, 64, 8, 2048
    case = gt.Case(hidden=d, experts=E, top_k=k, routing="balanced", tokens=T, expert_ffn=f)
    hist = gt.routing_histogram(E, T, k, "balanced")
    assert hist.tolist() == [T * k // E] * E
    m = load_compute_model("H100-SXM", None)
    mem, bf16, fp32 = m.memory_bound_s, 2, 4
    fwd = (m.gemm_s(T, E, d, "bf16")                                  # router
           + mem(T * E * fp32 * 2)                                    # softmax + top-k
           + mem(2 * T * k * d * bf16, 1, "gather")                   # permute: a read per row
           + m.grouped_gemm_s(hist, 2 * f, d, "bf16")                 # fc1 (gate + up)
           + mem(T * k * f * bf16 * 3)                                # SwiGLU
           + m.grouped_gemm_s(hist, d, f, "bf16")                     # fc2
           + mem(T * k * d * bf16 + T * d * bf16, 1, "gather_sum"))   # unpermute: k rows summed per token
    bwd = (mem(2 * T * k * d * bf16, 1, "gather")                     # unpermute: the same gather
           + mem((T * k + T) * d * bf16, 1, "gather")                 # routing weights' gradient (weighted at the combine)
           + grouped_gemm_backward_s(m, hist, d, f, "bf16").total_s   # fc2 dgrad + wgrad
           + mem(T * k * f * bf16 * 5)                                # SwiGLU
           + grouped_gemm_backward_s(m, hist, 2 * f, d, "bf16").total_s
           + mem(T * k * d * bf16 + T * d * bf16, 1, "gather_sum")    # permute
           + mem(T * E * fp32 * 3)                                    # top-k
           + gemm_backward_s(m, T, E, d, "bf16").total_s              # router
           + mem(3 * T * d * bf16))                                   # router + permute input gradients summed
    pred = gt.predict(case, hist, m)
    assert len(pred["per_op"]) == 16
    assert pred["fwd_s"] == pytest.approx(fwd, rel=1e-12)
    assert pred["total_s"] == pytest.approx(fwd + bwd, rel=1e-12)
    # a skewed draw of the same tokens is timed with its own histogram
    skew = gt.routing_histogram(E, T, k, "zipf:1.0")
    assert gt.predict(case, skew, m)["total_s"] != pytest.approx(fwd + bwd, rel=1e-6)


@pytest.mark.parametrize("experts,top_k", [(8, 2), (64, 8), (256, 8), (4, 3)])
def test_routing_draw_is_capped_and_distinct_per_token(gt, experts, top_k):
    T = 512
    hist = gt.routing_histogram(experts, T, top_k, "zipf:1.0")
    assert hist.sum() == T * top_k and hist.max() <= T and np.all(np.diff(hist) <= 0)
    assign = gt.assignment(hist, T, top_k, np.random.default_rng(1))
    assert assign.shape == (T, top_k)
    assert all(len(set(row)) == top_k for row in assign.tolist())
    assert np.bincount(assign.ravel(), minlength=experts).tolist() == hist.tolist()


def _small_layer(gt, torch, T, d, E, k, f, *, seed, route_bias):
    """A tiny Zipf-routed case: (case, expert histogram, token assignment, router bias that forces
    that assignment)."""
    case = gt.Case(hidden=d, experts=E, top_k=k, routing="zipf:1.0", tokens=T, expert_ffn=f)
    hist = gt.routing_histogram(E, T, k, case.routing)
    assign = gt.assignment(hist, T, k, np.random.default_rng(seed))
    bias = torch.zeros(T, E).scatter_(1, torch.as_tensor(assign), route_bias)
    return case, hist, assign, bias


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_layer_computes_the_moe_output(gt, score):
    """Both grouped kernels give sum over the chosen experts of weight x SwiGLU expert(x)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    T, d, E, k, f = 32, 16, 4, 2, 8
    case, hist, assign, bias = _small_layer(gt, torch, T, d, E, k, f, seed=0, route_bias=gt.ROUTE_BIAS)
    x, wr = torch.randn(T, d, dtype=torch.bfloat16), torch.randn(E, d, dtype=torch.bfloat16) / 4
    w1, w2 = torch.randn(E, 2 * f, d, dtype=torch.bfloat16) / 4, torch.randn(E, d, f, dtype=torch.bfloat16) / 3
    logits = (x.float() @ wr.float().t()) + bias
    probs = logits.softmax(-1) if score == "softmax" else logits.sigmoid()
    want = torch.zeros(T, d)
    for t in range(T):
        chosen = [int(e) for e in assign[t]]
        weights = probs[t, chosen] / (probs[t, chosen].sum() if score == "sigmoid" else 1)
        for w, e in zip(weights, chosen):
            gate, up = (w1[e].float() @ x[t].float()).chunk(2)
            want[t] += w * (w2[e].float() @ (torch.nn.functional.silu(gate) * up))
    fns = gt._grouped_fns(torch, hist)
    assert "loop:torch.mm" in fns
    for name, grouped in fns.items():
        for fused in (None, gt.FusedKernels(torch, compile=False)):
            got = gt.make_layer(torch, case, score, grouped, fused=fused)(x, wr, bias, w1, w2).float()
            assert torch.allclose(got, want, atol=0.05 * want.abs().max().item()), (name, fused)


def test_fused_layer_has_the_eager_layers_gradients(gt):
    """The fused permute/unpermute (gathers both ways, custom backward) differentiate as the eager
    ops do: same gradients w.r.t. the input, the router and both expert weights (FP32, exact)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    T, d, E, k, f = 24, 8, 4, 2, 6
    # a soft route bias: the router gets a gradient
    case, hist, assign, bias = _small_layer(gt, torch, T, d, E, k, f, seed=1, route_bias=3.0)
    leaves = [torch.randn(T, d), torch.randn(E, d) / 3, torch.randn(E, 2 * f, d) / 3, torch.randn(E, d, f) / 3]
    dout = torch.randn(T, d)
    grouped = gt._grouped_fns(torch, hist, "loop")["loop:torch.mm"]
    grads = []
    for fused in (None, gt.FusedKernels(torch, compile=False)):
        xs = [t.clone().requires_grad_(True) for t in leaves]
        out = gt.make_layer(torch, case, "softmax", grouped, fused=fused)(xs[0], xs[1], bias, xs[2], xs[3])
        grads.append((out, torch.autograd.grad(out, xs, dout)))
    (out_e, g_e), (out_f, g_f) = grads
    torch.testing.assert_close(out_f, out_e, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_f, g_e):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_case_option_gives_one_shape(gt):
    case = gt.parse_case("hidden=2048,experts=16,top_k=8,tokens=16384,expert_ffn=768")
    assert (case.hidden, case.experts, case.top_k, case.tokens, case.expert_ffn, case.routing) == \
        (2048, 16, 8, 16384, 768, "balanced")
    assert gt.parse_case("hidden=8,experts=4,top_k=4,tokens=16,expert_ffn=8,routing=zipf:1.0").routing == "zipf:1.0"


@pytest.mark.parametrize("spec, says", [
    ("hidden=2048", "missing ['expert_ffn', 'experts', 'tokens', 'top_k']"),
    ("hidden=8,experts=4,top_k=2,tokens=16,expert_ffn=8,heads=2", "unknown ['heads']"),
    ("hidden=8,experts=4,top_k=5,tokens=16,expert_ffn=8", "top_k <= experts"),
    ("hidden=x,experts=4,top_k=2,tokens=16,expert_ffn=8", "invalid literal"),
])
def test_case_option_names_what_is_wrong(gt, spec, says):
    with pytest.raises(SystemExit, match=None) as info:
        gt.parse_case(spec)
    assert says in str(info.value) and spec in str(info.value)
