"""Statistical checks of the emulated chip's physics, with fixed seeds.

Tolerances come from the sample size: k standard errors (k = 5 unless stated), plus a
stated allowance where the estimator has a known small bias.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from pcm_hil.chip import Geometry
from pcm_hil.emulator import EmulatedChip, Profile, preset
from pcm_hil.emulator.chip import STUCK_NONE, STUCK_RANDOM, STUCK_RESET, STUCK_SET
from pcm_hil.program import VerifyConfig, program_verify

K = 5.0  # standard errors allowed


def _programmed(chip: EmulatedChip, n: int, target: float, tol: float = 0.5) -> np.ndarray:
    """Cells programmed to ``target`` (µS), healthy and converged."""
    cells = np.flatnonzero(chip.stuck == STUCK_NONE)[:n]
    res = program_verify(chip, cells, np.full(cells.size, target), VerifyConfig(tolerance_us=tol, max_pulses=40))
    return cells[res.converged]


def test_drift_exponent_recovered_from_log_log_fit() -> None:
    prof = preset("pcm")
    chip = EmulatedChip(Geometry(1, 64, 64), seed=21)
    target = 12.5
    cells = _programmed(chip, 4096, target)
    assert cells.size > 3000
    t_end = chip.now()
    ages = 20.0 * np.array([1, 10, 100, 1000, 4320])  # 20 s ... 1 day
    logs = []
    for age in ages:
        chip.wait(t_end + age - chip.now())
        logs.append(np.log(chip.read(cells, n_avg=64)))
    x = np.log(ages / ages[0])
    y = np.array(logs)  # (times, cells)
    slope = ((x - x.mean())[:, None] * (y - y.mean(0))).sum(0) / ((x - x.mean()) ** 2).sum()
    nu_hat = -slope
    # the true programmed levels spread within ±tol of the target: the expected mean ν is
    # the profile's μ_ν averaged over that spread, and |N(μ, σ)| ≈ N(μ, σ) since μ ≫ σ here
    g_true = chip.g_prog[cells]
    mu = prof.nu_mean(g_true / prof.g_max_us)
    se = nu_hat.std(ddof=1) / math.sqrt(cells.size)
    assert abs(nu_hat.mean() - mu.mean()) < K * se + 0.002  # 0.002: bias of ln(read) from 1/f growth
    # the spread of fitted ν contains the true σ_ν (plus fit noise): it cannot be smaller
    assert nu_hat.std() > 0.8 * float(prof.nu_std(target / prof.g_max_us))


def _white_only(profile: Profile) -> Profile:
    return replace(profile, q_s_coeff=1e-12)


@pytest.mark.parametrize("n_avg", [1, 16])
def test_read_noise_scales_with_g_and_averaging(n_avg: int) -> None:
    prof = _white_only(preset("pcm"))
    chip = EmulatedChip(Geometry(1, 32, 64), profile=prof, seed=5)
    for target in (2.0, 10.0, 20.0):
        cells = _programmed(chip, 256, target)
        g = chip.true_conductance(cells)
        reads = np.array([chip.read(cells, n_avg=n_avg) for _ in range(200)])  # (reads, cells)
        resid = reads - g
        sigma_expected = prof.read_sigma(g) / math.sqrt(n_avg)
        z = resid / sigma_expected
        # unit variance within sampling error: var of a sample variance ≈ 2/N
        n = z.size
        assert abs(z.var() - 1.0) < K * math.sqrt(2.0 / n)
        assert abs(z.mean()) < K / math.sqrt(n)


def test_one_over_f_noise_grows_with_age() -> None:
    prof = replace(preset("pcm"), read_noise_rel=0.0, read_noise_abs_us=1e-9)
    chip = EmulatedChip(Geometry(1, 64, 64), profile=prof, seed=9)
    cells = _programmed(chip, 4096, 12.5)
    t_end = chip.now()
    spreads = []
    for age in (20.0, 3.15e7):
        chip.wait(t_end + age - chip.now())
        rel = chip.read(cells) / chip.true_conductance(cells) - 1.0
        x = chip.g_prog[cells] / prof.g_max_us
        qs = np.minimum(prof.q_s_coeff / np.maximum(x ** prof.q_s_exp, 1e-3), prof.q_s_max)
        expected = qs * math.sqrt(math.log((age + prof.t_read_s) / (2 * prof.t_read_s)))
        z = rel / expected
        assert abs(z.var() - 1.0) < K * math.sqrt(2.0 / z.size)
        spreads.append(rel.std())
    assert spreads[1] > 1.1 * spreads[0]  # ≈3.7 % → ≈4.4 %: slow growth, as aihwkit's form says


def test_stuck_cell_fractions_match_profile() -> None:
    prof = preset("pcm")
    chip = EmulatedChip(Geometry(4, 512, 512), seed=3)
    n = chip.geometry.n_cells
    for code, frac in ((STUCK_RESET, prof.stuck_reset_fraction), (STUCK_SET, prof.stuck_set_fraction),
                       (STUCK_RANDOM, prof.stuck_random_fraction)):
        got = np.mean(chip.stuck == code)
        assert abs(got - frac) < K * math.sqrt(frac * (1 - frac) / n)
    # stuck cells ignore pulses
    stuck = np.flatnonzero(chip.stuck != STUCK_NONE)[:500]
    before = chip.true_conductance(stuck)
    chip.pulse(stuck, "RESET", 2.2, 50e-9)
    chip.pulse(stuck, "SET", 1.5, 100e-9)
    assert np.array_equal(chip.true_conductance(stuck), before)


def test_saturation_at_per_device_maximum() -> None:
    chip = EmulatedChip(Geometry(1, 32, 64), seed=4)
    cells = np.flatnonzero(chip.stuck == STUCK_NONE)
    chip.pulse(cells, "RESET", 2.2, 50e-9)
    for _ in range(200):
        chip.pulse(cells, "SET", 1.75, 100e-9)
    g = chip.true_conductance(cells)
    assert np.all(g <= chip.g_sat[cells] + 1e-6)
    assert np.median(g / chip.g_sat[cells]) > 0.9
    # device-to-device saturation spread ~10 % of g_max
    assert 0.07 < chip.g_sat[cells].std() / 25.0 < 0.13


def test_set_only_raises_and_reset_drops_to_floor() -> None:
    prof = preset("pcm")
    chip = EmulatedChip(Geometry(1, 32, 64), seed=8)
    cells = np.flatnonzero(chip.stuck == STUCK_NONE)
    rng = np.random.default_rng(0)
    for _ in range(30):
        before = chip.true_conductance(cells)
        chip.pulse(cells, "SET", rng.uniform(0.3, 1.75, cells.size), 100e-9)
        assert np.all(chip.true_conductance(cells) >= before)
    chip.pulse(cells, "RESET", 2.2, 50e-9)
    g = chip.true_conductance(cells)
    assert abs(g.mean() - prof.g_floor_us) < K * prof.g_floor_sigma_us / math.sqrt(g.size) + 1e-4
    # below the threshold a pulse does nothing at all
    chip.pulse(cells, "SET", 0.4, 100e-9)
    assert np.array_equal(chip.true_conductance(cells), g)


def test_step_depends_on_amplitude_and_width() -> None:
    def mean_step(amp: float, width: float) -> float:
        chip = EmulatedChip(Geometry(1, 32, 64), seed=2)
        cells = np.flatnonzero(chip.stuck == STUCK_NONE)
        chip.pulse(cells, "RESET", 2.2, 50e-9)
        g0 = chip.true_conductance(cells)
        chip.pulse(cells, "SET", amp, width)
        return float((chip.true_conductance(cells) - g0).mean())

    assert mean_step(0.6, 100e-9) < mean_step(0.8, 100e-9) < mean_step(1.0, 100e-9)
    assert mean_step(0.8, 50e-9) < mean_step(0.8, 200e-9)


def test_deterministic_per_seed_and_seeds_differ() -> None:
    def run(seed: int) -> np.ndarray:
        chip = EmulatedChip(Geometry(1, 16, 16), seed=seed)
        cells = np.arange(chip.geometry.n_cells)
        chip.pulse(cells, "RESET", 2.2, 50e-9)
        chip.pulse(cells, "SET", 0.9, 100e-9)
        chip.wait(100)
        return chip.read(cells, n_avg=2)

    assert np.array_equal(run(1), run(1))
    assert not np.allclose(run(1), run(2))
    a, b = EmulatedChip(Geometry(1, 64, 64), seed=1), EmulatedChip(Geometry(1, 64, 64), seed=2)
    assert not np.array_equal(a.eff, b.eff) and not np.array_equal(a.stuck, b.stuck)


def test_state_memory_per_cell() -> None:
    chip = EmulatedChip(Geometry(1, 100, 100), seed=0)
    assert chip.state_nbytes / chip.geometry.n_cells <= 64


def test_profiles_load_save_and_refuse_bad_files(tmp_path) -> None:
    p = preset("hermes-14nm")
    path = tmp_path / "p.json"
    p.save(path)
    assert Profile.load(path) == p
    toml = tmp_path / "mine.toml"
    toml.write_text('base = "nandakumar-2018"\nname = "mine"\nread_noise_rel = 0.05\n')
    mine = Profile.load(toml)
    assert mine.g_max_us == 12.0 and mine.read_noise_rel == 0.05
    chip = EmulatedChip(Geometry(1, 8, 8), profile=toml, seed=0)
    assert chip.profile.name == "mine"
    bad = tmp_path / "bad.toml"
    bad.write_text("g_max_us = -3\n")
    with pytest.raises(ValueError, match="g_max_us must be > 0"):
        Profile.load(bad)
    bad.write_text("no_such_field = 1\n")
    with pytest.raises(ValueError, match="unknown profile field"):
        Profile.load(bad)
    bad.write_text("g_max_us = [\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        Profile.load(bad)
    with pytest.raises(ValueError, match="unknown profile"):
        preset("nope")
    assert preset("pcm") != preset("nandakumar-2018")
