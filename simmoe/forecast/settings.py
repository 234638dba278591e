"""Forecast settings: the scenario's ``forecast`` section (failures, owned cluster, power).

The section's classes live in simmoe.config.schema with the rest of the scenario; this module reads
them from a scenario and applies dotted overrides to them (studies set forecast fields per variant).
Every default is an assumption, not a measurement; docs/forecast.md gives the source of each.
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import ValidationError

from simmoe.config.schema import LLAMA3_GPU_MTBF_HOURS, LLAMA3_NODE_MTBF_HOURS, Failures, OwnedCluster, Power
from simmoe.config.schema import Forecast as ForecastSettings
from simmoe.errors import InputError

__all__ = ["LLAMA3_GPU_MTBF_HOURS", "LLAMA3_NODE_MTBF_HOURS", "Failures", "ForecastSettings", "OwnedCluster",
           "Power", "apply_overrides", "parse_settings", "settings_of"]


def settings_of(scenario) -> ForecastSettings:  # noqa: ANN001 - Scenario
    """The scenario's forecast section."""
    return scenario.forecast


def parse_settings(data: Mapping[str, Any] | None, *, file: str | None = None) -> ForecastSettings:
    """Validate a ``forecast`` mapping; errors name the field path (``forecast.failures.restart_s``)."""
    try:
        return ForecastSettings.model_validate(dict(data or {}))
    except ValidationError as err:
        e = err.errors()[0]
        path = ".".join(["forecast", *(str(p) for p in e["loc"])])
        allowed = {name: ", ".join(f"{n}" for n in sub.model_fields)
                   for name, sub in (("failures", Failures), ("owned_cluster", OwnedCluster),
                                     ("power", Power))}
        hint = allowed.get(str(e["loc"][0])) if e["loc"] else None
        if e["type"] == "extra_forbidden":
            hint = hint if len(e["loc"]) > 1 else "failures, owned_cluster, power"
            raise InputError("unknown field", file=file, field=path, has_value=False,
                             allowed=hint) from None
        raise InputError(e["msg"], file=file, field=path, value=e.get("input"), has_value=True,
                         allowed=hint) from None


def apply_overrides(settings: ForecastSettings, overrides: Mapping[str, Any], *,
                    file: str | None = None) -> ForecastSettings:
    """``{"forecast.failures.restart_s": 600, ...}`` applied on top of ``settings``."""
    data = settings.model_dump()
    for key, value in overrides.items():
        parts = key.split(".")
        if parts[0] == "forecast":
            parts = parts[1:]
        if not parts or any(not p for p in parts):
            raise InputError("an override key is a dotted field path", file=file, field=key,
                             has_value=False, allowed="e.g. forecast.failures.restart_s")
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            elif not isinstance(child, dict):
                raise InputError(f"cannot set {key}: forecast.{p} is a value, not a section",
                                 file=file, field=key, value=value, allowed="a field inside a section")
            node = child
        node[parts[-1]] = value
    return parse_settings(data, file=file)
