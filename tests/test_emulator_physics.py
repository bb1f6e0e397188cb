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
    chip = EmulatedChip(Geometry(4, 512, 512), profile="pcm", seed=3)
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
    chip = EmulatedChip(Geometry(1, 32, 64), profile="pcm", seed=4)
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
    chip = EmulatedChip(Geometry(1, 32, 64), profile="pcm", seed=8)
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


# ---------------------------------------------------------------------------------------
# Issue #13 effects: each is behind profile fields, OFF in the legacy presets, ON in
# pcm-realistic. Each test fails when its effect is switched off.
# ---------------------------------------------------------------------------------------
REAL = "pcm-realistic"
SIGMA_PROG = (0.26348, 1.9650, -1.1731)  # aihwkit σ_prog(x) µS, x = G/25 µS


def _healthy(chip: EmulatedChip, n: int | None = None) -> np.ndarray:
    cells = np.flatnonzero(chip.stuck == STUCK_NONE)
    return cells if n is None else cells[:n]


def test_legacy_presets_hold_no_new_state_and_new_preset_fits_budget() -> None:
    for name in ("pcm", "nandakumar-2018", "hermes-14nm"):
        chip = EmulatedChip(Geometry(1, 16, 16), profile=name, seed=0)
        assert chip.state_names == EmulatedChip._STATE
        assert chip.temperature_k() == 300.0
    chip = EmulatedChip(Geometry(1, 16, 16), profile=REAL, seed=0)
    assert chip.state_nbytes / chip.geometry.n_cells <= 64


def _spread_20s_after_verify(profile: "Profile | str", seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    levels = np.linspace(1.5, 22.5, 8)
    chip = EmulatedChip(Geometry(1, 128, 128), profile=profile, seed=seed)
    cells = _healthy(chip, 2000 * levels.size)
    tgt = np.repeat(levels, 2000)[: cells.size]
    res = program_verify(chip, cells, tgt, VerifyConfig(tolerance_us=0.5))
    chip.wait(20.0)
    err = chip.true_conductance(cells) - tgt
    got = np.array([err[(tgt == L) & res.converged].std() for L in levels])
    x = levels / 25.0
    ref = SIGMA_PROG[0] + SIGMA_PROG[1] * x + SIGMA_PROG[2] * x * x
    return got, ref


def test_post_verify_relaxation_matches_aihwkit_sigma_prog() -> None:
    got, ref = _spread_20s_after_verify(REAL)
    # within 15 % (the target) from 4.5 µS up; at 1.5 µS the relaxation was fitted with
    # the old loop (in-loop σ 0.19 µS), the adaptive loop lands wider in its window (0.24 µS): 1.16
    assert np.all(np.abs(got / ref - 1)[1:] < 0.15) and abs(got[0] / ref[0] - 1) < 0.2, got / ref
    # without relaxation the loop alone is 2-3x too precise (what issue #13 reports)
    off = replace(preset(REAL), relax_c0_us=0.0, relax_c1_us=0.0, relax_c2_us=0.0)
    got_off, _ = _spread_20s_after_verify(off)
    assert np.all(got_off / ref < 0.7)


def test_relaxation_unfolds_after_the_verify_read() -> None:
    chip = EmulatedChip(Geometry(1, 32, 64), profile=REAL, seed=3)
    cells = _healthy(chip)
    chip.pulse(cells, "RESET", 2.2, 50e-9)
    chip.pulse(cells, "SET", 0.9, 100e-9)
    g_prog = chip.g_prog[cells].copy()
    early = chip.true_conductance(cells) - g_prog  # ~1 µs after the pulse: a few % of it
    chip.wait(20.0)
    late = chip.true_conductance(cells) - g_prog
    assert late.std() > 0.3 and early.std() < 0.15 * late.std()


def _set_cells(profile: str, seed: int = 2, amp: float = 1.0, n: int = 6) -> tuple[EmulatedChip, np.ndarray]:
    chip = EmulatedChip(Geometry(1, 32, 64), profile=profile, seed=seed)
    cells = _healthy(chip)
    chip.pulse(cells, "RESET", 2.2, 50e-9)
    for _ in range(n):
        chip.pulse(cells, "SET", amp, 100e-9)
    return chip, cells


def test_fast_edge_below_melting_is_a_partial_reset() -> None:
    for profile, lowers in (("pcm", False), (REAL, True)):
        chip, cells = _set_cells(profile)
        before = chip.true_conductance(cells)
        assert before.mean() > 8
        chip.pulse(cells, "RESET", 1.5, 50e-9)  # below v_melt = 1.8 V
        after = chip.true_conductance(cells)
        assert (after.mean() < 0.8 * before.mean()) == lowers
        assert (after.mean() > before.mean()) == (not lowers)


def test_slow_edge_above_melting_recrystallizes_near_saturation() -> None:
    prof = preset(REAL)
    chip = EmulatedChip(Geometry(1, 32, 64), profile=prof, seed=4)
    cells = _healthy(chip)
    chip.pulse(cells, "RESET", 2.2, 50e-9)
    chip.pulse(cells, "SET", 2.0, 1e-6)  # melts, slow trailing edge
    g = chip.g_prog[cells] / chip.g_sat[cells]
    assert 0.9 < g.mean() <= 1.0
    assert abs(g.std() - prof.set_state_sigma * math.sqrt(1 - 2 / math.pi)) < 0.01  # |N(0, σ)| spread


def test_set_steps_can_be_negative_near_saturation() -> None:
    chip, cells = _set_cells(REAL, n=10)
    before = chip.g_prog[cells].copy()
    chip.pulse(cells, "SET", 1.0, 100e-9)
    step = chip.g_prog[cells] - before
    assert np.mean(step < 0) > 0.2  # Nandakumar 2018: ΔG ~ N(μ, σ) with σ ≳ μ late in the train
    chip, cells = _set_cells("pcm", n=10)
    before = chip.g_prog[cells].copy()
    chip.pulse(cells, "SET", 1.0, 100e-9)
    assert np.all(chip.g_prog[cells] >= before)


def test_saturation_is_asymptotic_with_a_set_state_spread() -> None:
    chip, cells = _set_cells(REAL, amp=1.0, n=200)
    ratio = chip.g_prog[cells] / chip.g_sat[cells]
    assert np.mean(ratio >= 1 - 1e-6) < 0.05  # hardly anyone sits on the hard cap
    assert 0.6 < np.median(ratio) < 0.95 and ratio.std() > 0.03  # the SET state keeps a spread
    chip, cells = _set_cells("pcm", amp=1.75, n=200)
    assert np.mean(chip.g_prog[cells] >= chip.g_sat[cells] - 1e-6) > 0.5


def test_set_threshold_spreads_between_devices_and_drifts_after_reset() -> None:
    def moved_fraction(profile: "Profile | str", wait_s: float) -> float:
        chip = EmulatedChip(Geometry(1, 64, 64), profile=profile, seed=6)
        cells = _healthy(chip)
        chip.pulse(cells, "RESET", 2.2, 50e-9)
        chip.wait(wait_s)
        before = chip.g_prog[cells].copy()
        chip.pulse(cells, "SET", 0.5, 100e-9)  # exactly at the nominal threshold
        return float(np.mean(chip.g_prog[cells] != before))

    no_drift = replace(preset(REAL), vth_drift_v_per_decade=0.0)
    assert 0.35 < moved_fraction(no_drift, 0.0) < 0.65  # about half the devices sit below 0.5 V
    assert moved_fraction("pcm", 0.0) == 0.0
    assert moved_fraction(REAL, 1000.0) < 0.01  # 9 decades after RESET: +0.36 V
    chip = EmulatedChip(Geometry(1, 64, 64), profile=REAL, seed=6)
    assert abs(chip.dvth.std() - preset(REAL).vth_spread_v) < 0.005


def test_temperature_conductance_is_thermally_activated_more_at_low_g() -> None:
    prof = replace(preset(REAL), q_s_coeff=1e-12, read_noise_rel=0.0, read_noise_abs_us=1e-9, read_disturb_us=0.0)
    chip = EmulatedChip(Geometry(1, 64, 64), profile=prof, seed=8)
    cells = _healthy(chip)
    lo, hi = cells[::2], cells[1::2]
    program_verify(chip, lo, np.full(lo.size, 2.0))
    program_verify(chip, hi, np.full(hi.size, 15.0))
    chip.wait(20.0)  # relaxation complete: only the temperature changes between the two reads
    g300 = chip.read(cells)
    chip.set_temperature_k(358.15)
    assert chip.temperature_k() == 358.15
    ratio = chip.read(cells) / g300
    x = np.exp(chip._log_x(chip.g_prog[cells]))
    ea = prof.ea_g_amorphous_ev + (prof.ea_g_crystalline_ev - prof.ea_g_amorphous_ev) * np.minimum(x, 1)
    expected = np.exp(-ea / 8.617333262e-5 * (1 / 358.15 - 1 / 300.0))
    assert np.allclose(ratio, expected, rtol=2e-3)
    r_lo, r_hi = ratio[x < 0.1].mean(), ratio[x > 0.5].mean()
    assert r_lo > 4 and r_lo > 2 * r_hi  # low G gains several times more
    with pytest.raises(ValueError, match="kelvin"):
        chip.set_temperature_k(float("nan"))


def test_drift_is_accelerated_by_temperature_arrhenius() -> None:
    prof = preset(REAL)
    chip = EmulatedChip(Geometry(1, 64, 64), profile=prof, seed=9)
    cells = _healthy(chip)
    program_verify(chip, cells, np.full(cells.size, 10.0))
    chip.wait(20.0)
    g20 = chip.true_conductance(cells)
    chip.set_temperature_k(358.15)
    chip.wait(60.0)
    chip.set_temperature_k(300.0)
    baked = chip.true_conductance(cells)
    rate = math.exp(prof.ea_drift_ev / 8.617333262e-5 * (1 / 300.0 - 1 / 358.15))
    twin = EmulatedChip(Geometry(1, 64, 64), profile=prof, seed=9)
    program_verify(twin, cells, np.full(cells.size, 10.0))
    twin.wait(20.0 + 60.0 * rate)  # the same thermal budget at room temperature
    assert np.allclose(baked, twin.true_conductance(cells), rtol=1e-3)
    assert (baked / g20).mean() < 0.75  # a minute at 85 °C ≈ 9 h at 27 °C


def test_base_chip_without_temperature_controller() -> None:
    from pcm_hil.chip import Chip

    class Bare(Chip):
        def now(self): return 0.0
        def _pulse(self, *a): pass
        def _read(self, cells, n_avg): return np.zeros(cells.size, np.float32)
        def _wait(self, s): pass

    bare = Bare(Geometry(1, 2, 2))
    assert bare.temperature_k() is None
    with pytest.raises(NotImplementedError, match="no temperature controller"):
        bare.set_temperature_k(330.0)


def _flicker_reads(profile: "Profile", gaps: tuple[float, ...]) -> tuple[list[np.ndarray], np.ndarray]:
    prof = replace(profile, read_noise_rel=0.0, read_noise_abs_us=1e-9, relax_c0_us=0.0, relax_c1_us=0.0,
                   relax_c2_us=0.0, read_disturb_us=0.0)
    chip = EmulatedChip(Geometry(1, 64, 64), profile=prof, seed=12)
    cells = _healthy(chip)
    program_verify(chip, cells, np.full(cells.size, 12.5))
    chip.wait(20.0)
    out = []
    for gap in gaps:
        chip.wait(gap)
        out.append(chip.read(cells) / chip.true_conductance(cells) - 1)
    return out, chip.g_prog[cells] / prof.g_max_us


def test_one_over_f_noise_decorrelates_with_separation_keeping_the_marginal() -> None:
    prof = preset(REAL)
    near, _ = _flicker_reads(prof, (0.0, 1e-6))
    far, x = _flicker_reads(prof, (86400.0, 86400.0 * 365))
    c_near = np.corrcoef(near[0], near[1])[0, 1]
    c_far = np.corrcoef(far[0], far[1])[0, 1]
    assert c_near > 0.8 and c_far < 0.2
    legacy, _ = _flicker_reads(replace(prof, flicker_stationary=0.0), (86400.0, 86400.0 * 365))
    assert np.corrcoef(legacy[0], legacy[1])[0, 1] > 0.8  # the old random walk: nearly identical
    # the marginal is still the Q_s law at each age
    qs = np.minimum(prof.q_s_coeff / np.maximum(x ** prof.q_s_exp, 1e-3), prof.q_s_max)
    for rel, age in ((far[0], 20.0 + 86400.0), (far[1], 20.0 + 86400.0 * 366)):
        z = rel / (qs * math.sqrt(math.log((age + prof.t_read_s) / (2 * prof.t_read_s))))
        assert abs(z.var() - 1.0) < K * math.sqrt(2.0 / z.size)


def test_read_and_thermal_disturb_raise_g_without_restarting_drift() -> None:
    prof = replace(preset(REAL), read_disturb_us=1e-3, thermal_disturb_us=0.05)
    chip = EmulatedChip(Geometry(1, 8, 64), profile=prof, seed=1)
    row = chip.geometry.index(0, 3, np.arange(64))
    chip.pulse(row, "RESET", 2.2, 50e-9)
    t_prog = chip.t_prog[row].copy()
    g0 = chip.g_prog[row].copy()
    chip.read(row[::2], n_avg=100)
    assert np.allclose(chip.g_prog[row[::2]] - g0[::2], 0.1 * (1 - g0[::2] / prof.g_max_us), rtol=1e-3)
    g1 = chip.g_prog[row].copy()
    chip.pulse(row[10:11], "RESET", 2.2, 50e-9)  # its two word-line neighbours heat up
    dg = chip.g_prog[row] - g1
    assert dg[9] > 0.04 and dg[11] > 0.04 and np.all(dg[[8, 12, 30]] == 0)
    assert np.array_equal(chip.t_prog[row[[9, 11]]], t_prog[[9, 11]])


def test_wear_out_closes_window_and_sticks_cells() -> None:
    prof = replace(preset(REAL), wear_onset_pulses=10.0, wear_window_loss_per_decade=0.1,
                   endurance_pulses=300.0, endurance_sigma_ln=0.3)
    chip = EmulatedChip(Geometry(1, 16, 64), profile=prof, seed=5)
    cells = _healthy(chip)
    for _ in range(100):
        chip.pulse(cells, "SET", 2.0, 1e-6)  # melt-SET: lands near the device's (worn) maximum
    ratio = (chip.g_prog[cells] / chip.g_sat[cells]).mean()
    assert 0.8 < ratio < 0.9  # 1 decade past onset: 10 % of the window lost, minus the SET-state spread
    assert np.mean(chip.stuck[cells] != STUCK_NONE) < 0.01
    for _ in range(400):
        chip.pulse(cells, "RESET", 2.2, 50e-9)
    assert np.mean(chip.stuck[cells] == STUCK_SET) > 0.95  # past 300 pulses (σ_ln 0.3): worn out


def test_faults_cluster_along_word_and_bit_lines() -> None:
    prof = replace(preset(REAL), stuck_wordline_fraction=0.02, stuck_bitline_fraction=0.02)
    chip = EmulatedChip(Geometry(2, 256, 256), profile=prof, seed=2)
    st = (chip.stuck == STUCK_RESET).reshape(chip.geometry.shape)
    full_rows, full_cols = st.all(axis=2).sum(), st.all(axis=1).sum()
    assert 2 <= full_rows <= 25 and 2 <= full_cols <= 25  # 2 % of 512 lines each, Poisson
    base = EmulatedChip(Geometry(2, 256, 256), profile=replace(prof, stuck_wordline_fraction=0.0,
                                                                stuck_bitline_fraction=0.0), seed=2)
    assert not (base.stuck == STUCK_RESET).reshape(base.geometry.shape).all(axis=2).any()


def test_random_profile_is_plausible_and_seeded() -> None:
    from pcm_hil.emulator import random_profile

    a, b = random_profile(1), random_profile(1)
    assert a == b and a != random_profile(2)
    assert 10 <= a.g_max_us <= 40 and 1e6 <= a.endurance_pulses <= 1e9
    chip = EmulatedChip(Geometry(1, 8, 8), profile=a, seed=0)
    chip.pulse(np.arange(64), "RESET", 2.2, 50e-9)
    assert np.all(np.isfinite(chip.read(np.arange(64))))


def test_realistic_state_survives_save_and_load(tmp_path) -> None:
    chip = EmulatedChip(Geometry(1, 8, 8), profile=REAL, seed=0)
    cells = np.arange(64)
    chip.pulse(cells, "RESET", 2.2, 50e-9)
    chip.pulse(cells, "SET", 0.9, 100e-9)
    chip.set_temperature_k(350.0)
    chip.wait(10.0)
    chip.save_state(tmp_path / "c.npz")
    back = EmulatedChip.load_state(tmp_path / "c.npz")
    assert back.temperature_k() == 350.0
    assert np.array_equal(back.true_conductance(cells), chip.true_conductance(cells))
    assert np.array_equal(back.read(cells), chip.read(cells))
