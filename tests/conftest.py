"""Fixtures shared by test modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def load_benchmark():
    """``load(name)`` imports benchmarks/<name>.py as module ``name``. It is registered in
    sys.modules while the test module runs (dataclasses, and one script importing another, look
    their module up there) and removed after, with any script it loaded itself."""
    before = set(sys.modules)
    loaded = []

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loaded.append(name)
        spec.loader.exec_module(module)
        return module

    yield load
    for name in set(loaded) | {n for n in set(sys.modules) - before if (BENCHMARKS / f"{n}.py").exists()}:
        sys.modules.pop(name, None)
