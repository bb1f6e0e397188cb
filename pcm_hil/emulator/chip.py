"""The emulated PCM chip: per-cell pulse physics, vectorized over cells with numpy.

State per cell (37 bytes): programmed conductance, programming time, drift exponent,
pulse-history factor P, device efficiency, device saturation, stuck code, and the
accumulated 1/f noise with its log-time progress. See ``docs/emulator.md`` for the model.

The emulator is the ground truth: it never uses a fitted noise model.
"""
from __future__ import annotations

import json
import math
import time as _time
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..chip import Chip, Geometry, PulseKind, SoftLimits
from .profile import Profile, resolve

F32 = np.float32
K_B_EV = 8.617333262e-5  # Boltzmann constant, eV/K

STUCK_NONE, STUCK_RESET, STUCK_SET, STUCK_RANDOM = 0, 1, 2, 3
STUCK_NAMES = {STUCK_RESET: "reset", STUCK_SET: "set", STUCK_RANDOM: "random"}


class EmulatedChip(Chip):
    """A seeded software PCM chip behind the chip interface.

    Parameters
    ----------
    geometry: arrays × rows × cols (default 4 × 512 × 512 = 1,048,576 cells).
    profile: a :class:`Profile`, a preset name or a profile file.
    seed: chip seed: fixes device parameters and stuck cells, and seeds the noise.
    limits: soft safety limits.
    real_time: if True, ``wait`` sleeps and ``now`` follows the wall clock.
    """

    def __init__(
        self,
        geometry: Geometry | None = None,
        profile: "Profile | str | None" = None,
        seed: int = 0,
        limits: SoftLimits | None = None,
        real_time: bool = False,
    ) -> None:
        super().__init__(geometry or Geometry(), limits)
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.profile = resolve(profile)
        self.seed = int(seed)
        self.real_time = bool(real_time)
        self.truth_us: np.ndarray | None = None  # see track_truth
        self.state_file: Path | None = None  # where sync() saves the chip, like non-volatile cells
        self._t = 0.0
        self._t_wall0 = _time.monotonic()
        device_ss, noise_ss = np.random.SeedSequence(self.seed).spawn(2)
        self._rng = np.random.Generator(np.random.SFC64(noise_ss))
        self._init_state(np.random.Generator(np.random.SFC64(device_ss)))

    # -- state -------------------------------------------------------------------------
    def _init_state(self, rng: np.random.Generator) -> None:
        p, n = self.profile, self.geometry.n_cells
        self.eff = np.exp(rng.standard_normal(n, dtype=F32) * F32(p.efficiency_sigma_ln)).astype(F32)
        self.g_sat = (p.g_max_us * (1 + p.g_max_spread * rng.standard_normal(n, dtype=F32))).astype(F32)
        np.clip(self.g_sat, 2 * p.g_floor_us, None, out=self.g_sat)
        # stuck cells: one uniform draw per cell decides the kind
        u = rng.random(n, dtype=F32)
        self.stuck = np.zeros(n, dtype=np.uint8)
        f1, f2 = p.stuck_reset_fraction, p.stuck_reset_fraction + p.stuck_set_fraction
        f3 = f2 + p.stuck_random_fraction
        self.stuck[u < f1] = STUCK_RESET
        self.stuck[(u >= f1) & (u < f2)] = STUCK_SET
        self.stuck[(u >= f2) & (u < f3)] = STUCK_RANDOM
        g_random = rng.uniform(p.g_floor_us, p.g_max_us, n).astype(F32)
        # a stuck cell's value lives in g_sat: SET cannot move it, RESET restores it
        self.g_sat[self.stuck == STUCK_RESET] = F32(p.g_floor_us)
        is_random = self.stuck == STUCK_RANDOM
        self.g_sat[is_random] = g_random[is_random]
        # fresh chip: every cell at the RESET floor, programmed at t = 0
        self.g_prog = np.clip(p.g_floor_us + p.g_floor_sigma_us * rng.standard_normal(n, dtype=F32), 0, None).astype(F32)
        stuck = self.stuck != STUCK_NONE
        self.g_prog[stuck] = self.g_sat[stuck]
        self.t_prog = np.zeros(n, dtype=np.float64)
        self.z_nu = rng.standard_normal(n, dtype=F32)
        self.p_hist = np.ones(n, dtype=F32)
        self.n_rel = np.zeros(n, dtype=F32)
        self.s_last = np.zeros(n, dtype=F32)
        self.pulse_count = np.zeros(n, dtype=np.uint32)  # endurance: pulses each cell has taken
        self._init_extras(rng)

    def _init_extras(self, rng: np.random.Generator) -> None:
        """State of the issue-#13 effects, allocated only when the profile switches them on
        (drawn after every legacy draw, so the legacy presets stay bit-identical)."""
        p, n = self.profile, self.geometry.n_cells
        self._extra: list[str] = []
        self._temp_k = float(p.t_ref_k)
        self._eff_t = [0.0]      # breakpoints of chip time where the temperature changed ...
        self._eff_e = [0.0]      # ... the thermally equivalent time (at t_ref) there ...
        self._eff_rate = [1.0]   # ... and the Arrhenius rate from there on
        if p.vth_spread_v > 0 or p.vth_drift_v_per_decade > 0:
            self.dvth = (F32(p.vth_spread_v) * rng.standard_normal(n, dtype=F32)).astype(F32)
            self._extra.append("dvth")
        if p.vth_drift_v_per_decade > 0:
            self.t_reset = np.zeros(n, dtype=np.float64)
            self._extra.append("t_reset")
        if p.relaxation_on:
            self.rel_off = np.zeros(n, dtype=F32)
            self._extra.append("rel_off")
        if p.endurance_pulses > 0:
            le = math.log10(p.endurance_pulses) + p.endurance_sigma_ln / math.log(10) * rng.standard_normal(n)
            self.log_endurance = le.astype(np.float16)
            self._extra.append("log_endurance")
        if p.stuck_wordline_fraction > 0 or p.stuck_bitline_fraction > 0:  # clustered faults: open lines
            a, r, c = self.geometry.shape
            rows = rng.random((a, r)) < p.stuck_wordline_fraction
            cols = rng.random((a, c)) < p.stuck_bitline_fraction
            bad = (rows[:, :, None] | cols[:, None, :]).reshape(-1)
            self.stuck[bad] = STUCK_RESET
            self.g_sat[bad] = F32(p.g_floor_us)
            self.g_prog[bad] = F32(p.g_floor_us)

    _STATE = ("g_prog", "t_prog", "z_nu", "p_hist", "eff", "g_sat", "stuck", "n_rel", "s_last", "pulse_count")

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the per-cell state arrays (the legacy ones plus those of effects switched on)."""
        return self._STATE + tuple(self._extra)

    @property
    def state_nbytes(self) -> int:
        """Bytes of per-cell state held by the emulator."""
        return sum(getattr(self, a).nbytes for a in self.state_names)

    # -- temperature -------------------------------------------------------------------
    def temperature_k(self) -> float:
        return self._temp_k

    def _set_temperature_k(self, kelvin: float) -> None:
        """Change the chip temperature now: drift, relaxation and 1/f noise run on a thermally
        equivalent clock from here on (Arrhenius with ``ea_drift_ev``)."""
        p, t = self.profile, self.now()
        e = self._equiv_time(np.array([t]))[0]
        rate = math.exp(p.ea_drift_ev / K_B_EV * (1 / p.t_ref_k - 1 / kelvin)) if p.ea_drift_ev else 1.0
        if t <= self._eff_t[-1]:
            self._eff_e[-1], self._eff_rate[-1] = float(e), rate
        else:
            self._eff_t.append(t)
            self._eff_e.append(float(e))
            self._eff_rate.append(rate)
        self._temp_k = float(kelvin)

    def _equiv_time(self, t: np.ndarray) -> np.ndarray:
        """Thermally equivalent time (s at t_ref) of chip times t: t itself while the chip stayed at t_ref."""
        if len(self._eff_t) == 1 and self._eff_rate[0] == 1.0:
            return t
        bt = np.asarray(self._eff_t)
        i = np.maximum(np.searchsorted(bt, t, side="right") - 1, 0)
        return np.asarray(self._eff_e)[i] + np.asarray(self._eff_rate)[i] * (t - bt[i])

    def _thermal_factor(self, lx: np.ndarray) -> "np.ndarray | None":
        """Read-temperature factor of G: thermally activated conduction, Ea larger at low G."""
        p = self.profile
        if self._temp_k == p.t_ref_k or not (p.ea_g_amorphous_ev or p.ea_g_crystalline_ev):
            return None
        x = np.minimum(np.exp(lx), F32(1))
        ea = F32(p.ea_g_amorphous_ev) + F32(p.ea_g_crystalline_ev - p.ea_g_amorphous_ev) * x
        ea *= F32(-(1 / self._temp_k - 1 / p.t_ref_k) / K_B_EV)
        return np.exp(ea, out=ea)

    # -- time --------------------------------------------------------------------------
    def now(self) -> float:
        if self.real_time:
            return self._t + (_time.monotonic() - self._t_wall0)
        return self._t

    def _wait(self, seconds: float) -> None:
        if self.real_time:
            _time.sleep(seconds)
        else:
            self._t += seconds

    def _advance(self, seconds: float) -> None:
        if not self.real_time:
            self._t += seconds

    # -- physics -----------------------------------------------------------------------
    @staticmethod
    def _sel(cells: np.ndarray) -> "slice | np.ndarray":
        """A slice when the cells are one contiguous ascending run (gathers become views)."""
        lo, hi = int(cells[0]), int(cells[-1])
        if hi - lo + 1 == cells.size and (cells.size < 2 or bool(np.all(cells[1:] > cells[:-1]))):
            return slice(lo, hi + 1)
        return cells

    def _log_x(self, g_prog: np.ndarray) -> np.ndarray:
        """ln(G_prog / g_max), the level variable of the drift and 1/f laws."""
        lx = np.maximum(g_prog * F32(1 / self.profile.g_max_us), F32(1e-6))
        return np.log(lx, out=lx)

    def _nu(self, lx: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Drift exponent ν = |μ_ν(x) + σ_ν(x)·z| (aihwkit form)."""
        p = self.profile
        mu = np.clip(F32(p.nu_mean_slope) * lx + F32(p.nu_mean_intercept), p.nu_mean_min, p.nu_mean_max)
        sd = np.clip(F32(p.nu_std_slope) * lx + F32(p.nu_std_intercept), p.nu_std_min, p.nu_std_max)
        sd *= z
        mu += sd
        return np.abs(mu, out=mu)

    def _state_at(self, sel: Any, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Noise-free conductance at time t (µS), age since programming (s, float32), ln x."""
        tp = self.t_prog[sel]
        if len(self._eff_t) > 1:
            age = (self._equiv_time(np.array([t]))[0] - self._equiv_time(tp)).astype(F32)
        else:
            age = (t - tp).astype(F32)
        gp = self.g_prog[sel]
        lx = self._log_x(gp)
        p = self.profile
        if p.relaxation_on:  # post-verify relaxation: the drawn offset unfolds in log time
            tau = F32(p.relax_tau_s)
            fr = np.log1p(age * (1 / tau)) * F32(1 / math.log1p(p.drift_t0_s / p.relax_tau_s))
            np.minimum(fr, F32(1), out=fr)
            fr *= self.rel_off[sel]
            fr += gp
            gp = np.maximum(fr, F32(0.1 * p.g_floor_us), out=fr)
        t0 = F32(self.profile.drift_t0_s)
        if age.size == 0 or float(age.max()) <= t0:  # nobody has drifted yet: exact shortcut
            return gp.copy(), age, lx
        nu = self._nu(lx, self.z_nu[sel])
        f = np.maximum(age, t0)
        f *= F32(1 / t0)
        np.log(f, out=f)
        f *= nu
        np.negative(f, out=f)
        np.exp(f, out=f)
        f *= gp
        f[self.stuck[sel] != STUCK_NONE] = gp[self.stuck[sel] != STUCK_NONE]  # stuck cells do not drift
        return f, age, lx

    def _vth(self, cells: np.ndarray, t: float) -> "np.ndarray | float":
        """SET threshold per cell (V): device spread and drift since the last RESET, both
        weighted by the amorphous fraction (1 − G/g_sat): a crystalline path needs no switching."""
        p = self.profile
        if "dvth" not in self._extra:
            return p.v_set_threshold
        sel = self._sel(cells)
        dv = self.dvth[sel].astype(np.float64)
        if p.vth_drift_v_per_decade > 0:
            since = self._equiv_time(np.array([t]))[0] - self._equiv_time(self.t_reset[sel])
            dv = dv + p.vth_drift_v_per_decade * np.log10(np.maximum(since, p.vth_drift_t0_s) / p.vth_drift_t0_s)
        amorph = np.clip(1 - self.g_prog[sel] / self.g_sat[sel], 0, 1)
        return np.maximum(p.v_set_threshold + dv * amorph, 0.0)

    def _drive(self, amplitude_v: np.ndarray, width_s: np.ndarray, vth: "np.ndarray | float | None" = None) -> np.ndarray:
        """Pulse drive relative to the reference SET pulse (0 below threshold), float32."""
        p = self.profile
        vth = p.v_set_threshold if vth is None else vth
        d = np.clip((amplitude_v - vth) * (1 / (p.v_set_ref - p.v_set_threshold)), 0, None)
        d *= (width_s * (1 / p.w_set_ref_s)) ** p.width_exponent
        return np.minimum(d, p.drive_max).astype(F32)

    def _pulse(self, cells: np.ndarray, kind: PulseKind, amplitude_v: np.ndarray, width_s: np.ndarray) -> None:
        t = self.now()
        self.pulse_count[self._sel(cells)] += np.uint32(1)
        if self.profile.shape_physics:
            self._pulse_by_shape(cells, kind, amplitude_v, width_s, t)
        elif kind is PulseKind.RESET:
            melt = amplitude_v >= self.profile.v_melt
            if melt.size == 1 or np.all(melt == melt[0]):
                if melt[0]:
                    self._reset(cells, t)
                else:
                    self._set(cells, amplitude_v, width_s, t)
            else:  # a RESET below the melt threshold only heats: it acts as a partial SET
                self._reset(cells[melt], t)
                keep = ~melt
                self._set(cells[keep], amplitude_v[keep], width_s[keep], t)
        else:
            self._set(cells, amplitude_v, width_s, t)
        self._advance(float(np.max(width_s)) + self.profile.pulse_overhead_s)

    def _pulse_by_shape(self, cells: np.ndarray, kind: PulseKind, amplitude_v: np.ndarray, width_s: np.ndarray,
                        t: float) -> None:
        """The amplitude decides, the kind says only the trailing edge: at or above V_melt a fast
        edge melt-quenches (RESET) and a slow one recrystallizes the melt (full SET); below it a
        fast edge partially RESETs, a slow one crystallizes (partial SET)."""
        p, pulsed = self.profile, cells
        amp = np.broadcast_to(amplitude_v, cells.shape)
        wid = np.broadcast_to(width_s, cells.shape)
        melt = amp >= p.v_melt
        if melt.any():
            m = np.flatnonzero(melt)
            if kind is PulseKind.RESET:
                self._reset(cells[m], t)
            else:
                self._melt_set(cells[m], t)
            keep = np.flatnonzero(~melt)
            cells, amp, wid = cells[keep], amp[keep], wid[keep]
        if cells.size:
            self._set(cells, amp, wid, t, partial_reset=kind is PulseKind.RESET)
        if p.endurance_pulses > 0:
            self._wear_out(pulsed)

    def _wear_out(self, cells: np.ndarray) -> None:
        """Cells past their endurance become stuck at SET for good."""
        sel = self._sel(cells)
        worn = np.log10(np.maximum(self.pulse_count[sel], 1).astype(F32)) > self.log_endurance[sel]
        worn &= self.stuck[sel] == STUCK_NONE
        if worn.any():
            w = cells[worn]
            self.stuck[w] = STUCK_SET
            self.g_prog[w] = self.g_sat[w]

    def _g_cap(self, sel: Any) -> np.ndarray:
        """Per-device saturation, closed by wear (window loss per decade of pulses past the onset)."""
        p = self.profile
        if not p.wear_window_loss_per_decade:
            return self.g_sat[sel]
        dec = np.log10(np.maximum(self.pulse_count[sel].astype(F32) * F32(1 / p.wear_onset_pulses), F32(1)))
        loss = np.minimum(F32(p.wear_window_loss_per_decade) * dec, F32(0.9))
        cap = self.g_sat[sel] * (F32(1) - loss)
        stuck = self.stuck[sel] != STUCK_NONE
        cap[stuck] = self.g_sat[sel][stuck]
        return cap

    def _melt_set(self, cells: np.ndarray, t: float) -> None:
        """Melt, then a slow trailing edge: the melt recrystallizes, G near the device maximum."""
        if cells.size == 0:
            return
        p, sel = self.profile, self._sel(cells)
        z = np.abs(self._rng.standard_normal(cells.size, dtype=F32))
        g = self._g_cap(sel) * (F32(1) - F32(p.set_state_sigma) * z)
        stuck = self.stuck[sel] != STUCK_NONE
        g[stuck] = self.g_sat[sel][stuck]
        self.p_hist[sel] = 0
        self._programmed(sel, g, t)

    def _reset(self, cells: np.ndarray, t: float) -> None:
        """Melt-quench: G to the floor with spread; a new amorphous region, so a new drift deviate."""
        if cells.size == 0:
            return
        p, sel = self.profile, self._sel(cells)
        g = F32(p.g_floor_us) + F32(p.g_floor_sigma_us) * self._rng.standard_normal(cells.size, dtype=F32)
        np.maximum(g, F32(0.1 * p.g_floor_us), out=g)
        stuck = self.stuck[sel] != STUCK_NONE
        g[stuck] = self.g_sat[sel][stuck]
        self.z_nu[sel] = self._rng.standard_normal(cells.size, dtype=F32)
        self.p_hist[sel] = 1
        if "t_reset" in self._extra:
            self.t_reset[sel] = t
        if p.thermal_disturb_us:
            self._thermal_disturb(cells)
        self._programmed(sel, g, t)

    def _thermal_disturb(self, cells: np.ndarray) -> None:
        """A melting cell heats its word-line neighbours (±1 column): they crystallize a little.
        The neighbours' drift clocks are not restarted."""
        p, cols = self.profile, self.geometry.cols
        c = cells % cols
        nb = np.unique(np.concatenate([cells[c > 0] - 1, cells[c < cols - 1] + 1]))
        nb = nb[~np.isin(nb, cells, assume_unique=True)]
        nb = nb[self.stuck[nb] == STUCK_NONE]
        if nb.size:
            g = self.g_prog[nb]
            g += F32(p.thermal_disturb_us) * np.clip(F32(1) - g * F32(1 / p.g_max_us), 0, 1)
            self.g_prog[nb] = np.minimum(g, self.g_sat[nb])

    def _set(self, cells: np.ndarray, amplitude_v: np.ndarray, width_s: np.ndarray, t: float,
             partial_reset: bool = False) -> None:
        """Partial SET: a noisy step that shrinks as the cell fills (Nandakumar 2018); with
        ``partial_reset`` (a fast trailing edge below V_melt) part of the cell re-amorphizes."""
        p = self.profile
        vth = self._vth(cells, t)
        d = self._drive(amplitude_v, width_s, vth)
        m = None
        if partial_reset:
            v = np.broadcast_to(amplitude_v, cells.shape)
            m = np.clip((v - vth) / (p.v_melt - vth), 0, 1) ** p.partial_reset_exponent
            m = np.broadcast_to(m, cells.shape).astype(F32)
            d = np.broadcast_to(d, cells.shape) * (F32(1) - m)
        if d.size > 1 and not np.all(d > 0):  # cells below threshold are not touched at all
            moved = d > 0
            cells, d = cells[moved], d[moved]
            if m is not None:
                m = m[moved]
        if cells.size == 0 or not np.any(d > 0):
            return
        sel = self._sel(cells)
        g, _, _ = self._state_at(sel, t)
        scale = F32(p.g_max_us / p.step_window_us)
        gs = g * F32(1 / scale)
        ph = self.p_hist[sel]
        mu = F32(p.step_m1) * gs + F32(p.step_c1_us)
        mu += F32(p.step_a1_us) * ph
        mu *= self.eff[sel]
        mu *= d
        sd = F32(p.step_m2) * gs + F32(p.step_c2_us)
        sd += F32(p.step_a2_us) * ph
        sd *= d
        sd *= self._rng.standard_normal(cells.size, dtype=F32)
        mu += sd
        if not p.negative_steps:
            np.maximum(mu, 0, out=mu)  # G only decreases through RESET
        mu *= scale
        extra = p.shape_physics or p.negative_steps or p.sat_asymptotic or p.wear_window_loss_per_decade
        if not extra:
            g += mu
            np.minimum(g, self.g_sat[sel], out=g)  # per-device saturation; holds stuck cells in place
        else:
            cap = self._g_cap(sel)
            if p.sat_asymptotic:  # a rise Δ takes h·(1 − e^(−Δ/h)) of the headroom h = cap − G
                head = np.maximum(cap - g, F32(1e-3))
                rise = np.exp(-np.maximum(mu, 0) / head)
                rise = head - head * rise
                mu = np.where(mu > 0, rise, mu)
            g += mu
            np.minimum(g, cap, out=g)
            np.maximum(g, F32(0.1 * p.g_floor_us), out=g)
            if m is not None:  # partial RESET: the melted fraction m quenches to the floor
                g *= F32(1) - m
                g += F32(p.g_floor_us) * m
                ph = np.maximum(ph, m)
            stuck = self.stuck[sel] != STUCK_NONE
            g[stuck] = self.g_sat[sel][stuck]
        ph *= F32(math.exp(-1.0 / p.step_p_decay_pulses))
        self.p_hist[sel] = ph
        self._programmed(sel, g, t)

    def _programmed(self, sel: Any, g: np.ndarray, t: float) -> None:
        """Store a freshly programmed state: restart the drift clock and the 1/f noise."""
        self.g_prog[sel] = g
        self.t_prog[sel] = t
        self.n_rel[sel] = 0
        self.s_last[sel] = 0
        if self.profile.relaxation_on:  # the offset this programming will relax to, by t0
            x = g * F32(1 / self.profile.g_max_us)
            r = self.profile.relax_sigma(x).astype(F32)
            r *= self._rng.standard_normal(r.size, dtype=F32)
            r[self.stuck[sel] != STUCK_NONE] = 0
            self.rel_off[sel] = r

    def _read(self, cells: np.ndarray, n_avg: int) -> np.ndarray:
        p, sel = self.profile, self._sel(cells)
        g, age, lx = self._state_at(sel, self.now())
        # accumulated 1/f noise: its variance grows as ln((age + t_r)/(2 t_r)) since programming
        s_now = np.maximum((age + F32(p.t_read_s)) * F32(0.5 / p.t_read_s), F32(1))
        np.log(s_now, out=s_now)
        s_old = self.s_last[sel]
        qs = lx * F32(-p.q_s_exp)  # Q_s = min(coeff / x^exp, max)
        np.exp(qs, out=qs)
        qs *= F32(p.q_s_coeff)
        np.minimum(qs, F32(p.q_s_max), out=qs)
        if p.flicker_stationary:
            # stationary 1/f: only the spectrum below 1/Δt is shared by two reads Δt apart, so
            # cov = Q²·(s_now − ln(1 + Δt/t_r)), clipped to [0, Q²·s_old]; marginal Q²·s_now kept
            a_old = np.exp(s_old) * F32(2 * p.t_read_s) - F32(p.t_read_s)
            dt = np.maximum(age - a_old, F32(0))
            c = s_now - np.log1p(dt * F32(1 / p.t_read_s))
            c /= np.maximum(s_old, F32(1e-12))
            np.clip(c, 0, 1, out=c)
            inc = s_now - c * c * s_old
            np.maximum(inc, 0, out=inc)
            np.sqrt(inc, out=inc)
            inc *= qs
            inc *= self._rng.standard_normal(cells.size, dtype=F32)
            n_rel = self.n_rel[sel] * c + inc
        else:
            inc = s_now - s_old
            np.maximum(inc, 0, out=inc)
            np.sqrt(inc, out=inc)
            inc *= qs
            inc *= self._rng.standard_normal(cells.size, dtype=F32)
            n_rel = self.n_rel[sel] + inc  # a new array: the state must not see the "+1" below
        self.n_rel[sel] = n_rel
        np.maximum(s_now, s_old, out=s_now)
        self.s_last[sel] = s_now
        # white per-read noise, averaged over n_avg reads
        k = F32(1 / math.sqrt(n_avg))
        sigma = F32(p.read_noise_rel) * k * g
        sigma += F32(p.read_noise_abs_us) * k
        sigma *= self._rng.standard_normal(cells.size, dtype=F32)
        n_rel += 1
        g *= n_rel
        tf = self._thermal_factor(lx)
        if tf is not None:
            g *= tf
        if self.truth_us is not None:
            self.truth_us[sel] = g  # what the cell held as it was read, before the read's own noise
        g += sigma
        if p.read_disturb_us:  # each read crystallizes a little (drift clock not restarted)
            gp = self.g_prog[sel]
            gp += F32(p.read_disturb_us * n_avg) * np.clip(F32(1) - gp * F32(1 / p.g_max_us), 0, 1)
            ok = self.stuck[sel] == STUCK_NONE
            self.g_prog[sel] = np.where(ok, np.minimum(gp, self.g_sat[sel]), gp)
        self._advance(n_avg * p.read_time_s)
        return g

    # -- persistence (emulator only: a chip "stays on the bench" between processes) -------
    def save_state(self, path: "str | Path") -> None:
        """Write the whole chip (state, clock, noise stream) to an .npz file, atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        meta = {"geometry": asdict(self.geometry), "profile": asdict(self.profile), "seed": self.seed,
                "limits": asdict(self.limits), "t": self.now(), "rng": self._rng.bit_generator.state,
                "temperature": {"k": self._temp_k, "t": self._eff_t, "e": self._eff_e, "rate": self._eff_rate}}
        try:
            np.savez(tmp, meta=np.array(json.dumps(meta, default=lambda o: o.tolist())),
                     **{a: getattr(self, a) for a in self.state_names})
            tmp.replace(path)
        except BaseException:  # a full disk: no half-written file left behind; the last state stays
            tmp.unlink(missing_ok=True)
            raise

    def sync(self) -> None:
        if self.state_file is not None:
            self.save_state(self.state_file)

    @classmethod
    def load_state(cls, path: "str | Path") -> "EmulatedChip":
        """The chip saved by :meth:`save_state`, its clock where it was."""
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"]))
                chip = cls(Geometry(**meta["geometry"]), profile=Profile.from_dict(meta["profile"]), seed=meta["seed"],
                           limits=SoftLimits(**meta["limits"]))
                arrays = {a: f[a] for a in chip.state_names if a != "pulse_count" or a in f.files}  # older files lack it
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path} is not a saved emulated chip: {exc}") from None
        for a, v in arrays.items():
            if v.shape != getattr(chip, a).shape or v.dtype != getattr(chip, a).dtype:
                raise ValueError(f"{path}: state array {a} does not match the chip")
            setattr(chip, a, v.copy())
        chip._t = float(meta["t"])
        rng = meta["rng"]
        rng["state"] = {k: np.asarray(v, dtype=np.uint64) for k, v in rng["state"].items()}
        chip._rng.bit_generator.state = rng
        temp = meta.get("temperature")
        if temp:
            chip._temp_k, chip._eff_t, chip._eff_e, chip._eff_rate = temp["k"], temp["t"], temp["e"], temp["rate"]
        chip.state_file = Path(path)
        return chip

    # -- ground truth (emulator only: what calibration tries to recover) -----------------
    def true_conductance(self, cells: Any = None) -> np.ndarray:
        """Noise-free drifted conductance (µS) now; emulator-only, for tests and reports."""
        g, _, lx = self._state_at(self.cells(cells), self.now())
        tf = self._thermal_factor(lx)
        return g if tf is None else g * tf

    def track_truth(self) -> None:
        """From now on keep, per cell, the conductance it held at its last read, without the
        read's white noise (``truth_us``, NaN for cells not read since); emulator-only: the
        ground truth that tests judge program-and-verify against."""
        self.truth_us = np.full(self.geometry.n_cells, np.nan, np.float32)

    def inject_stuck(self, cells: Any) -> None:
        """Emulator-only fault: these cells become stuck where they are now."""
        idx = self.cells(cells)
        g = self._state_at(idx, self.now())[0]
        self.stuck[idx] = STUCK_RANDOM
        self.g_sat[idx] = g
        self.g_prog[idx] = g
        self.t_prog[idx] = self.now()

    def stuck_kind(self, cells: Any = None) -> np.ndarray:
        """Stuck code per cell (0 none, 1 at RESET, 2 at SET, 3 at a random value); emulator-only."""
        return self.stuck[self.cells(cells)]

    def write_counts(self, cells: Any = None) -> np.ndarray:
        """The endurance counter: pulses each cell has taken since the chip was made."""
        return self.pulse_count[self.cells(cells)].astype(np.int64)

    def chip_id(self) -> str:
        shape = "x".join(str(v) for v in self.geometry.shape)
        return f"emulated:{self.profile.name}:seed={self.seed}:{shape}"

    def sibling(self, offset: int) -> "EmulatedChip":
        if type(offset) is not int or offset < 1:
            raise ValueError(f"offset must be a positive integer, got {offset!r}")
        other = EmulatedChip(self.geometry, profile=self.profile, seed=self.seed + offset, limits=self.limits)
        if self.temperature_k() != other.temperature_k():
            other.set_temperature_k(self.temperature_k())
        return other

    def attach_state(self, path: "str | Path") -> None:
        self.state_file = Path(path)
        self.sync()

    def identity(self) -> dict[str, Any]:
        info = super().identity()
        info.update(profile=self.profile.name, seed=self.seed, real_time=self.real_time,
                    profile_parameters=asdict(self.profile))
        return info
