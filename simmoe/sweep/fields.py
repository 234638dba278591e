"""Which dotted field paths a scenario has, read from the pydantic schema itself.

A sweep names fields as ``section.field`` (``routing.capacity_factor``,
``model.attention.kv_heads``). Checking each name against the models (not against one example
scenario) catches a typo even when the base scenario leaves that field at its default, and it
follows optional sections (``model.moe``) and tagged unions (``model.attention``: a field of any
attention type is a field).
"""

from __future__ import annotations

import difflib
import types
import typing
from functools import lru_cache
from typing import Any, Union

from pydantic import BaseModel

from simmoe.config.schema import Scenario


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, Union and Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _walk(model: type[BaseModel], prefix: str, out: dict[str, bool]) -> None:
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        children = _models_in(info.annotation)
        out[path] = bool(children)  # True: a section (it has fields of its own)
        for child in children:
            _walk(child, f"{path}.", out)


@lru_cache(maxsize=None)
def scenario_field_paths() -> dict[str, bool]:
    """Every dotted field path of a scenario -> whether it is a section (has sub-fields)."""
    out: dict[str, bool] = {}
    _walk(Scenario, "", out)
    return out


def unknown_field_message(path: str) -> tuple[str, str]:
    """(problem, allowed) for a dotted path that is not a scenario field: close matches among the
    fields of the deepest section that exists, else among all fields, else that section's fields."""
    fields = scenario_field_paths()
    parts = path.split(".")
    section = ""
    for n in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in fields:
            if not fields[prefix]:  # a value: nothing can be under it
                return f"{prefix} is a value, not a section", f"{prefix} itself, e.g. {prefix}: [...]"
            section = prefix
            break
    siblings = sorted(p for p in fields if p.rpartition(".")[0] == section)
    # Compare the first wrong component with its siblings; keep the rest of the path if it exists.
    depth = len(section.split(".")) if section else 0
    wrong, rest = parts[depth], parts[depth + 1:]
    names = {p.rpartition(".")[2]: p for p in siblings}
    close = []
    for name in difflib.get_close_matches(wrong, list(names), n=3, cutoff=0.6):
        candidate = ".".join([names[name], *rest])
        close.append(candidate if candidate in fields else names[name])
    if close:
        return "is not a scenario field", "did you mean " + " or ".join(dict.fromkeys(close)) + "?"
    where = f"a field of {section}" if section else "a dotted path starting with one of"
    return "is not a scenario field", f"{where}: {', '.join(siblings)}"


def is_scenario_field(path: str) -> bool:
    return path in scenario_field_paths()
