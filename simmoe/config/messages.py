"""Pydantic's validation errors, rewritten as simmoe problems: the field path in the scenario's own
dotted form, the bad value, what is wrong and what is allowed (read from the schema itself)."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Literal, Union

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from simmoe.config.rules import Problem

_YAML_TYPE = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "mapping",
              list: "list", type(None): "null"}


def yaml_type_name(value: Any) -> str:
    for py, name in _YAML_TYPE.items():
        if type(value) is py:
            return name
    return type(value).__name__


def _constraints(metadata: list[Any]) -> str:
    parts = []
    for c in metadata:
        if isinstance(c, annotated_types.Gt):
            parts.append(f"> {c.gt}")
        elif isinstance(c, annotated_types.Ge):
            parts.append(f">= {c.ge}")
        elif isinstance(c, annotated_types.Lt):
            parts.append(f"< {c.lt}")
        elif isinstance(c, annotated_types.Le):
            parts.append(f"<= {c.le}")
    return " and ".join(parts)


def describe(annotation: Any, metadata: list[Any] | None = None) -> str:
    """What a field accepts, in a user's words ("an integer > 0", "one of bf16, fp8 or null")."""
    metadata = list(metadata or [])
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        extra_meta: list[Any] = []
        for item in extra:
            if isinstance(item, FieldInfo):
                extra_meta.extend(item.metadata)
                if item.discriminator:
                    members = typing.get_args(base)
                    tags = [typing.get_args(m.model_fields[item.discriminator].annotation)[0] for m in members]
                    return f"a mapping with {item.discriminator}: one of {', '.join(tags)}"
            else:
                extra_meta.append(item)
        return describe(base, metadata + extra_meta)
    if origin in (Union, types.UnionType):
        args = typing.get_args(annotation)
        non_null = [a for a in args if a is not type(None)]
        texts = [describe(a, metadata) for a in non_null]
        text = " or ".join(texts)
        return text + " or null" if len(non_null) < len(args) else text
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return f"a list of ({describe(item)})"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping with fields " + ", ".join(annotation.model_fields)
    rng = _constraints(metadata)
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return f"an integer {rng}".rstrip()
    if annotation is float:
        return f"a number {rng}".rstrip()
    if annotation is str:
        return "a string"
    return getattr(annotation, "__name__", str(annotation))


def _model_of(annotation: Any) -> type[BaseModel] | dict[str, type[BaseModel]] | None:
    """The section class a field holds (through Optional / Annotated), or {tag: class} for a
    discriminated union."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        for item in extra:
            if isinstance(item, FieldInfo) and item.discriminator:
                return {typing.get_args(m.model_fields[item.discriminator].annotation)[0]: m
                        for m in typing.get_args(base)}
        return _model_of(base)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
        return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _walk(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], type[BaseModel] | None, FieldInfo | None]:
    """Follow a pydantic error location through the schema. Returns the clean dotted path (union
    tags dropped), the section class holding the last field, and that field's FieldInfo."""
    path: list[str] = []
    cls: Any = root
    holder: type[BaseModel] | None = None
    info: FieldInfo | None = None
    i = 0
    while i < len(loc):
        part = loc[i]
        if isinstance(part, int):
            path[-1] = f"{path[-1]}[{part}]" if path else f"[{part}]"
            i += 1
            continue
        if isinstance(cls, dict):  # discriminated union: this element is the tag
            cls = cls.get(part)
            i += 1
            continue
        if cls is None or part not in cls.model_fields:
            path.append(str(part))
            holder, info, cls = (cls if isinstance(cls, type) else None), None, None
            i += 1
            continue
        holder = cls
        info = cls.model_fields[part]
        path.append(part)
        cls = _union_members(info) or _model_of(info.annotation)
        i += 1
    return path, holder, info


def _union_members(info: FieldInfo) -> dict[str, type[BaseModel]] | None:
    # Pydantic lifts a top-level Annotated[Union, Field(discriminator=...)] onto the field itself.
    if not info.discriminator:
        return None
    return {typing.get_args(m.model_fields[info.discriminator].annotation)[0]: m
            for m in typing.get_args(info.annotation)}


def _field_text(info: FieldInfo | None) -> str | None:
    if info is None:
        return None
    members = _union_members(info)
    if members:
        return f"a mapping with {info.discriminator}: one of {', '.join(members)}"
    return describe(info.annotation, info.metadata)


def problem_from_pydantic(root: type[BaseModel], err: dict[str, Any]) -> Problem:
    kind = err["type"]
    loc = tuple(err.get("loc", ()))
    path, holder, info = _walk(root, loc)
    field = ".".join(path)
    value = err.get("input")
    allowed = _field_text(info)
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return Problem(field, None, "required field is missing", allowed, has_value=False)
    if kind == "extra_forbidden":
        names = list(holder.model_fields) if holder is not None else []
        last = path[-1] if path else ""
        close = difflib.get_close_matches(last, names, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        section = ".".join(path[:-1]) or "the top level"
        return Problem(field, value, f"unknown field{hint}",
                       f"fields of {section}: " + ", ".join(names) if names else None)
    if kind == "union_tag_invalid":
        tag_field = f"{field}.{ctx.get('discriminator', 'type').strip(chr(39))}"
        return Problem(tag_field, ctx.get("tag"), "unknown type",
                       "one of " + str(ctx.get("expected_tags", "")).replace("'", ""))
    if kind == "union_tag_not_found":
        tag_field = f"{field}.{ctx.get('discriminator', 'type').strip(chr(39))}"
        return Problem(tag_field, None, "required field is missing", allowed, has_value=False)
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return Problem(field, value, "out of range", allowed)
    if kind == "literal_error":
        return Problem(field, value, "not an allowed value", allowed)
    if kind == "value_error":
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        return Problem(field, value, msg, allowed)
    if kind == "finite_number":
        return Problem(field, value, "must be a finite number", allowed)
    if kind.endswith("_type") or kind in ("int_from_float", "model_attributes_type"):
        return Problem(field, value, f"wrong type ({yaml_type_name(value)})", allowed)
    return Problem(field, value, str(err.get("msg", kind)), allowed)
