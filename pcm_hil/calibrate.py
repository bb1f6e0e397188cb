"""Calibration procedures: measure a chip through the chip interface, fit its NoiseModel.

Runs unchanged on the emulated chip and on the bench. Every measurement is written to
the run store as it is produced (tidy tables: ``response_reset``, ``response_threshold``,
``response_amplitude``, ``response_steps``, ``window``, ``saturation``, ``trace``,
``programming``, ``read_noise``, ``retention``, ``faults``), with a settings snapshot.

The first stage measures the programming response with generic probes inside the chip's
soft limits (no number of any device): the RESET that works, the per-cell SET threshold,
the highest SET amplitude whose step is still graded, and the step versus amplitude,
width and state. Every later stage, the level sweep included, runs with the loop settings
learned from it (:meth:`VerifyConfig.learned`), and the model records them.

A program-and-verify run at pulse cap C contains the runs at every cap c ≤ C: the
loop's decisions do not depend on the cap until it stops. So each tolerance is measured
once at the largest cap, and every smaller cap is derived from the per-cell pulse
counts (the model keeps the whole distribution).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from pcm_hil_noisemodel import NoiseModel
from pcm_hil_noisemodel.response import RESPONSE_TABLES, Response, fit_response, graded_ceiling, reset_choice, \
    span_of, threshold_stats
from pcm_hil_noisemodel.stats import cell_slopes

from . import __version__
from .checkpoint import Interrupted, VerifyJournal, recording_outcome, wait_until
from .chip import Chip, PulseKind
from .program import VerifyConfig, program_verify
from .run_store import CellClaim, RunStore

Progress = Callable[[str, float, float], None]


@dataclass(frozen=True)
class CalibrationConfig:
    """What a calibration run measures (defaults: 40,000 cells, 8 levels × 6 tolerances: about
    830 cells per level and tolerance, so that a level's σ and mean pulse count are known to
    about 2.5 %)."""

    cells: int = 40_000
    first_cell: int | None = None  # None: the first free cells of the chip (see RunStore's cell owners)
    levels: int = 8
    level_min_us: float = 1.0
    level_max_fraction: float = 0.8
    tolerances_us: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 6.0)
    max_pulses: int = 80  # SET pulses per cell in the level sweep: the slow cells near saturation need 40–80
    n_avg: int = 8
    t0_s: float = 20.0
    retention_s: tuple[float, ...] = (20.0, 60.0, 200.0, 600.0, 2000.0, 6000.0, 20000.0, 86400.0)
    retention_tolerance_us: float = 0.5
    noise_cells_per_level: int = 40
    noise_reads: int = 64
    noise_avg_reads: int = 16
    window_cells: int = 256
    window_pulses: int = 40
    hammer_pulses: int = 20
    seed: int = 0
    checkpoint_s: float = 1.0
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    learn: bool = True  # measure the programming response and run the sweep with the learned settings
    response_pulses: int = 30  # SET pulses per cell in the step-versus-state probe

    def __post_init__(self) -> None:
        ints = {"cells": (64, 10_000_000), "levels": (2, 64), "max_pulses": (1, 1000),
                "n_avg": (1, 1024), "noise_cells_per_level": (2, 100_000), "noise_reads": (3, 10_000),
                "noise_avg_reads": (3, 10_000), "window_cells": (8, 1_000_000), "window_pulses": (1, 1000),
                "hammer_pulses": (1, 1000), "seed": (0, 1 << 63), "response_pulses": (2, 1000)}
        for name, (lo, hi) in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
                raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
        if self.first_cell is not None and (type(self.first_cell) is not int or not 0 <= self.first_cell <= 1 << 40):
            raise ValueError(f"first_cell must be an integer in [0, 2**40] or None, got {self.first_cell!r}")
        if self.cells < self.levels * len(self.tolerances_us) * 8:
            raise ValueError(f"cells must be at least 8 per (level, tolerance) group: "
                             f">= {self.levels * len(self.tolerances_us) * 8}, got {self.cells}")
        if not self.tolerances_us or any(not (math.isfinite(t) and 0 < t <= 10) for t in self.tolerances_us):
            raise ValueError(f"tolerances_us must be in (0, 10] µS, got {self.tolerances_us}")
        if self.retention_tolerance_us not in self.tolerances_us:
            raise ValueError("retention_tolerance_us must be one of tolerances_us")
        if len(self.retention_s) < 3 or any(b <= a for a, b in zip(self.retention_s, self.retention_s[1:])):
            raise ValueError("retention_s needs at least 3 increasing times")
        if self.retention_s[0] != self.t0_s:
            raise ValueError("retention_s must start at t0_s")
        if not (math.isfinite(self.checkpoint_s) and 0 <= self.checkpoint_s <= 3600):
            raise ValueError(f"checkpoint_s must be in [0, 3600] s, got {self.checkpoint_s!r}")
        if not 0 < self.level_max_fraction <= 1 or not self.level_min_us > 0:
            raise ValueError("need level_min_us > 0 and 0 < level_max_fraction <= 1")
        if not isinstance(self.learn, bool):
            raise ValueError(f"learn must be True or False, got {self.learn!r}")


def _max_drive_amplitude(v: VerifyConfig) -> float:
    return v.set_top_v


# generic probe shapes (pcm-physics.md: RESET ~50 ns, SET 50 ns – 1 µs), amplitude grids in V
PROBE_RESET_WIDTH_S = 50e-9
PROBE_RESET_STEP_V = 0.1
PROBE_RESET_START_V = 0.5
PROBE_RAMP_START_V = 0.1
PROBE_RAMP_STEP_V = 0.02
PROBE_AMPLITUDE_STEP_V = 0.05
PROBE_PRIME_PULSES = 5
PROBE_WIDTH_FACTOR = 4.0


def max_amplitude(chip: Chip, width_s: float) -> float:
    """The largest amplitude (V) the chip's soft limits allow at ``width_s`` (amplitude and energy)."""
    lim = chip.limits
    return 0.999 * min(lim.max_amplitude_v, math.sqrt(lim.max_energy_j / (lim.load_conductance_s * width_s)))


class _Reader:
    """Reads groups of cells each at its own delay after its programming ended.

    Long waits are taken in slices, calling ``on_wait(now)`` after each, so a progress bar
    keeps moving (and shows an ETA) while a bench waits hours between reads.
    """

    def __init__(self, chip: Chip, n_avg: int, on_wait: Callable[[float], None] | None = None) -> None:
        self.chip, self.n_avg, self.on_wait = chip, n_avg, on_wait


    def at(self, cells: np.ndarray, t_end: np.ndarray, delay_s: float) -> tuple[np.ndarray, np.ndarray]:
        g, age = np.empty(cells.size, np.float32), np.empty(cells.size)
        order = np.argsort(t_end, kind="stable")
        ends, starts = np.unique(t_end[order], return_index=True)
        bounds = list(starts) + [cells.size]
        for end, a, b in zip(ends, bounds[:-1], bounds[1:]):
            pos = order[a:b]
            if end + delay_s > self.chip.now():
                wait_until(self.chip, end + delay_s, self.on_wait)
            g[pos] = self.chip.read(cells[pos], n_avg=self.n_avg)
            age[pos] = self.chip.now() - end
        return g, age


def run_calibration(chip: Chip, store: RunStore, config: CalibrationConfig | None = None,
                    progress: Progress | None = None, stop: Callable[[], bool] | None = None,
                    resume: str | None = None, from_end: bool = False, overwrite: str | None = None,
                    purpose: dict[str, Any] | None = None) -> tuple[str, NoiseModel]:
    """Measure the chip, store every table, fit and return (run_id, model).

    The run claims its cells in the run store: ``config.first_cell`` onwards, or the first
    free ones (from the chip's end with ``from_end``); ``overwrite`` names a run whose cells
    it may reuse. Cells another run holds are refused before any pulse. ``purpose`` is kept
    with the run's settings: what a job calibrating on the spot will do with the model, so
    that resuming the run finishes that job as it was asked for.

    Every stage is marked complete in the run store in the same transaction as its data,
    and the program-and-verify sweep checkpoints per cell, so ``resume=RUN`` continues a
    killed run: finished stages are skipped, verified cells are not pulsed again. A
    ``stop()`` request ends the run resumably (:class:`~pcm_hil.checkpoint.Interrupted`).
    """
    if resume is not None:
        info = store.run(resume)
        if info["kind"] == "calibration":
            chip.require_same_chip(info["settings"].get("chip_id"), f"calibration run {resume} was measured")
        if info["kind"] == "calibration" and info["status"] == "done":  # nothing left to measure: refit
            cfg = _config_from_dict(info["settings"]["config"])
            return resume, _fit(store, resume, chip, cfg, _cells_of(store, resume, cfg))
        cfg = _config_from_dict(store.resume_run(resume, "calibration")["settings"]["config"])
    else:
        cfg = config or CalibrationConfig()
    n = chip.geometry.n_cells
    if cfg.first_cell is not None and cfg.first_cell + cfg.cells > n:
        raise ValueError(f"cells [{cfg.first_cell}, {cfg.first_cell + cfg.cells}) do not fit the chip's {n} cells "
                         f"(accepted first cell: 0 to {n - cfg.cells})")
    vcfg = _sweep_verify(cfg)
    chip.limits.check_pulse(np.array([_max_drive_amplitude(vcfg)]), np.array([vcfg.set_width_s]))
    chip.limits.check_pulse(np.array([vcfg.reset_amplitude_v]), np.array([vcfg.reset_width_s]))
    report = progress or (lambda stage, done, total: None)
    if resume is None:
        settings = {"procedure": "calibration", "software": f"pcm-hil {__version__}", "chip": chip.identity(),
                    "chip_id": chip.chip_id(), "config": asdict(cfg), **({"purpose": purpose} if purpose else {})}
        run_id = store.create_run("calibration", settings, CellClaim(chip.chip_id(), n, cfg.cells, cfg.first_cell,
                                                                      from_end, overwrite))
    else:
        run_id = resume
    cells = _cells_of(store, run_id, cfg)
    chip.attach_state(store.chip_file(chip.chip_id()))  # an emulated chip keeps its cells in the run directory
    with recording_outcome(store, run_id):
        _measure(chip, store, run_id, cells, cfg, vcfg, report, stop or (lambda: False))
        model = _fit(store, run_id, chip, cfg, cells)
    store.finish(run_id, result=model.summary())
    return run_id, model


def _cells_of(store: RunStore, run_id: str, cfg: CalibrationConfig) -> np.ndarray:
    """The cells the run claimed (runs recorded before cells had owners: from its config)."""
    cells = store.cells_of(run_id)
    if cells is None:
        cells = np.arange(cfg.first_cell or 0, (cfg.first_cell or 0) + cfg.cells, dtype=np.int64)
    return cells


def _sweep_verify(cfg: CalibrationConfig, response: Response | None = None) -> VerifyConfig:
    """The loop settings of the level sweep: the configured ones, with what the response stage
    measured (``response``, when learning), at the calibration's cap and averaging."""
    base = replace(cfg.verify, max_pulses=cfg.max_pulses, n_avg=cfg.n_avg)
    if response is None:
        return base
    return VerifyConfig.learned(response, base=base)


def _response(store: RunStore, run_id: str, chip: Chip, cfg: CalibrationConfig) -> Response | None:
    """The programming response fitted from the run's ``response_*`` tables (None: not learning)."""
    if not cfg.learn:
        return None
    data = {t: store.read(run_id, t) for t in RESPONSE_TABLES}
    return fit_response(data, max_amplitude(chip, float(data["response_reset"]["width_s"].iloc[0])))


def _fit(store: RunStore, run_id: str, chip: Chip, cfg: CalibrationConfig, cells: np.ndarray) -> NoiseModel:
    data = {t: store.read(run_id, t) for t in ("window", "programming", "trace", "read_noise", "retention", "faults")}
    if "saturation" in store.tables():
        data["saturation"] = store.read(run_id, "saturation")
    response = _response(store, run_id, chip, cfg)
    return NoiseModel().fit(data, provenance={
        "run_id": run_id, "software": f"pcm-hil {__version__}", "chip_id": chip.chip_id(),
        "cells": [int(cells[0]), int(cells[-1]) + 1], "config": asdict(cfg)},
        verify_settings=asdict(_sweep_verify(cfg, response)), response=response)


def _config_from_dict(d: dict[str, Any]) -> CalibrationConfig:
    d = dict(d)
    d["verify"] = VerifyConfig(**d["verify"])
    d.setdefault("learn", False)  # a run recorded before calibration learned the response
    for k in ("tolerances_us", "retention_s"):
        d[k] = tuple(d[k])
    return CalibrationConfig(**d)


def _measure(chip: Chip, store: RunStore, run_id: str, cells: np.ndarray, cfg: CalibrationConfig,
             vcfg: VerifyConfig, report: Progress, stop: Callable[[], bool]) -> None:
    done = store.stages(run_id)

    def todo(stage: str) -> bool:
        """Whether ``stage`` still has to run; a stop request ends the run here."""
        if stage in done:
            return False
        if stop():
            raise Interrupted(run_id, stage)
        chip.sync()  # the data appended next must not get ahead of the chip's saved state
        return True

    t_origin: list[float] = []
    def waiting(now: float) -> None:  # called between slices of a long wait: progress, and Ctrl-C honoured
        if stop():
            raise Interrupted(run_id, "retention wait")
        if t_origin:
            report("retention", now - t_origin[0], cfg.retention_s[-1])

    reader = _Reader(chip, cfg.n_avg, on_wait=waiting)
    probe = cells[:: max(1, cells.size // cfg.window_cells)][: cfg.window_cells]
    # 0. the programming response, and the loop settings learned from it
    if cfg.learn:
        _measure_response(chip, store, run_id, probe, cfg, vcfg, report, todo)
        vcfg = _sweep_verify(cfg, _response(store, run_id, chip, cfg))
    # 1. window: floor after RESET; saturation (the fully SET state) after many of the strongest SET
    # pulses the soft limits allow, each cell's mean over the last 10 reads (table ``saturation``)
    if todo("window"):
        _measure_window(chip, store, run_id, probe, cfg, vcfg, report)
    g_sat_med = float(np.median(store.read(run_id, "window")["g_sat_us"]))
    if g_sat_med < 2 * cfg.level_min_us:
        raise ValueError(f"the cells saturate at {g_sat_med:.3g} µS: too low for levels from {cfg.level_min_us} µS")

    # 2. level sweep with program-and-verify, every step recorded, checkpointed per cell
    levels = np.linspace(cfg.level_min_us, cfg.level_max_fraction * g_sat_med, cfg.levels)
    tols = np.asarray(cfg.tolerances_us, float)
    group = np.random.default_rng(cfg.seed).permutation(cells.size) % (levels.size * tols.size)
    target, tol = levels[group % levels.size], tols[group // levels.size]
    if todo("programming"):
        def record(event: str, iteration: int, pos: np.ndarray, values: np.ndarray) -> None:
            store.append(run_id, "trace", pd.DataFrame({"cell": cells[pos], "iteration": np.full(pos.size, iteration),
                                                        "event": event, "value": np.asarray(values, np.float64)}))

        journal = VerifyJournal(store, run_id, "levels", cells, every_s=cfg.checkpoint_s, sync=chip.sync)
        state = journal.load()
        if state is not None:  # trace rows written after the last checkpoint keep their iteration numbers
            state.iteration = max(state.iteration, int(store.read(run_id, "trace")["iteration"].max()) + 1)
        res = program_verify(chip, cells, target, vcfg, tolerance_us=tol, record=record, state=state,
                             checkpoint=journal, stop=stop, progress=lambda d, t: report("program-and-verify", d, t))
        if res.stop_reason == "interrupted":
            raise Interrupted(run_id, "program-and-verify")
        g_t0, age_t0 = reader.at(cells, res.state.t_read_s, cfg.t0_s)
        store.append(run_id, "programming", pd.DataFrame({
            "cell": cells, "level_us": target, "tolerance_us": tol, "pulses": res.pulses, "resets": res.resets,
            "converged": res.converged.astype(np.int64), "g_t0_us": g_t0, "age_s": age_t0,
            "n_avg": np.full(cells.size, cfg.n_avg), "t_end_s": res.state.t_read_s}), stage="programming")
    prog = store.read(run_id, "programming").set_index("cell").loc[cells]
    converged, t_last = prog["converged"].to_numpy(bool), prog["t_end_s"].to_numpy()

    # 3. read noise: back-to-back reads, single and averaged, at every level
    if todo("read_noise"):
        pick = np.concatenate([np.flatnonzero((target == lv) & (tol == tols.min()) & converged)
                               [: cfg.noise_cells_per_level] for lv in levels])
        parts = []
        for n_avg, reps in ((1, cfg.noise_reads), (cfg.n_avg, cfg.noise_avg_reads)):
            rows = [chip.read(cells[pick], n_avg=n_avg) for _ in range(reps)]
            parts.append(pd.DataFrame({
                "cell": np.tile(cells[pick], reps), "level_us": np.tile(target[pick], reps),
                "n_avg": n_avg, "rep": np.repeat(np.arange(reps), pick.size), "g_us": np.concatenate(rows)}))
            report("read noise", n_avg, cfg.n_avg)
        store.append(run_id, "read_noise", pd.concat(parts, ignore_index=True), stage="read_noise")

    # 4. retention: the same cells at log-spaced ages (the virtual clock makes a day instant);
    # after a resume a read that is late records its true age
    keep = np.flatnonzero((tol == cfg.retention_tolerance_us) & converged)
    t_origin.append(float(t_last[keep].min()) if keep.size else chip.now())
    for k, delay in enumerate(cfg.retention_s, start=0):
        if not todo(f"retention_{k}"):
            continue
        report("retention", delay, cfg.retention_s[-1])
        if k == 0:  # the t0 read of the programming stage
            g, age = prog["g_t0_us"].to_numpy()[keep], prog["age_s"].to_numpy()[keep]
        else:
            g, age = reader.at(cells[keep], t_last[keep], delay)
        store.append(run_id, "retention", pd.DataFrame({"cell": cells[keep], "level_us": target[keep], "read_idx": k,
                                                        "age_s": age, "g_us": g, "n_avg": cfg.n_avg}),
                     stage=f"retention_{k}")

    # 5. faults: cells that do not move under strong SET pulses or RESETs
    if todo("faults"):
        report("faults", 0, 1)
        chip.pulse(cells, PulseKind.RESET, vcfg.reset_amplitude_v, vcfg.reset_width_s)
        g_reset = chip.read(cells, n_avg=cfg.n_avg)
        for _ in range(cfg.hammer_pulses):
            chip.pulse(cells, PulseKind.SET, _max_drive_amplitude(vcfg), vcfg.set_width_s)
        g_set = chip.read(cells, n_avg=cfg.n_avg)
        chip.pulse(cells, PulseKind.RESET, vcfg.reset_amplitude_v, vcfg.reset_width_s)
        g_reset2 = chip.read(cells, n_avg=cfg.n_avg)
        store.append(run_id, "faults", pd.DataFrame({
            "cell": cells, "g_reset_us": g_reset, "g_set_us": g_set, "g_reset2_us": g_reset2,
            "kind": classify_faults(g_reset, g_set, g_reset2, g_sat_med)}), stage="faults")
        report("faults", 1, 1)
    chip.sync()


def _measure_window(chip: Chip, store: Any, run_id: str, w: np.ndarray, cfg: CalibrationConfig,
                    vcfg: VerifyConfig, report: Progress) -> None:
    """The floor after a RESET and the fully SET state: ``window`` and ``saturation`` tables."""
    report("window", 0, 1)
    strong = max_amplitude(chip, vcfg.set_width_s) if cfg.learn else _max_drive_amplitude(vcfg)
    chip.pulse(w, PulseKind.RESET, vcfg.reset_amplitude_v, vcfg.reset_width_s)
    g_floor = chip.read(w, n_avg=cfg.n_avg)
    tail = min(10, cfg.window_pulses)
    sat_reads = []
    for k in range(cfg.window_pulses):
        chip.pulse(w, PulseKind.SET, strong, vcfg.set_width_s)
        if k >= cfg.window_pulses - tail:
            sat_reads.append(chip.read(w, n_avg=cfg.n_avg))
    store.append(run_id, "saturation", pd.DataFrame({
        "cell": np.tile(w, tail), "pulse": np.repeat(np.arange(cfg.window_pulses - tail, cfg.window_pulses) + 1,
                                                     w.size), "g_us": np.concatenate(sat_reads)}))
    store.append(run_id, "window", pd.DataFrame({"cell": w, "g_floor_us": g_floor, "g_sat_us": sat_reads[-1]}),
                 stage="window")
    report("window", 1, 1)


class _Tables:
    """Tables kept in memory with the run store's append/read/stages interface (a quick measurement)."""

    def __init__(self) -> None:
        self.tables: dict[str, list[pd.DataFrame]] = {}

    def append(self, run_id: str, table: str, df: pd.DataFrame, stage: str | None = None) -> None:
        self.tables.setdefault(table, []).append(df)

    def read(self, run_id: str, table: str) -> pd.DataFrame:
        return pd.concat(self.tables[table], ignore_index=True)


@dataclass(frozen=True)
class QuickResponse:
    """A short response and window measurement (no run store): the loop settings and the window."""

    verify: VerifyConfig
    response: Response
    g_sat_us: float
    g_floor_us: float
    cells: int


def quick_response(chip: Chip, cells: Any, config: CalibrationConfig | None = None,
                   progress: Progress | None = None) -> QuickResponse:
    """Measure the programming response and the window on ``cells`` (at most ``window_cells``
    of them are pulsed) without a run store: what a job without a noise model learns first."""
    cfg = config or CalibrationConfig()
    cells = chip.cells(cells)
    probe = cells[:: max(1, cells.size // cfg.window_cells)][: cfg.window_cells]
    if probe.size < 8:
        raise ValueError(f"a response measurement needs at least 8 cells, got {probe.size}")
    tables, report = _Tables(), progress or (lambda stage, done, total: None)
    vcfg = _sweep_verify(cfg)
    _measure_response(chip, tables, "quick", probe, cfg, vcfg, report, lambda stage: True)
    data = {t: tables.read("quick", t) for t in RESPONSE_TABLES}
    resp = fit_response(data, max_amplitude(chip, float(data["response_reset"]["width_s"].iloc[0])))
    vcfg = _sweep_verify(cfg, resp)
    _measure_window(chip, tables, "quick", probe, cfg, vcfg, report)
    from pcm_hil_noisemodel.parts import fit_window

    win = fit_window(tables.read("quick", "window"), tables.read("quick", "saturation"))
    return QuickResponse(vcfg, resp, win.g_sat_us, win.g_floor_us, int(probe.size))


@dataclass(frozen=True)
class LearnedSettings:
    """Loop settings and measured saturation (µS) for a job on a chip, and where they came from."""

    verify: VerifyConfig
    g_sat_us: float
    source: str


def learned_settings(chip: Chip, cells: Any, tolerance_us: float, model: NoiseModel | None = None,
                     store: RunStore | None = None, progress: Progress | None = None) -> LearnedSettings:
    """The loop settings (at ``tolerance_us``) and the saturation for programming ``chip``:
    from ``model``; else from the latest finished calibration of the chip in ``store``
    (refitted from its tables, no pulse); else measured now on ``cells`` (:func:`quick_response`)."""
    source = "noise model"
    if model is None and store is not None:
        runs = store.runs()
        for run_id in reversed(list(runs.query("kind == 'calibration' and status == 'done'")["run_id"])):
            if store.run(run_id)["settings"].get("chip_id") == chip.chip_id():
                _, model = run_calibration(chip, store, resume=run_id)
                source = f"calibration run {run_id}"
                break
    if model is not None:
        chip.require_same_chip(model.provenance.get("chip_id"), "the noise model was fitted")
        return LearnedSettings(replace(VerifyConfig.measured_with(model), tolerance_us=tolerance_us),
                               model.window_.g_sat_us, source)
    q = quick_response(chip, cells, progress=progress)
    return LearnedSettings(replace(q.verify, tolerance_us=tolerance_us), q.g_sat_us,
                           f"response measured on {q.cells} of the job's cells")


def _measure_response(chip: Chip, store: Any, run_id: str, probe: np.ndarray, cfg: CalibrationConfig,
                      vcfg: VerifyConfig, report: Progress, todo: Callable[[str], bool]) -> None:
    """Stage 0: the programming response of the ``probe`` cells, four tables, each its own
    resumable stage. Every probe pulse is inside the soft limits by construction."""
    n_avg, set_w = cfg.n_avg, vcfg.set_width_s
    top_set = max_amplitude(chip, set_w)
    top_reset = max_amplitude(chip, PROBE_RESET_WIDTH_S)

    def prime() -> np.ndarray:  # drive the cells high: strong SET pulses
        for _ in range(PROBE_PRIME_PULSES):
            chip.pulse(probe, PulseKind.SET, top_set, set_w)
        return chip.read(probe, n_avg=n_avg)

    # a. the RESET that works: cells driven high, then one fast pulse; rising amplitude
    if todo("response_reset"):
        grid = np.round(np.arange(PROBE_RESET_START_V, top_reset + 1e-9, PROBE_RESET_STEP_V), 3)
        rows = []
        for k, a in enumerate(grid):
            report("response: RESET", k, grid.size)
            g0 = prime()
            chip.pulse(probe, PulseKind.RESET, float(a), PROBE_RESET_WIDTH_S)
            g1 = chip.read(probe, n_avg=n_avg)
            rows.append(pd.DataFrame({"cell": probe, "amplitude_v": float(a), "width_s": PROBE_RESET_WIDTH_S,
                                      "g_before_us": g0, "g_after_us": g1}))
            if np.mean(g1 < 0.05 * np.median(g0)) >= 0.995:  # floors (nearly) all: higher is not needed
                break
        store.append(run_id, "response_reset", pd.concat(rows, ignore_index=True), stage="response_reset")
    _, reset_v, floor_us, high_us = reset_choice(store.read(run_id, "response_reset"), top_reset)

    def reset() -> np.ndarray:
        chip.pulse(probe, PulseKind.RESET, reset_v, PROBE_RESET_WIDTH_S)
        return chip.read(probe, n_avg=n_avg)

    # b. SET threshold per cell: a RESET, then one SET pulse, at rising amplitude until the cell moves
    if todo("response_threshold"):
        g0 = reset()
        g0b = chip.read(probe, n_avg=n_avg)
        noise = float(np.std(g0b - g0, ddof=1) / math.sqrt(2))
        move = max(6 * noise, 0.05 * (high_us - floor_us) / 10)
        th = np.full(probe.size, np.nan)
        grid = np.round(np.arange(PROBE_RAMP_START_V, top_set + 1e-9, PROBE_RAMP_STEP_V), 3)
        for k, v in enumerate(grid):
            report("response: threshold", k, grid.size)
            left = np.flatnonzero(np.isnan(th))
            if left.size <= 0.01 * probe.size:
                break
            # each step starts from a fresh RESET: the threshold of a first SET pulse, as the loop sends it
            # (the threshold rises with the time since the RESET)
            chip.pulse(probe[left], PulseKind.RESET, reset_v, PROBE_RESET_WIDTH_S)
            g_start = chip.read(probe[left], n_avg=n_avg)
            chip.pulse(probe[left], PulseKind.SET, float(v), set_w)
            g = chip.read(probe[left], n_avg=n_avg)
            th[left[g - g_start > move]] = v
        store.append(run_id, "response_threshold", pd.DataFrame({
            "cell": probe, "threshold_v": th, "g_floor_us": g0, "g_floor2_us": g0b}), stage="response_threshold")
    thr = threshold_stats(store.read(run_id, "response_threshold"))

    # c. the first step after a RESET versus amplitude, up to the first amplitude that is not graded
    if todo("response_amplitude"):
        start = math.floor(thr["threshold_p10_v"] / PROBE_AMPLITUDE_STEP_V) * PROBE_AMPLITUDE_STEP_V
        grid = np.round(np.arange(start, top_set + 1e-9, PROBE_AMPLITUDE_STEP_V), 3)
        rows = []
        for k, v in enumerate(grid):
            report("response: amplitude", k, grid.size)
            g0 = reset()
            chip.pulse(probe, PulseKind.SET, float(v), set_w)
            g1 = chip.read(probe, n_avg=n_avg)
            rows.append(pd.DataFrame({"cell": probe, "amplitude_v": float(v), "width_s": set_w,
                                      "g_before_us": g0, "g_after_us": g1}))
            if np.median(g1) - floor_us >= 0.5 * (high_us - floor_us):
                break
        store.append(run_id, "response_amplitude", pd.concat(rows, ignore_index=True), stage="response_amplitude")
    ceiling = max(graded_ceiling(store.read(run_id, "response_amplitude"), high_us, floor_us),
                  thr["threshold_p90_v"] + 0.05)

    # d. step versus state: trains of SET pulses after a RESET, three amplitudes and one longer width
    if todo("response_steps"):
        span = span_of(thr["threshold_p10_v"], ceiling)
        per_cell = store.read(run_id, "response_threshold").set_index("cell")["threshold_v"]
        wide = min(PROBE_WIDTH_FACTOR * set_w, chip.limits.max_width_s)
        shapes = [(thr["threshold_p90_v"] + f * span, set_w) for f in (0.25, 0.5, 1.0)]
        shapes.append((thr["threshold_p90_v"] + 0.5 * span, wide))
        shapes = [(float(min(v, ceiling, max_amplitude(chip, wd))), wd) for v, wd in shapes]
        group = np.arange(probe.size) % len(shapes)
        amp = np.array([shapes[i][0] for i in group])
        wid = np.array([shapes[i][1] for i in group])
        g = reset().astype(np.float64)
        rows = []
        for k in range(1, cfg.response_pulses + 1):
            report("response: steps", k, cfg.response_pulses)
            for i, (v, wd) in enumerate(shapes):
                chip.pulse(probe[group == i], PulseKind.SET, v, wd)
            g1 = chip.read(probe, n_avg=n_avg).astype(np.float64)
            rows.append(pd.DataFrame({"cell": probe, "amplitude_v": amp, "width_s": wid,
                                      "threshold_v": per_cell.loc[probe].to_numpy(float), "pulse": k,
                                      "g_before_us": g, "g_after_us": g1, "g_repeat_us": np.nan}))
            g = g1
        rows[-1]["g_repeat_us"] = chip.read(probe, n_avg=n_avg)  # a second read: the read noise up the window
        store.append(run_id, "response_steps", pd.concat(rows, ignore_index=True), stage="response_steps")


def classify_faults(g_reset: np.ndarray, g_set: np.ndarray, g_reset2: np.ndarray, g_sat_us: float) -> np.ndarray:
    """'reset' (stays at the floor), 'set' (stays near saturation), 'random' (does not move), 'none'."""
    low, high = 0.1 * g_sat_us, 0.75 * g_sat_us
    moves = (g_set - g_reset > 0.1 * g_sat_us) & (g_set - g_reset2 > 0.1 * g_sat_us)
    kind = np.full(g_reset.size, "none", dtype=object)
    kind[(g_set < low) & ~moves] = "reset"
    kind[(g_reset > high) & (g_reset2 > high) & ~moves] = "set"
    kind[~moves & (kind == "none")] = "random"
    return kind.astype(str)


# ------------------------------------------------------------------ validation --------
def validate(chip: Chip, model: NoiseModel, cells: Any = None, n_cells: int = 10_000, tolerance_us: float = 0.5,
             max_pulses: int = 20, seed: int = 1, check_chip: bool = True,
             progress: Progress | None = None) -> dict[str, Any]:
    """Program fresh cells and compare what they do with what the model predicts."""
    report = progress or (lambda stage, done, total: None)
    if check_chip:
        chip.require_same_chip(model.provenance.get("chip_id"), "the noise model was fitted")
    model.sigma(model.levels_us_[0], tolerance_us)  # refuses an uncalibrated tolerance before any pulse
    model.expected_pulses(model.levels_us_[0], tolerance_us, max_pulses)
    if cells is None:
        used = model.provenance.get("cells", [0, 0])
        start = int(used[1])
        if start + n_cells > chip.geometry.n_cells:
            raise ValueError(f"not enough fresh cells after the calibrated ones ({start}): "
                             f"need {n_cells}, the chip has {chip.geometry.n_cells}")
        cells = np.arange(start, start + n_cells, dtype=np.int64)
    cells = chip.cells(cells)
    levels = np.asarray(model.levels_us_)
    target = levels[np.random.default_rng(seed).permutation(cells.size) % levels.size]
    vcfg = replace(VerifyConfig.measured_with(model), max_pulses=max_pulses)
    res = program_verify(chip, cells, target, vcfg, tolerance_us=tolerance_us,
                         progress=lambda d, t: report("program-and-verify", d, t))
    t_last = res.state.t_read_s
    reader = _Reader(chip, model.n_avg_)
    t0 = model.t0_s_
    ages = [t0, 10 * t0, 100 * t0, 1000 * t0, 4320 * t0]
    reads = []
    for a in ages:
        report("retention", a, ages[-1])
        reads.append(reader.at(cells, t_last, a))
    g_t0 = reads[0][0]
    err = g_t0 - target
    rows = []
    rng = np.random.default_rng(seed + 1)
    positive = np.all(np.array([g for g, _ in reads]) > 0, axis=0)  # log-log drift fits need G > 0
    for lv in levels:
        m = target == lv
        ok = m & res.converged
        s_meas = float(np.std(err[ok], ddof=1))
        s_pred = float(model.sigma(lv, tolerance_us))
        p_meas = float(np.mean(res.pulses[m] + res.resets[m] + 1))
        p_pred = float(model.expected_pulses(lv, tolerance_us, max_pulses))
        drawn = model.sample(np.full(20_000, lv), tolerance_us, max_pulses, seed=rng) - lv
        conv = ok & positive
        lt = np.log(np.array([r[1][conv] for r in reads]).T / t0)
        lg = np.log(np.array([r[0][conv] for r in reads]).T)
        nu = -cell_slopes(lt, lg)[0]
        rows.append({
            "level_us": float(lv), "cells": int(m.sum()), "yield": float(res.converged[m].mean()),
            "yield_predicted": float(model.p_converged(lv, tolerance_us, max_pulses)),
            "sigma_us": s_meas, "sigma_predicted_us": s_pred, "sigma_rel_error": abs(s_meas - s_pred) / s_pred,
            "pulses": p_meas, "pulses_predicted": p_pred, "pulses_rel_error": abs(p_meas - p_pred) / p_pred,
            "ks": float(ks_2samp(err[m], drawn).statistic),
            "nu_mean": float(nu.mean()), "nu_predicted": float(model.nu_mean(lv)),
            "nu_rel_error": abs(float(nu.mean()) - float(model.nu_mean(lv))) / float(model.nu_mean(lv)),
        })
    per = pd.DataFrame(rows)
    nu_all = np.average(per["nu_mean"], weights=per["cells"])
    nu_pred = np.average(per["nu_predicted"], weights=per["cells"])
    pulses_all = float((res.pulses + res.resets + 1).mean())
    pulses_pred = float(np.average(per["pulses_predicted"], weights=per["cells"]))
    return {
        "cells": int(cells.size), "first_cell": int(cells[0]), "tolerance_us": tolerance_us, "max_pulses": max_pulses,
        "sigma_rel_error_max": float(per["sigma_rel_error"].max()),
        "pulses_rel_error": float(per["pulses_rel_error"].max()),
        "pulses_rel_error_total": abs(pulses_all - pulses_pred) / pulses_pred,
        "drift_nu_rel_error": abs(nu_all - nu_pred) / nu_pred,
        "drift_nu_rel_error_max": float(per["nu_rel_error"].max()),
        "ks_max": float(per["ks"].max()),
        "per_level": per.to_dict(orient="records"),
    }
