"""Stage 1 of the store job, compression: global magnitude pruning with (noise-aware)
fine-tuning, and uniform quantization (the multilevel code stores quantized |w|)."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def analog_parameters(model: nn.Module) -> list[str]:
    """The weights stored in cells: conv and linear weight tensors (biases and norms go digital)."""
    names = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            names.append(f"{mod_name}.weight" if mod_name else "weight")
    return names


def magnitude_masks(model: nn.Module, names: list[str], sparsity: float) -> dict[str, np.ndarray]:
    """Keep-masks removing the ``sparsity`` fraction of smallest |w| across all named tensors."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    params = dict(model.named_parameters())
    allw = np.concatenate([params[n].detach().abs().numpy().ravel() for n in names])
    thr = np.quantile(allw, sparsity) if sparsity > 0 else -1.0
    return {n: params[n].detach().abs().numpy() > thr for n in names}


def nm_groups(size: int, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """N:M groups along one output channel of ``size`` weights: each weight's group and each
    group's kept count (``n`` of every ``m`` consecutive weights; a last group of r < m keeps
    ceil(n·r/m))."""
    group = np.arange(size) // m
    lengths = np.bincount(group)
    return group, np.minimum(lengths, -(-n * lengths // m))


def nm_masks(model: nn.Module, names: list[str], n: int, m: int) -> dict[str, np.ndarray]:
    """Keep-masks with N:M structure: in each output channel, the ``n`` largest |w| of every
    ``m`` consecutive weights (in the tensor's row-major order of its inputs)."""
    if not (type(n) is int and type(m) is int and 1 <= n < m <= 16):
        raise ValueError(f"N:M sparsity needs integers 1 <= N < M <= 16, got {n}:{m}")
    params = dict(model.named_parameters())
    out = {}
    for name in names:
        w = params[name].detach().abs().numpy()
        rows = w.reshape(w.shape[0], -1)
        group, keep = nm_groups(rows.shape[1], n, m)
        # rank of each weight within its group, largest first (stable: ties keep the earlier weight)
        order = np.lexsort((-rows, np.broadcast_to(group, rows.shape)), axis=1)
        first = np.searchsorted(group, group)  # index of each position's group start
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(rows.shape[1]) - first, axis=1)
        out[name] = (rank < keep[group]).reshape(w.shape)
    return out


def nm_mask_bits(mask: np.ndarray, n: int, m: int) -> int:
    """Bits of an N:M mask, enumeratively coded: log2 C(r, k) per group of r weights keeping k."""
    rows = mask.reshape(mask.shape[0], -1)
    group, keep = nm_groups(rows.shape[1], n, m)
    per_row = sum(math.log2(math.comb(int(r), int(k))) for r, k in zip(np.bincount(group), keep))
    return math.ceil(per_row * rows.shape[0])


Perturb = Callable[[str, torch.Tensor, torch.Generator], torch.Tensor]


def finetune(model: nn.Module, masks: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, epochs: int,
             lr: float = 3e-4, batch: int = 128, seed: int = 0, perturb: Perturb | None = None,
             anneal: bool = False) -> nn.Module:
    """``model`` fine-tuned in place with the keep-masks held fixed (Adam at ``lr``; with
    ``anneal`` the rate falls from ``lr`` to 0 on a cosine over the steps).

    ``perturb(name, w, generator)`` (optional) gives the value each masked tensor takes in
    the forward and backward pass of a step, while the optimizer updates the clean weights
    (a straight-through estimator): Gaussian noise for noise-aware training, rounding
    for quantization-aware training.
    """
    params = dict(model.named_parameters())
    tmasks = {n: torch.from_numpy(m.astype(np.float32)) for n, m in masks.items()}

    def apply() -> None:
        with torch.no_grad():
            for n, m in tmasks.items():
                params[n].mul_(m)

    apply()
    if epochs == 0:
        return model
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = max(1, len(y) // batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps) if anneal else None
    rng = np.random.default_rng(seed)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        model.train()
        for idx in np.array_split(rng.permutation(len(y)), steps):
            idx = torch.from_numpy(idx)
            opt.zero_grad()
            clean = {}
            if perturb is not None:
                with torch.no_grad():
                    for n, m in tmasks.items():
                        clean[n] = params[n].detach().clone()
                        params[n].copy_(perturb(n, params[n], gen) * m)
            F.cross_entropy(model(xs[idx]), ys[idx]).backward()
            if clean:
                with torch.no_grad():
                    for n, w in clean.items():
                        params[n].copy_(w)
            opt.step()
            if schedule is not None:
                schedule.step()
            apply()
    model.eval()
    return model


def prune_and_finetune(model: nn.Module, names: list[str], sparsity: float, x: np.ndarray, y: np.ndarray,
                       epochs: int = 1, lr: float = 2e-3, batch: int = 128, seed: int = 0, noise: float = 0.0
                       ) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """A pruned copy of ``model`` fine-tuned with the masks held fixed (the rate annealed from
    ``lr`` to 0), and the masks.

    ``noise`` > 0 makes the fine-tuning hardware-aware: each step sees the analog weights
    perturbed by Gaussian noise of ``noise`` × the tensor's max |w| (kept weights only),
    so the result tolerates the analog read-back error.
    """
    pruned = copy.deepcopy(model)
    masks = magnitude_masks(pruned, names, sparsity)

    def noisy(name: str, w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return w + torch.randn(w.shape, generator=gen) * noise * w.abs().max()

    train = sparsity > 0 or noise > 0
    finetune(pruned, masks, x, y, epochs if train else 0, lr, batch, seed, noisy if noise > 0 else None, anneal=True)
    return pruned, masks


def quantize_levels(w: np.ndarray, bits: int, per_channel: bool = True, clip: float = 1.0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric uniform quantization to ``bits`` bits (sign included), per output channel:
    (integer levels in [−(2^(bits−1) − 1), 2^(bits−1) − 1], step per channel); w ≈ levels·step.
    The top level sits at ``clip`` × the channel's max |w| (larger values are clipped)."""
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in [2, 16], got {bits}")
    if not 0 < clip <= 1:
        raise ValueError(f"clip must be in (0, 1], got {clip}")
    w = np.asarray(w, np.float64)
    axes = tuple(range(1, w.ndim)) if per_channel and w.ndim > 1 else None
    amax = clip * np.max(np.abs(w), axis=axes, keepdims=axes is not None)
    qmax = 2 ** (bits - 1) - 1
    step = np.where(amax > 0, amax / qmax, 1.0)
    return np.round(w / step).clip(-qmax, qmax).astype(np.int64), step


@dataclass(frozen=True)
class CompressionConfig:
    """What the compression stage reads."""

    sparsity: float = 0.0         # fraction of weights pruned, [0, 1)
    finetune_epochs: int = 6  # cosine from 2e-3 (prune_and_finetune), chosen on validation data
    training_noise: float = 0.02  # fine-tuning noise, fraction of each tensor's max |w|
    quantize_levels: int | None = None  # levels of |w| kept (the multilevel code); None: float
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.sparsity, (int, float)) and 0.0 <= self.sparsity < 1.0):
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity!r}")
        if type(self.finetune_epochs) is not int or not 0 <= self.finetune_epochs <= 1000:
            raise ValueError(f"finetune_epochs must be an integer in [0, 1000], got {self.finetune_epochs!r}")
        if not (math.isfinite(self.training_noise) and 0 <= self.training_noise <= 1):
            raise ValueError(f"training_noise must be in [0, 1], got {self.training_noise!r}")


@dataclass
class Compressed:
    """The compression stage's result: the model as it will be stored."""

    model: nn.Module
    masks: dict[str, np.ndarray] | None  # keep-masks per tensor; None when nothing was pruned


def compress(model: nn.Module, names: list[str], x: np.ndarray, y: np.ndarray, cfg: CompressionConfig) -> Compressed:
    """Prune and fine-tune ``model`` on (x, y), then quantize if the code stores levels."""
    pruned, masks = prune_and_finetune(model, names, cfg.sparsity, x, y, cfg.finetune_epochs, seed=cfg.seed,
                                       noise=cfg.training_noise)
    if cfg.quantize_levels is not None:
        pruned = quantized_copy(pruned, names, cfg.quantize_levels)
    return Compressed(pruned, masks if cfg.sparsity > 0 else None)


def quantized_copy(model: nn.Module, names: list[str], levels: int) -> nn.Module:
    """The model with |w| on ``levels`` equally spaced levels per tensor (what multilevel stores)."""
    q = copy.deepcopy(model)
    p = dict(q.named_parameters())
    with torch.no_grad():
        for n in names:
            w = p[n].numpy()
            step = np.abs(w).max() / (levels - 1) if np.abs(w).max() > 0 else 1.0
            p[n].copy_(torch.from_numpy((np.sign(w) * np.round(np.abs(w) / step) * step).astype(np.float32)))
    return q
