"""PNG report of a calibration: σ vs level, error histograms, drift, convergence."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .model import NoiseModel


def write_report(model: NoiseModel, data: dict[str, pd.DataFrame], path: str | Path) -> Path:
    """Four panels: σ(level) with fit and band; error histograms with the fitted density;
    drift on log-log axes; convergence (probability and remaining error vs pulse number)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prog = data["programming"]
    fig, ax = plt.subplots(2, 2, figsize=(12, 9))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    levels = model.levels_us_
    fine = np.linspace(levels[0], levels[-1], 200)

    # (a) σ vs level
    a = ax[0, 0]
    for i, tol in enumerate(model.tolerances_us_):
        s, se = model.programming_.sigma_us[i], model.programming_.sigma_us_se[i]
        a.errorbar(levels, s, yerr=se, fmt="o", color=colors[i], label=f"±{tol:g} µS measured")
        fit, band = model.sigma(fine, tol, with_se=True)
        a.plot(fine, fit, color=colors[i])
        a.fill_between(fine, fit - 2 * band, fit + 2 * band, color=colors[i], alpha=0.2)
    a.set(xlabel="target G (µS)", ylabel=f"σ of error {model.t0_s_:g} s after P&V (µS)",
          title="programming error vs level (fit ± 2 SE)")
    a.legend(fontsize=8)

    # (b) error histograms at three levels, middle tolerance
    b = ax[0, 1]
    tol = model.tolerances_us_[len(model.tolerances_us_) // 2]
    for i, lv in enumerate(levels[[0, len(levels) // 2, -1]]):
        sel = prog[(prog["tolerance_us"] == tol) & (prog["level_us"] == lv) & (prog["converged"] == 1)]
        err = sel["g_t0_us"] - lv
        b.hist(err, bins=40, density=True, alpha=0.45, color=colors[i], label=f"{lv:.3g} µS")
        xs = np.linspace(err.min(), err.max(), 200)
        mu, sd = float(model.offset(lv, tol)), float(model.sigma(lv, tol))
        b.plot(xs, stats.norm.pdf(xs, mu, sd), color=colors[i])
    b.set(xlabel="error (µS)", ylabel="density", title=f"error at t0, ±{tol:g} µS, with fitted density")
    b.legend(fontsize=8)

    # (c) drift, log-log
    c = ax[1, 0]
    ret = data["retention"]
    for i, (lv, part) in enumerate(ret.groupby("level_us")):
        by = part.groupby("read_idx").agg(age=("age_s", "median"), g=("g_us", "median"))
        c.loglog(by["age"], by["g"], "o", color=colors[i % len(colors)], ms=4)
        t = np.geomspace(by["age"].min(), by["age"].max(), 50)
        nu = float(model.nu_mean(lv))
        c.loglog(t, by["g"].iloc[0] * (t / by["age"].iloc[0]) ** -nu, color=colors[i % len(colors)],
                 lw=1, label=f"{lv:.3g} µS, ν={nu:.3f}")
    c.set(xlabel="time since programming (s)", ylabel="median G (µS)", title="drift (median, fitted ν)")
    c.legend(fontsize=7, ncol=2)

    # (d) convergence
    d = ax[1, 1]
    cdf = model.programming_.converged_cdf
    k = np.arange(cdf.shape[2])
    for i, t in enumerate(model.tolerances_us_):
        d.plot(k, cdf[i].mean(axis=0), color=colors[i], label=f"P(converged by k), ±{t:g} µS")
    if "trace" in data and not data["trace"].empty:
        tr = data["trace"]
        reads = tr[tr["event"] == "read"].merge(prog[["cell", "level_us"]], on="cell")
        med = (reads["value"] - reads["level_us"]).abs().groupby(reads["iteration"]).median()
        d2 = d.twinx()
        d2.semilogy(med.index, med.to_numpy(), "k--", lw=1, label="median |error| of cells still in the loop")
        d2.set_ylabel("median |error| at verify (µS), cells still in the loop")
        d2.legend(loc="center right", fontsize=8)
    d.set(xlabel="SET pulses k / loop iteration", ylabel="fraction of cells", title="convergence")
    d.legend(loc="lower right", fontsize=8)

    fig.suptitle(f"pcm-hil calibration {model.provenance.get('run_id', '')}  "
                 f"({model.provenance.get('chip_id', '')})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
