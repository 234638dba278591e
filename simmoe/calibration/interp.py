"""Tables on regular grids in log space, built once when a profile loads (docs/calibration.md).

A table holds ``log(measured_s / structure_s)`` at the measured shapes, where ``structure_s`` is
either the roofline's time of that shape (basis ``roofline-ratio``: the roofline carries tile and
wave quantization) or 1 (basis ``direct``: the measured time itself), and interpolates it in
``log(size)`` on each axis, piecewise linearly or with PCHIP (monotone piecewise cubic, tensor
product, resampled once at load onto a dense grid): both keep monotone data monotone along an axis
and pass through every measured point. Which basis and method a table uses is
chosen by leave-one-slice-out cross-validation on the measured grid (``fit_table``), and the error
of that choice is kept: it estimates how far the table can be off between measured shapes.

Outside the grid the coordinates are clamped (the nearest measured point); the model scales from
there by the roofline's ratio and never goes faster than the roofline (simmoe/calibration/model.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import NearestNDInterpolator, PchipInterpolator, RegularGridInterpolator, interp1d

METHODS = ("linear", "pchip")
REFINE = 8  # a PCHIP table is resampled at load to this many steps per measured interval


def _along_axes(axes_log: list[np.ndarray], values: np.ndarray, probes_log: list[np.ndarray], method: str):
    """Tensor-product interpolation of ``values`` (on the product of ``axes_log``) at the product of
    ``probes_log``, one axis at a time (probes already inside the axes' ranges)."""
    out = values
    for axis, (x, q) in enumerate(zip(axes_log, probes_log)):
        if x.size == 1:
            out = np.repeat(out, q.size, axis=axis)
        elif method == "pchip":
            out = PchipInterpolator(x, out, axis=axis)(q)
        else:
            out = interp1d(x, out, axis=axis, assume_sorted=True)(q)
    return out


class LogGrid:
    """``values`` on the product of ``axes`` (each sorted, distinct, > 0), interpolated in log(axis)
    and evaluated at points with one column per axis. A PCHIP table is resampled once, here, onto a
    dense grid; every evaluation is then a multilinear lookup (nothing is fitted per query)."""

    def __init__(self, axes: list[np.ndarray], values: np.ndarray, method: str = "linear") -> None:
        self.axes = [np.asarray(a, dtype=np.float64) for a in axes]
        values = np.asarray(values, dtype=np.float64).reshape([a.size for a in self.axes])
        missing = ~np.isfinite(values)
        if missing.all():
            raise ValueError("no measured point")
        if missing.any():
            # An incomplete product (a shape that failed to run): fill from the nearest measured
            # point in log space, so the table stays a regular grid.
            mesh = np.stack(np.meshgrid(*[np.log(a) for a in self.axes], indexing="ij"), axis=-1)
            nearest = NearestNDInterpolator(mesh[~missing], values[~missing])
            values = np.where(missing, nearest(mesh), values)
        self.values = values
        self.filled = int(missing.sum())
        self.method = method
        logs = [np.log(a) for a in self.axes]
        self._lo = np.array([x[0] for x in logs])
        self._hi = np.array([x[-1] for x in logs])
        if method == "pchip":
            dense = [np.unique(np.concatenate([np.linspace(x[i], x[i + 1], REFINE + 1) for i in range(x.size - 1)]))
                     if x.size > 1 else x for x in logs]
            table = _along_axes(logs, values, dense, "pchip")
        else:
            dense, table = logs, values
        self._keep = [i for i, x in enumerate(dense) if x.size > 1]
        squeezed = table
        for i in reversed(range(len(dense))):
            if i not in self._keep:
                squeezed = squeezed.take(0, axis=i)
        if self._keep:
            self._interp = RegularGridInterpolator([dense[i] for i in self._keep], squeezed, method="linear",
                                                   bounds_error=False, fill_value=None)
            self._const = None
        else:
            self._interp, self._const = None, float(squeezed)

    def clamp(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(points clamped into the grid's box, inside) in natural units."""
        pts = np.asarray(points, dtype=np.float64)
        logs = np.log(np.maximum(pts, np.finfo(np.float64).tiny))
        inside = np.all((logs >= self._lo - 1e-12) & (logs <= self._hi + 1e-12), axis=-1)
        return np.exp(np.clip(logs, self._lo, self._hi)), inside

    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(value at the clamped points, inside); ``inside`` is False where any coordinate lies outside
        its axis's measured range."""
        pts = np.asarray(points, dtype=np.float64)
        logs = np.log(np.maximum(pts, np.finfo(np.float64).tiny))
        inside = np.all((logs >= self._lo - 1e-12) & (logs <= self._hi + 1e-12), axis=-1)
        clamped = np.clip(logs, self._lo, self._hi)
        if self._interp is None:
            return np.full(pts.shape[:-1], self._const), inside
        flat = clamped[..., self._keep].reshape(-1, len(self._keep))
        return self._interp(flat).reshape(pts.shape[:-1]), inside


def product_axes(coords: np.ndarray) -> tuple[list[np.ndarray], tuple[np.ndarray, ...]]:
    """Distinct values per column of ``coords`` (n_rows, n_axes), and each row's grid index."""
    coords = np.asarray(coords, dtype=np.float64)
    axes = [np.unique(coords[:, j]) for j in range(coords.shape[1])]
    return axes, tuple(np.searchsorted(axes[j], coords[:, j]) for j in range(coords.shape[1]))


def gridded(coords: np.ndarray, values: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Scattered rows -> (axes, values on the product, NaN where not measured); repeated shapes are
    averaged (the values are logs, so this is a geometric mean of times)."""
    axes, index = product_axes(coords)
    shape = tuple(a.size for a in axes)
    total, count = np.zeros(shape), np.zeros(shape)
    np.add.at(total, index, values)
    np.add.at(count, index, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return axes, np.where(count > 0, total / count, np.nan)


def grid_from_points(coords: np.ndarray, values: np.ndarray, method: str = "linear") -> LogGrid:
    axes, table = gridded(coords, values)
    return LogGrid(axes, table, method)


def cross_validation_errors(axes: list[np.ndarray], values: np.ndarray, method: str) -> np.ndarray:
    """Log errors at held-out slices: each interior value of each axis is removed in turn, the
    table rebuilt without it and evaluated there (``values`` are logs). Empty when no axis has an
    interior value."""
    errors = []
    for axis, values_on_axis in enumerate(axes):
        for hold in range(1, values_on_axis.size - 1):
            truth = np.take(values, hold, axis=axis)
            kept_values = np.delete(values, hold, axis=axis)
            if not np.all(np.isfinite(truth)) or not np.isfinite(kept_values).any():
                continue
            kept = [np.log(a if j != axis else np.delete(a, hold)) for j, a in enumerate(axes)]
            if not np.isfinite(kept_values).all():
                kept_values = LogGrid([np.exp(x) for x in kept], kept_values).values  # nearest-filled
            probe = [np.log(a if j != axis else values_on_axis[hold:hold + 1]) for j, a in enumerate(axes)]
            predicted = _along_axes(kept, kept_values, probe, method)
            errors.append((predicted - np.expand_dims(truth, axis)).ravel())
    return np.concatenate(errors) if errors else np.zeros(0)


@dataclass
class FittedTable:
    table: LogGrid
    basis: str  # "roofline-ratio" or "direct"
    method: str
    cv_rms_log_error: float | None  # over every held-out point; ~ a typical relative error
    cv_max_rel_error: float | None  # the worst held-out point

    def describe(self) -> dict:
        return {"basis": self.basis, "method": self.table.method, "cv_rms_log_error": self.cv_rms_log_error,
                "cv_max_rel_error": self.cv_max_rel_error,
                "grid_points_filled": self.table.filled,
                "axes": [[float(v) for v in a] for a in self.table.axes]}


def fit_table(coords: np.ndarray, log_times: np.ndarray, log_structure: dict[str, np.ndarray]) -> FittedTable:
    """The table of ``log_times - log_structure[basis]`` for the basis and method with the smallest
    root-mean-square cross-validation error in log space (ties, and grids too small to
    cross-validate: the first of roofline-ratio/direct x linear/pchip)."""
    best = None
    for basis in ("roofline-ratio", "direct"):
        if basis not in log_structure:
            continue
        axes, values = gridded(coords, log_times - log_structure[basis])
        for method in METHODS:
            errors = cross_validation_errors(axes, values, method)
            rms = float(np.sqrt(np.mean(errors**2))) if errors.size else None
            worst = float(np.max(np.abs(np.expm1(errors)))) if errors.size else None
            key = np.inf if rms is None else rms
            if best is None or key < best[0] - 1e-12:
                best = (key, basis, method, axes, values, rms, worst)
    _, basis, method, axes, values, rms, worst = best
    return FittedTable(LogGrid(axes, values, method), basis, method, rms, worst)
