"""Pieces several sub-commands share: loading the scenario they name, and a progress bar."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def load_named_scenario(name: str | None, overrides: list[str] | None):
    """The scenario a command names (file or name), or the built-in default when ``name`` is None."""
    from simmoe.config.loader import load_default_scenario, load_scenario

    if name is None:
        return load_default_scenario(overrides or None)
    return load_scenario(name, overrides or None)


def scenario_label(scenario) -> str:
    """A short name for folders and headings: scenario.name, else the file's stem."""
    return scenario.name or (Path(scenario.source_file).stem if scenario.source_file else "scenario")


def default_out_dir(out: str | None, scenario) -> Path:
    return Path(out) if out else Path("results") / scenario_label(scenario)


@contextmanager
def progress_bar(description: str, total: int, unit: str, *,
                 enabled: bool = True) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on stderr while the block runs; yields an ``update(done, total)``
    callback, or None when disabled or when stderr is not a terminal (CI logs stay clean)."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(),
                   TextColumn(f"{{task.completed}}/{{task.total}} {unit}"), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda done, _total: bar.update(task, completed=done)
