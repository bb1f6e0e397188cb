"""Where the study's tasks run: a process pool on this machine, or a Ray cluster.

Both implement :class:`Backend`: ``run(fn, tasks)`` yields ``(index, result, error)`` as
tasks finish, in any order. :class:`RayBackend` talks to Ray only through the few calls it
needs (``init``, ``remote``, ``wait``, ``get``, ``shutdown``), so the same dispatch runs
against :class:`LocalRay`, a stand-in over a local process pool, in the tests. Ray is
imported only when ``--address`` is given.
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

    def __init__(self, address: str, ray: Any = None, env: dict[str, str] | None = None) -> None:
        if ray is None:
            try:
                import ray  # noqa: F811  (optional: only for --address)
            except ImportError:
                raise ValueError(RAY_MISSING) from None
        self._ray = ray
        ray.init(address=address, ignore_reinit_error=True, runtime_env={"env_vars": dict(env or {})})
        resources = getattr(ray, "cluster_resources", lambda: {})()
        self.slots = int(resources.get("CPU", 1)) or 1

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


class LocalRay:
    """The part of Ray's API :class:`RayBackend` uses, over a local process pool: the Ray
    dispatch path, exercised without a cluster."""

    def __init__(self, jobs: int = 2) -> None:
        self.jobs, self._pool, self.address = jobs, None, None

    def init(self, address: str | None = None, ignore_reinit_error: bool = False,
             runtime_env: dict[str, Any] | None = None) -> None:
        self.address = address
        self._pool = _pool(self.jobs, (runtime_env or {}).get("env_vars", {}))

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": float(self.jobs)}

    def remote(self, **options: Any) -> Callable[[Callable[[Any], Any]], Any]:
        pool = self._pool

        class _Remote:
            def __init__(self, fn: Callable[[Any], Any]) -> None:
                self.fn = fn

            def remote(self, *args: Any) -> cf.Future:
                assert pool is not None, "init() first"
                return pool.submit(self.fn, *args)

        return _Remote

    @staticmethod
    def wait(refs: list[cf.Future], num_returns: int = 1) -> tuple[list[cf.Future], list[cf.Future]]:
        done, _ = cf.wait(refs, return_when=cf.FIRST_COMPLETED)
        first = [r for r in refs if r in done][:num_returns]
        return first, [r for r in refs if r not in first]

    @staticmethod
    def get(ref: cf.Future) -> Any:
        return ref.result()

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def backend_for(jobs: int | None, address: str | None, env: dict[str, str] | None = None) -> Backend:
    """Ray at ``address`` when given (ValueError naming ``pip install ray`` without Ray), else a process pool."""
    if address:
        return RayBackend(address, env=env)
    return ProcessBackend(jobs, env=env)
