"""Memory cost accounting, analog versus digital (see shared method.md, "Honest cost accounting").

Every digital medium carries SECDED (72,64) ECC: 72 stored bits per 64 data bits.
- SLC: 1 bit per cell → 1.125 cells per data bit.
- MLC: 2 bits per cell → 0.5625 cells per data bit.
The analog side pays for every cell it programs (weights, idle pair devices, redundancy,
reference cells) plus its digital side information (masks, signs, scales, and the
parameters kept digital: biases and norms, fp32) stored on 2-bit MLC with ECC.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

ECC = 72 / 64
SLC_CELLS_PER_BIT = ECC / 1
MLC_CELLS_PER_BIT = ECC / 2
DIGITAL_MEDIUM = "2-bit MLC with SECDED (72,64)"


@dataclass
class DigitalOption:
    bits: int
    sparsity: float
    accuracy: float
    cells: float


def slc_cells(bits: float) -> float:
    return bits * SLC_CELLS_PER_BIT


def mlc_cells(bits: float) -> float:
    return bits * MLC_CELLS_PER_BIT


def digital_bits(weights: int, nonzero: int, bits_per_weight: int, other_params: int, pruned: bool,
                 tensors: int) -> float:
    """Bits of a (pruned, quantized) model: mask, nonzero values, per-tensor scales, fp32 others."""
    return (weights if pruned else 0) + nonzero * bits_per_weight + 32 * tensors + 32 * other_params


def best_digital(evaluate: Callable[[int, float], float], weights: int, other_params: int, tensors: int,
                 target_accuracy: float, bits: range = range(2, 9), sparsities: tuple[float, ...] = (0.0, 0.5, 0.75)
                 ) -> tuple[DigitalOption | None, list[DigitalOption]]:
    """The cheapest quantized (and pruned) model on 2-bit MLC with ECC reaching ``target_accuracy``.

    ``evaluate(bits, sparsity)`` returns the accuracy of that digital model.
    """
    tried: list[DigitalOption] = []
    for s in sparsities:
        for b in bits:
            acc = evaluate(b, s)
            nnz = int(round(weights * (1 - s)))
            cells = mlc_cells(digital_bits(weights, nnz, b, other_params, s > 0, tensors))
            tried.append(DigitalOption(b, s, acc, cells))
            if acc >= target_accuracy:
                break  # more bits only cost more at this sparsity
    ok = [o for o in tried if o.accuracy >= target_accuracy]
    return (min(ok, key=lambda o: o.cells) if ok else None), tried


def as_dict(o: DigitalOption | None) -> dict | None:
    return None if o is None else asdict(o)


def summarize(analog_cells: int, side_bits: float, weights: int, other_params: int, compressed_bits: float,
              best: DigitalOption | None) -> dict:
    """Cells of the analog store and the three digital baselines, and the reductions."""
    digital_side = mlc_cells(side_bits)
    total = analog_cells + digital_side
    fp32 = slc_cells(32 * (weights + other_params))
    compressed = slc_cells(compressed_bits)
    out = {
        "analog_cells": analog_cells,
        "digital_cells": digital_side,
        "total_cells": total,
        "baselines_cells": {"fp32_slc_ecc": fp32, "compressed_slc_ecc": compressed,
                            "best_digital_mlc_ecc": None if best is None else best.cells},
        "memory_reduction": {"fp32_slc_ecc": fp32 / total, "compressed_slc_ecc": compressed / total,
                             "best_digital_mlc_ecc": None if best is None else best.cells / total},
        "digital_medium": DIGITAL_MEDIUM,
    }
    return out


