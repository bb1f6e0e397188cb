"""Stage 7 of the store job, the digital baselines and the cost accounting.

The stored model's cells (analog cells, plus every bit its decoder reads, on the digital
medium measured on the same chip) against: (a) fp32 on SLC with SECDED, (b) the same
compressed model in fp32 on the measured medium, (c) the strongest digital competitor on
the measured medium: the cheapest quantized model (2–8 bits, per-output-channel scales
counted per channel, values and masks entropy-coded at the coder's real output) whose
*validation* accuracy reaches the stored model's mean validation accuracy, from the same
noise-aware fine-tuned start as the analog model and from magnitude pruning of the
reference at 0–95 % sparsity with fine-tuning. Each option's clipping is chosen on the
validation split; below the cheapest option that passes, the best starts are tried again
with quantization-aware fine-tuning (straight-through rounding), down in bits while they
pass. Last, the cheapest passing option gets per-layer mixed precision: one tensor at a
time loses a bit, the one that saves the most cells while validation still passes, until
none can. The test accuracy of the option chosen is measured once and reported beside.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models import accuracy
from . import digital_parameters
from .compression import CompressionConfig, Perturb, nm_mask_bits, quantize_levels
from .digital_medium import Medium, slc_ecc_cells
from .inputs import Inputs
from . import model_cache
from .model_cache import cached_prune, cached_prune_nm, cached_quantization_aware
from .readback import ReadbackConfig, bn_recalibrated
from .side_info import coded_bits, mask_bits


QAT_CLIP = 1.0  # quantization-aware fine-tuning rounds with the top level at each channel's max |w|


@dataclass(frozen=True)
class BaselineConfig:
    """What the baselines stage reads."""

    search: bool = True  # search the strongest digital model (fine-tunes); False: (a) and (b) only
    bits: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    sparsities: tuple[float, ...] = (0.0, 0.5, 0.75, 0.9, 0.95)
    # N:M structured starts, e.g. ((2, 4), (1, 4)): the mask costs log2 C(M, N) bits per group
    # instead of its entropy code. Off by default: on lenet5-fmnist they cost 2.5 pp at 75 %
    # (1:4, validation 87.6 % against 90.1 % unstructured) and 2:4 needs more cells than
    # unstructured 75 % at the same accuracy, so they never won (docs/storage.md).
    nm_patterns: tuple[tuple[int, int], ...] = ()
    clips: tuple[float, ...] = (1.0, 0.85, 0.7)  # top level at this fraction of a channel's max |w|
    qat_epochs: int = 1    # quantization-aware fine-tuning below the cheapest passing option (0: off)
    qat_starts: int = 1    # how many of the best starts get it
    mixed_precision: bool = True  # per-layer bits below the cheapest passing option

    def __post_init__(self) -> None:
        for p in self.nm_patterns:
            if not (len(p) == 2 and all(type(v) is int for v in p) and 1 <= p[0] < p[1] <= 16):
                raise ValueError(f"N:M patterns need integers 1 <= N < M <= 16, got {p!r}")


@dataclass
class DigitalOption:
    start: str              # "noise-aware fine-tuned" (the analog start) or "pruned S"
    bits: int
    sparsity: float
    training: str           # "post-training" rounding or "quantization-aware" fine-tuning
    clip: float             # top level at this fraction of each channel's max |w| (chosen on validation)
    accuracy_val: float
    accuracy_test: float
    bits_total: int
    cells: float
    layer_bits: dict[str, int] | None = None  # per-layer precision (None: every layer at ``bits``)

    @property
    def precision(self) -> str:
        """``"4 bits"``, or the per-layer widths in layer order: ``"3/4/4 bits per layer"``."""
        if not self.layer_bits:
            return f"{self.bits} bits"
        return "/".join(map(str, self.layer_bits.values())) + " bits per layer"


@dataclass(frozen=True)
class Start:
    """A network the competitor quantizes: its name, sparsity, weights, keep-masks and, for an
    N:M start, the pattern (its mask is coded as N:M groups)."""

    name: str
    sparsity: float
    network: nn.Module
    masks: dict[str, np.ndarray]
    nm: tuple[int, int] | None = None


def quantized(network: nn.Module, names: list[str], bits: int | dict[str, int], clip: float = 1.0,
              masks: dict[str, np.ndarray] | None = None, nm: tuple[int, int] | None = None
              ) -> tuple[nn.Module, int]:
    """A copy with the named tensors quantized per output channel (``bits``: for all, or per
    tensor), and the bits it takes to store them: per tensor the cheapest of the entropy-coded
    values with the zeros in the code and, given the keep-``masks``, the coded mask
    (:func:`mask_bits`; for an ``nm`` pattern also the N:M groups' code, log2 C(M, N) per
    group) with only the kept values entropy-coded; fp16 scales per output channel
    (quantization-aware training rounds with the fp32 scale, within 2^-11 of it). The other
    parameters are rounded as stored (fp16)."""
    m = digital_parameters.as_stored(copy.deepcopy(network), names)
    p = dict(m.named_parameters())
    total = 0
    with torch.no_grad():
        for n in names:
            values, tensor_bits = _tensor_code(p[n].numpy(), bits[n] if isinstance(bits, dict) else bits, clip,
                                               None if masks is None else masks[n], nm)
            p[n].copy_(torch.from_numpy(values))
            total += tensor_bits
    return m, total


def _tensor_code(w: np.ndarray, bits: int, clip: float, keep: np.ndarray | None, nm: tuple[int, int] | None
                 ) -> tuple[np.ndarray, int]:
    """One tensor of :func:`quantized`: its stored values and the bits they take (values,
    mask where it pays, fp16 scales per output channel)."""
    levels, step = quantize_levels(w, bits, clip=clip)
    step = step.astype(np.float16).astype(np.float64)
    symbols = levels + 2 ** (bits - 1) - 1
    value_bits = coded_bits(symbols)
    if keep is not None:  # at 2 bits many kept weights round to 0 and the zeros' code can win
        mask_code = mask_bits(keep) if nm is None else min(mask_bits(keep), nm_mask_bits(keep, *nm))
        value_bits = min(value_bits, mask_code + coded_bits(symbols[keep]))
    return (levels * step).astype(np.float32), value_bits + digital_parameters.PARAMETER_BITS * step.size


def fake_quantizer(bits: int, clip: float) -> Perturb:
    """The forward value of quantization-aware training: the rounding :func:`quantized` stores."""
    def rounded(name: str, w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        levels, step = quantize_levels(w.numpy(), bits, clip=clip)
        return torch.from_numpy((levels * step).astype(np.float32))

    return rounded


def _all_kept(network: nn.Module, names: list[str]) -> dict[str, np.ndarray]:
    """Keep-masks that keep every weight of the named tensors."""
    params = dict(network.named_parameters())
    return {n: np.ones(tuple(params[n].shape), bool) for n in names}


def fp32_bits(network: nn.Module, names: list[str], masks: dict[str, np.ndarray] | None) -> int:
    """The compressed model as it is, digital: fp32 kept weights, coded masks, fp32 others."""
    params = dict(network.named_parameters())
    total = 32 * digital_parameters.count(network, names)
    for n in names:
        keep = np.ones(params[n].numel(), bool) if masks is None else masks[n].ravel()
        total += 32 * int(keep.sum()) + (mask_bits(masks[n]) if masks is not None else 0)
    return total


def costs(inputs: Inputs, compressed: nn.Module, masks: dict[str, np.ndarray] | None, analog_cells: int,
          side_parts: dict[str, int], medium: Medium, accuracy_val_target: float, compression: CompressionConfig,
          readback: ReadbackConfig, cfg: BaselineConfig) -> dict[str, Any]:
    """Cells of the analog store (by part) and of the three digital baselines, and the ratios."""
    names = inputs.names
    weights = sum(dict(inputs.network.named_parameters())[n].numel() for n in names)
    other = digital_parameters.count(inputs.network, names)
    side_cells = {k: medium.cells(v) for k, v in side_parts.items()}
    total = analog_cells + sum(side_cells.values())
    fp32 = slc_ecc_cells(32 * (weights + other))
    compressed_cells = medium.cells(fp32_bits(compressed, names, masks))
    best, tried = None, []
    if cfg.search:
        best, tried = _strongest_digital(inputs, compressed, masks, medium, accuracy_val_target, compression, readback,
                                         cfg)
    return {
        "analog_cells": analog_cells, "side_bits": side_parts, "side_cells": side_cells,
        "digital_cells": sum(side_cells.values()), "total_cells": total, "cells_per_weight": total / weights,
        "baselines_cells": {"fp32_slc_ecc": fp32, "compressed_fp32_on_medium": compressed_cells,
                            "best_digital": None if best is None else best.cells},
        "memory_reduction": {"fp32_slc_ecc": fp32 / total, "compressed_fp32_on_medium": compressed_cells / total,
                             "best_digital": None if best is None else best.cells / total},
        "best_digital": None if best is None else {**asdict(best), "precision": best.precision},
        "digital_options_tried": [asdict(o) for o in tried],
    }


def _strongest_digital(inputs: Inputs, compressed: nn.Module, masks: dict[str, np.ndarray] | None, medium: Medium,
                       target_val: float, compression: CompressionConfig, readback: ReadbackConfig,
                       cfg: BaselineConfig) -> tuple[DigitalOption | None, list[DigitalOption]]:
    names = inputs.names
    other_bits = digital_parameters.bits(inputs.network, names)
    starts = [Start("noise-aware fine-tuned", compression.sparsity, compressed, masks or _all_kept(compressed, names))]
    x, y, epochs, seed = inputs.train.x, inputs.train.y, compression.finetune_epochs, compression.seed
    for s in cfg.sparsities:
        net, m = (inputs.network, _all_kept(inputs.network, names)) if s == 0 else cached_prune(
            inputs.network, names, s, x, y, epochs, seed=seed)
        starts.append(Start(f"pruned {s:.0%}", s, net, m))
    for n_, m_ in cfg.nm_patterns:
        net, m = cached_prune_nm(inputs.network, names, n_, m_, x, y, epochs, seed=seed)
        starts.append(Start(f"pruned {n_}:{m_}", 1 - n_ / m_, net, m, (n_, m_)))
    tried: list[DigitalOption] = []

    origin: dict[int, tuple[Start, nn.Module]] = {}  # id of a tried option -> its start, the network it quantized
    bn_inputs = model_cache.key(nn.Module(), [], inputs.train.x, inputs.train.y, asdict(readback))  # BN re-estimation

    def stored(start: Start, net: nn.Module, bits: int | dict[str, int], clip: float) -> tuple[nn.Module, int]:
        m, value_bits = quantized(net, names, bits, clip, start.masks, start.nm)
        return bn_recalibrated(m, inputs.train, readback), value_bits  # the analog model's read-time re-estimation

    def evaluated(start: Start, net: nn.Module, bits: int | dict[str, int], clip: float) -> dict[str, float]:
        """Validation accuracy and value bits of ``net`` stored at ``bits`` and ``clip``; a study's
        points evaluate the same options, so they come from the model cache when it has them."""
        def compute() -> dict[str, float]:
            m, value_bits = stored(start, net, bits, clip)
            return {"accuracy_val": accuracy(m, inputs.val.x, inputs.val.y), "value_bits": value_bits}

        settings = {"stage": "digital option", "bits": bits, "clip": clip, "masks": model_cache.masks_digest(
            start.masks), "nm": start.nm, "bn_inputs": bn_inputs, "code": _evaluation_code()}
        return model_cache.cached_figures(net, names, inputs.val.x, inputs.val.y, settings, compute)

    def option(start: Start, net: nn.Module, bits: int | dict[str, int], training: str,
               clips: tuple[float, ...] = cfg.clips) -> DigitalOption:
        """The clip with the best validation accuracy at ``bits`` (ties: the larger clip)."""
        best = None
        layer_bits = dict(bits) if isinstance(bits, dict) else None
        for clip in clips:
            fig = evaluated(start, net, bits, clip)
            if best is None or fig["accuracy_val"] > best.accuracy_val:
                total = int(fig["value_bits"]) + other_bits
                top = max(layer_bits.values()) if layer_bits else bits
                best = DigitalOption(start.name, top, start.sparsity, training, clip, fig["accuracy_val"],
                                     float("nan"), total, medium.cells(total), layer_bits)
        assert best is not None
        tried.append(best)
        origin[id(best)] = start, net
        return best

    passing: list[tuple[DigitalOption, Start]] = []
    for start in starts:
        for b in cfg.bits:
            if option(start, start.network, b, "post-training").accuracy_val >= target_val:
                passing.append((tried[-1], start))
                break  # more bits only cost more from this start
    if cfg.qat_epochs:
        for first, start in sorted(passing, key=lambda p: p[0].cells)[:cfg.qat_starts]:
            for b in (b for b in sorted(cfg.bits, reverse=True) if b < first.bits):
                trained = cached_quantization_aware(start.network, start.masks, x, y, b, QAT_CLIP, cfg.qat_epochs,
                                                    seed, fake_quantizer(b, QAT_CLIP))
                if option(start, trained, b, "quantization-aware").accuracy_val < target_val:
                    break  # fewer bits only do worse
    ok = [o for o in tried if o.accuracy_val >= target_val]
    if ok and cfg.mixed_precision:
        cheapest = min(ok, key=lambda o: o.cells)
        _lower_layers(cheapest, *origin[id(cheapest)], names, target_val, option)
        ok = [o for o in tried if o.accuracy_val >= target_val]
    if not ok:
        return None, tried
    chosen = min(ok, key=lambda o: o.cells)
    m, _ = stored(*origin[id(chosen)], chosen.layer_bits or chosen.bits, chosen.clip)
    chosen.accuracy_test = accuracy(m, inputs.test.x, inputs.test.y)  # the test set, once
    return chosen, tried


def _evaluation_code() -> str:
    """The digest of the code behind a digital option's figures (part of their cache key)."""
    from ..models import recalibrate_batchnorm
    from . import side_info

    return model_cache.code_digest(quantized, _tensor_code, quantize_levels, side_info, nm_mask_bits,
                                   digital_parameters, bn_recalibrated, recalibrate_batchnorm, accuracy)


def _lower_layers(first: DigitalOption, start: Start, net: nn.Module, names: list[str], target_val: float,
                  option: Any) -> None:
    """Greedy per-layer precision from a passing option: each round lowers by one bit (at the
    option's clip) the tensor that saves the most bits while validation still passes, until
    none can. A round tries the tensors in order of the bits they save (counted without a
    forward pass) and stops at the first that passes: the choice of trying every tensor, in
    far fewer evaluations (ResNet-20's 21 tensors took hours on 2 cores)."""
    weights = {n: w.detach().numpy() for n, w in net.named_parameters()}

    @functools.cache
    def cost(n: str, b: int) -> int:
        return _tensor_code(weights[n], b, first.clip, start.masks[n], start.nm)[1]

    bits = {n: first.bits for n in names}
    while True:
        order = sorted((n for n in names if bits[n] > 2), key=lambda n: cost(n, bits[n] - 1) - cost(n, bits[n]))
        for n in order:
            if option(start, net, {**bits, n: bits[n] - 1}, first.training, (first.clip,)).accuracy_val >= target_val:
                bits[n] -= 1
                break
        else:
            return
