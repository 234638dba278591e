"""How expert popularity moves over a training run.

All policies are deterministic functions of (base popularity, step): the randomness of a run lives
in the base popularity (seeded per layer) and in the per-micro-batch draws.

- ``none``: static, p(step) = p0.
- ``collapse`` (no balancing): load drifts onto ``collapse_experts`` hot experts,
  p(step) = (1 - b(step)) p0 + b(step) q, q uniform on the hot set, b(step) = b_max (1 - e^{-step/tau});
  b_max makes the hot set hold ``collapse_share`` of the load in the limit.
- ``aux_loss`` and ``bias_balancing``: imbalance decays toward a residual level,
  p(step) = u + a(step) (p0 - u), a(step) = a_res + (1 - a_res) e^{-step/tau}, u uniform;
  a_res makes max(p)/mean(p) equal ``residual_max_over_mean`` in the limit (a_res = 1 when p0 is
  already more balanced than that). Mixing toward uniform keeps which experts are hot.

Defaults (``DRIFT_DEFAULTS``) are assumptions, documented with the evidence behind them in
docs/routing.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simmoe.errors import InputError

DRIFT_KINDS = ("none", "collapse", "aux_loss", "bias_balancing")

# ASSUMPTIONS (see docs/routing.md, "Drift"): time constants and residual levels are not published
# as such; these are round numbers placed inside what the cited papers report.
DRIFT_DEFAULTS: dict[str, dict[str, float | None]] = {
    "none": {"tau_steps": None, "residual_max_over_mean": None, "collapse_share": None},
    "collapse": {"tau_steps": 2000.0, "residual_max_over_mean": None, "collapse_share": 0.9},
    "aux_loss": {"tau_steps": 500.0, "residual_max_over_mean": 1.25, "collapse_share": None},
    "bias_balancing": {"tau_steps": 100.0, "residual_max_over_mean": 1.05, "collapse_share": None},
}


@dataclass(frozen=True)
class DriftPolicy:
    kind: str = "none"
    tau_steps: float | None = None
    residual_max_over_mean: float | None = None
    collapse_share: float | None = None
    collapse_experts: int | None = None  # None = top_k (each token's k picks collapse together)

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise InputError("unknown drift policy", field="drift", value=self.kind,
                             allowed=", ".join(DRIFT_KINDS))
        d = DRIFT_DEFAULTS[self.kind]
        for name in ("tau_steps", "residual_max_over_mean", "collapse_share"):
            if getattr(self, name) is None and d[name] is not None:
                object.__setattr__(self, name, d[name])
        if self.tau_steps is not None and not self.tau_steps > 0:
            raise InputError("drift time constant must be > 0 steps", field="drift.tau_steps",
                             value=self.tau_steps, allowed="> 0")
        r = self.residual_max_over_mean
        if r is not None and not r >= 1.0:
            raise InputError("residual max/mean load must be >= 1", value=r,
                             field="drift.residual_max_over_mean", allowed=">= 1.0")
        c = self.collapse_share
        if c is not None and not 0.0 < c <= 1.0:
            raise InputError("collapse share must be in (0, 1]", field="drift.collapse_share",
                             value=c, allowed="0 < share <= 1")
        if self.collapse_experts is not None and self.collapse_experts < 1:
            raise InputError("collapse_experts must be >= 1", field="drift.collapse_experts",
                             value=self.collapse_experts, allowed=">= 1")

    @property
    def is_static(self) -> bool:
        return self.kind == "none"

    def apply(self, p0: np.ndarray, step: int, *, top_k: int,
              tie_break: np.ndarray | None = None) -> np.ndarray:
        """Popularity at ``step`` from base popularity ``p0``. ``tie_break`` (a permutation of the
        experts) decides which equally popular experts collapse first; None = by index."""
        p0 = np.asarray(p0, dtype=float)
        if self.kind == "none" or step <= 0:
            return p0
        n = p0.size
        decay = np.exp(-step / self.tau_steps)
        if self.kind == "collapse":
            m = min(n, self.collapse_experts or top_k)
            key = np.zeros(n) if tie_break is None else np.argsort(tie_break).astype(float)
            hot = np.lexsort((key, -p0))[:m]
            q = np.zeros(n)
            q[hot] = 1.0 / m
            s0 = p0[hot].sum()
            b_max = 0.0 if s0 >= 1.0 else float(np.clip((self.collapse_share - s0) / (1 - s0), 0, 1))
            b = b_max * (1.0 - decay)
            return (1.0 - b) * p0 + b * q
        u = np.full(n, 1.0 / n)
        excess = n * p0.max() - 1.0
        a_res = 1.0 if excess <= self.residual_max_over_mean - 1.0 else (
            (self.residual_max_over_mean - 1.0) / excess)
        a = a_res + (1.0 - a_res) * decay
        return u + a * (p0 - u)
