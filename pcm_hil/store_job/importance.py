"""Stage 2 of the store job, importance. Per-weight importance: how much the loss grows per unit squared error of each weight.

ΔL ≈ ½ Σ_i F_i·E[e_i²]. ``fisher`` (default): diagonal empirical Fisher, the mean over a
calibration batch of squared per-example gradients of the log-likelihood (torch.func
vmap). ``hessian``: Hutchinson estimate of the Hessian diagonal, E[z ⊙ Hz] with
Rademacher z (negative entries set to 0). ``magnitude``: |w|, the cheap fallback.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ..datasets import Split

METHODS = ("fisher", "hessian", "magnitude")


def importance(model: nn.Module, names: list[str], x: np.ndarray, y: np.ndarray, method: str = "fisher",
               batch: int = 256, samples: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Importance of every weight of the named parameters (arrays shaped like them)."""
    if method not in METHODS:
        raise ValueError(f"importance method must be one of {METHODS}, got {method!r}")
    model.eval()
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"model has no parameter(s) {missing}")
    if method == "magnitude":
        return {n: params[n].detach().abs().numpy().astype(np.float64) for n in names}
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    if method == "fisher":
        return _fisher(model, names, xs, ys, batch)
    return _hutchinson(model, names, xs, ys, batch, samples, seed)


def _fisher(model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor, batch: int) -> dict[str, np.ndarray]:
    fixed = {k: v.detach() for k, v in model.named_parameters() if k not in names}
    buffers = dict(model.named_buffers())

    def nll(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**p, **fixed, **buffers}, (xi[None],))
        return F.cross_entropy(out, yi[None])

    per_example = vmap(grad(nll), in_dims=(None, 0, 0))
    trainable = {n: dict(model.named_parameters())[n].detach() for n in names}
    acc = {n: torch.zeros_like(t) for n, t in trainable.items()}
    for i in range(0, len(y), batch):
        g = per_example(trainable, x[i:i + batch], y[i:i + batch])
        for n in names:
            acc[n] += (g[n] ** 2).sum(0)
    return {n: (acc[n] / len(y)).numpy().astype(np.float64) for n in names}


def _hutchinson(model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor, batch: int, samples: int,
                seed: int) -> dict[str, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    params = [dict(model.named_parameters())[n] for n in names]
    acc = [torch.zeros_like(p) for p in params]
    chunks = 0
    for i in range(0, len(y), batch):
        loss = F.cross_entropy(model(x[i:i + batch]), y[i:i + batch])
        grads = torch.autograd.grad(loss, params, create_graph=True)
        for _ in range(samples):
            zs = [torch.randint(0, 2, p.shape, generator=gen).to(p.dtype) * 2 - 1 for p in params]
            hz = torch.autograd.grad(grads, params, grad_outputs=zs, retain_graph=True)
            for a, z, h in zip(acc, zs, hz):
                a += z * h
        chunks += 1
    return {n: np.maximum((a / (samples * chunks)).detach().numpy().astype(np.float64), 0.0)
            for n, a in zip(names, acc)}


@dataclass(frozen=True)
class ImportanceConfig:
    """What the importance stage reads."""

    method: str = "fisher"
    samples: int = 1000  # training examples the estimate averages over
    seed: int = 0        # which examples

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"importance method must be one of {METHODS}, got {self.method!r}")
        if type(self.samples) is not int or not 1 <= self.samples <= 1_000_000:
            raise ValueError(f"importance samples must be an integer in [1, 1000000], got {self.samples!r}")


def estimate(model: nn.Module, names: list[str], train: "Split", cfg: ImportanceConfig) -> dict[str, np.ndarray]:
    """Importance of every stored weight, from ``cfg.samples`` training examples."""
    cal = train.subset(min(cfg.samples, len(train)), seed=cfg.seed)
    return importance(model, names, cal.x, cal.y, cfg.method)
