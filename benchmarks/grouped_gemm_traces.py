"""The traced BF16 grouped GEMMs of the MoE-layer ground truth against simmoe's roofline, per case.

Reads the committed kernel traces of the 20 fused MoE-layer cases (results/gpu-ground-truth/
h100-kernels-fused.parquet, one traced forward + backward each; no GPU needed) and prints, for
each case, the traced time over the roofline's for the four expert GEMMs: fc1 and fc2 forward, and
the two backward GEMMs of each (dgrad + wgrad, two kernels each in the trace, in the order the
layer runs them). The roofline is simmoe's for the case's own routing draw, at ``--clocks``.

    python benchmarks/grouped_gemm_traces.py [--clocks sustained|burst]

A ratio above 1 is a kernel slower than the roofline says. docs/calibration.md reads the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEASURED = HERE.parent / "results" / "gpu-ground-truth"
OPS = ("fc1", "fc2", "fc2.bwd", "fc1.bwd")  # in the order the layer's grouped kernels run


def _ground_truth():
    spec = importlib.util.spec_from_file_location("moe_layer_ground_truth", HERE / "moe_layer_ground_truth.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def traced_over_roofline(clocks: str = "sustained") -> list[dict]:
    """One row per case: rows per expert at the balanced load and, per op, traced / roofline."""
    import pyarrow.parquet as pq

    from simmoe.calibration import load_compute_model

    gt = _ground_truth()
    kernels = pq.read_table(MEASURED / "h100-kernels-fused.parquet").to_pylist()
    model = load_compute_model("H100-SXM", None, dtypes=("bf16",), clocks=clocks)
    out = []
    for row in gt.read_rows(str(MEASURED / "h100-fused-preheat.csv")):
        case = gt.Case(*(row[f.name] for f in dataclasses.fields(gt.Case)))
        hist = gt.routing_histogram(case.experts, case.tokens, case.top_k, case.routing)
        predicted = gt.predict(case, hist, model)["per_op"]
        # CUTLASS grouped kernels of the trace: fc1, fc2, then two per backward GEMM (fc2, fc1)
        grouped = [k["duration_us"] * 1e-6 for k in kernels
                   if k["case"] == row["case"] and k["kernel"].startswith("_ZN7cutlass")]
        if len(grouped) != 6:
            raise ValueError(f"{row['case']}: {len(grouped)} grouped GEMM kernels traced, expected 6")
        traced = dict(zip(OPS, (grouped[0], grouped[1], grouped[2] + grouped[3], grouped[4] + grouped[5])))
        out.append({"case": row["case"], "rows_per_expert": case.tokens * case.top_k // case.experts,
                    **{op: traced[op] / predicted[f"L0.moe.{op}"] for op in OPS}})
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clocks", choices=("sustained", "burst"), default="sustained")
    rows = traced_over_roofline(ap.parse_args(argv).clocks)
    print(f"{'case':28s} {'rows/expert':>11s} " + " ".join(f"{op:>8s}" for op in OPS))
    for r in rows:
        print(f"{r['case']:28s} {r['rows_per_expert']:11d} " + " ".join(f"{r[op]:8.2f}" for op in OPS))
    for label, keep in (("all", lambda r: True), ("<= 256 rows/expert", lambda r: r["rows_per_expert"] <= 256),
                        (">= 1024 rows/expert", lambda r: r["rows_per_expert"] >= 1024)):
        sel = [r for r in rows if keep(r)]
        print(f"median, {label} ({len(sel)}): " + ", ".join(
            f"{op} {statistics.median(r[op] for r in sel):.2f}" for op in OPS))
    return rows


if __name__ == "__main__":
    main()
