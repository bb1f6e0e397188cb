"""The demo procedure: program an array to evenly spaced levels, read it back at several
ages, and summarize per level (yield, pulses, mean and spread of the reads).

The loop settings and the conductance range come from calibration (``settings``): a noise
model, the latest finished calibration of the chip in the run store, or (neither) a short
response and window measurement on the demo's own cells
(:func:`pcm_hil.calibrate.learned_settings`, called by the command line)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import numpy as np

from . import __version__
from .chip import Chip
from .program import VerifyConfig, program_verify
from .screening import screen


@dataclass(frozen=True)
class DemoConfig:
    cells: int = 20_000
    levels: int = 8
    tolerance_us: float = 0.5
    read_after_s: tuple[float, ...] = (20.0, 3600.0, 86400.0)
    g_hi_fraction: float = 0.8  # top level as a fraction of the measured saturation
    level_min_us: float = 1.0   # bottom level (µS)
    max_pulses: int | None = None  # SET-pulse cap per cell (None: the loop settings' own)
    spare_fraction: float = 0.05  # cells screened beyond ``cells``, to stand in for stuck ones (0: no screen)

    def __post_init__(self) -> None:
        if not 0 <= self.spare_fraction <= 1:
            raise ValueError(f"spare_fraction must be in [0, 1], got {self.spare_fraction!r}")
        if not 1 <= self.levels <= 64:
            raise ValueError(f"levels must be in [1, 64], got {self.levels}")
        if self.cells < self.levels:
            raise ValueError(f"cells must be at least levels ({self.levels}), got {self.cells}")
        if not 0 < self.g_hi_fraction <= 1:
            raise ValueError(f"g_hi_fraction must be in (0, 1], got {self.g_hi_fraction!r}")

    def cells_claimed(self) -> int:
        """Cells the demo screens: ``cells`` and the spares."""
        return self.cells + math.ceil(self.cells * self.spare_fraction)


@dataclass(frozen=True)
class DemoSettings:
    """The loop settings and the measured saturation (µS) a demo uses, and where they came from
    (see :func:`pcm_hil.calibrate.learned_settings`)."""

    verify: VerifyConfig
    g_sat_us: float
    source: str


def run_demo(chip: Chip, cfg: DemoConfig, progress: Callable[[int, int], None] | None = None,
             cells: np.ndarray | None = None, settings: DemoSettings | None = None,
             outcome: list | None = None) -> dict[str, Any]:
    """Screen ``cells`` for stuck ones (default: the first ``cfg.cells_claimed()``, at most the
    chip's; :mod:`pcm_hil.screening`), program the first ``cfg.cells`` usable ones to levels
    from ``level_min_us`` to ``g_hi_fraction`` × the measured saturation and read them back;
    the result record. With ``spare_fraction`` 0 nothing is screened. ``settings`` give the
    loop and the measured saturation (required; see :func:`pcm_hil.calibrate.learned_settings`).
    The command line passes cells the demo run owns. ``outcome``, a list, receives the
    per-cell :class:`~pcm_hil.program.VerifyResult`."""
    if cells is None:
        cells = np.arange(min(cfg.cells_claimed(), chip.geometry.n_cells), dtype=np.int64)
    cells = chip.cells(cells)
    if settings is None:
        raise ValueError("the demo needs its loop settings and range from calibration "
                         "(pcm_hil.calibrate.learned_settings)")
    g_hi = cfg.g_hi_fraction * settings.g_sat_us
    if g_hi <= cfg.level_min_us:
        raise ValueError(f"the measured saturation ({settings.g_sat_us:.3g} µS) leaves no range above "
                         f"{cfg.level_min_us} µS")
    levels = np.linspace(cfg.level_min_us, g_hi, cfg.levels)
    vcfg = settings.verify if cfg.max_pulses is None else replace(settings.verify, max_pulses=cfg.max_pulses)
    screened = None
    if cfg.spare_fraction > 0:
        screened = screen(chip, cells, vcfg)
        cells = cells[screened.usable]
    cells = cells[:cfg.cells]
    n = int(cells.size)
    targets = levels[np.arange(n) % cfg.levels]
    res = program_verify(chip, cells, targets, vcfg, progress=progress)
    if outcome is not None:
        outcome.append(res)
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
            "levels": cfg.levels, "g_sat_us": settings.g_sat_us, "settings_from": settings.source,
            "verify": asdict(vcfg), "summary": res.summary(), "per_level": per_level, "version": __version__,
            "screen": None if screened is None else {"cells": int(screened.usable.size),
                                                     "stuck": int((~screened.usable).sum())}}
