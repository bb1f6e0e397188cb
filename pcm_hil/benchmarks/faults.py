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
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..bench.chip import BenchChip, RetryPolicy
from ..checkpoint import VerifyJournal
from ..chip import Geometry
from ..emulator import EmulatedChip
from ..emulator.instruments import VirtualBench
from ..emulator.instruments.faults import FAULT_KINDS, FaultPlan

SOAK_KINDS = (*FAULT_KINDS, "offset")
from ..program import VerifyConfig, VerifyResult, program_verify
from ..run_store import RunStore


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
        crashes: int = 3) -> dict[str, Any]:
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
        with VirtualBench(geometry, seed=seed, faults=plan, frame_timeout_s=1.0) as vb:
            vb.chip.track_truth()
            res, resumed, bad_reads, log, measured, disputed = _program(vb, idx, targets, vcfg, timeout_s, batch,
                                                                         store, crash_at)
            truth = vb.chip.truth_us.astype(np.float64)  # each cell as it was at its last verify read
            offset_reads = vb.model.offset_reads
            run_time_s = vb.chip.now()
            final = vb.chip.read(idx, n_avg=64)  # what the cells hold now, as any read sees it
            injected_stuck = vb.chip.stuck_kind(idx) != EmulatedChip(geometry, seed=seed).stuck_kind(idx)
            counts, transactions = dict(vb.faults.counts), vb.faults.transactions
        runs = store.runs()
        soak_id = runs["run_id"].iloc[-1]
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

    def beyond_tolerance(result: VerifyResult, at_verify: np.ndarray, exclude: np.ndarray) -> int:
        return int((result.converged & ~exclude & (np.abs(at_verify - targets) > vcfg.tolerance_us)).sum())

    return {
        "benchmark": "faults", "transactions": transactions, "fault_rate": rate,
        "faults_injected": sum(counts.values()), "faults_by_kind": counts,
        # wire faults are detected by the drivers (typed errors, logged); offset reads by
        # BenchChip's confirming reads; stuck bursts by program-and-verify (their cells do not verify)
        "faults_detected": len(wire) + disputed + (counts.get("stuck", 0) if stuck_flagged else 0),
        "driver_errors_logged": len(wire),
        "reads_offset": offset_reads, "reads_disputed": disputed, "reads_disputed_uninterrupted": clean_disputed,
        "stuck_cells_flagged_by_verify": stuck_flagged,
        "pulse_batches_uncertain": res.uncertain_batches,
        "crashes": crashes, "runs_resumed": resumed,
        "measurements_lost": unrecorded + bad_reads + misrecorded,
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
