"""Benchmark: max-min solve and fluid completion of a skewed all-to-all-v on a fat-tree.

Cluster: DGX H100 servers (8 GPUs, NVLink) on a non-blocking NDR fat-tree of 64-port switches
(two tiers up to 2048 GPUs, three above), built by simmoe.topology.loader from a generated
topology file. Traffic: every GPU sends to every other GPU; per-pair bytes = lognormal(sigma=1)
noise x a Zipf(0.8) popularity of the destination (hot experts), scaled to 256 MiB sent per GPU
on average. Seeded, so runs repeat.

Columns: routes = building the route matrix (topology code, not the solver); merge = merging
identical link columns (exact, see maxmin.merge_identical_links), done once per traffic matrix
and block by block so the full ECMP route matrix never needs a second copy; solve = one max-min
solve of all flows (maxmin_rates on the merged routes); exact / tol = full completion simulation
(simulate_flows) with merge_rel_tol 0 and 1e-3, with the number of re-solves; dev = largest
relative difference of a flow's finish time between the two. The exact simulation re-solves once
per distinct finish time and is skipped above --exact-max-flows (printed as "skip").

    .venv/bin/python benchmarks/bench_network_solver.py [--gpus 64 512 2048] [--tol 1e-3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from simmoe.network.fluid import FluidNetwork
from simmoe.network.maxmin import link_signatures, maxmin_rates, merge_identical_links
from simmoe.topology.loader import load_topology

TOPOLOGY_YAML = """\
name: bench-dgx-h100-fattree
description: {nodes} x DGX H100, {tiers}-tier non-blocking NDR fat-tree (benchmark)
node: dgx-h100
nodes: {nodes}
fabric: {{type: fat-tree, tiers: {tiers}, switch_radix: 64, oversubscription: 1}}
"""
BYTES_PER_GPU = 256 * 2**20
# Route rows per block while building: bounds the transient memory of the full ECMP rows.
BLOCK_NNZ = 20_000_000


def build_topology(num_gpus: int):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        # Two tiers of 64-port switches reach 2048 NICs; beyond that the fabric needs a third.
        tiers = 2 if num_gpus <= 2048 else 3
        path.write_text(TOPOLOGY_YAML.format(nodes=num_gpus // 8, tiers=tiers))
        return load_topology(path)


def alltoallv_sizes(num_gpus: int, rng: np.random.Generator):
    """(src, dst, size_bytes) of every ordered GPU pair."""
    popularity = 1.0 / np.arange(1, num_gpus + 1) ** 0.8
    popularity = popularity[rng.permutation(num_gpus)]
    src, dst = np.meshgrid(np.arange(num_gpus), np.arange(num_gpus), indexing="ij")
    off = src != dst
    src, dst = src[off], dst[off]
    size = rng.lognormal(0.0, 1.0, len(src)) * popularity[dst]
    size *= BYTES_PER_GPU * num_gpus / size.sum()
    return src, dst, size


def merged_routes(topo, src, dst, cap, rng):
    """Route matrix with identical link columns merged, built and fingerprinted block by block."""
    blocks, sig = [], np.zeros((topo.num_links, 3))
    per_gpu = max(1, BLOCK_NNZ // 70 // topo.num_gpus)  # ~70 nnz per route at most
    t_routes = t_merge = 0.0
    for lo in range(0, topo.num_gpus, per_gpu):
        sel = (src >= lo) & (src < lo + per_gpu)
        t0 = time.perf_counter()
        block = topo.route_matrix(src[sel], dst[sel]).tocsr()
        t1 = time.perf_counter()
        sig += link_signatures(block, rng.uniform(1.0, 2.0, (block.shape[0], 2)))
        t_merge += time.perf_counter() - t1
        t_routes += t1 - t0
        blocks.append(block)
    nnz_full = sum(b.nnz for b in blocks)
    t0 = time.perf_counter()
    keep, merged_cap = merge_identical_links(sig, cap)
    routes = sp.vstack([b[:, keep] for b in blocks]).tocsr()
    t_merge += time.perf_counter() - t0
    return routes, merged_cap, nnz_full, t_routes, t_merge


def simulate(routes, size, cap, tol):
    t0 = time.perf_counter()
    net = FluidNetwork(cap, merge_rel_tol=tol, record_flow_finish=True)
    net.add(routes, size, 0.0, tag=0)
    while np.isfinite(net.next_event_s()):
        net.advance(net.next_event_s())
    return net.flow_finish_s, time.perf_counter() - t0, net.n_solves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, nargs="+", default=[64, 512, 2048, 8192])
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--exact-max-flows", type=int, default=20_000)
    ap.add_argument("--tol-max-flows", type=int, default=20_000)
    ap.add_argument("--max-route-nnz", type=float, default=4e8,
                    help="skip sizes whose full ECMP route matrix would exceed this many non-zeros")
    args = ap.parse_args()

    head = (f"{'GPUs':>5} {'flows':>9} {'links':>6} {'nnz/flow':>13} {'routes s':>9} "
            f"{'merge s':>8} {'solve s':>8} {'exact s':>9} {'#solve':>7} "
            f"{'tol s':>8} {'#solve':>7} {'dev':>8}")
    print(f"all-to-all-v, lognormal x Zipf(0.8) sizes, {BYTES_PER_GPU / 2**20:.0f} MiB/GPU; "
          f"tol = merge_rel_tol {args.tol:g}; nnz/flow = full -> merged")
    print(head)
    for num_gpus in args.gpus:
        rng = np.random.default_rng(num_gpus)
        topo = build_topology(num_gpus)
        src, dst, size = alltoallv_sizes(num_gpus, rng)
        # Estimate the full route size from one source GPU before committing memory to it.
        probe = topo.route_matrix(src[src == 0], dst[src == 0])
        est_nnz = probe.nnz * num_gpus
        if est_nnz > args.max_route_nnz:
            print(f"{num_gpus:>5} {len(src):>9} {topo.num_links:>6}  skipped: the full ECMP route "
                  f"matrix would hold ~{est_nnz:.1e} non-zeros (~{est_nnz * 12 / 1e9:.0f} GB)")
            continue
        cap = topo.link_capacity_bytes_per_s * 1.0
        routes, mcap, nnz_full, t_routes, t_merge = merged_routes(topo, src, dst, cap, rng)

        t0 = time.perf_counter()
        maxmin_rates(routes, mcap)
        t_solve = time.perf_counter() - t0

        exact = tolerant = None
        cell_exact, cell_tol, dev = f"{'skip':>9} {'':>7}", f"{'skip':>8} {'':>7}", f"{'':>8}"
        if len(src) <= args.exact_max_flows:
            exact, t, n = simulate(routes, size, mcap, 0.0)
            cell_exact = f"{t:>9.3f} {n:>7}"
        if len(src) <= args.tol_max_flows:
            tolerant, t, n = simulate(routes, size, mcap, args.tol)
            cell_tol = f"{t:>8.3f} {n:>7}"
        if exact is not None and tolerant is not None:
            dev = f"{np.max(np.abs(tolerant - exact) / exact):>8.1e}"
        nnz = f"{nnz_full / len(src):.1f}->{routes.nnz / len(src):.1f}"
        print(f"{num_gpus:>5} {len(src):>9} {topo.num_links:>6} {nnz:>13} {t_routes:>9.2f} "
              f"{t_merge:>8.2f} {t_solve:>8.4f} {cell_exact} {cell_tol} {dev}", flush=True)


if __name__ == "__main__":
    main()
