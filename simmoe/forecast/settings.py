"""Forecast inputs that the scenario schema does not hold yet: failures, an owned cluster, power.

These sections follow simmoe.config.schema's conventions (unknown fields are errors, strict types,
frozen) so they can move into the schema verbatim as ``Scenario.forecast`` (docs/forecast.md,
"Scenario fields"). Until then :func:`settings_of` reads ``scenario.forecast`` when the schema has
it and falls back to these defaults; ``simmoe forecast --set forecast.X=V`` sets them either way.

Every default is an assumption, not a measurement; docs/forecast.md gives the source of each.
"""

from __future__ import annotations

from typing import Annotated, Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simmoe.errors import InputError

PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]

# Llama 3 405B pre-training (Meta, "The Llama 3 Herd of Models", 2024, section 3.3.4): 419
# unexpected interruptions in 54 days on 16,384 H100 GPUs (2,048 nodes of 8); 58.7% of them GPU
# issues. GPU share: 0.587 * 419 = 246 over 16,384 GPUs * 1,296 h -> ~86,000 h per GPU; the other
# 173 over 2,048 nodes * 1,296 h -> ~15,000 h per node. Together: one interruption every ~3.1 h
# on that cluster, as the paper reports.
LLAMA3_GPU_MTBF_HOURS = 86_000.0
LLAMA3_NODE_MTBF_HOURS = 15_000.0


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Failures(_Section):
    """Interruptions of a synchronous job: any failed GPU or node stops every rank."""

    enabled: bool = True
    gpu_mtbf_hours: PosFloat = LLAMA3_GPU_MTBF_HOURS  # per GPU (GPU, HBM, NVLink faults)
    node_mtbf_hours: PosFloat = LLAMA3_NODE_MTBF_HOURS  # per node (host, NIC, switch, software)
    restart_s: NonNegFloat = 1800.0  # R: detect, reschedule, reload the last checkpoint (assumption)
    checkpoint_write_s: NonNegFloat = 60.0  # delta: training stalls this long per checkpoint (assumption)
    checkpoint_interval_s: PosFloat | None = None  # compute time between checkpoints; null: Daly optimum


class OwnedCluster(_Section):
    """Buy instead of rent: capex spread over the hardware's life, plus the power bill."""

    capex_per_gpu_usd: NonNegFloat  # GPU plus its share of node, fabric and installation
    amortization_years: PosFloat = 4.0  # straight-line life (assumption; 4-6 years is common)
    utilization: Fraction = 0.8  # share of its life the cluster runs paid work (assumption)


class Power(_Section):
    """GPU power at the simulated utilization, and everything else in a node."""

    gpu_idle_w: NonNegFloat | None = None  # null: 10% of TDP (assumption)
    gpu_tdp_w: PosFloat | None = None  # null: tdp_W of the scenario's GPU in simmoe/data/hardware.yaml
    # CPUs, memory, NICs, NVSwitches, fans and a share of the fabric's switches. DGX H100 datasheet:
    # 10.2 kW system maximum minus 8 x 700 W GPU TDP = 4.6 kW; a maximum, so an upper-bound assumption.
    node_overhead_w: NonNegFloat = 4600.0


class ForecastSettings(_Section):
    failures: Failures = Failures()
    owned_cluster: OwnedCluster | None = None  # null: price by costs.price_per_gpu_hour_usd (cloud)
    power: Power = Power()


def settings_of(scenario) -> ForecastSettings:  # noqa: ANN001 - Scenario
    """The scenario's forecast section when the schema has one, else the defaults."""
    value = getattr(scenario, "forecast", None)
    if value is None:
        return ForecastSettings()
    if isinstance(value, ForecastSettings):
        return value
    # The schema's own copy of these classes: same fields, so a dump re-validates here.
    return parse_settings(value.model_dump(), file=getattr(scenario, "source_file", None))


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
