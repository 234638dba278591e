"""Roofline parameters: read once from simmoe/data/roofline.yaml (or a file given), validated.

Only the numbers the model uses are kept; each one's source stays in the YAML and docs/compute.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from simmoe.errors import InputError
from simmoe.paths import PACKAGE_DATA_DIR

DEFAULT_ROOFLINE_FILE = PACKAGE_DATA_DIR / "roofline.yaml"
DTYPES = ("bf16", "fp8")  # tensor-core dtypes, each with its own anchor, tiles and clocks
# Block-scaled formats: GEMMs on one of DTYPES' tensor cores with their own scale layout and
# main-loop rate (roofline.yaml `block_scaled`). MXFP8: the FP8 tensor cores, E8M0 scales per 32.
BLOCK_SCALED = ("mxfp8",)
GEMM_DTYPES = DTYPES + BLOCK_SCALED


@dataclass(frozen=True)
class DtypeBytes:
    input_bytes: float
    output_bytes: float
    a_scale_bytes_per_element: float
    b_scale_bytes_per_element: float


@dataclass(frozen=True)
class BlockScaledFormat:
    """A GEMM format that runs on the tensor cores of ``runs_as`` (its peak, anchor, tiles and
    clocks) with its own scale bytes and a main loop ``main_loop_time_factor`` times as long."""

    runs_as: str
    main_loop_time_factor: float


@dataclass(frozen=True)
class GemmAnchor:
    """One measured (or assumed) GEMM rate on one GPU, from which the main-loop efficiency is solved."""

    gpu: str
    m: int
    n: int
    k: int
    measured_tflops: float | None
    assumed_fraction_of_peak: float | None


@dataclass(frozen=True)
class RooflineParams:
    kernel_overhead_s: float
    hbm_anchor_gpu: str
    hbm_measured_TBps: float
    last_dim_cat_slowdown: float  # a last-dimension torch.cat against a streaming copy (hbm)
    strided_slowdown: float  # an element-wise op over a last-dimension slice, against a copy (hbm)
    gather_slowdown: float  # a row gather (MoE permute), its bytes counted per output row (hbm)
    tile_shapes: tuple[tuple[int, int], ...]
    tile_k: dict[str, int]
    tile_fixed_k: dict[str, float]  # per-tile fixed cost (prologue, epilogue), in main-loop K elements
    split_k_workspace_bytes_per_output_element: float
    anchors: dict[str, GemmAnchor]  # default per dtype (GPUs of an architecture not listed below)
    # architecture (hardware.yaml) -> dtype -> anchor measured on a GPU of that architecture
    architecture_anchors: dict[str, dict[str, GemmAnchor]]
    dtypes: dict[str, DtypeBytes]  # per GEMM_DTYPES entry
    block_scaled: dict[str, BlockScaledFormat]
    attention_block_q: int
    attention_block_k: int
    attention_fraction_of_peak: dict[str, float]  # keys "<dtype>_forward" / "<dtype>_backward"
    # (head_dim_qk, head_dim_v) -> {"forward": x, "backward": y}: rate at that head shape over the
    # rate at head dim 128 (absent shapes: 1)
    attention_head_dim_factor: dict[tuple[int, int], dict[str, float]]
    sustained_clock_factor: dict[str, float]  # tensor-core time at sustained / burst clocks, per dtype
    source: str  # file name the parameters came from
    path: str  # full path of that file
    sha256: str  # of that file's text: names the parameter set in results metadata

    def gemm_anchor(self, architecture: str, dtype: str) -> tuple[GemmAnchor, str]:
        """The anchor a GPU of ``architecture`` solves its ``dtype`` efficiency from, and its field:
        one measured on that architecture where the file has one, else the default."""
        own = self.architecture_anchors.get(architecture, {})
        if dtype in own:
            return own[dtype], f"gemm.architecture_anchors.{architecture}.{dtype}"
        return self.anchors[dtype], f"gemm.anchors.{dtype}"

    def anchor_gpus(self, architecture: str = "") -> tuple[str, ...]:
        """GPUs whose measurements anchor the roofline on a GPU of ``architecture`` (HBM and GEMM
        anchors); on any other GPU its rates are an extrapolation by datasheet peaks."""
        gemm = {self.gemm_anchor(architecture, dtype)[0].gpu for dtype in DTYPES}
        return tuple(sorted({self.hbm_anchor_gpu, *gemm}))


def _get(tree: dict, path: str, file: str):
    node = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise InputError("missing field", file=file, field=path)
        node = node[part]
    return node


def _positive(tree: dict, path: str, file: str, *, integer: bool = False, allow_zero: bool = False):
    value = _get(tree, path, file)
    kind_ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not kind_ok or value < 0 or (value == 0 and not allow_zero):
        allowed = "a positive integer" if integer else ("a number >= 0" if allow_zero else "a positive number")
        raise InputError("bad value", file=file, field=path, value=value, allowed=allowed, has_value=True)
    return value


# Kernel classes of memory-bound ops (workload.ops.MemoryOp); docs/compute.md "Memory-bound kernels".
MEMORY_ACCESS = ("stream", "last_dim_cat", "strided", "gather", "gather_sum")


def access_slowdown(params: RooflineParams, access: str) -> float:
    """Time of a memory-bound kernel of class ``access`` over a streaming copy of the same bytes."""
    if access in ("stream", "gather_sum"):  # a gather_sum runs at the copy rate (measured)
        return 1.0
    if access == "last_dim_cat":
        return params.last_dim_cat_slowdown
    if access == "strided":
        return params.strided_slowdown
    if access == "gather":
        return params.gather_slowdown
    raise InputError("unknown memory access class", field="access", value=access,
                     allowed=", ".join(MEMORY_ACCESS))


def _at_least_one(tree: dict, path: str, file: str) -> float:
    value = _positive(tree, path, file)
    if value < 1:
        raise InputError("bad value", file=file, field=path, value=value,
                         allowed="a ratio >= 1 (1: as fast as a streaming copy)", has_value=True)
    return float(value)


def _head_dim_factors(tree: dict, file: str) -> dict[tuple[int, int], dict[str, float]]:
    """attention.head_dim_factor: optional mapping "<d_qk>/<d_v>" -> {forward, backward}."""
    node = tree.get("attention", {}).get("head_dim_factor") if isinstance(tree.get("attention"), dict) else None
    if node is None:
        return {}
    field = "attention.head_dim_factor"
    if not isinstance(node, dict):
        raise InputError("expected a mapping such as {\"192/128\": {forward: 1.08, backward: 0.87}}",
                         file=file, field=field)
    out = {}
    for key, value in node.items():
        parts = str(key).split("/")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise InputError("bad key", file=file, field=f"{field}.{key}", value=key,
                             allowed="\"<head_dim_qk>/<head_dim_v>\", positive integers")
        if not isinstance(value, dict) or set(value) != {"forward", "backward"}:
            raise InputError("expected {forward: <factor>, backward: <factor>}", file=file, field=f"{field}.{key}")
        out[(int(parts[0]), int(parts[1]))] = {
            d: float(_positive(tree, f"{field}.{key}.{d}", file)) for d in ("forward", "backward")}
    return out


def _tile_fixed_k(tree: dict, file: str) -> dict[str, float]:
    """gemm.tile_fixed_k.<dtype>: optional (older parameter files lack it; 0 = no per-tile cost)."""
    node = tree.get("gemm", {}).get("tile_fixed_k") if isinstance(tree.get("gemm"), dict) else None
    if node is None:
        return {dtype: 0.0 for dtype in DTYPES}
    return {dtype: float(_positive(tree, f"gemm.tile_fixed_k.{dtype}", file, allow_zero=True)) if dtype in node
            else 0.0 for dtype in DTYPES}


def _anchor(tree: dict, base: str, file: str) -> GemmAnchor:
    node = _get(tree, base, file)
    if not isinstance(node, dict):
        raise InputError("expected a mapping with gpu, m, n, k and measured_tflops", file=file, field=base)
    has_measured, has_fraction = "measured_tflops" in node, "assumed_fraction_of_peak" in node
    if has_measured == has_fraction:
        raise InputError("give exactly one of measured_tflops or assumed_fraction_of_peak", file=file, field=base)
    fraction = _positive(tree, f"{base}.assumed_fraction_of_peak", file) if has_fraction else None
    if fraction is not None and fraction > 1:
        raise InputError("bad value", file=file, field=f"{base}.assumed_fraction_of_peak", value=fraction,
                         allowed="a fraction in (0, 1]")
    return GemmAnchor(
        gpu=str(_get(tree, f"{base}.gpu", file)),
        m=_positive(tree, f"{base}.m", file, integer=True),
        n=_positive(tree, f"{base}.n", file, integer=True),
        k=_positive(tree, f"{base}.k", file, integer=True),
        measured_tflops=_positive(tree, f"{base}.measured_tflops", file) if has_measured else None,
        assumed_fraction_of_peak=fraction,
    )


def _architecture_anchors(tree: dict, file: str) -> dict[str, dict[str, GemmAnchor]]:
    """gemm.architecture_anchors: optional {architecture: {dtype: anchor}}, each anchor with its source."""
    field = "gemm.architecture_anchors"
    node = tree.get("gemm", {}).get("architecture_anchors") if isinstance(tree.get("gemm"), dict) else None
    if node is None:
        return {}
    if not isinstance(node, dict):
        raise InputError("expected a mapping such as {blackwell: {bf16: {gpu: B200, ...}}}", file=file, field=field)
    out = {}
    for arch, per_dtype in node.items():
        if not isinstance(per_dtype, dict):
            raise InputError("expected a mapping of dtype to anchor", file=file, field=f"{field}.{arch}")
        unknown = sorted(set(per_dtype) - set(DTYPES))
        if unknown:
            raise InputError("unknown dtype", file=file, field=f"{field}.{arch}.{unknown[0]}", value=unknown[0],
                             allowed=", ".join(DTYPES))
        out[str(arch)] = {dtype: _anchor(tree, f"{field}.{arch}.{dtype}", file) for dtype in per_dtype}
    return out


def _dtype_bytes(tree: dict, base: str, file: str) -> DtypeBytes:
    return DtypeBytes(
        input_bytes=_positive(tree, f"{base}.input_bytes", file),
        output_bytes=_positive(tree, f"{base}.output_bytes", file),
        a_scale_bytes_per_element=_positive(tree, f"{base}.a_scale_bytes_per_element", file, allow_zero=True),
        b_scale_bytes_per_element=_positive(tree, f"{base}.b_scale_bytes_per_element", file, allow_zero=True),
    )


def _block_scaled(tree: dict, file: str) -> tuple[dict[str, BlockScaledFormat], dict[str, DtypeBytes]]:
    """block_scaled.<format>: optional (older parameter files lack it: the format is then unknown)."""
    node = tree.get("block_scaled")
    if node is None:
        return {}, {}
    if not isinstance(node, dict):
        raise InputError("expected a mapping such as {mxfp8: {runs_as: fp8, ...}}", file=file, field="block_scaled")
    unknown = sorted(set(node) - set(BLOCK_SCALED))
    if unknown:
        raise InputError("unknown block-scaled format", file=file, field=f"block_scaled.{unknown[0]}",
                         value=unknown[0], allowed=", ".join(BLOCK_SCALED))
    formats, nbytes = {}, {}
    for name in node:
        base = f"block_scaled.{name}"
        runs_as = _get(tree, f"{base}.runs_as", file)
        if runs_as not in DTYPES:
            raise InputError("bad value", file=file, field=f"{base}.runs_as", value=runs_as,
                             allowed=", ".join(DTYPES))
        factor = float(_positive(tree, f"{base}.main_loop_time_factor", file))
        if not 0.5 <= factor <= 3.0:
            raise InputError("bad value", file=file, field=f"{base}.main_loop_time_factor", value=factor,
                             allowed="a ratio between 0.5 and 3 (1: as fast as the runs_as main loop)")
        formats[name] = BlockScaledFormat(runs_as=runs_as, main_loop_time_factor=factor)
        nbytes[name] = _dtype_bytes(tree, base, file)
    return formats, nbytes


def _parse(text: str, file: str) -> RooflineParams:
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML: {exc}", file=file) from exc
    if not isinstance(tree, dict):
        raise InputError("expected a mapping at the top level", file=file)

    shapes = _get(tree, "gemm.tile_shapes.value", file)
    if (
        not isinstance(shapes, list)
        or not shapes
        or not all(isinstance(s, list) and len(s) == 2 and all(isinstance(x, int) and x > 0 for x in s) for s in shapes)
    ):
        raise InputError("bad value", file=file, field="gemm.tile_shapes.value", value=shapes,
                         allowed="a non-empty list of [rows, columns] positive integers", has_value=True)

    anchors = {dtype: _anchor(tree, f"gemm.anchors.{dtype}", file) for dtype in DTYPES}
    architecture_anchors = _architecture_anchors(tree, file)

    dtypes = {dtype: _dtype_bytes(tree, f"dtypes.{dtype}", file) for dtype in DTYPES}
    block_scaled, block_scaled_bytes = _block_scaled(tree, file)
    dtypes.update(block_scaled_bytes)

    fractions = _get(tree, "attention.fraction_of_peak", file)
    if not isinstance(fractions, dict) or not fractions:
        raise InputError("expected a mapping such as {bf16_forward: 0.65}", file=file,
                         field="attention.fraction_of_peak")
    attention_fraction = {}
    for key in fractions:
        value = _positive(tree, f"attention.fraction_of_peak.{key}", file)
        if value > 1:
            raise InputError("bad value", file=file, field=f"attention.fraction_of_peak.{key}", value=value,
                             allowed="a fraction in (0, 1]")
        attention_fraction[str(key)] = float(value)

    head_factor = _head_dim_factors(tree, file)

    sustained = {}
    for dtype in DTYPES:
        value = _positive(tree, f"sustained_clocks.factor.{dtype}", file)
        if not 1.0 <= value <= 3.0:
            raise InputError("bad value", file=file, field=f"sustained_clocks.factor.{dtype}", value=value,
                             allowed="a ratio between 1 (burst clocks) and 3")
        sustained[dtype] = float(value)

    return RooflineParams(
        kernel_overhead_s=float(_positive(tree, "kernel_overhead_s.value", file, allow_zero=True)),
        hbm_anchor_gpu=str(_get(tree, "hbm.anchor_gpu", file)),
        hbm_measured_TBps=float(_positive(tree, "hbm.measured_TBps", file)),
        last_dim_cat_slowdown=_at_least_one(tree, "hbm.last_dim_cat_slowdown.value", file),
        strided_slowdown=_at_least_one(tree, "hbm.strided_slowdown.value", file),
        gather_slowdown=_at_least_one(tree, "hbm.gather_slowdown.value", file),
        tile_shapes=tuple((int(r), int(c)) for r, c in shapes),
        tile_k={dtype: _positive(tree, f"gemm.tile_k.{dtype}", file, integer=True) for dtype in DTYPES},
        tile_fixed_k=_tile_fixed_k(tree, file),
        split_k_workspace_bytes_per_output_element=float(
            _positive(tree, "gemm.split_k_workspace_bytes_per_output_element.value", file, allow_zero=True)
        ),
        anchors=anchors,
        architecture_anchors=architecture_anchors,
        dtypes=dtypes,
        block_scaled=block_scaled,
        attention_block_q=_positive(tree, "attention.block_q", file, integer=True),
        attention_block_k=_positive(tree, "attention.block_k", file, integer=True),
        attention_fraction_of_peak=attention_fraction,
        attention_head_dim_factor=head_factor,
        sustained_clock_factor=sustained,
        source=Path(file).name,
        path=str(file),
        sha256=hashlib.sha256(text.encode()).hexdigest(),
    )


@cache
def _load_cached(path: str) -> RooflineParams:
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise InputError(f"cannot read roofline parameters: {exc.strerror}", file=str(file)) from exc
    return _parse(text, str(file))


def load_roofline_params(path: str | Path | None = None) -> RooflineParams:
    """Parameters from ``path``, or the defaults shipped with simmoe."""
    return _load_cached(str(Path(path) if path is not None else DEFAULT_ROOFLINE_FILE))
