"""Study files: one workload, a list of named variants, validated in full before anything runs.

    name: fabrics-50b                  # optional; default: the file name without .yaml
    description: ...                   # optional
    base: ../budget-50b-64e-ib.yaml    # scenario path (relative to this file) or scenario name
    set: {training.micro_batch: 1}     # optional: dotted overrides for every variant
    variants:                          # name -> dotted overrides (null or {} = the base as is)
      ib-rail: {cluster.topology: h100-ndr-rail}
      roce: {cluster.topology: h100-roce-4x100g}
    prices: my-prices.yaml             # optional: merged over simmoe/data/prices.yaml
    forecast: {samples: 3, failures.restart_s: 600}   # optional: samples + forecast.* settings
    rank_by: usd_per_million_tokens    # optional: the column the printed table is ordered by

A study runs on the sweep machinery (simmoe.sweep): each variant is one sweep point keyed by its
resolved scenario and the forecast options, so finished variants are reused and results are written
atomically, one file per variant.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simmoe.config import resolve_scenario_dict, validate_scenario_dict
from simmoe.config.loader import BUILTIN_SCENARIO_DIR
from simmoe.config.schema import Scenario
from simmoe.config.yamlfile import read_yaml_mapping, shown_path as _shown
from simmoe.errors import ConfigError, InputError
from simmoe.paths import SCENARIO_DIR, resolve_file
from simmoe.sweep.fields import is_scenario_field, unknown_field_message
from simmoe.sweep.keys import point_key
from simmoe.sweep.spec import SweepPoint, SweepSpec

STUDY_KEYS = ("name", "description", "base", "set", "variants", "prices", "forecast", "rank_by")
EVALUATOR = "simmoe.study.evaluate:study_point"
DEFAULT_SAMPLES = 3
RANK_BY = ("usd_per_million_tokens", "total_cost_usd", "time_to_train_days_p50", "energy_mwh")
VARIANT_COLUMN = "variant"


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict[str, Any]  # the variant's own dotted overrides, as written
    scenario: Scenario
    key: str


@dataclass(frozen=True)
class StudySpec:
    file: Path
    name: str
    description: str
    base: Path
    set: dict[str, Any]
    variants: tuple[Variant, ...]
    prices: Path | None
    samples: int
    forecast_overrides: dict[str, Any]
    rank_by: str
    text: str = field(default="", repr=False)

    @property
    def options(self) -> dict[str, Any]:
        """The evaluator's keyword arguments (in every variant's key)."""
        return {"samples": self.samples, "forecast_overrides": dict(self.forecast_overrides)}

    def sweep_spec(self) -> SweepSpec:
        """The study as a sweep over one field, ``variant`` (zip of the variant names)."""
        points = tuple(SweepPoint(index=i, values={VARIANT_COLUMN: v.name}, scenario=v.scenario, key=v.key)
                       for i, v in enumerate(self.variants))
        return SweepSpec(file=self.file, name=self.name, base=self.base, set=self.set,
                         grid={VARIANT_COLUMN: [v.name for v in self.variants]}, mode="zip", metrics=None,
                         evaluator=EVALUATOR, points=points, text=self.text, options=self.options)


def _err(path: Path, problem: str, **kw: Any) -> ConfigError:
    return ConfigError(problem, file=_shown(path), **kw)


def _read(path: Path) -> tuple[dict, str]:
    return read_yaml_mapping(path, what="study file", keys=STUDY_KEYS)


def _fields(path: Path, section: str, mapping: Any) -> dict[str, Any]:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise _err(path, "is a mapping of dotted scenario fields to values", field=section, value=mapping,
                   allowed="e.g. {cluster.topology: h100-ndr-rail, routing.capacity_factor: 1.25}")
    for key in mapping:
        if not isinstance(key, str) or not key:
            raise _err(path, "a field is a dotted path", field=section, value=key,
                       allowed="e.g. parallelism.ep")
        if key.split(".")[0] in ("extends", "overrides"):
            raise _err(path, "is a scenario-loader key, not a field", field=f"{section}.{key}", has_value=False,
                       allowed="a scenario field (put extends/overrides in the base scenario)")
        if not is_scenario_field(key):
            problem, allowed = unknown_field_message(key)
            raise _err(path, problem, field=f"{section}.{key}", has_value=False, allowed=allowed)
    return dict(mapping)


def _forecast_options(path: Path, raw: Any, samples: int | None) -> tuple[int, dict[str, Any]]:
    from simmoe.forecast import ForecastSettings, apply_overrides

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _err(path, "is a mapping", field="forecast", value=raw,
                   allowed="{samples: K, <forecast setting>: value}, e.g. {samples: 3, failures.restart_s: 600}")
    raw = dict(raw)
    n = raw.pop("samples", DEFAULT_SAMPLES)
    if samples is not None:
        n = samples
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise _err(path, "is the number of Monte Carlo samples", field="forecast.samples", value=n,
                   allowed="an integer >= 1")
    overrides = {(k if str(k).startswith("forecast.") else f"forecast.{k}"): v for k, v in raw.items()}
    try:
        apply_overrides(ForecastSettings(), overrides, file=_shown(path))  # checked now, applied per variant
    except InputError as err:
        raise _err(path, err.problem, field=err.field, value=err.value, allowed=err.allowed,
                   has_value=err.has_value) from None
    return n, overrides


def load_study(path: str | Path, *, steps: int | None = None, samples: int | None = None) -> StudySpec:
    """Read and validate a study file: keys, fields, prices, and every variant as a full scenario.

    ``steps`` (``--steps``) sets ``simulation.steps`` for every variant; ``samples`` (``--samples``)
    replaces ``forecast.samples``."""
    from simmoe.study.prices import load_prices

    path = Path(path)
    data, text = _read(path)
    for key in data:
        if key not in STUDY_KEYS:
            close = difflib.get_close_matches(str(key), STUDY_KEYS, n=1)
            raise _err(path, "unknown study key", field=str(key), has_value=False,
                       allowed=(f"did you mean {close[0]}? " if close else "") + f"one of {', '.join(STUDY_KEYS)}")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name.strip() or "/" in name or name in (".", ".."):
        raise _err(path, "the study name is also its results folder name", field="name", value=name,
                   allowed="a non-empty string without '/'")
    description = data.get("description") or ""
    if "base" not in data or data["base"] is None:
        raise _err(path, "is missing", field="base", has_value=False,
                   allowed="a scenario path (relative to the study file) or a scenario name")
    if not isinstance(data["base"], str):
        raise _err(path, "names one scenario", field="base", value=data["base"], allowed="a path or scenario name")
    try:
        base = resolve_file(data["base"], relative_to=path.parent, search_dirs=[SCENARIO_DIR, BUILTIN_SCENARIO_DIR],
                            file=_shown(path), field="base", what="scenario file")
    except InputError as err:
        raise _err(path, err.problem, field="base", value=data["base"], allowed=err.allowed) from None
    set_ = _fields(path, "set", data.get("set"))

    raw_variants = data.get("variants")
    if raw_variants is None or raw_variants == {} or raw_variants == []:
        raise _err(path, "is empty: a study needs at least one variant", field="variants", has_value=False,
                   allowed="a mapping of variant name -> dotted overrides, e.g. {ib: {cluster.topology: h100-ndr-rail}}")
    if not isinstance(raw_variants, dict):
        raise _err(path, "is a mapping of variant name -> dotted overrides", field="variants",
                   value=type(raw_variants).__name__, allowed="e.g. {ib: {cluster.topology: h100-ndr-rail}}")
    variants_raw: dict[str, dict[str, Any]] = {}
    for vname, overrides in raw_variants.items():
        if not isinstance(vname, str) or not vname.strip():
            raise _err(path, "a variant name is a non-empty string", field="variants", value=vname,
                       allowed="e.g. ib-rail")
        variants_raw[vname] = _fields(path, f"variants.{vname}", overrides)

    prices = None
    if data.get("prices") is not None:
        if not isinstance(data["prices"], str):
            raise _err(path, "names a prices file", field="prices", value=data["prices"], allowed="a YAML file path")
        prices = Path(data["prices"])
        if not prices.is_absolute():
            prices = path.parent / prices
        if not prices.is_file():
            raise _err(path, "the prices file does not exist", field="prices", value=data["prices"],
                       allowed="a path relative to the study file")
    load_prices(prices)  # a bad price table fails now, not after the simulations

    n_samples, forecast_overrides = _forecast_options(path, data.get("forecast"), samples)
    rank_by = data.get("rank_by", RANK_BY[0])
    if rank_by not in RANK_BY:
        raise _err(path, "is not a ranking column", field="rank_by", value=rank_by, allowed=", ".join(RANK_BY))
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise InputError("is the number of steps simulated per sample", field="--steps", value=steps,
                         allowed="an integer >= 1")
    cli = {"simulation.steps": steps} if steps is not None else {}

    options = {"samples": n_samples, "forecast_overrides": forecast_overrides}
    variants: list[Variant] = []
    seen: dict[str, str] = {}
    for vname, overrides in variants_raw.items():
        merged = {**set_, **overrides, **cli}
        try:
            scenario = validate_scenario_dict(resolve_scenario_dict(base, merged), root=base)
        except ConfigError as err:
            where = f"variants.{vname}.{err.field}" if err.field in overrides else err.field
            raise _err(path, f"variant {vname!r} is not a valid scenario: {err.problem}", field=where,
                       value=err.value, allowed=err.allowed, has_value=err.has_value) from None
        key = point_key(scenario, evaluator=EVALUATOR, options=options)
        if key in seen:
            raise _err(path, f"variants {seen[key]!r} and {vname!r} are the same scenario once resolved",
                       field=f"variants.{vname}", has_value=False,
                       allowed="variants that differ (a value equal to the base's changes nothing)")
        seen[key] = vname
        variants.append(Variant(name=vname, overrides=overrides, scenario=scenario, key=key))
    return StudySpec(file=path.resolve(), name=name, description=str(description), base=base, set=set_,
                     variants=tuple(variants), prices=prices, samples=n_samples,
                     forecast_overrides=forecast_overrides, rank_by=rank_by, text=text)


def overrides_json(overrides: dict[str, Any]) -> str:
    return json.dumps(overrides, sort_keys=True, default=str)
