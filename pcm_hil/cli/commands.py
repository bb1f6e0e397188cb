"""The commands: each turns parsed options into configs, calls the application layer and
prints its result (a table, or ``--json``)."""
from __future__ import annotations

import argparse
import json
import threading
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from .. import app
from ..app import ChipOptions, StageProgress
from . import render


def _emit(args: argparse.Namespace, result: dict[str, Any], text: Callable[[], str]) -> None:
    print(render.as_json(result) if args.json else text())


def _bars(args: argparse.Namespace) -> StageProgress:
    return StageProgress(not args.json and sys.stderr.isatty())


def _absolute(path: str | None) -> str | None:
    """A path as a run records it: absolute, so that the run loads from any directory."""
    return str(Path(path).resolve()) if path else None


def demo(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pcm_hil_noisemodel import NoiseModel

    from ..calibrate import learned_settings
    from ..demo import DemoConfig, DemoSettings, run_demo

    model = NoiseModel.load(args.noise_model) if args.noise_model else None
    with app.open_store(args.run_dir) as rs, app.chip_for_run(ChipOptions.of(args), rs) as chip:
        cfg = DemoConfig(cells=args.cells, levels=args.levels, tolerance_us=args.tolerance,
                         read_after_s=tuple(args.read_after), spare_fraction=args.spares)
        with tqdm(total=min(cfg.cells, chip.geometry.n_cells), desc="program-and-verify", unit="cell",
                  disable=args.json or not sys.stderr.isatty()) as bar:
            def work(cells):  # the range and the loop settings from calibration (see calibrate.learned_settings)
                learned = learned_settings(chip, cells, cfg.tolerance_us, model, rs)
                settings = DemoSettings(learned.verify, learned.g_sat_us, learned.source)
                return run_demo(chip, cfg, progress=lambda d, t: bar.update(d - bar.n), cells=cells, settings=settings)

            r = app.owned_run(chip, rs, "demo", min(cfg.cells_claimed(), chip.geometry.n_cells), work,
                              overwrite=args.overwrite)
    _emit(args, r, lambda: render.demo(r, args.seed))
    return 0


def benchmark(args: argparse.Namespace) -> int:
    import importlib

    bench = importlib.import_module(f"{__package__.rsplit('.', 1)[0]}.benchmarks.{args.what}")
    if args.what == "emulator":
        r = bench.run(cells=args.cells or 1_000_000, repeats=args.repeats or 7, seed=args.seed, profile=args.profile)
    elif args.what == "wire":
        r = bench.run(cells=args.cells or 100_000, repeats=args.repeats or 7, seed=args.seed)
    elif args.what == "faults":
        r = bench.run(seed=args.seed)
    elif args.what == "devices":
        with _bars(args) as bar:
            r = bench.run(n_devices=args.devices, quick=args.quick, seed=args.seed, store=args.store, progress=bar)
    else:
        with _bars(args) as bar:
            r = bench.run(model=args.model, seed=args.seed, sparsity=args.sparsity, replicas=args.replicas,
                          repeats=args.repeats or 5, progress=bar)
    _emit(args, r, lambda: render.benchmark(args.what, r))
    return 0


def profile(args: argparse.Namespace) -> int:
    from ..emulator import preset_names, random_profile, resolve

    if args.action == "random":
        prof = random_profile(args.seed)
        _emit(args, prof.to_dict(), lambda: render.profile(prof.describe(), prof.name))
        return 0
    if args.action == "list":
        names = preset_names()
        _emit(args, {"presets": names}, lambda: "\n".join(names))
        return 0
    prof = resolve(args.name)
    _emit(args, prof.to_dict(), lambda: render.profile(prof.describe(), prof.name))
    return 0


def calibrate(args: argparse.Namespace) -> int:
    from pcm_hil_noisemodel import NoiseModel

    from ..calibrate import CalibrationConfig, run_calibration, validate
    from ..checkpoint import StopRequest

    if args.action == "validate":
        noise = NoiseModel.load(args.noise_model)
        with app.open_store(args.run_dir) as rs, app.chip_for_run(ChipOptions.of(args), rs) as chip, \
                _bars(args) as bar:
            chip.require_same_chip(noise.provenance.get("chip_id"), "the noise model was fitted")
            r = app.owned_run(chip, rs, "validation", args.cells,
                              lambda cells: validate(chip, noise, cells, tolerance_us=args.tolerance,
                                                     max_pulses=args.max_pulses, progress=bar),
                              settings={"noise_model": noise.provenance}, overwrite=args.overwrite)
        _emit(args, r, lambda: render.validation(r, args.noise_model, args.tolerance, args.max_pulses))
        return 0
    cfg = CalibrationConfig(cells=args.cells or CalibrationConfig.cells, first_cell=args.first_cell, seed=args.seed)
    with app.open_store(args.run_dir) as store, app.chip_for_run(ChipOptions.of(args), store, args.resume) as chip, \
            StopRequest() as stop, _bars(args) as bar:
        run_id, noise = run_calibration(chip, store, cfg, progress=bar, stop=stop, resume=args.resume,
                                        overwrite=args.overwrite)
        noise.save(args.out)
        report = None
        if args.report != "none":
            from pcm_hil_noisemodel.report import write_report

            data = {t: store.read(run_id, t) for t in ("programming", "retention", "trace")}
            report = str(write_report(noise, data, args.report or str(args.out).removesuffix(".json") + ".png"))
    summary = {"run_id": run_id, "noise_model": str(args.out), "report": report, "store": str(store.path), **noise.summary()}
    _emit(args, summary, lambda: render.calibration(summary, noise, cfg.cells))
    return 0


def evaluation_chips(args: argparse.Namespace) -> int:
    """``--chips``, or its default: 2 on the emulator (the job's chip and one sibling), 1 on a
    bench; never more than the programmings."""
    if args.chips is None:
        return 1 if args.bench else min(2, args.programmings)
    if args.bench and args.chips > 1:
        raise ValueError(f"--chips {args.chips}: a bench has one chip (sibling chips exist only on the emulator); "
                         "accepted with --bench: 1")
    return args.chips


def store_config(args: argparse.Namespace) -> Any:
    """The :class:`~pcm_hil.store_job.StoreConfig` of a ``store`` command line."""
    from ..coding import CodeConfig
    from ..models import own_model_name
    from ..store_job import StoreConfig

    return StoreConfig.from_options(
        model=own_model_name(args.model), checkpoint=_absolute(args.checkpoint), data_dir=_absolute(args.data_dir),
        code=CodeConfig(args.code, percentile=args.percentile), sparsity=args.sparsity, importance=args.importance,
        allocation=args.allocation, pulse_budget=args.pulse_budget, target_loss=args.target_loss,
        replicas_per_weight=1.5 if args.replicas == "auto" else args.replicas, replicas_auto=args.replicas == "auto",
        max_storage_loss_pp=args.max_storage_loss, replicas_per=args.replicas_per, retention_s=args.retention,
        bn_samples=args.bn_samples, drift_compensation=args.drift_compensation, programmings=args.programmings,
        chips=evaluation_chips(args),
        medium_cells=args.medium_cells, digital_nm=args.digital_nm, seed=args.seed,
        overwrite=args.overwrite, mask_in_cells=args.mask_in_cells, mask_gap_us=args.mask_gap,
        **({} if args.loss_margin is None else {"loss_margin": args.loss_margin}))


def store(args: argparse.Namespace) -> int:
    from ..calibrate import run_calibration
    from ..checkpoint import StopRequest
    from ..store_job import model_cache, resume_store_job, run_store_job
    from ..store_job.inputs import load_inputs

    cfg = store_config(args)
    # fine-tunes are kept in the run directory (a rerun, or a store after a plan, reuses them);
    # those of the default main job come from the package's shipped layer
    with app.open_store(args.run_dir) as rs, app.chip_for_run(ChipOptions.of(args), rs, args.resume) as chip, \
            model_cache.using(Path(args.run_dir) / "model-cache"), StopRequest() as stop, _bars(args) as bar:
        if args.resume and rs.run(args.resume)["kind"] == "calibration":
            # killed while calibrating on the spot: finish that calibration, then the store it was for
            cfg, stored = _store_of_calibration(rs, args.resume, cfg)
            if stored is not None:  # the store run had begun: continue it
                out = resume_store_job(chip, rs, stored, progress=bar, stop=stop)
            else:
                inputs = load_inputs(cfg.network)  # checked before any pulse
                _, noise = run_calibration(chip, rs, progress=bar, stop=stop, resume=args.resume)
                out = run_store_job(chip, noise, rs, cfg, progress=bar, stop=stop, inputs=inputs)
        elif args.resume:
            out = resume_store_job(chip, rs, args.resume, progress=bar, stop=stop)
        else:
            inputs = load_inputs(cfg.network)  # checked before any pulse
            noise = app.noise_model_for(chip, rs, args.noise_model, seed=args.seed, progress=bar, stop=stop,
                                        purpose={"store_config": asdict(cfg)})
            out = run_store_job(chip, noise, rs, cfg, progress=bar, stop=stop, inputs=inputs)
        r = out.record
        if args.report != "none":
            from ..store_job.report import write_store_report

            r["report"] = str(write_store_report(out, args.report or rs.run_file(r["run_id"], "report")))
    _emit(args, r, lambda: render.store(r))
    return 0


def plan(args: argparse.Namespace) -> int:
    from ..checkpoint import StopRequest
    from ..models import own_model_name
    from ..store_job import model_cache
    from ..store_job.inputs import load_inputs
    from ..store_job.job import StoreConfig
    from ..store_job.plan import PlanConfig, SearchSpace, plan_and_store

    space = SearchSpace(sparsities=args.sparsities, codes=args.codes, replicas=args.replicas,
                        replicas_per=args.replicas_per, budget_tolerances_us=args.budget_tolerances)
    cfg = PlanConfig(max_accuracy_drop=args.max_accuracy_drop / 100, space=space, max_draws=args.max_draws,
                     min_draws=min(8, args.max_draws), final_draws=args.final_draws,
                     final_max_draws=max(args.final_max_draws, args.final_draws), seed=args.seed)
    base = dict(model=own_model_name(args.model), retention_s=args.retention, programmings=args.programmings,
                chips=evaluation_chips(args),
                medium_cells=args.medium_cells, digital_baseline=not args.no_digital_baseline, seed=args.seed,
                overwrite=args.overwrite)
    StoreConfig.from_options(**base)  # refuses bad options before any pulse
    inputs = load_inputs(StoreConfig.from_options(**base).network)  # checked before any pulse
    model_cache.use(Path(args.run_dir) / "model-cache")  # the store job finds what the planner compressed
    with app.open_store(args.run_dir) as rs, app.chip_for_run(ChipOptions.of(args), rs) as chip, \
            StopRequest() as stop, _bars(args) as bar:
        noise = app.noise_model_for(chip, rs, args.noise_model, seed=args.seed, progress=bar, stop=stop,
                                    purpose={"plan": {"model": args.model, "max_accuracy_drop": cfg.max_accuracy_drop}})
        r = plan_and_store(chip, noise, rs, inputs, base, cfg, progress=bar, stop=stop, do_store=not args.no_store)
    _emit(args, r, lambda: render.plan(r))
    return 0 if r["configuration"] is not None else 1


def _store_of_calibration(rs: Any, cal_id: str, given: Any) -> tuple[Any, str | None]:
    """For ``store --resume CAL``: the store config CAL was calibrated for (``given``, the
    options of this command, for a calibration that no store started), and the store run
    that began after it, if any (None: none began)."""
    from ..store_job import StoreConfig

    recorded = rs.run(cal_id)["settings"].get("purpose", {}).get("store_config")
    cfg = StoreConfig.from_dict(recorded) if recorded else given
    for run_id in rs.runs().query("kind == 'store'")["run_id"]:
        info = rs.run(run_id)
        if info["settings"].get("noise_model", {}).get("run_id") == cal_id:
            if info["status"] == "done":
                raise ValueError(f"run {cal_id} is already done, and so is store run {run_id} it calibrated for; "
                                 f"nothing to resume (read the model back with 'pcm-hil load {run_id}')")
            return cfg, run_id
    return cfg, None


def load(args: argparse.Namespace) -> int:
    from ..store_job import load_run

    with app.open_store(args.run_dir) as rs, app.chip_for_run(ChipOptions.of(args), rs, args.run) as chip:
        if args.wait:
            chip.wait(args.wait)
        r = load_run(chip, rs, args.run)
    _emit(args, r, lambda: render.load(r))
    return 0


def runs(args: argparse.Namespace) -> int:
    with app.open_store(args.run_dir) as rs:
        if args.action == "list":
            table, cells = rs.runs(), rs.cell_map()
            _emit(args, {"runs": table.to_dict(orient="records"), "cells": cells.to_dict(orient="records")},
                  lambda: render.runs(table, cells))
            return 0
        if not args.run:
            raise ValueError("runs export needs a RUN id (see 'pcm-hil runs list')")
        written = rs.export(args.run, args.out or f"{args.run}-{args.format}", args.format)
    _emit(args, {"files": [str(p) for p in written]}, lambda: "\n".join(str(p) for p in written))
    return 0


def study(args: argparse.Namespace) -> int:
    import shlex

    from ..study.run import run

    words = ["--quick"] * args.quick + ["--report-only"] * args.report_only
    for opt in ("models", "run_dir", "out"):
        value = getattr(args, opt)
        if value is not None:
            words += [f"--{opt.replace('_', '-')}", ",".join(value) if opt == "models" else str(value)]
    r = run(args, shlex.join(["pcm-hil", "study", *words]), bars=not args.json and sys.stderr.isatty())
    _emit(args, r, lambda: render.study(r))
    return 1 if r.get("failed") else 0


def emulate(args: argparse.Namespace) -> int:
    import signal

    ports = (0, 0, 0) if args.port == 0 else (args.port, args.port + 1, args.port + 2)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _serve(args, ports, stop)
    finally:
        for sig, handler in previous.items():  # an in-process caller gets its Ctrl-C back
            signal.signal(sig, handler)
    print("virtual bench stopped", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace, ports: tuple[int, int, int], stop: threading.Event) -> None:
    """Serve the virtual bench until ``stop`` is set."""
    from ..chip import Geometry
    from ..emulator.instruments import VirtualBench

    geometry = Geometry(*args.geometry)
    faults = None
    if args.fault_rate > 0:
        from ..emulator.instruments.faults import FaultPlan

        faults = FaultPlan(rate=args.fault_rate, kinds=tuple(args.faults.split(",")), seed=args.fault_seed,
                           delay_s=args.fault_delay, silent_s=args.fault_delay)
    with VirtualBench(geometry, profile=args.profile, seed=args.seed, host=args.host, ports=ports,
                      faults=faults) as vb:
        if args.bench_file:
            vb.bench_config().save(args.bench_file)
        if args.ready_file:
            vb.write_ready_file(args.ready_file)
        if args.json:
            print(json.dumps(vb.addresses), flush=True)
        else:
            print(render.emulate(vb.addresses, f"virtual bench ({geometry.arrays}×{geometry.rows}×{geometry.cols} "
                                               f"cells, profile {vb.chip.identity()['profile']}, seed {args.seed}); "
                                               "Ctrl-C to stop"), flush=True)
        stop.wait()
