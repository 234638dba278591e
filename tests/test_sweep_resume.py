"""kill -9 in the middle of a sweep, then run it again: every point exactly once, none lost, none
that had finished done twice.

The sweep runs as `simmoe sweep` in its own process group (coordinator + pool workers) with a slow
test evaluator that logs each evaluation; the whole group gets SIGKILL once a few point files exist.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from simmoe.sweep import load_sweep

TESTS = Path(__file__).resolve().parent
SLOW = "test_sweep_evaluators:slow_point"

pytestmark = pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs POSIX process groups")


def _log(path: Path) -> list[tuple[int, float]]:
    if not path.exists():
        return []
    return [(r["ep"], r["capacity_factor"]) for r in map(json.loads, path.read_text().splitlines())]


def test_sigkill_then_rerun_finds_every_point_exactly_once(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "killed", "base": "default", "set": {"routing.execution": "padded"},
        "grid": {"parallelism.ep": [1, 2, 4, 8], "routing.capacity_factor": [1.0, 1.25, 2.0]}}))
    out = tmp_path / "out"
    points_dir = out / "points"
    cmd = [sys.executable, "-m", "simmoe", "sweep", str(sweep), "--out", str(out), "--workers", "2",
           "--evaluator", SLOW, "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(TESTS), "SWEEP_TEST_SLEEP_S": "0.4"}

    first_log = tmp_path / "first.log"
    proc = subprocess.Popen(cmd, env={**env, "SWEEP_TEST_LOG": str(first_log)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if points_dir.is_dir() and len(list(points_dir.glob("*.parquet"))) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the sweep ended before it could be killed: " + proc.stderr.read().decode()
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    spec = load_sweep(sweep, evaluator=SLOW)
    finished = {p.name for p in points_dir.glob("*.parquet")}
    assert 3 <= len(finished) < 12
    finished_values = {(p.values["parallelism.ep"], p.values["routing.capacity_factor"])
                       for p in spec.points if f"{p.key}.parquet" in finished}
    # A half-written temp file, as a kill during a write leaves behind.
    (points_dir / f".{spec.points[-1].key}.parquet.junk.tmp").write_bytes(b"PAR1 half")

    second_log = tmp_path / "second.log"
    res = subprocess.run(cmd + ["--json"], env={**env, "SWEEP_TEST_LOG": str(second_log)}, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["skipped"] == len(finished) and summary["ran"] == 12 - len(finished) and summary["ok"] == 12

    # Nothing that had finished ran again; everything else ran in the second run.
    rerun = _log(second_log)
    assert not finished_values & set(rerun)
    assert sorted(rerun) == sorted({(p.values["parallelism.ep"], p.values["routing.capacity_factor"])
                                    for p in spec.points} - finished_values)
    assert set(_log(first_log)) >= finished_values  # the first run did evaluate what it saved

    # Every point once, with its own values; no temp file left.
    rows = pq.read_table(out / "sweep.parquet").to_pylist()
    assert collections.Counter(r["point_key"] for r in rows) == collections.Counter(p.key for p in spec.points)
    for row in rows:
        assert row["status"] == "ok"
        assert row["ep"] == row["parallelism.ep"] and row["experts_per_ep_rank"] == 16 // row["parallelism.ep"]
        assert row["capacity_factor"] == row["routing.capacity_factor"]
    assert sorted(p.name for p in points_dir.iterdir()) == sorted(f"{p.key}.parquet" for p in spec.points)
    assert not list(out.glob(".*.tmp"))
