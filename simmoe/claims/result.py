"""What a claim's check returns: the numbers it computed and the verdict its rule derived from them."""

from __future__ import annotations

from dataclasses import dataclass, field

HOLDS = "holds"
HOLDS_ONLY_WHEN = "holds only when"
DOES_NOT_HOLD = "does not hold"
NOT_COMPUTED = "not computed"
VERDICTS = (HOLDS, HOLDS_ONLY_WHEN, DOES_NOT_HOLD, NOT_COMPUTED)


@dataclass(frozen=True)
class Metric:
    """One computed number, named in the field's words, with its unit."""

    name: str
    value: float
    unit: str = ""
    note: str = ""


@dataclass
class ClaimResult:
    """One claim checked: the claim as commonly written, the numbers simmoe computed, the verdict.

    ``verdict`` is one of VERDICTS; ``finding`` completes it in words ("holds only when <finding>");
    ``rule`` states the explicit rule in code that turned the numbers into the verdict."""

    number: int
    title: str
    claim: str
    metrics: list[Metric]
    verdict: str
    finding: str
    rule: str
    headline: str = ""  # the key numbers in one line, for the summary table
    table: list[dict] = field(default_factory=list)  # optional rows for the report (a sweep)
    assumptions: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # scenario / sweep files used
    plot: str | None = None  # PNG path, relative to the report's folder, when one was drawn
    wall_s: float = 0.0

    def metric(self, name: str) -> float:
        return next(m.value for m in self.metrics if m.name == name)
