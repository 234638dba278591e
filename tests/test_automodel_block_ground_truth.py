"""benchmarks/automodel_block_ground_truth.py: which tokens an EP rank receives under the cyclic
gate (by hand), the hand-written autograd pieces against plain PyTorch, a CPU smoke run."""

from __future__ import annotations


import numpy as np
import pytest

@pytest.fixture(scope="module")
def gt(load_benchmark):
    return load_benchmark("automodel_block_ground_truth")


def test_received_tokens_follow_the_cyclic_gate(gt):
    # Qwen3-30B at EP8: 16 experts per rank, token t -> experts 8t..8t+7 (mod 128): every token's
    # experts sit on one rank; rank 0 gets tokens t = 0, 1 (mod 16) of each of the 8 sources.
    qwen = gt.shape_of("qwen3-30b-a3b", tiny=False)
    src, local = qwen.received()
    assert len(src) == qwen.tokens and local.shape == (qwen.tokens, 8) and (local >= 0).all()
    assert set(np.unique(src % 16)) == {0, 1}
    # DeepSeek-V3 at EP64: 4 experts per rank, so each token reaches two ranks with 4 experts each.
    ds = gt.shape_of("deepseek-v3", tiny=False)
    src, local = ds.received()
    assert len(src) == 2 * ds.tokens and local.shape[1] == 4 and (local >= 0).all()
    # Kimi K2 at EP32: 12 experts per rank; of every 48 tokens (384 / 8) rank 0 gets t = 0 (8
    # experts) and t = 1 (experts 8..11, 4 of them); 4096 = 85 x 48 + 16 tokens: 86 of each, per
    # source, 32 sources: 32 x 86 x 12 = 33024 rows.
    kimi = gt.shape_of("kimi-k2", tiny=False)
    src, local = kimi.received()
    counts = (local >= 0).sum(axis=1)
    assert (counts == 8).sum() == (counts == 4).sum() == 32 * 86 and counts.sum() == 33024


@pytest.mark.parametrize("case", ["qwen3-30b-a3b", "kimi-k2"])
def test_permute_pieces_are_adjoint_and_grouped_gemm_matches_torch(gt, case):
    torch = pytest.importorskip("torch")
    s = gt.shape_of(case, tiny=True)
    b = gt.Block(torch, s, torch.device("cpu"), compile=False, host_sync=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b.received_tokens, s.hidden, dtype=torch.float64, generator=g)
    y = torch.randn(b.rows, s.hidden, dtype=torch.float64, generator=g)
    # <P x, y> = <x, P^T y>: unpermute (a sum of a token's rows) is permute's adjoint
    assert float((b._permute(x) * y).sum()) == pytest.approx(float((x * b._unpermute(y)).sum()), rel=1e-5)
    a = torch.randn(b.rows, s.hidden, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(s.local_experts, s.hidden, 5, dtype=torch.float64, generator=g, requires_grad=True)
    out = b._gmm(a, w)
    dout = torch.randn_like(out)
    da, dw = torch.autograd.grad(out, (a, w), dout)
    ref = torch.cat([a[lo:hi] @ w[e] for e, lo, hi in b.bounds])
    ra, rw = torch.autograd.grad(ref, (a, w), dout)
    assert torch.equal(out, ref) and torch.allclose(da, ra) and torch.allclose(dw, rw)


def test_cpu_smoke_run_writes_rows(gt, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "rows.csv"
    rows = gt.main(["--device", "cpu", "--tiny", "--case", "deepseek-v3", "--warmup", "1", "--repeats", "1",
                    "--out", str(out)])
    assert out.is_file() and len(rows) == 1
    row = rows[0]
    assert row["tiny"] and row["measured_block_ms"] > 0
    # the prediction is the real scenario's block (not the tiny one): its classes add up
    parts = row["simmoe_gemm_ms"] + row["simmoe_attention_ms"] + row["simmoe_other_ms"]
    assert parts == pytest.approx(row["simmoe_block_ms"]) and row["simmoe_gemm_ms"] > row["simmoe_other_ms"]
