"""Bad topology files: every error names the file, the field path, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from simmoe.cli import main
from simmoe.errors import TopologyError
from simmoe.topology.loader import gpus_in_topology, load_topology

GOOD = """
name: good
node: dgx-h100
nodes: 4
fabric: {type: fat-tree, tiers: 2, switch_radix: 64, oversubscription: 1}
"""

TWO_SITES = """
sites:
  - {name: east, node: dgx-h100, nodes: 2, fabric: {type: rail-optimized}}
  - {name: west, node: dgx-h100, nodes: 2, fabric: {type: rail-optimized}}
WAN
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def error_of(path: Path, **kwargs) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        load_topology(path, **kwargs)
    err = info.value
    assert str(path) in str(err)
    return err


def test_missing_field(tmp_path):
    err = error_of(write(tmp_path, GOOD.replace("nodes: 4\n", "")))
    assert err.field == "nodes" and "missing" in str(err)


def test_missing_nested_field(tmp_path):
    err = error_of(write(tmp_path, GOOD.replace("type: fat-tree, ", "")))
    assert err.field == "fabric.type"


def test_wrong_type(tmp_path):
    err = error_of(write(tmp_path, GOOD.replace("nodes: 4", "nodes: four")))
    assert err.field == "nodes" and err.value == "four" and "integer" in str(err)


def test_wrong_type_of_a_section(tmp_path):
    err = error_of(write(tmp_path, GOOD.replace("fabric: {", "fabric: [").replace("1}", "1]")))
    assert err.field == "fabric" and "mapping" in str(err)


@pytest.mark.parametrize("value", [-450, 0])
def test_non_positive_bandwidth(tmp_path, value):
    text = GOOD.replace("node: dgx-h100",
                        f"node: {{template: dgx-h100, nvlink_GBps_per_direction: {value}}}")
    err = error_of(write(tmp_path, text))
    assert err.field == "node.nvlink_GBps_per_direction" and err.value == value
    assert "> 0" in err.allowed


def test_zero_wan_bandwidth(tmp_path):
    text = TWO_SITES.replace("WAN", "wan: {links: 2, gbps_per_link: 0, latency_s: 0.002}")
    err = error_of(write(tmp_path, text))
    assert err.field == "wan.gbps_per_link" and err.value == 0


def test_negative_latency(tmp_path):
    text = GOOD.replace("oversubscription: 1", "oversubscription: 1, hop_latency_s: -1e-6")
    err = error_of(write(tmp_path, text))
    assert err.field == "fabric.hop_latency_s"


def test_oversubscription_below_one(tmp_path):
    err = error_of(write(tmp_path, GOOD.replace("oversubscription: 1", "oversubscription: 0.5")))
    assert err.field == "fabric.oversubscription" and err.value == 0.5


def test_unknown_node_template_lists_the_allowed_ones(tmp_path):
    err = error_of(write(tmp_path, GOOD.replace("node: dgx-h100", "node: dgx-h200")))
    assert err.field == "node.template" and err.value == "dgx-h200"
    assert "dgx-h100" in err.allowed and "gb200-nvl72" in err.allowed


def test_unknown_gpu_lists_the_allowed_ones(tmp_path):
    text = GOOD.replace("node: dgx-h100", "node: {template: dgx-h100, gpu: H300-SXM}")
    err = error_of(write(tmp_path, text))
    assert err.field == "node.gpu" and err.value == "H300-SXM" and "H100-SXM" in err.allowed


def test_unknown_nic_lists_the_allowed_ones(tmp_path):
    text = GOOD.replace("node: dgx-h100", "node: {template: dgx-h100, nic: CX9}")
    err = error_of(write(tmp_path, text))
    assert err.field == "node.nic" and "ConnectX-7-NDR" in err.allowed


def test_unknown_fabric_type_and_misspelt_field(tmp_path):
    err = error_of(write(tmp_path, GOOD.replace("type: fat-tree", "type: dragonfly")))
    assert err.field == "fabric.type" and "rail-optimized" in err.allowed
    err = error_of(write(tmp_path, GOOD.replace("tiers: 2", "teirs: 2")))
    assert err.field == "fabric.teirs" and "tiers" in err.allowed


def test_disconnected_two_sites_without_a_wan(tmp_path):
    err = error_of(write(tmp_path, TWO_SITES.replace("WAN", "")))
    assert err.field == "wan" and "disconnected" in str(err)


def test_disconnected_zero_width_fabric(tmp_path):
    # Radix 16: one server per leaf, two leaves, and no spine between them.
    text = GOOD.replace("switch_radix: 64, oversubscription: 1",
                        "switch_radix: 16, oversubscription: 1, spines: 0")
    err = error_of(write(tmp_path, text))
    assert err.field == "fabric" and "disconnected" in str(err)


def test_unreadable_yaml(tmp_path):
    err = error_of(write(tmp_path, "name: [unclosed\nnodes: 4\n"))
    assert "YAML" in str(err) and "line" in str(err)


def test_not_a_mapping(tmp_path):
    err = error_of(write(tmp_path, "- just\n- a list\n"))
    assert "mapping" in str(err)


def test_missing_file(tmp_path):
    with pytest.raises(TopologyError) as info:
        load_topology(tmp_path / "nope.yaml")
    assert "not found" in str(info.value)


def test_more_nodes_than_the_topology_has(tmp_path):
    err = error_of(write(tmp_path, GOOD), nodes=5)
    assert err.field == "cluster.nodes" and err.value == 5 and err.allowed == "1..4"


def test_fabric_too_big_for_two_tiers(tmp_path):
    text = GOOD.replace("nodes: 4", "nodes: 300")
    err = error_of(write(tmp_path, text))
    assert err.field == "fabric.tiers" and "3" in err.allowed


def test_gpus_in_topology_validates_too(tmp_path):
    assert gpus_in_topology(write(tmp_path, GOOD)) == 32
    with pytest.raises(TopologyError):
        gpus_in_topology(write(tmp_path, GOOD.replace("nodes: 4", "nodes: -1")))


# ------------------------------------------------------------------------------- the CLI

def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code


def test_cli_check_exits_0_on_a_good_file(tmp_path, capsys):
    assert run_cli(["topo", "check", str(write(tmp_path, GOOD))]) == 0
    assert capsys.readouterr().out.startswith("OK")


def test_cli_check_exits_2_on_a_disconnected_file(tmp_path, capsys):
    assert run_cli(["topo", "check", str(write(tmp_path, TWO_SITES.replace("WAN", "")))]) == 2
    assert "wan" in capsys.readouterr().err


def test_cli_show_json_and_png(tmp_path, capsys):
    import json

    png = tmp_path / "t.png"
    assert run_cli(["topo", "show", "two-sites-wan", "--json", "--png", str(png)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["gpus"] == 128
    assert summary["bisection_GBps_per_gpu"] == pytest.approx(4 * 100 / 8 / 64)
    assert png.stat().st_size > 0 and png.read_bytes()[:4] == b"\x89PNG"
