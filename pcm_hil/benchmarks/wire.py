"""Wire throughput: pulse + read per cell through the drivers over loopback.

The virtual bench runs in a separate process (``pcm-hil emulate``), as it would on a
lab PC talking to instruments, so client and servers do not share an interpreter lock.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..bench.chip import BenchChip
from ..bench.config import BenchConfig


def _start_bench(seed: int, tmp: Path) -> tuple[subprocess.Popen, Path]:
    ready, bench_file = tmp / "ready.json", tmp / "bench.toml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pcm_hil.cli", "emulate", "--port", "0", "--seed", str(seed),
         "--ready-file", str(ready), "--bench-file", str(bench_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"pcm-hil emulate exited: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("pcm-hil emulate did not become ready within 60 s")
        time.sleep(0.05)
    return proc, bench_file


def run(cells: int = 100_000, repeats: int = 7, seed: int = 0, single_cells: int = 300) -> dict[str, Any]:
    """Cell operations (one pulse + one read) per second, batched versus one cell per transaction."""
    with tempfile.TemporaryDirectory() as d:
        proc, bench_file = _start_bench(seed, Path(d))
        try:
            with BenchChip(BenchConfig.load(bench_file)) as chip:
                n = min(cells, chip.geometry.n_cells)
                idx = np.arange(n, dtype=np.int64)
                chip.pulse(idx, "RESET", 2.2, 50e-9)
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    chip.pulse(idx, "SET", 0.8, 100e-9)
                    chip.read(idx)
                    times.append(time.perf_counter() - t0)
                t_block = float(np.median(times))
                per_cell = []
                for k in range(single_cells):
                    one = idx[k:k + 1]
                    t0 = time.perf_counter()
                    chip.pulse(one, "SET", 0.8, 100e-9)
                    chip.read(one)
                    per_cell.append(time.perf_counter() - t0)
                t_single = float(np.median(per_cell))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    block, single = n / t_block, 1.0 / t_single
    return {
        "benchmark": "wire",
        "cells": n,
        "repeats": repeats,
        "cell_ops_per_s_block": block,
        "cell_ops_per_s_single": single,
        "ratio": block / single,
        "seconds_per_block": t_block,
        "seconds_per_single_cell": t_single,
        "targets": {"cell_ops_per_s_block_min": 5e5, "ratio_min": 20},
    }


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run()))
