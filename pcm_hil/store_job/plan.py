"""The planner: the store configuration with the fewest total cells that keeps the accuracy
within a given drop of the reference, chosen with the calibrated noise model alone (no chip).

Each candidate of the search space (sparsity × code × mean replicas × replica map × pulse
budget) goes through the store job's own stages: compression (cached, so each sparsity is
fine-tuned once), importance, layout and allocation, exactly as :func:`.job.prepare` runs
them. Its total cells are counted as the store job counts them: every analog cell
(reference cells included) plus every side-information part (:func:`.side_info.side_bits`,
verify flags from a simulated programming) on the digital medium, which is itself
simulated on the noise model (:mod:`.digital_medium`'s pattern, decode and choice).

Its accuracy is the read-back chain (:func:`.readback.decoded_from_reads`: drift
compensation with the reference cells, decoding from verified replicas, batch-norm
re-estimation) on simulated programmings of its plan (:func:`.readback.simulate_reads`:
each cell at its own aim, tolerance and cap, RESET-only cells at the floor), scored on the
validation split. Candidates are tried in order of total cells; each is drawn in batches
(a sequential test on the Student-t interval of the mean over draws) until the one-sided
95 % lower bound of its mean validation accuracy clears ``reference − drop`` (accepted,
after at least ``min_draws``) or the upper bound falls below it (rejected, after at least
``reject_after``). The first accepted is the plan. Draws are seeded
per candidate, so a tighter target never accepts a candidate a looser one rejects: the
plan's cells never fall when the target tightens.

The test set is used once, after the choice: the predicted test accuracy of the chosen
configuration, to set beside what the chip measures.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
from scipy import stats

from pcm_hil_noisemodel import NoiseModel

from ..coding import CODES, CodeConfig
from ..models import accuracy
from . import allocation, digital_medium, layout as layout_stage, model_cache, side_info
from .allocation import Plan
from .compression import Compressed
from .digital_medium import Medium
from .importance import estimate
from .inputs import Inputs
from .layout import Layout
from .readback import simulate_reads, simulated_readbacks

Progress = Callable[[str, float, float], None]
PLANNER_CODES = ("sign", "offset", "pair")  # the replicable codes (split and multilevel change compression)
KNOBS = ("sparsity", "code", "replicas_per_weight", "replicas_per", "pulse_budget")  # what the planner chooses


def _silent(stage: str, done: float, total: float) -> None:
    """A progress callback that shows nothing."""


@dataclass(frozen=True)
class SearchSpace:
    """The knobs the planner tries. ``budget_tolerances_us``: the pulse budget, as what
    uniform ±T µS windows at cap 20 would spend on every cell (None: the store job's own
    default budget)."""

    sparsities: tuple[float, ...] = (0.0, 0.5, 0.75, 0.9)
    # the offset code is predicted 0.7–1.1 pp high (mlp-digits, lenet5-mnist5k): opt-in until that is fixed
    codes: tuple[str, ...] = ("sign",)
    replicas: tuple[float, ...] = (1.0, 1.25, 1.5, 2.0, 3.0)
    replicas_per: tuple[str, ...] = ("channel",)
    budget_tolerances_us: tuple[float | None, ...] = (None, 1.0)

    def __post_init__(self) -> None:
        for name in ("sparsities", "codes", "replicas", "replicas_per", "budget_tolerances_us"):
            if not getattr(self, name):
                raise ValueError(f"the search space needs at least one of {name}")
        if any(not (isinstance(s, (int, float)) and 0 <= s < 1) for s in self.sparsities):
            raise ValueError(f"sparsities must be in [0, 1), got {self.sparsities!r}")
        if any(c not in CODES or c not in PLANNER_CODES for c in self.codes):
            raise ValueError(f"codes must be among {', '.join(PLANNER_CODES)}, got {self.codes!r}")
        if any(not (isinstance(r, (int, float)) and 1 <= r <= 8) for r in self.replicas):
            raise ValueError(f"replicas must be in [1, 8], got {self.replicas!r}")
        if any(r not in ("channel", "weight") for r in self.replicas_per):
            raise ValueError(f"replicas_per must be 'channel' or 'weight', got {self.replicas_per!r}")
        if any(t is not None and not (isinstance(t, (int, float)) and t > 0) for t in self.budget_tolerances_us):
            raise ValueError(f"budget tolerances must be positive (µS) or None, got {self.budget_tolerances_us!r}")


@dataclass(frozen=True)
class PlanConfig:
    """What the planner reads. ``max_accuracy_drop``: fraction (0.005 = 0.5 pp) below the
    float reference's validation accuracy that the plan may lose, at one-sided confidence
    ``confidence`` on the mean over draws."""

    max_accuracy_drop: float = 0.005
    space: SearchSpace = field(default_factory=SearchSpace)
    min_draws: int = 8          # draws before a candidate may be accepted
    reject_after: int = 4       # draws before a candidate may be rejected (a clear miss costs less)
    max_draws: int = 24         # draws at most per candidate (then accepted only if its bound clears)
    batch: int = 4              # draws between two looks
    final_draws: int = 24       # draws at least of the chosen configuration on the test set (the reported prediction)
    final_max_draws: int = 240  # ... and at most, drawing on until its 95 % interval is ±final_halfwidth
    final_halfwidth: float = 0.001  # (fraction: 0.001 = ±0.1 pp; a small test set scatters a draw by ±0.5 pp)
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.max_accuracy_drop, (int, float)) and 0 <= self.max_accuracy_drop <= 0.5):
            raise ValueError(f"max_accuracy_drop must be in [0, 0.5] (a fraction; 0.005 = 0.5 pp), "
                             f"got {self.max_accuracy_drop!r}")
        for name, lo, hi in (("min_draws", 2, 1000), ("reject_after", 2, 1000), ("max_draws", 2, 1000),
                             ("batch", 1, 1000), ("final_draws", 2, 1000), ("final_max_draws", 2, 10000)):
            v = getattr(self, name)
            if type(v) is not int or not lo <= v <= hi:
                raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
        if self.min_draws > self.max_draws:
            raise ValueError(f"min_draws ({self.min_draws}) must not exceed max_draws ({self.max_draws})")
        if self.final_draws > self.final_max_draws:
            raise ValueError(f"final_draws ({self.final_draws}) must not exceed final_max_draws "
                             f"({self.final_max_draws})")
        if not 0 < self.final_halfwidth <= 0.05:
            raise ValueError(f"final_halfwidth must be in (0, 0.05] (a fraction; 0.001 = ±0.1 pp), "
                             f"got {self.final_halfwidth!r}")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence!r}")


@dataclass
class Candidate:
    """One configuration of the search and what the noise model says of it."""

    options: dict[str, Any]       # store options (StoreConfig.from_options names) this candidate sets
    analog_cells: int
    side_bits: dict[str, int]
    total_cells: float
    weights: int
    val_accuracies: list[float] = field(default_factory=list)
    verdict: str = "not tried"    # accepted, rejected, undecided (max draws without a decision), not tried

    def summary(self) -> dict[str, Any]:
        acc = np.asarray(self.val_accuracies, float)
        return {**knobs(self.options), "total_cells": self.total_cells, "analog_cells": self.analog_cells,
                "cells_per_weight": self.total_cells / self.weights, "draws": int(acc.size),
                "val_accuracy_mean": float(acc.mean()) if acc.size else None, "verdict": self.verdict}


@dataclass
class PlanResult:
    """The chosen configuration and its prediction (JSON-able with :meth:`as_dict`)."""

    model: str
    configuration: dict[str, Any] | None   # the chosen knobs, JSON-able; None when no candidate meets the target
    options: dict[str, Any] | None         # the store options to store it with (StoreConfig.from_options names)
    reference_val: float
    reference_test: float
    max_accuracy_drop: float
    confidence: float
    predicted: dict[str, Any]
    medium: Medium
    tried: list[dict[str, Any]]
    candidates: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "configuration": self.configuration, "reference_val": self.reference_val,
                "reference_test": self.reference_test, "max_accuracy_drop": self.max_accuracy_drop,
                "max_accuracy_drop_pp": 100 * self.max_accuracy_drop, "confidence": self.confidence,
                **self.predicted, "predicted_digital_medium": self.medium.as_dict(), "candidates": self.candidates,
                "candidates_tried": self.tried, "planning_seconds": self.seconds}


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    out = dict(options)
    if isinstance(out.get("code"), CodeConfig):
        out["code"] = out["code"].code
    return out


def knobs(options: dict[str, Any]) -> dict[str, Any]:
    """The planner's knobs of a set of store options, JSON-able (pulse_budget None: the store
    job's default budget)."""
    j = _jsonable(options)
    return {k: j.get(k) for k in KNOBS}


def budget_for(noise: NoiseModel, lay: Layout, tolerance_us: float, caps: tuple[int, ...]) -> float:
    """The pulse budget (SET pulses + RESETs) that uniform ±``tolerance_us`` windows at cap 20
    would spend on the weight cells, plus the reference cells at the tightest option (as the
    allocation stage counts a budget)."""
    opts = allocation.options(noise, caps)
    table = allocation.tables(noise, lay.targets, opts)
    ref = lay.reference
    k = min(range(len(opts)), key=lambda i: (abs(opts[i][0] - tolerance_us), abs(opts[i][1] - 20)))
    return float(table.pulses[~ref, k].sum() + table.pulses[ref, allocation.tightest(opts)].sum())


def _seed(base: int, options: dict[str, Any]) -> np.random.Generator:
    """Draws seeded by the candidate itself, so that its draws do not depend on the target."""
    text = repr(sorted(_jsonable(options).items())) + f"/{base}"
    return np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))


@dataclass
class _Built:
    """A candidate's stages: what the store job would program."""

    cfg: Any  # StoreConfig
    compressed: Compressed
    layout: Layout
    plan: Plan


def plan_store(inputs: Inputs, noise: NoiseModel, base: dict[str, Any], cfg: PlanConfig,
               progress: Progress = _silent) -> PlanResult:
    """Search ``cfg.space`` around the store options ``base`` (``StoreConfig.from_options``
    names; the planner sets sparsity, code, replicas_per_weight, replicas_per and
    pulse_budget) for the fewest total cells meeting the target; no chip."""
    from .job import StoreConfig, placed_mask

    t0 = time.monotonic()
    space = cfg.space
    base_code = base.get("code") or CodeConfig()  # its percentile and the like; the planner sets the code itself
    base = {k: v for k, v in base.items() if k not in ("sparsity", "code", "replicas_per_weight", "replicas_per",
                                                        "pulse_budget", "target_loss")}
    probe = StoreConfig.from_options(**base)
    ref_val = accuracy(inputs.network, inputs.val.x, inputs.val.y)
    target = ref_val - cfg.max_accuracy_drop
    medium = digital_medium.predicted(noise, probe.layout.g_hi(noise), probe.retention_s, probe.medium, seed=cfg.seed)

    built: dict[int, _Built] = {}
    candidates: list[Candidate] = []
    combos = [(s, c, r, per, bt) for s in space.sparsities for c in space.codes for r in space.replicas
              for per in space.replicas_per for bt in space.budget_tolerances_us
              if not (r == 1.0 and per != space.replicas_per[0])]  # one replica: the map is the same
    progress("plan: layouts", 0, len(combos))
    per_sparsity: dict[float, tuple[Compressed, dict[str, np.ndarray]]] = {}
    for i, (s, c, r, per, bt) in enumerate(combos):
        options = {**base, "sparsity": s, "code": replace(base_code, code=c), "replicas_per_weight": r,
                   "replicas_per": per}
        sc = StoreConfig.from_options(**options)
        if s not in per_sparsity:
            comp = model_cache.cached_compress(inputs.network, inputs.names, inputs.train.x, inputs.train.y,
                                               sc.compression)
            per_sparsity[s] = (comp, estimate(comp.model, inputs.names, inputs.train, sc.importance))
        comp, imp = per_sparsity[s]
        sc, _ = placed_mask(sc, comp.masks, noise, medium)  # where the store job will put the mask
        lay = layout_stage.encode(comp.model, inputs.names, comp.masks, imp, noise, sc.layout, sc.retention_s)
        if bt is not None:
            options["pulse_budget"] = round(budget_for(noise, lay, bt, sc.allocation.caps))
            sc = replace(sc, allocation=StoreConfig.from_options(**options).allocation)
        try:
            plan = allocation.plan_cells(noise, lay.targets, lay.importance, lay.reference, sc.allocation,
                                         lay.min_us)
        except ValueError:
            continue
        # the verify flags the decoder will read: from one simulated programming (the candidate's first draw)
        _, verified = simulate_reads(noise, plan.aim_us, plan.tolerance_us, plan.max_pulses, sc.retention_s,
                                     _seed(cfg.seed, options))
        bits = side_info.side_bits(lay, sc.layout.code, comp.model, inputs.names, verified)
        total = lay.targets.size + medium.cells(sum(bits.values()))
        built[len(candidates)] = _Built(sc, comp, lay, plan)
        candidates.append(Candidate(options, int(lay.targets.size), bits, float(total), lay.weights))
        progress("plan: layouts", i + 1, len(combos))

    order = sorted(range(len(candidates)), key=lambda k: (candidates[k].total_cells, k))
    chosen = None
    for n, k in enumerate(order):
        progress("plan: accuracy", n, len(order))
        cand, b = candidates[k], built[k]
        rng = _seed(cfg.seed, cand.options)
        while True:
            for _ in range(min(cfg.batch, cfg.max_draws - len(cand.val_accuracies))):
                cand.val_accuracies.append(_draw(noise, inputs, b, rng, test=False)[1])
            lo, hi = _bounds(cand.val_accuracies, cfg.confidence)
            if len(cand.val_accuracies) >= cfg.min_draws and lo >= target:
                cand.verdict = "accepted"
            elif len(cand.val_accuracies) >= cfg.reject_after and hi < target:
                cand.verdict = "rejected"
            elif len(cand.val_accuracies) >= cfg.max_draws:
                cand.verdict = "undecided"
            else:
                continue
            break
        if cand.verdict == "accepted":
            chosen = k
            break
    progress("plan: accuracy", len(order), len(order))

    predicted: dict[str, Any] = {"predicted_accuracy": None, "predicted_accuracy_ci95": None,
                                 "predicted_accuracy_val": None, "predicted_accuracy_val_lower": None,
                                 "total_cells": None, "cells_per_weight": None}
    configuration = options = None
    if chosen is not None:
        cand, b = candidates[chosen], built[chosen]
        progress("plan: prediction", 0, cfg.final_draws)
        rng = np.random.default_rng(cfg.seed + 1)
        test_accs, val_accs, flag_bits = [], [], []
        while len(test_accs) < cfg.final_draws or (
                len(test_accs) < cfg.final_max_draws and np.ptp(_interval95(test_accs)) / 2 > cfg.final_halfwidth):
            acc_test, acc_val, verified = _draw(noise, inputs, b, rng, test=True)
            test_accs.append(acc_test)
            val_accs.append(acc_val)
            flag_bits.append(side_info.coded_bits(verified[~b.layout.reference]))
            progress("plan: prediction", len(test_accs), max(cfg.final_draws, len(test_accs)))
        options = dict(cand.options)
        configuration = knobs(cand.options)
        lo_val, _ = _bounds(cand.val_accuracies, cfg.confidence)
        predicted = {
            "predicted_accuracy": float(np.mean(test_accs)), "predicted_accuracy_ci95": _interval95(test_accs),
            "predicted_accuracy_sd": float(np.std(test_accs, ddof=1)), "predicted_draws": len(test_accs),
            "predicted_accuracy_val": float(np.mean(cand.val_accuracies)), "predicted_accuracy_val_lower": lo_val,
            "predicted_accuracy_val_final": float(np.mean(val_accs)),
            "total_cells": cand.total_cells, "analog_cells": cand.analog_cells,
            "side_bits": cand.side_bits, "side_cells": {k: medium.cells(v) for k, v in cand.side_bits.items()},
            "verify_flag_bits_mean": float(np.mean(flag_bits)),
            "cells_per_weight": cand.total_cells / cand.weights, "weights": cand.weights,
            "pulses_planned": b.plan.pulses}
    return PlanResult(probe.network.name, configuration, options, ref_val, inputs.accuracy_reference,
                      cfg.max_accuracy_drop,
                      cfg.confidence, predicted, medium,
                      [candidates[k].summary() for k in order if candidates[k].verdict != "not tried"],
                      len(candidates), time.monotonic() - t0)


def _draw(noise: NoiseModel, inputs: Inputs, b: _Built, rng: np.random.Generator, test: bool
          ) -> tuple[float, float, np.ndarray]:
    """One simulated programming of the candidate's plan, read after the retention time and
    scored as the store job scores a read-back: (test accuracy or NaN, validation accuracy,
    verified cells)."""
    decoded, verified = next(simulated_readbacks(noise, b.plan.aim_us, b.plan.tolerance_us, b.plan.max_pulses,
                                                 b.cfg.retention_s, b.layout, b.compressed.model, inputs.names,
                                                 b.cfg.layout.code, inputs.train, b.cfg.readback, rng))
    acc_test = accuracy(decoded, inputs.test.x, inputs.test.y) if test else math.nan
    return acc_test, accuracy(decoded, inputs.val.x, inputs.val.y), verified


def _bounds(values: list[float], confidence: float) -> tuple[float, float]:
    """One-sided lower and upper bounds (each at ``confidence``) of the mean (Student t)."""
    v = np.asarray(values, float)
    if v.size < 2:
        return -math.inf, math.inf
    sem = float(np.std(v, ddof=1) / math.sqrt(v.size))
    q = float(stats.t.ppf(confidence, v.size - 1))
    return float(v.mean() - q * sem), float(v.mean() + q * sem)


def _interval95(values: list[float]) -> list[float]:
    v = np.asarray(values, float)
    sem = float(np.std(v, ddof=1) / math.sqrt(v.size))
    q = float(stats.t.ppf(0.975, v.size - 1))
    return [float(v.mean() - q * sem), float(v.mean() + q * sem)]



def measured_beside(result: PlanResult, record: dict[str, Any]) -> dict[str, Any]:
    """The plan's figures with what the store job measured on the chip beside them."""
    out = result.as_dict()
    pred = out["predicted_accuracy"]
    out.update({
        "run_id": record["run_id"], "measured_accuracy_mean": record["accuracy_stored_mean"],
        "measured_accuracy_ci95": record["accuracy_stored_ci95"],
        "measured_accuracy_programmings": record["accuracy_stored_programmings"],
        "measured_accuracy_val_mean": record["accuracy_stored_val_mean"],
        "measured_accuracy_val_ci95": record["accuracy_stored_val_ci95"],
        "prediction_error_pp": None if pred is None else 100 * (pred - record["accuracy_stored_mean"]),
        "measured_total_cells": record["total_cells"], "measured_analog_cells": record["analog_cells"],
        "measured_side_bits": record["side_bits"], "measured_side_cells": record["side_cells"],
        "measured_cells_per_weight": record["cells_per_weight"],
        "measured_digital_medium": record["digital_medium"], "measured_yield": record["yield"],
        "measured_pulses": record["pulses"], "measured_drop_pp": 100 * (result.reference_test
                                                                         - record["accuracy_stored_mean"]),
        "best_digital_cells": record["baselines_cells"]["best_digital"],
        "memory_reduction_vs_best_digital": record["memory_reduction"]["best_digital"],
        "store_seconds": record["seconds"]})
    return out


def plan_and_store(chip: Any, noise: NoiseModel, store: Any, inputs: Inputs, base: dict[str, Any], cfg: PlanConfig,
                   progress: Progress = _silent, stop: Callable[[], bool] | None = None,
                   do_store: bool = True) -> dict[str, Any]:
    """Plan with the noise model (no pulse), then store the chosen configuration on ``chip``
    with the normal store job and set what it measured beside the prediction. Without a
    configuration meeting the target, or with ``do_store`` False, only the plan."""
    from .job import StoreConfig, run_store_job

    result = plan_store(inputs, noise, base, cfg, progress)
    if result.options is None or not do_store:
        return {**result.as_dict(), "stored": False}
    out = run_store_job(chip, noise, store, StoreConfig.from_options(**result.options), progress=progress, stop=stop,
                        inputs=inputs)
    return {**measured_beside(result, out.record), "stored": True}


__all__ = ["Candidate", "PlanConfig", "PlanResult", "SearchSpace", "budget_for", "knobs", "measured_beside",
           "plan_and_store", "plan_store"]
