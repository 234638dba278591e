"""ECMP rows computed on demand (only the (source, destination) edge-switch pairs asked for, only
the sources asked for) equal, bit for bit, the rows of the full per-destination table."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from simmoe.topology.loader import load_topology
from simmoe.topology.model import _ecmp_rows, _ecmp_toward


def full_table(topo) -> sp.csr_matrix:
    """Rows t * E + s from every source at once (the sparse-product path), as the table was
    built before rows were computed on demand."""
    r = topo._routing()
    blocks = [_ecmp_toward(r, t, topo.num_links) for t in range(len(r.edge_nodes))]
    return sp.vstack(blocks, format="csr")


def same_rows(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
    return (a.shape == b.shape and np.array_equal(a.indptr, b.indptr)
            and np.array_equal(a.indices, b.indices) and np.array_equal(a.data, b.data))


@pytest.mark.parametrize("name, nodes", [("h800-deepseek", 64), ("h100-ndr-fattree-2to1", None),
                                         ("a100-hdr", None), ("two-sites-wan", None)])
def test_rows_on_demand_equal_the_full_table_in_any_request_order(name, nodes):
    topo = load_topology(name, nodes=nodes) if nodes else load_topology(name)
    r = topo._routing()
    num_edges = len(r.edge_nodes)
    if num_edges < 2:
        pytest.skip("one edge switch: no fabric rows")
    ref = full_table(topo)
    rng = np.random.default_rng(7)
    every = np.arange(num_edges * num_edges)
    # Several requests: later ones add sources to destinations already cached (the merge path).
    for k in (3, 17, num_edges, num_edges * num_edges):
        pairs = np.unique(rng.choice(every, size=min(k, len(every)), replace=False))
        got = _ecmp_rows(r, pairs, topo.num_links)
        want = sp.vstack([ref[pairs], sp.csr_matrix((1, topo.num_links))], format="csr")
        assert got.has_sorted_indices
        assert same_rows(got, want)


def test_route_matrix_does_not_depend_on_what_was_routed_before():
    rng = np.random.default_rng(3)
    fresh = load_topology("h800-deepseek", nodes=32)
    src = rng.integers(0, fresh.num_gpus, 500)
    dst = rng.integers(0, fresh.num_gpus, 500)
    want = fresh.route_matrix(src, dst)
    warm = load_topology("h800-deepseek", nodes=32)
    for lo in range(0, 500, 37):  # route piecewise first: the cache grows source by source
        warm.route_matrix(src[lo:lo + 37], dst[lo:lo + 37])
    assert same_rows(warm.route_matrix(src, dst), want)
