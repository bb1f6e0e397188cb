"""The model-storage job: codes, allocation, cost accounting, bad input, end to end."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from pcm_hil.chip import Geometry
from pcm_hil.coding import CODES, CodeConfig, decode, encode
from pcm_hil.datasets import cifar10
from pcm_hil.emulator import EmulatedChip
from pcm_hil.models import load_model, load_state_dict
from pcm_hil.run_store import RunStore
from pcm_hil.store_job import StoreConfig, allocation, load_run, run_store_job
from pcm_hil.store_job.digital_medium import MediumConfig, bch_for, bch_parity_bits, choose, run_code
from pcm_hil.store_job.inputs import NetworkConfig, load_inputs
from pcm_hil.store_job.side_info import (MASK_FORMAT_BITS, PROBABILITY_BITS, adaptive_bits, coded_bits,
                                         line_probabilities, mask_bits)

GEOM = Geometry(1, 128, 128)


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("pruned", [False, True])
def test_codes_round_trip_without_noise(code: str, pruned: bool) -> None:
    rng = np.random.default_rng(1)
    w = rng.laplace(0, 0.05, (40, 30))
    mask = np.abs(w) > 0.02 if pruned else None
    cfg = CodeConfig(code, percentile=100.0, levels=64)
    replicas = rng.integers(1, 4, int(mask.sum()) if pruned else w.size) if cfg.replicable else None
    enc = encode("w", w, cfg, 20.0, mask, replicas)
    back = decode(enc, enc.targets_us, cfg)
    kept = w if mask is None else w * mask
    tol = 0.5 * (enc.scale * 20.0 / 63) if code == "multilevel" else 1e-12
    assert np.max(np.abs(back - kept)) <= tol + 1e-12
    assert enc.targets_us.min() >= 0 and enc.targets_us.max() <= 20.0 + 1e-9
    if cfg.replicable:
        assert enc.cells == replicas.sum() * cfg.cells_per_replica


def test_a_pruned_tensor_uses_the_window_from_its_pruning_threshold() -> None:
    """With a digital sign, kept magnitudes start at the pruning threshold: the smallest
    kept |w| sits at G = 0, so the window's resolution is spent on the kept range only."""
    rng = np.random.default_rng(2)
    w = rng.laplace(0, 0.05, (40, 30))
    mask = np.abs(w) > 0.04
    on, off = (encode("w", w, CodeConfig(percentile=100.0, from_threshold=t), 20.0, mask) for t in (True, False))
    assert on.floor == pytest.approx(np.abs(w[mask]).min()) and off.floor == 0.0
    assert on.targets_us.min() == pytest.approx(0.0, abs=1e-12) and off.targets_us.min() > 1.0
    assert on.scale < off.scale  # finer: less weight per µS of read error
    for enc, cfg in ((on, CodeConfig(percentile=100.0)), (off, CodeConfig(percentile=100.0, from_threshold=False))):
        assert np.allclose(decode(enc, enc.targets_us, cfg), w * mask, atol=1e-12)
    dense = encode("w", w, CodeConfig(percentile=100.0), 20.0, None)  # nothing pruned: no threshold
    assert dense.floor == 0.0


def test_replicas_per_output_channel_cost_one_count_per_channel() -> None:
    """Replicas chosen per output channel are constant within each channel, respect the cell
    budget, and their map costs a count per channel instead of one per kept weight."""
    from pcm_hil.store_job.side_info import replica_map_bits

    rng = np.random.default_rng(4)
    w = rng.laplace(0, 0.05, (64, 200))
    mask = np.abs(w) > 0.03
    rows = np.nonzero(mask)[0]
    weight = rng.lognormal(0, 1, rows.size) * rng.lognormal(0, 2, 64)[rows]  # channels differ in importance
    r = allocation.replicas(weight, np.ones(rows.size), 1, 1.5 * rows.size, 8, groups=rows)
    assert r.sum() <= 1.5 * rows.size and r.min() >= 1 and len(set(r)) > 1
    assert all(len(set(r[rows == c])) == 1 for c in np.unique(rows))
    per_channel = replica_map_bits(encode("w", w, CodeConfig(), 20.0, mask, r))
    per_weight = replica_map_bits(encode("w", w, CodeConfig(), 20.0, mask, rng.permutation(r)))
    assert per_channel <= 1 + PROBABILITY_BITS * 8 + 64 * 3 < per_weight


def test_unknown_code_and_bad_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown code 'nope'"):
        CodeConfig("nope")
    with pytest.raises(ValueError, match="NaN or infinite"):
        encode("w", np.array([1.0, np.nan]), CodeConfig(), 20.0)


def test_replicas_follow_importance_and_respect_the_cell_budget() -> None:
    rng = np.random.default_rng(0)
    weight = rng.lognormal(0, 2, 5000)
    var = np.full(5000, 1.0)
    r = allocation.replicas(weight, var, 1, 1.5 * 5000, r_max=8)
    assert r.sum() <= 7500 and r.min() >= 1
    top, bottom = weight > np.quantile(weight, 0.9), weight < np.quantile(weight, 0.1)
    assert r[top].mean() > 2 * r[bottom].mean()
    with pytest.raises(ValueError, match="below one replica per weight"):
        allocation.replicas(weight, var, 2, 5000)


def test_allocation_respects_the_budget_and_favours_important_cells(noise) -> None:
    rng = np.random.default_rng(3)
    targets = rng.uniform(1, 18, 4000)
    weight = rng.lognormal(0, 2, 4000)
    table = allocation.tables(noise, targets, allocation.options(noise))
    need = table.minimum_pulses()
    budget = 1.3 * need
    plan = allocation.allocate(weight, table, budget)
    assert plan.pulses <= budget
    top, bottom = weight > np.quantile(weight, 0.9), weight < np.quantile(weight, 0.1)
    assert plan.tolerance_us[top].mean() < plan.tolerance_us[bottom].mean()
    assert plan.expected_sq_error[top].mean() < plan.expected_sq_error[bottom].mean()
    uni = allocation.uniform(weight, table, budget)
    assert len(set(uni.choice)) == 1 and uni.pulses <= budget
    assert (weight * plan.expected_sq_error).sum() <= (weight * uni.expected_sq_error).sum()
    with pytest.raises(ValueError, match="too small"):
        allocation.allocate(weight, table, 0.5 * need)
    # a target loss increase instead of a budget: the cheapest plan that meets it
    full = 0.5 * float((weight * plan.expected_sq_error).sum())
    by_loss = allocation.allocate_for_loss(weight, table, full)
    assert 0.5 * float((weight * by_loss.expected_sq_error).sum()) <= full
    assert by_loss.pulses <= plan.pulses * 1.01
    with pytest.raises(ValueError, match="out of reach"):
        allocation.allocate_for_loss(weight, table, 1e-12)


def test_reference_cells_remove_a_temperature_change_between_programming_and_reading(tmp_path, noise) -> None:
    """Programmed at room temperature, read a day later 40 K hotter: every read is scaled by
    a thermally activated factor that depends on the level (larger at low G); the reference
    cells see the same factor, so the per-level gains fitted on them remove it (the store
    fixtures' profile with pcm-realistic's activation energies)."""
    from dataclasses import replace

    from pcm_hil.emulator.profile import preset

    real = preset("pcm-realistic")
    hot_physics = replace(preset("pcm"), **{k: getattr(real, k) for k in
                                             ("ea_g_amorphous_ev", "ea_g_crystalline_ev", "ea_drift_ev")})
    _, store, opts = _store(tmp_path, noise)
    chip = EmulatedChip(GEOM, profile=hot_physics, seed=2)
    r = run_store_job(chip, noise, store, StoreConfig.from_options(**{**opts, "programmings": 1})).record
    cool = load_run(chip, store, r["run_id"])
    chip.set_temperature_k(chip.temperature_k() + 40.0)
    hot = load_run(chip, store, r["run_id"])
    # measured: reads 1.2-3.6x higher (low G most); decoded 95.47 % cool, 94.46 % hot (4 of the 397
    # test digits), against 96.22 / 93.70 % uncompensated: the compensation removes most of the change
    assert abs(hot["accuracy_loaded"] - cool["accuracy_loaded"]) <= 6 / 397
    drop = cool["accuracy_loaded"] - hot["accuracy_loaded"]
    assert drop < cool["accuracy_loaded_uncompensated"] - hot["accuracy_loaded_uncompensated"] - 3 / 397
    assert hot["accuracy_loaded_uncompensated"] < hot["accuracy_loaded"]
    shrink = np.array(hot["drift_compensation"]["alpha"]) / np.array(cool["drift_compensation"]["alpha"])
    assert np.all(shrink < 0.9) and shrink[0] < shrink[-1] - 0.3  # hotter cells conduct more, low G most


def test_default_plan_is_set_by_predicted_loss_not_by_pulses(noise) -> None:
    """Without a budget the weight cells get the fewest pulses whose predicted loss is within
    the margin of the least reachable: a cheaper loop (every option's pulses halved) spends
    fewer pulses for the same loss, where a budget tied to one option's pulses would have
    bought a worse store."""
    from pcm_hil.store_job.allocation import AllocationConfig, Table, least_loss, plan_cells

    rng = np.random.default_rng(5)
    targets = rng.uniform(1, 18, 3000)
    weight = rng.lognormal(0, 2, 3000)
    ref = np.zeros(3000, bool)
    table = allocation.tables(noise, targets, allocation.options(noise))
    loss = lambda p: 0.5 * float((weight * p.expected_sq_error).sum())  # noqa: E731
    for alloc in ("importance", "uniform"):
        least = least_loss(weight, table, alloc)
        plan = plan_cells(noise, targets, weight, ref, AllocationConfig(allocation=alloc, loss_margin=0.05))
        assert least * (1 - 1e-9) <= loss(plan) <= 1.05 * least
        loose = plan_cells(noise, targets, weight, ref, AllocationConfig(allocation=alloc, loss_margin=0.5))
        assert loose.pulses <= plan.pulses and loss(loose) <= 1.5 * least
        assert loose.pulses < plan.pulses or alloc == "uniform"  # few shared options: the cheaper may be too lossy
    target = 1.05 * least_loss(weight, table)
    full = allocation.allocate_for_loss(weight, table, target)
    cheap = allocation.allocate_for_loss(weight, Table(table.options, table.sq_error, table.pulses / 2, table.aim_us),
                                         target)
    assert cheap.pulses == pytest.approx(full.pulses / 2, rel=0.02) and loss(cheap) <= target
    with pytest.raises(ValueError, match="loss_margin must be in"):
        AllocationConfig(loss_margin=0.0)
    with pytest.raises(ValueError, match="not both"):
        AllocationConfig(pulse_budget=1e5, target_loss=0.1)


def test_compensated_aim_removes_the_bias_of_a_loose_window(noise) -> None:
    """The loop stops on entering the window from below, so verified cells sit about tol/2
    low; aiming at target − offset puts their mean back on the target (t0 after programming)."""
    from pcm_hil.program import VerifyConfig, program_verify

    chip = EmulatedChip(GEOM, profile="pcm", seed=5)
    n, tol = 2000, 4.0
    targets = np.random.default_rng(6).uniform(4, 15, n)
    means = {}
    for k, aim in enumerate((targets, noise.aim(targets, tol))):
        cells = np.arange(k * n, (k + 1) * n)
        res = program_verify(chip, cells, aim, VerifyConfig.measured_with(noise), tolerance_us=tol, max_pulses=40)
        chip.wait(noise.t0_s_)
        err = chip.read(cells[res.converged], n_avg=noise.n_avg_) - targets[res.converged]
        means[k] = float(err.mean())
        se = float(err.std() / np.sqrt(err.size))
    # offsets are fitted from ~170 cells per (level, tolerance): each carries ~0.15 µS of error
    assert means[0] < -1.0
    assert abs(means[1]) < 3 * np.hypot(se, 0.15 / np.sqrt(2))
    table = allocation.tables(noise, targets, [(tol, 40)])
    assert np.allclose(table.aim_us[:, 0], noise.aim(targets, tol))
    # aiming at target − offset removes the offset² part of the expected squared error (at least half of it)
    assert noise.expected_sq_error(targets, tol, 40).mean() - table.sq_error[:, 0].mean() > \
        0.5 * np.mean(noise.offset(targets, tol) ** 2)


def test_side_information_is_counted_at_the_coder_output() -> None:
    rng = np.random.default_rng(0)
    keep = rng.random(20_000) < 0.25
    bits = coded_bits(keep)
    f = keep.mean()
    entropy = -(f * np.log2(f) + (1 - f) * np.log2(1 - f)) * keep.size  # of the stream's own frequencies
    # a range coder lands within 1 % of the entropy (plus its two stored probabilities), and decodes
    assert entropy <= bits - 2 * PROBABILITY_BITS <= 1.01 * entropy
    assert coded_bits(np.zeros(500, int)) == PROBABILITY_BITS  # one repeated value: only the value
    replicas = rng.integers(0, 8, 10_000)
    assert coded_bits(replicas) >= 3 * 10_000  # uniform over 8 values: no fewer than 3 bits each


def test_bch_parity_is_the_generator_degree() -> None:
    # textbook codes: BCH(15,7) t=2, BCH(15,5) t=3, BCH(31,16) t=3, BCH(63,45) t=3; bchlib's 13·64 at GF(2^13)
    assert [bch_parity_bits(4, 2), bch_parity_bits(4, 3), bch_parity_bits(5, 3), bch_parity_bits(6, 3)] == [8, 10, 15, 18]
    assert bch_parity_bits(13, 64) == 832 and bch_parity_bits(13, 0) == 0
    assert bch_parity_bits(13, 347) == 3900 < 13 * 347  # large t: cosets overlap, parity below m·t


def test_mask_code_adapts_per_line_and_decodes() -> None:
    """A mask whose rows differ in density (dead inputs, busy outputs) costs fewer bits coded
    row by row than as one stream; the code is a real one: a decoder recomputing the
    probabilities bit by bit gets the mask back."""
    import constriction

    rng = np.random.default_rng(5)
    density = rng.choice([0.02, 0.2, 0.6], size=40)
    mask = rng.random((40, 50)) < density[:, None]
    stream = coded_bits(mask.ravel())
    rows = adaptive_bits(mask)
    assert rows < 0.9 * stream
    assert mask_bits(mask) == MASK_FORMAT_BITS + min(stream, rows, adaptive_bits(mask.T))
    assert mask_bits(mask.T) == MASK_FORMAT_BITS + min(coded_bits(mask.ravel()), rows, adaptive_bits(mask.T))
    # decode: the probability of each bit depends only on the bits of its row before it
    coder = constriction.stream.queue.RangeEncoder()
    family = constriction.stream.model.Bernoulli(perfect=False)
    coder.encode(mask.ravel().astype(np.int32), family, line_probabilities(mask).ravel())
    decoder = constriction.stream.queue.RangeDecoder(coder.get_compressed())
    got = np.zeros_like(mask)
    for i in range(mask.shape[0]):
        for j in range(mask.shape[1]):
            p = line_probabilities(got[i:i + 1, :j + 1])[0, j]  # from what is decoded so far
            got[i, j] = decoder.decode(family, np.array([p]))[0]
    assert np.array_equal(got, mask)
    # a mask with no structure: the one stream (within the format bits)
    flat = rng.random((40, 50)) < 0.25
    assert mask_bits(flat) <= coded_bits(flat.ravel()) + MASK_FORMAT_BITS


def test_digital_medium_sizes_a_code_from_the_measured_error_rate() -> None:
    cfg = MediumConfig(cells_per_density=4096)
    k, n, t, m = bch_for(1e-3, cfg)
    assert t > 0 and n == k + bch_parity_bits(m, t) <= 2 ** m - 1 and k in cfg.block_bits
    # the code reaches the target at that rate and one less correction would not
    assert stats.binom.sf(t, n, 1e-3) <= cfg.target_block_failure
    assert stats.binom.sf(t - 1, k + bch_parity_bits(m, t - 1), 1e-3) > cfg.target_block_failure
    # no other block size or field has a higher rate
    for kk in cfg.block_bits:
        for mm in (13, 14, 15):
            for tt in range(300):
                nn = kk + bch_parity_bits(mm, tt)
                if nn <= 2 ** mm - 1 and stats.binom.sf(tt, nn, 1e-3) <= cfg.target_block_failure:
                    assert k / n >= kk / nn
                    break
    # 2.4 % (a 2-bit/cell medium after a day): beyond bchlib's t = 64, still a code of rate > 1/2
    k2, n2, t2, _ = bch_for(0.024, cfg)
    assert t2 > 64 and k2 / n2 > 0.5
    assert bch_for(0.2, cfg) is None  # no BCH code up to GF(2^15) corrects that
    rows = [{"bits_per_cell": 1, "bits": 4096, "bit_errors": 0, "raw_ber": 0.0, "raw_ber_upper95": 7.3e-4,
             "_errors": np.zeros(4096, np.uint8)},
            {"bits_per_cell": 2, "bits": 8192, "bit_errors": 8, "raw_ber": 9.8e-4, "raw_ber_upper95": 1.8e-3,
             "_errors": (rng_errors := (np.random.default_rng(1).random(8192) < 9.8e-4)).astype(np.uint8)},
            {"bits_per_cell": 3, "bits": 12288, "bit_errors": 3000, "raw_ber": 0.24, "raw_ber_upper95": 0.25,
             "_errors": np.zeros(12288, np.uint8)}]
    medium = choose(rows, cfg)
    per_bit = {r["bits_per_cell"]: r["cells_per_bit"] for r in medium.densities if r["usable"]}
    assert medium.cells_per_bit == min(per_bit.values()) and medium.bits_per_cell == 2  # the cheapest usable
    assert [r["usable"] for r in medium.densities] == [True, True, False]  # 25 % needs more than GF(2^15) holds
    assert medium.blocks_failed == 0 and medium.target_met  # and its code corrects what was measured
    long = MediumConfig(cells_per_density=4096, block_bits=(512,))
    check = choose(rows, long)  # blocks short enough to run on the 8,192 measured bits, errors and all
    assert check.blocks_decoded >= 10 and check.blocks_failed == 0 and rng_errors.sum() > 0
    # a measurement that shows no code reaching the target gets the strongest code, flagged
    worst = choose([rows[2]], cfg)
    assert not worst.target_met and worst.data_bits == 512 and worst.codeword_bits <= 8191
    assert worst.codeword_bits + 13 > 8191 or bch_parity_bits(13, int(worst.code.split("t=")[1].split(")")[0]) + 1) \
        + 512 > 8191  # the largest t on GF(2^13)


def test_medium_levels_have_equal_margins_at_the_best_tolerance(noise) -> None:
    """The medium's levels span floor to top with the same margin at every boundary, in units
    of the calibrated error after the retention time, at the calibrated tolerance that
    makes that margin largest; the decoder's thresholds go where the model's reads err least."""
    from dataclasses import replace

    from pcm_hil.store_job.digital_medium import _equal_margins, decode, levels, pattern
    from pcm_hil.store_job.readback import simulate_reads

    g_hi, day, cap = 12.0, 86400.0, int(noise.max_pulses_)
    lv, tol = levels(noise, g_hi, 2, day)
    sd = np.sqrt(noise.sq_error_after(lv, tol, cap, day))
    k = np.diff(lv) / (sd[:-1] + sd[1:])
    assert lv[0] == noise.levels_us_[0] and lv[-1] == g_hi and np.all(np.diff(lv) > 0)
    assert k.max() - k.min() < 0.02 * k.mean()  # equal margins, to the grid's step
    grid = np.linspace(lv[0], g_hi, 4096)
    margin = {t: _equal_margins(grid, np.sqrt(noise.sq_error_after(grid, t, cap, day)), 4)[0]
              for t in noise.tolerances_us_}
    assert len(set(margin.values())) > 1 and margin[tol] == max(margin.values())  # no tolerance separates more
    # read thresholds: a fraction of the way between the reference cells' medians, where the
    # calibrated model's reads err least; on fresh model draws they beat the midpoints
    cfg = MediumConfig(densities=(2,), cells_per_density=16384, reference_cells_per_level=64)
    pat = pattern(noise, g_hi, cfg, day)
    b = pat.boundaries[2]
    assert b.shape == (3,) and np.all((b > 0.2) & (b < 0.8))
    reads, _ = simulate_reads(noise, pat.aims_us, pat.tolerance_us, pat.max_pulses, day, np.random.default_rng(5))
    midway = replace(pat, boundaries={2: np.full(3, 0.5)})
    assert decode(pat, reads, cfg)[0]["bit_errors"] < decode(midway, reads, cfg)[0]["bit_errors"]
    # the threshold sits at that fraction between the measured medians (0 and 8 µS here)
    one = MediumConfig(densities=(1,), cells_per_density=256, reference_cells_per_level=64)
    pat = replace(pattern(noise, g_hi, one, day), boundaries={1: np.array([0.25])})
    reads = np.where(pat.symbol == 0, 0.0, 8.0)
    data = ~pat.reference
    reads[data] = np.where(pat.symbol[data] == 0, 1.9, 2.1)  # either side of the threshold at 2
    assert decode(pat, reads, one)[0]["bit_errors"] == 0
    reads[data] = np.where(pat.symbol[data] == 0, 2.1, 1.9)  # the wrong sides: every bit wrong
    assert decode(pat, reads, one)[0]["bit_errors"] == data.sum()


def test_bch_run_beyond_the_library_counts_blocks_over_t() -> None:
    rng = np.random.default_rng(3)
    n, t = 14800, 546
    errors = np.zeros(3 * n, np.uint8)
    for b, count in enumerate((t, t + 1, 10)):  # at the bound, one over, few
        errors[b * n + rng.choice(n, count, replace=False)] = 1
    assert run_code(errors, n, t, 14) == {"blocks": 3, "blocks_failed": 1}
    # within bchlib's reach the library really decodes: 3 errors under t = 4 come back
    small = np.zeros(2 * (512 + 4 * 13), np.uint8)
    small[[5, 100, 300]] = 1
    small[564 + np.arange(0, 50, 10)] = 1  # five in the second block: more than t
    assert run_code(small, 512 + 4 * 13, 4, 13) == {"blocks": 2, "blocks_failed": 1}


def _store(tmp_path, noise, **kw):
    chip = EmulatedChip(GEOM, profile="pcm", seed=2)
    store = RunStore(tmp_path / "s.sqlite")
    # 2 programmings and a small medium test: the 16,384-cell chip holds the calibration too
    opts = dict(model="mlp-digits", sparsity=0.5, replicas_per_weight=2.0, importance_samples=300, programmings=2,
                medium_cells=256)
    return chip, store, {**opts, **kw}


def test_store_and_load_end_to_end(tmp_path, noise) -> None:
    chip, store, opts = _store(tmp_path, noise)
    r = run_store_job(chip, noise, store, StoreConfig.from_options(**opts)).record
    for key in ("model", "weights", "cells", "side_cells", "accuracy_reference", "accuracy_compressed",
                "accuracy_stored", "retention_s", "pulses", "seconds", "memory_reduction"):
        assert key in r
    assert r["weights"] == 64 * 32 + 32 * 10
    assert r["accuracy_stored"] > r["accuracy_reference"] - 0.03
    comp = r["drift_compensation"]  # a day of drift: reads came back low, the gains restore them
    assert all(1.2 < a < 2.5 for a in comp["alpha"])
    # the default plan (loss within 5 % of the least reachable): half the cells read back within 1.5 µS
    assert r["error_us"]["p50_abs"] < 1.5
    # every part the decoder reads is counted, on the medium measured on this chip
    assert r["total_cells"] == pytest.approx(r["analog_cells"] + sum(r["side_cells"].values()))
    medium = r["digital_medium"]
    assert all(r["side_cells"][k] == pytest.approx(v * medium["cells_per_bit"]) for k, v in r["side_bits"].items())
    assert r["side_bits"]["verify_flags"] > 0 and r["side_bits"]["replica_map"] > 0
    assert r["memory_reduction"]["fp32_slc_ecc"] > 3  # a 2,368-weight network: side information weighs much
    assert r["programmings"] == 2 and len(r["accuracy_stored_programmings"]) == 2
    lo, hi = r["accuracy_stored_ci95"]
    assert lo <= r["accuracy_stored_mean"] <= hi and r["accuracy_stored_programmings"][0] == r["accuracy_stored"]
    assert r["yield"] > 0.9
    # the noise model's prediction, per replica budget: more replicas, more cells and no lower
    # accuracy; at this run's budget (2) within 2 pp of the measured mean (measured: 0.3 pp)
    curve = {c["replicas_per_weight"]: c for c in r["accuracy_curve"]}
    assert list(curve) == [1.0, 1.25, 1.5, 2.0, 3.0]
    assert np.all(np.diff([c["cells_per_weight"] for c in curve.values()]) > 0)
    assert curve[3.0]["accuracy_predicted"] >= curve[1.0]["accuracy_predicted"]
    assert abs(curve[2.0]["accuracy_predicted"] - r["accuracy_stored_mean"]) < 0.02
    # the loop went for each cell's bias-compensated aim, and loose windows land on target on average
    lay, prog = store.read(r["run_id"], "layout"), store.read(r["run_id"], "programmed")
    conv = prog["converged"].to_numpy(bool)
    assert np.all(np.abs(prog["final_us"] - lay["aim_us"])[conv] <= lay["tolerance_us"][conv] + 1e-6)
    loose = conv & (lay["tolerance_us"] >= 2).to_numpy() & (lay["tensor"] >= 0).to_numpy()
    assert loose.sum() > 100  # the default plan leaves the less important cells in loose windows
    # at verify, their mean error is near zero, not −tol/2 (3 × the ~0.1 µS SE of the fitted offsets)
    assert abs((prog["final_us"] - lay["target_us"])[loose].mean()) < 0.3
    # the layout in the run store reads the model back from the saved chip, in a new session
    chip.save_state(tmp_path / "chip.npz")
    again = EmulatedChip.load_state(tmp_path / "chip.npz")
    loaded = load_run(again, store, r["run_id"])
    assert abs(loaded["accuracy_loaded"] - r["accuracy_stored"]) < 0.03
    store.close()


def test_a_budget_too_small_fails_before_any_pulse(tmp_path, noise) -> None:
    chip, store, opts = _store(tmp_path, noise)
    before, t0 = chip.true_conductance(), chip.now()
    with pytest.raises(ValueError, match="pulse budget 10 is too small"):
        run_store_job(chip, noise, store, StoreConfig.from_options(**opts, pulse_budget=10.0))
    assert np.array_equal(chip.true_conductance(), before) and chip.now() == t0
    store.close()


def test_model_larger_than_the_chip_is_refused(tmp_path, noise) -> None:
    chip = EmulatedChip(Geometry(1, 16, 16), seed=2)
    before = chip.true_conductance()
    with RunStore(tmp_path / "s.sqlite") as store, pytest.raises(ValueError, match="needs .* cells"):
        run_store_job(chip, noise, store, StoreConfig.from_options(model="mlp-digits", importance_samples=100))
    assert np.array_equal(chip.true_conductance(), before)


def test_nan_weights_are_refused(tmp_path, noise) -> None:
    sd = load_model("mlp-digits").state_dict()
    sd["fc1.weight"][0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    chip, store, _ = _store(tmp_path, noise)
    with pytest.raises(ValueError, match="NaN or infinite"):
        run_store_job(chip, noise, store, StoreConfig.from_options(model="mlp-digits", checkpoint=str(tmp_path / "nan.pt")))
    store.close()


class _Evil:
    """Unpickling it creates the file ``marker``: the test sees whether the payload ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204 - runs code (creates a file) if anyone unpickles it
        return (open, (self.marker, "w"))


def test_model_files_load_safely(tmp_path) -> None:
    torch.save([torch.zeros(2)], tmp_path / "notdict.pt")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_state_dict(tmp_path / "notdict.pt")
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(_Evil(tmp_path / "PWNED"), f)
    with pytest.raises(ValueError, match="not a loadable weights-only checkpoint"):
        load_state_dict(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()  # the payload never ran
    with pytest.raises(ValueError, match="does not exist"):
        load_state_dict(tmp_path / "missing.pt")
    torch.save(load_model("mlp-digits").state_dict(), tmp_path / "ok.pt")
    with pytest.raises(ValueError, match="does not fit lenet5-fmnist"):
        load_model("lenet5-fmnist", tmp_path / "ok.pt")


def test_cifar_loader_reads_the_standard_layout_and_refuses_code(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, 10))}
        with open(tmp_path / name, "wb") as f:
            pickle.dump(batch, f)
    train, test = cifar10(tmp_path)
    assert train.x.shape == (50, 3, 32, 32) and test.y.shape == (10,)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump(_Evil(tmp_path / "PWNED"), f)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        cifar10(tmp_path)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.slow
def test_cli_store_json(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "pcm_hil.cli", "store", "--model", "mlp-digits", "--json",
                        "--run-dir", str(tmp_path), "--report", str(tmp_path / "r.png")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out["memory_reduction"]) == {"fp32_slc_ecc", "compressed_fp32_on_medium", "best_digital"}
    # the coded mask by default (the mask in the cells is opt-in)
    assert set(out["side_cells"]) == {"mask", "signs", "scales", "replica_map", "verify_flags", "digital_parameters"}
    assert out["side_cells"]["mask"] > 0 and not out["mask_in_cells"]["on"]
    assert out["programmings"] == 5 and out["accuracy_stored_ci95"][0] <= out["accuracy_stored_mean"]
    assert (tmp_path / "r.png").stat().st_size > 10_000
    r = subprocess.run([sys.executable, "-m", "pcm_hil.cli", "load", out["run_id"], "--run-dir", str(tmp_path),
                        "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["cells"] == out["cells"]
    bad = subprocess.run([sys.executable, "-m", "pcm_hil.cli", "store", "--model", "mlp-digits", "--code", "sign",
                          "--pulse-budget", "5", "--run-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "too small" in bad.stderr


def test_decode_trusts_only_verified_replicas() -> None:
    cfg = CodeConfig("sign", percentile=100.0)
    w = np.array([0.5, -0.25, 1.0])
    enc = encode("w", w, cfg, 20.0, None, np.array([2, 2, 1]))
    reads = enc.targets_us.copy()
    stuck = np.flatnonzero(enc.owner == 0)[0]
    reads[stuck] = 19.0  # one replica of weight 0 is stuck high
    trusted = np.ones(enc.cells, bool)
    trusted[stuck] = False
    assert np.allclose(decode(enc, reads, cfg, trusted), w)  # the verified replica alone decides
    assert not np.allclose(decode(enc, reads, cfg), w)  # averaging it in would pull weight 0 off
    lone = np.flatnonzero(enc.owner == 2)
    reads[lone] = 19.9  # weight 2's only replica did not verify: stuck high, it would read as the largest weight
    trusted[lone] = False
    assert np.allclose(decode(enc, reads, cfg, trusted), [0.5, -0.25, 0.0])  # it decodes as 0, the prior's centre
    pair = CodeConfig("pair", percentile=100.0)
    enc = encode("w", w, pair, 20.0, None, 1)
    trusted = np.ones(enc.cells, bool)
    trusted[np.flatnonzero(enc.owner == 1)[1]] = False  # weight 1's G− cell did not verify
    assert np.allclose(decode(enc, enc.targets_us, pair, trusted), [0.5, 0.0, 1.0])


@pytest.mark.parametrize("code", ["sign", "pair"])
def test_a_stuck_word_line_takes_at_most_one_replica_of_a_weight(code: str) -> None:
    """Replicas are placed replica by replica, so a run of adjacent cells (a word line of
    512) holds at most one replica of any weight: with every cell of one row failed, each
    weight with two replicas still decodes exactly from the other."""
    cfg = CodeConfig(code, percentile=100.0)
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, 3000)
    enc = encode("w", w, cfg, 20.0, None, 2)
    roles = [0] if code == "sign" else [0, 1]
    for role in roles:
        own = enc.owner[enc.role == role]
        for start in range(0, own.size - 511, 512):  # every word line
            assert np.unique(own[start:start + 512]).size == 512
    trusted = np.ones(enc.cells, bool)
    trusted[1000:1512] = False  # one stuck row of a 512-cell array
    reads = enc.targets_us.copy()
    reads[1000:1512] = 19.9
    assert np.allclose(decode(enc, reads, cfg, trusted), w)


TINY_NET = '''
import torch.nn as nn
import torch.nn.functional as F


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 24)
        self.bn = nn.BatchNorm1d(24)
        self.fc2 = nn.Linear(24, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x.flatten(1)))))
'''


def _build(name: str) -> torch.nn.Module:
    from pcm_hil.models import spec

    return spec(name).build()


@pytest.mark.slow
def test_your_own_architecture_stores_and_loads(tmp_path, noise, monkeypatch) -> None:
    from pcm_hil.datasets import digits
    from pcm_hil.models import accuracy, own_model_name

    (tmp_path / "mynet.py").write_text(TINY_NET)
    monkeypatch.chdir(tmp_path)
    name = own_model_name("mynet.py:Tiny")
    assert name == f"{tmp_path / 'mynet.py'}:Tiny"  # absolute: the run loads from any directory
    train, test = digits()
    data = tmp_path / "data"
    data.mkdir()
    for split, part in (("train", train), ("test", test)):
        np.save(data / f"x_{split}.npy", part.x)
        np.save(data / f"y_{split}.npy", part.y)
    torch.manual_seed(0)
    net = _build(name)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    torch.save(net.state_dict(), tmp_path / "tiny.pt")
    assert accuracy(net, test.x, test.y) > 0.9
    chip, store, opts = _store(tmp_path, noise, digital_baseline=False)
    cfg = StoreConfig.from_options(**{**opts, "model": name, "checkpoint": str(tmp_path / "tiny.pt"),
                                      "data_dir": str(data)})
    r = run_store_job(chip, noise, store, cfg).record
    assert r["weights"] == 64 * 24 + 24 * 10 and r["accuracy_reference"] == accuracy(net, test.x, test.y)
    # storage costs at most three standard errors of the test-set accuracy beyond what pruning cost
    # (397 test digits: SE ≈ 1 pp; measured: 96.7 % compressed, 94.7 % stored)
    p = r["accuracy_compressed"]
    assert r["accuracy_stored"] > p - 3 * np.sqrt(p * (1 - p) / len(test))
    # its BN statistics were re-estimated from the weights as read; the accuracy without is kept
    assert r["accuracy_stored"] >= r["accuracy_stored_without_bn_recalibration"] - 0.02
    monkeypatch.chdir("/")
    assert abs(load_run(chip, store, r["run_id"])["accuracy_loaded"] - r["accuracy_stored"]) < 0.03
    store.close()


def test_your_own_architecture_without_its_files_is_refused(tmp_path) -> None:
    (tmp_path / "mynet.py").write_text(TINY_NET + "\nclass NeedsArgs(nn.Module):\n    def __init__(self, n):\n"
                                       "        super().__init__()\n")
    (tmp_path / "broken.py").write_text("import no_such_module_anywhere\n")
    own = f"{tmp_path / 'mynet.py'}:Tiny"
    torch.save(_build(own).state_dict(), tmp_path / "tiny.pt")
    cases = {
        "nope": "unknown model 'nope'.*file.py:Class",
        f"{tmp_path / 'missing.py'}:Tiny": "missing.py does not exist",
        f"{tmp_path / 'broken.py'}:Tiny": "cannot import .*ModuleNotFoundError",
        f"{tmp_path / 'mynet.py'}:Nothing": "no nn.Module subclass named 'Nothing'",
        f"{tmp_path / 'mynet.py'}:NeedsArgs": "must build with no arguments",
        own: "your own architecture: give its weights with --checkpoint",
    }
    for model, match in cases.items():
        with pytest.raises(ValueError, match=match):
            load_inputs(NetworkConfig(model))
    with pytest.raises(ValueError, match="give --data-dir with x_test.npy"):
        load_inputs(NetworkConfig(own, checkpoint=str(tmp_path / "tiny.pt")))
    # test data only: tuned on one half, accuracy on the other, never on the same samples
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "x_test.npy", np.arange(100, dtype=np.float32)[:, None])
    np.save(data / "y_test.npy", np.zeros(100, np.int64))
    with pytest.raises(ValueError, match="do not fit the network"):  # 1 feature for a 64-input network
        load_inputs(NetworkConfig(own, checkpoint=str(tmp_path / "tiny.pt"), data_dir=str(data)))
    np.save(data / "x_test.npy", np.repeat(np.arange(100, dtype=np.float32)[:, None], 64, axis=1))
    inputs = load_inputs(NetworkConfig(own, checkpoint=str(tmp_path / "tiny.pt"), data_dir=str(data)))
    tune, val, evaluate = inputs.train, inputs.val, inputs.test
    assert len(tune) + len(val) == len(evaluate) == 50 and len(val) == 5
    seen = [set(part.x[:, 0]) for part in (tune, val, evaluate)]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])  # never the same samples


@pytest.mark.slow
def test_batchnorm_statistics_are_re_estimated_from_the_weights_as_read() -> None:
    from pcm_hil.datasets import digits
    from pcm_hil.models import accuracy, recalibrate_batchnorm

    train, test = digits()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                              torch.nn.Dropout(0.5), torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(train.x)), torch.from_numpy(train.y)).backward()
        opt.step()
    net.eval()
    good = accuracy(net, test.x, test.y)
    # the first layer's weights come back 1.6x too large with an offset (a gain error, as uncompensated drift)
    with torch.no_grad():
        net[1].weight.mul_(1.6).add_(0.05)
    drifted = accuracy(net, test.x, test.y)
    assert drifted < good - 0.04
    assert recalibrate_batchnorm(net, train.x[:1000])
    assert not net.training and net[2].momentum == 0.1  # left in eval mode, its settings restored
    # the statistics are now those of the layer's outputs on the calibration inputs
    with torch.no_grad():
        h = net[1](torch.from_numpy(train.x[:1000]).flatten(1))
    assert torch.allclose(net[2].running_mean, h.mean(0), atol=1e-4)
    assert torch.allclose(net[2].running_var, h.var(0), rtol=0.05)  # the mean of 4 batch variances
    assert accuracy(net, test.x, test.y) > good - 0.03
    assert not recalibrate_batchnorm(torch.nn.Linear(3, 2), train.x[:10])  # no BN: nothing to do


def test_a_run_recorded_before_the_new_layout_switches_reads_as_it_was_stored() -> None:
    """A run's recorded config round-trips; one recorded before replica counts per channel and
    the window from the pruning threshold existed reads back with both off, as it was stored."""
    from dataclasses import asdict

    cfg = StoreConfig.from_options(model="mlp-digits", replicas_per="weight", sparsity=0.5)
    assert StoreConfig.from_dict(asdict(cfg)) == cfg
    old = asdict(StoreConfig())
    del old["layout"]["replicas_per"], old["layout"]["code"]["from_threshold"]
    back = StoreConfig.from_dict(old)
    assert back.layout.replicas_per == "weight" and back.layout.code.from_threshold is False


def test_quantization_aware_training_recovers_what_rounding_lost() -> None:
    """The competitor's QAT trains through the rounding it is stored with: at 2 bits per
    weight, post-training rounding of mlp-digits loses ~20 pp on validation, QAT most of it
    back (140 validation digits: a 10-pp gap is 3 binomial standard errors)."""
    import copy as copy_

    from pcm_hil.models import accuracy
    from pcm_hil.store_job.baselines import fake_quantizer, quantized
    from pcm_hil.store_job.compression import finetune

    inp = load_inputs(NetworkConfig(name="mlp-digits"))
    masks = {n: np.ones(tuple(dict(inp.network.named_parameters())[n].shape), bool) for n in inp.names}
    w = dict(inp.network.named_parameters())[inp.names[0]].detach()
    assert torch.allclose(fake_quantizer(2, 1.0)("w", w, None), dict(quantized(
        inp.network, inp.names, 2)[0].named_parameters())[inp.names[0]].detach(), rtol=2 ** -11, atol=0)
    # the rounding it is stored with (the stored scale in fp16, within 2^-11)
    ptq = accuracy(quantized(inp.network, inp.names, 2)[0], inp.val.x, inp.val.y)
    trained = finetune(copy_.deepcopy(inp.network), masks, inp.train.x, inp.train.y, 2, seed=0,
                       perturb=fake_quantizer(2, 1.0))
    qat = accuracy(quantized(trained, inp.names, 2)[0], inp.val.x, inp.val.y)
    assert qat >= ptq + 0.10, (ptq, qat)


def test_mixed_precision_competitor_is_never_costlier_and_still_passes() -> None:
    """Per-layer precision lowers one tensor at a time from the cheapest passing option: the
    competitor it returns passes the validation target and costs no more cells than the best
    uniform-precision option; without it the best is uniform (mlp-digits, no training, no
    chance: the same data and rounding every run)."""
    from pcm_hil.models import accuracy
    from dataclasses import replace

    from pcm_hil.store_job.baselines import BaselineConfig, _strongest_digital
    from pcm_hil.store_job.compression import CompressionConfig
    from pcm_hil.store_job.digital_medium import Medium
    from pcm_hil.store_job.readback import ReadbackConfig

    inp = load_inputs(NetworkConfig(name="mlp-digits"))
    medium = Medium(1, 0.0, 0.0, "none", 1, 1, 1.0, 0, 0, [])
    target = accuracy(inp.network, inp.val.x, inp.val.y) - 0.03
    cfg = BaselineConfig(sparsities=(0.0,), clips=(1.0,), qat_epochs=0)
    uniform, _ = _strongest_digital(inp, inp.network, None, medium, target, CompressionConfig(), ReadbackConfig(),
                                    replace(cfg, mixed_precision=False))
    mixed, tried = _strongest_digital(inp, inp.network, None, medium, target, CompressionConfig(), ReadbackConfig(),
                                      cfg)
    assert uniform.layer_bits is None and mixed.accuracy_val >= target
    assert mixed.cells <= uniform.cells
    lowered = [o for o in tried if o.layer_bits]
    assert lowered and all(max(o.layer_bits.values()) <= uniform.bits for o in lowered)
    # here fc1 takes a bit less than fc2 (measured: 2 and 3 bits, 30 % fewer bits than 3 everywhere)
    assert len(set(mixed.layer_bits.values())) > 1 and mixed.cells < uniform.cells
    # the lazy rounds (tensors tried in order of the bits they save, first pass taken) choose as
    # trying every tensor each round does, in fewer evaluations; the test set is read once
    from pcm_hil.store_job.baselines import quantized

    keep = {n: np.ones(tuple(w.shape), bool) for n, w in inp.network.named_parameters() if n in inp.names}
    bits, evaluated = {n: uniform.bits for n in inp.names}, 0
    while True:
        passing = []
        for n in (n for n in inp.names if bits[n] > 2):
            m, b = quantized(inp.network, inp.names, {**bits, n: bits[n] - 1}, 1.0, keep)
            evaluated += 1
            if accuracy(m, inp.val.x, inp.val.y) >= target:
                passing.append((b, n))
        if not passing:
            break
        bits[min(passing)[1]] -= 1
    assert mixed.layer_bits == bits
    assert len(lowered) < evaluated
    assert sum(not np.isnan(o.accuracy_test) for o in tried) == 1


def test_the_competitors_evaluations_are_read_back_from_the_model_cache(tmp_path) -> None:
    """A study's points search the same digital options: with a model cache the second search
    computes no option again and chooses the same competitor (its test accuracy measured
    again, once); a changed network or read-back setting is a miss, never a stale hit."""
    import copy
    from dataclasses import replace

    from pcm_hil.models import accuracy
    from pcm_hil.store_job import model_cache
    from pcm_hil.store_job.baselines import BaselineConfig, _strongest_digital
    from pcm_hil.store_job.compression import CompressionConfig
    from pcm_hil.store_job.digital_medium import Medium
    from pcm_hil.store_job.readback import ReadbackConfig

    inp = load_inputs(NetworkConfig(name="mlp-digits"))
    medium = Medium(1, 0.0, 0.0, "none", 1, 1, 1.0, 0, 0, [])
    target = accuracy(inp.network, inp.val.x, inp.val.y) - 0.03
    cfg = BaselineConfig(sparsities=(0.0,), clips=(1.0, 0.85), qat_epochs=0)

    def search(network=inp.network, readback=ReadbackConfig()):
        return _strongest_digital(inp, network, None, medium, target, CompressionConfig(), readback, cfg)

    with model_cache.using(tmp_path):
        first, tried = search()
        computed, reused = model_cache.stats.figures_computed, model_cache.stats.figures_reused
        assert computed >= len(tried)  # (the search itself asks for some options twice: reused)
        second, again = search()
        assert model_cache.stats.figures_computed == computed
        assert model_cache.stats.figures_reused == 2 * reused + computed
        assert repr(second) == repr(first) and list(map(repr, again)) == list(map(repr, tried))  # (nan != nan)
        assert 0 < first.accuracy_test <= 1
        search(readback=replace(ReadbackConfig(), seed=1))
        assert model_cache.stats.figures_computed == 2 * computed
        other = copy.deepcopy(inp.network)
        with torch.no_grad():
            next(other.parameters()).mul_(0.5)
        search(network=other)
        assert model_cache.stats.figures_computed > 2 * computed


def test_drift_compensation_can_be_switched_off_for_the_ablation() -> None:
    """Reads that all drifted by the same factor come back on target with the reference
    cells' correction, and as read with it switched off (``--no-drift-compensation``)."""
    from pcm_hil.store_job.layout import REF_FRACTIONS, Layout
    from pcm_hil.store_job.readback import ReadbackConfig, compensated

    ref = np.repeat(np.array(REF_FRACTIONS) * 20.0, 4)
    weights = np.linspace(1.0, 19.0, 50)
    targets = np.concatenate([weights, ref])
    tensor_of = np.concatenate([np.zeros(weights.size, int), np.full(ref.size, -1)])
    layout = Layout([], targets, tensor_of.copy(), tensor_of, np.zeros(targets.size))
    reads = 0.8 * targets
    on, comp = compensated(reads, layout, ReadbackConfig())
    off, _ = compensated(reads, layout, ReadbackConfig(drift_compensation=False))
    assert np.allclose(on, targets) and np.allclose(comp["alpha"], 1.25)
    assert np.array_equal(off, reads)
    cfg = StoreConfig.from_options(model="mlp-digits", drift_compensation=False)
    assert cfg.readback.drift_compensation is False and StoreConfig().readback.drift_compensation


def test_nm_masks_keep_the_largest_n_of_every_m_and_cost_their_enumerative_code() -> None:
    """N:M masks: in every output channel, each group of M consecutive weights keeps its N
    largest |w| (a last group of r < M keeps ceil(N·r/M)); the mask costs log2 C(M, N) bits
    per group, fewer than the entropy code of an unstructured mask at the same sparsity."""
    import math

    from torch import nn

    from pcm_hil.store_job.compression import nm_mask_bits, nm_masks
    from pcm_hil.store_job.side_info import coded_bits

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(10, 5))  # 27 and 10 inputs per channel: a partial last group
    names = ["0.weight", "1.weight"]
    masks = nm_masks(net, names, 1, 4)
    for name in names:
        w = dict(net.named_parameters())[name].detach().abs().numpy()
        rows, keep = w.reshape(w.shape[0], -1), masks[name].reshape(w.shape[0], -1)
        for r in range(rows.shape[0]):
            for g in range(0, rows.shape[1], 4):
                seg_w, seg_k = rows[r, g:g + 4], keep[r, g:g + 4]
                assert seg_k.sum() == 1 and seg_k[np.argmax(seg_w)], (name, r, g)
    assert nm_mask_bits(masks["1.weight"], 1, 4) == math.ceil(5 * (2 + 2 + 1))  # groups of 4, 4, 2 keep 1 each
    big = nm_masks(nn.Sequential(nn.Linear(4000, 4)), ["0.weight"], 1, 4)["0.weight"]
    assert nm_mask_bits(big, 1, 4) == 4 * 1000 * 2 < coded_bits(big.ravel())  # 2 bits per group < H(0.25) × 4
    with pytest.raises(ValueError, match="1 <= N < M <= 16"):
        nm_masks(net, names, 4, 4)


def test_competitor_tries_nm_starts_and_counts_their_mask_as_groups() -> None:
    """With ``nm_patterns`` the competitor also quantizes an N:M pruned, fine-tuned start: its
    options are named by the pattern, and each tensor costs the cheaper of the N:M groups'
    code plus the coded kept values and the code of every value (mlp-digits: at 2 bits many
    kept weights round to 0 and the plain code wins; at 4 bits the N:M code does)."""
    from pcm_hil.models import accuracy
    from pcm_hil.store_job.baselines import BaselineConfig, _strongest_digital, quantized
    from pcm_hil.store_job.compression import CompressionConfig, nm_mask_bits
    from pcm_hil.store_job.digital_medium import Medium
    from pcm_hil.store_job.model_cache import cached_prune_nm
    from pcm_hil.store_job.readback import ReadbackConfig
    from pcm_hil.store_job.digital_parameters import bits as digital_parameter_bits
    from pcm_hil.store_job.side_info import coded_bits

    inp = load_inputs(NetworkConfig(name="mlp-digits"))
    medium = Medium(1, 0.0, 0.0, "none", 1, 1, 1.0, 0, 0, [])
    target = accuracy(inp.network, inp.val.x, inp.val.y) - 0.05
    cfg = BaselineConfig(sparsities=(), clips=(1.0,), qat_epochs=0, mixed_precision=False, nm_patterns=((2, 4),))
    _, tried = _strongest_digital(inp, inp.network, None, medium, target, CompressionConfig(), ReadbackConfig(), cfg)
    nm = [o for o in tried if o.start == "pruned 2:4"]
    assert nm and all(o.sparsity == 0.5 for o in nm)
    net, masks = cached_prune_nm(inp.network, inp.names, 2, 4, inp.train.x, inp.train.y,
                                 CompressionConfig().finetune_epochs, seed=0)
    assert all(m.sum() * 2 == m.size for m in masks.values())  # every 4 inputs keep 2 (fc sizes divisible by 4)
    first = nm[0]  # 2 bits, post-training, clip 1.0
    _, bits = quantized(net, inp.names, first.bits, 1.0, masks, (2, 4))
    _, unstructured = quantized(net, inp.names, first.bits, 1.0)
    assert first.bits_total == bits + digital_parameter_bits(inp.network, inp.names)
    mask_bits = sum(nm_mask_bits(m, 2, 4) for m in masks.values())
    assert mask_bits < sum(coded_bits(m.ravel()) for m in masks.values()) and bits <= unstructured
    _, bits4 = quantized(net, inp.names, 4, 1.0, masks, (2, 4))
    assert bits4 < quantized(net, inp.names, 4, 1.0)[1]
    with pytest.raises(ValueError, match="N:M"):
        BaselineConfig(nm_patterns=((4, 2),))


def test_digital_parameters_are_stored_and_charged_in_fp16() -> None:
    """Biases (everything not in cells) cost 16 bits each, and every decoded network, analog
    or digital, carries them rounded to fp16: the accuracy measured is the stored model's."""
    from pcm_hil.store_job import digital_parameters
    from pcm_hil.store_job.baselines import quantized

    inp = load_inputs(NetworkConfig(name="mlp-digits"))
    state = inp.network.state_dict()
    biases = [n for n in state if n not in inp.names]
    n_numbers = sum(state[n].numel() for n in biases)
    assert biases and digital_parameters.bits(inp.network, inp.names) == 16 * n_numbers
    q, _ = quantized(inp.network, inp.names, 4)
    for n in biases:
        assert torch.equal(q.state_dict()[n], state[n].half().float())
        assert not torch.equal(state[n].half().float(), state[n])  # the rounding is visible: not a no-op
    assert all(torch.equal(inp.network.state_dict()[n], state[n]) for n in biases)  # the original untouched
    from pcm_hil.coding import CodeConfig
    from pcm_hil.store_job.readback import decode_model

    decoded = decode_model(inp.network, [], [], CodeConfig(), np.zeros(0), np.zeros(0, int))  # nothing in cells
    assert all(torch.equal(decoded.state_dict()[n], state[n].half().float()) for n in state)


def test_programmings_spread_over_sibling_chips(tmp_path, noise) -> None:
    """chips = 2: the copies alternate between the job's chip and a fresh sibling (seed + 1);
    the job's chip holds cells only for its own copies, and the sibling's copy is a real
    programming (its pulses, its own accuracy)."""
    chip, store, opts = _store(tmp_path, noise, programmings=3, chips=2)
    r = run_store_job(chip, noise, store, StoreConfig.from_options(**opts)).record
    assert r["chip_ids"] == [chip.chip_id(), "emulated:pcm:seed=3:1x128x128"] and r["programming_chips"] == [0, 0, 1]
    held = store.cells_of(r["run_id"])
    assert np.isin(np.flatnonzero(chip.pulse_count), held).all()  # nothing written outside the run's cells
    one_chip = EmulatedChip(GEOM, profile="pcm", seed=2)
    with RunStore(tmp_path / "t.sqlite") as other:
        one = run_store_job(one_chip, noise, other, StoreConfig.from_options(**{**opts, "chips": 1})).record
        assert one["programming_chips"] == [0, 0, 0] and other.cells_of(one["run_id"]).size == held.size + r["cells"]
    # as many pulses for the copies, wherever they went; the sibling's copy decodes like the others
    assert 0.8 < r["evaluation_pulses"] / one["evaluation_pulses"] < 1.25
    assert r["accuracy_stored_programmings"][2] > r["accuracy_reference"] - 0.05
    store.close()


def test_sibling_chips_need_the_emulator(tmp_path, noise) -> None:
    from pcm_hil.bench import BenchChip
    from pcm_hil.emulator.instruments import VirtualBench

    with pytest.raises(ValueError, match=r"chips must be an integer in \[1, min\(8, programmings = 2\)\]"):
        StoreConfig.from_options(model="mlp-digits", programmings=2, chips=3)
    with VirtualBench(GEOM, seed=2) as vb, BenchChip(vb.bench_config()) as chip, \
            RunStore(tmp_path / "s.sqlite") as store:
        before = vb.chip.pulse_count.sum()
        with pytest.raises(ValueError, match="only the emulator has"):
            run_store_job(chip, noise, store, StoreConfig.from_options(model="mlp-digits", programmings=2, chips=2))
        assert vb.chip.pulse_count.sum() == before and store.runs().empty


@pytest.mark.parametrize("model", ["lenet5-mnist5k", "mlp-digits"])
def test_the_store_job_validates_on_the_split_its_reference_was_trained_without(model) -> None:
    """The validation split is a tenth of the training data, or ``VALIDATION_SIZE`` where a tenth is too
    few to choose on (mnist5k: 1,000 of 4,000); the shipped reference was trained on the rest only."""
    from pcm_hil import datasets
    from pcm_hil.models import manifest, spec

    dataset = spec(model).dataset
    full, _ = datasets.load(dataset)
    keep, val = datasets.hold_out(full, dataset)
    assert len(val) == datasets.VALIDATION_SIZE.get(dataset, round(0.1 * len(full)))
    assert len(keep) + len(val) == len(full)
    assert manifest()[model]["trained_on"].startswith(f"{len(keep)} of {len(full)} ")
