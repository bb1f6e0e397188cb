"""Stage 7 of the store job, the digital baselines and the cost accounting: the stored
model's cells against (a) fp32 on SLC with ECC, (b) the same compressed model digital,
(c) the cheapest quantized, pruned digital model reaching the stored accuracy."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from . import cost
from .compression import CompressionConfig, prune_and_finetune, with_quantized
from .inputs import Inputs
from .layout import Layout
from .readback import ReadbackConfig, bn_recalibrated
from ..models import accuracy


@dataclass(frozen=True)
class BaselineConfig:
    """What the baselines stage reads."""

    search: bool = True  # search the best digital model (fine-tunes); False: (a) and (b) only


def digital_parameters(model: nn.Module, names: list[str]) -> int:
    """Floating-point parameters kept digital (biases, norms): everything not stored in cells."""
    return sum(p.numel() for n, p in model.state_dict().items() if n not in names and p.dtype.is_floating_point)


def side_bits(layout: Layout, model: nn.Module, names: list[str]) -> float:
    """Every digital bit the decoder reads: the tensors' side information and fp32 parameters."""
    return layout.side_bits + 32 * digital_parameters(model, names)


def costs(inputs: Inputs, compressed: nn.Module, layout: Layout, cells: int, accuracy_stored: float,
          compression: CompressionConfig, quantize_bits: int | None, readback: ReadbackConfig,
          cfg: BaselineConfig) -> dict[str, Any]:
    """Cells of the analog store and of the three digital baselines, and the reductions."""
    weights = layout.weights
    names = inputs.names
    other = digital_parameters(inputs.network, names)
    nnz = int(sum(e.kept for e in layout.encoded))
    compressed_bits = cost.digital_bits(weights, nnz, quantize_bits or 32, other, compression.sparsity > 0, len(names))
    best, tried = None, []
    if cfg.search:
        pruned = {0.0: inputs.network}
        if compression.sparsity > 0 and quantize_bits is None and compression.training_noise == 0:
            pruned[compression.sparsity] = compressed  # the same pruning and fine-tuning, already done

        def evaluate(bits: int, sparsity: float) -> float:
            if sparsity not in pruned:
                pruned[sparsity] = prune_and_finetune(inputs.network, names, sparsity, inputs.train.x, inputs.train.y,
                                                      compression.finetune_epochs, seed=compression.seed)[0]
            m = with_quantized(pruned[sparsity], names, bits)
            # the same read-time batch-norm re-estimation as the analog model gets, for a fair comparison
            return accuracy(bn_recalibrated(m, inputs.train, readback), inputs.test.x, inputs.test.y)

        best, tried = cost.best_digital(evaluate, weights, other, len(names), accuracy_stored)
    summary = cost.summarize(cells, side_bits(layout, inputs.network, names), weights, other, compressed_bits, best)
    return {**summary, "best_digital": cost.as_dict(best), "digital_options_tried": [cost.as_dict(o) for o in tried],
            "cells_per_weight": summary["total_cells"] / weights}
