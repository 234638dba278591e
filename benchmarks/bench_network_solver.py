"""Benchmark: route build, max-min solve and fluid completion of a skewed all-to-all-v on a fat-tree.

Cluster: DGX H100 servers (8 GPUs, NVLink) on a non-blocking NDR fat-tree of 64-port switches
(two tiers up to 2048 GPUs, three above), built by simmoe.topology.loader from a generated
topology file. Traffic: every GPU sends to every other GPU; per-pair bytes = lognormal(sigma=1)
noise x a Zipf(0.8) popularity of the destination (hot experts), scaled to 256 MiB sent per GPU
on average. Seeded, so runs repeat.

Two paths, same rates:

- factored (default): ``Topology.route_factors`` (per flow: source access row, leaf pair,
  destination access row; ECMP fractions per leaf pair with identical fabric columns merged) and
  the max-min solver working on the factors.
- csr (``--path csr``, the earlier way): ``Topology.route_matrix`` (every flow's full ECMP row,
  built block by block), identical link columns merged by fingerprint, then the solver on the CSR.

Columns: routes = building the routes (topology code, first call: includes the topology's ECMP
tables); setup = preparing the solver (MaxMinProblem: merging identical link columns, transposes);
solve = one max-min solve of all flows (setup and solve: best of --repeat runs); exact / tol = full completion simulation (FluidNetwork) with merge_rel_tol 0 and 1e-3, with
the number of re-solves; dev = largest relative difference of a flow's finish time between the
two. Times are wall seconds, with process (CPU) seconds in brackets: the machine may be shared.
The exact simulation is skipped above --exact-max-flows (printed as "skip").

    .venv/bin/python benchmarks/bench_network_solver.py [--gpus 64 512 2048 8192] [--path csr]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from simmoe.network.fluid import FluidNetwork
from simmoe.network.maxmin import MaxMinProblem, link_signatures, merge_identical_links
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


class Timer:
    """Wall and process time of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def __str__(self) -> str:
        return f"{self.wall:.4f} [{self.cpu:.4f}]"


def merged_routes(topo, src, dst, cap, rng):
    """The csr path: route matrix with identical link columns merged, block by block."""
    blocks, sig = [], np.zeros((topo.num_links, 3))
    per_gpu = max(1, BLOCK_NNZ // 70 // topo.num_gpus)  # ~70 nnz per route at most
    for lo in range(0, topo.num_gpus, per_gpu):
        sel = (src >= lo) & (src < lo + per_gpu)
        block = topo.route_matrix(src[sel], dst[sel]).tocsr()
        sig += link_signatures(block, rng.uniform(1.0, 2.0, (block.shape[0], 2)))
        blocks.append(block)
    nnz_full = sum(b.nnz for b in blocks)
    keep, merged_cap = merge_identical_links(sig, cap)
    routes = sp.vstack([b[:, keep] for b in blocks]).tocsr()
    return routes, merged_cap, nnz_full


def simulate(routes, size, cap, tol):
    net = FluidNetwork(cap, merge_rel_tol=tol, record_flow_finish=True)
    with Timer() as t:
        net.add(routes, size, 0.0, tag=0)
        while np.isfinite(net.next_event_s()):
            net.advance(net.next_event_s())
    return net.flow_finish_s, t, net.n_solves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, nargs="+", default=[64, 512, 2048, 8192])
    ap.add_argument("--path", choices=["factored", "csr"], default="factored")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--repeat", type=int, default=3, help="setup and solve: best of this many")
    ap.add_argument("--exact-max-flows", type=int, default=20_000)
    ap.add_argument("--tol-max-flows", type=int, default=20_000)
    ap.add_argument("--max-route-nnz", type=float, default=4e8,
                    help="csr path: skip sizes whose full ECMP route matrix would exceed this")
    args = ap.parse_args()

    print(f"all-to-all-v, lognormal x Zipf(0.8) sizes, {BYTES_PER_GPU / 2**20:.0f} MiB/GPU; "
          f"path {args.path}; tol = merge_rel_tol {args.tol:g}; wall s [cpu s]")
    print(f"{'GPUs':>5} {'flows':>9} {'links':>6} {'nnz':>22} {'routes s':>17} {'setup s':>17} "
          f"{'solve s':>17} {'rounds':>6} {'exact s':>17} {'#solve':>6} {'tol s':>17} "
          f"{'#solve':>6} {'dev':>8}")
    for num_gpus in args.gpus:
        rng = np.random.default_rng(num_gpus)
        topo = build_topology(num_gpus)
        src, dst, size = alltoallv_sizes(num_gpus, rng)
        cap = topo.link_capacity_bytes_per_s * 1.0
        if args.path == "csr":
            # Estimate the full route size from one source GPU before committing memory to it.
            est_nnz = topo.route_matrix(src[src == 0], dst[src == 0]).nnz * num_gpus
            if est_nnz > args.max_route_nnz:
                print(f"{num_gpus:>5} {len(src):>9} {topo.num_links:>6}  skipped: the full ECMP "
                      f"route matrix would hold ~{est_nnz:.1e} non-zeros "
                      f"(~{est_nnz * 12 / 1e9:.0f} GB)", flush=True)
                continue
            with Timer() as t_routes:
                routes, solver_cap, nnz_full = merged_routes(topo, src, dst, cap, rng)
            nnz = f"{nnz_full:.2e} -> {routes.nnz:.2e}"
        else:
            with Timer() as t_routes:
                routes = topo.route_factors(src, dst)
            solver_cap = cap
            table_nnz = sum({id(t): t.nnz for t in routes.tables}.values())
            nnz = f"{3 * len(src):.2e} keys+{table_nnz:.1e}"
        t_setup = t_solve = None
        mult, bound = np.ones(len(src)), np.full(len(src), np.inf)
        for _ in range(args.repeat):  # keep the fastest: the first run also pays page faults
            with Timer() as t1:
                problem = MaxMinProblem(routes, solver_cap)
            with Timer() as t2:
                problem.solve(mult, bound)
            t_setup = t1 if t_setup is None or t1.wall < t_setup.wall else t_setup
            t_solve = t2 if t_solve is None or t2.wall < t_solve.wall else t_solve

        exact = tolerant = None
        cell_exact, cell_tol, dev = f"{'skip':>17} {'':>6}", f"{'skip':>17} {'':>6}", f"{'':>8}"
        if len(src) <= args.exact_max_flows:
            exact, t, n = simulate(routes, size, solver_cap, 0.0)
            cell_exact = f"{str(t):>17} {n:>6}"
        if len(src) <= args.tol_max_flows:
            tolerant, t, n = simulate(routes, size, solver_cap, args.tol)
            cell_tol = f"{str(t):>17} {n:>6}"
        if exact is not None and tolerant is not None:
            dev = f"{np.max(np.abs(tolerant - exact) / exact):>8.1e}"
        print(f"{num_gpus:>5} {len(src):>9} {topo.num_links:>6} {nnz:>22} {str(t_routes):>17} "
              f"{str(t_setup):>17} {str(t_solve):>17} {problem.rounds:>6} {cell_exact} "
              f"{cell_tol} {dev}", flush=True)
        del routes, problem


if __name__ == "__main__":
    main()
