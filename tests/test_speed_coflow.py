"""The coflow network's shortcuts give exactly what the plain formulas give: MoE link-load inputs
transposed block by block, the longest route latency from per-latency input groups, and rows
whose potential comes from one batched product."""

from __future__ import annotations

import numpy as np
import pytest

from simmoe.network.coflow import CoflowFabric, CoflowRow, MoeLinkLoads
from simmoe.topology.loader import load_topology


def _tokens(rng, b, n, nodes):
    t = rng.integers(0, 50, (b, n, n))
    t[rng.random((b, n, n)) < 0.3] = 0
    t[0] = 0  # a micro-batch that moves nothing
    t[1, :, :] = 0
    t[1, 0, n - 1] = 5  # one pair only
    tn = rng.integers(0, 60, (b, n, nodes))
    tn[0] = 0
    return t, tn


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # the empty micro-batch
@pytest.mark.parametrize("name, nodes, hier", [("h800-deepseek", 4, True), ("h800-deepseek", 4, False),
                                               ("h100-roce-4x100g", 2, True)])
@pytest.mark.parametrize("combine", [False, True])
def test_batched_loads_equal_the_plain_formulas_bit_for_bit(name, nodes, hier, combine):
    topo = load_topology(name, nodes=nodes)
    server = np.asarray(topo.server_of_gpu)
    gpus = np.arange(topo.num_gpus)
    lk = MoeLinkLoads(topo, gpus, server, hier)
    rng = np.random.default_rng(11)
    t, tn = _tokens(rng, 19, len(gpus), lk.n_nodes)
    x = lk.inputs(t, tn)
    plain = t.reshape(len(t), -1).T.astype(np.float64)
    if lk.hier:
        plain = np.concatenate([plain, tn.reshape(len(t), -1).T.astype(np.float64)])
    assert x.flags.c_contiguous and np.array_equal(x, plain)

    used, K, lat, weight, groups = lk._tables[combine]
    assert groups is not None  # the grouped path is what this test checks
    _, frac, latency, total = lk.loads_batch(None, None, combine, x)
    want_latency = np.max(np.where(x > 0, lat[:, None], 0.0), axis=0)
    assert np.array_equal(latency, want_latency)
    want = np.asarray(K @ x).T
    with np.errstate(divide="ignore", invalid="ignore"):
        want /= np.where(total > 0, total, np.inf)[:, None]
    assert np.array_equal(frac, want)

    fabric = CoflowFabric(topo)
    rows = fabric.moe_rows(lk, x, combine, None)
    assert rows[0][0] is None
    for (row, tot, lt), f, tt, l in zip(rows, frac, total, latency):
        assert tot == tt and lt == l
        if row is None:
            continue
        pos = f > 0
        ref = CoflowRow(used[pos], f[pos], row.rate_alone_bytes_per_s)
        assert np.array_equal(row.cols, ref.cols) and np.array_equal(row.vals, ref.vals)
        assert np.array_equal(row.potential, ref.potential)
        assert row.rate_alone_bytes_per_s == float(1.0 / np.max(
            f[pos] / fabric.capacity_bytes_per_s[used[pos]]))
