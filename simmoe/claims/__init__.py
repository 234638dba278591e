"""Rules of thumb about MoE training cost, put to the test (docs/claims.md, `simmoe claims`).

Each claim is a module with ``check(ctx) -> ClaimResult``: it reads its definition
(scenarios/claims/sweeps/cNN-*.yaml: the claim's inputs, sweeps and tolerances), computes with
simmoe's own engine, forecast, routing, workload, memory and network code, and derives its verdict
from the numbers by a rule written next to it."""

from __future__ import annotations

import importlib
import time
from typing import Callable, Sequence

from simmoe.claims.common import Context
from simmoe.claims.result import NOT_COMPUTED, VERDICTS, ClaimResult, Metric
from simmoe.errors import SimmoeError

MODULES = {1: "c01_budget", 2: "c02_weak_network", 3: "c03_alltoall", 4: "c04_flop_reduction", 5: "c05_weights",
           6: "c06_mixtral", 7: "c07_capacity", 8: "c08_hierarchical", 9: "c09_bandwidth", 10: "c10_small_models",
           11: "c11_run_cost", 12: "c12_energy"}


def claim_check(number: int) -> Callable[[Context], ClaimResult]:
    return importlib.import_module(f"simmoe.claims.{MODULES[number]}").check


def run_claims(ctx: Context, only: Sequence[int] | None = None,
               progress: Callable[[int, ClaimResult], None] | None = None) -> list[ClaimResult]:
    """Check the claims (all, or ``only``) in order; each result carries its wall time. A claim whose
    input is invalid (a SimmoeError, e.g. a scenario being edited) is reported as not computed, with
    the error, and the others still run."""
    results = []
    for n in sorted(only or MODULES):
        t0 = time.perf_counter()
        try:
            res = claim_check(n)(ctx)
        except SimmoeError as err:
            res = ClaimResult(number=n, title=f"claim {n}", claim="", metrics=[], verdict=NOT_COMPUTED,
                              finding=f"could not be computed: {err}", rule="", headline="error")
        res.wall_s = time.perf_counter() - t0
        results.append(res)
        if progress is not None:
            progress(n, res)
    return results


__all__ = ["MODULES", "VERDICTS", "ClaimResult", "Context", "Metric", "claim_check", "run_claims"]
