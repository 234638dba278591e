"""Datasheet hardware figures (GPU peaks, HBM, NVLink, NIC line rates), loaded once from data."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

from simmoe.errors import InputError


@dataclass(frozen=True)
class GpuSpec:
    name: str
    bf16_dense_tflops: float
    fp8_dense_tflops: float | None
    hbm_GB: float
    hbm_TBps: float
    nvlink_GBps_per_direction: float
    pcie_GBps_per_direction: float
    tdp_W: float
    sms: int
    nvlink_links: int = 0  # NVLink links per GPU (0: none)
    architecture: str = ""  # tensor-core generation ("hopper", "blackwell", ...; "" unknown)


@dataclass(frozen=True)
class NicSpec:
    name: str
    gbps: float
    kind: str  # "infiniband" or "ethernet"

    @property
    def bytes_per_s(self) -> float:
        return self.gbps * 1e9 / 8


@cache
def _table() -> dict:
    text = resources.files("simmoe").joinpath("data/hardware.yaml").read_text()
    return yaml.safe_load(text)


def gpu_names() -> list[str]:
    return sorted(_table()["gpus"])


def nic_names() -> list[str]:
    return sorted(_table()["nics"])


def gpu_spec(name: str, *, file: str | None = None, field: str = "gpu") -> GpuSpec:
    gpus = _table()["gpus"]
    if name not in gpus:
        raise InputError("unknown GPU", file=file, field=field, value=name, allowed=", ".join(gpu_names()))
    return GpuSpec(name=name, **gpus[name])


def nic_spec(name: str, *, file: str | None = None, field: str = "nic") -> NicSpec:
    nics = _table()["nics"]
    if name not in nics:
        raise InputError("unknown NIC", file=file, field=field, value=name, allowed=", ".join(nic_names()))
    return NicSpec(name=name, **nics[name])
