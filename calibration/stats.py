"""Statistics helpers for the fits: what scipy.stats does not offer in this form.

``wls`` scales coefficient errors by the scatter; ``cell_slopes`` is thousands of
ordinary regressions at once (the same slope and standard error as
``scipy.stats.linregress`` per cell, vectorized).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class LinearFit:
    """y ≈ X·coef with standard errors (weighted least squares)."""

    coef: np.ndarray
    se: np.ndarray
    cov: np.ndarray
    chi2_per_dof: float

    def predict(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coef

    def predict_se(self, X: np.ndarray) -> np.ndarray:
        return np.sqrt(np.einsum("ij,jk,ik->i", X, self.cov, X))


def wls(X: np.ndarray, y: np.ndarray, se: np.ndarray | None = None) -> LinearFit:
    """Weighted least squares; with ``se`` the weights are 1/se², else ordinary.

    Coefficient errors are scaled by sqrt(χ²/dof) when the scatter exceeds the stated
    errors (never shrunk), so they stay honest when the model is imperfect.
    """
    X, y = np.asarray(X, float), np.asarray(y, float)
    w = np.ones_like(y) if se is None else 1.0 / np.maximum(np.asarray(se, float), 1e-300) ** 2
    A = X * np.sqrt(w)[:, None]
    b = y * np.sqrt(w)
    coef, *_ = np.linalg.lstsq(A, b, rcond=None)
    dof = max(len(y) - X.shape[1], 1)
    resid = b - A @ coef
    chi2 = float(resid @ resid / dof)
    cov = np.linalg.pinv(A.T @ A) * (chi2 if se is None else max(chi2, 1.0))
    return LinearFit(coef, np.sqrt(np.diag(cov)), cov, chi2)


def chi2_per_dof_limit(dof: int, p: float = 0.001) -> float:
    """Reduced χ² above which a fit with ``dof`` degrees of freedom is rejected at level ``p``."""
    k = max(int(dof), 1)
    return float(stats.chi2.isf(p, k) / k)


def poly_design(x: np.ndarray, degree: int) -> np.ndarray:
    return np.vander(np.asarray(x, float), degree + 1, increasing=True)


def cell_slopes(log_t: np.ndarray, log_g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell OLS slope of log_g on log_t (rows = cells, columns = times) and its SE."""
    x = log_t - log_t.mean(axis=1, keepdims=True)
    y = log_g - log_g.mean(axis=1, keepdims=True)
    sxx = (x * x).sum(axis=1)
    slope = (x * y).sum(axis=1) / sxx
    resid = y - slope[:, None] * x
    dof = max(log_t.shape[1] - 2, 1)
    se = np.sqrt((resid * resid).sum(axis=1) / dof / sxx)
    return slope, se


def bootstrap_se(values: np.ndarray, stat: Callable[[np.ndarray], float], n: int = 200, seed: int = 0) -> float:
    """Bootstrap standard error of ``stat(values)`` over rows (``scipy.stats.bootstrap``)."""
    values = np.asarray(values)
    if len(values) < 2:
        return float("nan")
    res = stats.bootstrap((values,), stat, n_resamples=n, vectorized=False, method="percentile",
                          rng=np.random.default_rng(seed))
    return float(res.standard_error)


def sigma_se(sigma: float, n: int) -> float:
    """Standard error of a Gaussian sample standard deviation."""
    return sigma / np.sqrt(2.0 * max(n - 1, 1))
