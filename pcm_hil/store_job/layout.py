"""Stage 3 of the store job, layout: which cell holds what.

Encodes every stored tensor with its code (scales, signs, masks), places replicas by
importance × predicted error, appends the reference cells that calibrate drift at read
time, and converts the result to and from run-store tables (``to_tables``/``from_store``)
so a later ``load`` or ``--resume`` rebuilds it without re-training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from pcm_hil_noisemodel import NoiseModel

from .. import coding
from ..coding import CodeConfig
from .allocation import replicas as allocate_replicas

REF_FRACTIONS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0)  # reference levels, fractions of g_hi


@dataclass(frozen=True)
class LayoutConfig:
    """What the layout stage reads."""

    code: CodeConfig = field(default_factory=CodeConfig)
    replicas_per_weight: float = 1.0  # mean replicas per kept weight, placed by importance
    max_replicas: int = 8
    replicas_per: str = "channel"  # "channel": one count per output channel (its map is nearly free); "weight"
    reference_cells_per_level: int = 32
    g_hi_fraction: float = 1.0  # top of the used window, fraction of the calibrated top level
    # the keep-mask in the cells (sign code on a pruned model): a pruned weight's cell is only
    # RESET, kept weights start ``mask_gap_us`` above it; no coded mask (see coding.encode_mask_in_cells).
    # Off by default: on 6 of 18 devices of the devices bench it lost 0.7–6 pp (pruned cells read
    # above the threshold after a day, where the noise model, calibrated from 1 µS up, did not
    # put them); on pcm-realistic it saves 6 % of the cells
    mask_in_cells: bool = False
    mask_gap_us: float | None = None  # None: from the calibrated noise model (``mask_sigmas``)
    mask_sigmas: float = 3.0          # separation of the pruned and the lowest kept reads, in σ after retention
    # the calibrated gap (mask_gap_us None) above this fraction of the window: the coded mask instead
    # (measured: 0.20 on pcm-realistic paid; 0.32 on random-8 and 0.35 on random-17 lost 1.3 and 4 pp)
    mask_max_gap_fraction: float = 0.25

    def __post_init__(self) -> None:
        if type(self.max_replicas) is not int or not 1 <= self.max_replicas <= 64:
            raise ValueError(f"max_replicas must be an integer in [1, 64], got {self.max_replicas!r}")
        if not (math.isfinite(self.replicas_per_weight) and 1.0 <= self.replicas_per_weight <= self.max_replicas):
            raise ValueError(f"replicas_per_weight must be in [1, {self.max_replicas}], got {self.replicas_per_weight!r}")
        if self.replicas_per not in ("channel", "weight"):
            raise ValueError(f"replicas_per must be 'channel' or 'weight', got {self.replicas_per!r}")
        if type(self.reference_cells_per_level) is not int or not 1 <= self.reference_cells_per_level <= 10_000:
            raise ValueError("reference_cells_per_level must be an integer in [1, 10000]")
        if not 0 < self.g_hi_fraction <= 1:
            raise ValueError(f"g_hi_fraction must be in (0, 1], got {self.g_hi_fraction!r}")
        if not isinstance(self.mask_in_cells, bool):
            raise ValueError(f"mask_in_cells must be True or False, got {self.mask_in_cells!r}")
        if self.mask_gap_us is not None and not (isinstance(self.mask_gap_us, (int, float))
                                                 and math.isfinite(self.mask_gap_us) and self.mask_gap_us > 0):
            raise ValueError(f"mask_gap_us must be a positive number of µS or None, got {self.mask_gap_us!r}")
        if not (isinstance(self.mask_sigmas, (int, float)) and 1.0 <= self.mask_sigmas <= 8.0):
            raise ValueError(f"mask_sigmas must be in [1, 8], got {self.mask_sigmas!r}")
        if not (isinstance(self.mask_max_gap_fraction, (int, float)) and 0 < self.mask_max_gap_fraction <= 0.5):
            raise ValueError(f"mask_max_gap_fraction must be in (0, 0.5], got {self.mask_max_gap_fraction!r}")

    def g_hi(self, noise: NoiseModel) -> float:
        """Top of the used window (µS), from the calibrated levels."""
        return self.g_hi_fraction * noise.levels_us_[-1]


@dataclass
class Layout:
    """Every cell of a stored model, in programming order (weights, then reference cells)."""

    encoded: list[coding.EncodedTensor]
    targets: np.ndarray     # µS per cell
    weight_of: np.ndarray   # per cell: weight index within its tensor (−1 for reference cells)
    tensor_of: np.ndarray   # per cell: tensor index (−1 for reference cells)
    importance: np.ndarray  # per cell: F·gain² (0 for reference cells)
    min_us: np.ndarray | None = None  # per cell: lowest verify-window bottom allowed (mask in cells), −inf: any

    @property
    def reference(self) -> np.ndarray:
        """Mask of the reference cells."""
        return self.tensor_of < 0

    @property
    def weights(self) -> int:
        return int(sum(e.weights for e in self.encoded))

    @property
    def gains(self) -> np.ndarray:
        """Weight per µS of every weight cell (layout order, reference cells excluded)."""
        return np.concatenate([e.gains for e in self.encoded])

    def tensor_info(self) -> list[dict[str, Any]]:
        """Per tensor: name, shape, scale and g_hi, as the run's settings record them."""
        return [{"name": e.name, "shape": list(e.shape), "scale": e.scale, "g_hi": e.g_hi, "floor": e.floor,
                 **({"gap": e.gap, "threshold": e.threshold} if e.mask_in_cells else {})} for e in self.encoded]

    @property
    def mask_cells(self) -> int:
        """Cells that hold pruned weights (mask in the cells)."""
        return int(sum(np.count_nonzero(e.role == coding.PRUNED) for e in self.encoded))

    def to_tables(self, cells: np.ndarray, plan: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The ``side`` table (per weight: kept, sign, replicas) and the ``layout`` table (per
        cell: tensor, weight, role, gain, target and the planned program-and-verify setting)."""
        rows = []
        for k, enc in enumerate(self.encoded):
            keep = enc.mask.ravel() if enc.mask is not None else np.ones(enc.weights, bool)
            neg = np.zeros(enc.weights, bool)
            reps = np.zeros(enc.weights, np.int64)
            reps[keep] = enc.replicas
            if enc.signs is not None:
                neg[keep] = enc.signs
            rows.append(pd.DataFrame({"tensor": k, "weight_index": np.arange(enc.weights),
                                      "keep": keep.astype(np.int64), "negative": neg.astype(np.int64),
                                      "replicas": reps}))
        n_ref = int(self.reference.sum())
        owner = np.concatenate([e.owner for e in self.encoded] + [np.full(n_ref, -1)])
        role = np.concatenate([e.role for e in self.encoded] + [np.full(n_ref, -1)])
        gain = np.concatenate([self.gains, np.ones(n_ref)])
        layout = pd.DataFrame({
            "cell": cells, "tensor": self.tensor_of, "weight": self.weight_of, "owner": owner,
            "role": role.astype(np.int64), "gain": gain, "target_us": self.targets, "importance": self.importance,
            "tolerance_us": plan.tolerance_us, "max_pulses": plan.max_pulses,
            "expected_pulses": plan.expected_pulses, "expected_sq_error_us2": plan.expected_sq_error,
            "aim_us": plan.aim_us})
        return pd.concat(rows, ignore_index=True), layout

    @classmethod
    def from_tables(cls, side: pd.DataFrame, layout: pd.DataFrame, tensors: list[dict[str, Any]],
                    code: CodeConfig, pruned: bool) -> "Layout":
        """The layout as :meth:`to_tables` wrote it (``tensors``: :meth:`tensor_info`)."""
        if layout.empty or side.empty:
            raise ValueError("the run has no complete layout in the store")
        encoded = []
        for k, t in enumerate(tensors):
            sd = side[side["tensor"] == k].sort_values("weight_index")
            lay = layout[layout["tensor"] == k]
            keep = sd["keep"].to_numpy(bool)
            encoded.append(coding.EncodedTensor(
                t["name"], tuple(t["shape"]), t["scale"], t["g_hi"], keep.reshape(t["shape"]) if pruned else None,
                sd["negative"].to_numpy(bool)[keep] if code.sign_bits else None, sd["replicas"].to_numpy()[keep],
                lay["target_us"].to_numpy(), lay["owner"].to_numpy(), lay["role"].to_numpy(),
                lay["gain"].to_numpy() if "gain" in lay else np.ones(len(lay)), t.get("floor", 0.0),
                t.get("gap", 0.0), t.get("threshold")))
        return cls(encoded, layout["target_us"].to_numpy(), layout["weight"].to_numpy(),
                   layout["tensor"].to_numpy(), layout["importance"].to_numpy())


def encode(model: nn.Module, names: list[str], masks: dict[str, np.ndarray] | None, importance: dict[str, np.ndarray],
           noise: NoiseModel, cfg: LayoutConfig, retention_s: float) -> Layout:
    """Cells of every stored tensor of ``model`` plus the reference cells."""
    g_hi = cfg.g_hi(noise)
    params = dict(model.named_parameters())
    tensors = {n: params[n].detach().numpy() for n in names}
    in_cells = mask_in_cells(cfg, masks is not None)
    gap, thr = mask_gap(noise, g_hi, retention_s, cfg) if in_cells else (None, None)
    if in_cells and cfg.mask_gap_us is None and gap > cfg.mask_max_gap_fraction * g_hi:
        in_cells, gap, thr = False, None, None  # too narrow a window on this chip for the gap: the coded mask
    replicas = _replicas(cfg, noise, g_hi, tensors, masks, importance, retention_s, gap)
    low = gap - float(np.min(noise.tolerances_us_)) if in_cells else -np.inf
    encoded, targets, weight_of, tensor_of, cell_imp, min_us = [], [], [], [], [], []
    for k, n in enumerate(names):
        enc = coding.encode(n, tensors[n], cfg.code, g_hi, None if masks is None else masks[n], replicas[n], gap, thr)
        encoded.append(enc)
        kept = np.flatnonzero(enc.mask.ravel()) if enc.mask is not None else np.arange(enc.weights)
        targets.append(enc.targets_us)
        own = np.maximum(enc.owner, 0)
        where = np.concatenate([np.arange(enc.weights), kept[own[enc.weights:]]]) if enc.mask_in_cells else kept[own]
        weight_of.append(where)
        tensor_of.append(np.full(enc.cells, k))
        cell_imp.append(np.where(enc.owner >= 0, importance[n].ravel()[kept][own] * enc.gains ** 2, 0.0))
        min_us.append(np.where(enc.owner >= 0, low, -np.inf))
    ref = np.repeat(np.array(REF_FRACTIONS) * g_hi, cfg.reference_cells_per_level)
    return Layout(encoded, np.concatenate([*targets, ref]), np.concatenate([*weight_of, np.full(ref.size, -1)]),
                  np.concatenate([*tensor_of, np.full(ref.size, -1)]), np.concatenate([*cell_imp, np.zeros(ref.size)]),
                  np.concatenate([*min_us, np.full(ref.size, -np.inf)]) if in_cells else None)


def mask_in_cells(cfg: LayoutConfig, pruned: bool) -> bool:
    """Whether the keep-mask goes in the cells: asked for, the sign code, a pruned model
    (other codes and unpruned models keep the coded mask, or need none)."""
    return cfg.mask_in_cells and pruned and cfg.code.code == "sign"


def mask_gap(noise: NoiseModel, g_hi: float, retention_s: float, cfg: LayoutConfig) -> tuple[float, float]:
    """(gap, threshold) µS of the mask in the cells, from the calibrated noise model, on the
    raw reads ``retention_s`` after programming (the mask is decided before drift
    compensation): the RESET cells' upper read is their drifted floor plus ``mask_sigmas`` σ
    (1/f growth, read noise); the gap is the lowest level whose cells, programmed at the
    tightest calibrated tolerance, read (mean drift; σ of the loop, drift spread, 1/f
    growth, read noise) ``mask_sigmas`` σ above it; the threshold lies halfway between that
    upper read and the mean read of a cell at the gap. ``cfg.mask_gap_us`` given: that gap
    (checked against the threshold and the window)."""
    z = cfg.mask_sigmas
    ell = math.log(max(retention_s, noise.t0_s_) / noise.t0_s_)
    k = noise.read_noise_.averaging_exponent

    def drifted(g: np.ndarray) -> np.ndarray:  # mean raw read of cells programmed at g (µS)
        return g * np.exp(-noise.nu_mean(g) * ell)

    def spread(g: np.ndarray) -> np.ndarray:  # σ² that drift spread, 1/f growth and read noise add (µS²)
        growth = np.interp(g, noise.drift_.levels_us, noise.drift_.growth_per_ln_t)
        return g ** 2 * (noise.nu_std(g) ** 2 * ell ** 2 + growth * ell) + (noise.read_sigma(g) * noise.n_avg_ ** -k) ** 2

    floor = np.array([noise.window_.g_floor_us])
    pruned_upper = float(drifted(floor)[0] + z * np.sqrt(spread(floor))[0])
    if cfg.mask_gap_us is not None:
        gap = float(cfg.mask_gap_us)
    else:
        grid = np.linspace(floor[0], g_hi / 2, 2001)
        tol = float(np.min(noise.tolerances_us_))
        sd = np.exp(-noise.nu_mean(grid) * ell) * np.sqrt(noise.sigma(grid, tol) ** 2 + spread(grid))
        ok = drifted(grid) - z * sd >= pruned_upper
        if not ok.any():
            raise ValueError(f"no mask gap up to half the window ({g_hi / 2:.3g} µS) separates kept from pruned "
                             f"cells by {z:g} σ on this chip: lower mask_sigmas or store the coded mask")
        gap = float(grid[np.argmax(ok)])
    threshold = 0.5 * (pruned_upper + float(drifted(np.array([gap]))[0]))
    coding.check_gap(gap, threshold, g_hi)
    return gap, threshold


def _replicas(cfg: LayoutConfig, noise: NoiseModel, g_hi: float, tensors: dict[str, np.ndarray],
              masks: dict[str, np.ndarray] | None, imp: dict[str, np.ndarray], retention_s: float,
              gap: float | None = None) -> dict[str, np.ndarray | int]:
    """Replicas per kept weight: uniform, or by importance × predicted error after retention
    (``gap``: the mask in the cells, kept magnitudes on [gap, g_hi])."""
    code = cfg.code
    if not code.replicable or cfg.replicas_per_weight == 1.0:
        return {n: code.redundancy if code.replicable else 1 for n in tensors}
    tol = 0.5 if 0.5 in noise.tolerances_us_ else noise.tolerances_us_[0]
    cap = min(20, noise.max_pulses_)
    weight, var, groups, sizes = [], [], [], []
    channels = 0  # output channels of the tensors before this one: groups are numbered across tensors
    for n, w in tensors.items():
        v = coding.kept_values(w, None if masks is None else masks[n])
        a, s, _ = coding.magnitudes_us(v, code, g_hi, masks is not None)
        g = a + g_hi / 2 if code.code == "offset" else np.abs(a)
        if gap is not None:  # the same magnitudes on the narrower window [gap, g_hi]
            g, s = gap + g * (g_hi - gap) / g_hi, s * g_hi / (g_hi - gap)
        var.append(noise.sq_error_after(g, tol, cap, retention_s))
        keep = imp[n].ravel() if masks is None else imp[n].ravel()[masks[n].ravel()]
        weight.append(keep * s ** 2)
        flat = np.arange(w.size) if masks is None else np.flatnonzero(masks[n].ravel())
        groups.append(channels + flat // (w.size // w.shape[0]))
        channels += w.shape[0]
        sizes.append(v.size)
    weight_all, var_all = np.concatenate(weight), np.concatenate(var)
    per = code.cells_per_replica
    r = allocate_replicas(weight_all, var_all, per, cfg.replicas_per_weight * weight_all.size * per, cfg.max_replicas,
                          groups=np.concatenate(groups) if cfg.replicas_per == "channel" else None)
    return dict(zip(tensors, np.split(r, np.cumsum(sizes)[:-1])))
