"""Program-and-verify over many cells at once, on any :class:`~pcm_hil.chip.Chip`.

PCM can only raise G with SET pulses and lower it with a RESET, so the loop per cell is:
RESET, then SET pulses whose amplitude grows with the remaining error, each followed by an
averaged verify read; on overshoot RESET and start again. Every loop is bounded by a
pulse cap, a RESET-restart cap and a wall-time limit. All cells still in play advance
together: one batched RESET, one batched SET and one batched read per iteration.
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
    """Settings of the program-and-verify loop (defaults suit the ``pcm`` profile)."""

    tolerance_us: float = 0.5
    max_pulses: int = 20
    max_resets: int = 3
    n_avg: int = 8
    reset_amplitude_v: float = 2.2
    reset_width_s: float = 50e-9
    set_width_s: float = 100e-9
    set_threshold_v: float = 0.5
    set_ref_v: float = 1.0
    step_ref_us: float = 1.8
    saturation_us: float = 23.0
    reset_boost: float = 3.0
    boost_decay_pulses: float = 2.6
    aim: float = 0.35
    drive_min: float = 0.03
    drive_max: float = 1.5
    max_seconds: float = 3600.0
    max_uncertain: int = 5

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
    """

    final_us: np.ndarray
    pulses: np.ndarray
    resets: np.ndarray
    since_reset: np.ndarray
    need_reset: np.ndarray
    status: np.ndarray
    t_read_s: np.ndarray  # chip time of each cell's last verify read (s)
    iteration: int = 0    # the next iteration number (continues across a resume)

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
    v_top = cfg.set_threshold_v + (cfg.set_ref_v - cfg.set_threshold_v) * cfg.drive_max
    chip.limits.check_pulse(np.array([v_top]), np.array([cfg.set_width_s]))

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
            g = chip.read(idx[active], n_avg=cfg.n_avg)
            st.t_read_s[active] = chip.now()
            if record:
                record("read", iteration, active, g)
            final[active] = g
            err = tgt[active] - g
            ok = np.abs(err) <= tol[active]
            st.status[active[ok]] = CONVERGED
            over = err < -tol[active]
            out_of_pulses = pulses[active] >= cap[active]
            out_of_resets = over & (resets[active] >= cfg.max_resets)
            keep = ~ok & ~out_of_pulses & ~out_of_resets
            # overshoot: RESET and try again (counted), the SET happens on the next round
            restart = keep & over
            resets[active[restart]] += 1
            need_reset[active[restart]] = True
            go = keep & ~over
            s = active[go]
            if s.size:
                # programming curve: the step of the reference pulse shrinks as the cell fills
                # and is larger for the first pulses after a RESET; aim short of the target
                step = cfg.step_ref_us * np.maximum(1.0 - g[go] / cfg.saturation_us, 0.15)
                step *= 1.0 + cfg.reset_boost * np.exp(-since_reset[s] / cfg.boost_decay_pulses)
                drive = np.clip(cfg.aim * err[go] / step, cfg.drive_min, cfg.drive_max)
                amp = cfg.set_threshold_v + (cfg.set_ref_v - cfg.set_threshold_v) * drive
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
