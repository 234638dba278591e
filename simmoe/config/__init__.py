"""Scenario files: schema, loading (extends + dotted overrides) and up-front validation."""

from simmoe.config.loader import (
    DEFAULT_SCENARIO,
    ScenarioError,
    load_default_scenario,
    load_scenario,
    resolve_scenario_dict,
    validate_scenario_dict,
)
from simmoe.config.schema import Scenario

__all__ = ["DEFAULT_SCENARIO", "Scenario", "ScenarioError", "load_default_scenario", "load_scenario",
           "resolve_scenario_dict", "validate_scenario_dict"]
