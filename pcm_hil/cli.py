"""The ``pcm-hil`` command."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import __version__
from .chip import Chip, Geometry
from .table import format_table


def _emit(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    print(json.dumps(result, default=_json_default) if args.json else text)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def add_chip_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--emulated", action="store_true", default=True, help="use the in-process emulated chip (default)")
    g.add_argument("--bench", metavar="FILE", help="use the instrument bench described by a bench TOML file")
    p.add_argument("--profile", default="pcm", help="emulator device profile: preset name or .toml/.json file")
    p.add_argument("--seed", type=int, default=0, help="chip seed (emulator)")


def open_chip(args: argparse.Namespace, geometry: Geometry | None = None) -> Chip:
    """The chip named by ``--emulated``/``--bench`` options."""
    if getattr(args, "bench", None):
        from .bench_chip import BenchChip

        return BenchChip.from_file(args.bench)
    from .emulator import EmulatedChip

    return EmulatedChip(geometry, profile=args.profile, seed=args.seed)


class StageProgress:
    """One tqdm bar per stage of a procedure (``progress(stage, done, total)``); silent for --json."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bar, self.stage = enabled, None, None

    def __call__(self, stage: str, done: float, total: float) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=stage, leave=False, dynamic_ncols=True)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "StageProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _store(args: argparse.Namespace):  # noqa: ANN202
    from pathlib import Path

    from .store import RunStore

    return RunStore(Path(args.run_dir) / "pcm-hil.sqlite")


# -- demo -----------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .program import VerifyConfig, program_verify

    if not 1 <= args.levels <= 64:
        raise ValueError(f"--levels must be in [1, 64], got {args.levels}")
    with open_chip(args) as chip:
        n = min(args.cells, chip.geometry.n_cells)
        if n < args.levels:
            raise ValueError(f"--cells must be at least --levels ({args.levels}), got {args.cells}")
        g_hi = 0.85 * getattr(getattr(chip, "profile", None), "g_max_us", 25.0)
        levels = np.linspace(1.0, g_hi, args.levels)
        cells = np.arange(n, dtype=np.int64)
        targets = levels[np.arange(n) % args.levels]
        cfg = VerifyConfig(tolerance_us=args.tolerance)
        with tqdm(total=n, desc="program-and-verify", unit="cell", disable=args.json or not sys.stderr.isatty()) as bar:
            res = program_verify(chip, cells, targets, cfg, progress=lambda d, t: bar.update(d - bar.n))
        t_end = chip.now()
        reads: dict[float, np.ndarray] = {}
        for age in sorted(args.read_after):
            chip.wait(max(0.0, t_end + age - chip.now()))
            reads[age] = chip.read(cells, n_avg=cfg.n_avg)
        rows, per_level = [], []
        for lv in levels:
            m = targets == lv
            row = {"target_us": float(lv), "yield": float(res.converged[m].mean()),
                   "pulses_mean": float(res.pulses[m].mean())}
            for age, g in reads.items():
                ok = m & res.converged
                row[f"mean_us@{age:g}s"] = float(g[ok].mean()) if ok.any() else float("nan")
                row[f"sigma_us@{age:g}s"] = float(g[ok].std()) if ok.any() else float("nan")
            per_level.append(row)
            rows.append(list(row.values()))
        chip_info = {k: v for k, v in chip.identity().items() if k != "profile_parameters"}
        result = {"job": "demo", "chip": chip_info,
                  "cells": n, "levels": args.levels, "verify": asdict(cfg), "summary": res.summary(),
                  "per_level": per_level, "version": __version__}
        s = res.summary()
        text = "\n".join([
            f"pcm-hil {__version__}: programmed {n} cells to {args.levels} levels on {type(chip).__name__}"
            f" (tolerance ±{args.tolerance} µS, seed {args.seed})",
            f"yield {s['yield']:.1%}, {s['pulses_total']} SET pulses (mean {s['pulses_mean']:.2f}, p95 "
            f"{s['pulses_p95']:.0f}), {s['resets_total']} RESET restarts, {s['seconds']:.2f} s",
            "",
            format_table(list(per_level[0].keys()), rows, title="per level (converged cells, reads averaged ×%d)" % cfg.n_avg),
        ])
        _emit(args, result, text)
    return 0


# -- bench ----------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "emulator":
        from .bench import emulator

        r = emulator.run(cells=args.cells or 1_000_000, repeats=args.repeats, seed=args.seed)
        text = format_table(["figure", "value"], [
            ["cell-iterations/s (SET+read, ascending batch)", r["cell_iterations_per_s"]],
            ["cell-iterations/s (shuffled batch)", r["cell_iterations_per_s_shuffled"]],
            ["bytes per cell", r["bytes_per_cell"]],
            ["one normal draw per cell (s)", r["normal_draw_seconds"]],
            ["iteration / normal draw", r["iteration_over_normal_ratio"]],
        ], title=f"emulator benchmark, {r['cells']} cells, median of {r['repeats']}")
    elif args.what == "wire":
        from .bench import wire

        r = wire.run(cells=args.cells or 100_000, repeats=args.repeats, seed=args.seed)
        text = format_table(["figure", "value"], [
            ["cell ops/s, batched blocks", r["cell_ops_per_s_block"]],
            ["cell ops/s, one cell per transaction", r["cell_ops_per_s_single"]],
            ["ratio", r["ratio"]],
        ], title=f"wire benchmark over loopback, median of {r['repeats']}")
    elif args.what == "faults":
        from .bench import faults

        r = faults.run(seed=args.seed)
        text = format_table(["figure", "value"], [[k, r[k]] for k in (
            "transactions", "faults_injected", "faults_detected", "pulse_batches_uncertain", "crashes",
            "runs_resumed", "measurements_lost", "cells_diverged", "cells_made_stuck", "yield", "yield_uninterrupted",
            "yield_excluding_stuck", "seconds")], title=f"fault soak on the virtual bench, rate {r['fault_rate']}")
    elif args.what == "budgets":
        from .bench import budgets

        with StageProgress(not args.json and sys.stderr.isatty()) as bar:
            r = budgets.run(seed=args.seed, replicas=args.replicas, progress=bar)
        rows = [[name.replace("_", " "), r[f"pulses_{name}"]]
                for name in ("importance", "uniform", "uniform_replicas", "naive")]
        rows.append(["uniform / importance", r["pulse_ratio"]])
        rows.append(["uniform replicas / importance", r["pulse_ratio_all_uniform"]])
        rows.append(["bound: uniform / cheapest plan", r["pulse_ratio_bound"]])
        text = format_table(["strategy", "pulses to stay within 0.5 pp"], rows,
                            title=f"budgets, {r['model']}, {r['cells']} cells, target {r['accuracy_target']:.2%}")
    else:  # pragma: no cover - argparse restricts choices
        raise ValueError(args.what)
    _emit(args, r, text)
    return 0


# -- profile --------------------------------------------------------------------------
def cmd_profile(args: argparse.Namespace) -> int:
    from .emulator import preset_names, resolve

    if args.action == "list":
        names = preset_names()
        _emit(args, {"presets": names}, "\n".join(names))
        return 0
    prof = resolve(args.name)
    rows = [[name, value, unit, source] for name, value, unit, source in prof.describe()]
    _emit(args, prof.to_dict(), format_table(["field", "value", "unit", "source"], rows, title=f"profile {prof.name}"))
    return 0


# -- calibrate ------------------------------------------------------------------------
def cmd_calibrate(args: argparse.Namespace) -> int:
    from pcm_hil_noisemodel import NoiseModel

    from .calibrate import CalibrationConfig, run_calibration, validate

    if args.action == "run":
        from .checkpoint import StopRequest

        cfg = CalibrationConfig(cells=args.cells, first_cell=args.first_cell, seed=args.seed)
        with _store(args) as store, chip_for_run(args, store, args.resume) as chip, StopRequest() as stop, \
                StageProgress(not args.json and sys.stderr.isatty()) as bar:
            run_id, model = run_calibration(chip, store, cfg, progress=bar, stop=stop, resume=args.resume)
            model.save(args.out)
            report = None
            if args.report != "none":
                from pcm_hil_noisemodel.report import write_report

                data = {t: store.read(run_id, t) for t in ("programming", "retention", "trace")}
                report = str(write_report(model, data, args.report or str(args.out).removesuffix(".json") + ".png"))
        summary = {"run_id": run_id, "model": str(args.out), "report": report, "store": str(store.path),
                   **model.summary()}
        p = model.programming_
        rows = []
        for ti, tol in enumerate(model.tolerances_us_):
            for li, lv in enumerate(model.levels_us_):
                rows.append([tol, lv, int(p.n[ti, li]), p.converged_cdf[ti, li, -1], p.sigma_us[ti, li],
                             p.offset_us[ti, li],
                             float(model.expected_pulses(lv, tol, model.max_pulses_)),
                             model.drift_.nu_mean[li] if li < len(model.drift_.nu_mean) else float("nan")])
        rn, f = model.read_noise_, model.faults_
        text = "\n".join([
            f"calibration {run_id}: {args.cells} cells, model written to {args.out}" + (f", report {report}" if report else ""),
            f"window: floor {model.window_.g_floor_us:.3g} µS, saturation {model.window_.g_sat_us:.3g} µS "
            f"(device spread {model.window_.g_sat_spread:.1%})",
            f"read noise per read: σ = {rn.a:.4f}·G + {rn.b_us:.3f} µS (±{rn.a_se:.4f}, ±{rn.b_us_se:.3f}); "
            f"averaging exponent {rn.averaging_exponent:.3f} ± {rn.averaging_exponent_se:.3f}",
            f"faults: at RESET {f.reset:.3%}, at SET {f.set:.3%}, random {f.random:.3%} of {f.cells} cells",
            "",
            format_table(["tol_us", "level_us", "cells", "yield", "sigma_us", "offset_us", "pulses", "nu"], rows,
                         title=f"programming (cap {model.max_pulses_}, error {model.t0_s_:g} s after P&V) and drift"),
        ])
        _emit(args, summary, text)
        return 0
    model = NoiseModel.load(args.model)
    with open_chip(args) as chip, StageProgress(not args.json and sys.stderr.isatty()) as bar:
        result = validate(chip, model, n_cells=args.cells, tolerance_us=args.tolerance,
                          max_pulses=args.max_pulses, progress=bar)
    rows = [[r["level_us"], r["cells"], r["sigma_us"], r["sigma_predicted_us"], r["pulses"], r["pulses_predicted"],
             r["nu_mean"], r["nu_predicted"], r["ks"]] for r in result["per_level"]]
    text = "\n".join([
        f"validation of {args.model} on {result['cells']} fresh cells (from {result['first_cell']}), "
        f"±{args.tolerance} µS, cap {args.max_pulses}",
        f"worst level: σ error {result['sigma_rel_error_max']:.1%}, pulses error {result['pulses_rel_error']:.1%}, "
        f"KS {result['ks_max']:.3f}; drift ν error {result['drift_nu_rel_error']:.1%}",
        "",
        format_table(["level_us", "cells", "sigma", "sigma_pred", "pulses", "pulses_pred", "nu", "nu_pred", "ks"], rows),
    ])
    _emit(args, result, text)
    return 0


# -- store / load ---------------------------------------------------------------------
def chip_for_run(args: argparse.Namespace, store, run_id: str | None) -> Chip:  # noqa: ANN001
    """The chip for a new run (``--emulated``/``--bench``), or the one an earlier run used:
    the bench, or the emulated chip saved next to that run (its cells are non-volatile)."""
    if run_id is None or args.bench:
        return open_chip(args)
    from .emulator import EmulatedChip

    store.run(run_id)  # names an unknown run before anything else
    state = store.path.parent / f"{run_id}-chip.npz"
    if not state.exists():
        raise ValueError(f"run {run_id} has no saved emulated chip ({state}); give --bench FILE for a real chip")
    return EmulatedChip.load_state(state)


def _noise_model(args: argparse.Namespace, chip: Chip, store, bar, stop=None):  # noqa: ANN001, ANN202
    """The noise model from --noise-model, or calibrated now on the chip's last cells."""
    from pcm_hil_noisemodel import NoiseModel

    from .calibrate import CalibrationConfig, chip_id, run_calibration

    if args.noise_model:
        model = NoiseModel.load(args.noise_model)
        if model.provenance.get("chip_id") not in (None, chip_id(chip)):
            raise ValueError(f"noise model {args.noise_model} was fitted on {model.provenance['chip_id']!r}, "
                             f"not on this chip ({chip_id(chip)!r})")
        return model
    n = chip.geometry.n_cells
    cells = min(20_000, n // 4)
    _, model = run_calibration(chip, store, CalibrationConfig(cells=cells, first_cell=n - cells, seed=args.seed),
                               progress=bar, stop=stop)
    return model


def _absolute(path: str | None) -> str | None:
    """A path as the run records it: absolute, so that the run loads from any directory."""
    return str(Path(path).resolve()) if path else None


def cmd_store(args: argparse.Namespace) -> int:
    from .calibrate import run_calibration
    from .checkpoint import StopRequest
    from .coding import CodeConfig
    from .models import own_model_name
    from .pipeline import StoreConfig, check_model, resume_store_job, run_store_job

    cfg = StoreConfig(model=own_model_name(args.model), checkpoint=_absolute(args.checkpoint),
                      data_dir=_absolute(args.data_dir),
                      code=CodeConfig(args.code, percentile=args.percentile), sparsity=args.sparsity,
                      importance=args.importance, allocation=args.allocation, pulse_budget=args.pulse_budget,
                      target_loss=args.target_loss, replicas_per_weight=args.replicas, retention_s=args.retention,
                      bn_samples=args.bn_samples,
                      seed=args.seed)
    with _store(args) as store, chip_for_run(args, store, args.resume) as chip, StopRequest() as stop, \
            StageProgress(not args.json and sys.stderr.isatty()) as bar:
        if args.resume and store.run(args.resume)["kind"] == "calibration":
            # killed while calibrating on the spot: finish that calibration, then store
            _, noise = run_calibration(chip, store, progress=bar, stop=stop, resume=args.resume)
            r = run_store_job(chip, noise, store, cfg, args.run_dir, progress=bar, stop=stop)
        elif args.resume:
            r = resume_store_job(chip, store, args.resume, args.run_dir, progress=bar, stop=stop)
        else:
            check_model(cfg)
            noise = _noise_model(args, chip, store, bar, stop)
            r = run_store_job(chip, noise, store, cfg, args.run_dir, progress=bar, stop=stop)
    decoded = r.pop("_decoded", None)
    if args.report != "none":
        from .store_report import write_store_report

        r["report"] = str(write_store_report(r, decoded, args.report or f"{args.run_dir}/{r['run_id']}.png"))
    r.pop("_cells", None)
    mr = r["memory_reduction"]
    rows = [
        ["accuracy: reference (float)", f"{r['accuracy_reference']:.2%}"],
        ["accuracy: compressed, stored digitally", f"{r['accuracy_compressed']:.2%}"],
        [f"accuracy: stored, read after {r['retention_s']:g} s", f"{r['accuracy_stored']:.2%}"],
        *([["  the same, keeping the stored BN statistics", f"{r['accuracy_stored_without_bn_recalibration']:.2%}"]]
          if "accuracy_stored_without_bn_recalibration" in r else []),
        ["weights / cells / digital cells", f"{r['weights']} / {r['cells']} / {r['digital_cells']:.0f}"],
        ["cells per weight (all costs)", f"{r['cells_per_weight']:.3f}"],
        ["pulses (SET + RESET), yield", f"{r['pulses']:,}, {r['yield']:.2%}"],
        ["reduction vs fp32 on SLC + ECC", f"{mr['fp32_slc_ecc']:.1f}×"],
        ["reduction vs compressed on SLC + ECC", f"{mr['compressed_slc_ecc']:.1f}×"],
        ["reduction vs best digital on MLC + ECC",
         "n/a" if mr["best_digital_mlc_ecc"] is None else f"{mr['best_digital_mlc_ecc']:.2f}×"
         + (f" ({r['best_digital']['bits']} bits, {r['best_digital']['sparsity']:.0%} pruned)" if r["best_digital"] else "")],
        ["seconds", f"{r['seconds']:.1f}"],
    ]
    text = format_table(["", ""], rows, title=f"stored {r['model']} as run {r['run_id']} ({args.code} code, "
                                              f"{args.allocation} allocation)")
    lost = r["accuracy_reference"] - r["accuracy_compressed"]
    if lost > 0.02 and not args.json:
        text += (f"\nnote: compression alone cost {lost:.1%} (pruning {r['sparsity']:.0%} of the weights); "
                 "a smaller model may need a lower --sparsity")
    _emit(args, r, text)
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from .pipeline import load_run

    with _store(args) as store, chip_for_run(args, store, args.run) as chip:
        if args.wait:
            chip.wait(args.wait)
        r = load_run(chip, store, args.run, args.run_dir)
    text = format_table(["", ""], [["accuracy read back now", f"{r['accuracy_loaded']:.2%}"],
                                   ["accuracy at store time", f"{r['accuracy_stored_at_store_time']:.2%}"],
                                   ["reference accuracy", f"{r['accuracy_reference']:.2%}"],
                                   ["cells read", r["cells"]]], title=f"loaded {r['model']} from run {args.run}")
    _emit(args, r, text)
    return 0


# -- runs -----------------------------------------------------------------------------
def cmd_runs(args: argparse.Namespace) -> int:
    with _store(args) as store:
        if args.action == "list":
            runs = store.runs()
            _emit(args, {"runs": runs.to_dict(orient="records")},
                  format_table(list(runs.columns), runs.values.tolist()) if len(runs) else "no runs")
            return 0
        if not args.run:
            raise ValueError("runs export needs a RUN id (see 'pcm-hil runs list')")
        written = store.export(args.run, args.out or f"{args.run}-{args.format}", args.format)
        _emit(args, {"files": [str(p) for p in written]}, "\n".join(str(p) for p in written))
    return 0


# -- emulate --------------------------------------------------------------------------
def cmd_emulate(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .emulator.instruments import VirtualBench

    if not 0 <= args.port <= 65533:
        raise ValueError(f"--port must be in [0, 65533], got {args.port}")
    ports = (0, 0, 0) if args.port == 0 else (args.port, args.port + 1, args.port + 2)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    geometry = Geometry(*args.geometry)
    faults = None
    if args.fault_rate > 0:
        from .emulator.instruments.faults import FaultPlan

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
            print(format_table(["instrument", "resource"], list(vb.addresses.items()),
                               title=f"virtual bench ({geometry.arrays}×{geometry.rows}×{geometry.cols} cells, "
                                     f"profile {vb.chip.profile.name}, seed {args.seed}); Ctrl-C to stop"), flush=True)
        stop.wait()
    print("virtual bench stopped", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pcm-hil", description=__doc__)
    p.add_argument("--version", action="version", version=f"pcm-hil {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="program and read back an emulated array; print a summary")
    add_chip_args(d)
    d.add_argument("--cells", type=int, default=20_000, help="cells to program (default 20000)")
    d.add_argument("--levels", type=int, default=8, help="target levels across the window (default 8)")
    d.add_argument("--tolerance", type=float, default=0.5, help="verify tolerance in µS (default 0.5)")
    d.add_argument("--read-after", type=float, nargs="+", default=[20.0, 3600.0, 86400.0], metavar="S",
                   help="read back this many seconds after programming (default 20 3600 86400)")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("bench", help="benchmarks (figures, not pass/fail)")
    b.add_argument("what", choices=["emulator", "wire", "budgets", "faults"])
    b.add_argument("--cells", type=int, default=None, help="batch size (default: 1e6 emulator, 1e5 wire)")
    b.add_argument("--repeats", type=int, default=7)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--replicas", type=float, default=2.0, help="budgets: mean replicas per kept weight (default 2)")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.set_defaults(func=cmd_bench)

    e = sub.add_parser("emulate", help="serve the emulated board, SMU and pulse generator on loopback")
    e.add_argument("--port", type=int, default=0, help="board port P (SMU P+1, PG P+2); 0 picks free ports")
    e.add_argument("--host", default="127.0.0.1", help="loopback address to bind (never another)")
    e.add_argument("--ready-file", metavar="F", help="write the resource strings as JSON here once serving")
    e.add_argument("--bench-file", metavar="F", help="write a bench TOML file for these servers here")
    e.add_argument("--geometry", type=int, nargs=3, default=[4, 512, 512], metavar=("ARRAYS", "ROWS", "COLS"))
    e.add_argument("--profile", default="pcm", help="device profile: preset name or .toml/.json file")
    e.add_argument("--seed", type=int, default=0, help="chip seed")
    e.add_argument("--json", action="store_true", help="print the resource strings as one JSON object")
    e.add_argument("--fault-rate", type=float, default=0.0, help="probability of a fault per board transaction")
    e.add_argument("--faults", default="drop,delay,corrupt,truncate,error,silent,stuck",
                   help="comma-separated fault kinds to inject")
    e.add_argument("--fault-seed", type=int, default=0, help="seed of the fault draws")
    e.add_argument("--fault-delay", type=float, default=2.0, help="seconds a delayed or silent board holds back")
    e.set_defaults(func=cmd_emulate)

    c = sub.add_parser("calibrate", help="measure the chip and fit its noise model, or validate a model")
    csub = c.add_subparsers(dest="action", required=True)
    cr = csub.add_parser("run", help="calibrate: measure and fit")
    add_chip_args(cr)
    cr.add_argument("--cells", type=int, default=20_000, help="cells to use (default 20000)")
    cr.add_argument("--first-cell", type=int, default=0, help="first cell index used (default 0)")
    cr.add_argument("--out", default="noise-model.json", help="model file to write (JSON)")
    cr.add_argument("--report", default=None, help="PNG report path (default next to --out; 'none' to skip)")
    cr.add_argument("--run-dir", default="runs", help="run store directory (default ./runs)")
    cr.add_argument("--resume", metavar="RUN", help="continue a calibration run that was stopped or killed")
    cr.add_argument("--json", action="store_true", help="print one JSON object")
    cr.set_defaults(func=cmd_calibrate, resume_command="pcm-hil calibrate run")
    cv = csub.add_parser("validate", help="program fresh cells and compare with the model's predictions")
    cv.add_argument("model", help="noise model JSON file")
    add_chip_args(cv)
    cv.add_argument("--cells", type=int, default=10_000, help="fresh cells to program (default 10000)")
    cv.add_argument("--tolerance", type=float, default=0.5, help="calibrated tolerance to validate (µS)")
    cv.add_argument("--max-pulses", type=int, default=20, help="pulse cap to validate")
    cv.add_argument("--json", action="store_true", help="print one JSON object")
    cv.set_defaults(func=cmd_calibrate)

    st = sub.add_parser("store", help="the main job: store a model in the chip and read it back")
    add_chip_args(st)
    st.add_argument("--model", default="lenet5-fmnist",
                    help="registry model (default lenet5-fmnist), or your own architecture as file.py:Class or "
                         "package.module:Class, built with no arguments (needs --checkpoint and --data-dir)")
    st.add_argument("--checkpoint", help="your own state-dict checkpoint for that architecture")
    st.add_argument("--data-dir", help="evaluation data: a cifar-10-batches-py directory, or x_test.npy/y_test.npy "
                                       "(x_train.npy/y_train.npy too, for fine-tuning and importance)")
    st.add_argument("--noise-model", help="calibrated noise model (default: calibrate now on the chip's last cells)")
    st.add_argument("--code", default="sign", choices=["sign", "pair", "offset", "split", "multilevel"])
    st.add_argument("--percentile", type=float, default=99.5, help="clip |w| at this percentile per tensor")
    st.add_argument("--sparsity", type=float, default=0.75, help="magnitude pruning before storage (default 0.75)")
    st.add_argument("--bn-samples", type=int, default=1000,
                    help="training inputs that re-estimate batch-norm statistics after read-back, for models "
                         "with BN layers (default 1000; 0: keep the stored statistics)")
    st.add_argument("--replicas", type=float, default=2.0, help="mean replicas per kept weight, placed by importance")
    st.add_argument("--importance", default="fisher", choices=["fisher", "hessian", "magnitude"])
    st.add_argument("--allocation", default="importance", choices=["importance", "uniform"])
    st.add_argument("--pulse-budget", type=float, default=None, help="total pulses (default: what uniform ±2 µS, cap 20 would spend)")
    st.add_argument("--target-loss", type=float, default=None,
                    help="instead of a pulse budget: the fewest pulses whose predicted loss increase stays below this")
    st.add_argument("--retention", type=float, default=86400.0, help="seconds between programming and read-back")
    st.add_argument("--run-dir", default="runs", help="run store directory (default ./runs)")
    st.add_argument("--report", default=None, help="PNG report path (default RUN_DIR/RUN.png; 'none' to skip)")
    st.add_argument("--resume", metavar="RUN", help="continue a store run that was stopped or killed "
                                                     "(its settings are the run's own; other options are ignored)")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.set_defaults(func=cmd_store, resume_command="pcm-hil store")

    ld = sub.add_parser("load", help="read a stored model back from the chip and evaluate it")
    ld.add_argument("run", help="run id of a store run")
    add_chip_args(ld)
    ld.add_argument("--wait", type=float, default=0.0, help="let this many more seconds pass first (emulator)")
    ld.add_argument("--run-dir", default="runs")
    ld.add_argument("--json", action="store_true")
    ld.set_defaults(func=cmd_load)

    r = sub.add_parser("runs", help="list runs in the store or export one to Parquet/CSV")
    r.add_argument("action", choices=["list", "export"])
    r.add_argument("run", nargs="?", help="run id (for export)")
    r.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    r.add_argument("--out", help="export directory (default RUN-FORMAT)")
    r.add_argument("--run-dir", default="runs", help="run store directory (default ./runs)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_runs)

    pr = sub.add_parser("profile", help="list or show emulator device profiles")
    pr.add_argument("action", choices=["list", "show"])
    pr.add_argument("name", nargs="?", default="pcm")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_profile)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from pcm_hil_drivers.errors import DriverError

    from .checkpoint import Interrupted
    from .store import RunLocked

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Interrupted as exc:
        resume = f"{getattr(args, 'resume_command', 'pcm-hil')} --resume {exc.run_id}"
        if getattr(args, "run_dir", "runs") != "runs":
            resume += f" --run-dir {args.run_dir}"
        print(f"pcm-hil: stopped during {exc.stage}; outputs are off. Continue with: {resume}", file=sys.stderr)
        return 130
    except (ValueError, RunLocked) as exc:
        print(f"pcm-hil: error: {exc}", file=sys.stderr)
        return 2
    except DriverError as exc:  # the bench: unreachable, not answering, or an instrument error
        notes = "".join(f"\n  {n}" for n in getattr(exc, "__notes__", []))
        print(f"pcm-hil: instrument error ({type(exc).__name__}): {exc}{notes}", file=sys.stderr)
        return 3
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print("pcm-hil: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
