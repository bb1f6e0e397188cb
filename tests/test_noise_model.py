"""The NoiseModel's typed parts, file schema (v2 written, v1 read), validation and statistics (fast: no chip).

``data/noise-model-v1.json`` was written by the schema-1 code (a 600-cell calibration,
3 levels × 2 tolerances, cap 12); ``data/noise-model-v1-predictions.npz`` holds what that
code predicted from it.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pcm_hil.program import VerifyConfig
from pcm_hil_noisemodel import Faults, NoiseModel, Programming, Window, fit_faults, fit_window
from pcm_hil_noisemodel.stats import bootstrap_se, cell_slopes, chi2_per_dof_limit

DATA = Path(__file__).parent / "data"
V1 = DATA / "noise-model-v1.json"


@pytest.fixture(scope="module")
def v1() -> NoiseModel:
    return NoiseModel.load(V1)


def _predictions(m: NoiseModel) -> dict[str, np.ndarray]:
    """The same calls, in the same order, as produced the stored predictions."""
    t = np.linspace(0.5, 18.0, 7)
    res = {}
    for tol in m.tolerances_us_:
        tol = float(tol)
        res[f"sigma_{tol}"] = m.sigma(t, tol)
        res[f"sigma_n1_{tol}"] = m.sigma(t, tol, n_avg=1)
        res[f"offset_{tol}"] = m.offset(t, tol)
        res[f"aim_{tol}"] = m.aim(t, tol)
        for cap in (1, 5, int(m.max_pulses_)):
            res[f"pc_{tol}_{cap}"] = m.p_converged(t, tol, cap)
            res[f"ep_{tol}_{cap}"] = m.expected_pulses(t, tol, cap)
            res[f"esq_{tol}_{cap}"] = m.expected_sq_error(t, tol, cap)
            res[f"sqa_{tol}_{cap}"] = m.sq_error_after(t, tol, cap, 86400.0)
            res[f"sample_{tol}_{cap}"] = m.sample(np.repeat(t, 50), tol, cap, elapsed_s=86400.0, seed=5)
    res["read_sigma"] = m.read_sigma(t)
    res["nu_mean"] = m.nu_mean(t)
    res["nu_std"] = m.nu_std(t)
    return res


def _assert_same_predictions(m: NoiseModel, expected: dict[str, np.ndarray]) -> None:
    got = _predictions(m)
    assert got.keys() == set(expected)
    for k in got:  # to the last bits only: numpy's vectorized exp and log differ by an ulp between releases
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=k)


def test_a_version_1_file_loads_and_predicts_exactly_as_before(v1) -> None:
    assert json.loads(V1.read_text())["schema_version"] == 1
    _assert_same_predictions(v1, dict(np.load(DATA / "noise-model-v1-predictions.npz")))
    assert isinstance(v1.programming_, Programming) and v1.programming_.sigma_us.shape == (2, 3)
    # the verify settings come from the provenance, at the calibration's cap and averaging
    assert v1.verify_settings_["max_pulses"] == 12 and v1.verify_settings_["n_avg"] == 8
    assert v1.verify_settings_["reset_amplitude_v"] == 2.2


def test_save_writes_version_2_with_units_and_loads_equal(v1, tmp_path) -> None:
    path = tmp_path / "m.json"
    v1.save(path)
    d = json.loads(path.read_text())
    assert d["schema_version"] == 2
    assert d["units"]["programming"]["sigma_us"] == "µS" and d["units"]["drift"]["t0_s"] == "s"
    assert d["shapes"]["programming"]["pulse_pmf"] == ["tolerances", "levels", "pulses"]
    back = NoiseModel.load(path)
    assert back == v1
    _assert_same_predictions(back, _predictions(v1))


def test_equality_compares_every_array_value(v1) -> None:
    sigma = v1.programming_.sigma_us.copy()
    sigma[0, 0] += 1e-12
    other = NoiseModel.from_parts(v1.window_, dataclasses.replace(v1.programming_, sigma_us=sigma), v1.read_noise_,
                                  v1.drift_, v1.faults_, v1.verify_settings_, v1.provenance)
    assert other != v1 and other.programming_ != v1.programming_
    same = NoiseModel.from_parts(v1.window_, dataclasses.replace(v1.programming_), v1.read_noise_, v1.drift_,
                                 v1.faults_, v1.verify_settings_, v1.provenance)
    assert np.isnan(v1.programming_.failed_error_quantiles_us).any()  # NaN (not measured) compares equal
    assert same == v1
    assert NoiseModel.from_parts(v1.window_, v1.programming_, v1.read_noise_, v1.drift_, v1.faults_,
                                 {**v1.verify_settings_, "aim": 0.3}, v1.provenance) != v1


def test_parts_are_frozen_with_read_only_arrays_and_print_compactly(v1) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        v1.window_.g_sat_us = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        v1.programming_.sigma_us[0, 0] = 0.0
    text = repr(v1)
    assert "Programming(levels_us=[" in text and "failed_error_quantiles_us=<array (2, 3, 13, 11)>" in text
    assert len(text) < 4000


def _mutated(tmp_path: Path, part: str, key: str, value) -> Path:  # noqa: ANN001
    d = json.loads(V1.read_text())
    target = d[part] if part else d
    target[key] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    return path


@pytest.mark.parametrize("part,key,value,match", [
    ("programming", "sigma_fit", [{"coef": [float("nan"), 1.0, 0.0], "cov": np.eye(3).tolist(), "chi2_per_dof": 1.0}] * 2,
     "programming.sigma_coef must be finite"),
    ("programming", "sigma_us", [[0.3, -0.1, 0.9], [0.1, 1.0, 1.4]], r"programming.sigma_us must be >= 0.0 µS"),
    ("programming", "sigma_us", [[0.3, float("inf"), 0.9], [0.1, 1.0, 1.4]], "sigma_us must be finite or NaN"),
    ("programming", "sigma_us", [[0.3, 0.2], [0.1, 1.0]], "sigma_us has 2 levels, other fields have 3"),
    ("read_noise", "a", float("nan"), "read_noise.a must be finite"),
    ("window", "g_sat_us", "many", "window.g_sat_us must be numbers"),
    ("", "max_pulses", 20, "pulse counts, expected max_pulses"),
    ("drift", "nu_std", [0.01, 0.02], "drift.nu_std has 2 drift_levels"),
    ("", "units", {"conductance": "nS"}, "units"),
])
def test_invalid_values_are_refused_on_load_naming_the_field(tmp_path, part, key, value, match) -> None:
    with pytest.raises(ValueError, match=match):
        NoiseModel.load(_mutated(tmp_path, part, key, value))


def test_unknown_schema_or_version_is_refused_naming_what_is_read(v1, tmp_path) -> None:
    path = tmp_path / "m.json"
    v1.save(path)
    d = json.loads(path.read_text())
    path.write_text(json.dumps({**d, "schema_version": 3}))
    with pytest.raises(ValueError, match=r"schema version 3 is not supported \(this pcm-hil reads versions 1, 2"):
        NoiseModel.load(path)
    path.write_text(json.dumps({**d, "schema": "aihwkit/pcm"}))
    with pytest.raises(ValueError, match="not a noise model: schema 'aihwkit/pcm', expected 'pcm-hil/noise-model'"):
        NoiseModel.load(path)
    path.write_text(json.dumps({**d, "programming": {k: v for k, v in d["programming"].items() if k != "n"}}))
    with pytest.raises(ValueError, match="programming lacks field"):
        NoiseModel.load(path)
    path.write_text(json.dumps({**d, "verify_settings": {**d["verify_settings"], "n_avg": 4}}))
    with pytest.raises(ValueError, match="verify_settings n_avg is 4"):
        NoiseModel.load(path)


def test_verify_config_measured_with_the_model(v1) -> None:
    cfg = VerifyConfig.measured_with(v1)
    assert cfg == VerifyConfig(**v1.verify_settings_)
    assert cfg.max_pulses == 12 and cfg.n_avg == v1.n_avg_
    bare = NoiseModel.from_parts(v1.window_, v1.programming_, v1.read_noise_, v1.drift_, v1.faults_)
    assert VerifyConfig.measured_with(bare) == VerifyConfig(n_avg=v1.n_avg_)  # no record: the loop's defaults
    odd = NoiseModel.from_parts(v1.window_, v1.programming_, v1.read_noise_, v1.drift_, v1.faults_,
                                {"warp_factor": 9.0})
    with pytest.raises(ValueError, match="verify settings do not fit this loop"):
        VerifyConfig.measured_with(odd)


def test_summary_is_plain_json(v1) -> None:
    s = json.loads(json.dumps(v1.summary()))
    assert s["tolerances_us"] == [0.5, 2.0] and s["max_pulses"] == 12 and set(s["faults"]) == {"reset", "set", "random"}


def test_fit_functions_take_a_dataframe_and_return_a_part() -> None:
    w = fit_window(pd.DataFrame({"cell": range(5), "g_floor_us": [0.1, 0.2, 0.1, 0.3, 0.1],
                                 "g_sat_us": [20.0, 24.0, 25.0, 26.0, 30.0]}))
    assert w == Window(g_floor_us=0.1, g_sat_us=25.0, g_sat_spread=w.g_sat_spread, g_sat_us_se=w.g_sat_us_se)
    assert w.g_sat_spread == pytest.approx(np.std([20, 24, 25, 26, 30]) / 25)
    f = fit_faults(pd.DataFrame({"cell": range(4), "kind": ["none", "reset", "none", "set"]}))
    assert isinstance(f, Faults) and f.fractions == {"reset": 0.25, "set": 0.25, "random": 0.0} and f.cells == 4
    with pytest.raises(ValueError, match="table 'window' lacks column"):
        fit_window(pd.DataFrame({"cell": [1], "g_sat_us": [20.0]}))


# ---------------------------------------------------------------- statistics ------
def test_chi2_limit_is_the_chi2_quantile() -> None:
    for dof in (1, 4, 30):
        assert chi2_per_dof_limit(dof) * dof == pytest.approx(stats.chi2.ppf(0.999, dof))
        assert stats.chi2.sf(chi2_per_dof_limit(dof) * dof, dof) == pytest.approx(0.001)


def test_cell_slopes_match_linregress_per_cell() -> None:
    rng = np.random.default_rng(0)
    lt = np.log(np.array([1.0, 3.0, 10.0, 30.0, 100.0, 300.0]))[None, :] + rng.normal(0, 0.01, (5, 6))
    lg = 2.0 - 0.05 * lt + rng.normal(0, 0.02, lt.shape)
    slope, se = cell_slopes(lt, lg)
    for i in range(5):
        r = stats.linregress(lt[i], lg[i])
        assert slope[i] == pytest.approx(r.slope) and se[i] == pytest.approx(r.stderr)


def test_bootstrap_se_of_a_mean_is_the_standard_error() -> None:
    x = np.random.default_rng(1).normal(0, 2.0, 400)
    se = bootstrap_se(x, lambda v: float(np.mean(v)), n=400)
    assert se == pytest.approx(stats.sem(x), rel=0.15)
    assert bootstrap_se(x[:1], np.mean) != bootstrap_se(x[:1], np.mean)  # NaN: one value has no spread
