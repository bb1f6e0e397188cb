"""The demo procedure: program an array to evenly spaced levels, read it back at several
ages, and summarize per level (yield, pulses, mean and spread of the reads)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from . import __version__
from .chip import Chip
from .program import VerifyConfig, program_verify


@dataclass(frozen=True)
class DemoConfig:
    cells: int = 20_000
    levels: int = 8
    tolerance_us: float = 0.5
    read_after_s: tuple[float, ...] = (20.0, 3600.0, 86400.0)
    g_hi_us: float = 21.25  # top level (µS)

    def __post_init__(self) -> None:
        if not 1 <= self.levels <= 64:
            raise ValueError(f"levels must be in [1, 64], got {self.levels}")
        if self.cells < self.levels:
            raise ValueError(f"cells must be at least levels ({self.levels}), got {self.cells}")


def run_demo(chip: Chip, cfg: DemoConfig, progress: Callable[[int, int], None] | None = None,
             cells: np.ndarray | None = None) -> dict[str, Any]:
    """Program ``cells`` (default: the first ``cfg.cells``, at most the chip's) and read them
    back; the result record. The command line passes cells the demo run owns."""
    if cells is None:
        cells = np.arange(min(cfg.cells, chip.geometry.n_cells), dtype=np.int64)
    cells = chip.cells(cells)
    n = int(cells.size)
    levels = np.linspace(1.0, cfg.g_hi_us, cfg.levels)
    targets = levels[np.arange(n) % cfg.levels]
    vcfg = VerifyConfig(tolerance_us=cfg.tolerance_us)
    res = program_verify(chip, cells, targets, vcfg, progress=progress)
    t_end = chip.now()
    reads: dict[float, np.ndarray] = {}
    for age in sorted(cfg.read_after_s):
        chip.wait(max(0.0, t_end + age - chip.now()))
        reads[age] = chip.read(cells, n_avg=vcfg.n_avg)
    per_level = []
    for lv in levels:
        m = targets == lv
        ok = m & res.converged
        row = {"target_us": float(lv), "yield": float(res.converged[m].mean()), "pulses_mean": float(res.pulses[m].mean())}
        for age, g in reads.items():
            row[f"mean_us@{age:g}s"] = float(g[ok].mean()) if ok.any() else float("nan")
            row[f"sigma_us@{age:g}s"] = float(g[ok].std()) if ok.any() else float("nan")
        per_level.append(row)
    chip_info = {k: v for k, v in chip.identity().items() if k != "profile_parameters"}
    return {"job": "demo", "chip": chip_info, "backend": type(chip).__name__, "cells": n, "first_cell": int(cells[0]),
            "levels": cfg.levels,
            "verify": asdict(vcfg), "summary": res.summary(), "per_level": per_level, "version": __version__}
