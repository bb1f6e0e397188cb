"""The study of issue #14: analog storage against the strongest digital storage, swept over
models, analog settings, retention times and chips, and written up as ``docs/results.md``.

``grid`` (what runs), ``backends`` (process pool or Ray), ``sweep`` (the engine: parallel,
resumable, results in the run store), ``capacity`` (the calibrated channel's capacity),
``report`` (tables, Pareto plots, the markdown).
"""
from .backends import Backend, ProcessBackend, RayBackend, backend_for
from .grid import Point, Setting, StudyConfig
from .sweep import StudyResult, estimate_seconds, finished_points, run_study

__all__ = ["Backend", "Point", "ProcessBackend", "RayBackend", "Setting", "StudyConfig", "StudyResult",
           "backend_for", "estimate_seconds", "finished_points", "run_study"]
