"""Screening for stuck cells before they are given data (bad-cell management, as a memory
controller maps out bad columns).

A cell stuck at one conductance (stuck RESET, stuck SET, or held at some value, alone or on
an open word or bit line) ignores both pulse kinds. The screen gives every cell a RESET,
SET pulses at the loop's top amplitude (a second and more only to cells that have not yet
moved) and another RESET, with a batched read after each step, and calls a cell stuck when
the SETs moved it less than a small fraction of the batch's typical move, or when a RESET
left it far above the batch's RESET level. The thresholds come from the batch itself
(medians and MADs), so the screen needs no device numbers beyond the loop settings
calibration measured. Healthy cells end in the RESET state, as program-and-verify expects
them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .chip import Chip, PulseKind
from .program import VerifyConfig


@dataclass(frozen=True)
class Screen:
    """Per screened cell: usable, and the three reads (µS) it was judged on."""

    usable: np.ndarray
    reset_us: np.ndarray
    set_us: np.ndarray
    reset_again_us: np.ndarray


def screen(chip: Chip, cells: np.ndarray, vcfg: VerifyConfig, set_pulses: int = 6, move_fraction: float = 0.25,
           reset_mads: float = 8.0) -> Screen:
    """Screen ``cells``: a RESET, SET pulses at ``vcfg.set_max_v`` (up to ``set_pulses``: a
    cell that has not yet moved gets another, as crystallization may not nucleate on the
    first), a RESET; a batched read after each step.

    Stuck: the SETs raised the cell by less than ``move_fraction`` × the batch's median rise
    after one pulse, or a RESET left it above the median RESET read + ``reset_mads`` MADs
    (at least 1 µS)."""
    if not 0 < move_fraction < 1:
        raise ValueError(f"move_fraction must be in (0, 1), got {move_fraction!r}")
    if type(set_pulses) is not int or not 1 <= set_pulses <= 100:
        raise ValueError(f"set_pulses must be an integer in [1, 100], got {set_pulses!r}")
    cells = chip.cells(cells)

    def pulse(which: np.ndarray, kind: PulseKind, amplitude_v: float, width_s: float) -> np.ndarray:
        chip.pulse(which, kind, np.full(which.size, amplitude_v), np.full(which.size, width_s))
        return chip.read(which, n_avg=vcfg.n_avg).astype(np.float64)

    r0 = pulse(cells, PulseKind.RESET, vcfg.reset_amplitude_v, vcfg.reset_width_s)
    r1 = pulse(cells, PulseKind.SET, vcfg.set_max_v, vcfg.set_width_s)
    threshold = move_fraction * max(float(np.median(r1 - r0)), 0.0)
    for _ in range(set_pulses - 1):
        still = np.flatnonzero(r1 - r0 < threshold)
        if still.size == 0:
            break
        r1[still] = pulse(cells[still], PulseKind.SET, vcfg.set_max_v, vcfg.set_width_s)
    r2 = pulse(cells, PulseKind.RESET, vcfg.reset_amplitude_v, vcfg.reset_width_s)
    both = np.concatenate([r0, r2])
    low = float(np.median(both))
    high = low + max(1.0, reset_mads * 1.4826 * float(np.median(np.abs(both - low))))
    usable = (r1 - r0 >= threshold) & (threshold > 0) & (r0 <= high) & (r2 <= high)
    return Screen(usable, r0, r1, r2)
