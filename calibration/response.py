"""The programming response of a chip: what its pulses do, measured with generic probes.

:class:`Response` is a fitted part like those of :mod:`.parts`; :func:`fit_response` makes
it from the tidy tables of the calibration's ``response`` stage (:data:`RESPONSE_TABLES`):

- ``response_reset``: cells driven high, then one fast pulse of a given amplitude (RESET
  kind): which amplitude brings cells to the floor;
- ``response_threshold``: after a RESET, SET pulses of rising amplitude until each cell
  moves: the per-cell SET threshold;
- ``response_amplitude``: after a RESET, one SET pulse of a given amplitude: the step of
  the first pulse versus amplitude, and the highest amplitude that still gives a graded
  step (above it the cell jumps to saturation in one pulse);
- ``response_steps``: after a RESET, a train of SET pulses at a fixed amplitude and width:
  the step versus state (G, pulses since the RESET), amplitude and width.

The step model fitted (per unit of drive, drive = (V − V_th,cell)/``drive_span_v``):
mean = ``step_ref_us``·(1 − G/``step_saturation_us``)·(1 + ``reset_boost``·e^(−k/τ)),
σ = (``step_sigma_us`` + ``step_sigma_slope``·G)·(1 + ``sigma_boost``·e^(−k/τ)), τ =
``boost_decay_pulses``, k = SET pulses since the RESET; step ∝ (width/``set_width_s``)^``width_exponent``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy import optimize

from .parts import Part, part_field as _field

RESPONSE_TABLES = {
    "response_reset": ["cell", "amplitude_v", "width_s", "g_before_us", "g_after_us"],
    "response_threshold": ["cell", "threshold_v", "g_floor_us", "g_floor2_us"],
    "response_amplitude": ["cell", "amplitude_v", "width_s", "g_before_us", "g_after_us"],
    "response_steps": ["cell", "amplitude_v", "width_s", "threshold_v", "pulse", "g_before_us", "g_after_us"],
}
RESET_WORKS = 0.99       # fraction of movable cells a working RESET must floor
RESET_MARGIN = 1.1       # the loop's RESET: the working amplitude × this (within the soft limits)
NEGATIVE_STEPS = 0.05    # late steps clearly < 0 above this fraction: the loop may step down with SET pulses
GRADED_FRACTION = 0.5    # a first SET pulse whose median lands above this × the high state is not graded


@dataclass(frozen=True, eq=False, repr=False)
class Response(Part):
    """Programming response of the cells (what calibration measured; what the loop uses)."""

    name: ClassVar[str] = "response"
    cells: int = _field("count", minimum=1, dtype=int)             # probe cells
    reset_amplitude_v: float = _field("V", minimum=0.0)            # RESET the loop uses: working one × margin
    reset_works_v: float = _field("V", minimum=0.0)                # lowest probed amplitude that floors ≥ 99 %
    reset_width_s: float = _field("s", minimum=0.0)
    reset_floor_us: float = _field("µS")                           # median G after that RESET
    high_us: float = _field("µS", minimum=0.0)                     # median G of the cells driven high
    read_sigma_us: float = _field("µS", minimum=0.0)               # σ of one averaged read at the floor
    set_width_s: float = _field("s", minimum=0.0)                  # width of the SET probes
    threshold_v: float = _field("V", minimum=0.0)                  # median per-cell SET threshold
    threshold_p10_v: float = _field("V", minimum=0.0)
    threshold_p90_v: float = _field("V", minimum=0.0)
    threshold_sigma_v: float = _field("V", minimum=0.0)            # robust σ over cells (IQR / 1.349)
    threshold_moved: float = _field("1", minimum=0.0)              # fraction of cells that moved in the ramp
    set_max_v: float = _field("V", minimum=0.0)                    # highest amplitude with a graded first step
    drive_span_v: float = _field("V", minimum=0.0)                 # volts of one unit of drive
    step_ref_us: float = _field("µS")                              # mean step per unit drive at G = 0, late
    step_saturation_us: float = _field("µS", minimum=0.0)          # G where the mean step vanishes
    reset_boost: float = _field("1", minimum=0.0)                  # extra relative mean step right after RESET
    boost_decay_pulses: float = _field("pulses", minimum=0.0)
    step_sigma_us: float = _field("µS", minimum=0.0)               # σ of the step per unit drive at G = 0, late
    step_sigma_slope: float = _field("1", minimum=0.0)             # growth of that σ per µS of G
    sigma_boost: float = _field("1", minimum=0.0)                  # extra relative σ right after RESET
    negative_fraction: float = _field("1", minimum=0.0)            # late steps clearly < 0 (4 read σ)
    width_exponent: float = _field("1", nan_ok=True)               # step ∝ width^k (NaN: one width probed)

    def _check(self, axes: dict[str, int]) -> None:
        if not self.set_max_v > self.threshold_p10_v:
            raise ValueError(f"response.set_max_v ({self.set_max_v} V) must exceed threshold_p10_v "
                             f"({self.threshold_p10_v} V)")

    def verify_settings(self) -> dict[str, float]:
        """Program-and-verify settings (the loop's names and units) from what was measured.

        The loop starts each cell at the 10th-percentile threshold and raises it per cell by
        half the threshold spread when a pulse moves nothing; a unit of drive is
        ``drive_span_v`` volts; the largest drive reaches ``set_max_v``; a verify read
        counts as a move 4 read σ above the last one; where no late step was seen to go
        down (``negative_fraction`` < 5 %), an overshoot always RESETs instead of stepping
        down with SET pulses.
        """
        start = self.threshold_p10_v
        return {
            "reset_amplitude_v": self.reset_amplitude_v, "reset_width_s": self.reset_width_s,
            "set_width_s": self.set_width_s, "set_threshold_v": start, "set_ref_v": start + self.drive_span_v,
            "set_max_v": self.set_max_v, "drive_max": (self.set_max_v - start) / self.drive_span_v,
            "step_ref_us": max(self.step_ref_us, 1e-3), "saturation_us": self.step_saturation_us,
            "reset_boost": self.reset_boost, "boost_decay_pulses": max(self.boost_decay_pulses, 0.1),
            "step_sigma_us": self.step_sigma_us, "step_sigma_slope": self.step_sigma_slope, "sigma_boost": 0.0,
            "threshold_step_v": float(np.clip(self.threshold_sigma_v / 2, 0.01, 0.1)),
            "move_us": max(4 * self.read_sigma_us, 0.05),
            "overshoot_step": 2.0,  # an overshoot lowers the cell's amplitude by one threshold spread
            "aim": 0.6,  # the drive is bounded by the measured step noise: aim further than the generic loop
            # SET pulses can step G down after an overshoot only where steps were seen to go down
            **({} if self.negative_fraction >= NEGATIVE_STEPS else {"descend_ratio": 0.0, "descend_us": 0.0}),
        }


def _check(df: pd.DataFrame, name: str) -> None:
    missing = [c for c in RESPONSE_TABLES[name] if c not in df.columns]
    if missing:
        raise ValueError(f"table {name!r} lacks column(s): {', '.join(missing)}")
    if df.empty:
        raise ValueError(f"table {name!r} is empty")


def reset_choice(df: pd.DataFrame, max_amplitude_v: float = math.inf) -> tuple[float, float, float, float]:
    """From ``response_reset``: (working amplitude, the loop's amplitude, floor µS, high µS).

    A cell counts as floored below 5 % of the median high state; cells that no probed
    amplitude floors (stuck) are left out; the working amplitude is the lowest that floors
    ≥ 99 % of the others; the loop's is that × 1.1, at most ``max_amplitude_v``."""
    _check(df, "response_reset")
    high = float(np.median(df["g_before_us"]))
    low = 0.05 * high
    floored = df.assign(ok=df["g_after_us"] < low)
    movable = floored.groupby("cell")["ok"].any()
    part = floored[floored["cell"].isin(movable.index[movable])]
    if part.empty:
        raise ValueError("no probed RESET amplitude brought any cell to the floor: the chip does not RESET "
                         "within the soft limits")
    frac = part.groupby("amplitude_v")["ok"].mean()
    works = frac.index[frac.to_numpy() >= RESET_WORKS]
    a = float(works.min()) if works.size else float(frac.index.max())
    floor = float(np.median(part.loc[np.isclose(part["amplitude_v"], a), "g_after_us"]))
    return a, float(min(a * RESET_MARGIN, max_amplitude_v)), floor, high


def threshold_stats(df: pd.DataFrame) -> dict[str, float]:
    """Per-cell SET thresholds (``response_threshold``): median, 10th/90th percentile, robust σ,
    the fraction that moved, and the σ of one averaged read at the floor (from two reads)."""
    _check(df, "response_threshold")
    th = df["threshold_v"].to_numpy(float)
    moved = th[np.isfinite(th)]
    if moved.size < 3:
        raise ValueError("fewer than 3 cells moved in the SET threshold ramp: no SET within the soft limits")
    q10, q25, q50, q75, q90 = np.percentile(moved, [10, 25, 50, 75, 90])
    d = (df["g_floor2_us"] - df["g_floor_us"]).to_numpy(float)
    return {"threshold_v": float(q50), "threshold_p10_v": float(q10), "threshold_p90_v": float(q90),
            "threshold_sigma_v": float((q75 - q25) / 1.349), "threshold_moved": float(moved.size / th.size),
            "read_sigma_us": float(np.std(d[np.isfinite(d)], ddof=1) / math.sqrt(2))}


def graded_ceiling(df: pd.DataFrame, high_us: float, floor_us: float) -> float:
    """Highest probed SET amplitude whose first pulse after a RESET leaves the median cell
    below half the high state (above it the cells jump: melt, or a saturating step)."""
    _check(df, "response_amplitude")
    med = df.groupby("amplitude_v")["g_after_us"].median()
    graded = med.index[(med.to_numpy() - floor_us) < GRADED_FRACTION * (high_us - floor_us)]
    if graded.size == 0:
        raise ValueError("every probed SET amplitude drives the cells to saturation in one pulse")
    # the ceiling: below the first amplitude that is not graded
    bad = med.index[~np.isin(med.index, graded)]
    below = graded[graded < bad.min()] if bad.size else graded
    return float(below.max() if below.size else graded.min())


def span_of(threshold_p10_v: float, ceiling_v: float) -> float:
    """Volts of one unit of drive: half the span from the low threshold to the graded ceiling."""
    return max((ceiling_v - threshold_p10_v) / 2, 0.01)


def _step_mean(X: tuple[np.ndarray, np.ndarray], a: float, s: float, b: float, tau: float) -> np.ndarray:
    g, k = X
    return a * (1 - g / s) * (1 + b * np.exp(-k / tau))


def fit_steps(df: pd.DataFrame, span_v: float, set_width_s: float, read_sigma_us: float = 0.0) -> dict[str, float]:
    """The step model per unit drive from ``response_steps`` (scipy ``curve_fit``): mean
    a·(1 − G/s)·(1 + b·e^(−k/τ)), σ (c + m·G)·(1 + q·e^(−k/τ)), the width exponent, and the
    fraction of late steps (≥ 5 pulses after the RESET) that lower G by more than 4 σ of the
    difference of two reads (``read_sigma_us``: σ of one averaged read)."""
    _check(df, "response_steps")
    d = ((df["amplitude_v"] - df["threshold_v"]) / span_v).to_numpy(float)
    w = df["width_s"].to_numpy(float)
    ref = np.isclose(w, set_width_s)
    ok = np.isfinite(d) & (d > 0.05)
    g = df["g_before_us"].to_numpy(float)
    k = (df["pulse"].to_numpy(float) - 1)  # SET pulses before this one, since the RESET
    y = (df["g_after_us"].to_numpy(float) - g) / np.where(ok, d, 1)
    m = ok & ref
    if m.sum() < 20:
        raise ValueError("too few SET steps above threshold to fit the step model")
    p0 = [max(float(np.median(y[m & (k >= 5)])), 0.1) if (m & (k >= 5)).any() else 1.0,
          max(2 * float(np.percentile(g[m], 95)), 1.0), 1.0, 2.0]
    try:
        (a, s, b, tau), _ = optimize.curve_fit(_step_mean, (g[m], k[m]), y[m], p0=p0,
                                                bounds=([1e-3, 0.1, 0.0, 0.2], [1e3, 1e4, 100.0, 50.0]), maxfev=20000)
    except (RuntimeError, ValueError):  # no convergence: a flat model
        a, s, b, tau = float(np.mean(y[m])), 1e4, 0.0, 1.0
    resid = y[m] - _step_mean((g[m], k[m]), a, s, b, tau)

    def sd_model(X: tuple[np.ndarray, np.ndarray], c: float, sl: float, q: float) -> np.ndarray:
        gg, kk = X
        return (c + sl * gg) * (1 + q * np.exp(-kk / tau))

    # E|r| = σ·sqrt(2/π) for Gaussian residuals: fit σ to |r|·sqrt(π/2)
    try:
        (c, sl, q), _ = optimize.curve_fit(sd_model, (g[m], k[m]), np.abs(resid) * math.sqrt(math.pi / 2),
                                           p0=[0.5, 0.05, 1.0], bounds=([0, 0, 0], [1e3, 10, 100]), maxfev=20000)
    except (RuntimeError, ValueError):
        c, sl, q = float(np.std(resid)), 0.0, 0.0
    late = m & (k >= 5)
    dg = df["g_after_us"].to_numpy(float) - g
    # read noise σ(G) = a·G + b: b from the floor, a from the repeated read at the end of the trains
    a_read = 0.0
    if "g_repeat_us" in df.columns and df["g_repeat_us"].notna().sum() >= 3:
        rep = df[df["g_repeat_us"].notna()]
        s_hi = float(np.std(rep["g_repeat_us"] - rep["g_after_us"], ddof=1) / math.sqrt(2))
        g_hi = float(np.mean(rep["g_after_us"]))
        a_read = max((s_hi - read_sigma_us) / g_hi, 0.0) if g_hi > 0 else 0.0
    noise = 4 * math.sqrt(2) * (read_sigma_us + a_read * np.maximum(g, 0))
    negative = float(np.mean(dg[late] < -noise[late])) if late.any() else float("nan")
    # width: mean step ratio of the other widths at the same early state, against the reference
    expo = float("nan")
    others = ok & ~ref & (k < 3)
    if others.any():
        pred = _step_mean((g[others], k[others]), a, s, b, tau)
        ratio = float(np.mean(y[others]) / max(float(np.mean(pred)), 1e-9))
        wr = float(np.median(w[others] / set_width_s))
        if ratio > 0 and wr != 1:
            expo = math.log(ratio) / math.log(wr)
    return {"step_ref_us": float(a), "step_saturation_us": float(s), "reset_boost": float(b),
            "boost_decay_pulses": float(tau), "step_sigma_us": float(c), "step_sigma_slope": float(sl),
            "sigma_boost": float(q), "negative_fraction": 0.0 if math.isnan(negative) else negative,
            "width_exponent": expo}


def fit_response(data: dict[str, pd.DataFrame], max_amplitude_v: float = math.inf) -> Response:
    """The :class:`Response` part from the four ``response_*`` tables; ``max_amplitude_v``
    bounds the loop's RESET amplitude (the chip's soft limit). One unit of drive is half the
    span from the 10th-percentile threshold to the graded ceiling."""
    for name in RESPONSE_TABLES:
        if name not in data:
            raise ValueError(f"response data lack the {name!r} table")
    works, amp, floor, high = reset_choice(data["response_reset"], max_amplitude_v)
    th = threshold_stats(data["response_threshold"])
    steps = data["response_steps"]
    set_width = float(np.min(steps["width_s"])) if not steps.empty else float("nan")
    amp_df = data["response_amplitude"]
    ceiling = graded_ceiling(amp_df, high, floor)
    ceiling = max(ceiling, th["threshold_p90_v"] + 0.05)
    drive_span_v = span_of(th["threshold_p10_v"], ceiling)
    fitted = fit_steps(steps, drive_span_v, set_width, th["read_sigma_us"])
    return Response(cells=int(data["response_threshold"]["cell"].nunique()), reset_amplitude_v=amp,
                    reset_works_v=works, reset_width_s=float(data["response_reset"]["width_s"].iloc[0]),
                    reset_floor_us=floor, high_us=high, set_width_s=set_width, set_max_v=ceiling,
                    drive_span_v=drive_span_v, **th, **fitted)
