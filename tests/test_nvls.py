"""NVLS (NVLink SHARP) all-reduce: per-port traffic S(n+1)/n each way, NCCL's NVLS efficiency.

Oracles by hand on the toy DGX network of tests/test_collectives.py, and against the published
H100/H800 nccl-tests figures that docs/network.md cites.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simmoe.errors import InputError
from simmoe.network import collectives as C
from simmoe.network.backends import AnalyticalBackend, FlowBackend
from simmoe.network.params import NVLS_EFFICIENCY_HOPPER
from tests.test_collectives import BW_ONLY, GiB, NV, ToyDGX


@pytest.mark.parametrize("n", [2, 5, 8])
@pytest.mark.parametrize("backend", [FlowBackend, AnalyticalBackend])
def test_nvls_time_is_port_traffic_over_the_nvls_rate(n, backend):
    topo = ToyDGX(1, 8)
    res = backend(topo, BW_ONLY).collective_time_s(
        C.build("allreduce", range(n), GiB, algorithm="nvls",
                nvlink_domain_of_gpu=topo.nvlink_domain_of_gpu))
    port_bytes = GiB * (n + 1) / n
    assert res.time_s == pytest.approx(port_bytes / (NV * NVLS_EFFICIENCY_HOPPER), rel=1e-9)
    # busbw = 2(n-1)/n * algbw = 2(n-1)/(n+1) * the NVLS port rate
    assert res.busbw_GBps == pytest.approx(
        2 * (n - 1) / (n + 1) * NV * NVLS_EFFICIENCY_HOPPER / 1e9, rel=1e-9)


def test_nvls_beats_ring_at_eight_gpus_by_the_traffic_ratio_times_efficiency():
    topo = ToyDGX(1, 8)
    backend = FlowBackend(topo, BW_ONLY)
    ring = backend.collective_time_s(C.allreduce(range(8), GiB)).time_s
    nvls = backend.collective_time_s(C.nvls_allreduce(
        range(8), GiB, nvlink_domain_of_gpu=topo.nvlink_domain_of_gpu)).time_s
    # ring moves 2*7/8 S per port at NV; NVLS 9/8 S at 0.85 NV
    assert ring / nvls == pytest.approx((14 / 8) / (9 / 8) * NVLS_EFFICIENCY_HOPPER, rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 8), size=st.floats(1.0, 1e10))
def test_every_port_carries_s_times_n_plus_one_over_n_each_way(n, size):
    coll = C.nvls_allreduce(range(n), size, nvlink_domain_of_gpu=np.zeros(8, dtype=int))
    flows = coll.stages[0].flows
    out_b = np.bincount(flows.src, flows.size_bytes, minlength=n)
    in_b = np.bincount(flows.dst, flows.size_bytes, minlength=n)
    np.testing.assert_allclose(out_b, size * (n + 1) / n, rtol=1e-12)
    np.testing.assert_allclose(in_b, size * (n + 1) / n, rtol=1e-12)
    assert coll.meta["engine"] == "nvls" and coll.stages[0].latency_steps == 2


def test_shipped_h100_and_h800_nodes_match_published_nvls_busbw():
    from simmoe.network.params import DEFAULT_NETWORK_PARAMS
    from simmoe.topology.loader import load_topology

    # (topology, GPUs, published busbw GB/s): nccl-tests issues 212/267/347 and NVIDIA/nccl
    # issue 1455 (H100, 8 and 5 GPUs), NVIDIA/nccl issue 1374 (H800).
    for name, n, published in (("h100-ndr-rail", 8, 480), ("h100-ndr-rail", 5, 420),
                               ("h800-deepseek", 8, 215)):
        topo = load_topology(name, nodes=1)
        coll = C.build("allreduce", range(n), 4 * GiB, algorithm="nvls",
                       nvlink_domain_of_gpu=topo.nvlink_domain_of_gpu)
        busbw = FlowBackend(topo, DEFAULT_NETWORK_PARAMS).collective_time_s(coll).busbw_GBps
        assert busbw == pytest.approx(published, rel=0.03), (name, n)


def test_nvls_refuses_gpus_of_two_nvlink_domains():
    topo = ToyDGX(2, 4)
    with pytest.raises(InputError, match="one NVLink domain"):
        C.build("allreduce", range(8), GiB, algorithm="nvls",
                nvlink_domain_of_gpu=topo.nvlink_domain_of_gpu)


@pytest.mark.parametrize("op,algorithm,match", [("all_gather", "nvls", "all-reduce only"),
                                                ("allreduce", "tree", "unknown collective algorithm")])
def test_unsupported_algorithms_are_named(op, algorithm, match):
    with pytest.raises(InputError, match=match) as err:
        C.build(op, range(8), GiB, algorithm=algorithm, nvlink_domain_of_gpu=np.zeros(8, dtype=int))
    assert err.value.field == "algorithm"
