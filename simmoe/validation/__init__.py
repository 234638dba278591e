"""simmoe's validation suite: published measurements, re-run with simmoe's one parameter set
(docs/validation.md). Case files live in scenarios/validation/."""

from simmoe.validation.cases import CASE_DIR, KINDS, METRICS, Case, case_files, load_case, load_cases
from simmoe.validation.runners import Outcome, budget_arithmetic, run_case
from simmoe.validation.suite import (
    COLUMNS,
    SCHEMA,
    ValidationRow,
    all_within,
    compare,
    metadata,
    rows_as_dicts,
    run_cases,
    write_validation_parquet,
)

__all__ = ["CASE_DIR", "COLUMNS", "KINDS", "METRICS", "SCHEMA", "Case", "Outcome", "ValidationRow", "all_within",
           "budget_arithmetic", "case_files", "compare", "load_case", "load_cases", "metadata", "rows_as_dicts",
           "run_case", "run_cases", "write_validation_parquet"]
