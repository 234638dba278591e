"""A profile generated from the roofline model (`simmoe calibrate --roofline GPU`).

Same grid and format as a measured profile, provenance ``datasheet-roofline``: it exercises the
format end to end without a GPU, and a measured profile can be compared with it row by row.
Loaded by ProfileModel, it reproduces the roofline exactly (every ratio is 1).
"""

from __future__ import annotations

import json

import pyarrow as pa

from simmoe.calibration.grid import FULL, Grid, expert_histogram, grid_cases
from simmoe.calibration.schema import COLLECTIVE_OPS, common_metadata, rows_to_table
from simmoe.compute.roofline import RooflineModel


def roofline_time_s(model: RooflineModel, case: dict) -> float:
    """The roofline's time for one profile row (the kernel the harness would have timed)."""
    op, dtype = case["op"], case["dtype"]
    if op == "gemm":
        return model.gemm_s(case["m"], case["n"], case["k"], dtype)
    if op in ("grouped_gemm", "grouped_gemm_wgrad"):
        tokens = expert_histogram(case["experts"], case["tokens_per_expert"], case["skew"])
        fn = model.grouped_gemm_s if op == "grouped_gemm" else model.grouped_gemm_wgrad_s
        return float(fn(tokens, case["n"], case["k"], dtype))
    if op in ("attention_fwd", "attention_fwd_bwd"):
        args = (case["batch"], case["seq_len"], case["heads"], case["head_dim"], case["head_dim"], case["causal"],
                dtype)
        forward = model.attention_s(*args, False)
        return forward if op == "attention_fwd" else forward + model.attention_s(*args, True)
    return model.memory_bound_s(case["bytes"], 1)


def roofline_profile(gpu_name: str, *, grid: Grid = FULL, command: str = "") -> tuple[pa.Table, dict[str, str]]:
    """Table and metadata (write with ``write_profile``) for ``gpu_name`` on ``grid``."""
    model = RooflineModel(gpu_name, field="--roofline", clocks="burst")  # a profile holds burst times
    dtypes = tuple(d for d in ("bf16", "fp8") if d in model.gemm_efficiency)
    rows = []
    for case in grid_cases(grid, dtypes):
        t = roofline_time_s(model, case)
        rows.append({**case, "impl": "roofline", "median_s": t, "p10_s": t, "p90_s": t, "n_repeats": 1})
    skipped = {op: "a roofline profile has no collectives (the network model times them)" for op in COLLECTIVE_OPS}
    if "fp8" not in dtypes:
        skipped["fp8"] = f"{gpu_name} has no FP8 tensor cores"
    metadata = {
        **common_metadata(command),
        "provenance": "datasheet-roofline",
        "device": gpu_name,
        "gpu": gpu_name,
        "sm_count": str(model.spec.sms),
        "driver": "",
        "cuda": "",
        "torch": "",
        "grid": grid.name,
        "dtypes": ",".join(dtypes),
        "roofline": model.identifier,
        "ops": json.dumps(sorted({r["op"] for r in rows})),
        "skipped": json.dumps(skipped),
    }
    return rows_to_table(rows), metadata
