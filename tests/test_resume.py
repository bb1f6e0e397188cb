"""Reliability of the store job: SIGKILL at any stage, a bench that gives up, Ctrl-C, locks.

Every test kills or stops a real run (a subprocess, a real signal, a real virtual bench)
and resumes it; the resumed run must not pulse verified cells again and must end where an
uninterrupted run of the same chip ends, within the noise.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pcm_hil.bench.chip import BenchChip, GaveUp, RetryPolicy
from pcm_hil.calibrate import run_calibration
from pcm_hil.checkpoint import TABLE
from pcm_hil.chip import Geometry
from pcm_hil.emulator import EmulatedChip
from pcm_hil.emulator.instruments import VirtualBench
from pcm_hil.emulator.instruments.faults import FaultPlan
from pcm_hil.run_store import RunLocked, RunStore
from pcm_hil.store_job import StoreConfig, resume_store_job, run_store_job

from .processes import wait_for_journal

GEOM = Geometry(1, 128, 128)
CFG = dict(model="mlp-digits", sparsity=0.5, replicas_per_weight=2.0, importance_samples=300, checkpoint_s=0.0,
           digital_baseline=False, programmings=2, medium_cells=256)

KILL_STORE = """
import os, signal, sys
from pcm_hil_noisemodel import NoiseModel
from pcm_hil.chip import Geometry
from pcm_hil.emulator import EmulatedChip
from pcm_hil.store_job import StoreConfig, run_store_job
from pcm_hil.run_store import RunStore

run_dir, stage, at = sys.argv[1], sys.argv[2], float(sys.argv[3])
cfg = StoreConfig.from_options(**%r)

def progress(s, done, total):
    if s == stage and done >= at * total:
        os.kill(os.getpid(), signal.SIGKILL)

with RunStore(run_dir + "/s.sqlite") as store:
    run_store_job(EmulatedChip(Geometry(1, 128, 128), seed=2), NoiseModel.load(run_dir + "/noise.json"), store, cfg,
                  progress)
""" % CFG


@pytest.fixture(scope="module")
def uninterrupted(noise_file, tmp_path_factory):
    from pcm_hil_noisemodel import NoiseModel

    d = tmp_path_factory.mktemp("clean")
    with RunStore(d / "s.sqlite") as store:
        return run_store_job(EmulatedChip(GEOM, seed=2), NoiseModel.load(noise_file), store, StoreConfig.from_options(**CFG)).record


def _kill(tmp_path, noise_file, stage: str, at: float) -> str:
    (tmp_path / "noise.json").write_bytes(noise_file.read_bytes())
    r = subprocess.run([sys.executable, "-c", KILL_STORE, str(tmp_path), stage, str(at)], capture_output=True,
                       timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()[-3000:]
    with RunStore(tmp_path / "s.sqlite") as store:
        runs = store.runs()
        assert list(runs["status"]) == ["killed (resumable)"]
        return runs["run_id"].iloc[0]


def _verified(store: RunStore, run_id: str) -> np.ndarray:
    ck = store.read(run_id, TABLE)
    if ck.empty:
        return np.empty(0, np.int64)
    last = ck.sort_values("seq", kind="stable").drop_duplicates("cell", keep="last")
    return last.loc[last["status"] != 0, "cell"].to_numpy()


def _saved_chip(db: Path, run_id: str) -> EmulatedChip:
    """The emulated chip as a run left it in its run directory."""
    with RunStore(db) as store:
        return EmulatedChip.load_state(store.chip_file(store.run(run_id)["settings"]["chip_id"]))


@pytest.mark.slow
@pytest.mark.parametrize("stage, at", [("program", 0.5), ("retention", 0.0), ("accuracy curve", 0.0)])
def test_store_killed_at_any_stage_resumes_to_the_uninterrupted_result(tmp_path, noise_file, uninterrupted,
                                                                       stage, at) -> None:
    run_id = _kill(tmp_path, noise_file, stage, at)
    chip = _saved_chip(tmp_path / "s.sqlite", run_id)
    before = chip.pulse_count.copy()
    with RunStore(tmp_path / "s.sqlite") as store:
        done_before = _verified(store, run_id)
        stages_before = set(store.stages(run_id))
        reads_before = store.read(run_id, "readback")
        r = resume_store_job(chip, store, run_id).record
        assert store.run(run_id)["status"] == "done" and r["resumed"]
        assert len(store.read(run_id, "programmed")) == r["cells"]  # one row per cell, however often resumed
        reads_after = store.read(run_id, "readback")
        assert len(reads_after) == r["cells"]
    if stage == "accuracy curve":  # killed after the read-back: the reads were kept, not repeated
        assert reads_after.equals(reads_before)
    # cells that finished before the kill got no pulse after it
    assert np.array_equal(chip.pulse_count[done_before], before[done_before])
    if stage == "program":
        assert 0 < done_before.size < r["cells"]
    else:
        # no cell of the model pulsed at all (the evaluation's copies and medium test use other cells)
        model_cells = np.arange(r["cells"])
        assert "programmed" in stages_before and np.array_equal(chip.pulse_count[model_cells], before[model_cells])
    # the same chip seed, the same plan: the end state matches within the noise
    u = uninterrupted
    assert r["cells"] == u["cells"] and r["pulses_planned"] == pytest.approx(u["pulses_planned"])
    assert abs(r["yield"] - u["yield"]) < 0.02
    assert abs(r["error_us"]["rms"] - u["error_us"]["rms"]) < 0.25 * u["error_us"]["rms"]
    assert abs(r["accuracy_stored"] - u["accuracy_stored"]) < 0.03  # ±3 pp on 360 test digits (σ ≈ 1 pp)


@pytest.mark.slow
def test_a_bench_that_goes_silent_gives_up_with_outputs_off_and_resumes(tmp_path, noise_file) -> None:
    from pcm_hil_noisemodel import NoiseModel

    noise = NoiseModel.load(noise_file)
    healthy, silent = FaultPlan(rate=0.0), FaultPlan(rate=1.0, kinds=("silent",), silent_s=0.4)
    with VirtualBench(GEOM, seed=2, faults=healthy) as vb, RunStore(tmp_path / "s.sqlite") as store:
        cfg = vb.bench_config()
        cfg = replace(cfg, board=replace(cfg.board, timeout_s=0.2, max_batch=256))
        policy = RetryPolicy(attempts=2, backoff_s=0.01)

        def unplug(stage, done, total):  # the cable comes loose halfway through programming
            if stage == "program" and done >= 0.5 * total:
                vb.faults.plan = silent

        t0 = time.monotonic()
        with pytest.raises(GaveUp), BenchChip(cfg, retry=policy) as chip:
            run_store_job(chip, noise, store, StoreConfig.from_options(**CFG), progress=unplug)
        assert time.monotonic() - t0 < 120  # bounded: the policy's attempts × timeouts, not forever
        (run,) = store.runs().itertuples()
        assert run.status.startswith("failed: GaveUp")  # the reason is recorded
        deadline = time.monotonic() + 5
        while vb.board.output and time.monotonic() < deadline:  # the host is gone: the interlock opens
            time.sleep(0.05)
        assert not vb.board.output
        done_before = _verified(store, run.run_id)
        before = vb.chip.pulse_count.copy()
        vb.faults.plan = healthy  # cable back in
        with BenchChip(cfg, retry=policy) as chip:
            r = resume_store_job(chip, store, run.run_id).record
        assert store.run(run.run_id)["status"] == "done"
        assert done_before.size > 0
        bench_cells = chip.board_index(done_before)
        assert np.array_equal(vb.chip.pulse_count[bench_cells], before[bench_cells])
        assert r["yield"] > 0.9 and r["accuracy_stored"] > r["accuracy_reference"] - 0.05


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_cli_resumes(tmp_path, noise_file) -> None:
    cmd = [sys.executable, "-m", "pcm_hil.cli", "store", "--model", "mlp-digits", "--noise-model", str(noise_file),
           "--run-dir", str(tmp_path), "--report", "none", "--json"]
    # the CLI's emulated chip has its own chip id; the noise model names another: refused before any pulse
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "fitted on" in bad.stderr
    cal = subprocess.run([sys.executable, "-m", "pcm_hil.cli", "calibrate", "run", "--cells", "6000", "--first-cell",
                          "100000", "--out", str(tmp_path / "noise.json"), "--report", "none",
                          "--run-dir", str(tmp_path), "--json"], capture_output=True, text=True, timeout=300)
    assert cal.returncode == 0, cal.stderr
    cmd[cmd.index(str(noise_file))] = str(tmp_path / "noise.json")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "pcm-hil.sqlite"
    wait_for_journal(db, "program", p)  # wait until programming has started
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err  # never skipped: a store that beats the signal fails the test
    assert "Continue with: pcm-hil store --resume" in err
    run_id = err.split("--resume ")[1].split()[0]
    with RunStore(db) as store:
        assert store.run(run_id)["status"] == "interrupted"
        with pytest.raises(ValueError, match="not a calibration run"):
            run_calibration(EmulatedChip(GEOM), store, resume=run_id)
    r = subprocess.run([sys.executable, "-m", "pcm_hil.cli", "store", "--resume", run_id, "--run-dir", str(tmp_path),
                        "--report", "none", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["run_id"] == run_id and out["resumed"] and out["yield"] > 0.9
    again = subprocess.run([sys.executable, "-m", "pcm_hil.cli", "store", "--resume", run_id, "--run-dir",
                            str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already done" in again.stderr


def test_two_writers_cannot_share_a_run(tmp_path) -> None:
    with RunStore(tmp_path / "s.sqlite") as a, RunStore(tmp_path / "s.sqlite") as b:
        run_id = a.create_run("calibration", {})
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
            b.resume_run(run_id, "calibration")
        with pytest.raises(RunLocked, match="does not hold the lock"):
            b.mark(run_id, "window")
        assert b.runs()["status"].tolist() == ["running"]  # a live writer: not offered for resume
        a.finish(run_id, status="interrupted")
        b.resume_run(run_id, "calibration")  # released: the next writer may take it
        b.finish(run_id)


@pytest.mark.slow
def test_a_stop_request_ends_a_real_time_retention_wait_promptly(tmp_path, noise_file) -> None:
    """On a real clock a day-long wait is taken in slices of at most 2 s: Ctrl-C is honoured."""
    from pcm_hil_noisemodel import NoiseModel

    from pcm_hil.checkpoint import Interrupted, StopRequest

    stop = StopRequest()
    t_wait: list[float] = []

    def progress(stage, done, total):
        if stage == "retention" and not t_wait:
            t_wait.append(time.monotonic())
            stop.request()  # as the first Ctrl-C would

    chip = EmulatedChip(GEOM, seed=2, real_time=True)
    with RunStore(tmp_path / "s.sqlite") as store:
        with pytest.raises(Interrupted, match="retention wait"):
            run_store_job(chip, NoiseModel.load(noise_file), store, StoreConfig.from_options(**{**CFG, "retention_s": 86400.0}),
                          progress=progress, stop=stop)
        assert time.monotonic() - t_wait[0] < 5.0
        (run,) = store.runs().itertuples()
        assert run.status == "interrupted" and "programmed" in store.stages(run.run_id)


def test_a_checkpoint_that_names_foreign_cells_is_refused(tmp_path) -> None:
    from pcm_hil.checkpoint import VerifyJournal
    from pcm_hil.program import VerifyState

    with RunStore(tmp_path / "s.sqlite") as store:
        run_id = store.create_run("store", {})
        journal = VerifyJournal(store, run_id, "program", np.arange(10, 20), every_s=0.0)
        state = VerifyState.fresh(10)
        journal(state, np.arange(10))
        assert journal.load() is not None
        other = VerifyJournal(store, run_id, "program", np.arange(0, 10))  # another layout: cells 0-9
        with pytest.raises(ValueError, match="outside the run's layout"):
            other.load()


@pytest.mark.slow
def test_a_store_killed_while_calibrating_on_the_spot_resumes_with_the_options_it_was_given(tmp_path) -> None:
    """Issue #17 point 4: ``store --resume CAL`` stores the model asked for (not the default),
    and resuming it again starts no second store run."""
    db = tmp_path / "pcm-hil.sqlite"
    p = subprocess.Popen([sys.executable, "-m", "pcm_hil.cli", "store", "--model", "mlp-digits", "--sparsity", "0.5",
                          "--run-dir", str(tmp_path), "--report", "none", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_journal(db, "levels", p)  # wait until the calibration programs cells
    p.kill()
    p.communicate(timeout=60)
    with RunStore(db) as store:
        runs = store.runs()
    assert list(runs["kind"]) == ["calibration"] and runs["status"].iloc[0] == "killed (resumable)"
    cal = runs["run_id"].iloc[0]
    resume = [sys.executable, "-m", "pcm_hil.cli", "store", "--resume", cal, "--run-dir", str(tmp_path),
              "--report", "none", "--json"]
    r = subprocess.run(resume, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["model"] == "mlp-digits" and out["sparsity"] == 0.5  # the options it was started with
    again = subprocess.run(resume, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "nothing to resume" in again.stderr and again.stderr.count("\n") == 1
    with RunStore(db) as store:
        assert list(store.runs()["kind"]) == ["calibration", "store"]  # no second store run


def test_the_ctrl_c_hint_names_the_bench_run_dir_and_outputs() -> None:
    from pcm_hil.cli import _resume_hint, build_parser

    args = build_parser().parse_args(["store", "--bench", "my bench.toml", "--run-dir", "/data/runs"])
    assert _resume_hint(args, "R1") == "pcm-hil store --resume R1 --bench 'my bench.toml' --run-dir /data/runs"
    args = build_parser().parse_args(["calibrate", "run", "--out", "m.json"])
    assert _resume_hint(args, "R2") == "pcm-hil calibrate run --resume R2 --out m.json"


KILL_ON_BENCH = """
import sys
from pcm_hil_noisemodel import NoiseModel
from pcm_hil.bench import BenchChip, BenchConfig
from pcm_hil.store_job import StoreConfig, run_store_job
from pcm_hil.run_store import RunStore

run_dir = sys.argv[1]
cfg = StoreConfig.from_options(**%r)
with RunStore(run_dir + "/s.sqlite") as store, BenchChip(BenchConfig.load(run_dir + "/bench.toml")) as chip:
    run_store_job(chip, NoiseModel.load(run_dir + "/noise.json"), store, cfg)
""" % {**CFG, "checkpoint_s": 0.5}


def _checkpointed_verified(db: Path) -> bool:
    """Whether a checkpoint of the program part already holds a verified cell."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return con.execute(f"SELECT count(*) FROM {TABLE} WHERE part = 'program' AND status != 0").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def _program_checkpoint(db: Path, run_id: str) -> "pd.DataFrame":
    """Each program cell's last checkpoint row (chip cells)."""
    with RunStore(db) as store:
        ck = store.read(run_id, TABLE)
    ck = ck[ck["part"] == "program"].sort_values("seq", kind="stable")
    return ck.drop_duplicates("cell", keep="last").set_index("cell")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_bench_run_killed_at_a_random_point_resumes_without_restarting(tmp_path, noise_file, seed) -> None:
    """SIGKILL at a seeded random point of programming on the virtual bench, chosen by the pulses
    the chip has taken (not by a checkpoint), so it lands between checkpoints, inside a
    transaction or not. The chip lives in the bench and keeps every pulse sent up to the kill.
    Its own pulse counters tell a resume from a restart: a restart would pulse every cell again;
    a resume pulses no cell the last checkpoint saw verified, and only cells that were pending."""
    (tmp_path / "noise.json").write_bytes(noise_file.read_bytes())
    k = int(np.random.default_rng(seed).integers(1, 16))  # the pulse transaction that dies, once some cells verified
    # (programming takes about 30 pulse transactions after the first verified checkpoint here)
    with VirtualBench(GEOM, seed=2) as vb:
        cfg = vb.bench_config()
        cfg = replace(cfg, board=replace(cfg.board, max_batch=64))  # many transactions: a kill can land anywhere
        cfg.save(tmp_path / "bench.toml")
        p = subprocess.Popen([sys.executable, "-c", KILL_ON_BENCH, str(tmp_path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        db = tmp_path / "s.sqlite"
        handle, seen, armed = vb.board.handle, [0], [None]

        def handle_and_kill(payload: bytes, conn: object = None) -> bytes:
            reply = handle(payload, conn)
            if payload.startswith(b"BULK:PULS"):
                seen[0] += 1
                if armed[0] is None and _checkpointed_verified(db):
                    armed[0] = seen[0]
                if armed[0] is not None and seen[0] == armed[0] + k:  # the pulses went out; the controller
                    os.kill(p.pid, signal.SIGKILL)                    # dies before the reply
            return reply

        vb.board.handle = handle_and_kill
        _, err = p.communicate(timeout=300)
        vb.board.handle = handle
        assert p.returncode == -signal.SIGKILL, err.decode()[-2000:]  # never passes by finishing first
        deadline = time.monotonic() + 5
        while vb.board.output and time.monotonic() < deadline:  # the controller is gone: interlock
            time.sleep(0.02)
        assert not vb.board.output
        at_kill = vb.chip.pulse_count.astype(np.int64)
        with RunStore(db) as store:
            (run,) = store.runs().itertuples()
        assert run.status == "killed (resumable)"
        ck = _program_checkpoint(db, run.run_id)
        cells = ck.index.to_numpy()
        verified = cells[ck["status"].to_numpy() != 0]
        pending = cells[ck["status"].to_numpy() == 0]
        assert verified.size > 0 and pending.size > 0, "the kill did not land inside programming"
        # the pulses the checkpoint accounts for: SETs, the first RESET and one per restart
        accounted = (ck["pulses"] + 1 + ck["resets"] - ck["need_reset"]).to_numpy()
        assert np.any(at_kill[cells] > accounted), "no pulse after the last checkpoint: not between checkpoints"
        with BenchChip(cfg) as chip, RunStore(db) as store:
            r = resume_store_job(chip, store, run.run_id).record
            assert store.run(run.run_id)["status"] == "done" and r["resumed"]
        after = vb.chip.pulse_count.astype(np.int64)
    # a resume: no verified cell pulsed again; a restart would have pulsed every cell
    assert np.array_equal(after[verified], at_kill[verified])
    pulsed_again = np.flatnonzero(after[:r["cells"]] > at_kill[:r["cells"]])
    assert np.isin(pulsed_again, np.concatenate([pending, np.setdiff1d(np.arange(r["cells"]), cells)])).all()
    assert r["yield"] > 0.9 and r["accuracy_stored"] > r["accuracy_reference"] - 0.05
