"""Races and files (issue #17, point 5): processes started together on a fresh run
directory, a zero-byte run store, a read-only run store. Each ends in one clear line (exit 2)
or works, and loses nothing."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pcm_hil import cli
from pcm_hil.run_store import CellClaim, RunStore

PCM_HIL = [sys.executable, "-m", "pcm_hil.cli"]

APPEND_AT = """
import sys, time
import pandas as pd
from pcm_hil.run_store import RunStore
start = float(sys.argv[2])
with RunStore(sys.argv[1]) as store:
    run_id = store.create_run("calibration", {})
    time.sleep(max(0.0, start - time.time()))  # both processes create the new table at the same moment
    store.append(run_id, "window", pd.DataFrame({"cell": range(100), "g_us": 1.0}), stage="window")
    store.finish(run_id)
"""


def test_two_writers_create_the_same_new_table_at_once(tmp_path) -> None:
    db, start = tmp_path / "pcm-hil.sqlite", time.time() + 2.0
    procs = [subprocess.Popen([sys.executable, "-c", APPEND_AT, str(db), str(start)], stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs  # was: "table window already exists"
    with RunStore(db) as store:
        runs = store.runs()
        assert list(runs["status"]) == ["done", "done"]
        assert all(len(store.read(r, "window")) == 100 for r in runs["run_id"])


@pytest.mark.slow
def test_two_calibrations_started_together_on_a_fresh_run_dir(tmp_path) -> None:
    """Both drive the same emulated chip: one runs, the other is refused in one line before
    any pulse (exit 2); the run that ran is complete."""
    cmd = [*PCM_HIL, "calibrate", "run", "--cells", "2000", "--report", "none", "--run-dir", str(tmp_path), "--json"]
    procs = [subprocess.Popen([*cmd, "--out", str(tmp_path / f"m{k}.json")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    err = next(e for rc, e in results if rc == 2)
    assert "is in use by another pcm-hil process" in err and err.count("\n") == 1 and "Traceback" not in err
    with RunStore(tmp_path / "pcm-hil.sqlite") as store:
        runs = store.runs()
        assert list(runs["status"]) == ["done"] and len(store.read(runs["run_id"].iloc[0], "programming")) == 2000


def _hashes(d: Path) -> dict[str, str]:
    """Every file but SQLite's own WAL index (a read-only reader of a WAL store may make one)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def test_a_zero_byte_run_store_is_refused_not_read_as_empty(tmp_path, capsys) -> None:
    (tmp_path / "pcm-hil.sqlite").write_bytes(b"")
    for argv in (["runs", "list"], ["demo", "--cells", "100"], ["store", "--model", "mlp-digits"]):
        assert cli.main([*argv, "--run-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "is empty (0 bytes)" in err and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["pcm-hil.sqlite"]  # nothing written: no chip, no lock
    assert (tmp_path / "pcm-hil.sqlite").stat().st_size == 0


def test_a_read_only_run_store_can_be_read_and_is_not_written(tmp_path, capsys) -> None:
    db = tmp_path / "pcm-hil.sqlite"
    with RunStore(db) as store:
        run_id = store.create_run("demo", {"x": 1}, CellClaim("emulated:pcm:seed=0:4x512x512", 1 << 20, 100))
        store.append(run_id, "window", pd.DataFrame({"cell": [1, 2], "g_us": [3.0, 4.0]}))
        store.finish(run_id, result={"ok": True})
    db.chmod(0o444)
    try:
        before = _hashes(tmp_path)
        assert cli.main(["runs", "list", "--run-dir", str(tmp_path), "--json"]) == 0
        assert run_id in capsys.readouterr().out
        with RunStore(db) as store:
            assert store.read_only and len(store.read(run_id, "window")) == 2
        assert cli.main(["demo", "--cells", "100", "--run-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "is read-only" in err and err.count("\n") == 1
        assert _hashes(tmp_path) == before and not list(tmp_path.glob("chip-*"))  # nothing pulsed or written
    finally:
        db.chmod(0o644)
