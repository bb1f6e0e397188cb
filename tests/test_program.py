"""Program-and-verify on the emulated chip: convergence, bounds and bad input."""
from __future__ import annotations

import numpy as np
import pytest

from pcm_hil.chip import Geometry, SoftLimits
from pcm_hil.emulator import EmulatedChip
from pcm_hil.emulator.chip import STUCK_NONE
from pcm_hil.program import VerifyConfig, program_verify


def test_converges_within_tolerance_and_bounds() -> None:
    chip = EmulatedChip(Geometry(1, 64, 64), seed=12)
    n = chip.geometry.n_cells
    targets = np.linspace(1, 18, 8)[np.arange(n) % 8]
    cfg = VerifyConfig(tolerance_us=0.5, max_pulses=25, max_resets=3)
    res = program_verify(chip, np.arange(n), targets, cfg)
    healthy = chip.stuck == STUCK_NONE
    assert res.converged[healthy].mean() > 0.9
    # converged cells were verified inside the window (verify read, averaged)
    assert np.all(np.abs(res.error_us[res.converged]) <= 0.5 + 1e-6)
    assert res.pulses.max() <= 25 and res.resets.max() <= 3
    # stuck-at-SET cells cannot reach low targets: they fail, bounded, and are reported
    stuck_set = (chip.stuck == 2) & (targets < 5)
    assert not res.converged[stuck_set].any()
    s = res.summary()
    assert s["pulses_total"] == res.pulses.sum() and 0 < s["yield"] < 1


def test_tighter_tolerance_costs_more_pulses() -> None:
    means = []
    for tol in (1.0, 0.25):
        chip = EmulatedChip(Geometry(1, 64, 64), seed=13)
        res = program_verify(chip, np.arange(4096), np.full(4096, 10.0), tolerance_us=tol, max_pulses=40)
        means.append(res.pulses[res.converged].mean())
    assert means[1] > means[0]


def test_per_cell_caps_are_respected() -> None:
    chip = EmulatedChip(Geometry(1, 16, 16), seed=1)
    caps = np.where(np.arange(256) % 2 == 0, 1, 30)
    res = program_verify(chip, np.arange(256), np.full(256, 15.0), max_pulses=caps)
    assert np.all(res.pulses <= caps)


@pytest.mark.parametrize("targets,kw,match", [
    (np.full(4, np.nan), {}, "finite"),
    (np.full(3, 5.0), {}, "one value per cell"),
    (np.full(4, -1.0), {}, ">= 0"),
    (np.full(4, 5.0), {"tolerance_us": 0.0}, "tolerance_us"),
    (np.full(4, 5.0), {"max_pulses": 0}, "max_pulses"),
])
def test_bad_input_sends_nothing(targets, kw, match) -> None:
    chip = EmulatedChip(Geometry(1, 8, 8), seed=1)
    t0 = chip.now()
    before = chip.true_conductance()
    with pytest.raises(ValueError, match=match):
        program_verify(chip, np.arange(4), targets, **kw)
    assert chip.now() == t0 and np.array_equal(chip.true_conductance(), before)


def test_config_outside_soft_limits_sends_nothing() -> None:
    chip = EmulatedChip(Geometry(1, 8, 8), seed=1, limits=SoftLimits(max_amplitude_v=2.0))
    before = chip.true_conductance()
    with pytest.raises(ValueError, match="max_amplitude_v"):
        program_verify(chip, np.arange(4), np.full(4, 5.0), VerifyConfig(reset_amplitude_v=2.2))
    assert np.array_equal(chip.true_conductance(), before)
    with pytest.raises(ValueError, match="tolerance_us"):
        VerifyConfig(tolerance_us=float("nan"))


def test_amplitude_lowered_by_overshoots_never_goes_below_zero() -> None:
    """Each overshoot lowers a cell's SET amplitude; many of them must not ask the chip for a
    negative pulse (it refused one, and the whole programming with it)."""
    chip = EmulatedChip(Geometry(1, 16, 64), seed=3)
    n = chip.geometry.n_cells
    # an overshoot lowers the offset by 0.5 V: below 0 V after the first two
    cfg = VerifyConfig(tolerance_us=0.05, max_pulses=30, max_resets=8, threshold_step_v=0.1, overshoot_step=5.0)
    res = program_verify(chip, np.arange(n), np.full(n, 1.5), cfg)
    assert res.resets.max() >= 3  # the cells did overshoot, and were pulsed again after it
    assert np.all(cfg.set_amplitude(np.array([0.0, 0.5, 9.0]), -5.0) >= 0.0)
