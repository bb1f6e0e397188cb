"""The calibrated channel's capacity: how many bits one cell can carry after a retention time.

Method (stated in the report): the input is the programmed level x (µS) on a grid of
``inputs`` levels spanning the calibrated levels; the read after ``retention_s`` is
y ~ N(x, E[e²](x)) with E[e²] the noise model's expected squared error after that time at
one program-and-verify setting (tolerance, cap): programming error and its offset, cells
the loop failed to verify, drift spread and 1/f growth, with the global drift factor
compensated (``NoiseModel.sq_error_after``) — a Gaussian approximation per level. y is
quantized finely (``outputs`` bins over x ± 6σ), and the capacity max over p(x) of I(X;Y)
is found by the Blahut–Arimoto algorithm. The mutual information at the uniform p(x) is
reported beside it. Bits per cell, log base 2.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from pcm_hil_noisemodel import NoiseModel


@dataclass(frozen=True)
class Capacity:
    """Capacity of one chip's channel at one setting and retention time."""

    tolerance_us: float
    max_pulses: int
    retention_s: float
    bits: float              # capacity, bits per cell (Blahut–Arimoto)
    bits_uniform: float      # I(X;Y) with every input level equally likely
    sigma_us_median: float   # median over levels of √E[e²]


def transition(x_us: np.ndarray, sigma_us: np.ndarray, outputs: int = 1500) -> np.ndarray:
    """P(y bin | x): Gaussian reads around each level, integrated over ``outputs`` bins."""
    lo, hi = float(np.min(x_us - 6 * sigma_us)), float(np.max(x_us + 6 * sigma_us))
    edges = np.linspace(lo, hi, outputs + 1)
    edges[0], edges[-1] = -np.inf, np.inf
    cdf = stats.norm.cdf((edges[None, :] - x_us[:, None]) / sigma_us[:, None])
    return np.clip(np.diff(cdf, axis=1), 0.0, None)


def mutual_information(p_x: np.ndarray, p_y_x: np.ndarray) -> float:
    """I(X;Y) in bits for input distribution ``p_x`` and channel ``p_y_x`` (rows sum to 1)."""
    p_y = p_x @ p_y_x
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p_y_x > 0, p_y_x * np.log2(p_y_x / p_y[None, :]), 0.0)
    return float(p_x @ terms.sum(axis=1))


def blahut_arimoto(p_y_x: np.ndarray, iterations: int = 300, tol_bits: float = 1e-6) -> tuple[float, np.ndarray]:
    """Capacity (bits) of the discrete channel ``p_y_x`` and the input distribution reaching it."""
    n = p_y_x.shape[0]
    p = np.full(n, 1.0 / n)
    cap = 0.0
    for _ in range(iterations):
        p_y = p @ p_y_x
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(p_y_x > 0, p_y_x * np.log(p_y_x / p_y[None, :]), 0.0).sum(axis=1)  # nats
        w = p * np.exp(d)
        lower, upper = np.log2(w.sum()), float(d.max() / np.log(2))
        p = w / w.sum()
        cap = lower
        if upper - lower < tol_bits:
            break
    return float(cap), p


def channel_capacity(noise: NoiseModel, retention_s: float, tolerance_us: float, max_pulses: int,
                     inputs: int = 64, outputs: int = 800) -> Capacity:
    """Capacity of ``noise``'s channel after ``retention_s`` at one (tolerance, cap) setting."""
    lv = noise.levels_us_
    x = np.linspace(float(lv[0]), float(lv[-1]), inputs)
    sigma = np.sqrt(np.maximum(noise.sq_error_after(x, tolerance_us, max_pulses, retention_s), 1e-8))
    p_y_x = transition(x, sigma, outputs)
    p_y_x /= p_y_x.sum(axis=1, keepdims=True)
    cap, _ = blahut_arimoto(p_y_x)
    uniform = mutual_information(np.full(inputs, 1.0 / inputs), p_y_x)
    return Capacity(float(tolerance_us), int(max_pulses), float(retention_s), cap, uniform, float(np.median(sigma)))


def capacities(noise: NoiseModel, retention_s: float, max_pulses: int | None = None) -> list[Capacity]:
    """The capacity at every calibrated tolerance (cap ``max_pulses``; default the largest calibrated)."""
    cap = noise.max_pulses_ if max_pulses is None else min(max_pulses, noise.max_pulses_)
    return [channel_capacity(noise, retention_s, float(t), cap) for t in noise.tolerances_us_]
