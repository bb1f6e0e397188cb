"""Helpers for tests that drive pcm-hil as a real process (signals, kills)."""
from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

from pcm_hil.checkpoint import TABLE


def wait_for_journal(db: Path, part: str, process: subprocess.Popen, timeout_s: float = 240.0) -> None:
    """Return once ``process`` has journaled program-and-verify state of ``part`` ("program",
    "levels", ...) in the run store ``db``, or has ended, or ``timeout_s`` passed (the caller's
    assertions then fail)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                if con.execute(f"SELECT count(*) FROM {TABLE} WHERE part = ?", (part,)).fetchone()[0] > 0:
                    return
        except sqlite3.Error:  # the store or its table does not exist yet
            pass
        time.sleep(0.05)
