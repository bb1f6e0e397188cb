"""The keep-mask in the cells: a pruned weight's cell is only RESET, kept weights start a gap
above it, and the decoder reads the mask from the cells instead of a coded mask."""
from __future__ import annotations

import numpy as np
import pytest

from pcm_hil.chip import Geometry
from pcm_hil.coding import PRUNED, CodeConfig, decode, decoded_mask, encode, mask_errors
from pcm_hil.emulator import EmulatedChip
from pcm_hil.run_store import RunStore
from pcm_hil.store_job import StoreConfig, load_run, run_store_job
from pcm_hil.store_job.layout import LayoutConfig, mask_gap
from pcm_hil.store_job.side_info import side_bits

CFG = CodeConfig("sign", percentile=100.0)


def _tensor(seed: int = 0, shape: tuple[int, int] = (6, 40)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape)
    mask = np.abs(w) > np.percentile(np.abs(w), 75)
    return w, mask, rng.integers(1, 4, size=int(mask.sum()))


def test_round_trip_with_the_mask_in_the_cells() -> None:
    w, mask, r = _tensor()
    enc = encode("w", w, CFG, 20.0, mask, r, gap=4.0, threshold=0.8)
    # one cell per weight position, pruned ones only RESET (0 µS), then the other replicas
    assert enc.cells == w.size + int((r - 1).sum())
    assert np.all(enc.targets_us[:w.size][~mask.ravel()] == 0) and np.all(enc.role[:w.size][~mask.ravel()] == PRUNED)
    kept_targets = enc.targets_us[enc.owner >= 0]
    assert kept_targets.min() == pytest.approx(4.0) and kept_targets.max() == pytest.approx(20.0)
    assert np.allclose(decode(enc, enc.targets_us, CFG), np.where(mask, w, 0))
    # the kept window is [gap, g_hi]: a kept weight's µS per weight unit shrinks by (g_hi − gap)/g_hi
    plain = encode("w", w, CFG, 20.0, mask, r)
    assert enc.scale == pytest.approx(plain.scale * 20.0 / 16.0)


def test_the_decoder_survives_a_pruned_cell_read_high_and_a_kept_cell_read_low() -> None:
    w, mask, r = _tensor(1)
    enc = encode("w", w, CFG, 20.0, mask, r, gap=4.0, threshold=0.8)
    truth = np.where(mask, w, 0)
    reads = enc.targets_us.copy()
    keep = mask.ravel()
    row = 2  # one channel: a pruned cell reads above the threshold, a kept one below it
    pos = np.arange(w.size)
    pruned_one = pos[(pos // w.shape[1] == row) & ~keep][0]
    kept_in_row = pos[(pos // w.shape[1] == row) & keep]
    kept_one = kept_in_row[np.argmin(reads[kept_in_row])]
    reads[pruned_one] = 2.0
    reads[kept_one] = 0.5
    errs = mask_errors(enc, reads)
    assert errs["pruned_read_high"] == 1 and errs["kept_read_low"] == 1
    # a threshold alone gets both wrong; the decoder keeps as many per channel as the channel
    # keeps (its counted kept_counts) and takes the highest reads: here it still swaps them ...
    assert errs["decoded_wrong"] == 2
    # ... unless only one of them happened: then it is right
    alone = enc.targets_us.copy()
    alone[pruned_one] = 2.0  # below every kept cell of its channel
    assert mask_errors(enc, alone)["decoded_wrong"] == 0
    assert np.allclose(decode(enc, alone, CFG), truth)
    low = enc.targets_us.copy()
    low[kept_one] = 0.5  # still above every pruned cell of its channel
    assert np.array_equal(decoded_mask(enc, low), keep)
    # a pruned cell stuck high, flagged by verify, does not decode as a large weight: the
    # decoder reads the stored mask bit of every position cell that failed verify
    stuck = enc.targets_us.copy()
    stuck[pruned_one] = 19.0
    trusted = np.ones(enc.cells, bool)
    trusted[pruned_one] = False
    assert np.allclose(decode(enc, stuck, CFG, trusted), truth)
    assert not np.allclose(decode(enc, stuck, CFG), truth)  # unflagged, it would displace a kept weight
    # nor a kept cell stuck at RESET for a pruned one (which would shift the signs after it)
    stuck[kept_one] = 0.1
    trusted[kept_one] = False
    assert np.array_equal(decoded_mask(enc, stuck, trusted), keep)
    others = np.ones(w.size, bool)
    others[kept_one] = False
    assert np.allclose(decode(enc, stuck, CFG, trusted).ravel()[others], truth.ravel()[others])


def test_bad_gap_is_refused_with_the_accepted_range(noise) -> None:
    w, mask, r = _tensor()
    with pytest.raises(ValueError, match=r"mask gap must be in \(0.8, 10\] µS"):
        encode("w", w, CFG, 20.0, mask, r, gap=15.0, threshold=0.8)
    with pytest.raises(ValueError, match=r"mask gap must be in \(0.8, 10\] µS"):
        encode("w", w, CFG, 20.0, mask, r, gap=0.5, threshold=0.8)
    with pytest.raises(ValueError, match="needs the sign code"):
        encode("w", w, CodeConfig("pair"), 20.0, mask, r, gap=4.0, threshold=0.8)
    g_hi = noise.levels_us_[-1]
    with pytest.raises(ValueError, match=rf"mask gap must be in \(.*, {g_hi / 2:.3g}\] µS"):
        mask_gap(noise, g_hi, 86400.0, LayoutConfig(mask_in_cells=True, mask_gap_us=g_hi))
    with pytest.raises(ValueError, match="mask_sigmas must be in"):
        LayoutConfig(mask_sigmas=0.5)


def test_gap_and_threshold_come_from_the_calibrated_noise(noise) -> None:
    g_hi = noise.levels_us_[-1]
    gap, thr = mask_gap(noise, g_hi, 86400.0, LayoutConfig(mask_in_cells=True))
    assert noise.window_.g_floor_us < thr < gap < g_hi / 2
    wider = mask_gap(noise, g_hi, 86400.0, LayoutConfig(mask_in_cells=True, mask_sigmas=4.0))
    assert wider[0] > gap and wider[1] > thr  # more separation asked: a wider gap
    later = mask_gap(noise, g_hi, 10 * 86400.0, LayoutConfig(mask_in_cells=True))
    assert later[0] > gap  # more drift spread after a longer retention


def _store(tmp_path, **kw):
    chip = EmulatedChip(Geometry(1, 128, 128), profile="pcm", seed=2)
    store = RunStore(tmp_path / "s.sqlite")
    opts = dict(model="mlp-digits", sparsity=0.5, replicas_per_weight=1.5, importance_samples=300, programmings=2,
                medium_cells=256, **kw)
    return chip, store, opts


def test_store_end_to_end_with_the_mask_in_the_cells(tmp_path, noise) -> None:
    chip, store, opts = _store(tmp_path)
    r = run_store_job(chip, noise, store, StoreConfig.from_options(**opts, mask_in_cells=True)).record
    mic = r["mask_in_cells"]
    assert mic["on"] and mic["cells"] == r["weights"] // 2  # one cell per pruned weight, counted in analog cells
    # the decoder reads no coded mask, and every part it reads is counted
    assert r["side_bits"]["mask"] == 0 and r["side_bits"]["kept_counts"] > 0
    # one stored mask bit per position cell that failed verify
    assert r["side_bits"]["unverified_mask"] == r["mask_decoding"]["pruned_unverified"] + \
        r["mask_decoding"]["kept_first_unverified"]
    assert r["total_cells"] == pytest.approx(r["analog_cells"] + sum(r["side_cells"].values()))
    assert r["accuracy_stored"] > r["accuracy_reference"] - 0.05
    dec = r["mask_decoding"]
    assert dec["decoded_wrong"] == 0 and len(r["mask_decoding_programmings"]) == 2
    # the layout in the run store rebuilds it for a later load
    loaded = load_run(chip, store, r["run_id"])
    assert abs(loaded["accuracy_loaded"] - r["accuracy_stored"]) < 0.03
    lay = store.read(r["run_id"], "layout")
    pruned = (lay["role"] == PRUNED).to_numpy()
    assert pruned.sum() == mic["cells"] and np.all(lay["target_us"][pruned] == 0)
    # the pruned cells are only RESET: one pulse each
    assert np.all(lay["expected_pulses"][pruned] == 1)
    # kept cells never take a verify window that reaches down to the pruned cells' reads
    kept = (lay["tensor"] >= 0).to_numpy() & ~pruned
    assert np.all((lay["target_us"] - lay["tolerance_us"])[kept] >= mic["gap_us"] - noise.tolerances_us_.min() - 1e-9)
    store.close()


def test_side_info_has_no_coded_mask_when_the_mask_is_in_the_cells(noise) -> None:
    from pcm_hil.store_job import layout as layout_stage
    from pcm_hil.store_job.inputs import load_inputs
    from pcm_hil.store_job.compression import CompressionConfig
    from pcm_hil.store_job import model_cache

    inputs = load_inputs(StoreConfig.from_options(model="mlp-digits").network)
    comp = model_cache.cached_compress(inputs.network, inputs.names, inputs.train.x, inputs.train.y,
                                       CompressionConfig(sparsity=0.75))
    imp = {n: np.ones(tuple(p.shape)) for n, p in comp.model.named_parameters() if n in inputs.names}
    on = layout_stage.encode(comp.model, inputs.names, comp.masks, imp, noise, LayoutConfig(mask_in_cells=True),
                             86400.0)
    off = layout_stage.encode(comp.model, inputs.names, comp.masks, imp, noise, LayoutConfig(mask_in_cells=False),
                              86400.0)
    b_on, b_off = (side_bits(x, CFG, comp.model, inputs.names) for x in (on, off))
    assert b_on["mask"] == 0 and b_off["mask"] > 0 and "kept_counts" not in b_off
    weights = sum(m.size for m in comp.masks.values())
    kept = sum(int(m.sum()) for m in comp.masks.values())
    assert on.mask_cells == weights - kept and off.mask_cells == 0
    assert on.targets.size - off.targets.size == weights - kept  # one cell per pruned weight
    assert b_on["kept_counts"] < b_off["mask"] / 4  # a few bits per channel, not one per weight


def test_cli_refuses_a_gap_outside_the_window_before_any_pulse(tmp_path) -> None:
    import subprocess
    import sys

    bad = subprocess.run([sys.executable, "-m", "pcm_hil.cli", "store", "--model", "mlp-digits", "--mask-in-cells",
                          "--mask-gap", "15", "--run-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "mask gap must be in (" in bad.stderr and "half the window" in bad.stderr


def test_the_mask_is_coded_by_default_and_old_runs_keep_theirs() -> None:
    assert not LayoutConfig().mask_in_cells and not StoreConfig().layout.mask_in_cells
    # a run recorded before the option read its coded mask: it still does
    old = StoreConfig.from_dict({**_asdict_without_mask_option(), })
    assert not old.layout.mask_in_cells


def _asdict_without_mask_option() -> dict:
    from dataclasses import asdict

    d = asdict(StoreConfig())
    for k in ("mask_in_cells", "mask_gap_us", "mask_sigmas"):
        d["layout"].pop(k)
    return d


def test_a_window_too_narrow_for_the_gap_keeps_the_coded_mask(noise) -> None:
    """When the calibrated gap would take more than ``mask_max_gap_fraction`` of the window
    (measured: narrow-window devices lost 1.3–4 pp with it), the layout keeps the coded mask."""
    from pcm_hil.store_job import layout as layout_stage
    from pcm_hil.store_job.inputs import load_inputs
    from pcm_hil.store_job.compression import CompressionConfig
    from pcm_hil.store_job import model_cache

    inputs = load_inputs(StoreConfig.from_options(model="mlp-digits").network)
    comp = model_cache.cached_compress(inputs.network, inputs.names, inputs.train.x, inputs.train.y,
                                       CompressionConfig(sparsity=0.75))
    imp = {n: np.ones(tuple(p.shape)) for n, p in comp.model.named_parameters() if n in inputs.names}
    gap, _ = mask_gap(noise, noise.levels_us_[-1], 86400.0, LayoutConfig())
    fraction = gap / noise.levels_us_[-1]
    for limit, in_cells in ((fraction * 1.05, True), (fraction * 0.95, False)):
        lay = layout_stage.encode(comp.model, inputs.names, comp.masks, imp, noise,
                                  LayoutConfig(mask_in_cells=True, mask_max_gap_fraction=limit), 86400.0)
        assert (lay.mask_cells > 0) is in_cells
        assert (side_bits(lay, CFG, comp.model, inputs.names)["mask"] > 0) is not in_cells
    with pytest.raises(ValueError, match=r"mask_max_gap_fraction must be in \(0, 0.5\]"):
        LayoutConfig(mask_max_gap_fraction=0.9)


def test_the_mask_goes_where_it_takes_fewer_cells(noise) -> None:
    """One RESET-only cell per pruned weight against the range-coded mask on the medium: at
    75 % sparsity on a 1-bit medium (1.15 cells per bit) the cells win (0.75 against ~0.93
    cells per weight); at 90 % the coded mask does (H(0.1) = 0.47 bits per weight), and at
    75 % too on a 2-bit medium (0.56 cells per bit). The job's layout follows, and says why."""
    from dataclasses import replace

    from pcm_hil.store_job import layout as layout_stage
    from pcm_hil.store_job import model_cache
    from pcm_hil.store_job.compression import CompressionConfig
    from pcm_hil.store_job.digital_medium import Medium
    from pcm_hil.store_job.inputs import load_inputs
    from pcm_hil.store_job.job import placed_mask
    from pcm_hil.store_job.side_info import mask_cells_each_way

    def medium(bits_per_cell: int, cells_per_bit: float) -> Medium:
        return Medium(bits_per_cell, 0.0, 0.0, "none", 1, 1, cells_per_bit, 0, 0, [])

    inputs = load_inputs(StoreConfig.from_options(model="mlp-digits").network)
    slc, mlc = medium(1, 1.15), medium(2, 0.56)
    for sparsity, med, in_cells in ((0.75, slc, True), (0.9, slc, False), (0.75, mlc, False)):
        comp = model_cache.cached_compress(inputs.network, inputs.names, inputs.train.x, inputs.train.y,
                                           CompressionConfig(sparsity=sparsity))
        cells, coded = mask_cells_each_way(comp.masks, med)
        weights = sum(m.size for m in comp.masks.values())
        pruned = sum(int((~m).sum()) for m in comp.masks.values())
        assert pruned == pytest.approx(sparsity * weights, abs=1) and pruned < cells < pruned + med.cells(600)
        assert (cells <= coded) is in_cells, (sparsity, med.cells_per_bit, cells, coded)
        cfg = StoreConfig.from_options(model="mlp-digits", sparsity=sparsity, mask_in_cells=True)
        placed, why = placed_mask(cfg, comp.masks, noise, med)
        assert placed.layout.mask_in_cells is in_cells and (why is None) is in_cells
        if not in_cells:
            assert "coded mask takes fewer cells" in why and placed == replace(
                cfg, layout=replace(cfg.layout, mask_in_cells=False))
            imp = {n: np.ones(m.shape) for n, m in comp.masks.items()}
            lay = layout_stage.encode(comp.model, inputs.names, comp.masks, imp, noise, placed.layout, 86400.0)
            assert lay.mask_cells == 0 and side_bits(lay, CFG, comp.model, inputs.names)["mask"] > 0
    unpruned = StoreConfig.from_options(model="mlp-digits")
    assert placed_mask(unpruned, None, noise, slc) == (unpruned, None)
