"""Stage 8 of the store job, evaluation: how much one programming of the layout can be
trusted, and what digital storage costs on the same chip.

One program-and-verify batch writes ``programmings − 1`` more copies of the stored layout
(same targets, aims and settings) and the digital-medium test pattern on free cells after
the model; one retention wait; one read. Each copy is compensated, decoded and scored like
the stored model, so the stored accuracy is a mean over ``programmings`` realizations with
a 95 % interval (Student t), on the test set and on the validation split (which chooses the
digital competitor). The medium measurement picks the density and code of error-free digital
storage on this chip (:mod:`.digital_medium`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
from scipy import stats

from pcm_hil_noisemodel import NoiseModel

from ..checkpoint import Interrupted, wait_until
from ..chip import Chip
from ..coding import CodeConfig
from ..program import VerifyConfig, program_verify
from . import digital_medium
from .allocation import Plan
from .digital_medium import Medium, MediumConfig
from .inputs import Inputs
from .layout import Layout
from .readback import ReadbackConfig, evaluate_reads


@dataclass(frozen=True)
class EvaluationConfig:
    """What the evaluation stage reads."""

    programmings: int = 5  # realizations of the layout the stored accuracy is averaged over (≥ 1)
    chips: int = 1  # chips they are spread over, round robin (> 1: the emulator's sibling chips)
    accuracy_curve: bool = True  # also predict accuracy against cells per weight from the noise model (no chip)

    def __post_init__(self) -> None:
        if type(self.programmings) is not int or not 1 <= self.programmings <= 100:
            raise ValueError(f"programmings must be an integer in [1, 100], got {self.programmings!r}")
        if type(self.chips) is not int or not 1 <= self.chips <= min(8, self.programmings):
            raise ValueError(f"chips must be an integer in [1, min(8, programmings = {self.programmings})], "
                             f"got {self.chips!r}")

    def chip_of(self) -> list[int]:
        """Per programming (the stored one first, on the job's chip = 0), the chip it is on."""
        return [p % self.chips for p in range(self.programmings)]


def cells_needed(layout_cells: int, cfg: EvaluationConfig, medium: MediumConfig) -> int:
    """Cells the evaluation programs on the job's chip after the model."""
    return layout_cells * (cfg.chip_of().count(0) - 1) + medium.cells()


def interval95(values: list[float]) -> list[float]:
    """95 % confidence interval of the mean (Student t); the value itself for one sample."""
    v = np.asarray(values, float)
    if v.size < 2 or np.all(v == v[0]):
        return [float(v.mean()), float(v.mean())]
    lo, hi = stats.t.interval(0.95, v.size - 1, loc=v.mean(), scale=stats.sem(v))
    return [float(lo), float(hi)]


@dataclass
class Evaluation:
    accuracy_test: list[float]  # per programming, the stored one first
    accuracy_val: list[float]
    medium: Medium
    pulses: int                 # SET pulses + RESETs the extra programmings and the medium test spent
    chips: list[int]            # per programming, the chip it is on (0: the job's chip)
    chip_ids: list[str]         # per chip
    mask_decoding: list[dict[str, int]] | None = None  # per programming (the stored one first): mask in the cells

    def figures(self) -> dict[str, Any]:
        return {"programmings": len(self.accuracy_test), "accuracy_stored_programmings": self.accuracy_test,
                "accuracy_stored_mean": float(np.mean(self.accuracy_test)),
                "accuracy_stored_ci95": interval95(self.accuracy_test),
                "accuracy_stored_val_mean": float(np.mean(self.accuracy_val)),
                "accuracy_stored_val_ci95": interval95(self.accuracy_val),
                "programming_chips": self.chips, "chip_ids": self.chip_ids,
                "evaluation_pulses": self.pulses, "digital_medium": self.medium.as_dict(),
                **({"mask_decoding_programmings": self.mask_decoding} if self.mask_decoding else {})}


def evaluate(chip: Chip, noise: NoiseModel, model_cells: np.ndarray, cells: np.ndarray, layout: Layout, plan: Plan,
             vcfg: VerifyConfig, inputs: Inputs, model: Any, code: CodeConfig, stored: tuple[float, float],
             retention_s: float, cfg: EvaluationConfig, medium_cfg: MediumConfig, readback: ReadbackConfig,
             g_hi_us: float, stop: Callable[[], bool] | None = None, run_id: str = "",
             stored_mask: dict[str, int] | None = None) -> Evaluation:
    """Program the copies and the medium pattern on ``cells`` (the run's cells after the
    model's ``model_cells``, in order: one range or several), wait, read, score; copies that
    ``cfg`` puts on sibling chips go there at the stored model's positions and the next ones.
    ``stored``: (test, validation) accuracy of the stored programming."""
    n = layout.targets.size
    chip_of = cfg.chip_of()
    here = chip_of.count(0) - 1
    pat = digital_medium.pattern(noise, g_hi_us, medium_cfg, retention_s)
    need = here * n + pat.aims_us.size
    if cells.size < need:
        raise ValueError(f"the evaluation needs {need} cells, the run holds {cells.size} for it")
    cells = np.asarray(cells[:need], dtype=np.int64)
    reads, converged, pulses = _program_copies(chip, cells, plan, here, vcfg, retention_s, stop, run_id, pat)
    medium = digital_medium.choose(digital_medium.decode(pat, reads[here * n:], medium_cfg), medium_cfg)
    copies = [(reads[k * n:(k + 1) * n], converged[k * n:(k + 1) * n]) for k in range(here)]
    chip_ids = [chip.chip_id()]
    for c in range(1, cfg.chips):
        other = chip.sibling(c)
        count = chip_of.count(c)
        positions = np.concatenate([model_cells, cells])[:count * n]
        r, conv, p = _program_copies(other, positions, plan, count, vcfg, retention_s, stop, run_id)
        copies += [(r[k * n:(k + 1) * n], conv[k * n:(k + 1) * n]) for k in range(count)]
        pulses += p
        chip_ids.append(other.chip_id())
    acc_test, acc_val = [stored[0]], [stored[1]]
    masks = [stored_mask] if stored_mask is not None else None
    for r, conv in copies:
        back = evaluate_reads(r, model, inputs.names, layout, code, conv, inputs.train, inputs.test, readback,
                              inputs.val, diagnostics=False)
        acc_test.append(back.figures["accuracy_stored"])
        acc_val.append(back.figures["accuracy_stored_val"])
        if masks is not None:
            masks.append(back.figures["mask_decoding"])
    # the stored programming and the copies, grouped by chip as programmed: chip indices ascending
    return Evaluation(acc_test, acc_val, medium, pulses, sorted(chip_of), chip_ids, masks)


def _program_copies(chip: Chip, cells: np.ndarray, plan: Plan, copies: int, vcfg: VerifyConfig, retention_s: float,
                    stop: Callable[[], bool] | None, run_id: str, pattern: Any = None
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """``copies`` programmings of ``plan`` (and the medium ``pattern``, if given) on ``cells``
    of ``chip``, one wait of ``retention_s``, one read: (reads µS, converged, pulses)."""
    def per_cell(of_plan: np.ndarray, of_pattern: str) -> np.ndarray:
        tiled = np.tile(of_plan, copies)
        return tiled if pattern is None else np.concatenate([tiled, getattr(pattern, of_pattern)])

    aims = per_cell(plan.aim_us, "aims_us")
    tol = per_cell(plan.tolerance_us, "tolerance_us")
    cap = per_cell(plan.max_pulses, "max_pulses")
    res = program_verify(chip, cells, aims, replace(vcfg, max_pulses=int(cap.max())),
                         tolerance_us=tol, max_pulses=cap, stop=stop)
    if res.stop_reason == "interrupted":
        raise Interrupted(run_id, "evaluation programmings")

    def between(now: float) -> None:
        if stop is not None and stop():
            raise Interrupted(run_id, "evaluation retention wait")

    wait_until(chip, chip.now() + retention_s, between)
    reads = chip.read(cells, n_avg=vcfg.n_avg).astype(np.float64)
    return reads, res.converged, int(res.pulses.sum() + res.resets.sum() + cells.size)
