"""Read a scenario file: follow ``extends``, apply dotted overrides, validate everything up front.

Resolution order (later wins):

1. the parent named by ``extends`` (resolved recursively, relative to the file that names it);
2. the file's own sections, deep-merged over the parent (mappings merge key by key; lists and
   scalars replace; ``null`` replaces too, so ``moe: null`` turns an MoE parent dense);
3. the file's own ``overrides:`` mapping of dotted keys (``parallelism.ep: 16``);
4. overrides from the caller / command line (``--set routing.capacity_factor=1.25``), whose values
   are parsed as YAML.

Every problem becomes a :class:`simmoe.errors.ConfigError` naming the file (and line) that set the
field, the dotted field path, the bad value and what is allowed. Several problems found in one pass
are reported together as one :class:`ScenarioError`.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Mapping

import yaml
from pydantic import ValidationError

from simmoe.config.messages import problem_from_pydantic
from simmoe.config.rules import Problem, check_scenario
from simmoe.config.schema import Scenario
from simmoe.dtypes import MX_ARCHITECTURES
from simmoe.errors import ConfigError, InputError
from simmoe.paths import PACKAGE_DATA_DIR, SCENARIO_DIR, resolve_file, resolve_topology

BUILTIN_SCENARIO_DIR = PACKAGE_DATA_DIR / "scenarios"
DEFAULT_SCENARIO = BUILTIN_SCENARIO_DIR / "default.yaml"

# Keys the loader consumes; they never reach the schema.
_LOADER_KEYS = ("extends", "overrides")
# Fields holding paths, made absolute relative to the file that wrote them (when they exist there).
_PATH_FIELDS = (("cluster", "topology"), ("routing", "imbalance", "trace_file"))

Path_ = tuple[str, ...]


class ScenarioError(ConfigError):
    """One or more problems in a scenario. ``errors`` lists each as its own ConfigError; the
    attributes of the first (file, field, value, allowed) are this error's own."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__(first.problem, file=first.file, field=first.field, value=first.value,
                         allowed=first.allowed, has_value=first.has_value)

    def _render(self) -> str:
        if len(self.errors) == 1:
            return str(self.errors[0])
        lines = [f"{len(self.errors)} problems in the scenario:"]
        lines += [f"  {err}" for err in self.errors]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ reading YAML


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e12`` and ``14.8e12`` as floats (YAML 1.2; PyYAML's 1.1 rules
    want a dot and a signed exponent, and would hand the schema a string)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml_value(text: str) -> Any:
    """A command-line value, read as YAML: ``16`` -> 16, ``1.25`` -> 1.25, ``null`` -> None."""
    return yaml.load(text, Loader=_YamlLoader) if text.strip() else None


@dataclass(frozen=True)
class Origin:
    """Where a value came from, for error messages."""

    file: str
    line: int | None = None
    via: str | None = None  # "--set" for command-line overrides

    def label(self) -> str:
        text = f"{_shown(self.file)}:{self.line}" if self.line else _shown(self.file)
        return f"{text} ({self.via})" if self.via else text


def _shown(file: str) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    try:
        return str(Path(file).relative_to(Path.cwd()))
    except ValueError:
        return file


def _read_yaml(path: Path) -> tuple[Any, dict[Path_, int]]:
    """The document and the line (1-based) of every mapping key, by key path."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the scenario file ({getattr(err, 'strerror', None) or err})",
                          file=_shown(str(path)), allowed="a readable UTF-8 YAML file") from None
    loader = _YamlLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{_shown(str(path))}:{mark.line + 1}" if mark is not None else _shown(str(path))
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        text_ = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
        raise ConfigError(text_, file=where, allowed="valid YAML (check indentation, colons and quotes)") from None
    finally:
        loader.dispose()
    lines: dict[Path_, int] = {}
    if node is not None:
        _key_lines(node, (), lines, path)
    return data, lines


def _key_lines(node: yaml.Node, prefix: Path_, out: dict[Path_, int], path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                field = ".".join(prefix + (key,))
                raise ConfigError("duplicate key (YAML would silently keep the last one)",
                                  file=f"{_shown(str(path))}:{key_node.start_mark.line + 1}", field=field,
                                  allowed="each key once per mapping")
            seen.add(key)
            out[prefix + (key,)] = key_node.start_mark.line + 1
            _key_lines(value_node, prefix + (key,), out, path)


# ---------------------------------------------------------------------------- merging and overrides


def _leaf_origins(data: Any, prefix: Path_, origin_of: Any) -> dict[Path_, Origin]:
    """Origins for a value and everything under it."""
    out = {prefix: origin_of(prefix)}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(_leaf_origins(value, prefix + (str(key),), origin_of))
    return out


def _drop_under(origins: dict[Path_, Origin], prefix: Path_) -> None:
    n = len(prefix)
    for key in [k for k in origins if k[:n] == prefix]:
        del origins[key]


def _deep_merge(base: dict, over: dict, origins: dict[Path_, Origin], over_origins: dict[Path_, Origin],
                prefix: Path_ = ()) -> dict:
    out = dict(base)
    for key, value in over.items():
        here = prefix + (str(key),)
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            if here in over_origins:
                origins[here] = over_origins[here]
            out[key] = _deep_merge(out[key], value, origins, over_origins, here)
        else:
            _drop_under(origins, here)
            origins.update({k: v for k, v in over_origins.items() if k[: len(here)] == here})
            out[key] = copy.deepcopy(value)
    return out


def _apply_override(data: dict, origins: dict[Path_, Origin], key: str, value: Any, origin: Origin) -> None:
    parts = tuple(key.split("."))
    if not key or any(not p for p in parts):
        raise ConfigError("an override key is a dotted field path", file=origin.label(), field=key,
                          has_value=False, allowed="e.g. parallelism.ep or routing.capacity_factor")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
            origins[parts[: i + 1]] = origin
        elif not isinstance(child, dict):
            raise ConfigError(f"cannot set {key}: {'.'.join(parts[: i + 1])} is a value, not a section",
                              file=origin.label(), field=key, value=value,
                              allowed="a field path inside a section")
        node = child
    _drop_under(origins, parts)
    node[parts[-1]] = copy.deepcopy(value)
    origins.update(_leaf_origins(value, parts, lambda _p: origin))


def _parse_cli_overrides(overrides: list[str] | Mapping[str, Any] | None, root: str) -> list[tuple[str, Any, Origin]]:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [(str(k), v, Origin(root, via=f"override {k}")) for k, v in overrides.items()]
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError("an override is KEY=VALUE", file=f"{_shown(root)} (--set)", field=item, has_value=False,
                              allowed="e.g. --set parallelism.ep=16 or --set routing.capacity_factor=null")
        key, _, text = item.partition("=")
        try:
            value = parse_yaml_value(text)
        except yaml.YAMLError:
            raise ConfigError("the value is not valid YAML", file=f"{_shown(root)} (--set)", field=key.strip(),
                              value=text, allowed="a YAML scalar or flow value, e.g. 16, 1.25, fp8, null, [1, 3]") from None
        out.append((key.strip(), value, Origin(root, via=f"--set {item}")))
    return out


def _find_scenario(name: str | Path, *, relative_to: Path | None, file: str | None, field: str | None) -> Path:
    try:
        return resolve_file(str(name), relative_to=relative_to, search_dirs=[SCENARIO_DIR, BUILTIN_SCENARIO_DIR],
                            file=file, field=field, what="scenario file")
    except ConfigError:
        raise
    except InputError as err:
        raise ConfigError(err.problem, file=err.file or str(name), field=err.field, value=err.value,
                          allowed=err.allowed, has_value=err.has_value) from None


def _resolve_file(path: Path, chain: tuple[Path, ...]) -> tuple[dict, dict[Path_, Origin]]:
    """One file with its parents and its own overrides applied."""
    if path in chain:
        cycle = " -> ".join(p.name for p in chain + (path,))
        raise ConfigError(f"extends cycle: {cycle}", file=_shown(str(chain[-1])), field="extends", value=path.name,
                          allowed="a chain of extends that ends in a file without extends")
    data, lines = _read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"a scenario is a mapping of sections, not a {type(data).__name__}", file=_shown(str(path)),
                          allowed="sections model, training, parallelism, routing, cluster, costs, simulation")
    here = path.parent

    def origin_of(p: Path_) -> Origin:
        # the nearest key with a known line
        for n in range(len(p), 0, -1):
            if p[:n] in lines:
                return Origin(str(path), lines[p[:n]])
        return Origin(str(path))

    for field_path in _PATH_FIELDS:
        node = data
        for part in field_path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(field_path[-1]), str):
            raw = Path(node[field_path[-1]]).expanduser()
            if not raw.is_absolute() and (here / raw).is_file():
                node[field_path[-1]] = str((here / raw).resolve())

    parent_name = data.pop("extends", None)
    own_overrides = data.pop("overrides", None)
    own_origins = _leaf_origins(data, (), origin_of)
    if parent_name is not None:
        if not isinstance(parent_name, str):
            raise ConfigError("extends names one scenario file", file=origin_of(("extends",)).label(),
                              field="extends", value=parent_name, allowed="a path or scenario name (a string)")
        parent_path = _find_scenario(parent_name, relative_to=here, file=origin_of(("extends",)).label(),
                                     field="extends")
        base, origins = _resolve_file(parent_path, chain + (path,))
        merged = _deep_merge(base, data, origins, own_origins)
    else:
        merged, origins = data, own_origins
    if own_overrides is not None:
        if not isinstance(own_overrides, dict):
            raise ConfigError("overrides is a mapping of dotted field paths to values",
                              file=origin_of(("overrides",)).label(), field="overrides", value=own_overrides,
                              allowed="e.g. {parallelism.ep: 16, routing.capacity_factor: 1.25}")
        for key, value in own_overrides.items():
            _apply_override(merged, origins, str(key), value, origin_of(("overrides", str(key))))
    return merged, origins


def _resolve(path: str | Path, overrides: list[str] | Mapping[str, Any] | None) -> tuple[Path, dict, dict[Path_, Origin]]:
    root = _find_scenario(path, relative_to=None, file=None, field=None)
    data, origins = _resolve_file(root, ())
    for key, value, origin in _parse_cli_overrides(overrides, str(root)):
        _apply_override(data, origins, key, value, origin)
    return root, data, origins


def resolve_scenario_dict(path: str | Path, overrides: list[str] | Mapping[str, Any] | None = None) -> dict:
    """The scenario as one plain mapping, after ``extends`` and all overrides, before validation."""
    return _resolve(path, overrides)[1]


# ------------------------------------------------------------------------------------- validation


def _origin_for(field: str, origins: dict[Path_, Origin], root: Path) -> Origin:
    parts = tuple(re.sub(r"\[\d+\]", "", field).split(".")) if field else ()
    for n in range(len(parts), 0, -1):
        if parts[:n] in origins:
            return origins[parts[:n]]
    return Origin(str(root))


def _to_errors(problems: Iterable[Problem], origins: dict[Path_, Origin], root: Path) -> list[ConfigError]:
    return [ConfigError(p.problem, file=_origin_for(p.field, origins, root).label(), field=p.field,
                        value=p.value, allowed=p.allowed, has_value=p.has_value) for p in problems]


def _raise_if(errors: list[ConfigError]) -> None:
    if errors:
        raise ScenarioError(errors)


def _topology_summary(path: Path) -> Any:
    """num_gpus, num_nodes, gpus_per_node and gpu_model of a topology file, without building it."""
    # Imported lazily: the topology package is heavier and is not needed to read a scenario.
    from simmoe.topology import loader as topology_loader

    summary = getattr(topology_loader, "topology_summary", None)
    if summary is not None:
        return summary(path)
    spec = topology_loader.read_topology_spec(path)
    per_node = {site.node.gpus_per_server for site in spec.sites}
    if len(per_node) != 1:
        raise ConfigError("topologies whose nodes differ in GPU count are not supported by scenarios yet",
                          file=str(path), field="cluster.topology", value=spec.name,
                          allowed="a topology with the same GPUs per node everywhere")
    return SimpleNamespace(num_gpus=spec.num_gpus, num_nodes=spec.num_servers,
                           gpus_per_node=per_node.pop(), gpu_model=spec.gpu_model)


def validate_scenario_dict(data: dict, *, root: Path, origins: dict[Path_, Origin] | None = None,
                           check_topology: bool = True) -> Scenario:
    """Validate a resolved mapping: schema, topology (GPU count, GPU model) and cross-field rules."""
    origins = origins or {}
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as err:
        problems = [problem_from_pydantic(Scenario, e) for e in err.errors()]
        _raise_if(_to_errors(problems, origins, root))
        raise  # unreachable: a ValidationError always has errors
    p = scenario.parallelism
    problems: list[Problem] = []
    topology_path: Path | None = None
    gpus_per_node: int | None = None
    gpu_model: str | None = None
    nodes = scenario.cluster.nodes
    dp = p.dp
    if check_topology:
        try:
            topology_path = resolve_topology(scenario.cluster.topology, relative_to=root.parent,
                                             file=_origin_for("cluster.topology", origins, root).label())
        except InputError as err:
            raise ScenarioError([ConfigError(err.problem, file=err.file, field=err.field, value=err.value,
                                             allowed=err.allowed, has_value=err.has_value)]) from None
        summary = _topology_summary(topology_path)
        gpus_per_node = int(summary.gpus_per_node)
        gpu_model = getattr(summary, "gpu_model", None)
        topo = f"topology {topology_path.name} ({summary.num_nodes} nodes x {gpus_per_node} GPUs)"
        mp = p.model_parallel_size
        if nodes is not None and nodes > summary.num_nodes:
            problems.append(Problem("cluster.nodes", nodes, f"is more than the {topo} has",
                                    f"1..{summary.num_nodes}"))
        elif nodes is None and dp is not None and mp * dp != summary.num_gpus:
            want = mp * dp
            hints = [f"dp = {summary.num_gpus // mp} to use all {summary.num_gpus} GPUs"
                     if summary.num_gpus % mp == 0 else f"tp*pp*cp*dp = {summary.num_gpus}"]
            if want < summary.num_gpus and want % gpus_per_node == 0:
                hints.append(f"cluster.nodes: {want // gpus_per_node} to use part of the topology")
            hint = ", or ".join(hints)
            problems.append(Problem("parallelism.dp", dp,
                                    f"tp*pp*cp*dp = {p.tp}*{p.pp}*{p.cp}*{dp} = {want} GPUs, but the {topo} "
                                    f"has {summary.num_gpus} GPUs and cluster.nodes is not set", hint))
        else:
            nodes = nodes if nodes is not None else int(summary.num_nodes)
            gpus = nodes * gpus_per_node
            if dp is None:
                if gpus % mp:
                    # Name one size that is > 1 (pp first) so the error points at the line that set it.
                    name, size = next(((n, v) for n, v in (("pp", p.pp), ("tp", p.tp), ("cp", p.cp)) if v > 1))
                    problems.append(Problem(f"parallelism.{name}", size,
                                            f"tp*pp*cp = {p.tp}*{p.pp}*{p.cp} = {mp} does not divide the {gpus} GPUs "
                                            f"used ({nodes} nodes x {gpus_per_node})",
                                            f"tp*pp*cp among the divisors of {gpus}, or another cluster.nodes"))
                else:
                    dp = gpus // mp
            elif mp * dp != gpus:
                problems.append(Problem("parallelism.dp", dp,
                                        f"tp*pp*cp*dp = {p.tp}*{p.pp}*{p.cp}*{dp} = {mp * dp} GPUs, but the cluster "
                                        f"uses {gpus} ({nodes} nodes x {gpus_per_node} GPUs of the {topo})",
                                        f"dp = {gpus // mp}" if gpus % mp == 0 else
                                        "tp*pp*cp*dp equal to cluster.nodes x GPUs per node"))
        if gpu_model:
            problems += _precision_problems(scenario, gpu_model, topology_path.name)
    else:
        if dp is None:  # cluster.nodes stays as written (null: unknown without the topology)
            problems.append(Problem("parallelism.dp", None, "must be given when the topology is not read",
                                    "an integer > 0", has_value=False))
    _raise_if(_to_errors(problems, origins, root))

    resolved = scenario.model_copy(update={
        "parallelism": p.model_copy(update={"dp": dp}),
        "cluster": scenario.cluster.model_copy(update={"nodes": nodes}),
    })
    _raise_if(_to_errors(check_scenario(resolved), origins, root))
    resolved._source_file = str(root)
    resolved._topology_path = str(topology_path) if topology_path else None
    resolved._gpus_per_node = gpus_per_node
    resolved._gpu_model = gpu_model
    return resolved


def _precision_problems(s: Scenario, gpu_model: str, topology_name: str) -> list[Problem]:
    from simmoe.hardware import gpu_spec

    try:
        spec = gpu_spec(gpu_model)
    except InputError:
        return []  # the topology loader reports unknown GPUs
    out = []
    if spec.fp8_dense_tflops is None:
        if s.training.fp8_gemms:
            out.append(Problem("training.precision", s.training.precision,
                               f"{gpu_model} (topology {topology_name}) has no FP8 tensor cores", "bf16"))
        if s.routing.dispatch_dtype == "fp8" and s.model.moe is not None:
            out.append(Problem("routing.dispatch_dtype", "fp8",
                               f"{gpu_model} (topology {topology_name}) has no FP8 support", "bf16"))
    elif s.training.precision == "mxfp8" and spec.architecture not in MX_ARCHITECTURES:
        # Hopper's tensor cores take one scale per tensor; MX block scales need Blackwell's.
        out.append(Problem("training.precision", "mxfp8",
                           f"{gpu_model} (topology {topology_name}, architecture "
                           f"{spec.architecture or 'unknown'}) has no MX block-scaled tensor cores",
                           f"fp8 or bf16 on this GPU; mxfp8 on {', '.join(sorted(MX_ARCHITECTURES))} GPUs"))
    return out


# ------------------------------------------------------------------------------------- public API


def load_scenario(path: str | Path, overrides: list[str] | Mapping[str, Any] | None = None, *,
                  check_topology: bool = True) -> Scenario:
    """Read, resolve and validate a scenario.

    ``path`` is a file path or the name of a scenario in ``scenarios/`` (or a built-in one, e.g.
    ``default``). ``overrides`` are ``["parallelism.ep=16", ...]`` (values parsed as YAML) or a
    mapping ``{"parallelism.ep": 16}``. With ``check_topology=False`` the topology file is not read
    (no GPU-count or GPU-model checks) and ``parallelism.dp`` must be given.
    """
    root, data, origins = _resolve(path, overrides)
    return validate_scenario_dict(data, root=root, origins=origins, check_topology=check_topology)


def load_default_scenario(overrides: list[str] | Mapping[str, Any] | None = None, *,
                          check_topology: bool = True) -> Scenario:
    """The built-in laptop-sized scenario (simmoe/data/scenarios/default.yaml)."""
    return load_scenario(DEFAULT_SCENARIO, overrides, check_topology=check_topology)
