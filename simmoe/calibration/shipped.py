"""Calibration profiles shipped with simmoe (simmoe/data/calibration/<GPU>.parquet), measured by
`simmoe calibrate` on lent GPUs; each file's metadata says the device, driver, CUDA, torch, date
and command (docs/calibration.md, "Shipped profiles"). A user names one as ``measured:<GPU>``
wherever a profile path is accepted."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from simmoe.errors import InputError

PREFIX = "measured:"


def shipped_profiles() -> dict[str, Path]:
    """GPU name -> path of the profile simmoe ships for it."""
    folder = resources.files("simmoe").joinpath("data/calibration")
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir() if str(f).endswith(".parquet")}


def resolve_profile(name_or_path: str | Path, *, field: str = "calibration") -> Path:
    """A profile path as given, or the shipped profile a ``measured:<GPU>`` name stands for."""
    text = str(name_or_path)
    if not text.startswith(PREFIX):
        return Path(text)
    gpu = text[len(PREFIX):]
    profiles = shipped_profiles()
    if gpu not in profiles:
        raise InputError("no shipped calibration profile for this GPU", field=field, value=text,
                         allowed=", ".join(PREFIX + g for g in sorted(profiles)) + ", or a profile file")
    return profiles[gpu]
