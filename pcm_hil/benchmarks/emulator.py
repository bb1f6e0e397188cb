"""Emulator throughput: one SET pulse plus one read of every cell of a large batch."""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..chip import Geometry
from ..emulator import EmulatedChip


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run(cells: int = 1_000_000, repeats: int = 7, seed: int = 0, profile: str = "pcm") -> dict[str, Any]:
    """Median cell-iterations per second (SET + read per cell), memory and the RNG floor."""
    cols = 1000
    rows = -(-cells // cols)
    chip = EmulatedChip(Geometry(1, rows, cols), profile=profile, seed=seed)
    idx = np.arange(cells, dtype=np.int64)
    shuffled = np.random.default_rng(seed).permutation(idx)
    chip.pulse(idx, "RESET", 2.2, 50e-9)

    def iteration(sel: np.ndarray) -> None:
        chip.pulse(sel, "SET", 0.8, 100e-9)
        chip.read(sel)

    iteration(idx)  # warm-up
    t_iter = _median_time(lambda: iteration(idx), repeats)
    t_shuffled = _median_time(lambda: iteration(shuffled), repeats)
    rng = np.random.Generator(np.random.SFC64(seed))
    t_normal = _median_time(lambda: rng.standard_normal(cells, dtype=np.float32), repeats)
    return {
        "benchmark": "emulator",
        "profile": str(profile),
        "cells": cells,
        "repeats": repeats,
        "cell_iterations_per_s": cells / t_iter,
        "cell_iterations_per_s_shuffled": cells / t_shuffled,
        "seconds_per_iteration": t_iter,
        "bytes_per_cell": chip.state_nbytes / chip.geometry.n_cells,
        "normal_draw_seconds": t_normal,
        "normal_draws_per_s": cells / t_normal,
        "iteration_over_normal_ratio": t_iter / t_normal,
        "targets": {"cell_iterations_per_s_min": 5e6, "bytes_per_cell_max": 64},
    }
