"""The fitted cell noise model of one chip.

``NoiseModel().fit(data)`` takes tidy DataFrames (see :data:`TABLES`), in the spirit of
scikit-learn: fitted parameters are attributes ending in ``_``, each with its standard
error; ``save``/``load`` write JSON with units, a schema version and provenance.

What it predicts, for a target G (µS), a verify tolerance (µS, one of the calibrated
ones) and a pulse cap (≤ the calibrated cap):

- ``p_converged``: probability that program-and-verify converges within the cap;
- ``expected_pulses``: mean SET pulses + RESETs spent;
- ``offset``/``sigma``: mean and spread of the error seen ``t0_s`` after programming
  (reads averaged ``n_avg_`` times), for converged cells;
- drift: ν mean and spread vs level, with reference time ``t0_s``; extra log-normal
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
from scipy import stats

from .stats import bootstrap_se, cell_slopes, chi2_per_dof_limit, poly_design, sigma_se, wls

SCHEMA = "pcm-hil/noise-model"
SCHEMA_VERSION = 1
TABLES = {
    "window": ["cell", "g_floor_us", "g_sat_us"],
    "programming": ["cell", "level_us", "tolerance_us", "pulses", "resets", "converged", "g_t0_us", "age_s", "n_avg"],
    "read_noise": ["cell", "level_us", "n_avg", "rep", "g_us"],
    "retention": ["cell", "level_us", "read_idx", "age_s", "g_us", "n_avg"],
    "faults": ["cell", "kind"],
}
OPTIONAL_TABLES = {"trace": ["cell", "iteration", "event", "value"]}
UNITS = {"conductance": "µS", "time": "s", "tolerance": "µS", "drift_exponent": "1", "pulses": "count"}
FAULT_KINDS = ("reset", "set", "random")
SIGMA_DEGREE = 3


class NoiseModel:
    """Cell noise model fitted from pcm_hil_noisemodel measurements."""

    def __init__(self) -> None:
        self.provenance: dict[str, Any] = {}
        self.fitted_ = False

    # ------------------------------------------------------------------ fitting ------
    def fit(self, data: dict[str, pd.DataFrame], provenance: dict[str, Any] | None = None) -> "NoiseModel":
        """Fit every part of the model from the calibration tables (dict name → DataFrame)."""
        for name, cols in TABLES.items():
            if name not in data:
                raise ValueError(f"calibration data lacks the {name!r} table")
            missing = [c for c in cols if c not in data[name].columns]
            if missing:
                raise ValueError(f"table {name!r} lacks column(s): {', '.join(missing)}")
            if data[name].empty:
                raise ValueError(f"table {name!r} is empty")
        self.provenance = dict(provenance or {})
        self.provenance.setdefault("fitted", time.strftime("%Y-%m-%dT%H:%M:%S"))
        self._fit_window(data["window"])
        trace = data.get("trace")
        if trace is not None and any(c not in trace.columns for c in OPTIONAL_TABLES["trace"]):
            raise ValueError(f"table 'trace' needs columns {OPTIONAL_TABLES['trace']}")
        self._fit_programming(data["programming"], trace)
        self._fit_read_noise(data["read_noise"])
        self._fit_drift(data["retention"])
        self._fit_faults(data["faults"])
        self.fitted_ = True
        return self

    def _fit_window(self, df: pd.DataFrame) -> None:
        sat = df["g_sat_us"].to_numpy(float)
        self.window_ = {"g_floor_us": float(np.median(df["g_floor_us"])), "g_sat_us": float(np.median(sat)),
                        "g_sat_spread": float(np.std(sat) / np.median(sat)),
                        "g_sat_us_se": float(math.sqrt(math.pi / 2) * np.std(sat) / math.sqrt(len(sat)))}  # SE of a median

    @staticmethod
    def _after_each_pulse(trace: pd.DataFrame, cells: np.ndarray, cap: int) -> np.ndarray:
        """Verify read after the k-th SET pulse of each cell (rows: cells, columns k = 1..cap)."""
        out = np.full((cells.size, cap + 1), np.nan)
        sets = trace[trace["event"] == "set"].sort_values(["cell", "iteration"])
        if sets.empty:
            return out
        k = sets.groupby("cell").cumcount().to_numpy() + 1
        reads = trace[trace["event"] == "read"].set_index(["cell", "iteration"])["value"]
        key = pd.MultiIndex.from_arrays([sets["cell"].to_numpy(), sets["iteration"].to_numpy() + 1])
        after = reads.reindex(key).to_numpy()
        row = pd.Index(cells).get_indexer(sets["cell"].to_numpy())
        keep = (row >= 0) & (k <= cap)
        out[row[keep], k[keep]] = after[keep]
        return out

    def _fit_programming(self, df: pd.DataFrame, trace: pd.DataFrame | None = None) -> None:
        levels = np.sort(df["level_us"].unique())
        tols = np.sort(df["tolerance_us"].unique())
        if levels.size < 2:
            raise ValueError("programming data need at least two target levels")
        self.levels_us_ = levels.tolist()
        self.tolerances_us_ = tols.tolist()
        self.n_avg_ = int(df["n_avg"].iloc[0])
        self.t0_s_ = float(np.median(df["age_s"]))
        cap = int(df["pulses"].max())
        self.max_pulses_ = cap
        T, L = tols.size, levels.size
        shape = (T, L)
        offset, offset_se, sigma, sig_se, n = (np.full(shape, np.nan) for _ in range(5))
        resets = np.zeros(shape)
        pmf = np.zeros((T, L, cap + 1))
        conv_cdf = np.zeros((T, L, cap + 1))
        failed_q = np.full((T, L, cap + 1, 11), np.nan)
        after = self._after_each_pulse(trace, df["cell"].to_numpy(), cap) if trace is not None else None
        qs = np.linspace(0, 1, 11)
        for (ti, t), (li, lv) in ((a, b) for a in enumerate(tols) for b in enumerate(levels)):
            g = df[(df["tolerance_us"] == t) & (df["level_us"] == lv)]
            if g.empty:
                raise ValueError(f"no cells at level {lv} µS, tolerance {t} µS")
            pulses = g["pulses"].to_numpy(int)
            conv = g["converged"].to_numpy(bool)
            err = g["g_t0_us"].to_numpy(float) - lv
            n[ti, li] = len(g)
            pmf[ti, li] = np.bincount(pulses, minlength=cap + 1)[: cap + 1] / len(g)
            conv_cdf[ti, li] = np.cumsum(np.bincount(pulses[conv], minlength=cap + 1)[: cap + 1]) / len(g)
            resets[ti, li] = g["resets"].mean()
            ok = err[conv]
            if ok.size >= 3:
                offset[ti, li], offset_se[ti, li] = ok.mean(), stats.sem(ok)
                sigma[ti, li] = ok.std(ddof=1)
                sig_se[ti, li] = sigma_se(sigma[ti, li], ok.size)
            # errors of the cells that a cap c stops unconverged: still running at c (their
            # state after the c-th pulse, from the trace) or failed earlier (final error)
            rows = np.flatnonzero(((df["tolerance_us"] == t) & (df["level_us"] == lv)).to_numpy())
            for c in range(1, cap + 1):
                running = pulses > c
                stopped = ~conv & (pulses <= c)
                e = err[stopped]
                if after is not None and running.any():
                    e = np.concatenate([e, after[rows[running], c] - lv])
                elif running.any():
                    e = np.concatenate([e, err[running & ~conv]])
                e = e[np.isfinite(e)]
                if e.size >= 3:
                    failed_q[ti, li, c] = np.quantile(e, qs)
        # smooth σ(x) per tolerance with a weighted cubic in x (4 parameters on ≥ 8 levels)
        x = levels / self.window_["g_sat_us"]
        deg = min(SIGMA_DEGREE, L - 1)
        sigma_fit = []
        for ti in range(T):
            good = np.isfinite(sigma[ti])
            fit = wls(poly_design(x[good], deg), sigma[ti, good], sig_se[ti, good])
            sigma_fit.append({"coef": fit.coef.tolist(), "cov": fit.cov.tolist(), "chi2_per_dof": fit.chi2_per_dof})
        self.programming_ = {
            "n": n.tolist(), "offset_us": offset.tolist(), "offset_us_se": offset_se.tolist(),
            "sigma_us": sigma.tolist(), "sigma_us_se": sig_se.tolist(), "sigma_fit": sigma_fit,
            "pulse_pmf": pmf.tolist(), "converged_cdf": conv_cdf.tolist(), "resets_mean": resets.tolist(),
            "failed_error_quantiles_us": failed_q.tolist(),
        }

    def _fit_read_noise(self, df: pd.DataFrame) -> None:
        one = df[df["n_avg"] == 1]
        if one.empty:
            raise ValueError("read-noise data need reads with n_avg = 1")
        per_cell = []
        for n_avg, part in df.groupby("n_avg"):
            wide = part.pivot_table(index="cell", columns="rep", values="g_us").to_numpy(float)
            # successive differences remove what changes slowly (drift, 1/f): white noise only
            s = np.std(np.diff(wide, axis=1), axis=1, ddof=1) / math.sqrt(2.0)
            per_cell.append(pd.DataFrame({"n_avg": n_avg, "g": wide.mean(axis=1), "sigma": s}))
        cells = pd.concat(per_cell, ignore_index=True)
        c1 = cells[cells["n_avg"] == 1]
        fit = wls(poly_design(c1["g"].to_numpy(), 1), c1["sigma"].to_numpy())
        b, a = fit.coef
        result = {"a": float(a), "b_us": float(b), "a_se": float(fit.se[1]), "b_us_se": float(fit.se[0]),
                  "averaging_exponent": 0.5, "averaging_exponent_se": float("nan"), "averaging_n": 1}
        multi = cells[cells["n_avg"] > 1]
        if not multi.empty:
            n = int(multi["n_avg"].max())
            sn = multi[multi["n_avg"] == n]
            pred1 = fit.predict(poly_design(sn["g"].to_numpy(), 1))
            ratios = sn["sigma"].to_numpy() / pred1
            k = lambda r: -math.log(max(float(np.mean(r)), 1e-12)) / math.log(n)  # noqa: E731
            result.update(averaging_exponent=k(ratios), averaging_exponent_se=bootstrap_se(ratios, k),
                          averaging_n=n)
        self.read_noise_ = result

    def _fit_drift(self, df: pd.DataFrame) -> None:
        t0 = self.t0_s_
        levels, mean, mean_se, std, std_se, growth, growth_se = [], [], [], [], [], [], []
        for lv, part in df.groupby("level_us"):
            wide_g = part.pivot_table(index="cell", columns="read_idx", values="g_us")
            ages = part.pivot_table(index="cell", columns="read_idx", values="age_s")
            ok = np.all(wide_g.to_numpy() > 0, axis=1) & np.all(np.isfinite(wide_g.to_numpy()), axis=1)
            if ok.sum() < 10 or wide_g.shape[1] < 3:
                continue
            lg = np.log(wide_g.to_numpy()[ok])
            lt = np.log(ages.to_numpy()[ok] / t0)
            slope, se = cell_slopes(lt, lg)
            nu = -slope
            var_nu = max(float(np.var(nu, ddof=1) - np.mean(se ** 2)), 0.0)
            levels.append(float(lv))
            mean.append(float(nu.mean()))
            mean_se.append(float(stats.sem(nu)))
            s = math.sqrt(var_nu)
            std.append(s)
            std_se.append(float(np.var(nu, ddof=1) * math.sqrt(2 / (nu.size - 1)) / (2 * max(s, 1e-6))))
            # spread of ln G across cells: V(ℓ) = V0 + σ_ν²ℓ² + γℓ; γ is the 1/f growth per unit ln t
            ell = lt.mean(axis=0)
            v = np.var(lg, axis=0, ddof=1)
            later = ell > 0.05
            excess = v[later] - v[0] - var_nu * ell[later] ** 2
            gam = float(np.sum(excess * ell[later]) / np.sum(ell[later] ** 2)) if later.any() else 0.0
            growth.append(max(gam, 0.0))
            growth_se.append(float(np.std(excess / ell[later], ddof=1) / math.sqrt(later.sum())) if later.sum() > 1
                             else float("nan"))
        if len(levels) < 2:
            raise ValueError("retention data need at least two levels with ≥10 cells and ≥3 read times")
        lx = np.log(np.asarray(levels) / self.window_["g_sat_us"])
        mfit = wls(poly_design(lx, 1), np.asarray(mean), np.asarray(mean_se))
        self.drift_ = {
            "t0_s": t0, "levels_us": levels, "nu_mean": mean, "nu_mean_se": mean_se, "nu_std": std,
            "nu_std_se": std_se, "growth_per_ln_t": growth, "growth_per_ln_t_se": growth_se,
            "nu_mean_vs_ln_x": {"slope": float(mfit.coef[1]), "intercept": float(mfit.coef[0]),
                                "slope_se": float(mfit.se[1]), "intercept_se": float(mfit.se[0])},
        }

    def _fit_faults(self, df: pd.DataFrame) -> None:
        n = len(df)
        out: dict[str, Any] = {"cells": n}
        for kind in FAULT_KINDS:
            f = float((df["kind"] == kind).mean())
            out[kind] = f
            out[f"{kind}_se"] = math.sqrt(max(f * (1 - f), 1.0 / n) / n)
        self.faults_ = out

    # -------------------------------------------------------------- prediction -------
    def _check_fitted(self) -> None:
        if not self.fitted_:
            raise ValueError("this NoiseModel is not fitted: call fit() or load()")

    def _tol_index(self, tolerance_us: float) -> int:
        for i, t in enumerate(self.tolerances_us_):
            if math.isclose(tolerance_us, t, rel_tol=1e-9, abs_tol=1e-12):
                return i
        raise ValueError(f"tolerance {tolerance_us} µS was not calibrated; calibrated: {self.tolerances_us_}")

    def _check_cap(self, cap: int) -> int:
        if not isinstance(cap, (int, np.integer)) or not 1 <= cap <= self.max_pulses_:
            raise ValueError(f"max_pulses must be an integer in [1, {self.max_pulses_}], got {cap!r}")
        return int(cap)

    def _x(self, targets_us: Any) -> np.ndarray:
        t = np.asarray(targets_us, float)
        if not np.all(np.isfinite(t)):
            raise ValueError("targets must be finite")
        return t / self.window_["g_sat_us"]

    def _per_level(self, table: np.ndarray, targets_us: Any) -> np.ndarray:
        """Interpolate a per-level table linearly in G (constant beyond the calibrated range)."""
        return np.interp(np.asarray(targets_us, float), self.levels_us_, table)

    def p_converged(self, targets_us: Any, tolerance_us: float, max_pulses: int) -> np.ndarray:
        self._check_fitted()
        ti, cap = self._tol_index(tolerance_us), self._check_cap(max_pulses)
        cdf = np.asarray(self.programming_["converged_cdf"])[ti, :, cap]
        return self._per_level(cdf, targets_us)

    def expected_pulses(self, targets_us: Any, tolerance_us: float, max_pulses: int) -> np.ndarray:
        """Mean SET pulses + RESETs per cell when the loop stops at ``max_pulses`` SET pulses."""
        self._check_fitted()
        ti, cap = self._tol_index(tolerance_us), self._check_cap(max_pulses)
        pmf = np.asarray(self.programming_["pulse_pmf"])[ti]
        k = np.arange(pmf.shape[1])
        sets = (pmf * np.minimum(k, cap)).sum(axis=1)
        resets = np.asarray(self.programming_["resets_mean"])[ti] + 1.0  # the initial RESET counts
        return self._per_level(sets + resets, targets_us)

    def offset(self, targets_us: Any, tolerance_us: float) -> np.ndarray:
        self._check_fitted()
        return self._per_level(np.asarray(self.programming_["offset_us"])[self._tol_index(tolerance_us)], targets_us)

    def sigma(self, targets_us: Any, tolerance_us: float, n_avg: int | None = None,
              with_se: bool = False) -> Any:
        """σ (µS) of the error seen t0 after programming (converged cells): the smooth fit in
        G where the data accept it (χ² test, p = 0.001), else interpolated between the
        measured levels (loose windows: a target within the tolerance of the floor verifies
        after the RESET alone, so σ jumps there)."""
        self._check_fitted()
        ti = self._tol_index(tolerance_us)
        fit = self.programming_["sigma_fit"][ti]
        shape = np.shape(targets_us)
        t = np.atleast_1d(np.asarray(targets_us, float))
        x = self._x(t)
        measured = np.asarray(self.programming_["sigma_us"][ti], float)
        smooth = fit["chi2_per_dof"] <= chi2_per_dof_limit(len(self.levels_us_) - len(fit["coef"]))
        if smooth or not np.isfinite(measured).all():
            x = np.clip(x, self.levels_us_[0] / self.window_["g_sat_us"], self.levels_us_[-1] / self.window_["g_sat_us"])
            X = poly_design(x, len(fit["coef"]) - 1)
            s = np.maximum(X @ np.asarray(fit["coef"]), 1e-3)
            se = np.sqrt(np.einsum("ij,jk,ik->i", X, np.asarray(fit["cov"]), X))
        else:
            s = self._per_level(measured, t)
            se = self._per_level(np.asarray(self.programming_["sigma_us_se"][ti], float), t)
        if n_avg is not None and n_avg != self.n_avg_:
            w = self.read_sigma(targets_us)
            k = self.read_noise_["averaging_exponent"]
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
        lv = np.asarray(self.levels_us_)
        off = np.nan_to_num(np.asarray(self.programming_["offset_us"], float)[self._tol_index(tolerance_us)])
        landing = np.maximum.accumulate(lv + off)
        # invert aim → mean landing on the calibrated levels (the offset changes with the level)
        a = np.interp(t, landing, lv)
        return np.clip(a, self.window_["g_floor_us"], lv[-1])

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
        q = np.asarray(self.programming_["failed_error_quantiles_us"])[ti, :, cap]
        finite = np.isfinite(q).all(axis=1)
        lv = np.asarray(self.levels_us_)
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
        gam = np.interp(t, self.drift_["levels_us"], self.drift_["growth_per_ln_t"])
        return self.expected_sq_error(t, tolerance_us, max_pulses) + t ** 2 * (self.nu_std(t) ** 2 * ell ** 2 + gam * ell)

    def read_sigma(self, g_us: Any) -> np.ndarray:
        """Per-read white-noise σ (µS) at conductance G (µS)."""
        self._check_fitted()
        return self.read_noise_["a"] * np.asarray(g_us, float) + self.read_noise_["b_us"]

    def nu_mean(self, targets_us: Any) -> np.ndarray:
        self._check_fitted()
        return np.interp(np.asarray(targets_us, float), self.drift_["levels_us"], self.drift_["nu_mean"])

    def nu_std(self, targets_us: Any) -> np.ndarray:
        self._check_fitted()
        return np.interp(np.asarray(targets_us, float), self.drift_["levels_us"], self.drift_["nu_std"])

    def sample(self, targets_us: Any, tolerance_us: float, max_pulses: int, elapsed_s: float | None = None,
               n_avg: int | None = None, seed: int | np.random.Generator | None = None) -> np.ndarray:
        """Draw read-back conductances (µS) for cells programmed to ``targets_us``.

        ``elapsed_s``: time since programming (default t0); ``n_avg``: reads averaged per
        read-back (default: as calibrated). Cells that do not converge within the cap get
        errors drawn from the measured failures.
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
        fq = np.asarray(self.programming_["failed_error_quantiles_us"])[ti, :, self._check_cap(max_pulses)]
        if (~conv).any():
            lv = np.abs(np.subtract.outer(t[~conv], np.asarray(self.levels_us_))).argmin(axis=1)
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
            gam = np.interp(t, self.drift_["levels_us"], self.drift_["growth_per_ln_t"])
            g = g * np.exp(-nu * ell + np.sqrt(gam * ell) * rng.standard_normal(t.shape))
        return g

    # --------------------------------------------------------------------- I/O --------
    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "units": UNITS, "provenance": self.provenance,
            "window": self.window_, "levels_us": self.levels_us_, "tolerances_us": self.tolerances_us_,
            "max_pulses": self.max_pulses_, "n_avg": self.n_avg_, "t0_s": self.t0_s_,
            "programming": self.programming_, "read_noise": self.read_noise_, "drift": self.drift_,
            "faults": self.faults_,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NoiseModel":
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise ValueError(f"not a noise model (schema must be {SCHEMA!r})")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"noise model schema version {d.get('schema_version')!r} is not supported "
                             f"(this pcm-hil reads version {SCHEMA_VERSION})")
        required = ("provenance", "window", "levels_us", "tolerances_us", "max_pulses", "n_avg", "t0_s",
                    "programming", "read_noise", "drift", "faults")
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"noise model lacks field(s): {', '.join(missing)}")
        m = cls()
        m.provenance = d["provenance"]
        m.window_, m.levels_us_, m.tolerances_us_ = d["window"], d["levels_us"], d["tolerances_us"]
        m.max_pulses_, m.n_avg_, m.t0_s_ = int(d["max_pulses"]), int(d["n_avg"]), float(d["t0_s"])
        m.programming_, m.read_noise_, m.drift_, m.faults_ = d["programming"], d["read_noise"], d["drift"], d["faults"]
        shape = (len(m.tolerances_us_), len(m.levels_us_))
        for key in ("offset_us", "sigma_us", "n", "resets_mean"):
            if np.asarray(m.programming_.get(key, [])).shape != shape:
                raise ValueError(f"noise model field programming.{key} must have shape {shape}")
        if np.asarray(m.programming_.get("pulse_pmf", [])).shape != (*shape, m.max_pulses_ + 1):
            raise ValueError("noise model field programming.pulse_pmf has the wrong shape")
        m.fitted_ = True
        return m

    def save(self, path: str | Path) -> None:
        """Write JSON atomically (a temporary file renamed into place)."""
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
        except ValueError as exc:
            raise ValueError(f"noise model {path}: {exc}") from None

    def summary(self) -> dict[str, Any]:
        """The headline numbers, for tables and --json."""
        self._check_fitted()
        return {
            "g_sat_us": self.window_["g_sat_us"], "levels": len(self.levels_us_), "tolerances_us": self.tolerances_us_,
            "max_pulses": self.max_pulses_, "read_noise_a": self.read_noise_["a"], "read_noise_b_us": self.read_noise_["b_us"],
            "averaging_exponent": self.read_noise_["averaging_exponent"],
            "nu_mean_range": [min(self.drift_["nu_mean"]), max(self.drift_["nu_mean"])],
            "faults": {k: self.faults_[k] for k in FAULT_KINDS},
        }
