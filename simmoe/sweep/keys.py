"""A sweep point's key: sha256 of what decides its result, stable across runs and machines.

Hashed (as canonical JSON: sorted keys, no whitespace, ASCII, no NaN):

- the resolved, validated scenario (``Scenario.model_dump(mode="json")``: defaults filled in, ``dp``
  and ``cluster.nodes`` derived, numbers normalised by the schema, so ``1`` and ``1.0`` for a float
  field give one key);
- files the scenario names (``cluster.topology``, ``routing.imbalance.trace_file``) by the sha256 of
  their bytes, not by their path: the same topology found at another path on another machine gives
  the same key, and an edited topology gives a new one;
- simmoe's version and the evaluator with its options (what turns a scenario into numbers).

Seed and step counts are scenario fields (``simulation.seed``, ``simulation.steps``), so they are in.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from simmoe import __version__

KEY_SCHEMA = 1  # bump when what goes into a key changes, so old results are not reused by mistake


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@lru_cache(maxsize=256)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    # Cached by (path, mtime, size): a sweep names the same topology in every point.
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    stat = Path(path).stat()
    return _file_digest(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


def hashed_scenario(scenario: Any) -> dict:
    """The scenario as the key sees it: plain data, with named files replaced by their digests."""
    data = scenario.model_dump(mode="json")
    data["cluster"]["topology"] = {"sha256": file_digest(scenario.topology_path)}
    trace = data.get("routing", {}).get("imbalance", {}).get("trace_file")
    if trace:
        base = Path(scenario.source_file).parent if scenario.source_file else Path.cwd()
        path = Path(trace) if Path(trace).is_absolute() else base / trace
        data["routing"]["imbalance"]["trace_file"] = {"sha256": file_digest(path) if path.is_file() else trace}
    return data


def point_key(scenario: Any, *, evaluator: str, options: Mapping[str, Any] | None = None,
              version: str = __version__) -> str:
    """The 64-hex-digit key of one point."""
    payload = {
        "key_schema": KEY_SCHEMA,
        "simmoe_version": version,
        "evaluator": evaluator,
        "options": dict(options or {}),
        "scenario": hashed_scenario(scenario),
    }
    return hashlib.sha256(canonical_json(payload).encode("ascii")).hexdigest()
