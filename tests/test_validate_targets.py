"""Suite-level accuracy targets (simmoe.validation.targets) on hand-made rows: oracles by hand."""

from __future__ import annotations

import math

from simmoe.validation.suite import ValidationRow
from simmoe.validation.targets import format_targets, targets


def _row(kind: str, error_pct: float | None, *, metric: str = "tokens_per_s_per_gpu",
         tolerance_pct: float | None = 10.0, status: str = "within") -> ValidationRow:
    return ValidationRow(case_id=f"c{error_pct}", kind=kind, covers="", metric=metric, label=metric, unit="x",
                         published=100.0, simulated=None if error_pct is None else 100.0 + error_pct,
                         error_pct=error_pct, tolerance_pct=tolerance_pct,
                         within=None if error_pct is None else abs(error_pct) <= (tolerance_pct or 0),
                         status=status, fast=True, wall_s=0.0, source="s", notes="")


def _by_name(rows):
    return {t.name: t for t in targets(rows)}


def test_median_and_max_over_end_to_end_rows_only():
    rows = [_row("end_to_end", e) for e in (-3.9, -4.5, 17.1, 223.6)]
    rows += [_row("end_to_end", 40.0, metric="model_tflops_per_gpu", tolerance_pct=None, status="info"),
             _row("end_to_end", 99.0, metric="gpu_hours_per_trillion_tokens")]  # not the headline metric
    t = _by_name(rows)
    assert math.isclose(t["end-to-end median"].value_pct, (4.5 + 17.1) / 2)  # 10.8: missed
    assert t["end-to-end median"].met is False and t["end-to-end median"].rows == 4
    assert t["end-to-end each"].value_pct == 223.6 and t["end-to-end each"].met is False
    assert t["collectives"].met is None and t["energy"].met is None  # no such rows: not evaluated


def test_a_fifth_case_inside_five_percent_moves_the_median_to_it():
    rows = [_row("end_to_end", e) for e in (-3.9, -4.5, 1.2, 17.1, 223.6)]
    t = _by_name(rows)["end-to-end median"]
    assert t.value_pct == 4.5 and t.met is True


def test_collective_and_energy_limits_and_failed_runs():
    rows = [_row("collective", 12.6, metric="dispatch", tolerance_pct=15.0),
            _row("collective", -8.2, metric="combine", tolerance_pct=15.0),
            _row("energy", 0.2, metric="energy_mwh", tolerance_pct=2.0)]
    t = _by_name(rows)
    assert t["collectives"].value_pct == 12.6 and t["collectives"].met is True
    assert t["energy"].met is True
    failed = _by_name(rows + [_row("energy", None, metric="co2", tolerance_pct=2.0, status="error")])["energy"]
    assert failed.met is False and failed.as_dict()["value_pct"] is None  # a failed run never meets a target


def test_format_says_missed_and_not_evaluated():
    lines = format_targets(targets([_row("end_to_end", 17.1)]), subset=True)
    assert lines[0].startswith("targets over this run's cases only")
    assert "end-to-end each: MISSED" in lines[1] and "17.1%" in lines[1]
    assert "not evaluated" in lines[3] and "not evaluated" in lines[4]
