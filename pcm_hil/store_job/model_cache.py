"""A cache of compressed models, so that a sweep fine-tunes each one once.

Compression (:func:`.compression.compress`), the digital baselines' pruned starts
(:func:`.compression.prune_and_finetune`) and their quantization-aware fine-tunes are
deterministic given the network's weights, the tensors stored in cells, the training data
and the settings. The key is the SHA-256 of all of them (weights as raw bytes in
state-dict order, data as raw bytes, settings as sorted JSON); the value is the resulting
state dict and keep-masks (and the settings, for a reader), written atomically (temporary
file, then rename) as ``<key>.pt`` in the cache directory.

The writable cache is off until :func:`use` names a directory (the study and the CLI's
``store`` and ``plan`` do, in the run directory) or ``$PCM_HIL_MODEL_CACHE`` does. Below
it lies a read-only *shipped* layer, ``pcm_hil/checkpoints/cache/`` in the package, holding
the fine-tunes of the default main job (``pcm-hil store --model lenet5-fmnist``), made by
``python scripts/ship_cache.py``: a lookup tries the writable directory, then the shipped
one; results are only ever written to the writable directory. ``$PCM_HIL_SHIPPED_CACHE``
names another shipped directory, or ``off`` turns the layer off. The key also covers the
source text of the functions that do the fine-tuning, so changing them makes every entry
a miss (and the shipped layer's test fail until it is regenerated), never a stale hit.

``stats`` counts hits (``shipped`` of them from the shipped layer) and misses of this process.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from . import compression
from .compression import Compressed, CompressionConfig, Perturb, compress, finetune, prune_and_finetune

ENV = "PCM_HIL_MODEL_CACHE"  # a cache directory given by the environment (worker processes inherit it)
SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints" / "cache"  # read-only, in the package
SHIPPED_ENV = "PCM_HIL_SHIPPED_CACHE"  # another shipped directory, or "off"


@dataclass
class CacheStats:
    """Hits and misses of this process since the last :func:`use`."""

    hits: int = 0
    misses: int = 0
    shipped: int = 0  # of the hits, those from the shipped layer
    figures_reused: int = 0  # small figures (:func:`cached_figures`) read back instead of computed
    figures_computed: int = 0


stats = CacheStats()
_directory: Path | None = None


def use(directory: str | Path | None) -> None:
    """Cache compressed models in ``directory`` (created if missing); None turns the cache off."""
    global _directory
    _directory = None if directory is None else Path(directory)
    if _directory is not None:
        shipped = shipped_directory()
        if shipped is not None and _directory.resolve() == shipped.resolve():
            _directory = None
            raise ValueError(f"{directory} is the shipped cache, which is read-only: regenerate it with "
                             "python scripts/ship_cache.py")
        _directory.mkdir(parents=True, exist_ok=True)
    stats.hits = stats.misses = stats.shipped = stats.figures_reused = stats.figures_computed = 0


@contextmanager
def using(directory: str | Path | None) -> Iterator[None]:
    """:func:`use` ``directory`` inside the block; the directory in use before, after it."""
    global _directory
    before = _directory
    use(directory)
    try:
        yield
    finally:
        _directory = before


def directory() -> Path | None:
    """The cache directory in use: :func:`use`'s, else ``$PCM_HIL_MODEL_CACHE``, else None (off)."""
    if _directory is not None:
        return _directory
    env = os.environ.get(ENV)
    return Path(env) if env else None


def shipped_directory() -> Path | None:
    """The read-only shipped layer: ``$PCM_HIL_SHIPPED_CACHE`` (``off``: none), else the package's."""
    env = os.environ.get(SHIPPED_ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env)
    return SHIPPED


def _shipped_entries() -> bool:
    d = shipped_directory()
    return d is not None and d.is_dir() and any(d.glob("*.pt"))


@functools.lru_cache(maxsize=None)
def code_digest(*functions: Any) -> str:
    """SHA-256 (16 hex digits) of the functions' source text: part of a key, so that a change to
    how a model is fine-tuned misses the cache instead of hitting a result of the old code."""
    h = hashlib.sha256()
    for f in functions:
        try:
            h.update(inspect.getsource(f).encode())
        except (OSError, TypeError):  # no source (a frozen install): never a hit on shipped entries
            h.update(f"{f.__module__}.{f.__qualname__} without source".encode())
    return h.hexdigest()[:16]


def _code(stage: str) -> str:
    """The digest of the code a stage runs."""
    from . import baselines  # imports this module

    tuning = (compression.prune_and_finetune, compression.finetune, compression.magnitude_masks)
    return code_digest(*{"compress": (compression.compress, compression.quantized_copy, *tuning),
                         "prune_and_finetune": tuning,
                         "prune_nm_and_finetune": (compression.nm_masks, compression.nm_groups, compression.finetune,
                                                   cached_prune_nm),
                         "quantization_aware": (compression.finetune, compression.quantize_levels,
                                                baselines.fake_quantizer)}[stage])


def masks_digest(masks: dict[str, np.ndarray]) -> str:
    """SHA-256 (hex) of keep-masks (names, shapes, bits), for a key's settings."""
    h = hashlib.sha256()
    for n in sorted(masks):
        m = np.ascontiguousarray(np.asarray(masks[n], bool))
        h.update(n.encode() + str(m.shape).encode())
        h.update(np.packbits(m).tobytes())
    return h.hexdigest()


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
        h.update(memoryview(a).cast("B"))  # the raw bytes, without a copy
    cfg = asdict(settings) if is_dataclass(settings) else settings
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    return h.hexdigest()


def lookup(k: str) -> tuple[Path, dict[str, Any]] | None:
    """The entry ``k``: from the writable directory, else the shipped layer; None if neither has it."""
    for d in (directory(), shipped_directory()):
        path = None if d is None else d / f"{k}.pt"
        if path is not None and path.exists():
            hit = torch.load(path, weights_only=True)  # tensors only: a cache file cannot run code
            masks = hit["masks"]
            return path, {"state_dict": hit["state_dict"], "settings": hit.get("settings"),
                          "masks": None if masks is None else {n: m.numpy().astype(bool) for n, m in masks.items()}}
    return None


def _put(k: str, state: dict[str, torch.Tensor], masks: dict[str, np.ndarray] | None, settings: Any) -> None:
    d = directory()  # never the shipped layer (use() refuses it)
    if d is None:
        return
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f"{k}.{os.getpid()}.tmp"
    torch.save({"state_dict": {n: t.detach().clone() for n, t in state.items()},
                "masks": None if masks is None else {n: torch.from_numpy(np.asarray(m, bool)) for n, m in masks.items()},
                "settings": json.dumps(settings, sort_keys=True, default=str)},  # what was computed, for a reader
               tmp)
    tmp.replace(d / f"{k}.pt")  # atomic: a reader sees the whole file or none


def _cached(network: nn.Module, names: list[str], x: np.ndarray, y: np.ndarray, settings: Any, compute: Any
            ) -> tuple[nn.Module, dict[str, np.ndarray] | None]:
    if directory() is None and not _shipped_entries():
        return compute()
    k = key(network, names, x, y, settings)
    found = lookup(k)
    if found is not None:
        path, hit = found
        stats.hits += 1
        shipped = shipped_directory()
        stats.shipped += int(shipped is not None and path.parent == shipped)
        model = copy.deepcopy(network)
        model.load_state_dict(hit["state_dict"], strict=True)
        model.eval()
        return model, hit["masks"]
    stats.misses += 1
    model, masks = compute()
    _put(k, model.state_dict(), masks, settings)
    return model, masks


def cached_compress(network: nn.Module, names: list[str], x: np.ndarray, y: np.ndarray, cfg: CompressionConfig
                    ) -> Compressed:
    """:func:`.compression.compress`, from the cache when the same inputs were compressed before."""
    def compute() -> tuple[nn.Module, dict[str, np.ndarray] | None]:
        c = compress(network, names, x, y, cfg)
        return c.model, c.masks

    model, masks = _cached(network, names, x, y, compress_settings(cfg), compute)
    return Compressed(model, masks)


def compress_settings(cfg: CompressionConfig) -> dict[str, Any]:
    """The settings part of :func:`cached_compress`'s key."""
    return {"stage": "compress", **asdict(cfg), "code": _code("compress")}


def prune_settings(sparsity: float, epochs: int = 1, seed: int = 0) -> dict[str, Any]:
    """The settings part of :func:`cached_prune`'s key."""
    return {"stage": "prune_and_finetune", "sparsity": sparsity, "epochs": epochs, "seed": seed,
            "code": _code("prune_and_finetune")}


def prune_nm_settings(n: int, m: int, epochs: int = 1, seed: int = 0) -> dict[str, Any]:
    """The settings part of :func:`cached_prune_nm`'s key."""
    return {"stage": "prune_nm_and_finetune", "n": n, "m": m, "epochs": epochs, "seed": seed,
            "code": _code("prune_nm_and_finetune")}


def quantization_aware_settings(masks: dict[str, np.ndarray], bits: int, clip: float, epochs: int, seed: int = 0
                                ) -> dict[str, Any]:
    """The settings part of :func:`cached_quantization_aware`'s key."""
    return {"stage": "quantization_aware", "bits": bits, "clip": clip, "epochs": epochs, "seed": seed,
            "masks": masks_digest(masks), "code": _code("quantization_aware")}


def cached_prune(network: nn.Module, names: list[str], sparsity: float, x: np.ndarray, y: np.ndarray,
                 epochs: int = 1, seed: int = 0) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """:func:`.compression.prune_and_finetune` (no training noise, default rate and batch), from the cache."""
    model, masks = _cached(network, names, x, y, prune_settings(sparsity, epochs, seed),
                           lambda: prune_and_finetune(network, names, sparsity, x, y, epochs, seed=seed))
    assert masks is not None
    return model, masks


def cached_prune_nm(network: nn.Module, names: list[str], n: int, m: int, x: np.ndarray, y: np.ndarray,
                    epochs: int = 1, seed: int = 0) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """N:M magnitude pruning (:func:`.compression.nm_masks`) and fine-tuning with the masks
    held fixed (:func:`.compression.finetune` as prune_and_finetune runs it), from the cache."""
    def compute() -> tuple[nn.Module, dict[str, np.ndarray]]:
        pruned = copy.deepcopy(network)
        masks = compression.nm_masks(pruned, names, n, m)
        return finetune(pruned, masks, x, y, epochs, lr=2e-3, seed=seed, anneal=True), masks  # as prune_and_finetune

    model, masks = _cached(network, names, x, y, prune_nm_settings(n, m, epochs, seed), compute)
    assert masks is not None
    return model, masks


def cached_quantization_aware(network: nn.Module, masks: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
                              bits: int, clip: float, epochs: int, seed: int, perturb: Perturb) -> nn.Module:
    """Quantization-aware fine-tuning of a copy of ``network`` (:func:`.compression.finetune` with
    ``perturb``, the rounding to ``bits`` at ``clip``; default rate and batch), from the cache."""
    def compute() -> tuple[nn.Module, None]:
        return finetune(copy.deepcopy(network), masks, x, y, epochs, seed=seed, perturb=perturb), None

    settings = quantization_aware_settings(masks, bits, clip, epochs, seed)
    model, _ = _cached(network, list(masks), x, y, settings, compute)
    return model


def cached_figures(network: nn.Module, names: list[str], x: np.ndarray, y: np.ndarray, settings: dict[str, Any],
                   compute: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Figures ``compute`` measures on ``network`` with data (x, y) (a validation accuracy, a bit
    count), kept as ``<key>.json`` in the writable directory so that the next store job on the
    same model reads them back (the digital competitor's search evaluates the same options at
    every point of a study); computed afresh when the cache is off. ``settings`` must name
    everything else the figures depend on, the code that computes them included."""
    d = directory()
    if d is None:
        return compute()
    path = d / f"{key(network, names, x, y, settings)}.json"
    if path.exists():
        stats.figures_reused += 1
        return json.loads(path.read_text())
    stats.figures_computed += 1
    figures = compute()
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f"{path.stem}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(figures))
    tmp.replace(path)  # atomic, as for models
    return figures
