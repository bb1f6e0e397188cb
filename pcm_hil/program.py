"""Program-and-verify over many cells at once, on any :class:`~pcm_hil.chip.Chip`.

PCM can only raise G with SET pulses and lower it with a RESET, so the loop per cell is:
RESET, then SET pulses whose amplitude grows with the remaining error, each followed by an
averaged verify read; on overshoot RESET and start again. Every loop is bounded by a
pulse cap, a RESET-restart cap and a wall-time limit. All cells still in play advance
together: one batched RESET, one batched SET and one batched read per iteration.

The loop adapts per cell: a SET pulse that moved nothing raises that cell's amplitude
(threshold spread, threshold drift after RESET) up to ``set_max_v``; an overshoot damps
its drive; the drive is chosen so that neither the expected step nor its noise exceeds a
fraction of the remaining error; a cell whose G made no new high for ``stall_pulses``
SET pulses at the amplitude ceiling is at its saturation and gives up early.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .chip import Chip, PulseKind, PulseUncertain

if TYPE_CHECKING:
    from pcm_hil_noisemodel import NoiseModel


@dataclass(frozen=True)
class VerifyConfig:
    """Settings of the program-and-verify loop.

    The defaults are a cautious, generic starting point for an unknown PCM chip, not any
    device's numbers: a 2.2 V, 50 ns RESET, SET pulses from 0.4 V that rise per cell when
    nothing moves, an unknown saturation (no slowing assumed) and no post-RESET boost.
    A calibrated chip gives the loop what was measured: :meth:`learned` (from a fitted
    noise model's ``response_`` part) or :meth:`measured_with` (the settings a model's
    level sweep ran with).

    SET amplitude per cell = ``set_threshold_v`` + its learned offset +
    (``set_ref_v`` − ``set_threshold_v``)·drive, at most ``set_max_v``. The expected step of
    one unit of drive (µS) is ``step_ref_us``·max(1 − G/``saturation_us``, 0.15)·(1 +
    ``reset_boost``·e^(−k/``boost_decay_pulses``)), k = SET pulses since the RESET; its σ is
    (``step_sigma_us`` + ``step_sigma_slope``·G)·(1 + ``sigma_boost``·e^(−k/``boost_decay_pulses``)).
    """

    tolerance_us: float = 0.5
    max_pulses: int = 20
    max_resets: int = 3
    n_avg: int = 8
    reset_amplitude_v: float = 2.2
    reset_width_s: float = 50e-9
    set_width_s: float = 100e-9
    set_threshold_v: float = 0.4         # V: first SET amplitude of an unknown cell
    set_ref_v: float = 1.0               # V: amplitude of one unit of drive
    step_ref_us: float = 2.0             # µS: expected step of one unit of drive at G = 0
    saturation_us: float = 1000.0        # µS: G where the mean step vanishes (unknown: far)
    reset_boost: float = 0.0             # 1: extra relative step right after a RESET
    boost_decay_pulses: float = 2.6      # pulses: decay of the post-RESET boost
    aim: float = 0.45                    # 1: fraction of the remaining error one pulse aims at
    drive_min: float = 0.03
    drive_max: float = 1.5
    max_seconds: float = 3600.0
    max_uncertain: int = 5
    set_max_v: float = 1.25              # V: ceiling of every SET amplitude
    threshold_step_v: float = 0.05       # V: per-cell raise after a SET pulse that moved nothing
    move_us: float = 0.3                 # µS: a verify read this far above the last one counts as a move
    backoff: float = 0.6                 # 1: drive factor of a cell after each overshoot
    step_sigma_us: float = 0.0           # µS: σ of one unit of drive's step at G = 0 (0: not known)
    step_sigma_slope: float = 0.0        # 1: growth of that σ per µS of G
    sigma_boost: float = 0.0             # 1: extra relative σ right after a RESET
    stall_pulses: int = 20               # pulses: no new high this long = at its saturation ...
    overshoot_step: float = 1.0          # 1: amplitude offset lowered by this × threshold_step_v per overshoot
    stall_shortfall: float = 0.1         # 1: ... while its highest read is this fraction of the target short
    descend_ratio: float = 0.3           # 1: ... or where the late mean step < this × its σ
    descend_us: float = 10.0             # µS: overshoots up to this above saturation_us are stepped down by SET

    def __post_init__(self) -> None:
        checks = {
            "tolerance_us": (self.tolerance_us, 0.0, 100.0), "max_pulses": (self.max_pulses, 0, 10_000),
            "max_resets": (self.max_resets, 0, 100), "n_avg": (self.n_avg, 1, 1024),
            "reset_amplitude_v": (self.reset_amplitude_v, 0.0, 100.0), "reset_width_s": (self.reset_width_s, 0.0, 1.0),
            "set_width_s": (self.set_width_s, 0.0, 1.0), "step_ref_us": (self.step_ref_us, 0.0, 1e3),
            "saturation_us": (self.saturation_us, 0.0, 1e6),
            "boost_decay_pulses": (self.boost_decay_pulses, 0.0, 1e3), "aim": (self.aim, 0.0, 1.0),
            "drive_min": (self.drive_min, 0.0, 100.0), "drive_max": (self.drive_max, 0.0, 100.0),
            "max_seconds": (self.max_seconds, 0.0, 1e7), "max_uncertain": (self.max_uncertain, 0, 10_000),
            "set_max_v": (self.set_max_v, 0.0, 100.0), "threshold_step_v": (self.threshold_step_v, -1e-12, 10.0),
            "move_us": (self.move_us, 0.0, 1e3), "backoff": (self.backoff, 0.0, 1.0),
            "step_sigma_us": (self.step_sigma_us, -1e-12, 1e3), "step_sigma_slope": (self.step_sigma_slope, -1e-12, 10.0),
            "sigma_boost": (self.sigma_boost, -1e-12, 100.0), "stall_pulses": (self.stall_pulses, 0, 10_000),
            "descend_us": (self.descend_us, -1e-12, 1e3), "stall_shortfall": (self.stall_shortfall, -1e-12, 1.0),
            "overshoot_step": (self.overshoot_step, -1e-12, 100.0), "descend_ratio": (self.descend_ratio, -1e-12, 100.0),
        }
        for name, (v, lo, hi) in checks.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo < v <= hi:
                raise ValueError(f"{name} must be in ({lo}, {hi}], got {v!r}")
        if not 0 <= self.reset_boost <= 100:
            raise ValueError(f"reset_boost must be in [0, 100], got {self.reset_boost!r}")
        if not 0 <= self.set_threshold_v < self.set_ref_v:
            raise ValueError("need 0 <= set_threshold_v < set_ref_v")
        if self.drive_min > self.drive_max:
            raise ValueError("need drive_min <= drive_max")
        if self.set_max_v <= self.set_threshold_v:
            raise ValueError(f"need set_max_v > set_threshold_v, got {self.set_max_v!r} <= {self.set_threshold_v!r}")

    def set_amplitude(self, drive: Any, offset_v: Any = 0.0) -> np.ndarray:
        """SET amplitude (V) of ``drive`` for a cell whose learned threshold offset is ``offset_v``."""
        amp = self.set_threshold_v + np.asarray(offset_v) + (self.set_ref_v - self.set_threshold_v) * np.asarray(drive)
        return np.clip(amp, 0.0, self.set_max_v)

    @property
    def set_top_v(self) -> float:
        """The highest SET amplitude the loop may send (V)."""
        return float(self.set_max_v)

    @classmethod
    def learned(cls, source: Any, base: "VerifyConfig | None" = None, **overrides: Any) -> "VerifyConfig":
        """The loop settings a calibration measured: ``source`` is a fitted noise model (its
        ``response_`` part and read averaging) or a ``Response`` part; every setting it does
        not measure comes from ``base`` (default: the generic defaults), then ``overrides``.
        Refuses a model without a measured response (a model file from before calibration
        measured it: calibrate again, or use :meth:`measured_with`)."""
        resp = getattr(source, "response_", source)
        if resp is None or not callable(getattr(resp, "verify_settings", None)):
            raise ValueError("the noise model has no measured programming response (a model file written before "
                             "calibration measured it): calibrate the chip again, or use VerifyConfig.measured_with")
        settings = asdict(base or cls())
        if hasattr(source, "n_avg_"):
            settings["n_avg"] = source.n_avg_
        return cls(**{**settings, **resp.verify_settings(), **overrides})

    @classmethod
    def measured_with(cls, model: NoiseModel) -> "VerifyConfig":
        """The settings ``model`` (a fitted noise model) was measured with: its
        ``verify_settings_``, the loop's defaults for any it does not record (an old model
        file without them), and always the model's read averaging."""
        try:
            return cls(**{**model.verify_settings_, "n_avg": model.n_avg_})
        except TypeError as exc:  # a setting this version of the loop does not know
            raise ValueError(f"the noise model's verify settings do not fit this loop: {exc}") from None


def naive_config(base: VerifyConfig | None = None, drive: float = 0.3) -> VerifyConfig:
    """The baseline loop without a model: every SET pulse has the same fixed amplitude."""
    return replace(base or VerifyConfig(), drive_min=drive, drive_max=drive)


PENDING, CONVERGED, GAVE_UP = 0, 1, 2


@dataclass
class VerifyState:
    """Where every cell's loop stands: what a checkpoint stores and a resume starts from.

    ``status``: 0 pending (never started or in flight), 1 verified, 2 gave up (out of pulses
    or RESETs). ``need_reset``: the next step is a RESET (True until the first RESET went
    out surely). Pending cells are re-verified by a read before any further pulse.

    The per-cell adaptation (``offset_v``: amplitude raised above the loop's threshold;
    ``damp``: drive factor after overshoots; ``peak_us``/``stall``: the highest read since
    the RESET and the SET pulses since it rose) is not checkpointed: a resumed loop starts it
    afresh and relearns it within a few pulses, so checkpoints of older versions still load.
    """

    final_us: np.ndarray
    pulses: np.ndarray
    resets: np.ndarray
    since_reset: np.ndarray
    need_reset: np.ndarray
    status: np.ndarray
    t_read_s: np.ndarray  # chip time of each cell's last verify read (s)
    iteration: int = 0    # the next iteration number (continues across a resume)
    offset_v: np.ndarray = field(default=None)  # type: ignore[assignment]  # V, learned threshold offset
    damp: np.ndarray = field(default=None)      # type: ignore[assignment]  # 1, drive factor after overshoots
    peak_us: np.ndarray = field(default=None)   # type: ignore[assignment]  # µS, highest read since the RESET
    stall: np.ndarray = field(default=None)     # type: ignore[assignment]  # SET pulses since the peak rose

    def __post_init__(self) -> None:
        n = self.status.size
        for name, fill, dtype in (("offset_v", 0.0, np.float64), ("damp", 1.0, np.float64),
                                  ("peak_us", -np.inf, np.float64), ("stall", 0, np.int64)):
            if getattr(self, name) is None:
                setattr(self, name, np.full(n, fill, dtype))

    @classmethod
    def fresh(cls, n: int) -> "VerifyState":
        return cls(np.zeros(n, np.float32), np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64),
                   np.ones(n, bool), np.zeros(n, np.int8), np.zeros(n))

    def __len__(self) -> int:
        return self.status.size

    def rows(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """Column arrays of the given positions (for a checkpoint table)."""
        return {"final_us": self.final_us[positions].astype(np.float64), "pulses": self.pulses[positions],
                "resets": self.resets[positions], "since_reset": self.since_reset[positions],
                "need_reset": self.need_reset[positions].astype(np.int64),
                "status": self.status[positions].astype(np.int64), "t_read_s": self.t_read_s[positions],
                "iteration": np.full(positions.size, self.iteration, np.int64)}


Checkpoint = Callable[[VerifyState, np.ndarray], None]


@dataclass
class VerifyResult:
    """Per-cell outcome of a program-and-verify run (arrays in the order of ``cells``)."""

    cells: np.ndarray
    targets_us: np.ndarray
    final_us: np.ndarray
    pulses: np.ndarray
    resets: np.ndarray
    converged: np.ndarray
    seconds: float
    stop_reason: str = "done"
    config: dict[str, Any] = field(default_factory=dict)
    uncertain_batches: int = 0
    state: "VerifyState | None" = None

    @property
    def error_us(self) -> np.ndarray:
        return self.final_us - self.targets_us

    def summary(self) -> dict[str, Any]:
        """Yield, pulse statistics and error percentiles (µS)."""
        err = self.error_us
        return {
            "cells": int(self.cells.size),
            "yield": float(np.mean(self.converged)) if self.cells.size else float("nan"),
            "pulses_total": int(self.pulses.sum()),
            "pulses_mean": float(self.pulses.mean()) if self.cells.size else float("nan"),
            "pulses_p95": float(np.percentile(self.pulses, 95)) if self.cells.size else float("nan"),
            "resets_total": int(self.resets.sum()),
            "error_sigma_us": float(np.std(err[self.converged])) if self.converged.any() else float("nan"),
            "error_p99_abs_us": float(np.percentile(np.abs(err), 99)) if self.cells.size else float("nan"),
            "error_histogram_us": self.histogram(),
            "seconds": self.seconds,
            "stop_reason": self.stop_reason,
        }

    def histogram(self, edges: tuple[float, ...] = (-4, -2, -1, -0.5, -0.25, 0, 0.25, 0.5, 1, 2, 4)) -> dict:
        """Counts of final verify errors (µS) per bin; the outer bins are open."""
        e = np.clip(self.error_us, edges[0], edges[-1])
        counts, _ = np.histogram(e, bins=np.asarray(edges, float))
        return {"edges_us": list(edges), "counts": counts.tolist()}


def program_verify(
    chip: Chip,
    cells: Any,
    targets_us: Any,
    config: VerifyConfig | None = None,
    tolerance_us: Any = None,
    max_pulses: Any = None,
    progress: Callable[[int, int], None] | None = None,
    record: Callable[[str, int, np.ndarray, np.ndarray], None] | None = None,
    state: VerifyState | None = None,
    checkpoint: Checkpoint | None = None,
    stop: Callable[[], bool] | None = None,
) -> VerifyResult:
    """Program ``cells`` to ``targets_us`` (µS) with per-cell tolerance and pulse cap.

    ``tolerance_us`` and ``max_pulses`` override the config per cell (scalar or array).
    ``progress(done, total)`` is called after every iteration.
    ``record(event, iteration, positions, values)`` receives every step: ``"reset"`` and
    ``"set"`` with the amplitudes sent (V), ``"read"`` with the verify reads (µS);
    ``positions`` index into ``cells``.

    Resume: ``state`` (from a checkpoint) skips cells already finished and re-verifies the
    pending ones before any pulse. ``checkpoint(state, changed)`` is called after every
    iteration with the positions whose state changed, and once more at the end.
    ``stop()`` is polled between iterations; when it returns True the loop ends with
    ``stop_reason="interrupted"`` after the transaction in flight, its state resumable.
    """
    cfg = config or VerifyConfig()
    idx = chip.cells(cells)
    n = idx.size
    tgt = np.asarray(targets_us, dtype=np.float64)
    if tgt.shape != (n,):
        raise ValueError(f"targets_us must have one value per cell ({n}), got shape {tgt.shape}")
    if not np.all(np.isfinite(tgt)) or (n and (tgt.min() < 0)):
        raise ValueError("targets_us must be finite and >= 0 µS")
    tol = np.broadcast_to(np.asarray(cfg.tolerance_us if tolerance_us is None else tolerance_us, dtype=np.float64), (n,))
    cap = np.broadcast_to(np.asarray(cfg.max_pulses if max_pulses is None else max_pulses), (n,)).astype(np.int64)
    if n and (not np.all(np.isfinite(tol)) or tol.min() <= 0):
        raise ValueError("tolerance_us must be finite and > 0 µS")
    if n and cap.min() < 1:
        raise ValueError("max_pulses must be >= 1")
    chip._unique(idx)
    # check both pulse shapes against the soft limits before anything is sent
    chip.limits.check_pulse(np.array([cfg.reset_amplitude_v]), np.array([cfg.reset_width_s]))
    chip.limits.check_pulse(np.array([cfg.set_top_v]), np.array([cfg.set_width_s]))

    st = VerifyState.fresh(n) if state is None else state
    if len(st) != n:
        raise ValueError(f"the resume state holds {len(st)} cells, the run has {n}")
    final, pulses, resets, since_reset, need_reset = st.final_us, st.pulses, st.resets, st.since_reset, st.need_reset
    t_start = time.monotonic()
    active = np.flatnonzero(st.status == PENDING)
    stop_reason = "done"
    iteration = st.iteration
    uncertain = in_a_row = 0

    def send(sel: np.ndarray, kind: PulseKind, amp: Any, width: float) -> np.ndarray:
        """Pulse; returns per position whether the pulse surely went out. A cell in doubt is
        logged and left to the next verify read. Gives up after ``max_uncertain`` calls in a
        row in which every pulse was in doubt (a bench that is gone)."""
        nonlocal uncertain, in_a_row
        try:
            chip.pulse(idx[sel], kind, amp, width)
            in_a_row = 0
            return np.ones(sel.size, bool)
        except PulseUncertain as exc:
            doubt = np.isin(idx[sel], exc.cells)
            uncertain += 1
            in_a_row = in_a_row + 1 if doubt.all() else 0
            if record:
                record("uncertain", iteration, sel[doubt], np.zeros(int(doubt.sum())))
            if in_a_row > cfg.max_uncertain:
                raise RuntimeError(f"gave up after {in_a_row} pulse calls in a row with unknown outcome") from exc
            return ~doubt

    try:
        while active.size:
            if time.monotonic() - t_start > cfg.max_seconds:
                stop_reason = "wall-time limit"
                break
            if stop is not None and stop():
                stop_reason = "interrupted"
                break
            r = active[need_reset[active]]
            if r.size:
                done = r[send(r, PulseKind.RESET, cfg.reset_amplitude_v, cfg.reset_width_s)]  # doubtful: RESET again
                if record:
                    record("reset", iteration, done, np.full(done.size, cfg.reset_amplitude_v))
                need_reset[done] = False
                since_reset[done] = 0
                st.peak_us[done] = -np.inf
                st.stall[done] = 0
            g = chip.read(idx[active], n_avg=cfg.n_avg)
            st.t_read_s[active] = chip.now()
            if record:
                record("read", iteration, active, g)
            g64 = g.astype(np.float64)
            # adaptation from what the last SET pulse did (a cell just RESET has peak -inf)
            peak = st.peak_us[active]
            pulsed = np.isfinite(peak) & (since_reset[active] > 0)
            moved = g64 > peak + cfg.move_us
            still = pulsed & ~moved
            st.offset_v[active[pulsed & (np.abs(g64 - final[active]) < cfg.move_us)]] += cfg.threshold_step_v  # nothing moved
            st.stall[active[still]] += 1
            st.stall[active[moved | ~pulsed]] = 0
            st.peak_us[active] = np.where(np.isfinite(peak), np.maximum(peak, g64), g64)
            final[active] = g
            err = tgt[active] - g64
            ok = np.abs(err) <= tol[active]
            st.status[active[ok]] = CONVERGED
            over = err < -tol[active]
            out_of_pulses = pulses[active] >= cap[active]
            out_of_resets = over & (resets[active] >= cfg.max_resets)
            # at its saturation (the target above what it reaches): no new high for stall_pulses SET pulses
            # (above the G where the mean step vanishes, or with the amplitude raised to its ceiling)
            top = cfg.set_amplitude(cfg.drive_max, st.offset_v[active]) >= cfg.set_top_v - 1e-9
            # and still more than stall_shortfall short of the target at its best
            short = tgt[active] - st.peak_us[active] > cfg.stall_shortfall * tgt[active]
            saturated = ~over & short & (st.stall[active] >= cfg.stall_pulses) \
                & ((st.peak_us[active] >= cfg.saturation_us) | top)
            # overshoot above the G where the mean step turns negative (learned): a SET pulse lowers G
            # on average there, so step down with SET pulses instead of a RESET
            # (or where the mean step is small against its noise: a step down is about as likely)
            mean_late = cfg.step_ref_us * (1.0 - g64 / cfg.saturation_us)
            noisy = mean_late < cfg.descend_ratio * (cfg.step_sigma_us + cfg.step_sigma_slope * g64)
            descend = over & ((g64 > cfg.saturation_us) | noisy) & (err >= -cfg.descend_us)
            out_of_resets &= ~descend
            keep = ~ok & ~out_of_pulses & ~out_of_resets & ~saturated
            # overshoot: RESET and try again (counted) with a damped drive, the SET on the next round
            restart = keep & over & ~descend
            resets[active[restart]] += 1
            need_reset[active[restart]] = True
            st.damp[active[restart]] *= cfg.backoff
            st.offset_v[active[restart]] -= cfg.overshoot_step * cfg.threshold_step_v  # moved too far: start lower
            go = keep & (~over | descend)
            s = active[go]
            if s.size:
                # programming curve: the step of the reference pulse shrinks as the cell fills
                # and is larger for the first pulses after a RESET; aim short of the target, and
                # keep the step's noise below the same fraction of the remaining error
                gg, k = g64[go], since_reset[s]
                fresh = np.exp(-k / cfg.boost_decay_pulses)
                fall = 1.0 - gg / cfg.saturation_us
                step = cfg.step_ref_us * np.where(over[go], np.abs(fall), np.maximum(fall, 0.15)) \
                    * (1.0 + cfg.reset_boost * fresh)
                noise = (cfg.step_sigma_us + cfg.step_sigma_slope * gg) * (1.0 + cfg.sigma_boost * fresh)
                drive = np.clip(st.damp[s] * cfg.aim * np.abs(err[go]) / np.maximum(step, noise), cfg.drive_min,
                                cfg.drive_max)
                amp = cfg.set_amplitude(drive, st.offset_v[s])
                sure = send(s, PulseKind.SET, amp, cfg.set_width_s)
                if record:
                    record("set", iteration, s[sure], amp[sure])
                pulses[s] += 1
                since_reset[s] += 1
            st.status[active[~ok & ~keep]] = GAVE_UP
            if checkpoint is not None:
                checkpoint(st, active)
            active = active[keep]
            iteration += 1
            st.iteration = iteration
            if progress is not None:
                progress(n - active.size, n)
    except BaseException as exc:
        if checkpoint is not None:  # keep what is known; pending cells are re-verified on resume
            try:
                checkpoint(st, np.empty(0, np.int64))
            except Exception as also:  # noqa: BLE001 - the original error stays the one raised
                exc.add_note(f"the final checkpoint could not be written: {type(also).__name__}: {also}")
        raise
    if checkpoint is not None:
        checkpoint(st, np.empty(0, np.int64))
    return VerifyResult(idx, tgt, final, pulses, resets, st.status == CONVERGED, time.monotonic() - t_start,
                        stop_reason, asdict(cfg), uncertain, st)
