"""Where points run. Every executor has one method, ``map_unordered(fn, tasks)``: it yields
``fn(task)`` for each task as it completes, in completion order, in the coordinator's process, so the
coordinator alone writes results (one writer per folder, no locking between workers).

- ``serial``: in this process, one point after another (debugging, pdb, tiny sweeps).
- ``local`` (default): a process pool of ``--workers`` processes (default: the usable cores).
- ``dask://HOST:PORT``: a ``distributed.Client`` to an existing Dask scheduler; the same code path
  reaches SLURM through a dask-jobqueue cluster's scheduler address.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterator, Protocol

from simmoe.errors import InputError
from simmoe.sweep.store import SweepError
from simmoe.sweep.worker import PointTask, error_row

_DASK_ADDRESS = re.compile(r"^dask://(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$")
EXECUTOR_FORMS = "local, serial or dask://HOST:PORT (an existing Dask scheduler)"


class Executor(Protocol):
    def map_unordered(self, fn: Callable[[PointTask], dict], tasks: list[PointTask]) -> Iterator[dict]:
        """``fn(task)`` for every task, as each completes."""


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class SerialExecutor:
    def map_unordered(self, fn, tasks):
        for task in tasks:
            yield fn(task)


class LocalExecutor:
    """A pool of worker processes started with ``spawn``: a clean interpreter per worker (no
    inherited threads or locks from the coordinator, same behaviour on Linux and macOS)."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or usable_cores()

    def map_unordered(self, fn, tasks):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        if not tasks:
            return
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)),
                                   mp_context=multiprocessing.get_context("spawn"))
        futures = {pool.submit(fn, task): task for task in tasks}
        try:
            for future in as_completed(futures):
                try:
                    yield future.result()
                except BrokenProcessPool:
                    # A worker died (killed, out of memory, a crash in native code). Which point did it
                    # is unknown, so no point is marked failed: unfinished ones run again on re-run.
                    pending = sorted(t.index for f, t in futures.items() if not f.done() or f is future)
                    raise SweepError(f"a worker process died (out of memory? killed?) with points {pending[:20]}"
                                     f"{' ...' if len(pending) > 20 else ''} unfinished; finished points are "
                                     "saved, run the sweep again to resume (try fewer --workers)") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """Points as Dask futures on an existing scheduler; results gathered with ``as_completed``.
    Workers need simmoe (same version) installed and the scenario's topology files at the same
    paths (or topologies named from simmoe's own ``topologies/``)."""

    def __init__(self, address: str | None = None, *, client: Any = None) -> None:
        if (address is None) == (client is None):
            raise ValueError("give a scheduler address or a distributed.Client, not both")
        self.address = address
        self.client = client

    def map_unordered(self, fn, tasks):
        from distributed import Client, as_completed

        if not tasks:
            return
        client = self.client
        own = client is None
        if own:
            try:
                client = Client(self.address, timeout="30s")
            except (OSError, TimeoutError) as err:
                raise SweepError(f"cannot reach the Dask scheduler at {self.address} ({err})") from None
        try:
            futures = client.map(fn, tasks, key=[f"simmoe-point-{t.key}" for t in tasks], pure=False)
            by_key = {f.key: t for f, t in zip(futures, tasks)}
            for future in as_completed(futures):
                try:
                    yield future.result()
                except Exception as err:  # noqa: BLE001 - e.g. KilledWorker: this point crashed workers
                    yield error_row(by_key[future.key], err)
                finally:
                    future.release()
        finally:
            if own:
                client.close()


def make_executor(spec: str | Executor | None, workers: int | None = None) -> Executor:
    """An executor from its command-line form (checked before any point runs)."""
    if spec is None or spec == "local":
        if workers is not None and workers < 1:
            raise InputError("is the number of worker processes", field="--workers", value=workers,
                             allowed="an integer >= 1")
        return LocalExecutor(workers)
    if not isinstance(spec, str):
        return spec
    if spec == "serial":
        return SerialExecutor()
    match = _DASK_ADDRESS.match(spec)
    if match is None:
        raise InputError("unknown executor", field="--executor", value=spec, allowed=EXECUTOR_FORMS)
    if not 0 < int(match["port"]) < 65536:
        raise InputError("the port is out of range", field="--executor", value=spec, allowed="a port 1..65535")
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise InputError("the Dask executor needs the 'distributed' package", field="--executor", value=spec,
                         allowed="pip install 'simmoe[dask]', or --executor local") from None
    return DaskExecutor(f"tcp://{match['host']}:{match['port']}")

