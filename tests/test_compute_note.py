"""The extrapolation note: a roofline run on a GPU none of roofline.yaml's measurements came from
says so (run metadata, --json summary); anchored GPUs and calibration profiles carry no note."""

from __future__ import annotations

from simmoe.compute.params import load_roofline_params
from simmoe.engine.api import extrapolation_note


def test_anchor_gpus_are_the_measured_ones():
    params = load_roofline_params()
    # roofline.yaml: HBM and BF16 on H100, FP8 on H800; Blackwell GEMMs on B200 (published rates)
    assert params.anchor_gpus("hopper") == ("H100-SXM", "H800-SXM")
    assert params.anchor_gpus("ampere") == ("H100-SXM", "H800-SXM")  # no Ampere anchors: the default
    assert params.anchor_gpus("blackwell") == ("B200", "H100-SXM")


def test_note_only_off_the_anchors():
    anchors = ["H100-SXM", "H800-SXM"]
    assert extrapolation_note({"kind": "roofline", "device": "H800-SXM", "anchored_on": anchors}) == ""
    note = extrapolation_note({"kind": "roofline", "device": "B200", "anchored_on": anchors})
    assert "B200" in note and "H100-SXM, H800-SXM" in note and "--calibration" in note
    assert extrapolation_note({"kind": "profile", "device": "B200"}) == ""  # measured on the GPU itself


def test_run_metadata_and_summary(tmp_path):
    from simmoe.cli.run import run_scenario

    # GB200: GEMM efficiency solved on B200 measurements, carried over by datasheet peaks
    gb200 = run_scenario("default", out=str(tmp_path / "g"), steps=1, progress=False,
                         overrides=["cluster.topology=gb200-nvl72", "cluster.nodes=4"])
    assert "extrapolated to GB200" in gb200["compute_note"] and "B200, H100-SXM" in gb200["compute_note"]
    for name, topology in (("h", None), ("b", "cluster.topology=b200-ndr-rail")):  # anchored GPUs
        result = run_scenario("default", out=str(tmp_path / name), steps=1, progress=False,
                              overrides=[topology] if topology else [])
        assert "compute_note" not in result
