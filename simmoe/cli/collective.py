"""`simmoe collective`: time one isolated collective on a topology, in NCCL's conventions."""

from __future__ import annotations

import json
import re

import typer

from simmoe.errors import InputError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)(?:e(\d+))?\s*([kmgt]?)(i?)(b?)\s*$",
                      re.IGNORECASE)
_SIZE_ALLOWED = "a byte count such as 4096, 1e6, 512KiB, 256MiB, 1GiB, 2GB or 256M (K/M/G/T " \
                "alone are binary, as in nccl-tests)"


def parse_size_bytes(text: str, *, field: str = "--bytes") -> float:
    """'1GiB' -> 2**30, '1GB' -> 1e9, '256M' -> 256 * 2**20 (nccl-tests' -b), '4096' -> 4096."""
    match = _SIZE_RE.match(str(text))
    if not match:
        raise InputError("not a message size", field=field, value=text, allowed=_SIZE_ALLOWED)
    number, exponent, prefix, binary, unit_b = match.groups()
    value = float(number) * (10 ** int(exponent) if exponent else 1)
    power = "kmgt".find(prefix.lower()) + 1 if prefix else 0
    if binary and not prefix:
        raise InputError("not a message size", field=field, value=text, allowed=_SIZE_ALLOWED)
    # "MB" is decimal (SI); "MiB" and a bare "M" are binary.
    base = 1000.0 if (prefix and unit_b and not binary) else 1024.0
    size = value * base**power
    if size <= 0:
        raise InputError("message size must be > 0 bytes", field=field, value=text,
                         allowed=_SIZE_ALLOWED)
    return size


def _format_bytes(size: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size / scale:g} {unit}"
    return f"{size:g} B"


def run_collective(topology_path: str, op: str, gpus: int, size_text: str,
                   backend: str = "flow", algorithm: str = "ring") -> dict:
    """Parse, build, time; returns the summary the command prints."""
    from simmoe.network import collectives
    from simmoe.network.backends import BACKENDS, make_backend
    from simmoe.paths import resolve_topology
    from simmoe.topology.loader import load_topology

    if op not in collectives.OPS:
        raise InputError("unknown collective", field="--op", value=op,
                         allowed=", ".join(collectives.OPS))
    if backend not in BACKENDS:
        raise InputError("unknown network backend", field="--backend", value=backend,
                         allowed=", ".join(BACKENDS))
    size = parse_size_bytes(size_text)
    path = resolve_topology(topology_path, field="--topology")
    topo = load_topology(path)
    minimum = 2 if op == "p2p" else 1
    if not minimum <= gpus <= topo.num_gpus:
        raise InputError("GPU count does not fit the topology", field="--gpus", value=gpus,
                         allowed=f"{minimum}..{topo.num_gpus} (GPUs in {path.name})")
    group = list(range(gpus))  # the first N GPUs: whole nodes first, as a job scheduler would
    coll = collectives.build(op, group, size, server_of_gpu=topo.server_of_gpu,
                             algorithm=algorithm, nvlink_domain_of_gpu=topo.nvlink_domain_of_gpu)
    result = make_backend(backend, topo).collective_time_s(coll)
    out = result.as_dict()
    out.update({"topology": str(path), "bus_factor": coll.bus_factor, "algorithm": algorithm})
    return out


def register(app: typer.Typer) -> None:
    @app.command("collective")
    def collective(
        topology: str = typer.Option(..., "--topology",
                                     help="Topology YAML (path or name in topologies/)."),
        op: str = typer.Option(..., "--op", help="alltoall, alltoallv, allreduce, reduce_scatter, "
                               "all_gather, p2p or hierarchical_alltoall."),
        gpus: int = typer.Option(..., "--gpus",
                                 help="Number of GPUs (the first N of the topology)."),
        size: str = typer.Option(..., "--bytes", help="Per-rank message size as nccl-tests' "
                                 "--bytes: 4096, 256MiB, 1GiB, 2GB."),
        backend: str = typer.Option("flow", "--backend",
                                    help="flow (max-min fair flows) or analytical."),
        algorithm: str = typer.Option("ring", "--algorithm",
                                      help="ring, or nvls (NVLink SHARP all-reduce inside one "
                                      "NVLink domain), as NCCL_ALGO."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Time one collective and print time, algbw and busbw as nccl-tests does."""
        out = run_collective(topology, op, gpus, size, backend, algorithm)
        if as_json:
            print(json.dumps(out))
            return
        print(f"{out['op']} ({out['algorithm']}) over {out['n_gpus']} GPUs, {_format_bytes(out['size_bytes'])} per "
              f"rank, {out['backend']} backend ({out['topology']})")
        print(f"  time   {out['time_s'] * 1e3:10.3f} ms  (latency {out['latency_s'] * 1e6:.1f} us)")
        print(f"  algbw  {out['algbw_GBps']:10.2f} GB/s")
        print(f"  busbw  {out['busbw_GBps']:10.2f} GB/s  (algbw x {out['bus_factor']:.4f})")
