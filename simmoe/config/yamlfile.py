"""Reading the YAML files simmoe takes besides scenarios (sweeps, studies): one place for the
error a person sees when such a file is unreadable, not YAML, or not a mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml

from simmoe.config.loader import parse_yaml_value
from simmoe.errors import ConfigError


def shown_path(path: Path | str) -> str:
    """A path as a person wants to read it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def read_yaml_mapping(path: Path, *, what: str, keys: Sequence[str]) -> tuple[dict, str]:
    """(mapping, text) of a YAML file with the scenario loader's YAML rules (1e12 is a float);
    ConfigError naming the file (and line) otherwise. ``what`` names the file kind ("sweep file")."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the {what} ({getattr(err, 'strerror', None) or err})",
                          file=shown_path(path), allowed="a readable UTF-8 YAML file") from None
    try:
        data: Any = parse_yaml_value(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{shown_path(path)}:{mark.line + 1}" if mark is not None else shown_path(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"invalid YAML: {problem}", file=where,
                          allowed="valid YAML (check indentation, colons and quotes)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"a {what} is a mapping, not {type(data).__name__}", file=shown_path(path),
                          allowed=f"keys {', '.join(keys)}")
    return data, text
