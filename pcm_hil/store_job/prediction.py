"""What the calibrated noise model predicts before any pulse: accuracy after the retention
time against total cells per weight, for several replica budgets (no chip)."""
from __future__ import annotations

from dataclasses import replace

from pcm_hil_noisemodel import NoiseModel

from . import side_info
from .compression import Compressed
from .digital_medium import Medium
from .inputs import Inputs
from .layout import LayoutConfig, encode
from .readback import ReadbackConfig, predicted_accuracy

REPLICA_BUDGETS = (1.0, 1.25, 1.5, 2.0, 3.0)


def accuracy_curve(inputs: Inputs, compressed: Compressed, importance: dict, noise: NoiseModel, cfg: LayoutConfig,
                   readback: ReadbackConfig, retention_s: float, medium: Medium, seed: int = 0, draws: int = 3,
                   replicas: tuple[float, ...] = REPLICA_BUDGETS) -> list[dict[str, float]]:
    """Per replica budget: cells per weight (all costs, side information on ``medium``) and
    the predicted accuracy, the mean of ``draws`` noise-model realizations at ±0.5 µS, cap 20
    (decoding the replicas that verified in each draw, as the store job does)."""
    tol = 0.5 if 0.5 in noise.tolerances_us_ else noise.tolerances_us_[0]
    cap = min(20, noise.max_pulses_)
    out = []
    for r in replicas:
        if r > 1 and not cfg.code.replicable:
            continue
        lay = encode(compressed.model, inputs.names, compressed.masks, importance, noise,
                     replace(cfg, replicas_per_weight=r), retention_s)
        acc = predicted_accuracy(noise, lay, compressed.model, inputs.names, cfg.code, inputs.train, inputs.test,
                                 readback, retention_s, tol, cap, seed=seed, draws=draws)
        side = side_info.side_bits(lay, cfg.code, compressed.model, inputs.names)
        total = lay.targets.size + medium.cells(sum(side.values()))
        out.append({"replicas_per_weight": r, "cells_per_weight": total / lay.weights, "accuracy_predicted": acc})
    return out
