"""`simmoe topo show|check FILE`: what a topology is, and proof that it can carry traffic."""

from __future__ import annotations

import json
from pathlib import Path

import typer

topo_app = typer.Typer(help="Inspect and check cluster topologies (topologies/*.yaml).",
                       no_args_is_help=True)


@topo_app.command("show")
def show(
    file: str = typer.Argument(..., help="Topology file, or the name of a shipped one."),
    nodes: int = typer.Option(None, "--nodes", help="Use only the first N nodes."),
    png: Path = typer.Option(None, "--png", help="Also draw the graph (servers collapsed)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """GPUs, nodes, link classes (count, GB/s per direction, latency), bisection per GPU."""
    from simmoe.topology.loader import load_topology
    from simmoe.topology.report import summarize

    topo = load_topology(file, nodes=nodes)
    summary = summarize(topo)
    if png is not None:
        from simmoe.topology.draw import draw_png

        draw_png(topo, png)
        summary["png"] = str(png)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{summary['name']}  ({summary['file']})")
    print(f"  GPUs {summary['gpus']} x {summary['gpu_model']}, servers {summary['servers']}, "
          f"NVLink domains {summary['nvlink_domains']}, NICs {summary['nics']}")
    switches = ", ".join(f"{k} {v}" for k, v in summary["switches"].items()) or "none"
    print(f"  switches: {switches}")
    print(f"  {'link class':<10} {'links':>7} {'GB/s per dir':>14} {'latency us':>11}")
    for row in summary["link_classes"]:
        lo, hi = row["GBps_per_direction_min"], row["GBps_per_direction_max"]
        rate = f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"
        lat_lo, lat_hi = row["latency_us_min"], row["latency_us_max"]
        lat = f"{lat_lo:.3g}" if lat_lo == lat_hi else f"{lat_lo:.3g}-{lat_hi:.3g}"
        print(f"  {row['link_class']:<10} {row['links']:>7} {rate:>14} {lat:>11}")
    print(f"  NIC bandwidth per GPU: {summary['nic_GBps_per_gpu']:.3g} GB/s per direction")
    print(f"  bisection bandwidth per GPU: {summary['bisection_GBps_per_gpu']:.3g} GB/s "
          "(min cut between the two halves of the servers, one direction)")
    if png is not None:
        print(f"  drawing: {png}")


@topo_app.command("check")
def check(
    file: str = typer.Argument(..., help="Topology file, or the name of a shipped one."),
    nodes: int = typer.Option(None, "--nodes", help="Check only the first N nodes."),
) -> None:
    """Prove every GPU reaches every other GPU and no link has zero capacity (exit 0 or 2)."""
    from simmoe.topology.loader import load_topology

    topo = load_topology(file, nodes=nodes)  # raises TopologyError -> `error: ...`, exit 2
    print(f"OK {topo.name}: {topo.num_gpus} GPUs in {topo.num_servers} servers, "
          f"{topo.num_links} links, every GPU reaches every other GPU")


def register(app: typer.Typer) -> None:
    app.add_typer(topo_app, name="topo")
