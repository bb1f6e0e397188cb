"""Codes between weights and conductances.

A code maps the weights of one tensor to target conductances of cells (µS) and back.
Per-tensor adaptive mapping: ``scale = clip / g_hi`` (weight per µS), with ``clip`` the
``percentile`` of |w| (values beyond are clipped). Codes:

=============  =====================================================  ===========================
code           cells per weight                                        digital side information
=============  =====================================================  ===========================
``sign``       r cells hold |w|/scale (averaged on decode)             1 sign bit per weight
``pair``       r pairs: G+ = max(w,0)/scale, G− = max(−w,0)/scale       none
``offset``     r cells hold w/scale + g_hi/2 (zero at mid-window)      none
``split``      coarse a (levels) and fine K·(|w| − a), w = a + b/K     1 sign bit per weight
``multilevel`` |w| quantised to ``levels`` equally spaced levels,     1 sign bit per weight
               decoded to the nearest level
=============  =====================================================  ===========================

Every code also reports each cell's gain |∂w/∂G| (weight per µS), which the allocator
uses to weigh the cell's error by the weight's importance. Pruned weights (mask 0) take
no cells; the mask costs one bit per weight. Side information is counted in bits here and
converted to cells by the cost accounting.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

CODES = ("sign", "pair", "offset", "split", "multilevel")


@dataclass(frozen=True)
class CodeConfig:
    """How weights become conductances."""

    code: str = "sign"
    redundancy: int = 1
    percentile: float = 100.0
    levels: int = 8          # multilevel: levels of |w| including 0
    coarse_levels: int = 4   # split: levels of the coarse part

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(f"unknown code {self.code!r}; codes: {', '.join(CODES)}")
        if not isinstance(self.redundancy, int) or not 1 <= self.redundancy <= 8:
            raise ValueError(f"redundancy must be an integer in [1, 8], got {self.redundancy!r}")
        if not 50.0 <= self.percentile <= 100.0:
            raise ValueError(f"percentile must be in [50, 100], got {self.percentile!r}")
        if not 2 <= self.levels <= 64 or not 2 <= self.coarse_levels <= 16:
            raise ValueError("levels must be in [2, 64] and coarse_levels in [2, 16]")
        if self.code in ("split", "multilevel") and self.redundancy != 1:
            raise ValueError(f"code {self.code!r} does not take redundancy")

    @property
    def cells_per_weight(self) -> int:
        return {"sign": 1, "pair": 2, "offset": 1, "split": 2, "multilevel": 1}[self.code] * self.redundancy

    @property
    def sign_bits(self) -> bool:
        return self.code in ("sign", "split", "multilevel")


@dataclass
class EncodedTensor:
    """One tensor's cells: targets (µS), gains (weight per µS), and what decodes them."""

    name: str
    shape: tuple[int, ...]
    scale: float              # weight per µS
    g_hi: float               # top of the window used (µS)
    mask: np.ndarray | None   # bool, kept weights (None: nothing pruned)
    signs: np.ndarray | None  # bool, negative weights among the kept ones (codes with digital signs)
    targets_us: np.ndarray    # (kept, cells_per_weight)
    gains: np.ndarray         # (kept, cells_per_weight)

    @property
    def weights(self) -> int:
        return int(np.prod(self.shape))

    @property
    def kept(self) -> int:
        return self.targets_us.shape[0]


def encode(name: str, w: np.ndarray, cfg: CodeConfig, g_hi: float, mask: np.ndarray | None = None) -> EncodedTensor:
    """Cells for one tensor. ``g_hi``: top of the usable window (µS)."""
    w = np.asarray(w, dtype=np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError(f"tensor {name} holds NaN or infinite weights")
    if not (np.isfinite(g_hi) and g_hi > 0):
        raise ValueError(f"g_hi must be a positive number of µS, got {g_hi!r}")
    flat = w.ravel()
    keep = np.ones(flat.size, bool) if mask is None else np.asarray(mask, bool).ravel()
    if keep.size != flat.size:
        raise ValueError(f"mask of {name} has {keep.size} entries for {flat.size} weights")
    v = flat[keep]
    clip = float(np.percentile(np.abs(v), cfg.percentile)) if v.size else 0.0
    clip = clip if clip > 0 else 1.0
    span = g_hi / 2 if cfg.code == "offset" else g_hi
    scale = clip / span
    a = np.clip(v, -clip, clip) / scale  # µS, signed
    r = cfg.redundancy
    signs = (v < 0) if cfg.sign_bits else None
    if cfg.code == "sign":
        t, gain = np.repeat(np.abs(a)[:, None], r, 1), np.full((v.size, r), scale / r)
    elif cfg.code == "pair":
        t = np.concatenate([np.repeat(np.maximum(a, 0)[:, None], r, 1), np.repeat(np.maximum(-a, 0)[:, None], r, 1)], 1)
        gain = np.full((v.size, 2 * r), scale / r)
    elif cfg.code == "offset":
        t, gain = np.repeat((a + span)[:, None], r, 1), np.full((v.size, r), scale / r)
    elif cfg.code == "split":
        step = g_hi / (cfg.coarse_levels - 1)
        coarse = np.minimum(np.floor(np.abs(a) / step), cfg.coarse_levels - 1) * step
        k = g_hi / step  # the fine cell spans one coarse step over the whole window
        t = np.stack([coarse, (np.abs(a) - coarse) * k], 1)
        gain = np.stack([np.full(v.size, scale), np.full(v.size, scale / k)], 1)
    else:  # multilevel
        step = g_hi / (cfg.levels - 1)
        t = (np.round(np.abs(a) / step) * step)[:, None]
        gain = np.full((v.size, 1), scale)
    return EncodedTensor(name, tuple(w.shape), scale, g_hi, None if mask is None else keep.reshape(w.shape),
                         signs, t.astype(np.float64), gain)


def decode(enc: EncodedTensor, reads_us: np.ndarray, cfg: CodeConfig) -> np.ndarray:
    """Weights from the cells' read conductances (shape ``enc.targets_us.shape``)."""
    g = np.asarray(reads_us, dtype=np.float64).reshape(enc.targets_us.shape)
    r, s = cfg.redundancy, enc.scale
    if cfg.code == "sign":
        mag = (np.median(g, 1) if r >= 3 else g.mean(1)) * s
        v = np.where(enc.signs, -mag, mag)
    elif cfg.code == "pair":
        v = (g[:, :r].mean(1) - g[:, r:].mean(1)) * s
    elif cfg.code == "offset":
        v = (g.mean(1) - enc.g_hi / 2) * s
    elif cfg.code == "split":
        step = enc.g_hi / (cfg.coarse_levels - 1)
        coarse = np.clip(np.round(g[:, 0] / step), 0, cfg.coarse_levels - 1) * step  # coarse cell: nearest level
        mag = (coarse + g[:, 1] / (enc.g_hi / step)) * s
        v = np.where(enc.signs, -mag, mag)
    else:
        step = enc.g_hi / (cfg.levels - 1)
        mag = np.clip(np.round(g[:, 0] / step), 0, cfg.levels - 1) * step * s
        v = np.where(enc.signs, -mag, mag)
    out = np.zeros(enc.weights)
    if enc.mask is None:
        out[:] = v
    else:
        out[enc.mask.ravel()] = v
    return out.reshape(enc.shape)


def side_bits(enc: EncodedTensor, cfg: CodeConfig) -> dict[str, int]:
    """Digital side information of one tensor, in bits."""
    return {
        "mask": enc.weights if enc.mask is not None else 0,
        "signs": enc.kept if cfg.sign_bits else 0,
        "metadata": 64,  # scale (fp32) + g_hi (fp32)
    }


def describe(cfg: CodeConfig) -> dict[str, Any]:
    return {**asdict(cfg), "cells_per_weight": cfg.cells_per_weight, "digital_sign": cfg.sign_bits}
