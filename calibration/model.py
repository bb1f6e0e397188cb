"""The fitted cell noise model of one chip.

``NoiseModel().fit(data)`` takes tidy DataFrames (see :data:`TABLES`), in the spirit of
scikit-learn, and returns itself; the fitted parts are attributes ending in ``_``, each a
typed dataclass of :mod:`.parts` with units, shapes and standard errors:
``window_`` (:class:`Window`), ``programming_`` (:class:`Programming`), ``read_noise_``
(:class:`ReadNoise`), ``drift_`` (:class:`Drift`), ``faults_`` (:class:`Faults`),
``response_`` (:class:`~.response.Response`, the programming response; None for a model
file written before calibration measured it), and ``verify_settings_``: the
program-and-verify settings the chip was measured with.
``save``/``load`` write JSON (schema version 2, with units and shapes) and read versions
2 and 1.

What it predicts, for a target G (µS), a verify tolerance (µS, one of the calibrated
ones) and a pulse cap (≤ the calibrated cap):

- ``p_converged``: probability that program-and-verify converges within the cap;
- ``expected_pulses``: mean SET pulses + RESETs spent;
- ``offset``/``sigma``: mean and spread of the error seen ``t0_s_`` after programming
  (reads averaged ``n_avg_`` times), for converged cells;
- drift: ν mean and spread vs level, with reference time ``t0_s_``; extra log-normal
  spread growing with ln(t/t0) (1/f noise);
- ``read_sigma``: per-read noise σ(G) = a·G + b, and the averaging exponent;
- ``sample``: realistic read-back values for targets, settings and elapsed time.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .parts import (FAULT_KINDS, OPTIONAL_TABLES, PARTS, TABLES, Drift, Faults, Programming, ReadNoise, Window,
                    fit_drift, fit_faults, fit_programming, fit_read_noise, fit_window)
from .response import Response
from .stats import chi2_per_dof_limit, poly_design

SCHEMA = "pcm-hil/noise-model"
SCHEMA_VERSION = 2
READS_VERSIONS = (1, 2)
V1_UNITS = {"conductance": "µS", "time": "s", "tolerance": "µS", "drift_exponent": "1", "pulses": "count"}

__all__ = ["NoiseModel", "SCHEMA", "SCHEMA_VERSION", "TABLES", "OPTIONAL_TABLES", "FAULT_KINDS"]


class NoiseModel:
    """Cell noise model fitted from pcm_hil_noisemodel measurements."""

    window_: Window
    programming_: Programming
    read_noise_: ReadNoise
    drift_: Drift
    faults_: Faults
    response_: Response | None

    def __init__(self) -> None:
        self.response_ = None
        self.provenance: dict[str, Any] = {}
        self.verify_settings_: dict[str, float] = {}
        self.fitted_ = False

    # ------------------------------------------------------------------ fitting ------
    def fit(self, data: dict[str, pd.DataFrame], provenance: dict[str, Any] | None = None,
            verify_settings: dict[str, float] | None = None, response: Response | None = None) -> "NoiseModel":
        """Fit every part from the calibration tables (dict name → DataFrame).

        ``provenance``: where the data came from (run id, chip id, settings); ``verify_settings``:
        the program-and-verify settings the level sweep ran with (name → value; units as
        the loop's own: V, s, µS, counts), kept as :attr:`verify_settings_`; ``response``: the
        programming response fitted from the ``response_*`` tables (:func:`~.response.fit_response`).
        A ``saturation`` table (optional) refines the window's saturation spread.
        """
        for name in TABLES:
            if name not in data:
                raise ValueError(f"calibration data lacks the {name!r} table")
        window = fit_window(data["window"], data.get("saturation"))
        programming = fit_programming(data["programming"], window.g_sat_us, data.get("trace"))
        provenance = dict(provenance or {})
        provenance.setdefault("fitted", time.strftime("%Y-%m-%dT%H:%M:%S"))
        return self._set(window, programming, fit_read_noise(data["read_noise"]),
                         fit_drift(data["retention"], programming.t0_s, window.g_sat_us), fit_faults(data["faults"]),
                         verify_settings or {}, provenance, response)

    @classmethod
    def from_parts(cls, window: Window, programming: Programming, read_noise: ReadNoise, drift: Drift,
                   faults: Faults, verify_settings: dict[str, float] | None = None,
                   provenance: dict[str, Any] | None = None, response: Response | None = None) -> "NoiseModel":
        """A fitted model from its parts (as :meth:`fit` would set them)."""
        return cls()._set(window, programming, read_noise, drift, faults, verify_settings or {}, provenance or {},
                          response)

    def _set(self, window: Window, programming: Programming, read_noise: ReadNoise, drift: Drift, faults: Faults,
             verify_settings: dict[str, float], provenance: dict[str, Any],
             response: Response | None = None) -> "NoiseModel":
        for part, cls in zip((window, programming, read_noise, drift, faults), PARTS.values()):
            if not isinstance(part, cls):
                raise TypeError(f"{cls.name} must be a {cls.__name__}, got {type(part).__name__}")
        if response is not None and not isinstance(response, Response):
            raise TypeError(f"response must be a Response, got {type(response).__name__}")
        self.response_ = response
        self.verify_settings_ = _checked_settings(verify_settings, programming.n_avg)
        try:  # as it reads back from JSON (tuples become lists), so that a saved model equals its load
            self.provenance = json.loads(json.dumps(provenance, allow_nan=True))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"provenance must be JSON-serializable: {exc}") from None
        if not isinstance(self.provenance, dict):
            raise ValueError("noise model provenance must be an object")
        self.window_, self.programming_, self.read_noise_, self.drift_, self.faults_ = (
            window, programming, read_noise, drift, faults)
        self.fitted_ = True
        return self

    # the programming part's axes and conditions, as the predictions take them
    @property
    def levels_us_(self) -> np.ndarray:
        """Calibrated target levels (µS), shape (levels,)."""
        return self.programming_.levels_us

    @property
    def tolerances_us_(self) -> np.ndarray:
        """Calibrated verify tolerances (µS), shape (tolerances,)."""
        return self.programming_.tolerances_us

    @property
    def max_pulses_(self) -> int:
        """Largest SET-pulse cap calibrated."""
        return self.programming_.max_pulses

    @property
    def n_avg_(self) -> int:
        """Reads averaged per read in the calibration (verify and t0 reads)."""
        return self.programming_.n_avg

    @property
    def t0_s_(self) -> float:
        """Delay (s) after programming at which the errors were read; drift reference time."""
        return self.programming_.t0_s

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NoiseModel):
            return NotImplemented
        if not (self.fitted_ and other.fitted_):
            return self.fitted_ == other.fitted_ and self.provenance == other.provenance
        return (all(getattr(self, f"{n}_") == getattr(other, f"{n}_") for n in PARTS)
                and self.response_ == other.response_ and self.verify_settings_ == other.verify_settings_ and self.provenance == other.provenance)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if not self.fitted_:
            return "NoiseModel(not fitted)"
        parts = ",\n  ".join(repr(getattr(self, f"{n}_")) for n in PARTS)
        return (f"NoiseModel(chip={self.provenance.get('chip_id')!r}, run={self.provenance.get('run_id')!r},\n  "
                f"{parts},\n  verify_settings={self.verify_settings_!r})")

    # -------------------------------------------------------------- prediction -------
    def _check_fitted(self) -> None:
        if not self.fitted_:
            raise ValueError("this NoiseModel is not fitted: call fit() or load()")

    def _tol_index(self, tolerance_us: float) -> int:
        for i, t in enumerate(self.tolerances_us_):
            if math.isclose(tolerance_us, t, rel_tol=1e-9, abs_tol=1e-12):
                return i
        raise ValueError(f"tolerance {tolerance_us} µS was not calibrated; calibrated: {self.tolerances_us_.tolist()}")

    def _check_cap(self, cap: int) -> int:
        if not isinstance(cap, (int, np.integer)) or not 1 <= cap <= self.max_pulses_:
            raise ValueError(f"max_pulses must be an integer in [1, {self.max_pulses_}], got {cap!r}")
        return int(cap)

    def _x(self, targets_us: Any) -> np.ndarray:
        t = np.asarray(targets_us, float)
        if not np.all(np.isfinite(t)):
            raise ValueError("targets must be finite")
        return t / self.window_.g_sat_us

    def _per_level(self, table: np.ndarray, targets_us: Any) -> np.ndarray:
        """Interpolate a per-level table linearly in G (constant beyond the calibrated range)."""
        return np.interp(np.asarray(targets_us, float), self.levels_us_, table)

    def p_converged(self, targets_us: Any, tolerance_us: float, max_pulses: int) -> np.ndarray:
        """Probability that the loop verifies within ``max_pulses`` SET pulses."""
        self._check_fitted()
        ti, cap = self._tol_index(tolerance_us), self._check_cap(max_pulses)
        return self._per_level(self.programming_.converged_cdf[ti, :, cap], targets_us)

    def expected_pulses(self, targets_us: Any, tolerance_us: float, max_pulses: int) -> np.ndarray:
        """Mean SET pulses + RESETs per cell when the loop stops at ``max_pulses`` SET pulses."""
        self._check_fitted()
        ti, cap = self._tol_index(tolerance_us), self._check_cap(max_pulses)
        pmf = self.programming_.pulse_pmf[ti]
        k = np.arange(pmf.shape[1])
        sets = (pmf * np.minimum(k, cap)).sum(axis=1)
        resets = self.programming_.resets_mean[ti] + 1.0  # the initial RESET counts
        return self._per_level(sets + resets, targets_us)

    def offset(self, targets_us: Any, tolerance_us: float) -> np.ndarray:
        """Mean error (µS) at t0 of converged cells."""
        self._check_fitted()
        return self._per_level(self.programming_.offset_us[self._tol_index(tolerance_us)], targets_us)

    def sigma(self, targets_us: Any, tolerance_us: float, n_avg: int | None = None,
              with_se: bool = False) -> Any:
        """σ (µS) of the error seen t0 after programming (converged cells): the smooth fit in
        G where the data accept it (χ² test, p = 0.001), else interpolated between the
        measured levels (loose windows: a target within the tolerance of the floor verifies
        after the RESET alone, so σ jumps there)."""
        self._check_fitted()
        ti = self._tol_index(tolerance_us)
        p = self.programming_
        coef, cov = p.sigma_coef[ti], p.sigma_cov[ti]
        shape = np.shape(targets_us)
        t = np.atleast_1d(np.asarray(targets_us, float))
        x = self._x(t)
        measured = p.sigma_us[ti]
        smooth = p.sigma_chi2_per_dof[ti] <= chi2_per_dof_limit(len(self.levels_us_) - len(coef))
        if smooth or not np.isfinite(measured).all():
            g_sat = self.window_.g_sat_us
            x = np.clip(x, self.levels_us_[0] / g_sat, self.levels_us_[-1] / g_sat)
            X = poly_design(x, len(coef) - 1)
            s = np.maximum(X @ coef, 1e-3)
            se = np.sqrt(np.einsum("ij,jk,ik->i", X, cov, X))
        else:
            s = self._per_level(measured, t)
            se = self._per_level(p.sigma_us_se[ti], t)
        if n_avg is not None and n_avg != self.n_avg_:
            w = self.read_sigma(targets_us)
            k = self.read_noise_.averaging_exponent
            s = np.sqrt(np.maximum(s ** 2 - (w * self.n_avg_ ** -k) ** 2 + (w * n_avg ** -k) ** 2, 1e-6))
        if with_se:
            return s.reshape(shape), se.reshape(shape)
        return s.reshape(shape)

    def aim(self, targets_us: Any, tolerance_us: float) -> np.ndarray:
        """Where to point the loop (µS) so that verified cells land on ``targets_us`` on average.

        The loop approaches from below and stops on entering the window, so verified cells
        sit ``offset`` (< 0, about −tol/2 for loose windows) off their aim; the aim a solves
        a + offset(a) = target on the calibrated levels (linear in between), within the
        calibrated range of levels.
        """
        self._check_fitted()
        t = np.asarray(targets_us, float)
        self._x(t)  # refuses non-finite targets
        lv = self.levels_us_
        off = np.nan_to_num(self.programming_.offset_us[self._tol_index(tolerance_us)])
        landing = np.maximum.accumulate(lv + off)
        # invert aim → mean landing on the calibrated levels (the offset changes with the level)
        a = np.interp(t, landing, lv)
        return np.clip(a, self.window_.g_floor_us, lv[-1])

    def expected_sq_error(self, targets_us: Any, tolerance_us: float, max_pulses: int,
                          aim_us: Any = None) -> np.ndarray:
        """E[error²] (µS²) at t0 over all cells, converged (offset² + σ²) or stopped by the cap.

        ``aim_us``: where the loop was pointed (default: at the target); the error is still
        counted from ``targets_us``.
        """
        self._check_fitted()
        ti, cap = self._tol_index(tolerance_us), self._check_cap(max_pulses)
        t = np.asarray(targets_us, float)
        a = t if aim_us is None else np.asarray(aim_us, float)
        shift = a - t
        p = self.p_converged(a, tolerance_us, cap)
        conv = (shift + self.offset(a, tolerance_us)) ** 2 + self.sigma(a, tolerance_us) ** 2
        # failed cells: errors from the aim, per level (none measured: the cell sits at the floor)
        q = self.programming_.failed_error_quantiles_us[ti, :, cap]
        finite = np.isfinite(q).all(axis=1)
        lv = self.levels_us_
        m1 = np.where(finite, np.mean(np.where(np.isfinite(q), q, 0.0), axis=1), -lv)
        m2 = np.where(finite, np.mean(np.where(np.isfinite(q), q, 0.0) ** 2, axis=1), lv ** 2)
        fail = self._per_level(m2, a) + 2 * shift * self._per_level(m1, a) + shift ** 2
        return p * conv + (1 - p) * fail

    def sq_error_after(self, targets_us: Any, tolerance_us: float, max_pulses: int, elapsed_s: float) -> np.ndarray:
        """E[error²] (µS², in units of the programmed level) ``elapsed_s`` after programming:
        the t0 error plus the spread that drift and 1/f noise add (a global drift factor is
        assumed compensated)."""
        t = np.asarray(targets_us, float)
        ell = math.log(max(elapsed_s, self.t0_s_) / self.t0_s_)
        return self.expected_sq_error(t, tolerance_us, max_pulses) + t ** 2 * (self.nu_std(t) ** 2 * ell ** 2
                                                                                + self._growth(t) * ell)

    def read_sigma(self, g_us: Any) -> np.ndarray:
        """Per-read white-noise σ (µS) at conductance G (µS)."""
        self._check_fitted()
        return self.read_noise_.a * np.asarray(g_us, float) + self.read_noise_.b_us

    def nu_mean(self, targets_us: Any) -> np.ndarray:
        """Mean drift exponent ν at the programmed level (µS)."""
        self._check_fitted()
        return np.interp(np.asarray(targets_us, float), self.drift_.levels_us, self.drift_.nu_mean)

    def nu_std(self, targets_us: Any) -> np.ndarray:
        """Spread of ν over cells at the programmed level (µS)."""
        self._check_fitted()
        return np.interp(np.asarray(targets_us, float), self.drift_.levels_us, self.drift_.nu_std)

    def _growth(self, targets_us: np.ndarray) -> np.ndarray:
        """Variance of ln G added per unit ln(t/t0) (1/f noise) at the programmed level (µS)."""
        return np.interp(targets_us, self.drift_.levels_us, self.drift_.growth_per_ln_t)

    def sample(self, targets_us: Any, tolerance_us: float, max_pulses: int, elapsed_s: float | None = None,
               n_avg: int | None = None, seed: int | np.random.Generator | None = None,
               return_converged: bool = False, stuck_hold: bool = False) -> Any:
        """Draw read-back conductances (µS) for cells programmed to ``targets_us``.

        ``elapsed_s``: time since programming (default t0); ``n_avg``: reads averaged per
        read-back (default: as calibrated). Cells that do not converge within the cap get
        errors drawn from the measured failures. ``return_converged``: also return which
        cells verified, (reads, converged), as program-and-verify reports them.
        ``stuck_hold``: a cell that did not verify is a stuck cell with the probability the
        calibration measured (all stuck kinds over the failure rate of its level and
        setting, at most 1), and a stuck cell holds its value: it neither drifts nor gathers
        1/f noise, so the drift compensation at read time scales it away from where it sits.
        """
        self._check_fitted()
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        t = np.asarray(targets_us, float)
        elapsed = self.t0_s_ if elapsed_s is None else float(elapsed_s)
        if not (math.isfinite(elapsed) and elapsed >= 0):
            raise ValueError(f"elapsed_s must be a finite number >= 0, got {elapsed_s!r}")
        ti = self._tol_index(tolerance_us)
        conv = rng.random(t.shape) < self.p_converged(t, tolerance_us, max_pulses)
        g = t + self.offset(t, tolerance_us) + self.sigma(t, tolerance_us, n_avg) * rng.standard_normal(t.shape)
        fq = self.programming_.failed_error_quantiles_us[ti, :, self._check_cap(max_pulses)]
        if (~conv).any():
            lv = np.abs(np.subtract.outer(t[~conv], self.levels_us_)).argmin(axis=1)
            q = fq[lv]
            u = rng.random(lv.size) * 10
            lo = np.floor(u).astype(int)
            err = np.where(np.isfinite(q[:, 0]),
                           q[np.arange(lv.size), lo] + (u - lo) * (q[np.arange(lv.size), np.minimum(lo + 1, 10)]
                                                                   - q[np.arange(lv.size), lo]),
                           -t[~conv])  # no failures measured there: a failed cell sits near the floor
            g[~conv] = t[~conv] + np.nan_to_num(err)
        ell = math.log(max(elapsed, self.t0_s_) / self.t0_s_)
        if ell > 0:
            nu = np.abs(self.nu_mean(t) + self.nu_std(t) * rng.standard_normal(t.shape))
            held = g.copy() if stuck_hold else None
            g = g * np.exp(-nu * ell + np.sqrt(self._growth(t) * ell) * rng.standard_normal(t.shape))
            if held is not None and (~conv).any():  # drawn after the rest: the other draws are unchanged
                fail = 1.0 - self.p_converged(t[~conv], tolerance_us, max_pulses)
                stuck_rate = sum(self.faults_.fractions.values())
                stuck = rng.random(fail.size) < np.minimum(1.0, stuck_rate / np.maximum(fail, 1e-12))
                idx = np.flatnonzero(~conv)[stuck]
                g[idx] = held[idx]
        return (g, conv) if return_converged else g

    # --------------------------------------------------------------------- I/O --------
    def to_dict(self) -> dict[str, Any]:
        """The schema-2 document: every part with its units and shapes, the verify settings, provenance."""
        self._check_fitted()
        return {
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "units": {n: p.units() for n, p in PARTS.items()},
            "shapes": {n: p.shapes() for n, p in PARTS.items()},
            "provenance": self.provenance, "verify_settings": self.verify_settings_,
            **{n: getattr(self, f"{n}_").to_dict() for n in PARTS},
            **({"response": self.response_.to_dict(), "response_units": Response.units()}
               if self.response_ is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Any) -> "NoiseModel":
        """Read a schema-2 or schema-1 document; refuses anything else, naming what is wrong."""
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            found = d.get("schema") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"not a noise model: schema {found!r}, expected {SCHEMA!r} "
                             f"(versions {', '.join(map(str, READS_VERSIONS))})")
        version = d.get("schema_version")
        if version == 1:
            d = _from_v1(d)
        elif version != SCHEMA_VERSION:
            raise ValueError(f"noise model schema version {version!r} is not supported "
                             f"(this pcm-hil reads versions {', '.join(map(str, READS_VERSIONS))} of {SCHEMA!r})")
        missing = [k for k in ("provenance", "verify_settings", "units", *PARTS) if k not in d]
        if missing:
            raise ValueError(f"noise model lacks field(s): {', '.join(missing)}")
        units = d["units"] if isinstance(d["units"], dict) else {}
        for name, part in PARTS.items():
            if units.get(name) != part.units():
                raise ValueError(f"noise model units of {name!r} are {units.get(name)!r}, "
                                 f"this pcm-hil writes {part.units()!r}")
        response = None
        if d.get("response") is not None:  # optional: files written before calibration measured it lack it
            if d.get("response_units") != Response.units():
                raise ValueError(f"noise model units of 'response' are {d.get('response_units')!r}, "
                                 f"this pcm-hil writes {Response.units()!r}")
            response = Response.from_dict(d["response"])
        return cls.from_parts(*(PARTS[n].from_dict(d[n]) for n in PARTS), verify_settings=d["verify_settings"],
                              provenance=d["provenance"], response=response)

    def save(self, path: str | Path) -> None:
        """Write JSON atomically (a temporary file renamed into place); NaN marks what was not measured."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=True) + "\n", encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "NoiseModel":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read noise model {path}: {exc}") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"noise model {path} is not valid JSON (truncated or corrupted?): {exc}") from None
        try:
            return cls.from_dict(d)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"noise model {path}: {exc}") from None

    def summary(self) -> dict[str, Any]:
        """The headline numbers, for tables and --json."""
        self._check_fitted()
        rn = self.read_noise_
        return {
            "g_sat_us": self.window_.g_sat_us, "levels": len(self.levels_us_),
            "tolerances_us": self.tolerances_us_.tolist(), "max_pulses": self.max_pulses_,
            "read_noise_a": rn.a, "read_noise_b_us": rn.b_us, "averaging_exponent": rn.averaging_exponent,
            "nu_mean_range": [float(self.drift_.nu_mean.min()), float(self.drift_.nu_mean.max())],
            "faults": self.faults_.fractions,
            **({"response": {k: getattr(self.response_, k) for k in (
                "reset_amplitude_v", "threshold_v", "threshold_p90_v", "set_max_v", "step_ref_us",
                "step_saturation_us")}} if self.response_ is not None else {}),
        }


def _checked_settings(settings: Any, n_avg: int) -> dict[str, float]:
    """The verify settings as a plain name → number dict; their n_avg must be the model's."""
    if not isinstance(settings, dict):
        raise ValueError(f"verify_settings must be an object of name → number, got {type(settings).__name__}")
    out = {}
    for k, v in settings.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"verify_settings[{k!r}] must be a finite number, got {v!r}")
        out[k] = v
    if out.get("n_avg", n_avg) != n_avg:
        raise ValueError(f"verify_settings n_avg is {out['n_avg']}, but the programming reads averaged {n_avg}")
    return out


def _from_v1(d: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 document (parts as dicts, the programming axes at the top level, the verify
    settings only inside the provenance) rewritten as schema 2."""
    missing = [k for k in ("provenance", "window", "levels_us", "tolerances_us", "max_pulses", "n_avg", "t0_s",
                           "programming", "read_noise", "drift", "faults") if k not in d]
    if missing:
        raise ValueError(f"noise model lacks field(s): {', '.join(missing)}")
    if d.get("units") != V1_UNITS:
        raise ValueError(f"noise model (version 1) units are {d.get('units')!r}, expected {V1_UNITS!r}")
    try:
        prog = dict(d["programming"])
        fits = prog.pop("sigma_fit")
        prog.update(levels_us=d["levels_us"], tolerances_us=d["tolerances_us"], max_pulses=d["max_pulses"],
                    n_avg=d["n_avg"], t0_s=d["t0_s"], sigma_coef=[f["coef"] for f in fits],
                    sigma_cov=[f["cov"] for f in fits], sigma_chi2_per_dof=[f["chi2_per_dof"] for f in fits])
        drift = dict(d["drift"])
        line = drift.pop("nu_mean_vs_ln_x")
        drift.update(nu_slope=line["slope"], nu_intercept=line["intercept"], nu_slope_se=line["slope_se"],
                     nu_intercept_se=line["intercept_se"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"noise model (version 1) has a malformed programming or drift part: {exc!r}") from None
    config = d["provenance"].get("config") if isinstance(d["provenance"], dict) else None
    verify: dict[str, Any] = {}
    if isinstance(config, dict) and isinstance(config.get("verify"), dict):
        # the sweep ran with the configured verify settings at the calibration's cap and averaging
        verify = {**config["verify"], **{k: config[k] for k in ("max_pulses", "n_avg") if k in config}}
    return {**d, "schema_version": SCHEMA_VERSION, "units": {n: p.units() for n, p in PARTS.items()},
            "verify_settings": verify, "programming": prog, "drift": drift}
