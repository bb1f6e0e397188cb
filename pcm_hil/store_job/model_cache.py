"""A cache of compressed models, so that a sweep fine-tunes each one once.

Compression (:func:`.compression.compress`) and the digital baselines' pruned starts
(:func:`.compression.prune_and_finetune`) are deterministic given the network's weights,
the tensors stored in cells, the training data and the settings. The key is the SHA-256
of all of them (weights as raw bytes in state-dict order, data as raw bytes, settings as
sorted JSON); the value is the resulting state dict and keep-masks, written atomically
(temporary file, then rename) as ``<key>.pt`` in the cache directory.

The cache is off until :func:`use` names a directory (the study does, per worker
process); off, the functions below just compute. ``stats`` counts hits and misses of this
process.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .compression import Compressed, CompressionConfig, compress, prune_and_finetune

ENV = "PCM_HIL_MODEL_CACHE"  # a cache directory given by the environment (worker processes inherit it)


@dataclass
class CacheStats:
    """Hits and misses of this process since the last :func:`use`."""

    hits: int = 0
    misses: int = 0


stats = CacheStats()
_directory: Path | None = None


def use(directory: str | Path | None) -> None:
    """Cache compressed models in ``directory`` (created if missing); None turns the cache off."""
    global _directory
    _directory = None if directory is None else Path(directory)
    if _directory is not None:
        _directory.mkdir(parents=True, exist_ok=True)
    stats.hits = stats.misses = 0


def directory() -> Path | None:
    """The cache directory in use: :func:`use`'s, else ``$PCM_HIL_MODEL_CACHE``, else None (off)."""
    if _directory is not None:
        return _directory
    env = os.environ.get(ENV)
    return Path(env) if env else None


def key(network: nn.Module, names: list[str], x: np.ndarray, y: np.ndarray, settings: Any) -> str:
    """SHA-256 (hex) of the network's state dict, the stored tensors' names, the data and the settings
    (a dataclass or a JSON-able dict)."""
    h = hashlib.sha256()
    for name, t in network.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps(names).encode())
    for a in (x, y):
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    cfg = asdict(settings) if is_dataclass(settings) else settings
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _get(k: str) -> dict[str, Any] | None:
    d = directory()
    path = None if d is None else d / f"{k}.pt"
    if path is None or not path.exists():
        return None
    hit = torch.load(path, weights_only=True)  # tensors only: a cache file cannot run code
    masks = hit["masks"]
    return {"state_dict": hit["state_dict"],
            "masks": None if masks is None else {n: m.numpy().astype(bool) for n, m in masks.items()}}


def _put(k: str, state: dict[str, torch.Tensor], masks: dict[str, np.ndarray] | None) -> None:
    d = directory()
    if d is None:
        return
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f"{k}.{os.getpid()}.tmp"
    torch.save({"state_dict": {n: t.detach().clone() for n, t in state.items()},
                "masks": None if masks is None else {n: torch.from_numpy(np.asarray(m, bool)) for n, m in masks.items()}},
               tmp)
    tmp.replace(d / f"{k}.pt")  # atomic: a reader sees the whole file or none


def _cached(network: nn.Module, names: list[str], x: np.ndarray, y: np.ndarray, settings: Any, compute: Any
            ) -> tuple[nn.Module, dict[str, np.ndarray] | None]:
    if directory() is None:
        return compute()
    k = key(network, names, x, y, settings)
    hit = _get(k)
    if hit is not None:
        stats.hits += 1
        model = copy.deepcopy(network)
        model.load_state_dict(hit["state_dict"], strict=True)
        model.eval()
        return model, hit["masks"]
    stats.misses += 1
    model, masks = compute()
    _put(k, model.state_dict(), masks)
    return model, masks


def cached_compress(network: nn.Module, names: list[str], x: np.ndarray, y: np.ndarray, cfg: CompressionConfig
                    ) -> Compressed:
    """:func:`.compression.compress`, from the cache when the same inputs were compressed before."""
    def compute() -> tuple[nn.Module, dict[str, np.ndarray] | None]:
        c = compress(network, names, x, y, cfg)
        return c.model, c.masks

    model, masks = _cached(network, names, x, y, {"stage": "compress", **asdict(cfg)}, compute)
    return Compressed(model, masks)


def cached_prune(network: nn.Module, names: list[str], sparsity: float, x: np.ndarray, y: np.ndarray,
                 epochs: int = 1, seed: int = 0) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """:func:`.compression.prune_and_finetune` (no training noise, default rate and batch), from the cache."""
    settings = {"stage": "prune_and_finetune", "sparsity": sparsity, "epochs": epochs, "seed": seed}
    model, masks = _cached(network, names, x, y, settings,
                           lambda: prune_and_finetune(network, names, sparsity, x, y, epochs, seed=seed))
    assert masks is not None
    return model, masks
