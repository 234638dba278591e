"""Flows and collectives: the network's whole vocabulary.

A flow is (source GPU, destination GPU, bytes). A collective is an ordered list of stages; the
flows of one stage run concurrently and a stage starts when the previous one has finished (a
hierarchical all-to-all is two stages: RDMA between nodes, then NVLink inside them). Each stage
also carries how many sequential message latencies it pays (a ring all-reduce over n ranks pays
2(n-1) of them, pipelined under the bandwidth term). The network never knows what a transformer is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FlowSet:
    """Struct of arrays: flow i moves size_bytes[i] from GPU src[i] to GPU dst[i]."""

    src: np.ndarray  # int64, global GPU ids
    dst: np.ndarray  # int64, global GPU ids
    size_bytes: np.ndarray  # float64, > 0

    def __post_init__(self) -> None:
        src = np.asarray(self.src, dtype=np.int64).reshape(-1)
        dst = np.asarray(self.dst, dtype=np.int64).reshape(-1)
        size = np.asarray(self.size_bytes, dtype=np.float64).reshape(-1)
        if not (len(src) == len(dst) == len(size)):
            raise ValueError("FlowSet arrays must have equal lengths")
        object.__setattr__(self, "src", src)
        object.__setattr__(self, "dst", dst)
        object.__setattr__(self, "size_bytes", size)

    def __len__(self) -> int:
        return len(self.src)

    @property
    def total_bytes(self) -> float:
        return float(self.size_bytes.sum())

    def without_empty(self) -> "FlowSet":
        """Drop zero-byte and self (src == dst) flows: they never touch a link."""
        keep = (self.size_bytes > 0) & (self.src != self.dst)
        return FlowSet(self.src[keep], self.dst[keep], self.size_bytes[keep])

    @staticmethod
    def concat(parts: list["FlowSet"]) -> "FlowSet":
        if not parts:
            return FlowSet(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
        return FlowSet(
            np.concatenate([p.src for p in parts]),
            np.concatenate([p.dst for p in parts]),
            np.concatenate([p.size_bytes for p in parts]),
        )


@dataclass(frozen=True)
class Stage:
    """Flows that run concurrently, plus the number of sequential message latencies they pay."""

    flows: FlowSet
    latency_steps: int = 1


@dataclass(frozen=True)
class Collective:
    """A named collective over a group of GPUs, in NCCL's terms.

    ``size_bytes`` is NCCL's per-rank message size (the ``--bytes`` of nccl-tests), from which
    algbw = size_bytes / time and busbw = algbw * bus_factor follow.
    """

    op: str  # alltoall, allreduce, reduce_scatter, all_gather, p2p, ...
    gpus: tuple[int, ...]
    size_bytes: float
    stages: tuple[Stage, ...]
    bus_factor: float = 1.0
    meta: dict = field(default_factory=dict)

    @property
    def total_bytes(self) -> float:
        return sum(s.flows.total_bytes for s in self.stages)
