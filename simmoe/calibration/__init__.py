"""Calibration: measure kernel times on a device (`simmoe calibrate`), keep them as a Parquet
profile, and answer the engine's compute questions from it (docs/calibration.md).

PyTorch is needed only to measure (simmoe.calibration.bench imports it lazily); loading a profile
needs numpy, scipy and pyarrow.
"""

from simmoe.calibration.grid import CPU, FULL, GRIDS, QUICK, Grid, expert_histogram
from simmoe.calibration.model import ProfileModel, load_compute_model
from simmoe.calibration.roofline_profile import roofline_profile
from simmoe.calibration.schema import (
    ARROW_SCHEMA,
    COLUMN_NAMES,
    GEMM_OPS,
    OPS,
    REQUIRED_OPS,
    Profile,
    read_profile,
    rows_to_table,
    scale_times,
    write_profile,
)

__all__ = [
    "ARROW_SCHEMA",
    "COLUMN_NAMES",
    "CPU",
    "FULL",
    "GEMM_OPS",
    "GRIDS",
    "OPS",
    "QUICK",
    "REQUIRED_OPS",
    "Grid",
    "Profile",
    "ProfileModel",
    "expert_histogram",
    "load_compute_model",
    "read_profile",
    "roofline_profile",
    "rows_to_table",
    "scale_times",
    "write_profile",
]
