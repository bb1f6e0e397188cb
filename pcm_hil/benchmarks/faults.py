"""Fault soak: program-and-verify on the virtual bench while faults are injected and the
controller crashes and resumes.

Two runs program the same cells of two identical virtual benches through the real drivers:
a clean twin, and a faulty one in which board transactions fail at ``rate`` (every default kind
of :mod:`~pcm_hil.emulator.instruments.faults`, corrupted requests included, and ``offset``: reads
that come back 1.5 µS off in well-formed frames) and the controller crashes ``crashes`` times at
random points inside an iteration (the run is abandoned without cleanup, as a kill would
leave it) and resumes from its per-cell checkpoints in the run store with a new connection.

Figures: what was injected and what was detected; ``measurements_lost``: cells without a
final record in the run store, non-finite reads returned, and final records that differ from
the last value measured for the cell (``measurements_misrecorded``); ``cells_beyond_tolerance``:
cells reported verified whose true conductance at their verify read (the emulator's ground
truth, without the read's noise) is outside the tolerance, against the twin's count (read noise
alone puts some there); ``cells_diverged``: verified cells whose state at the end is outside
their window by more than the read noise allows (stuck cells, a physical fault that verify
flags, excluded). Offset reads are detected by ``BenchChip``'s confirming reads
(``reads_disputed``; the twin's count is the false-alarm figure). The twin runs the
same bench path with the same batch size, so the comparison isolates the faults: small
batches by themselves lower the yield (see ``notes``).

The SMU and pulse-generator lines of the faulty bench get faults too (``line_rate``, every
default kind but ``stuck``, and ``offset``: SMU readings that measure wrong in well-formed
replies), and a precise-and-external phase follows on ``external_cells`` of the programmed
cells (:func:`_external`): every stored SMU read is compared with the SMU's own log of what it
measured (within the confirming reads' limit of the median of the readings it took of that
cell), every cell verified reset through the pulse generator with its true conductance. The ``*_by_link`` figures count faults, driver errors, lost measurements and
diverged cells per link (board, smu, pg).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..bench.chip import BenchChip, RetryPolicy
from ..checkpoint import VerifyJournal
from ..chip import Geometry, PulseUncertain
from ..emulator import EmulatedChip
from ..emulator.instruments import VirtualBench
from ..emulator.instruments.faults import FAULT_KINDS, FaultPlan

SOAK_KINDS = (*FAULT_KINDS, "offset")
from ..program import VerifyConfig, VerifyResult, program_verify
from ..run_store import RunStore


# SMU and PG lines (stuck bursts: soaked on the board); offset: SMU readings that measure wrong, well formed
LINE_KINDS = (*(k for k in FAULT_KINDS if k != "stuck"), "offset")
RESET_MAX_US = 1.0  # the external phase's verify: a cell reads reset at or below this
EXTERNAL_PASSES = 6  # RESET pulses through the pulse generator per cell at most


def _external(vb: VirtualBench, cells: np.ndarray, timeout_s: float, store: RunStore) -> dict[str, Any]:
    """Precise reads and external pulses with faults on the SMU and pulse-generator links:
    each cell read through the SMU, then RESET through the pulse generator and read again
    until it reads reset (at most ``EXTERNAL_PASSES`` pulses). Every SMU read goes to the run
    store in its own transaction as it is returned. Then each stored read is compared with the
    measurement the SMU made for it (its own log, before any wire fault), and each cell that
    read reset with its true conductance at that read."""
    cfg = vb.bench_config()
    cfg = replace(cfg, board=replace(cfg.board, timeout_s=timeout_s), smu=replace(cfg.smu, timeout_s=timeout_s),
                  pulse_generator=replace(cfg.pulse_generator, timeout_s=timeout_s))
    run_id = store.create_run("soak_external", {"cells": int(cells.size)})
    vcfg = VerifyConfig()
    verified = np.zeros(cells.size, bool)
    expected: list[tuple[int, int, float]] = []  # (pass, cell, what the SMU measured for the value returned)
    uncertain, pulses = 0, 0
    chip = BenchChip(cfg, retry=RetryPolicy(attempts=6))
    try:
        for n in range(EXTERNAL_PASSES + 1):
            todo = cells[~verified]
            if not todo.size:
                break
            if n:
                try:
                    chip.pulse_external(todo, "RESET", vcfg.reset_amplitude_v, vcfg.reset_width_s)
                except PulseUncertain as exc:  # fired or not: its cells are read like the others
                    uncertain += int(exc.cells.size)
                pulses += int(todo.size)
            mark = len(vb.smu.measurements)
            g = chip.read_smu(todo)
            store.append(run_id, "precise", pd.DataFrame({"cell": todo, "pass": n, "g_us": g}))
            took: dict[int, list[float]] = {}  # what the SMU truly measured of each cell in this read (its log)
            for c, i, v in vb.smu.measurements[mark:]:
                if c is not None and v:
                    took.setdefault(int(c), []).append(i / v * 1e6)
            expected += [(n, int(c), float(np.median(took[int(c)])) if int(c) in took else np.nan) for c in todo]
            if n:
                verified[~verified] = g <= RESET_MAX_US
        log = list(chip.fault_log)
    finally:
        chip.close()
    stored = store.read(run_id, "precise")
    store.finish(run_id)
    want = pd.DataFrame(expected, columns=["pass", "cell", "measured_us"])
    both = want.merge(stored, on=["pass", "cell"], how="left")
    unrecorded = int(both["g_us"].isna().sum()) + len(stored) - len(want)
    # a stored value is what was measured: within the confirming reads' limit of the median of the
    # readings the SMU truly took of that cell (BenchChip averages two or three agreeing readings)
    limit = both["measured_us"].abs().map(chip.smu_confirm_limit_us)
    misrecorded = int((~(np.abs(both["g_us"] - both["measured_us"]) <= limit)).sum())
    truth = vb.chip.truth_us[cells].astype(np.float64)  # at each cell's last read
    sigma = vb.chip.profile.read_sigma(np.full(cells.size, RESET_MAX_US)) / np.sqrt(16 * cfg.smu.nplc)
    return {"cells": int(cells.size), "smu_reads": len(want), "pg_pulses": pulses, "pg_pulses_uncertain": uncertain,
            "cells_verified": int(verified.sum()),
            "measurements_lost": unrecorded + misrecorded, "measurements_misrecorded": misrecorded,
            # verified reset, yet above the limit by more than 5 sigma of the SMU read's noise
            "cells_diverged": int((verified & (truth > RESET_MAX_US + 5 * sigma)).sum()),
            "driver_errors_logged": len(log), "log": log}


class _Crash(Exception):
    """The controller dies here: nothing after this line of the iteration happens."""


def _program(vb: VirtualBench, cells: np.ndarray, targets: np.ndarray, vcfg: VerifyConfig, timeout_s: float,
             batch: int, store: RunStore, crash_at: list[int]
             ) -> tuple[VerifyResult, int, int, list, np.ndarray, int]:
    """Program-and-verify through the drivers; crash at the given event counts and resume.
    Returns (result, runs resumed, non-finite reads, driver fault log, the last value read of
    each cell as the drivers returned it, read batches disputed by the confirming reads)."""
    cfg = vb.bench_config()
    cfg = replace(cfg, board=replace(cfg.board, timeout_s=timeout_s, max_batch=batch))
    run_id = store.create_run("soak", {"cells": int(cells.size), "crash_at": crash_at})
    events, resumed, bad_reads, log, disputed = 0, 0, 0, [], 0
    measured = np.full(cells.size, np.nan, np.float32)
    pending = sorted(crash_at)

    def record(event: str, iteration: int, pos: np.ndarray, values: np.ndarray) -> None:
        nonlocal events, bad_reads
        events += 1
        if event == "read":
            bad_reads += int((~np.isfinite(values)).sum())
            measured[pos] = values
        if pending and events >= pending[0]:
            pending.pop(0)
            raise _Crash

    while True:
        journal = VerifyJournal(store, run_id, "soak", cells, every_s=0.0)
        state = journal.load()
        chip = BenchChip(cfg, retry=RetryPolicy(attempts=6))
        try:
            res = program_verify(chip, cells, targets, vcfg, record=record, state=state, checkpoint=journal)
        except _Crash:
            resumed += 1
            log += chip.fault_log
            disputed += chip.reads_disputed
            for inst in (chip.board, chip.smu, chip.pg):  # killed: connections just drop, no orderly shutdown
                if inst is not None:
                    inst.transport.close()
            continue
        log += chip.fault_log
        disputed += chip.reads_disputed
        chip.close()
        store.finish(run_id)
        return res, resumed, bad_reads, log, measured, disputed


def run(rate: float = 0.01, seed: int = 0, cells: int = 4096, batch: int = 8, timeout_s: float = 0.15,
        crashes: int = 3, line_rate: float | None = None, external_cells: int = 64) -> dict[str, Any]:
    """The soak (see the module's doc). ``rate``: faults per board transaction; ``line_rate``
    (default ``2 * rate``): per SMU and pulse-generator line, in both phases; ``external_cells``:
    cells of the precise-and-external phase (0: none)."""
    line_rate = 2 * rate if line_rate is None else line_rate
    line_plan = {"smu_faults": FaultPlan(rate=line_rate, kinds=LINE_KINDS, seed=seed + 2, delay_s=2 * timeout_s,
                                         silent_s=2 * timeout_s),
                 "pg_faults": FaultPlan(rate=line_rate, kinds=LINE_KINDS, seed=seed + 3, delay_s=2 * timeout_s,
                                        silent_s=2 * timeout_s)}
    geometry = Geometry(1, 64, cells // 64)
    idx = np.arange(cells)
    targets = np.random.default_rng(seed).uniform(2.0, 18.0, cells)
    vcfg = VerifyConfig(tolerance_us=0.5, max_pulses=20)
    plan = FaultPlan(rate=rate, kinds=SOAK_KINDS, seed=seed, delay_s=2 * timeout_s, silent_s=2 * timeout_s,
                     stuck_burst=8)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, RunStore(Path(tmp) / "soak.sqlite") as store:
        with VirtualBench(geometry, seed=seed, frame_timeout_s=1.0) as twin:
            twin.chip.track_truth()
            clean, _, _, _, _, clean_disputed = _program(twin, idx, targets, vcfg, timeout_s, batch, store, [])
            clean_truth = twin.chip.truth_us.astype(np.float64)
            clean_final = twin.chip.read(idx, n_avg=64)
            clean_time = twin.chip.now()
        # crash points spread over the run's events (about 3 events per iteration)
        crash_at = sorted(np.random.default_rng(seed + 1).integers(5, 60, crashes).tolist())
        with VirtualBench(geometry, seed=seed, faults=plan, frame_timeout_s=1.0, **line_plan) as vb:
            vb.chip.track_truth()
            res, resumed, bad_reads, log, measured, disputed = _program(vb, idx, targets, vcfg, timeout_s, batch,
                                                                         store, crash_at)
            truth = vb.chip.truth_us.astype(np.float64)  # each cell as it was at its last verify read
            offset_reads = vb.model.offset_reads
            run_time_s = vb.chip.now()
            final = vb.chip.read(idx, n_avg=64)  # what the cells hold now, as any read sees it
            injected_stuck = vb.chip.stuck_kind(idx) != EmulatedChip(geometry, seed=seed).stuck_kind(idx)
            counts, transactions = dict(vb.faults.counts), vb.faults.transactions
            line_counts = {"smu": dict(vb.smu_faults.counts), "pg": dict(vb.pg_faults.counts)}
            # the precise-and-external phase, on cells the board phase programmed (judged above)
            ext = _external(vb, idx[:external_cells], timeout_s, store) if external_cells else None
            if ext is not None:  # stuck cells do not reset: they are not verified
                ext["cells_made_stuck"] = int(injected_stuck[:external_cells].sum())
            by_link = {"board": vb.faults.counts, "smu": vb.smu_faults.counts, "pg": vb.pg_faults.counts}
            by_link = {k: {kind: n for kind, n in v.items() if n} for k, v in by_link.items()}
            if ext is not None:
                ext["faults_by_link"] = {k: {kind: n - (counts if k == "board" else line_counts[k]).get(kind, 0)
                                             for kind, n in v.items()} for k, v in by_link.items()}
        runs = store.runs()
        soak_id = runs.loc[runs["kind"] == "soak", "run_id"].iloc[-1]
        ck = store.read(soak_id, "verify_checkpoint").sort_values("seq", kind="stable")
        last = ck.drop_duplicates("cell", keep="last")
        unrecorded = cells - int((last["status"] != 0).sum())
        # a stored value is lost if it is not what was measured: the final record of each cell
        # against the last value the drivers returned for it
        stored = last.set_index("cell")["final_us"].reindex(idx).to_numpy(np.float32)
        misrecorded = int((~np.isclose(stored, measured, rtol=1e-6, atol=0, equal_nan=False)).sum())
    bound = _divergence_bound(seed, targets, vcfg, max(run_time_s, clean_time))

    def diverged(result: VerifyResult, reads: np.ndarray) -> np.ndarray:
        return result.converged & (np.abs(reads - targets) > bound)

    stuck_flagged = int((~res.converged & injected_stuck).sum())
    wire = [e for e in log if e["error"] != "ReadsDisagree"]

    def link(what: str) -> str:
        what = what.removeprefix("reconnect after ")
        return "smu" if what.startswith("SMU") else "pg" if what.startswith("PG") else "board"

    logged = {k: sum(link(e["what"]) == k for e in wire + (ext["log"] if ext else [])) for k in ("board", "smu", "pg")}

    def beyond_tolerance(result: VerifyResult, at_verify: np.ndarray, exclude: np.ndarray) -> int:
        return int((result.converged & ~exclude & (np.abs(at_verify - targets) > vcfg.tolerance_us)).sum())

    lost_board = unrecorded + bad_reads + misrecorded
    return {
        "benchmark": "faults", "transactions": transactions, "fault_rate": rate, "line_fault_rate": line_rate,
        # every link, both phases: faults injected per link and kind, driver errors logged per link,
        # measurements lost and verified cells diverged per link (board: program-and-verify; smu:
        # the precise reads; pg: the cells RESET through the pulse generator and verified by the SMU)
        "faults_injected_by_link": {k: sum(v.values()) for k, v in by_link.items()},
        "faults_by_link": by_link, "driver_errors_logged_by_link": logged,
        "measurements_lost_by_link": {"board": lost_board, "smu": ext["measurements_lost"] if ext else 0},
        "cells_diverged_by_link": {"board": int(diverged(res, final)[~injected_stuck].sum()),
                                   "pg": ext["cells_diverged"] if ext else 0},
        "external": {k: v for k, v in ext.items() if k != "log"} if ext else None,
        # the board phase (program-and-verify through the board, crashes and resumes)
        "faults_injected": sum(counts.values()), "faults_by_kind": counts,
        # wire faults are detected by the drivers (typed errors, logged); offset reads by
        # BenchChip's confirming reads; stuck bursts by program-and-verify (their cells do not verify)
        "faults_detected": len(wire) + disputed + (counts.get("stuck", 0) if stuck_flagged else 0),
        "driver_errors_logged": len(wire),
        "reads_offset": offset_reads, "reads_disputed": disputed, "reads_disputed_uninterrupted": clean_disputed,
        "stuck_cells_flagged_by_verify": stuck_flagged,
        "pulse_batches_uncertain": res.uncertain_batches,
        "crashes": crashes, "runs_resumed": resumed,
        "measurements_lost": lost_board,
        "measurements_misrecorded": misrecorded,
        "cells_beyond_tolerance": beyond_tolerance(res, truth, injected_stuck),
        "cells_beyond_tolerance_uninterrupted": beyond_tolerance(clean, clean_truth, np.zeros(cells, bool)),
        "cells_diverged": int(diverged(res, final)[~injected_stuck].sum()),
        "cells_diverged_uninterrupted": int(diverged(clean, clean_final).sum()),
        "cells_made_stuck": int(injected_stuck.sum()),
        "yield": float(res.converged.mean()), "yield_uninterrupted": float(clean.converged.mean()),
        "yield_excluding_stuck": float(res.converged[~injected_stuck].mean()),
        "pulses_mean": float(res.pulses.mean()), "pulses_mean_uninterrupted": float(clean.pulses.mean()),
        "seconds": time.monotonic() - t0,
        "notes": f"batches of {batch} cells per transaction; both runs use the same bench path. Stuck bursts are "
                 "physical faults: their cells are excluded from divergence and reported as non-converged. "
                 "Small batches alone lower the yield against one in-process batch (each chunk advances the chip "
                 "clock, so cells relax longer between pulse and verify).",
    }


def _divergence_bound(seed: int, targets: np.ndarray, vcfg: VerifyConfig, age_s: float) -> np.ndarray:
    """|read − target| allowed for a verified cell at the end: the window plus 5σ of the white
    read noise of its verify read and of the final read, and of the 1/f part that keeps
    growing between a cell's verify and the end of the run."""
    prof = EmulatedChip(Geometry(1, 1, 1), seed=seed).profile
    white = prof.read_sigma(targets)
    x = targets / prof.g_max_us
    q = np.minimum(prof.q_s_coeff / np.maximum(x ** prof.q_s_exp, 1e-3), prof.q_s_max)
    one_over_f = targets * q * np.sqrt(np.log((max(age_s, 1e-6) + prof.t_read_s) / (2 * prof.t_read_s)))
    return vcfg.tolerance_us + 5 * np.sqrt((white / np.sqrt(vcfg.n_avg)) ** 2 + (white / 8) ** 2 + one_over_f ** 2)
