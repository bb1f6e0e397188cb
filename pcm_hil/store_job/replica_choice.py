"""Replicas per kept weight chosen from the calibrated chip (``--replicas auto``).

A device whose programming error is large against its conductance window needs more
replicas than one with a wide, quiet window; a fixed default over-spends on the second and
loses accuracy on the first (``pcm-hil bench devices --store``). Before any pulse, each
candidate mean (ascending) gets its layout and program-and-verify plan, and ``draws``
noise-model programmings of that plan are read after the retention time and scored on the
validation split, exactly as the store job scores a read-back
(:func:`.readback.simulated_readbacks`). The first
candidate whose predicted loss against the compressed model stays within
``max_storage_loss_pp`` is chosen; when none does, the one with the least predicted loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pcm_hil_noisemodel import NoiseModel

from ..models import accuracy
from . import allocation, layout as layout_stage
from .allocation import AllocationConfig
from .compression import Compressed
from .inputs import Inputs
from .layout import LayoutConfig
from .readback import ReadbackConfig, simulated_readbacks


@dataclass(frozen=True)
class ReplicaChoiceConfig:
    """What the replica choice reads (``auto`` False: the layout's ``replicas_per_weight``)."""

    auto: bool = False
    # mean replicas per kept weight, tried ascending; not 1: a weight whose only cell fails is
    # lost, and 4 draws miss that spread (random-13: 0.43 pp predicted, 1.76 pp measured)
    candidates: tuple[float, ...] = (1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0)
    max_storage_loss_pp: float = 0.5  # predicted validation accuracy below the compressed model's, pp
    draws: int = 4                    # noise-model programmings per candidate

    def __post_init__(self) -> None:
        c = tuple(self.candidates)
        if not c or any(not (math.isfinite(r) and 1.0 <= r <= 8.0) for r in c) or list(c) != sorted(set(c)):
            raise ValueError(f"replica candidates must be ascending distinct numbers in [1, 8], got {list(c)}")
        if not (math.isfinite(self.max_storage_loss_pp) and 0 < self.max_storage_loss_pp <= 100):
            raise ValueError(f"max_storage_loss_pp must be in (0, 100], got {self.max_storage_loss_pp!r}")
        if type(self.draws) is not int or not 1 <= self.draws <= 100:
            raise ValueError(f"draws must be an integer in [1, 100], got {self.draws!r}")


@dataclass
class ReplicaChoice:
    """The chosen mean and every candidate tried (``rows``: replicas, cells, predicted loss)."""

    replicas_per_weight: float
    rows: list[dict[str, Any]]
    accuracy_compressed_val: float
    cfg: ReplicaChoiceConfig

    def figures(self) -> dict[str, Any]:
        return {"replicas_per_weight": self.replicas_per_weight, "max_storage_loss_pp": self.cfg.max_storage_loss_pp,
                "draws": self.cfg.draws, "accuracy_compressed_val": self.accuracy_compressed_val,
                "candidates": self.rows}


def choose_replicas(inputs: Inputs, noise: NoiseModel, compressed: Compressed, importance: dict[str, np.ndarray],
                    layout_cfg: LayoutConfig, alloc: AllocationConfig, readback: ReadbackConfig, retention_s: float,
                    cfg: ReplicaChoiceConfig, seed: int = 0) -> ReplicaChoice:
    """The fewest replicas whose predicted validation loss is within the target (see the module)."""
    acc_val = accuracy(compressed.model, inputs.val.x, inputs.val.y)
    rows: list[dict[str, Any]] = []
    candidates = cfg.candidates if layout_cfg.code.replicable else (1.0,)
    for r in candidates:
        if r > layout_cfg.max_replicas:
            break
        lay_cfg = replace(layout_cfg, replicas_per_weight=r)
        lay = layout_stage.encode(compressed.model, inputs.names, compressed.masks, importance, noise, lay_cfg,
                                  retention_s)
        plan = allocation.plan_cells(noise, lay.targets, lay.importance, lay.reference, alloc, lay.min_us)
        rng = np.random.default_rng([seed, int(round(r * 1000))])
        runs = simulated_readbacks(noise, plan.aim_us, plan.tolerance_us, plan.max_pulses, retention_s, lay,
                                   compressed.model, inputs.names, layout_cfg.code, inputs.train, readback, rng,
                                   cfg.draws)
        vals = [accuracy(decoded, inputs.val.x, inputs.val.y) for decoded, _ in runs]
        loss = 100 * (acc_val - float(np.mean(vals)))
        rows.append({"replicas_per_weight": r, "analog_cells": int(lay.targets.size), "pulses_planned": plan.pulses,
                     "predicted_val_mean": float(np.mean(vals)), "predicted_loss_pp": loss})
        if loss <= cfg.max_storage_loss_pp:
            return ReplicaChoice(r, rows, acc_val, cfg)
    best = min(rows, key=lambda row: row["predicted_loss_pp"])
    return ReplicaChoice(best["replicas_per_weight"], rows, acc_val, cfg)
