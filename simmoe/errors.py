"""Errors a person can act on.

Every input problem is reported as one plain sentence that names the file, the field path, the bad
value and what is allowed. Input validation never uses ``assert`` (it vanishes under ``python -O``).
"""

from __future__ import annotations

from typing import Any


class SimmoeError(Exception):
    """Base class of every error simmoe raises on purpose."""


class InputError(SimmoeError):
    """Bad user input: a scenario, topology, sweep or profile file, or a CLI argument.

    The message has the form ``FILE: FIELD=VALUE: PROBLEM (allowed: ALLOWED)``; each part is also
    kept as an attribute so tests and callers can inspect it without parsing text.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        field: str | None = None,
        value: Any = None,
        allowed: str | None = None,
        has_value: bool | None = None,
    ) -> None:
        self.problem = problem
        self.file = file
        self.field = field
        self.value = value
        self.allowed = allowed
        # `value=None` is ambiguous (missing vs. an explicit null); callers say which when it matters.
        self.has_value = (value is not None) if has_value is None else has_value
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file:
            where.append(str(self.file))
        if self.field:
            where.append(f"{self.field}={self.value!r}" if self.has_value else self.field)
        head = ": ".join(where)
        text = f"{head}: {self.problem}" if head else self.problem
        if self.allowed:
            text += f" (allowed: {self.allowed})"
        return text


class ConfigError(InputError):
    """A scenario (or sweep) file is invalid."""


class TopologyError(InputError):
    """A topology file is invalid, or describes a network that cannot carry traffic."""


class ProfileError(InputError):
    """A calibration profile is unreadable or does not fit the scenario."""
