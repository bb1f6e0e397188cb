"""The stuck-cell screen against the emulator's ground truth, and the demo's spares."""
from __future__ import annotations

import numpy as np
import pytest

from pcm_hil.calibrate import learned_settings
from pcm_hil.chip import Geometry
from pcm_hil.demo import DemoConfig, DemoSettings, run_demo
from pcm_hil.emulator import EmulatedChip
from pcm_hil.screening import screen

GEOM = Geometry(1, 64, 256)  # pcm-harsh: ~1.5 % stuck cells, open word and bit lines included


def _chip_and_settings():
    chip = EmulatedChip(GEOM, profile="pcm-harsh", seed=4)
    return chip, learned_settings(chip, np.arange(2000), 0.5)


def test_the_screen_finds_the_stuck_cells_and_keeps_the_healthy_ones() -> None:
    chip, learned = _chip_and_settings()
    cells = np.arange(2000, 12_000)
    sc = screen(chip, cells, learned.verify)
    stuck = chip.stuck[cells] != 0  # emulator ground truth
    assert stuck.sum() > 50
    # every stuck cell ignores both pulse kinds; 3 of ~150 missed would already be a defect
    assert np.mean(~sc.usable[stuck]) >= 0.98
    # a healthy cell that did not nucleate in 6 SET pulses is rare: < 0.5 % of 10,000 (seen: 0.01–0.05 %)
    assert np.mean(~sc.usable[~stuck]) < 0.005
    # healthy cells are left RESET, ready for program-and-verify
    assert np.median(chip.read(cells[sc.usable])) < 1.0


def test_the_demo_programs_screened_cells_and_uses_spares() -> None:
    chip, learned = _chip_and_settings()
    settings = DemoSettings(learned.verify, learned.g_sat_us, learned.source)
    cfg = DemoConfig(cells=4000, levels=4, read_after_s=(20.0,))
    candidates = np.arange(2000, 2000 + cfg.cells_claimed())
    r = run_demo(chip, cfg, cells=candidates, settings=settings)
    assert r["cells"] == 4000 and r["screen"]["cells"] == 4200 and r["screen"]["stuck"] > 20
    # without the screen the same protocol programs stuck cells, and fails them
    plain = run_demo(chip, DemoConfig(cells=4000, levels=4, read_after_s=(20.0,), spare_fraction=0.0),
                     cells=np.arange(8000, 12_000), settings=settings)
    assert plain["screen"] is None
    assert r["summary"]["yield"] >= 0.99 > plain["summary"]["yield"]


def test_bad_screen_settings_are_refused_before_any_pulse() -> None:
    chip, learned = _chip_and_settings()
    before = chip.true_conductance()
    with pytest.raises(ValueError, match=r"move_fraction must be in \(0, 1\)"):
        screen(chip, np.arange(10), learned.verify, move_fraction=1.5)
    with pytest.raises(ValueError, match=r"spare_fraction must be in \[0, 1\]"):
        DemoConfig(spare_fraction=-0.1)
    assert np.array_equal(chip.true_conductance(), before)
