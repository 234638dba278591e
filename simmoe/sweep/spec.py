"""Sweep files: read, expand the grid, and validate every point before any of them runs.

A sweep file (docs/sweep.md)::

    name: ep-vs-capacity          # optional; default: the file's stem
    base: ../default.yaml         # a scenario path (relative to this file) or a scenario name
    set: {simulation.steps: 3}    # optional dotted overrides applied to every point
    grid:                         # dotted field -> list of values
      parallelism.ep: [2, 4, 8]
      routing.capacity_factor: [null, 1.25]
    mode: product                 # or zip (equal-length lists, taken element-wise)
    metrics: [step_time_s, mfu]   # optional: summary columns to keep (default: all)

Every problem is a :class:`simmoe.errors.ConfigError` naming the sweep file, the field and what is
allowed; the first point that is not a valid scenario is reported with its index and values.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from simmoe.config import resolve_scenario_dict, validate_scenario_dict
from simmoe.config.loader import BUILTIN_SCENARIO_DIR
from simmoe.config.schema import Scenario
from simmoe.config.yamlfile import read_yaml_mapping, shown_path as _shown
from simmoe.errors import ConfigError, InputError
from simmoe.paths import SCENARIO_DIR, resolve_file
from simmoe.sweep.fields import is_scenario_field, unknown_field_message
from simmoe.sweep.keys import point_key

SWEEP_KEYS = ("name", "description", "base", "set", "grid", "mode", "metrics")
MODES = ("product", "zip")
# Columns every result row has; a metric may not take one of these names.
RESERVED_COLUMNS = ("point_index", "point_key", "status", "error", "error_type", "elapsed_s")


@dataclass(frozen=True)
class SweepPoint:
    """One point: its position in the grid, the values of the swept fields, the validated scenario
    and its key."""

    index: int
    values: dict[str, Any]  # swept dotted field -> value, in grid order
    scenario: Scenario
    key: str


@dataclass(frozen=True)
class SweepSpec:
    file: Path
    name: str
    base: Path
    set: dict[str, Any]
    grid: dict[str, list[Any]]
    mode: str
    metrics: tuple[str, ...] | None  # None: keep every summary column
    evaluator: str
    points: tuple[SweepPoint, ...] = field(repr=False)
    text: str = field(default="", repr=False)  # the sweep file as written, kept in result metadata
    options: dict[str, Any] | None = None  # evaluator keyword arguments, in every point's key

    @property
    def swept_fields(self) -> tuple[str, ...]:
        return tuple(self.grid)


def _error(file: Path, problem: str, *, field: str | None = None, value: Any = None, allowed: str | None = None,
           has_value: bool | None = None) -> ConfigError:
    return ConfigError(problem, file=_shown(file), field=field, value=value, allowed=allowed, has_value=has_value)


def _read(path: Path) -> tuple[dict, str]:
    return read_yaml_mapping(path, what="sweep file", keys=SWEEP_KEYS)


def _check_field(path: Path, section: str, key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise _error(path, "a field is a dotted path", field=f"{section}", value=key,
                     allowed="e.g. parallelism.ep or routing.capacity_factor")
    if key.split(".")[0] in ("extends", "overrides"):
        raise _error(path, "is a scenario-loader key, not a field", field=f"{section}.{key}", has_value=False,
                     allowed="a scenario field (put extends/overrides in the base scenario)")
    if not is_scenario_field(key):
        problem, allowed = unknown_field_message(key)
        raise _error(path, problem, field=f"{section}.{key}", has_value=False, allowed=allowed)
    return key


def _hashable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _parse(path: Path, data: dict) -> tuple[str, Path, dict, dict, str, tuple[str, ...] | None]:
    for key in data:
        if key not in SWEEP_KEYS:
            close = difflib.get_close_matches(str(key), SWEEP_KEYS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise _error(path, "unknown sweep key", field=str(key), has_value=False,
                         allowed=f"{hint}one of {', '.join(SWEEP_KEYS)}")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name.strip() or "/" in name or name in (".", ".."):
        raise _error(path, "the sweep name is also its results folder name", field="name", value=name,
                     allowed="a non-empty string without '/'")

    if "base" not in data or data["base"] is None:
        raise _error(path, "is missing", field="base", has_value=False,
                     allowed="a scenario path (relative to the sweep file) or a scenario name, e.g. default")
    base_name = data["base"]
    if not isinstance(base_name, str):
        raise _error(path, "names one scenario", field="base", value=base_name, allowed="a path or scenario name")
    try:
        base = resolve_file(base_name, relative_to=path.parent, search_dirs=[SCENARIO_DIR, BUILTIN_SCENARIO_DIR],
                            file=_shown(path), field="base", what="scenario file")
    except InputError as err:
        raise _error(path, err.problem, field="base", value=base_name, allowed=err.allowed) from None

    set_ = data.get("set") or {}
    if not isinstance(set_, dict):
        raise _error(path, "is a mapping of dotted fields to values", field="set", value=set_,
                     allowed="e.g. {simulation.steps: 3, routing.execution: padded}")
    set_ = {_check_field(path, "set", k): v for k, v in set_.items()}

    grid = data.get("grid")
    if grid is None or grid == {}:
        raise _error(path, "is empty: a sweep needs at least one swept field", field="grid", has_value=False,
                     allowed="a mapping of dotted field -> list of values, e.g. {parallelism.ep: [2, 4, 8]}")
    if not isinstance(grid, dict):
        raise _error(path, "is a mapping of dotted fields to lists of values", field="grid", value=grid,
                     allowed="e.g. {parallelism.ep: [2, 4, 8]}")
    checked: dict[str, list[Any]] = {}
    for key, values in grid.items():
        key = _check_field(path, "grid", key)
        if key in set_:
            raise _error(path, "is both swept and set", field=f"grid.{key}", has_value=False,
                         allowed="a field in grid or in set, not both")
        if not isinstance(values, list):
            raise _error(path, "is a list of values", field=f"grid.{key}", value=values,
                         allowed=f"e.g. {key}: [{values!r}]" if values is not None else "a non-empty list")
        if not values:
            raise _error(path, "is an empty list: the sweep would have no points", field=f"grid.{key}",
                         value=values, allowed="at least one value")
        seen: dict[str, int] = {}
        for i, v in enumerate(values):
            h = _hashable(v)
            if h in seen:
                raise _error(path, f"value {v!r} is listed twice (positions {seen[h]} and {i})",
                             field=f"grid.{key}", value=values, allowed="each value once")
            seen[h] = i
        # A section swept under a field already swept (or the reverse) would fight over one value.
        for other in checked:
            if key.startswith(other + ".") or other.startswith(key + "."):
                raise _error(path, f"overlaps grid.{other}", field=f"grid.{key}", has_value=False,
                             allowed="swept fields that do not contain one another")
        checked[key] = values

    mode = data.get("mode", "product")
    if mode not in MODES:
        raise _error(path, "unknown mode", field="mode", value=mode,
                     allowed="product (every combination) or zip (element-wise, equal-length lists)")
    if mode == "zip":
        lengths = {k: len(v) for k, v in checked.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise _error(path, f"zip needs lists of equal length, got {shown}", field="grid", has_value=False,
                         allowed="equal-length lists, or mode: product")

    metrics = data.get("metrics")
    if metrics is not None:
        if (not isinstance(metrics, list) or not metrics
                or not all(isinstance(m, str) and m for m in metrics)):
            raise _error(path, "is a list of summary column names", field="metrics", value=metrics,
                         allowed="a non-empty list of strings, or leave it out to keep every column")
        if len(set(metrics)) != len(metrics):
            raise _error(path, "names a column twice", field="metrics", value=metrics, allowed="each column once")
        for m in metrics:
            if m in RESERVED_COLUMNS or m in checked:
                raise _error(path, "is a column every sweep writes, not a metric", field="metrics", value=m,
                             allowed=f"a summary column other than {', '.join(RESERVED_COLUMNS)}")
        metrics = tuple(metrics)
    return name, base, set_, checked, mode, metrics


def _set_dotted(data: dict, key: str, value: Any) -> None:
    """Set ``a.b.c`` in a scenario mapping as the loader's overrides do: missing (or null) sections
    are created, lists and scalars are replaced whole."""
    *parents, last = key.split(".")
    node = data
    for i, part in enumerate(parents):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"cannot set {key}: {'.'.join(parents[: i + 1])} is a value, not a section",
                              field=key, value=value, allowed="a field path inside a section")
        node = child
    node[last] = copy.deepcopy(value)


def expand_grid(grid: Mapping[str, list[Any]], mode: str) -> list[dict[str, Any]]:
    """The grid's points in order: product varies the last field fastest (itertools.product);
    zip takes the i-th value of every list."""
    keys = list(grid)
    if mode == "product":
        combos = itertools.product(*(grid[k] for k in keys))
    elif mode == "zip":
        lengths = {len(v) for v in grid.values()}
        if len(lengths) > 1:
            raise ValueError(f"zip needs lists of equal length, got {sorted(lengths)}")
        combos = zip(*(grid[k] for k in keys))
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return [dict(zip(keys, combo)) for combo in combos]


def load_sweep(path: str | Path, *, evaluator: str = "engine", options: Mapping[str, Any] | None = None) -> SweepSpec:
    """Read a sweep file and validate all of it: keys, fields, and every point as a scenario.

    ``evaluator`` names what turns a scenario into numbers (see :mod:`simmoe.sweep.evaluators`);
    with ``options`` it goes into every point's key."""
    from simmoe.sweep.evaluators import evaluator_id, metric_names

    path = Path(path)
    data, text = _read(path)
    name, base, set_, grid, mode, metrics = _parse(path, data)
    ev_id = evaluator_id(evaluator)
    known = metric_names(evaluator)
    if metrics is not None and known is not None:
        for m in metrics:
            if m not in known:
                close = difflib.get_close_matches(m, known, n=3)
                hint = f"did you mean {' or '.join(close)}? " if close else ""
                raise _error(path, "is not a summary column", field="metrics", value=m,
                             allowed=f"{hint}one of {', '.join(known)}")
    # The base (with set:) is read once; each point is a copy with its grid values set, then
    # validated in full (schema, topology, cross-field rules).
    try:
        base_data = resolve_scenario_dict(base, set_)
    except ConfigError as err:
        raise _error(path, f"the base scenario with set: applied is not valid: {err.problem} [{err.file}]",
                     field=err.field, value=err.value, allowed=err.allowed, has_value=err.has_value) from None
    points: list[SweepPoint] = []
    by_key: dict[str, int] = {}
    for index, values in enumerate(expand_grid(grid, mode)):
        shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
        try:
            data = copy.deepcopy(base_data)
            for key, value in values.items():
                _set_dotted(data, key, value)
            scenario = validate_scenario_dict(data, root=base)
        except ConfigError as err:
            raise _error(path, f"point {index} ({shown}) is not a valid scenario: {err.problem}",
                         field=err.field, value=err.value, allowed=err.allowed, has_value=err.has_value) from None
        key = point_key(scenario, evaluator=ev_id, options=options)
        if key in by_key:
            first = points[by_key[key]]
            raise _error(path, f"points {first.index} ({first.values}) and {index} ({values}) are the same "
                         "scenario once resolved", field="grid", has_value=False,
                         allowed="values that change the scenario (e.g. not both null and the derived value)")
        by_key[key] = index
        points.append(SweepPoint(index=index, values=values, scenario=scenario, key=key))
    return SweepSpec(file=path.resolve(), name=name, base=base, set=set_, grid=grid, mode=mode, metrics=metrics,
                     evaluator=ev_id, points=tuple(points), text=text, options=dict(options) if options else None)
