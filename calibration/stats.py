"""Small statistics helpers for the fits (numpy only)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def chi2_per_dof_limit(dof: int, z: float = 3.09) -> float:
    """Reduced χ² above which a fit is rejected at the one-sided normal quantile ``z``
    (3.09: p = 0.001), by the Wilson–Hilferty approximation of the χ² quantile."""
    k = max(int(dof), 1)
    return (1 - 2 / (9 * k) + z * (2 / (9 * k)) ** 0.5) ** 3


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


def ks_two_sample(a: np.ndarray, b: np.ndarray) -> float:
    """Kolmogorov–Smirnov distance between two samples."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    if a.size == 0 or b.size == 0:
        return float("nan")
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / a.size
    fb = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(fa - fb)))


def bootstrap_se(values: np.ndarray, stat, n: int = 200, seed: int = 0) -> float:
    """Bootstrap standard error of ``stat(values)`` over rows."""
    values = np.asarray(values)
    if len(values) < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    draws = [stat(values[rng.integers(0, len(values), len(values))]) for _ in range(n)]
    return float(np.std(draws, ddof=1))


def sigma_se(sigma: float, n: int) -> float:
    """Standard error of a Gaussian sample standard deviation."""
    return sigma / np.sqrt(2.0 * max(n - 1, 1))
