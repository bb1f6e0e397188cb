"""The sweep engine: store jobs over the study's grid, in parallel, resumable.

Layout of a study's run directory::

    pcm-hil.sqlite        the study's index: one ``study_point`` run per finished point
                          (settings: the point; result: its store record), read by the report
    chips/<chip>/         the calibration of each chip (run store + ``noise.json``), once per chip
    points/<key>/         each point's own run store and emulated chip: one store job
    cache/                compressed models (:mod:`pcm_hil.store_job.model_cache`)

Phases: (1) calibrate every chip not yet calibrated and compress every model once into the
cache (in parallel), (2) the points not yet in the index (in parallel). A finished point is
never recomputed; a point that was killed half-way starts again from scratch (its
directory is cleared), and a failed one is retried on the next run.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import app
from ..chip import Geometry
from ..store_job import model_cache
from ..store_job.inputs import load_inputs, shipped
from .backends import Backend
from .grid import Point, StudyConfig, compression_key

Progress = Callable[[str, float, float], None]
POINT_KIND, SCHEMA = "study_point", 1

# wall seconds per point and slot at 5 programmings, measured with `--jobs 2` on the 2-core development
# machine (shared with two other jobs): mlp-digits and lenet5-mnist5k measured (digital search on);
# lenet5-fmnist 22 s a point alone with its fine-tunes cached (session 15; 250 s was measured beside two other
# jobs in an earlier round); resnet20-fmnist32 measured in session 14 at 2,060-2,150 s (most of it the
# competitor's search). Refined from the points already in the run directory.
SECONDS_PER_POINT = {"mlp-digits": 15.0, "lenet5-mnist5k": 35.0, "lenet5-fmnist": 30.0, "resnet20-fmnist32": 2100.0}
# compressing once: the analog start and 4 pruned digital starts (slot seconds; ResNet-20: 63 min on 2 workers)
SECONDS_WARMUP = {"mlp-digits": 5.0, "lenet5-mnist5k": 130.0, "lenet5-fmnist": 770.0, "resnet20-fmnist32": 7500.0}
SECONDS_CALIBRATION = {(1, 128, 256): 10.0, (4, 512, 512): 70.0}


@dataclass(frozen=True)
class ChipTask:
    """Calibrate one chip (a fresh copy of it) on its last cells."""

    point: Point
    directory: str


@dataclass(frozen=True)
class WarmTask:
    """Put one compressed model into the cache: the analog start (``prune_sparsity`` None) or a
    digital baseline's pruned start."""

    point: Point
    cache_dir: str
    prune_sparsity: float | None = None


@dataclass(frozen=True)
class PointTask:
    """One store job: a fresh copy of the point's chip, its noise model, its own run store."""

    point: Point
    noise: dict[str, Any]
    directory: str
    cache_dir: str


def run_task(task: ChipTask | WarmTask | PointTask) -> dict[str, Any]:
    """The worker: one task of any phase (top-level, so that processes and Ray can run it)."""
    if isinstance(task, ChipTask):
        return _calibrate(task)
    if isinstance(task, WarmTask):
        return _warm(task)
    return _store_point(task)


def _calibrate(task: ChipTask) -> dict[str, Any]:
    p = task.point
    t0 = time.monotonic()
    with app.open_store(task.directory) as store, \
            app.open_chip(app.ChipOptions(profile=p.profile, seed=p.chip_seed), Geometry(*p.geometry)) as chip:
        noise = app.noise_model_for(chip, store, None, seed=p.seed, purpose={"study": "noise model of a study chip"})
    return {"noise": noise.to_dict(), "seconds": time.monotonic() - t0}


def _warm(task: WarmTask) -> dict[str, Any]:
    import torch

    model_cache.use(task.cache_dir)
    t0 = time.monotonic()
    cfg = task.point.store_config()
    inputs = load_inputs(cfg.network)
    torch.manual_seed(cfg.seed)  # as run_store_job does before compressing
    if task.prune_sparsity is None:
        model_cache.cached_compress(inputs.network, inputs.names, inputs.train.x, inputs.train.y, cfg.compression)
    else:
        model_cache.cached_prune(inputs.network, inputs.names, task.prune_sparsity, inputs.train.x, inputs.train.y,
                                 cfg.compression.finetune_epochs, seed=cfg.compression.seed)
    return {"cache": asdict(model_cache.stats), "seconds": time.monotonic() - t0}


def _store_point(task: PointTask) -> dict[str, Any]:
    from pcm_hil_noisemodel import NoiseModel

    from ..store_job import run_store_job

    model_cache.use(task.cache_dir)
    t0 = time.monotonic()
    p = task.point
    d = Path(task.directory)
    if d.exists():  # a point killed half-way: its run store is incomplete, start it again
        shutil.rmtree(d)
    d.mkdir(parents=True)
    NoiseModel.from_dict(task.noise).save(d / "noise.json")
    with app.open_store(d) as store, \
            app.open_chip(app.ChipOptions(profile=p.profile, seed=p.chip_seed), Geometry(*p.geometry)) as chip:
        noise = app.noise_model_for(chip, store, str(d / "noise.json"))  # checks it is this chip's
        out = run_store_job(chip, noise, store, p.store_config())
    record = out.record
    return {"key": p.key(), "record": record, "cache": asdict(model_cache.stats),
            "seconds": time.monotonic() - t0, "directory": str(d)}


@dataclass
class StudyResult:
    """A study run: every point's row (point and store record), and what this run did."""

    config: StudyConfig
    rows: list[dict[str, Any]]          # {"point": Point, "record": dict, "seconds": float}
    computed: int = 0                   # points run now
    reused: int = 0                     # points found finished in the run directory
    failed: list[dict[str, str]] = field(default_factory=list)
    calibrated: int = 0
    cache: dict[str, int] = field(default_factory=lambda: {"hits": 0, "misses": 0})
    seconds: float = 0.0
    run_dir: str = ""

    def summary(self) -> dict[str, Any]:
        return {"points": len(self.rows), "computed": self.computed, "reused": self.reused, "failed": self.failed,
                "chips_calibrated": self.calibrated, "cache": self.cache, "seconds": self.seconds,
                "run_dir": self.run_dir}


def finished_points(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Key → {"point", "record", "seconds", "checkpoint"} of every finished point in the study's index
    whose model checkpoint is the shipped one now: a point of a model retrained since is not finished."""
    path = Path(run_dir) / app.STORE_FILE
    if not path.exists():
        return {}
    out: dict[str, dict[str, Any]] = {}
    current: dict[str, str | None] = {}  # model → its checkpoint now
    with app.open_store(run_dir) as index:
        runs = index.runs()
        for run_id in runs.loc[(runs["kind"] == POINT_KIND) & (runs["status"] == "done"), "run_id"]:
            info = index.run(run_id)
            res = info["result"] or {}
            if res.get("schema") != SCHEMA:
                continue
            model = res["point"]["model"]
            if model not in current:
                current[model] = shipped(model).get("sha256")
            if res.get("checkpoint") == current[model]:
                out[info["settings"]["study_point"]] = res
    return out


def chip_dir(run_dir: Path, p: Point) -> Path:
    return run_dir / "chips" / p.chip_name()


def estimate_seconds(cfg: StudyConfig, run_dir: str | Path, slots: int) -> dict[str, Any]:
    """Wall time of what is left to do, from the seconds per point measured so far in this run
    directory (per model), else the table measured on the development machine."""
    done = finished_points(run_dir)
    measured: dict[str, list[float]] = {}
    for row in done.values():
        measured.setdefault(row["point"]["model"], []).append(row["seconds"])
    todo = [p for p in cfg.points() if p.key() not in done]
    work = 0.0
    for p in todo:
        per = float(np.mean(measured[p.model])) if p.model in measured else \
            SECONDS_PER_POINT.get(p.model, 300.0) * (0.5 + 0.1 * p.programmings)
        work += per
    chips = {p.chip_name(): p for p in todo if not (chip_dir(Path(run_dir), p) / "noise.json").exists()}
    warm = sum(SECONDS_WARMUP.get(m, 600.0) for m in {p.model for p in todo} if m not in measured)
    cal = sum(SECONDS_CALIBRATION.get(p.geometry, 60.0) for p in chips.values())
    wall = (warm + cal + work) / max(1, slots)
    return {"points": len(cfg.points()), "points_left": len(todo), "slots": slots, "seconds": wall,
            "basis": "seconds per point measured in this run directory" if measured else
                     "seconds per point measured on the 2-core development machine"}


def run_study(cfg: StudyConfig, run_dir: str | Path, backend: Backend, progress: Progress | None = None
              ) -> StudyResult:
    """Run every point of ``cfg`` not finished yet in ``run_dir`` on ``backend``; return all rows."""
    report = progress or (lambda *a: None)
    t0 = time.monotonic()
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = str(run_dir / "cache")
    points = cfg.points()
    done = finished_points(run_dir)
    todo = [p for p in points if p.key() not in done]
    result = StudyResult(cfg, [], reused=len(points) - len(todo), run_dir=str(run_dir))
    hits = misses = 0
    noise: dict[str, dict[str, Any]] = {}
    if todo:
        # phase 1: chips and compressed models, in parallel
        chips: dict[str, Point] = {}
        for p in todo:
            f = chip_dir(run_dir, p) / "noise.json"
            if f.exists():
                noise[p.chip_name()] = json.loads(f.read_text())
            else:
                chips.setdefault(p.chip_name(), p)
        warm: list[Any] = []
        seen: set[Any] = set()
        for p in todo:
            if compression_key(p) not in seen:
                seen.add(compression_key(p))
                warm.append(WarmTask(p, cache_dir))
            cfg_p = p.store_config()
            if cfg_p.baselines.search:
                for s in cfg_p.baselines.sparsities:
                    if s > 0 and (p.model, "prune", s) not in seen:
                        seen.add((p.model, "prune", s))
                        warm.append(WarmTask(p, cache_dir, s))
        first = [ChipTask(p, str(chip_dir(run_dir, p))) for p in chips.values()] + warm
        # the longest first (a ResNet-20 fine-tune takes 20 min, a LeNet one 2), so that no worker idles at the end
        first.sort(key=lambda t: -(SECONDS_CALIBRATION.get(t.point.geometry, 60.0) if isinstance(t, ChipTask)
                                   else SECONDS_WARMUP.get(t.point.model, 600.0)))
        report("chips and compression", 0, len(first))
        for n, (i, out, err) in enumerate(backend.run(run_task, first), 1):
            task = first[i]
            if err is not None:
                raise RuntimeError(f"{type(task).__name__} for {task.point.model} failed: {err}") from err
            if isinstance(task, ChipTask):
                f = Path(task.directory) / "noise.json"
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_text(json.dumps(out["noise"]))
                noise[task.point.chip_name()] = out["noise"]
                result.calibrated += 1
            else:
                hits, misses = hits + out["cache"]["hits"], misses + out["cache"]["misses"]
            report("chips and compression", n, len(first))
        # phase 2: the points
        tasks = [PointTask(p, noise[p.chip_name()], str(run_dir / "points" / p.key()), cache_dir) for p in todo]
        report("points", 0, len(tasks))
        with app.open_store(run_dir) as index:
            for n, (i, out, err) in enumerate(backend.run(run_task, tasks), 1):
                p = tasks[i].point
                settings = {"study_point": p.key(), "point": asdict(p), "study": cfg.as_dict()}
                run_id = index.create_run(POINT_KIND, settings)
                if err is not None:
                    index.finish(run_id, status=f"failed: {type(err).__name__}: {err}"[:500])
                    result.failed.append({"point": p.key(), "model": p.model, "setting": p.setting.name,
                                          "error": f"{type(err).__name__}: {err}"})
                else:
                    row = {"schema": SCHEMA, "point": asdict(p), "record": out["record"], "seconds": out["seconds"],
                           "directory": out["directory"], "checkpoint": shipped(p.model).get("sha256")}
                    index.finish(run_id, result=row)
                    done[p.key()] = json.loads(json.dumps(row, default=_jsonable))
                    result.computed += 1
                    hits, misses = hits + out["cache"]["hits"], misses + out["cache"]["misses"]
                report("points", n, len(tasks))
    result.cache = {"hits": hits, "misses": misses}
    result.rows = [done[p.key()] for p in points if p.key() in done]
    result.seconds = time.monotonic() - t0
    return result


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
