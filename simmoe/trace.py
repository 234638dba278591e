"""Chrome / Perfetto trace of one simulated step (docs/output.md, "Trace").

One process per simulated rank ("rank G (pp s)"), two threads in it: "compute" and "comm".
Each compute node or collective is a complete event ("ph": "X") with microsecond times; args
carry the phase (fwd, bwd, step) and, for collectives, the category (dispatch, combine, tp, dp,
pp, ep). Load the file in https://ui.perfetto.dev or chrome://tracing.
"""

from __future__ import annotations

import json
from pathlib import Path

from simmoe.atomic import atomic_write


def trace_events(timeline, *, step: int = 0) -> list[dict]:
    events = []
    for r, tl in zip(timeline.ranks, timeline.timelines):
        pid = r.index
        name = f"rank {r.global_rank} (pp {r.pp_rank})" + (f", pipeline {r.pipeline}" if r.pipeline else "")
        events.append({"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}})
        events.append({"ph": "M", "pid": pid, "name": "process_sort_index", "args": {"sort_index": pid}})
        for tid, thread in ((0, "compute"), (1, "comm")):
            events.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_name",
                           "args": {"name": thread}})
        for start, end, label, phase in tl.compute:
            events.append({"ph": "X", "pid": pid, "tid": 0, "name": label, "ts": start * 1e6,
                           "dur": (end - start) * 1e6, "cat": phase, "args": {"phase": phase, "step": step}})
        for start, end, label, category, phase in tl.comm:
            events.append({"ph": "X", "pid": pid, "tid": 1, "name": label, "ts": start * 1e6,
                           "dur": (end - start) * 1e6, "cat": category,
                           "args": {"phase": phase, "category": category, "step": step}})
    return events


def write_trace(timeline, path: str | Path, *, step: int = 0, metadata: dict | None = None) -> Path:
    """Write the Chrome trace JSON of ``timeline`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"traceEvents": trace_events(timeline, step=step), "displayTimeUnit": "ms",
           "otherData": metadata or {}}
    atomic_write(path, lambda handle: json.dump(doc, handle), binary=False)
    return path
