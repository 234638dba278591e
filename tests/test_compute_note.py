"""The extrapolation note: a roofline run on a GPU none of roofline.yaml's measurements came from
says so (run metadata, --json summary); anchored GPUs and calibration profiles carry no note."""

from __future__ import annotations

from simmoe.compute.params import load_roofline_params
from simmoe.engine.api import extrapolation_note


def test_anchor_gpus_are_the_measured_ones():
    anchors = load_roofline_params().anchor_gpus
    assert anchors == ("H100-SXM", "H800-SXM")  # roofline.yaml: HBM and BF16 on H100, FP8 on H800


def test_note_only_off_the_anchors():
    anchors = ["H100-SXM", "H800-SXM"]
    assert extrapolation_note({"kind": "roofline", "device": "H800-SXM", "anchored_on": anchors}) == ""
    note = extrapolation_note({"kind": "roofline", "device": "B200", "anchored_on": anchors})
    assert "B200" in note and "H100-SXM, H800-SXM" in note and "--calibration" in note
    assert extrapolation_note({"kind": "profile", "device": "B200"}) == ""  # measured on the GPU itself


def test_run_metadata_and_summary(tmp_path):
    from simmoe.cli.run import run_scenario

    b200 = run_scenario("default", out=str(tmp_path / "b"), steps=1, progress=False,
                        overrides=["cluster.topology=b200-ndr-rail"])
    assert "extrapolated to B200" in b200["compute_note"]
    h100 = run_scenario("default", out=str(tmp_path / "h"), steps=1, progress=False)
    assert "compute_note" not in h100
