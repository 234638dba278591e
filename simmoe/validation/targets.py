"""The suite's accuracy targets, checked on a run's rows (docs/validation.md, "Targets").

Per-case tolerances live in the case files; these are the suite-level goals they roll up to:
every end-to-end case within 10% on tokens/s/GPU and their median |error| within 5%, every
collective row within 15%, every energy row within 2%. A target over rows that did not run (a
``--only`` or ``--fast`` subset without such cases) is reported as not evaluated, never as met.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Optional

from simmoe.validation.suite import ValidationRow

E2E_METRIC = "tokens_per_s_per_gpu"


@dataclass(frozen=True)
class Target:
    name: str
    rule: str  # what is required, in words
    limit_pct: float
    value_pct: Optional[float]  # the achieved figure (max or median |error|); None: no row to judge
    rows: int  # rows the figure is computed over
    met: Optional[bool]  # None: not evaluated here

    def as_dict(self) -> dict:
        """For JSON: an infinite figure (a failed run) becomes null."""
        value = self.value_pct if self.value_pct is None or math.isfinite(self.value_pct) else None
        return {"name": self.name, "rule": self.rule, "limit_pct": self.limit_pct, "value_pct": value,
                "rows": self.rows, "met": self.met}


def _errors(rows: Iterable[ValidationRow], kind: str, metric: str | None = None) -> list[float]:
    """|error %| of the checked rows of a kind (failed runs count as infinitely wrong)."""
    out = []
    for r in rows:
        if r.kind != kind or r.tolerance_pct is None or (metric is not None and r.metric != metric):
            continue
        out.append(float("inf") if r.error_pct is None else abs(r.error_pct))
    return out


def _target(name: str, rule: str, limit_pct: float, errors: list[float], reduce) -> Target:
    if not errors:
        return Target(name, rule, limit_pct, None, 0, None)
    value = reduce(errors)
    return Target(name, rule, limit_pct, value, len(errors), value <= limit_pct)


def targets(rows: list[ValidationRow]) -> list[Target]:
    """The four suite targets over ``rows`` (known gaps included: they are misses, not exemptions)."""
    e2e = _errors(rows, "end_to_end", E2E_METRIC)
    return [
        _target("end-to-end each", "every end-to-end case within 10% on tokens/s/GPU", 10.0, e2e, max),
        _target("end-to-end median", "median |error| of the end-to-end cases within 5%", 5.0, e2e,
                statistics.median),
        _target("collectives", "every collective row within 15%", 15.0, _errors(rows, "collective"), max),
        _target("energy", "every energy row within 2%", 2.0, _errors(rows, "energy"), max),
    ]


def format_targets(ts: list[Target], *, subset: bool = False) -> list[str]:
    """One line per target for the terminal; ``subset``: the run left cases out (--only, --fast)."""
    lines = ["targets over this run's cases only (--only / --fast)"] if subset else []
    for t in ts:
        if t.met is None:
            lines.append(f"target {t.name}: not evaluated (no such rows in this run) - {t.rule}")
            continue
        kind = "median" if "median" in t.name else "max"
        lines.append(f"target {t.name}: {'met' if t.met else 'MISSED'} - {kind} |error| {t.value_pct:.1f}% "
                     f"over {t.rows} row{'s' if t.rows != 1 else ''} (limit {t.limit_pct:g}%)")
    return lines
