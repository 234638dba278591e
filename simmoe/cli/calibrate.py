"""`simmoe calibrate`: measure kernel times with PyTorch into a Parquet profile, or write the
roofline's profile of a GPU (docs/calibration.md)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer

from simmoe.errors import InputError

DTYPES = ("bf16", "fp8")

# torch.cuda device names -> simmoe/data/hardware.yaml names (first match wins; order matters:
# "GB200" contains "B200"; the H200 NVL, a 600 W PCIe card, is not simmoe's H200-SXM).
_DEVICE_NAMES = (("GB200", "GB200"), ("B200", "B200"), ("H800", "H800-SXM"), ("H100 80GB HBM3", "H100-SXM"),
                 ("H100-SXM", "H100-SXM"), ("H200 NVL", ""), ("H200", "H200-SXM"),
                 ("A100-SXM4-80GB", "A100-SXM-80GB"), ("V100-SXM2", "V100-SXM2"))


def guess_gpu(device_name: str) -> str:
    """simmoe's name for a CUDA device, or "" when it is not one of simmoe's GPUs."""
    for needle, name in _DEVICE_NAMES:
        if needle in device_name:
            return name
    return ""


def parse_dtypes(text: str) -> tuple[str, ...]:
    dtypes = tuple(d.strip().lower() for d in text.split(",") if d.strip())
    bad = [d for d in dtypes if d not in DTYPES]
    if bad or not dtypes:
        raise InputError("unknown dtype", field="--dtype", value=text, allowed="a comma list of bf16, fp8")
    return tuple(dict.fromkeys(dtypes))


def run_calibrate(device: str | None, out: str | None, quick: bool, dtype: str | None, roofline: str | None,
                  gpu: str | None, collectives: bool, show_progress: bool, argv: list[str]) -> dict:
    """Measure (or generate) and write a profile; returns the summary the command prints."""
    from simmoe.calibration.grid import CPU, FULL, QUICK
    from simmoe.calibration.schema import write_profile
    from simmoe.hardware import gpu_names

    command = " ".join(shlex.quote(a) for a in argv)
    if gpu is not None and gpu not in gpu_names():
        raise InputError("unknown GPU", field="--gpu", value=gpu, allowed=", ".join(gpu_names()))
    if roofline is not None:
        from simmoe.calibration.roofline_profile import roofline_profile

        table, metadata = roofline_profile(roofline, grid=QUICK if quick else FULL, command=command)
        path = Path(out or f"calibration-roofline-{roofline}.parquet")
    else:
        from simmoe.calibration.bench import BenchConfig, import_torch, run_calibration

        torch = import_torch()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device not in ("cuda", "cpu"):
            raise InputError("unknown device", field="--device", value=device, allowed="cuda, cpu")
        grid = CPU if device == "cpu" else (QUICK if quick else FULL)
        dtypes = parse_dtypes(dtype) if dtype else (("bf16", "fp8") if device == "cuda" else ("bf16",))
        if gpu is None and device == "cuda" and torch.cuda.is_available():
            gpu = guess_gpu(torch.cuda.get_device_name())
        config = BenchConfig(device=device, grid=grid, dtypes=dtypes, command=command, gpu=gpu or "",
                             show_progress=show_progress, collectives=collectives)
        table, metadata = run_calibration(config)
        path = Path(out or f"calibration-{device}.parquet")
    profile = write_profile(path, table, metadata)
    return {"path": str(path), "profile_id": profile.profile_id, "rows": profile.table.num_rows,
            "provenance": metadata["provenance"], "device": metadata["device"], "gpu": metadata["gpu"],
            "grid": metadata["grid"], "skipped": json.loads(metadata["skipped"])}


def _command_line(options: dict[str, str | None], flags: dict[str, bool]) -> list[str]:
    """The command as typed when simmoe was run from a shell; otherwise (called in-process, e.g. by a
    test runner) the same command rebuilt from the parsed options."""
    program = Path(sys.argv[0]).name if sys.argv else ""
    if program == "simmoe" or sys.argv[0].endswith(("simmoe/__main__.py", "simmoe\\__main__.py")):
        return ["simmoe", *sys.argv[1:]]
    argv = ["simmoe", "calibrate"]
    for name, value in options.items():
        if value is not None:
            argv += [name, str(value)]
    return argv + [name for name, on in flags.items() if on]


def register(app: typer.Typer) -> None:
    @app.command("calibrate")
    def calibrate(
        device: str = typer.Option(None, "--device", help="cuda or cpu (default: cuda if available). CPU "
                                   "runs use tiny shapes and take seconds."),
        out: str = typer.Option(None, "--out", help="Profile to write (.parquet); default "
                                "calibration-<device>.parquet."),
        quick: bool = typer.Option(False, "--quick", help="A small grid (59 shapes, 3 s sustained burn per "
                                   "dtype) instead of the full one (1125 shapes, 15 s burns: 87 s on an H100)."),
        dtype: str = typer.Option(None, "--dtype", help="GEMM dtypes, comma separated: bf16,fp8 (default both "
                                  "on CUDA; FP8 is skipped with a reason below compute capability 8.9)."),
        roofline: str = typer.Option(None, "--roofline", help="Write the roofline model's profile of this GPU "
                                     "(a name in simmoe/data/hardware.yaml) instead of measuring."),
        gpu: str = typer.Option(None, "--gpu", help="simmoe's name of the measured GPU, when the device name "
                                "does not say (e.g. H100-SXM)."),
        collectives: bool = typer.Option(True, "--collectives/--no-collectives", help="Time NCCL all-to-all "
                                         "and all-reduce when more than one GPU is visible."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Measure GEMM, grouped expert GEMM, attention, memory-bound kernels (and collectives) into a
        Parquet calibration profile; or write the roofline's profile of a GPU with --roofline."""
        given = {"--device": device, "--out": out, "--dtype": dtype, "--roofline": roofline, "--gpu": gpu}
        argv = _command_line(given, {"--quick": quick, "--no-collectives": not collectives,
                                     "--no-progress": not progress, "--json": as_json})
        out_summary = run_calibrate(device, out, quick, dtype, roofline, gpu, collectives, progress, argv)
        if as_json:
            print(json.dumps(out_summary))
            return
        print(f"wrote {out_summary['path']}: {out_summary['rows']} rows, {out_summary['provenance']}, "
              f"profile id {out_summary['profile_id']}")
        print(f"  device {out_summary['device']}  gpu {out_summary['gpu'] or '(unknown: set --gpu)'}  "
              f"grid {out_summary['grid']}")
        for what, why in out_summary["skipped"].items():
            print(f"  skipped {what}: {why}")
