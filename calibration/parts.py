"""The fitted parts of a noise model, and the functions that fit them from DataFrames.

Each part is a frozen dataclass of floats and read-only numpy arrays. Every field declares
its unit and its shape (named axes: ``tolerances``, ``levels``, ``pulses`` = cap + 1,
``quantiles``, ``coefficients``, ``drift_levels``); construction converts lists to arrays
and refuses non-finite values (where a value must exist), negative spreads and shapes
that disagree, with a message naming the field. Parts compare with ``==`` array by array
(NaN equal to NaN) and print compactly.

The fit functions take the tidy tables of :data:`TABLES` (one DataFrame each).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy import stats

from .stats import bootstrap_se, cell_slopes, poly_design, sigma_se, wls

TABLES = {
    "window": ["cell", "g_floor_us", "g_sat_us"],
    "programming": ["cell", "level_us", "tolerance_us", "pulses", "resets", "converged", "g_t0_us", "age_s", "n_avg"],
    "read_noise": ["cell", "level_us", "n_avg", "rep", "g_us"],
    "retention": ["cell", "level_us", "read_idx", "age_s", "g_us", "n_avg"],
    "faults": ["cell", "kind"],
}
OPTIONAL_TABLES = {"trace": ["cell", "iteration", "event", "value"], "saturation": ["cell", "pulse", "g_us"]}
FAULT_KINDS = ("reset", "set", "random")
SIGMA_DEGREE = 3
QUANTILES = np.linspace(0, 1, 11)  # of the errors of cells a cap stops unconverged


def part_field(unit: str, *shape: str, nan_ok: bool = False, minimum: float | None = None,
               dtype: type = float) -> Any:
    """A part's field: its unit, named axes (none: a scalar), whether NaN (not measured) is
    allowed, a lower bound, and the array dtype."""
    return field(metadata={"unit": unit, "shape": shape, "nan_ok": nan_ok, "minimum": minimum, "dtype": dtype})


_field = part_field


class Part:
    """Base of the fitted parts: conversion and validation at construction, ``==``, repr, dict."""

    name: ClassVar[str]

    def __post_init__(self) -> None:
        axes: dict[str, int] = {}
        for f in fields(self):
            meta, value = f.metadata, getattr(self, f.name)
            where = f"{self.name}.{f.name}"
            try:
                arr = np.array(value, dtype=meta["dtype"])
            except (TypeError, ValueError):
                raise ValueError(f"{where} must be numbers, got {value!r:.60}") from None
            if arr.ndim != len(meta["shape"]):
                raise ValueError(f"{where} must have {len(meta['shape'])} dimension(s) "
                                 f"({', '.join(meta['shape']) or 'a scalar'}), got shape {arr.shape}")
            for axis, n in zip(meta["shape"], arr.shape):
                if axes.setdefault(axis, n) != n:
                    raise ValueError(f"{where} has {n} {axis}, other fields have {axes[axis]}")
            bad = np.isinf(arr) if meta["nan_ok"] else ~np.isfinite(arr)
            if bad.any():
                raise ValueError(f"{where} must be finite" + (" or NaN" if meta["nan_ok"] else "")
                                 + f", got {arr[bad].flat[0]!r}")
            if meta["minimum"] is not None and (arr[~np.isnan(arr)] < meta["minimum"]).any():
                raise ValueError(f"{where} must be >= {meta['minimum']} {meta['unit']}, got {np.nanmin(arr)!r}")
            if arr.ndim:
                arr.setflags(write=False)
                object.__setattr__(self, f.name, arr)
            else:
                object.__setattr__(self, f.name, meta["dtype"](arr))
        self._check(axes)

    def _check(self, axes: dict[str, int]) -> None:
        """Constraints between fields (``axes``: the size of every named axis)."""

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(np.array_equal(getattr(self, f.name), getattr(other, f.name), equal_nan=True) for f in fields(self))

    __hash__ = None  # type: ignore[assignment]  # equality is by array value

    def __repr__(self) -> str:
        def short(v: Any) -> str:
            if isinstance(v, np.ndarray):
                if v.size <= 8:
                    return np.array2string(v, precision=4, separator=", ", max_line_width=10**6)
                return f"<array {v.shape}>"
            return f"{v:.6g}" if isinstance(v, float) else repr(v)

        return f"{type(self).__name__}(" + ", ".join(f"{f.name}={short(getattr(self, f.name))}"
                                                     for f in fields(self)) + ")"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (arrays as nested lists)."""
        return {f.name: (v.tolist() if isinstance(v := getattr(self, f.name), np.ndarray) else v)
                for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Any) -> "Part":
        """From :meth:`to_dict`'s output; refuses missing or unknown fields."""
        if not isinstance(d, dict):
            raise ValueError(f"{cls.name} must be an object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        if missing := sorted(names - d.keys()):
            raise ValueError(f"{cls.name} lacks field(s): {', '.join(missing)}")
        if unknown := sorted(d.keys() - names):
            raise ValueError(f"{cls.name} has unknown field(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def units(cls) -> dict[str, str]:
        return {f.name: f.metadata["unit"] for f in fields(cls)}

    @classmethod
    def shapes(cls) -> dict[str, list[str]]:
        return {f.name: list(f.metadata["shape"]) for f in fields(cls)}


@dataclass(frozen=True, eq=False, repr=False)
class Window(Part):
    """Conductance window of the cells."""

    name: ClassVar[str] = "window"
    g_floor_us: float = _field("µS")                 # median G after a RESET
    g_sat_us: float = _field("µS", minimum=0.0)      # median G after many strong SET pulses
    g_sat_spread: float = _field("1", minimum=0.0)   # device-to-device spread of saturation: std / median
    g_sat_us_se: float = _field("µS", minimum=0.0)   # standard error of g_sat_us

    def _check(self, axes: dict[str, int]) -> None:
        if not self.g_sat_us > 0:
            raise ValueError(f"window.g_sat_us must be > 0 µS, got {self.g_sat_us!r}")


@dataclass(frozen=True, eq=False, repr=False)
class Programming(Part):
    """Program-and-verify outcome per verify tolerance and target level, for every cap 0..max_pulses.

    Errors are G read ``t0_s`` after programming (``n_avg`` reads averaged) minus the level.
    """

    name: ClassVar[str] = "programming"
    levels_us: np.ndarray = _field("µS", "levels")              # calibrated target levels, increasing
    tolerances_us: np.ndarray = _field("µS", "tolerances", minimum=0.0)  # calibrated verify tolerances
    max_pulses: int = _field("count", minimum=1, dtype=int)     # largest SET-pulse cap measured
    n_avg: int = _field("count", minimum=1, dtype=int)          # reads averaged per read
    t0_s: float = _field("s", minimum=0.0)                      # delay of the error read after programming
    n: np.ndarray = _field("count", "tolerances", "levels", minimum=0, dtype=int)  # cells measured
    offset_us: np.ndarray = _field("µS", "tolerances", "levels", nan_ok=True)  # mean error, converged cells
    offset_us_se: np.ndarray = _field("µS", "tolerances", "levels", nan_ok=True, minimum=0.0)
    sigma_us: np.ndarray = _field("µS", "tolerances", "levels", nan_ok=True, minimum=0.0)  # σ of the error
    sigma_us_se: np.ndarray = _field("µS", "tolerances", "levels", nan_ok=True, minimum=0.0)
    # weighted polynomial σ(x) = Σ c_k x^k, x = G / g_sat (increasing powers), per tolerance
    sigma_coef: np.ndarray = _field("µS", "tolerances", "coefficients")
    sigma_cov: np.ndarray = _field("µS²", "tolerances", "coefficients", "coefficients")
    sigma_chi2_per_dof: np.ndarray = _field("1", "tolerances", minimum=0.0)  # goodness of the σ(x) fit
    # P(loop used k SET pulses), k = 0..max_pulses
    pulse_pmf: np.ndarray = _field("1", "tolerances", "levels", "pulses", minimum=0.0)
    # P(converged within k SET pulses), k = 0..max_pulses
    converged_cdf: np.ndarray = _field("1", "tolerances", "levels", "pulses", minimum=0.0)
    resets_mean: np.ndarray = _field("count", "tolerances", "levels", minimum=0.0)  # RESET restarts per cell
    # errors of cells a cap k stops unconverged: quantiles 0, 0.1, …, 1 (NaN: fewer than 3 cells)
    failed_error_quantiles_us: np.ndarray = _field("µS", "tolerances", "levels", "pulses", "quantiles",
                                                   nan_ok=True)

    def _check(self, axes: dict[str, int]) -> None:
        if axes["levels"] < 2 or np.any(np.diff(self.levels_us) <= 0):
            raise ValueError("programming.levels_us must be at least two increasing levels")
        if axes["pulses"] != self.max_pulses + 1:
            raise ValueError(f"programming tables have {axes['pulses']} pulse counts, "
                             f"expected max_pulses + 1 = {self.max_pulses + 1}")
        if axes["quantiles"] != QUANTILES.size:
            raise ValueError(f"programming.failed_error_quantiles_us needs {QUANTILES.size} quantiles")


@dataclass(frozen=True, eq=False, repr=False)
class ReadNoise(Part):
    """White read noise per read, σ(G) = a·G + b, and how averaging n reads reduces it (n^−k)."""

    name: ClassVar[str] = "read_noise"
    a: float = _field("1")  # may come out slightly negative where the noise barely depends on G
    b_us: float = _field("µS")
    a_se: float = _field("1", minimum=0.0)
    b_us_se: float = _field("µS", minimum=0.0)
    averaging_exponent: float = _field("1")                                     # k; 0.5 = white
    averaging_exponent_se: float = _field("1", nan_ok=True, minimum=0.0)        # NaN: not measured
    averaging_n: int = _field("count", minimum=1, dtype=int)                    # averaged reads it came from


@dataclass(frozen=True, eq=False, repr=False)
class Drift(Part):
    """Conductance drift G(t) = G(t0)·(t/t0)^−ν per level, ν over cells, and the 1/f spread growth."""

    name: ClassVar[str] = "drift"
    t0_s: float = _field("s", minimum=0.0)                                       # reference time
    levels_us: np.ndarray = _field("µS", "drift_levels")                         # levels with enough cells
    nu_mean: np.ndarray = _field("1", "drift_levels")                            # mean ν
    nu_mean_se: np.ndarray = _field("1", "drift_levels", minimum=0.0)
    nu_std: np.ndarray = _field("1", "drift_levels", minimum=0.0)                # spread of ν over cells
    nu_std_se: np.ndarray = _field("1", "drift_levels", minimum=0.0)
    growth_per_ln_t: np.ndarray = _field("1", "drift_levels", minimum=0.0)       # var of ln G per unit ln(t/t0)
    growth_per_ln_t_se: np.ndarray = _field("1", "drift_levels", nan_ok=True, minimum=0.0)
    # ν mean ≈ nu_intercept + nu_slope·ln(G / g_sat)
    nu_slope: float = _field("1")
    nu_intercept: float = _field("1")
    nu_slope_se: float = _field("1", minimum=0.0)
    nu_intercept_se: float = _field("1", minimum=0.0)

    def _check(self, axes: dict[str, int]) -> None:
        if axes["drift_levels"] < 2 or np.any(np.diff(self.levels_us) <= 0):
            raise ValueError("drift.levels_us must be at least two increasing levels")


@dataclass(frozen=True, eq=False, repr=False)
class Faults(Part):
    """Fractions of stuck cells by kind, with binomial standard errors."""

    name: ClassVar[str] = "faults"
    cells: int = _field("count", minimum=1, dtype=int)   # cells tested
    reset: float = _field("1", minimum=0.0)              # stuck at the floor
    reset_se: float = _field("1", minimum=0.0)
    set: float = _field("1", minimum=0.0)                # stuck near saturation
    set_se: float = _field("1", minimum=0.0)
    random: float = _field("1", minimum=0.0)             # not moving, at a value in between
    random_se: float = _field("1", minimum=0.0)

    @property
    def fractions(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in FAULT_KINDS}


PARTS: dict[str, type[Part]] = {p.name: p for p in (Window, Programming, ReadNoise, Drift, Faults)}


# ------------------------------------------------------------------- fitting ------
def check_table(df: pd.DataFrame, name: str) -> None:
    """Refuse a table that lacks a column of :data:`TABLES` (or :data:`OPTIONAL_TABLES`) or is empty."""
    cols = {**TABLES, **OPTIONAL_TABLES}[name]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"table {name!r} lacks column(s): {', '.join(missing)}")
    if df.empty and name in TABLES:
        raise ValueError(f"table {name!r} is empty")


def fit_window(df: pd.DataFrame, saturation: pd.DataFrame | None = None) -> Window:
    """Floor and saturation from the ``window`` table; stuck cells (not floored by the RESET,
    or not raised to half the median saturation) are left out of the saturation and its spread.

    With the ``saturation`` table (reads after each of the last strong SET pulses), a cell's
    saturation is the mean of its reads, and the spread over devices is corrected for the
    pulse-to-pulse scatter of the SET state (var over cells − mean within-cell var / reads)."""
    check_table(df, "window")
    sat = df["g_sat_us"].to_numpy(float)
    floor = df["g_floor_us"].to_numpy(float)
    med = float(np.median(sat))
    healthy = (sat > 0.5 * med) & (floor < 0.1 * med) & np.isfinite(sat)
    if healthy.sum() < 3:
        healthy = np.isfinite(sat)
    spread_var = float(np.var(sat[healthy]))
    if saturation is not None and not saturation.empty:
        wide = saturation.pivot_table(index="cell", columns="pulse", values="g_us")
        wide = wide.reindex(df["cell"].to_numpy()[healthy]).dropna()
        if len(wide) >= 3 and wide.shape[1] >= 2:
            per = wide.to_numpy(float)
            sat = per.mean(axis=1)
            within = float(np.mean(np.var(per, axis=1, ddof=1)))
            spread_var = max(float(np.var(sat, ddof=1)) - within / per.shape[1], 0.0)
            healthy = np.ones(sat.size, bool)
    s = sat[healthy]
    m = float(np.median(s))
    return Window(g_floor_us=float(np.median(floor)), g_sat_us=m, g_sat_spread=math.sqrt(spread_var) / m,
                  g_sat_us_se=float(math.sqrt(math.pi / 2) * math.sqrt(spread_var) / math.sqrt(len(s))))  # SE of a median


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


def fit_programming(df: pd.DataFrame, g_sat_us: float, trace: pd.DataFrame | None = None) -> Programming:
    """Per tolerance and level: pulse and convergence distributions, error offset and σ at t0,
    a weighted cubic σ(G/g_sat_us); with the ``trace`` table, the errors of the cells that
    each smaller cap would stop (their state after that pulse)."""
    check_table(df, "programming")
    if trace is not None:
        check_table(trace, "trace")
    levels = np.sort(df["level_us"].unique())
    tols = np.sort(df["tolerance_us"].unique())
    if levels.size < 2:
        raise ValueError("programming data need at least two target levels")
    cap = int(df["pulses"].max())
    T, L = tols.size, levels.size
    shape = (T, L)
    offset, offset_se, sigma, sig_se = (np.full(shape, np.nan) for _ in range(4))
    n = np.zeros(shape, int)
    resets = np.zeros(shape)
    pmf = np.zeros((T, L, cap + 1))
    conv_cdf = np.zeros((T, L, cap + 1))
    failed_q = np.full((T, L, cap + 1, QUANTILES.size), np.nan)
    after = _after_each_pulse(trace, df["cell"].to_numpy(), cap) if trace is not None else None
    for (ti, t), (li, lv) in ((a, b) for a in enumerate(tols) for b in enumerate(levels)):
        sel = ((df["tolerance_us"] == t) & (df["level_us"] == lv)).to_numpy()
        g = df[sel]
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
        rows = np.flatnonzero(sel)
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
                failed_q[ti, li, c] = np.quantile(e, QUANTILES)
    # smooth σ(x) per tolerance with a weighted cubic in x (4 parameters on ≥ 8 levels)
    x = levels / g_sat_us
    deg = min(SIGMA_DEGREE, L - 1)
    fits = []
    for ti in range(T):
        good = np.isfinite(sigma[ti])
        fits.append(wls(poly_design(x[good], deg), sigma[ti, good], sig_se[ti, good]))
    return Programming(
        levels_us=levels, tolerances_us=tols, max_pulses=cap, n_avg=int(df["n_avg"].iloc[0]),
        t0_s=float(np.median(df["age_s"])), n=n, offset_us=offset, offset_us_se=offset_se, sigma_us=sigma,
        sigma_us_se=sig_se, sigma_coef=[f.coef for f in fits], sigma_cov=[f.cov for f in fits],
        sigma_chi2_per_dof=[f.chi2_per_dof for f in fits], pulse_pmf=pmf, converged_cdf=conv_cdf,
        resets_mean=resets, failed_error_quantiles_us=failed_q)


def fit_read_noise(df: pd.DataFrame) -> ReadNoise:
    """σ per read = a·G + b from single reads, and the averaging exponent from averaged ones."""
    check_table(df, "read_noise")
    if (df["n_avg"] == 1).sum() == 0:
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
    k, k_se, n = 0.5, float("nan"), 1
    multi = cells[cells["n_avg"] > 1]
    if not multi.empty:
        n = int(multi["n_avg"].max())
        sn = multi[multi["n_avg"] == n]
        ratios = sn["sigma"].to_numpy() / fit.predict(poly_design(sn["g"].to_numpy(), 1))

        def exponent(r: np.ndarray) -> float:
            return -math.log(max(float(np.mean(r)), 1e-12)) / math.log(n)

        k, k_se = exponent(ratios), bootstrap_se(ratios, exponent)
    return ReadNoise(a=float(a), b_us=float(b), a_se=float(fit.se[1]), b_us_se=float(fit.se[0]),
                     averaging_exponent=k, averaging_exponent_se=k_se, averaging_n=n)


def _cov_fit(lg: np.ndarray, ell: np.ndarray, shared: bool) -> tuple[float, float, float, float, float]:
    """Spread of ν and 1/f growth of one level from the covariance of ln G over read times.

    Between two reads k ≠ j, cells share the programming spread A, the drift spread
    σ_ν²·ℓ_k·ℓ_j and (``shared``: 1/f noise that accumulates, a random walk in ln t) Γ·min(ℓ_k, ℓ_j);
    each read adds its own variance on the diagonal: the white read noise (constant) and
    the 1/f part, γ·ℓ_k. Returns (σ_ν², its SE, γ, its SE, t of Γ)."""
    C = np.cov(lg, rowvar=False)
    k = ell.size
    iu = np.triu_indices(k, 1)
    cols = [np.ones(iu[0].size), ell[iu[0]] * ell[iu[1]]]
    if shared:
        cols.append(np.minimum(ell[iu[0]], ell[iu[1]]))
    off = wls(np.column_stack(cols), C[iu])
    t_shared = float(off.coef[2] / max(off.se[2], 1e-300)) if shared else 0.0
    diag = np.diag(C) - off.coef[0] - off.coef[1] * ell ** 2
    d = wls(poly_design(ell, 1), diag)
    return float(off.coef[1]), float(off.se[1]), float(d.coef[1]), float(d.se[1]), t_shared


def fit_drift(df: pd.DataFrame, t0_s: float, g_sat_us: float) -> Drift:
    """Per level: ν mean from log-log fits of the ``retention`` table against age/t0_s (per
    cell), ν spread and the 1/f growth of the spread from the covariance of ln G across read
    times (:func:`_cov_fit`: the drift spread is what reads share, the 1/f part what each read
    adds), and ν mean vs ln(G/g_sat_us). Whether 1/f noise accumulates between reads (a
    random walk) or not (stationary) is decided once for the chip: by the median t statistic
    of the shared term over the levels (> 2: accumulates)."""
    check_table(df, "retention")
    per = []
    for lv, part in df.groupby("level_us"):
        wide_g = part.pivot_table(index="cell", columns="read_idx", values="g_us")
        ages = part.pivot_table(index="cell", columns="read_idx", values="age_s")
        ok = np.all(wide_g.to_numpy() > 0, axis=1) & np.all(np.isfinite(wide_g.to_numpy()), axis=1)
        if ok.sum() < 10 or wide_g.shape[1] < 3:
            continue
        lg = np.log(wide_g.to_numpy()[ok])
        lt = np.log(ages.to_numpy()[ok] / t0_s)
        per.append((float(lv), lg, lt))
    if len(per) < 2:
        raise ValueError("retention data need at least two levels with ≥10 cells and ≥3 read times")
    enough = all(lt.shape[1] >= 4 for _, _, lt in per)  # the shared term needs ≥ 4 reads (6 pairs)
    shared = enough and float(np.median([_cov_fit(lg, lt.mean(axis=0), True)[4] for _, lg, lt in per])) > 2.0
    levels, mean, mean_se, std, std_se, growth, growth_se = [], [], [], [], [], [], []
    for lv, lg, lt in per:
        slope, _ = cell_slopes(lt, lg)
        nu = -slope
        var_nu, var_se, gam, gam_se, _ = _cov_fit(lg, lt.mean(axis=0), shared)
        levels.append(lv)
        mean.append(float(nu.mean()))
        mean_se.append(float(stats.sem(nu)))
        s = math.sqrt(max(var_nu, 0.0))
        std.append(s)
        std_se.append(float(var_se / (2 * max(s, 1e-4))))
        growth.append(max(gam, 0.0))
        growth_se.append(gam_se)
    mfit = wls(poly_design(np.log(np.asarray(levels) / g_sat_us), 1), np.asarray(mean), np.asarray(mean_se))
    return Drift(t0_s=t0_s, levels_us=levels, nu_mean=mean, nu_mean_se=mean_se, nu_std=std, nu_std_se=std_se,
                 growth_per_ln_t=growth, growth_per_ln_t_se=growth_se, nu_slope=float(mfit.coef[1]),
                 nu_intercept=float(mfit.coef[0]), nu_slope_se=float(mfit.se[1]), nu_intercept_se=float(mfit.se[0]))


def fit_faults(df: pd.DataFrame) -> Faults:
    """Fraction of cells of each stuck kind in the ``faults`` table, with binomial SE."""
    check_table(df, "faults")
    n = len(df)
    out: dict[str, Any] = {"cells": n}
    for kind in FAULT_KINDS:
        f = float((df["kind"] == kind).mean())
        out[kind] = f
        out[f"{kind}_se"] = math.sqrt(max(f * (1 - f), 1.0 / n) / n)
    return Faults(**out)
