"""Calibration on the emulator: recovery of the ground truth, validation, files, crash safety."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pcm_hil_noisemodel import NoiseModel
from pcm_hil.calibrate import CalibrationConfig, run_calibration, validate
from pcm_hil.chip import Geometry
from pcm_hil.emulator import EmulatedChip, preset
from pcm_hil.emulator.chip import STUCK_NONE
from pcm_hil.program import VerifyConfig
from pcm_hil.run_store import RunLocked, RunStore

K = 5.0
GEOM = Geometry(1, 128, 128)  # 16384 cells


def _calibrate(tmp_path: Path, profile: str = "pcm", cells: int = 8000, seed: int = 4):
    chip = EmulatedChip(GEOM, profile=profile, seed=seed)
    with RunStore(tmp_path / f"{profile}.sqlite") as store:
        run_id, model = run_calibration(chip, store, CalibrationConfig(cells=cells, seed=seed))
        data = {t: store.read(run_id, t) for t in store.tables()}
    return chip, model, data


@pytest.fixture
def pcm(calibration):
    """(chip, model, tables) of the run's shared calibration (profile pcm, seed 2)."""
    return calibration.chip, calibration.model, calibration.data


def test_recovers_read_noise(pcm) -> None:
    _, model, _ = pcm
    prof, rn = preset("pcm"), model.read_noise_
    assert abs(rn.a - prof.read_noise_rel) < K * rn.a_se
    assert abs(rn.b_us - prof.read_noise_abs_us) < K * rn.b_us_se
    assert abs(rn.averaging_exponent - 0.5) < K * rn.averaging_exponent_se


def test_recovers_drift(pcm) -> None:
    chip, model, data = pcm
    prof, d = preset("pcm"), model.drift_
    for lv, mean, se, std in zip(d.levels_us, d.nu_mean, d.nu_mean_se, d.nu_std):
        if lv < 5:  # below x≈0.2 reads carry large relative 1/f noise: checked by validation instead
            continue
        truth = float(prof.nu_mean(lv / model.window_.g_sat_us))
        assert abs(mean - truth) < K * se + 0.002, (lv, mean, truth)
        assert abs(std - float(prof.nu_std(lv / model.window_.g_sat_us))) < 0.004
    assert d.t0_s == pytest.approx(20.0, rel=0.01)


def test_fault_classes_match_the_stuck_map(pcm) -> None:
    chip, model, data = pcm
    f = data["faults"]
    stuck = chip.stuck[f["cell"].to_numpy()] != STUCK_NONE
    flagged = f["kind"].to_numpy() != "none"
    assert np.array_equal(stuck, flagged)
    total = sum(model.faults_.fractions.values())
    p = 0.005
    assert abs(total - p) < K * math.sqrt(p * (1 - p) / len(f))


def test_window_and_programming_tables(pcm) -> None:
    _, model, data = pcm
    assert abs(model.window_.g_sat_us - 25.0) < 0.1 * 25.0
    prog = data["programming"]
    groups = len(model.levels_us_) * len(model.tolerances_us_)
    assert len(prog) == 8000 and prog.groupby(["level_us", "tolerance_us"]).size().min() >= 8000 // groups
    assert set(data["trace"]["event"]) == {"reset", "read", "set"}
    # the wider the tolerance, the fewer the pulses
    p = [float(np.mean(model.expected_pulses(model.levels_us_, t, model.max_pulses_))) for t in model.tolerances_us_]
    assert all(a > b for a, b in zip(p, p[1:]))


def test_model_carries_the_verify_settings_it_was_measured_with(pcm) -> None:
    """The level sweep ran with the settings learned from the response stage, and the model
    records exactly those (the configured ones where nothing was measured)."""
    _, model, _ = pcm
    base = replace(CalibrationConfig().verify, max_pulses=CalibrationConfig().max_pulses, n_avg=model.n_avg_)
    sweep = VerifyConfig.learned(model.response_, base=base)
    assert model.verify_settings_ == asdict(sweep)
    assert VerifyConfig.measured_with(model) == sweep
    assert sweep.set_threshold_v == model.response_.threshold_p10_v != base.set_threshold_v
    assert sweep.reset_amplitude_v == model.response_.reset_amplitude_v


def test_other_profile_gives_different_parameters(pcm, tmp_path) -> None:
    _, model, _ = pcm
    _, hermes, _ = _calibrate(tmp_path, profile="hermes-14nm", cells=4000)
    assert hermes.window_.g_sat_us < 0.6 * model.window_.g_sat_us
    top = hermes.drift_.nu_mean[-1], model.drift_.nu_mean[-1]
    se = hermes.drift_.nu_mean_se[-1] + model.drift_.nu_mean_se[-1]
    assert top[1] - top[0] > K * se  # 0.049 vs ≈0.02


@pytest.mark.slow
def test_model_predicts_held_out_cells_within_ten_percent(tmp_path) -> None:
    chip = EmulatedChip(profile="pcm", seed=9)
    with RunStore(tmp_path / "s.sqlite") as store:
        _, model = run_calibration(chip, store, CalibrationConfig(cells=20_000, seed=9))
    result = validate(EmulatedChip(profile="pcm", seed=9), model, n_cells=10_000)
    assert result["first_cell"] == 20_000
    assert result["sigma_rel_error_max"] < 0.10
    assert result["pulses_rel_error"] < 0.10
    assert result["drift_nu_rel_error"] < 0.10
    assert result["ks_max"] < 0.1


def test_validate_refuses_a_model_from_another_chip(pcm) -> None:
    _, model, _ = pcm
    other = EmulatedChip(GEOM, profile="pcm", seed=99)
    before = other.true_conductance()
    with pytest.raises(ValueError, match="fitted on 'emulated:pcm:seed=2"):
        validate(other, model, n_cells=1000)
    with pytest.raises(ValueError, match="tolerance 0.3 µS was not calibrated"):
        validate(EmulatedChip(GEOM, profile="pcm", seed=2), model, n_cells=1000, tolerance_us=0.3)
    assert np.array_equal(other.true_conductance(), before)


def test_save_load_round_trip_and_sample(pcm, tmp_path) -> None:
    _, model, _ = pcm
    path = tmp_path / "m.json"
    model.save(path)
    back = NoiseModel.load(path)
    assert back == model and back.verify_settings_ == model.verify_settings_
    assert json.dumps(back.to_dict(), sort_keys=True) == json.dumps(model.to_dict(), sort_keys=True)
    t = np.full(5000, 10.0)
    a = model.sample(t, 0.5, 20, elapsed_s=86400, seed=3)
    assert np.array_equal(a, back.sample(t, 0.5, 20, elapsed_s=86400, seed=3))
    # a day of drift lowers the mean by the fitted factor
    assert np.median(a) == pytest.approx(10.0 * (86400 / 20) ** -float(model.nu_mean(10.0)), rel=0.03)
    with pytest.raises(ValueError, match="max_pulses must be an integer in"):
        model.sample(t, 0.5, 500)


@pytest.mark.parametrize("mutate,match", [
    (lambda text: text[: len(text) // 2], "not valid JSON"),
    (lambda text: text.replace('"schema_version": 2', '"schema_version": 7'), "schema version 7 is not supported"),
    (lambda text: text.replace('"schema": "pcm-hil/noise-model"', '"schema": "other"'), "not a noise model"),
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "drift"}), "lacks field"),
    (lambda text: "\x00\x01garbage", "not valid JSON"),
])
def test_corrupt_model_files_are_refused(pcm, tmp_path, mutate, match) -> None:
    _, model, _ = pcm
    path = tmp_path / "m.json"
    model.save(path)
    path.write_text(mutate(path.read_text()))
    with pytest.raises(ValueError, match=match):
        NoiseModel.load(path)


def test_fit_needs_every_table(pcm) -> None:
    _, _, data = pcm
    with pytest.raises(ValueError, match="lacks the 'faults' table"):
        NoiseModel().fit({k: v for k, v in data.items() if k != "faults"})
    broken = dict(data, retention=data["retention"].drop(columns="age_s"))
    with pytest.raises(ValueError, match="lacks column"):
        NoiseModel().fit(broken)


KILLED_RUN = """
import os, signal, sys
from pcm_hil.calibrate import CalibrationConfig, run_calibration
from pcm_hil.chip import Geometry
from pcm_hil.emulator import EmulatedChip
from pcm_hil.run_store import RunStore

stage_to_kill, at = sys.argv[2], float(sys.argv[3])

def progress(stage, done, total):
    if stage == stage_to_kill and done >= at:
        os.kill(os.getpid(), signal.SIGKILL)

with RunStore(sys.argv[1]) as store:
    run_calibration(EmulatedChip(Geometry(1, 64, 64), profile="pcm", seed=1), store, CalibrationConfig(cells=2000, checkpoint_s=0),
                    progress)
"""


def _killed_calibration(tmp_path, stage: str, at: float) -> tuple:
    db = tmp_path / "pcm-hil.sqlite"  # the command line's name, so `pcm-hil ... --run-dir tmp_path` finds it
    r = subprocess.run([sys.executable, "-c", KILLED_RUN, str(db), stage, str(at)], capture_output=True, timeout=120)
    assert r.returncode == -9, r.stderr.decode()[-2000:]
    with RunStore(db) as store:
        runs = store.runs()
        assert list(runs["status"]) == ["killed (resumable)"]  # status running, but no writer holds the lock
        return db, runs["run_id"].iloc[0]


@pytest.mark.slow
def test_a_killed_run_keeps_every_completed_batch_and_resumes(tmp_path) -> None:
    db, run_id = _killed_calibration(tmp_path, "retention", 2000)
    with RunStore(db) as store:
        assert len(store.read(run_id, "programming")) == 2000
        assert len(store.read(run_id, "window")) > 0 and len(store.read(run_id, "trace")) > 2000
        ret = store.read(run_id, "retention")
        assert sorted(ret["read_idx"].unique()) == [0, 1, 2, 3]  # t0, 60, 200, 600 s were read before the kill
        assert store.run(run_id)["settings"]["config"]["cells"] == 2000
        chip = EmulatedChip.load_state(store.chip_file(store.run(run_id)["settings"]["chip_id"]))
        before = chip.pulse_count[:2000].copy()
        _, model = run_calibration(chip, store, resume=run_id)
        assert store.run(run_id)["status"] == "done"
        ret = store.read(run_id, "retention")
        assert ret.groupby("read_idx").size().tolist() == [ret["cell"].nunique()] * 8  # each age read once
        assert len(store.read(run_id, "programming")) == 2000
        # nothing was programmed again: the only pulses after the kill are the fault stage's 22 per cell
        assert np.array_equal(chip.pulse_count[:2000] - before, np.full(2000, 2 + 20))
        assert model.drift_.nu_mean[-1] > 0


@pytest.mark.slow
def test_calibration_killed_during_program_and_verify_resumes_to_the_same_model(tmp_path) -> None:
    db, run_id = _killed_calibration(tmp_path, "program-and-verify", 1200)
    with RunStore(db) as store:
        from pcm_hil.checkpoint import TABLE

        ck = store.read(run_id, TABLE)
        verified = ck.sort_values("seq").drop_duplicates("cell", keep="last")
        verified = verified[verified["status"] == 1]["cell"].to_numpy()
        chip = EmulatedChip.load_state(store.chip_file(store.run(run_id)["settings"]["chip_id"]))
        before = chip.pulse_count.copy()
        with RunStore(db) as other:
            other.resume_run(run_id, "calibration")
            with pytest.raises(RunLocked, match="another process"):
                run_calibration(chip, store, resume=run_id)
        assert np.array_equal(chip.pulse_count, before)  # the refused writer sent nothing
        _, model = run_calibration(chip, store, resume=run_id)
        assert store.run(run_id)["status"] == "done"
    reference = run_calibration(EmulatedChip(Geometry(1, 64, 64), profile="pcm", seed=1), RunStore(tmp_path / "ref.sqlite"),
                                CalibrationConfig(cells=2000))[1]
    # cells verified before the kill were not pulsed again: their only new pulses are the fault stage's
    assert verified.size > 500
    assert np.array_equal(chip.pulse_count[verified] - before[verified], np.full(verified.size, 22))
    # per tolerance, σ pooled over the 8 levels (~330 cells; the per-group 42 cells scatter by
    # > 35 % between independent chips with the adaptive loop): SE ≈ 4–5 %, allow 4 of them
    sig, ref_sig = (np.sqrt(np.nanmean(m.programming_.sigma_us ** 2, axis=1)) for m in (model, reference))
    assert np.all(np.abs(sig - ref_sig) <= 0.2 * ref_sig)


@pytest.mark.slow
def test_store_resumes_a_calibration_killed_on_the_spot_then_stores(tmp_path, capsys) -> None:
    from pcm_hil import cli

    _, cal_run = _killed_calibration(tmp_path, "retention", 600)
    # the coded mask: one cell per pruned weight would not fit this 4,096-cell chip beside the calibration
    assert cli.main(["store", "--resume", cal_run, "--model", "mlp-digits", "--run-dir", str(tmp_path),
                     "--programmings", "1", "--medium-cells", "256", "--report", "none", "--json",
                     "--no-mask-in-cells"]) == 0
    out = json.loads(capsys.readouterr().out)
    with RunStore(tmp_path / "pcm-hil.sqlite") as store:
        assert store.run(cal_run)["status"] == "done"
        assert store.run(out["run_id"])["status"] == "done"
        assert store.run(out["run_id"])["settings"]["noise_model"]["run_id"] == cal_run
    assert out["accuracy_stored"] > out["accuracy_compressed"] - 0.05  # 75 % pruning of a tiny MLP costs more


def test_export_parquet_and_csv(pcm, tmp_path) -> None:
    chip = EmulatedChip(Geometry(1, 64, 64), profile="pcm", seed=2)
    with RunStore(tmp_path / "s.sqlite") as store:
        run_id, _ = run_calibration(chip, store, CalibrationConfig(cells=2000))
        files = store.export(run_id, tmp_path / "pq", "parquet")
        assert {p.name for p in files} >= {"run.json", "programming.parquet", "retention.parquet", "trace.parquet"}
        back = pd.read_parquet(tmp_path / "pq" / "programming.parquet")
        assert back.equals(store.read(run_id, "programming"))
        store.export(run_id, tmp_path / "csv", "csv")
        assert len(pd.read_csv(tmp_path / "csv" / "faults.csv")) == 2000
        with pytest.raises(ValueError, match="no run"):
            store.export("nope", tmp_path / "x")


def test_corrupted_store_is_refused(tmp_path) -> None:
    db = tmp_path / "s.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError, match="not a readable SQLite database"):
        RunStore(db)
