"""Where the study's tasks run: a process pool on this machine, or a Ray cluster.

Both implement :class:`Backend`: ``run(fn, tasks)`` yields ``(index, result, error)`` as
tasks finish, in any order. :class:`RayBackend` talks to Ray only through the few calls it
needs (``init``, ``remote``, ``wait``, ``get``, ``shutdown``); the tests run it on a real
local Ray instance (``--address local``). Ray is imported only when ``--address`` is given.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from typing import Any, Callable, Iterator, Protocol, Sequence

RAY_MISSING = "--address needs Ray, which is not installed: pip install ray (or pip install 'pcm-hil[ray]')"

Outcome = tuple[int, Any, BaseException | None]


class Backend(Protocol):
    """Runs picklable top-level functions on picklable tasks."""

    name: str
    slots: int  # tasks that run at once

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Outcome]:
        """``(index into tasks, fn(task) or None, the exception or None)`` as each finishes."""
        ...

    def close(self) -> None:
        ...


def _worker_init(threads: int, env: dict[str, str]) -> None:
    """Each worker process: its share of the cores for torch, the study's environment."""
    os.environ.update(env)
    import torch

    torch.set_num_threads(max(1, threads))


def _pool(jobs: int, env: dict[str, str]) -> cf.ProcessPoolExecutor:
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # spawn: a fresh interpreter per worker (torch and forked threads do not mix)
    return cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_worker_init, initargs=(threads, env))


class ProcessBackend:
    """``jobs`` worker processes on this machine (default: one per core)."""

    name = "process pool"

    def __init__(self, jobs: int | None = None, env: dict[str, str] | None = None) -> None:
        self.slots = int(jobs or os.cpu_count() or 1)
        if self.slots < 1:
            raise ValueError(f"--jobs must be at least 1, got {jobs}")
        self._pool = _pool(self.slots, env or {})

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Outcome]:
        futures = {self._pool.submit(fn, t): i for i, t in enumerate(tasks)}
        for f in cf.as_completed(futures):
            err = f.exception()
            yield futures[f], (None if err else f.result()), err

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayBackend:
    """Tasks as Ray remote functions on the cluster at ``address`` (one CPU each).

    The run directory must be on a filesystem the workers share for the per-point run
    stores and the model cache to be shared; the results come back to this process either
    way, and the study's index and report are written here.
    """

    name = "ray"

    def __init__(self, address: str, env: dict[str, str] | None = None) -> None:
        try:
            import ray  # optional: only for --address
        except ImportError:
            raise ValueError(RAY_MISSING) from None
        self._ray = ray
        ray.init(address=address, ignore_reinit_error=True, runtime_env={"env_vars": dict(env or {})})
        self.slots = int(ray.cluster_resources().get("CPU", 1)) or 1

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Outcome]:
        remote = self._ray.remote(num_cpus=1)(fn)
        index = {remote.remote(t): i for i, t in enumerate(tasks)}  # object refs are hashable
        pending = list(index)
        while pending:
            done, pending = self._ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    yield index[ref], self._ray.get(ref), None
                except Exception as exc:  # noqa: BLE001  (a task's failure is reported with its point)
                    yield index[ref], None, exc

    def close(self) -> None:
        self._ray.shutdown()


def backend_for(jobs: int | None, address: str | None, env: dict[str, str] | None = None) -> Backend:
    """Ray at ``address`` when given (ValueError naming ``pip install ray`` without Ray), else a process pool."""
    if address:
        return RayBackend(address, env=env)
    return ProcessBackend(jobs, env=env)
