"""Where simmoe finds the files a scenario names (topologies, other scenarios, profiles)."""

from __future__ import annotations

from pathlib import Path

from simmoe.errors import InputError

# The repository's top-level folders (an editable install, or a clone on PYTHONPATH).
REPO_ROOT = Path(__file__).resolve().parents[1]
TOPOLOGY_DIR = REPO_ROOT / "topologies"
SCENARIO_DIR = REPO_ROOT / "scenarios"
# Built-in defaults that ship inside the package itself.
PACKAGE_DATA_DIR = Path(__file__).resolve().parent / "data"


def resolve_file(
    name: str,
    *,
    relative_to: Path | None,
    search_dirs: list[Path],
    suffix: str = ".yaml",
    file: str | None = None,
    field: str | None = None,
    what: str = "file",
) -> Path:
    """Resolve ``name`` as a path (absolute, or relative to the referring file's folder), then
    as a bare name (with or without ``suffix``) in each of ``search_dirs``."""
    candidates: list[Path] = []
    raw = Path(name).expanduser()
    if raw.is_absolute():
        candidates.append(raw)
    else:
        if relative_to is not None:
            candidates.append(relative_to / raw)
        candidates.append(Path.cwd() / raw)
        for folder in search_dirs:
            candidates.append(folder / raw)
            if raw.suffix != suffix:
                candidates.append(folder / (str(raw) + suffix))
    for path in candidates:
        if path.is_file():
            return path.resolve()
    looked = ", ".join(str(d) for d in search_dirs)
    raise InputError(
        f"{what} not found (looked beside the referring file, in the working folder and in {looked})",
        file=file,
        field=field,
        value=name,
        allowed=f"a path to an existing {what}, or a name of one in {looked}",
    )


def resolve_topology(name: str, *, relative_to: Path | None = None, file: str | None = None,
                     field: str = "cluster.topology") -> Path:
    return resolve_file(name, relative_to=relative_to, search_dirs=[TOPOLOGY_DIR],
                        file=file, field=field, what="topology file")
