"""Pulses needed to stay within 0.5 pp of the reference: importance vs uniform vs naive.

The model is prepared once (pruning, fine-tuning, Fisher importance, codes); then each
strategy programs the same cells at a range of budgets on the emulated chip, waits the
retention time, reads back, compensates drift, decodes and measures accuracy.
``pulses_X`` is the fewest pulses (SET + RESET, as counted by the chip run) of a trial
that stayed within 0.5 pp; ``None`` when no trial did. ``pulse_ratio_bound`` is
uniform's pulses over the cheapest plan the options allow: no allocation can beat it.

``importance`` and ``uniform`` share one layout, with replicas placed by importance;
``uniform_replicas`` (integer ``replicas`` only) gives every kept weight the same number
of cells as well as every cell the same setting: importance used nowhere.
"""
from __future__ import annotations

import tempfile
from dataclasses import replace
from typing import Any, Callable

import numpy as np

from pcm_hil_noisemodel import NoiseModel

from ..calibrate import CalibrationConfig, run_calibration
from ..emulator import EmulatedChip
from ..models import accuracy
from ..program import VerifyConfig, naive_config, program_verify
from ..run_store import RunStore
from ..store_job import StoreConfig, prepare
from ..store_job import allocation
from ..store_job.inputs import load_inputs
from ..store_job.layout import Layout, encode
from ..store_job.readback import bn_recalibrated, compensate, decode_model


def run(model: str = "lenet5-fmnist", seed: int = 0, points: int = 12, margin_pp: float = 0.5, repeats: int = 3,
        replicas: float = 2.0, progress: Callable[[str, float, float], None] | None = None) -> dict[str, Any]:
    report = progress or (lambda *a: None)
    chip = EmulatedChip(seed=seed)
    n = chip.geometry.n_cells
    with tempfile.TemporaryDirectory() as d, RunStore(f"{d}/s.sqlite") as store:
        _, noise = run_calibration(chip, store, CalibrationConfig(cells=20_000, first_cell=n - 20_000, seed=seed))
    cfg = StoreConfig.from_options(model=model, sparsity=0.75, replicas_per_weight=replicas, seed=seed)
    inputs = load_inputs(cfg.network)
    prep = prepare(inputs, noise, cfg, n, report)
    compressed, names = prep.compressed.model, inputs.names
    target = inputs.accuracy_reference - margin_pp / 100
    base = VerifyConfig.measured_with(noise)
    by_importance = _Layout(prep.layout, noise, cfg)
    tight, table = by_importance.tight, by_importance.table
    w, ref = by_importance.weights, ~by_importance.weights

    def trial(lay: _Layout, aim: np.ndarray, tol: np.ndarray, cap: np.ndarray, vcfg: VerifyConfig
              ) -> tuple[float, float]:
        """Mean pulses and accuracy over ``repeats`` programmings of the same cells (one
        realization scatters by ±0.3 pp, as much as the effect being measured)."""
        p, a = [], []
        cells = np.arange(lay.targets.size, dtype=np.int64)
        for _ in range(repeats):
            res = program_verify(chip, cells, aim, replace(vcfg, max_pulses=int(cap.max())),
                                 tolerance_us=tol, max_pulses=cap)
            chip.wait(cfg.retention_s)
            reads = chip.read(cells, n_avg=vcfg.n_avg).astype(np.float64)
            corr, _ = compensate(reads, lay.targets[~lay.weights], reads[~lay.weights])
            model_ = decode_model(compressed, names, lay.encoded, cfg.layout.code, corr, lay.tensor_of, res.converged)
            bn_recalibrated(model_, inputs.train, cfg.readback)  # as the store job's read-back (a no-op without BN)
            p.append(int(res.pulses.sum() + res.resets.sum() + cells.size))
            a.append(accuracy(model_, inputs.test.x, inputs.test.y))
        return float(np.mean(p)), float(np.mean(a))

    def sweep(lay: _Layout, pick: Callable, budget: float) -> dict[str, float]:
        choice = np.full(lay.targets.size, lay.tight)
        choice[lay.weights] = pick(lay.importance[lay.weights], lay.table[lay.weights], budget).choice
        plan = lay.table.plan(choice)
        p, a = trial(lay, plan.aim_us, plan.tolerance_us, plan.max_pulses, base)
        return {"budget": float(budget), "pulses": p, "accuracy": a}

    layouts = [("importance", by_importance, allocation.allocate), ("uniform", by_importance, allocation.uniform)]
    if float(replicas).is_integer() and replicas > 1:
        # everything uniform: every kept weight the same number of cells, every cell the same setting
        c = replace(cfg.layout, code=replace(cfg.layout.code, redundancy=int(replicas)), replicas_per_weight=1.0)
        lay = encode(compressed, names, prep.compressed.masks, prep.importance, noise, c, cfg.retention_s)
        layouts.append(("uniform_replicas", _Layout(lay, noise, cfg), allocation.uniform))
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in layouts} | {"naive": []}
    lo = table[w].minimum_pulses()
    hi = float(table[w].pulses.max(axis=1).sum())
    for k, budget in enumerate(np.geomspace(lo * 1.02, hi, points)):
        for name, lay, pick in layouts:
            results[name].append(sweep(lay, pick, budget))
        report("budgets", k + 1, points)
    # naive: a fixed-step loop (constant SET amplitude, no programming curve, aimed at the target), caps swept
    fixed = naive_config(base)
    for cap in (5, 10, 20, 40, 80):
        caps = np.full(prep.layout.targets.size, cap)
        p, a = trial(by_importance, prep.layout.targets, np.full(caps.size, 0.5), caps, replace(fixed, max_pulses=cap))
        results["naive"].append({"cap": cap, "pulses": p, "accuracy": a})

    def needed(rows: list[dict[str, float]]) -> int | None:
        ok = [r["pulses"] for r in rows if r["accuracy"] >= target]
        return int(min(ok)) if ok else None

    pi, pu, pn = needed(results["importance"]), needed(results["uniform"]), needed(results["naive"])
    pa = needed(results["uniform_replicas"]) if "uniform_replicas" in results else None
    # at equal pulses: importance's accuracy minus uniform's (uniform interpolated between its trials)
    uni = sorted((r["pulses"], r["accuracy"]) for r in results["uniform"])
    gains = [100 * (r["accuracy"] - np.interp(r["pulses"], *zip(*uni))) for r in results["importance"]
             if uni[0][0] <= r["pulses"] <= uni[-1][0]]
    return {
        "benchmark": "budgets", "model": model, "seed": seed, "cells": int(prep.layout.targets.size),
        "replicas_per_weight": replicas, "repeats": repeats,
        "accuracy_reference": inputs.accuracy_reference, "accuracy_target": target,
        "pulses_importance": pi, "pulses_uniform": pu, "pulses_naive": pn,
        "pulse_ratio": (pu / pi) if pi and pu else None,
        # uniform replication as well as uniform settings: no use of importance anywhere
        "pulses_uniform_replicas": pa,
        "pulse_ratio_all_uniform": (pa / pi) if pi and pa else None,
        "naive_ratio": (pn / pi) if pi and pn else None,
        # no allocation of the calibrated options spends less than this (every cell on its
        # cheapest option, reference cells tight), so pulse_ratio cannot exceed the bound
        "pulses_minimum": int(round(lo + table[ref].pulses[:, tight].sum())),
        "pulse_ratio_bound": (pu / (lo + table[ref].pulses[:, tight].sum())) if pu else None,
        "accuracy_gain_at_equal_pulses_pp_max": max(gains) if gains else None,
        "accuracy_gain_at_equal_pulses_pp_median": float(np.median(gains)) if gains else None,
        "trials": results,
        "targets": {"pulse_ratio_min": 2.0},
    }


class _Layout:
    """Cells of one encoding of the model with their option table (reference cells tight)."""

    def __init__(self, layout: Layout, noise: NoiseModel, cfg: StoreConfig) -> None:
        self.encoded, self.targets, self.tensor_of = layout.encoded, layout.targets, layout.tensor_of
        self.importance = layout.importance
        self.weights = ~layout.reference
        self.table = allocation.tables(noise, self.targets, allocation.options(noise, cfg.allocation.caps))
        self.tight = allocation.tightest(self.table.options)
