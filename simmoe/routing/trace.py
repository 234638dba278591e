"""Replay of measured expert counts from a Parquet file.

Columns: ``layer`` (int, MoE-layer index), ``expert`` (int, 0..E-1), ``tokens`` (number of
token-expert assignments, >= 0); optional ``step`` (int). One row per (step, layer, expert); experts
that are absent count as 0. The replayed popularity of a layer is its counts over their sum. With a
``step`` column, step s uses the rows of the largest trace step <= s (the first trace step before
that), so a short trace can drive a long run piecewise-constantly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simmoe.errors import InputError

REQUIRED_COLUMNS = ("layer", "expert", "tokens")


@dataclass(frozen=True)
class ExpertTrace:
    path: str
    layers: np.ndarray  # sorted layer ids present in the file
    steps: np.ndarray  # sorted trace steps; [0] when the file has no step column
    counts: np.ndarray  # (len(steps), len(layers), num_experts) float
    step_column: bool = False  # the file had a step column (popularity then varies by step)

    def popularity(self, layer: int, step: int = 0) -> np.ndarray:
        where = np.searchsorted(self.layers, layer)
        if where >= self.layers.size or self.layers[where] != layer:
            raise InputError(f"the trace has no rows for MoE layer {layer}", file=self.path,
                             field="layer", value=layer,
                             allowed=f"layers present: {_short(self.layers)}")
        s = max(int(np.searchsorted(self.steps, step, side="right")) - 1, 0)
        c = self.counts[s, where]
        total = c.sum()
        if total <= 0:
            raise InputError(f"layer {layer} has no tokens at trace step {int(self.steps[s])}",
                             file=self.path, field="tokens", allowed="a positive sum per layer")
        return c / total


def _short(a: np.ndarray) -> str:
    vals = ", ".join(str(int(v)) for v in a[:8])
    return vals + (", ..." if a.size > 8 else "")


def load_expert_trace(path: str | Path, num_experts: int) -> ExpertTrace:
    """Read and validate a trace; every problem is an InputError naming the file and column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = str(path)
    if not Path(path).is_file():
        raise InputError("expert trace file not found", file=name,
                         allowed="a Parquet file with columns layer, expert, tokens[, step]")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read as Parquet ({exc})", file=name,
                         allowed="a Parquet file with columns layer, expert, tokens[, step]") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)}", file=name,
                         field=missing[0], allowed="columns layer, expert, tokens and optional step; "
                         f"found {', '.join(table.column_names) or 'none'}")
    if table.num_rows == 0:
        raise InputError("the trace has no rows", file=name, allowed="at least one row per layer")
    cols = {}
    int_cols = ["layer", "expert"] + (["step"] if "step" in table.column_names else [])
    for col in int_cols + ["tokens"]:
        arr = table.column(col)
        if arr.null_count:
            raise InputError(f"{arr.null_count} null value(s)", file=name, field=col,
                             allowed="no nulls")
        kind = arr.type
        if col in int_cols and not pa.types.is_integer(kind):
            raise InputError(f"column type is {kind}", file=name, field=col,
                             allowed="an integer column")
        if col == "tokens" and not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise InputError(f"column type is {kind}", file=name, field=col,
                             allowed="an integer or float column")
        cols[col] = arr.to_numpy()
    tokens = cols["tokens"].astype(float)
    bad = ~np.isfinite(tokens) | (tokens < 0)
    if bad.any():
        raise InputError("token counts must be finite and >= 0", file=name, field="tokens",
                         value=float(tokens[bad][0]), allowed=">= 0")
    expert = cols["expert"].astype(np.int64)
    out = (expert < 0) | (expert >= num_experts)
    if out.any():
        raise InputError("expert id out of range", file=name, field="expert",
                         value=int(expert[out][0]), allowed=f"0..{num_experts - 1}")
    layer = cols["layer"].astype(np.int64)
    if (layer < 0).any():
        raise InputError("layer index must be >= 0", file=name, field="layer",
                         value=int(layer[layer < 0][0]), allowed=">= 0")
    has_step = "step" in cols
    step = cols["step"].astype(np.int64) if has_step else np.zeros_like(layer)
    if (step < 0).any():
        raise InputError("step must be >= 0", file=name, field="step",
                         value=int(step[step < 0][0]), allowed=">= 0")
    layers, li = np.unique(layer, return_inverse=True)
    steps, si = np.unique(step, return_inverse=True)
    flat = (si * layers.size + li) * num_experts + expert
    _, first, dup = np.unique(flat, return_index=True, return_counts=True)
    if (dup > 1).any():
        row = int(first[np.argmax(dup > 1)])
        raise InputError(f"duplicate rows for (step={int(step[row])}, layer={int(layer[row])}, "
                         f"expert={int(expert[row])})", file=name, field="expert",
                         allowed="one row per (step, layer, expert)")
    counts = np.zeros(steps.size * layers.size * num_experts)
    counts[flat] = tokens
    return ExpertTrace(name, layers, steps, counts.reshape(steps.size, layers.size, num_experts),
                       step_column=has_step)
