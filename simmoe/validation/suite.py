"""Run validation cases, compare with published figures, write validation.parquet.

One row per (case, metric): :class:`ValidationRow`, the one schema of validation.parquet
(docs/validation.md). ``within`` is null on informational rows (no published value or no
tolerance); a case whose run fails (bad input aside) gets one row per metric with
``status = "error"`` and counts as outside.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Optional

from simmoe.atomic import string_metadata, write_parquet_atomic
from simmoe.errors import InputError
from simmoe.validation.cases import Case
from simmoe.validation.runners import run_case

SCHEMA = "simmoe.validation.ValidationRow v1"


@dataclass(frozen=True)
class ValidationRow:
    case_id: str
    kind: str  # end_to_end, collective, kernel, energy, analytical
    covers: str  # id in shared/validation/public_cases.yaml; "" for cases added beyond it
    metric: str
    label: str  # what the table shows
    unit: str
    published: Optional[float]  # null: informational row
    simulated: Optional[float]  # null when the run failed
    error_pct: Optional[float]  # 100 (simulated / published - 1)
    tolerance_pct: Optional[float]  # null: informational
    within: Optional[bool]  # |error_pct| <= tolerance_pct; null on informational rows
    status: str  # within, outside, known_gap, info, error
    fast: bool
    wall_s: float  # seconds the case's run took (shared by its rows)
    source: str
    notes: str  # the case's notes, then what the run reported


COLUMNS = tuple(f.name for f in fields(ValidationRow))


def compare(published: float | None, simulated: float | None, tolerance_pct: float | None,
            ) -> tuple[float | None, bool | None]:
    """(error %, within) of one metric; within is None where nothing is checked."""
    if published is None or simulated is None or not math.isfinite(simulated):
        return None, (None if published is None or tolerance_pct is None else False)
    error = 100.0 * (simulated / published - 1.0) if published != 0 else math.inf
    if tolerance_pct is None:
        return error, None
    return error, abs(error) <= tolerance_pct


def rows_of(case: Case, values: dict[str, float] | None, notes: list[str], wall_s: float) -> list[ValidationRow]:
    rows = []
    note = " | ".join([n for n in [case.notes.strip(), *notes] if n])
    for m in case.metrics:
        sim = None if values is None else values.get(m.name)
        error, within = compare(m.published, sim, m.tolerance_pct)
        if values is None:
            status = "error"
        elif within is None:
            status = "info"
        elif within:
            status = "within"
        else:
            status = "known_gap" if case.known_gap else "outside"
        rows.append(ValidationRow(
            case_id=case.id, kind=case.kind, covers=case.covers or "", metric=m.name, label=m.label or m.name,
            unit=m.unit, published=m.published, simulated=sim, error_pct=error, tolerance_pct=m.tolerance_pct,
            within=within if values is not None else (False if m.tolerance_pct is not None else None),
            status=status, fast=case.fast, wall_s=wall_s, source=case.source,
            notes=note + (f" | known gap: {case.known_gap}" if case.known_gap else "")))
    return rows


def run_cases(cases: list[Case], *, steps: int | None = None,
              progress: Callable[[Case], None] | None = None) -> list[ValidationRow]:
    """Run every case in order. Input errors propagate (the case file is wrong); any other
    failure of a run becomes error rows, so one broken case does not hide the others."""
    rows: list[ValidationRow] = []
    for case in cases:
        if progress is not None:
            progress(case)
        t0 = time.perf_counter()
        try:
            out = run_case(case, steps=steps)
            values, notes = out.values, out.notes
        except InputError:
            raise
        except Exception as err:  # noqa: BLE001 - reported in the row, never swallowed silently
            values, notes = None, [f"run failed: {type(err).__name__}: {err}"]
        rows += rows_of(case, values, notes, time.perf_counter() - t0)
    return rows


def all_within(rows: list[ValidationRow]) -> bool:
    """True when no checked row is outside its tolerance (known gaps count as outside)."""
    return all(r.within is not False for r in rows)


def metadata(*, only: list[str] | None, fast: bool, steps: int | None) -> dict[str, str]:
    import yaml

    from simmoe import __version__
    from simmoe.network.params import DEFAULT_NETWORK_PARAMS
    from simmoe.paths import PACKAGE_DATA_DIR

    roofline = PACKAGE_DATA_DIR / "roofline.yaml"
    return {
        "simmoe_version": __version__,
        "schema": SCHEMA,
        "network_params_yaml": yaml.safe_dump(asdict(DEFAULT_NETWORK_PARAMS), sort_keys=False),
        "roofline_params_yaml": roofline.read_text() if roofline.is_file() else "",
        "calibration_id": "",  # validation uses the default roofline model, never a profile
        "only": ",".join(only or []),
        "fast_only": str(fast).lower(),
        "steps_override": "" if steps is None else str(steps),
    }


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def rows_as_dicts(rows: list[ValidationRow]) -> list[dict]:
    """Rows for JSON: NaN and infinities become null."""
    return [{k: _clean(v) for k, v in asdict(r).items()} for r in rows]


def write_validation_parquet(rows: list[ValidationRow], path: str | Path, meta: dict[str, str]) -> Path:
    """Write ``rows`` to ``path`` atomically (temporary file beside it, then ``os.replace``), with
    string key-value metadata: the conventions of simmoe.results.write_steps_parquet."""
    import pyarrow as pa

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    types = {"published": pa.float64(), "simulated": pa.float64(), "error_pct": pa.float64(),
             "tolerance_pct": pa.float64(), "wall_s": pa.float64(), "within": pa.bool_(), "fast": pa.bool_()}
    types = {c: types.get(c, pa.string()) for c in COLUMNS}
    arrays = [pa.array([_clean(getattr(r, c)) for r in rows], type=types[c]) for c in COLUMNS]
    schema = pa.schema([pa.field(c, types[c]) for c in COLUMNS],
                       metadata=string_metadata(meta))
    table = pa.Table.from_arrays(arrays, schema=schema)
    write_parquet_atomic(table, path)
    return path
