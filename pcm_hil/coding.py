"""Codes between weights and conductances.

A code maps the weights of one tensor to target conductances of cells (µS) and back.
Per-tensor adaptive mapping: ``scale = (clip − floor) / span`` (weight per µS), with ``clip``
the ``percentile`` of |w| (values beyond are clipped), ``span`` the usable window and
``floor`` the smallest kept |w| (codes with a digital sign, on a pruned tensor): magnitudes
below the pruning threshold are never stored, so the window starts there
(``from_threshold``; measured on LeNet-5 at 75 % pruning: +1 pp at one replica per weight).

=======================  =====================================================  ===============================
code                     cells per weight (× replicas r_i)                      digital side information
=======================  =====================================================  ===============================
``sign``                 |w|/scale; replicas averaged on decode                 1 sign bit per kept weight
``sign``, mask in cells  one per position: pruned RESET, kept gap + |w|/scale   signs; kept weights per channel
``pair``                 G+ = max(w,0)/scale, G− = max(−w,0)/scale              none
``offset``               w/scale + g_hi/2 (zero at mid-window)                  none
``split``                coarse a (levels) and fine K·(|w| − a), w = a + b/K    1 sign bit per kept weight
``multilevel``           |w| quantised to ``levels`` levels, nearest on decode  1 sign bit per kept weight
=======================  =====================================================  ===============================

Replicas (redundancy) may differ per weight: ``encode(..., replicas=r)`` with an array r
(the allocator gives important weights more), placed replica by replica: every kept
weight's first replica in weight order, then the second replicas, and so on, so that one
weight's replicas lie far apart on the chip and a stuck word line (or any fault local in
the array) takes at most one of them. Cells are flat arrays: ``owner`` says
which kept weight each cell serves, ``role`` which part (0 magnitude or G+, 1 G−,
2 coarse, 3 fine). Every cell has a gain |∂w/∂G| (weight per µS) for the allocator.
Pruned weights (mask 0) take no cells; the mask is range-coded on the digital medium.

Mask in the cells (``encode(..., gap=, threshold=)``, sign code on a pruned tensor;
``LayoutConfig.mask_in_cells``): every weight position has one cell, in position order, a
pruned weight's only RESET (target 0 µS, role ``PRUNED``), a kept weight's its first
replica, kept |w| from the smallest kept to the clip mapped on [gap, g_hi]; then the kept
weights' other replicas. No coded mask: the decoder reads it from the position cells,
keeping per output channel as many positions as the channel keeps (``kept_counts``, a
few bits per channel, counted), the highest reads first, a cell that failed verify read
as the threshold (:func:`decoded_mask`). The gap and threshold come from the calibrated
noise model (``store_job.layout.mask_gap``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

CODES = ("sign", "pair", "offset", "split", "multilevel")
MAGNITUDE, MINUS, COARSE, FINE, PRUNED = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class CodeConfig:
    """How weights become conductances."""

    code: str = "sign"
    redundancy: int = 1      # replicas per weight when not allocated per weight
    percentile: float = 99.5
    levels: int = 8          # multilevel: levels of |w| including 0
    coarse_levels: int = 4   # split: levels of the coarse part
    from_threshold: bool = True  # sign code on a pruned tensor: G = 0 at the smallest kept |w|

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
    def cells_per_replica(self) -> int:
        return {"sign": 1, "pair": 2, "offset": 1, "split": 2, "multilevel": 1}[self.code]

    @property
    def replicable(self) -> bool:
        return self.code in ("sign", "pair", "offset")

    @property
    def sign_bits(self) -> bool:
        return self.code in ("sign", "split", "multilevel")


@dataclass
class EncodedTensor:
    """One tensor's cells and what decodes them."""

    name: str
    shape: tuple[int, ...]
    scale: float              # weight per µS
    g_hi: float               # top of the window used (µS)
    mask: np.ndarray | None   # bool keep-mask shaped like the tensor (None: nothing pruned)
    signs: np.ndarray | None  # bool per kept weight: negative (codes with digital signs)
    replicas: np.ndarray      # int per kept weight
    targets_us: np.ndarray    # per cell
    owner: np.ndarray         # per cell: kept-weight index
    role: np.ndarray          # per cell: MAGNITUDE, MINUS, COARSE or FINE
    gains: np.ndarray         # per cell: weight per µS
    floor: float = 0.0        # |w| at G = gap (the smallest kept |w| with ``from_threshold``)
    gap: float = 0.0          # µS: kept weights start here (mask in cells), else 0
    threshold: float | None = None  # µS, raw read: mask in cells, where pruned and kept reads part; None: coded mask

    @property
    def mask_in_cells(self) -> bool:
        return self.threshold is not None

    @property
    def weights(self) -> int:
        return int(np.prod(self.shape))

    @property
    def kept(self) -> int:
        return int(self.replicas.size)

    @property
    def cells(self) -> int:
        return int(self.targets_us.size)


def kept_values(w: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    flat = np.asarray(w, dtype=np.float64).ravel()
    return flat if mask is None else flat[np.asarray(mask, bool).ravel()]


def floor_of(v: np.ndarray, cfg: CodeConfig, pruned: bool) -> float:
    """|w| stored at G = 0: the smallest kept |w| for the sign code on a pruned tensor, else 0."""
    if not (pruned and cfg.from_threshold and cfg.code == "sign" and v.size):
        return 0.0
    return float(np.abs(v).min())


def scale_of(v: np.ndarray, cfg: CodeConfig, g_hi: float, floor: float = 0.0) -> float:
    """Weight per µS: the clip percentile of |w|, less ``floor``, over the usable span."""
    clip = float(np.percentile(np.abs(v), cfg.percentile)) - floor if v.size else 0.0
    clip = clip if clip > 0 else 1.0
    return clip / (g_hi / 2 if cfg.code == "offset" else g_hi)


def magnitudes_us(v: np.ndarray, cfg: CodeConfig, g_hi: float, pruned: bool) -> tuple[np.ndarray, float, float]:
    """Kept weights ``v`` on the window: (signed µS per weight, scale, floor); the sign code
    stores |µS|, the offset code µS + g_hi/2."""
    floor = floor_of(v, cfg, pruned)
    scale = scale_of(v, cfg, g_hi, floor)
    span = g_hi / 2 if cfg.code == "offset" else g_hi
    a = np.sign(v) * (np.abs(v) - floor) / scale
    return np.clip(a, -span, span), scale, floor


def encode(name: str, w: np.ndarray, cfg: CodeConfig, g_hi: float, mask: np.ndarray | None = None,
           replicas: np.ndarray | int | None = None, gap: float | None = None, threshold: float | None = None
           ) -> EncodedTensor:
    """Cells for one tensor. ``g_hi``: top of the usable window (µS). ``gap`` and
    ``threshold`` (µS, sign code on a pruned tensor): the mask in the cells (see
    :func:`encode_mask_in_cells`)."""
    w = np.asarray(w, dtype=np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError(f"tensor {name} holds NaN or infinite weights")
    if not (np.isfinite(g_hi) and g_hi > 0):
        raise ValueError(f"g_hi must be a positive number of µS, got {g_hi!r}")
    if mask is not None and np.asarray(mask).size != w.size:
        raise ValueError(f"mask of {name} has {np.asarray(mask).size} entries for {w.size} weights")
    if gap is not None or threshold is not None:
        return encode_mask_in_cells(name, w, cfg, g_hi, mask, replicas, gap, threshold)
    v = kept_values(w, mask)
    a, scale, floor = magnitudes_us(v, cfg, g_hi, mask is not None)  # µS, signed
    span = g_hi / 2 if cfg.code == "offset" else g_hi
    r = np.broadcast_to(np.asarray(cfg.redundancy if replicas is None else replicas), (v.size,)).astype(np.int64)
    if r.size and (r.min() < 1 or r.max() > 64):
        raise ValueError("replicas per weight must be in [1, 64]")
    if not cfg.replicable and r.size and r.max() > 1:
        raise ValueError(f"code {cfg.code!r} does not take replicas")
    idx = np.arange(v.size)
    if cfg.code in ("sign", "offset"):
        owner = replica_major(r)
        base = np.abs(a) if cfg.code == "sign" else a + span
        t, role, gain = base[owner], np.full(owner.size, MAGNITUDE), scale / r[owner]
    elif cfg.code == "pair":
        one = replica_major(r)
        owner = np.concatenate([one, one])
        role = np.repeat([MAGNITUDE, MINUS], one.size)
        t = np.concatenate([np.maximum(a, 0)[one], np.maximum(-a, 0)[one]])
        gain = scale / r[owner]
    elif cfg.code == "split":
        step = g_hi / (cfg.coarse_levels - 1)
        coarse = np.minimum(np.floor(np.abs(a) / step), cfg.coarse_levels - 1) * step
        k = g_hi / step  # the fine cell spans one coarse step over the whole window
        owner = np.concatenate([idx, idx])
        role = np.repeat([COARSE, FINE], v.size)
        t = np.concatenate([coarse, (np.abs(a) - coarse) * k])
        gain = np.concatenate([np.full(v.size, scale), np.full(v.size, scale / k)])
    else:  # multilevel
        step = g_hi / (cfg.levels - 1)
        owner, role = idx, np.full(v.size, MAGNITUDE)
        t, gain = np.round(np.abs(a) / step) * step, np.full(v.size, scale)
    return EncodedTensor(name, tuple(w.shape), scale, g_hi,
                         None if mask is None else np.asarray(mask, bool).reshape(w.shape),
                         (v < 0) if cfg.sign_bits else None, r.copy(), t.astype(np.float64),
                         owner.astype(np.int64), role.astype(np.int8), np.asarray(gain, np.float64), floor)


def replica_major(r: np.ndarray) -> np.ndarray:
    """Owners of ``r[i]`` replicas per weight i, replica by replica: ``[0, 1, …, n−1]``
    (every first replica), then the weights with a second one, and so on."""
    owner = np.repeat(np.arange(r.size), r)
    k = np.arange(owner.size) - np.repeat(np.cumsum(r) - r, r)  # which replica of its weight each cell is
    return owner[np.argsort(k, kind="stable")]


def check_gap(gap: float | None, threshold: float | None, g_hi: float) -> None:
    """Refuses a mask gap or threshold outside the window: 0 < threshold < gap ≤ g_hi/2."""
    if gap is None or threshold is None:
        raise ValueError("the mask in the cells needs both a gap and a threshold (µS)")
    if not (np.isfinite(threshold) and 0 < threshold < g_hi / 2):
        raise ValueError(f"mask threshold must be in (0, {g_hi / 2:.3g}) µS (half the window), got {threshold!r}")
    if not (np.isfinite(gap) and threshold < gap <= g_hi / 2):
        raise ValueError(f"mask gap must be in ({threshold:.3g}, {g_hi / 2:.3g}] µS (above the threshold, at most "
                         f"half the window), got {gap!r}")


def encode_mask_in_cells(name: str, w: np.ndarray, cfg: CodeConfig, g_hi: float, mask: np.ndarray | None,
                         replicas: np.ndarray | int | None, gap: float | None, threshold: float | None
                         ) -> EncodedTensor:
    """The sign code with the keep-mask in the cells: one cell per weight position, in
    position order (a pruned weight's cell is only RESET, role ``PRUNED``, target 0 µS; a
    kept weight's is its first replica), then the kept weights' other replicas in kept
    order. Kept magnitudes span [gap, g_hi]: from the smallest kept |w| (``floor``) to the
    clip. The decoder tells kept from pruned by the position cells' reads
    (:func:`decoded_mask`); no coded mask is stored."""
    check_gap(gap, threshold, g_hi)
    if cfg.code != "sign":
        raise ValueError(f"the mask in the cells needs the sign code, got {cfg.code!r}")
    if mask is None:
        raise ValueError(f"tensor {name}: the mask in the cells needs a pruned tensor (a keep-mask)")
    keep = np.asarray(mask, bool).ravel()
    v = w.ravel()[keep]
    span = g_hi - gap
    floor = floor_of(v, cfg, True)
    scale = scale_of(v, cfg, span, floor)
    a = gap + np.clip((np.abs(v) - floor) / scale, 0.0, span)
    r = np.broadcast_to(np.asarray(cfg.redundancy if replicas is None else replicas), (v.size,)).astype(np.int64)
    if r.size and (r.min() < 1 or r.max() > 64):
        raise ValueError("replicas per weight must be in [1, 64]")
    pos = np.flatnonzero(keep)
    first_t, first_owner = np.zeros(keep.size), np.full(keep.size, -1, np.int64)
    first_t[pos], first_owner[pos] = a, np.arange(v.size)
    first_role = np.where(keep, MAGNITUDE, PRUNED)
    extra = np.repeat(np.arange(v.size), r - 1)
    owner = np.concatenate([first_owner, extra])
    gain = np.where(owner >= 0, scale / r[np.maximum(owner, 0)], 0.0) if v.size else np.zeros(owner.size)
    return EncodedTensor(name, tuple(w.shape), scale, g_hi, keep.reshape(w.shape), v < 0, r.copy(),
                         np.concatenate([first_t, a[extra]]), owner,
                         np.concatenate([first_role, np.full(extra.size, MAGNITUDE)]).astype(np.int8),
                         np.asarray(gain, np.float64), floor, float(gap), float(threshold))


def kept_per_row(enc: EncodedTensor) -> np.ndarray:
    """Kept weights per output channel (first axis): what the decoder of a mask in the cells
    reads beside them (counted as ``kept_counts``)."""
    keep = np.ones(enc.weights, bool) if enc.mask is None else enc.mask.ravel()
    return keep.reshape(enc.shape[0], -1).sum(axis=1)


def decoded_mask(enc: EncodedTensor, reads_us: np.ndarray, trusted: np.ndarray | None = None) -> np.ndarray:
    """The keep-mask a decoder reads from the position cells (mask in the cells). A position
    cell that did not verify (``trusted`` False) is decided by its stored mask bit (the
    ``unverified_mask`` part: one bit per such cell, written after programming, counted): a
    pruned cell stuck high is never taken for a large weight, nor a kept cell stuck at
    RESET for a pruned one. The verified ones fill the rest of each output channel: as many
    as the channel keeps (:func:`kept_per_row`, counted as ``kept_counts``), the highest
    reads first. Flat, position order."""
    n = enc.weights
    g = np.asarray(reads_us, np.float64).ravel()[:n]
    ok = np.ones(n, bool) if trusted is None else np.asarray(trusted, bool).ravel()[:n]
    truth = enc.mask.ravel()
    rows = np.arange(n) // (n // enc.shape[0])
    slots = kept_per_row(enc) - np.bincount(rows[~ok & truth], minlength=enc.shape[0])
    score = np.where(ok, g, -np.inf)
    order = np.lexsort((-score, rows))  # by channel, then highest read first (stable on ties)
    r_sorted = rows[order]
    rank = np.arange(n) - np.searchsorted(r_sorted, r_sorted, side="left")
    keep = np.zeros(n, bool)
    keep[order[(rank < slots[r_sorted]) & ok[order]]] = True
    keep[~ok] = truth[~ok]
    return keep


def unverified_positions(enc: EncodedTensor, trusted: np.ndarray | None) -> int:
    """Position cells of a mask in the cells that did not verify: one stored mask bit each."""
    if not enc.mask_in_cells or trusted is None:
        return 0
    return int(np.count_nonzero(~np.asarray(trusted, bool).ravel()[:enc.weights]))


def mask_errors(enc: EncodedTensor, reads_us: np.ndarray, trusted: np.ndarray | None = None) -> dict[str, int]:
    """Decoding errors of a mask in the cells: position cells on the wrong side of the
    threshold (pruned read high, kept read low: what a threshold alone would get wrong),
    pruned position cells that did not verify, and positions the decoder
    (:func:`decoded_mask`) still gets wrong."""
    n = enc.weights
    g = np.asarray(reads_us, np.float64).ravel()[:n]
    ok = np.ones(n, bool) if trusted is None else np.asarray(trusted, bool).ravel()[:n]
    keep = enc.mask.ravel()
    return {"pruned_read_high": int(np.sum(~keep & (g >= enc.threshold))),
            "kept_read_low": int(np.sum(keep & (g < enc.threshold))),
            "pruned_unverified": int(np.sum(~keep & ~ok)), "kept_first_unverified": int(np.sum(keep & ~ok)),
            "decoded_wrong": int(np.sum(decoded_mask(enc, g, ok) != keep))}


def _mean_by(owner: np.ndarray, g: np.ndarray, trusted: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per owner (0..k−1; −1: none): the mean of ``g`` over its trusted cells (0 where it has
    none), and whether it has any."""
    sel = owner >= 0
    owner, t = owner[sel], trusted[sel].astype(np.float64)
    n_trusted = np.bincount(owner, weights=t, minlength=k)
    return np.bincount(owner, weights=t * g[sel], minlength=k) / np.maximum(n_trusted, 1), n_trusted > 0


def _decode_mask_in_cells(enc: EncodedTensor, g: np.ndarray, trusted: np.ndarray, mask_reads: np.ndarray
                          ) -> np.ndarray:
    n = enc.weights
    keep = decoded_mask(enc, mask_reads, trusted)
    pos = np.flatnonzero(keep)  # the j-th kept weight as decoded: its sign, replicas and other cells are the j-th
    owner = np.concatenate([np.full(n, -1, np.int64), enc.owner[n:]])
    owner[pos] = np.arange(pos.size)
    mag, known = _mean_by(owner, g, trusted, enc.kept)
    v = np.where(known, np.maximum(enc.floor + (mag - enc.gap) * enc.scale, 0.0), 0.0)  # as in :func:`decode`
    out = np.zeros(n)
    out[pos] = np.where(enc.signs, -v, v)
    return out.reshape(enc.shape)


def _mean(enc: EncodedTensor, g: np.ndarray, role: int, trusted: np.ndarray) -> np.ndarray:
    """Mean over each weight's trusted replicas of ``role`` (0 where it has none)."""
    return _mean_by(np.where(enc.role == role, enc.owner, -1), g, trusted, enc.kept)[0]


def _known(enc: EncodedTensor, trusted: np.ndarray) -> np.ndarray:
    """Per kept weight: every part (role) it is stored in has a trusted replica."""
    known = np.ones(enc.kept, bool)
    for role in np.unique(enc.role):
        known &= _mean_by(np.where(enc.role == role, enc.owner, -1), trusted, trusted, enc.kept)[1]
    return known


def decode(enc: EncodedTensor, reads_us: np.ndarray, cfg: CodeConfig, trusted: np.ndarray | None = None,
           mask_reads_us: np.ndarray | None = None) -> np.ndarray:
    """Weights from the cells' read conductances (one per cell, in ``enc`` order).
    ``mask_reads_us``: the reads the mask in the cells is decided on (the raw reads, before
    drift compensation; default ``reads_us``).

    ``trusted`` (per cell): replicas that verified. A weight's value is the mean of its
    trusted replicas, so a stuck or unconverged cell does not pull it off; a weight
    with no trusted replica decodes as 0, the prior's centre: a cell that did not verify
    may be stuck anywhere in the window, and a stuck-SET read would decode as the largest
    weight of the tensor (measured on mlp-digits at one replica per weight, one
    programming: 91.9 % with the reads used, 96.2 % with 0).
    """
    g = np.asarray(reads_us, dtype=np.float64).ravel()
    if g.size != enc.cells:
        raise ValueError(f"{enc.name}: {g.size} reads for {enc.cells} cells")
    trusted = np.ones(g.size, bool) if trusted is None else np.asarray(trusted, bool).ravel()
    if enc.mask_in_cells:
        return _decode_mask_in_cells(enc, g, trusted, g if mask_reads_us is None else mask_reads_us)
    s = enc.scale
    if cfg.code == "sign":
        v = enc.floor + _mean(enc, g, MAGNITUDE, trusted) * s
    elif cfg.code == "pair":
        v = (_mean(enc, g, MAGNITUDE, trusted) - _mean(enc, g, MINUS, trusted)) * s
    elif cfg.code == "offset":
        v = (_mean(enc, g, MAGNITUDE, trusted) - enc.g_hi / 2) * s
    elif cfg.code == "split":
        step = enc.g_hi / (cfg.coarse_levels - 1)
        coarse = np.clip(np.round(_mean(enc, g, COARSE, trusted) / step), 0, cfg.coarse_levels - 1) * step
        v = (coarse + _mean(enc, g, FINE, trusted) / (enc.g_hi / step)) * s
    else:
        step = enc.g_hi / (cfg.levels - 1)
        v = np.clip(np.round(_mean(enc, g, MAGNITUDE, trusted) / step), 0, cfg.levels - 1) * step * s
    v = np.where(_known(enc, trusted), v, 0.0)
    if enc.signs is not None:
        v = np.where(enc.signs, -v, v)
    out = np.zeros(enc.weights)
    if enc.mask is None:
        out[:] = v
    else:
        out[enc.mask.ravel()] = v
    return out.reshape(enc.shape)


def describe(cfg: CodeConfig) -> dict[str, Any]:
    return {**asdict(cfg), "cells_per_replica": cfg.cells_per_replica, "digital_sign": cfg.sign_bits}
