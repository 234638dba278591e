"""Validation case files (scenarios/validation/*.yaml): schema, loader, discovery.

A case says WHAT was measured and WHERE it was published: the run (a scenario file, a collective,
DeepEP's benchmark traffic, one kernel, an energy or budgeting setup), the published values with
units, the source, a tolerance, and whether CI runs it (``fast``). It may hold only facts about the
workload and the hardware (sizes, counts, dtypes, topology names): every section below forbids
unknown keys, and none of them has a field for a model parameter (link or kernel efficiency,
latency, roofline anchors). simmoe's one parameter set (simmoe/network/params.py,
simmoe/data/roofline.yaml) serves every case; nothing may key a parameter to a case.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simmoe.errors import InputError
from simmoe.paths import SCENARIO_DIR

CASE_DIR = SCENARIO_DIR / "validation"
KINDS = ("end_to_end", "collective", "kernel", "energy", "analytical")

PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


class _Facts(BaseModel):
    # Unknown keys are errors: a case file cannot smuggle in a parameter the schema does not name.
    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------------------ run sections


class ScenarioRun(_Facts):
    """An engine run of a scenario file (path relative to the case file, or a scenario name)."""

    scenario: str
    steps: PosInt = 1  # recorded steps; each is an independent SimPy run (docs/engine.md)
    seed: Optional[int] = None  # null: the scenario's simulation.seed


class CollectiveRun(_Facts):
    """An nccl-tests-style collective on a shipped topology (first ``gpus`` GPUs)."""

    topology: str
    op: Literal["alltoall", "allreduce", "reduce_scatter", "all_gather", "p2p"]
    gpus: PosInt
    bytes: str  # nccl-tests' size: 4GiB, 256MiB, 1e9
    # The algorithm NCCL ran (NCCL_ALGO); nvls: all-reduce inside one NVLink domain.
    algorithm: Literal["ring", "nvls"] = "ring"


class DeepEPRun(_Facts):
    """DeepEP's normal-kernel benchmark traffic (deepseek-ai/DeepEP tests/test_internode.py)."""

    topology: str
    ep: PosInt  # ranks; ep / gpus_per_node nodes
    tokens_per_rank: PosInt
    hidden: PosInt
    experts: PosInt
    top_k: PosInt
    max_top_k_groups: PosInt  # num_topk_groups = min(nodes, this): groups are nodes
    dispatch_dtype: Literal["fp8", "bf16"] = "fp8"
    combine_dtype: Literal["bf16"] = "bf16"
    seed: int = 0


# The shape fields each kernel op takes (KernelRun).
KERNEL_SHAPE_FIELDS = {"gemm": ("m", "n", "k"),
                       "attention": ("batch", "seq_len", "heads", "head_dim_qk", "head_dim_v")}


class KernelRun(_Facts):
    """One kernel of a published microbenchmark on one GPU, timed by the roofline model every engine
    run uses (simmoe.compute.roofline). ``gemm``: an m x n x k GEMM. ``attention``: forward and
    backward of FlashAttention-style attention over ``batch`` x ``heads`` sequences of ``seq_len``."""

    gpu: str  # a GPU name in simmoe/data/hardware.yaml
    op: Literal["gemm", "attention"]
    # mxfp8: timed as the engine times training.precision mxfp8 (docs/compute.md, "MXFP8 GEMMs")
    dtype: Literal["bf16", "fp8", "mxfp8"] = "bf16"
    m: Optional[PosInt] = None
    n: Optional[PosInt] = None
    k: Optional[PosInt] = None
    batch: Optional[PosInt] = None
    seq_len: Optional[PosInt] = None
    heads: Optional[PosInt] = None
    head_dim_qk: Optional[PosInt] = None
    head_dim_v: Optional[PosInt] = None
    causal: bool = True
    # How the measurement was timed: a microbenchmark of seconds runs at the GPU's boost clock
    # ("burst"); a kernel timed inside hours of training at its power cap is "sustained".
    clocks: Literal["burst", "sustained"] = "burst"

    @model_validator(mode="after")
    def _shape_of_op(self) -> "KernelRun":
        need = KERNEL_SHAPE_FIELDS[self.op]
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.op} kernel needs {', '.join(need)} (missing: {', '.join(missing)})")
        other = [f for op, fields in KERNEL_SHAPE_FIELDS.items() if op != self.op
                 for f in fields if getattr(self, f) is not None]
        if other:
            raise ValueError(f"a {self.op} kernel takes {', '.join(need)}, not {', '.join(other)}")
        return self


class EnergyRun(_Facts):
    """A published run's energy: chips x average power x duration x PUE (simmoe.forecast.energy)."""

    chips: PosInt
    chip: str  # for the record only: the published average power already describes it
    days: PosFloat
    avg_power_W: PosFloat
    pue: Annotated[float, Field(ge=1.0)]
    grid_kgCO2_per_kWh: NonNegFloat  # the published per-chip power covers its server: no node term


class BudgetRun(_Facts):
    """The back-of-envelope budgeting arithmetic, and the same question asked of the simulator."""

    dense_params: PosFloat
    experts: PosInt
    top_k: PosInt
    tokens: PosFloat
    gpus: PosInt
    gpu: str  # a GPU name in simmoe/data/hardware.yaml
    price_per_gpu_hour: NonNegFloat
    overhead_flops_fraction: NonNegFloat
    comm_overhead_fraction: NonNegFloat
    # Peak the article used (TFLOPS); the corrected arithmetic uses the datasheet's dense BF16.
    article_peak_tflops: PosFloat
    scenario: Optional[str] = None  # simulated side: a scenario forecast over ``tokens``
    samples: PosInt = 1
    steps: PosInt = 1


class Run(_Facts):
    scenario: Optional[ScenarioRun] = None
    collective: Optional[CollectiveRun] = None
    deepep: Optional[DeepEPRun] = None
    kernel: Optional[KernelRun] = None
    energy: Optional[EnergyRun] = None
    budget: Optional[BudgetRun] = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "Run":
        given = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(type(self).model_fields)} (got {given or 'none'})")
        return self

    @property
    def what(self) -> str:
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)


class Metric(_Facts):
    name: str  # a metric the run produces (simmoe.validation.runners.METRICS)
    published: Optional[float] = None  # null: informational row (nothing published to compare)
    unit: str
    # Allowed |simulated / published - 1| in percent; null: informational, never fails.
    tolerance_pct: Optional[NonNegFloat] = None
    label: Optional[str] = None  # shown in the table instead of ``name``


# What a kernel run produces, per op. GEMM: tflops = 2mnk / time. Attention, FlashAttention's
# benchmark convention: forward FLOPs 2 x batch x heads x seq_len^2 x (head_dim_qk + head_dim_v),
# halved when causal; backward 2.5x.
KERNEL_METRICS = {"gemm": ("time_ms", "tflops"),
                  "attention": ("forward_ms", "forward_tflops", "backward_ms", "backward_tflops")}

# What each run section produces (simmoe.validation.runners), by metric name.
METRICS = {
    "scenario": ("tokens_per_s_per_gpu", "gpu_hours_per_trillion_tokens", "model_tflops_per_gpu", "mfu",
                 "step_time_s"),
    "collective": ("busbw_GBps", "algbw_GBps", "time_s", "nic_GBps"),
    "deepep": ("dispatch_GBps", "combine_GBps"),
    "kernel": tuple(m for names in KERNEL_METRICS.values() for m in names),
    "energy": ("energy_mwh", "tco2e"),
    "budget": tuple(f"{side}_{k}" for side in ("article", "corrected") for k in
                    ("dense_gpu_hours", "moe_gpu_hours", "dense_cost_usd", "moe_cost_usd", "dense_over_moe",
                     "dense_days", "moe_days"))
    + ("simulated_moe_cost_usd", "simulated_moe_gpu_hours", "simulated_moe_days", "simulated_mfu",
       "simulated_goodput"),
}

class Case(_Facts):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")]
    kind: Literal["end_to_end", "collective", "kernel", "energy", "analytical"]
    covers: Optional[str] = None  # the id in shared/validation/public_cases.yaml, if any
    fast: bool
    source: str
    notes: str = ""
    known_gap: Optional[str] = None  # a limit of simmoe that keeps this case outside tolerance
    run: Run
    metrics: list[Metric] = Field(min_length=1)

    # Set by the loader.
    file: Optional[str] = None

    @model_validator(mode="after")
    def _kind_matches_run(self) -> "Case":
        allowed = {"end_to_end": {"scenario"}, "collective": {"collective", "deepep"}, "kernel": {"kernel"},
                   "energy": {"energy"}, "analytical": {"budget"}}[self.kind]
        if self.run.what not in allowed:
            raise ValueError(f"kind {self.kind} runs {' or '.join(sorted(allowed))}, not {self.run.what}")
        kernel = self.run.kernel
        produced = KERNEL_METRICS[kernel.op] if kernel is not None else METRICS[self.run.what]
        for m in self.metrics:
            if m.name not in produced:
                raise ValueError(f"metric {m.name!r} is not produced by a "
                                 f"{kernel.op + ' kernel' if kernel is not None else self.run.what} run "
                                 f"(allowed: {', '.join(produced)})")
        return self


# ------------------------------------------------------------------------------------ loading


def _where(err: dict) -> str:
    return ".".join(str(p) for p in err.get("loc", ()))


def load_case(path: str | Path) -> Case:
    """Read and validate one case file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"cannot read the case file ({err})", file=str(path)) from None
    if not isinstance(data, dict):
        raise InputError("a case file holds one mapping", file=str(path), value=type(data).__name__,
                         allowed="id, kind, covers, fast, source, notes, known_gap, run, metrics")
    try:
        case = Case.model_validate({**data, "file": str(path)})
    except ValidationError as err:
        first = err.errors()[0]
        raise InputError(first["msg"], file=str(path), field=_where(first) or None,
                         value=first.get("input"), has_value="input" in first,
                         allowed="the fields of simmoe.validation.cases (facts only, no model parameters)",
                         ) from None
    if case.id != path.stem:
        raise InputError("a case's id must be its file name", file=str(path), field="id", value=case.id,
                         allowed=path.stem)
    return case


def _natural_key(path: Path) -> list:
    # "x-ep8" before "x-ep16": numbers in file names compare as numbers.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.stem)]


def case_files(folder: str | Path = CASE_DIR) -> list[Path]:
    return sorted(Path(folder).glob("*.yaml"), key=_natural_key)


def load_cases(folder: str | Path = CASE_DIR, *, only: list[str] | None = None,
               fast: bool = False) -> list[Case]:
    """Every case in ``folder`` (sorted by file name), filtered by ``only`` ids and ``fast``."""
    cases = [load_case(p) for p in case_files(folder)]
    known = [c.id for c in cases]
    if only:
        wanted = set(only)
        unknown = sorted(wanted.difference(known))
        if unknown:
            raise InputError("unknown validation case", field="--only", value=", ".join(unknown),
                             allowed=", ".join(known))
        cases = [c for c in cases if c.id in wanted]
    if fast:
        cases = [c for c in cases if c.fast]
    return cases


def resolve_beside(case: Case, name: str) -> str:
    """A file a case names: relative to the case file when it exists there, else as given
    (a scenario or topology name the loaders resolve)."""
    if case.file:
        candidate = Path(case.file).parent / name
        if candidate.is_file():
            return str(candidate)
    return name
