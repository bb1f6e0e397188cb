"""The study's report: ``docs/results.md`` and its Pareto plots, generated from the rows in a
study's run directory (never edited by hand).

Aggregation: a setting's stored accuracy pools every programming on every chip seed (mean,
95 % Student-t interval over programmings × chips); cells are the mean over chips (the
digital medium, and so the side information's cells, is measured per chip). Digital
options are the store jobs' own (``digital_options_tried``), merged across points by
(start, bits, sparsity), their cells averaged over the chips' media. The iso-accuracy
ratio compares on *validation* accuracy (the only accuracy the store job measures for every
digital option; the test set is used once, for the chosen one).
"""
from __future__ import annotations

import datetime
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pcm_hil_noisemodel import NoiseModel

from ..store_job.evaluation import interval95
from ..store_job.inputs import shipped
from .capacity import capacities
from .grid import StudyConfig, point_from_dict, retention_name

LEVERS = "levers.md"  # the hand-kept record of what each lever bought, beside the report; copied into it


@dataclass
class AnalogPoint:
    """One analog setting at one retention, pooled over chips."""

    setting: str
    replicas: float
    sparsity: float
    ablation: str | None
    accuracy_test_mean: float
    accuracy_test_ci95: list[float]
    accuracy_val_mean: float
    n_programmings: int
    chips: int
    total_cells: float
    analog_cells: float
    side_cells: float
    weights: int
    ratio_vs_best_digital: float | None       # mean over chips of the store job's own ratio
    best_digital_cells: float | None
    best_digital_test: float | None           # the test accuracy of that digital model, mean over chips
    accuracy_stored: float                    # the stored programming (compensated), mean over chips
    accuracy_uncompensated: float             # the same reads without drift compensation
    bits_per_cell_stored: float | None        # the matched digital model's bits / total cells
    medium_bits_per_cell: float               # data bits per cell of the measured digital medium
    pulses: float
    seconds: float
    declined: str | None = None               # why the store job did not apply what the setting asked (each chip)


@dataclass
class DigitalPoint:
    start: str
    bits: int             # the widest tensor's bits (all of them, without per-layer precision)
    sparsity: float
    training: str         # post-training or quantization-aware
    per_layer: bool       # per-layer precision (bits is the widest layer's)
    cells: float
    accuracy_val: float
    accuracy_test: float  # NaN: not measured (the store job measures test only for the option it chose)
    pareto: bool = False


def _f(x: Any) -> float:
    return float("nan") if x is None else float(x)


def analog_points(rows: list[dict[str, Any]]) -> list[AnalogPoint]:
    """Rows of one (model, retention) pooled per setting, in the order they appear."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["point"]["setting"]["name"], []).append(r)
    out = []
    for name, rs in groups.items():
        recs = [r["record"] for r in rs]
        acc = [a for rec in recs for a in rec["accuracy_stored_programmings"]]
        s = rs[0]["point"]["setting"]
        ratios = [rec["memory_reduction"]["best_digital"] for rec in recs if rec["memory_reduction"]["best_digital"]]
        best = [rec["best_digital"]["cells"] for rec in recs if rec.get("best_digital")]
        stored_bits = [rec["best_digital"]["bits_total"] / rec["total_cells"] for rec in recs if rec.get("best_digital")]
        out.append(AnalogPoint(
            name, s["replicas_per_weight"] if s["redundancy"] == 1 else float(s["redundancy"]), s["sparsity"],
            s["ablation"], float(np.mean(acc)), interval95(acc),
            float(np.mean([rec["accuracy_stored_val_mean"] for rec in recs])), len(acc), len(recs),
            float(np.mean([rec["total_cells"] for rec in recs])), float(np.mean([rec["analog_cells"] for rec in recs])),
            float(np.mean([rec["digital_cells"] for rec in recs])), int(recs[0]["weights"]),
            float(np.mean(ratios)) if ratios else None, float(np.mean(best)) if best else None,
            float(np.mean([rec["best_digital"]["accuracy_test"] for rec in recs])) if best else None,
            float(np.mean([rec["accuracy_stored"] for rec in recs])),
            float(np.mean([rec["accuracy_stored_uncompensated"] for rec in recs])),
            float(np.mean(stored_bits)) if stored_bits else None,
            float(np.mean([1.0 / rec["digital_medium"]["cells_per_bit"] for rec in recs])),
            float(np.mean([rec["pulses"] for rec in recs])), float(np.mean([r["seconds"] for r in rs])),
            _declined(s, recs)))
    return out


def _declined(setting: dict[str, Any], recs: list[dict[str, Any]]) -> str | None:
    """Why the store job kept the coded mask on every chip where the setting asked for the mask in the
    cells (it places the mask in the cells only where that takes fewer cells); None if it applied it."""
    whys = [rec.get("mask_in_cells", {}).get("why") for rec in recs]
    if setting.get("mask_in_cells") and all(whys):
        return "; ".join(dict.fromkeys(whys))
    return None


def digital_points(rows: list[dict[str, Any]]) -> list[DigitalPoint]:
    """Every digital option the store jobs tried, merged across points (the same option on
    another chip or retention time: the same network, its cells on that point's medium); the
    Pareto front (fewest cells for a validation accuracy) marked. Options differ by start,
    sparsity, training and bits (per tensor, with per-layer precision): a quantization-aware
    option is not averaged with the post-training one of the same width."""
    merged: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        for o in r["record"].get("digital_options_tried", []):
            layers = tuple(sorted((o.get("layer_bits") or {}).items()))
            merged.setdefault((o["start"], int(o["bits"]), float(o["sparsity"]), o["training"], layers), []).append(o)
    out = []
    for (start, bits, sparsity, training, layers), os_ in merged.items():
        tests = [_f(o["accuracy_test"]) for o in os_ if not math.isnan(_f(o["accuracy_test"]))]
        out.append(DigitalPoint(start, bits, sparsity, training, bool(layers),
                                float(np.mean([o["cells"] for o in os_])),
                                float(np.mean([o["accuracy_val"] for o in os_])),
                                float(np.mean(tests)) if tests else float("nan")))
    out.sort(key=lambda d: (d.cells, -d.accuracy_val))
    best = -1.0
    for d in out:
        if d.accuracy_val > best:
            d.pareto, best = True, d.accuracy_val
    return out


def digital_cells_at(front: list[DigitalPoint], accuracy_val: float) -> tuple[float | None, str]:
    """Cells the digital Pareto front needs for ``accuracy_val``, linearly interpolated in
    accuracy between the two front points around it; (None, why) above the front."""
    pts = sorted((d for d in front if d.pareto), key=lambda d: d.accuracy_val)
    if not pts:
        return None, "no digital option"
    if accuracy_val > pts[-1].accuracy_val:
        return None, f"no digital option reaches it (best {100 * pts[-1].accuracy_val:.2f} %)"
    if accuracy_val <= pts[0].accuracy_val:
        return pts[0].cells, "the cheapest digital option already exceeds it"
    acc = np.array([d.accuracy_val for d in pts])
    cells = np.array([d.cells for d in pts])
    return float(np.interp(accuracy_val, acc, cells)), "interpolated"


def validation_optimism(rows: list[dict[str, Any]]) -> list[float]:
    """Per point with a chosen digital model: how much more that model's validation accuracy overstates its
    test accuracy than the analog store's does, (val − test) of the digital model − (val − test) of the analog
    mean (fraction). Positive: the front, the best of many options scored on one validation split, reads
    better than its options are."""
    out = []
    for r in rows:
        rec, chosen = r["record"], r["record"].get("best_digital")
        if chosen and chosen.get("accuracy_test") is not None:
            analog = rec["accuracy_stored_val_mean"] - float(np.mean(rec["accuracy_stored_programmings"]))
            out.append(chosen["accuracy_val"] - chosen["accuracy_test"] - analog)
    return out


def _pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f} %"


def _ci(ci: list[float]) -> str:
    return f"{100 * ci[0]:.2f}–{100 * ci[1]:.2f}"


def _cells(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def _ratio(x: float | None, setting: str = "") -> str:
    if x is None:
        return "—"
    verdict = "analog wins" if x > 1 else "analog loses" if x < 1 else "tie"
    return f"**{x:.2f}×** ({setting + ': ' if setting else ''}{verdict})"


def _summary_row(model: str, retention_s: float, curve: list[AnalogPoint], iso: list[dict[str, Any]],
                 searched: bool, reference: float) -> str:
    """One line of the summary: the best and worst ratio over ``iso`` and the best stored accuracy of ``curve``
    (``searched``: whether the digital competitor was searched at all)."""
    rated = sorted((i for i in iso if i["ratio"] is not None), key=lambda i: i["ratio"])

    def ratio(i: dict[str, Any] | None) -> str:
        if i is None:
            return "— (no digital option reaches it)" if searched else "— (digital search off)"
        return _ratio(i["ratio"], i["setting"])

    corrected = [i for i in iso if i["ratio_corrected"] is not None]
    best_corrected = max(corrected, key=lambda i: i["ratio_corrected"]) if corrected else None
    beyond = len(iso) - len(corrected)  # accuracy levels no option reaches once the front is lowered
    top = max(curve, key=lambda a: a.accuracy_test_mean)
    return (f"| {model} | {retention_name(retention_s)} | {len(curve)} | {ratio(rated[-1] if rated else None)} | "
            f"{ratio(rated[0] if rated else None)} | "
            f"{_ratio(best_corrected['ratio_corrected'], best_corrected['setting']) if best_corrected else '—'}"
            f"{f'; {beyond} of {len(iso)} levels beyond the lowered front' if beyond and searched else ''} | "
            f"{_pct(top.accuracy_test_mean)} ({top.setting}) | {_pct(reference)} |")


def _plot(model: str, per_ret: dict[float, tuple[list[AnalogPoint], list[DigitalPoint]]], path: Path,
          shift: float = 0.0) -> None:
    """Cells against accuracy per retention time; ``shift`` (fraction): the front's validation optimism, drawn
    as the front lowered by it. The accuracy axis spans the analog curve (3 pp below it): options below it
    are off the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(per_ret), figsize=(5.2 * len(per_ret), 4.2), squeeze=False)
    for ax, (ret, (ana, dig)) in zip(axes[0], sorted(per_ret.items())):
        curve = sorted((a for a in ana if a.ablation is None), key=lambda a: a.total_cells)
        if dig:
            ax.scatter([d.cells for d in dig], [100 * d.accuracy_val for d in dig], s=10, color="0.7",
                       label="digital options (validation)")
            front = sorted((d for d in dig if d.pareto), key=lambda d: d.cells)
            ax.step([d.cells for d in front], [100 * d.accuracy_val for d in front], where="post", color="C1",
                    label="digital Pareto front (validation)")
            if shift:
                ax.step([d.cells for d in front], [100 * (d.accuracy_val - shift) for d in front], where="post",
                        color="C1", ls=":", label=f"the front lowered {100 * shift:+.2f} pp (its optimism)")
            measured = [d for d in dig if not math.isnan(d.accuracy_test)]
            ax.scatter([d.cells for d in measured], [100 * d.accuracy_test for d in measured], marker="x",
                       color="C3", label="digital chosen (test)")
        if curve:
            x = [a.total_cells for a in curve]
            y = [100 * a.accuracy_test_mean for a in curve]
            err = [[100 * (a.accuracy_test_mean - a.accuracy_test_ci95[0]) for a in curve],
                   [100 * (a.accuracy_test_ci95[1] - a.accuracy_test_mean) for a in curve]]
            ax.errorbar(x, y, yerr=err, fmt="o-", color="C0", capsize=3, label="analog, test mean (95 % CI)")
            ax.plot(x, [100 * a.accuracy_val_mean for a in curve], "s--", color="C0", mfc="none",
                    label="analog, validation mean")
            for a in curve:
                ax.annotate(a.setting, (a.total_cells, 100 * a.accuracy_test_mean), fontsize=7,
                            xytext=(3, -9), textcoords="offset points")
            top = max([a.accuracy_val_mean for a in curve] + [d.accuracy_val for d in dig])
            ax.set_ylim(100 * min(a.accuracy_test_ci95[0] for a in curve) - 3, 100 * top + 0.5)
        ax.set_xscale("log")
        ax.set_xlabel("total cells (analog + side information on the measured medium)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{model}, {retention_name(ret)}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chip_noise_models(run_dir: Path) -> dict[str, NoiseModel]:
    """The noise model of every chip the study calibrated (``chips/<chip>/noise.json``)."""
    return {f.parent.name: NoiseModel.load(f) for f in sorted((run_dir / "chips").glob("*/noise.json"))}


def capacity_table(noise: dict[str, NoiseModel], retentions: list[float]) -> list[dict[str, Any]]:
    """Per retention: the best capacity over calibrated tolerances, per chip and averaged."""
    out = []
    for ret in retentions:
        per_chip = {}
        for chip, model in noise.items():
            caps = capacities(model, ret)
            best = max(caps, key=lambda c: c.bits)
            per_chip[chip] = {"best": asdict(best), "all": [asdict(c) for c in caps]}
        if per_chip:
            out.append({"retention_s": ret, "chips": per_chip,
                        "bits_mean": float(np.mean([c["best"]["bits"] for c in per_chip.values()]))})
    return out


def not_yet_run(rows: list[dict[str, Any]], cfg: StudyConfig) -> dict[tuple[str, float], int]:
    """(model, retention s) → points of ``cfg`` without a row, in grid order."""
    have = {point_from_dict(r["point"]).key() for r in rows}
    return dict(Counter((p.model, p.retention_s) for p in cfg.points() if p.key() not in have))


def build(rows: list[dict[str, Any]], cfg: StudyConfig, run_dir: str | Path, out: str | Path,
          command: str, not_run: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """Write ``out`` (markdown) and ``<out without .md>/<model>.png``; return the figures as a dict."""
    out, run_dir = Path(out), Path(run_dir)
    plot_dir = out.with_suffix("")
    models = [m for m in cfg.models if any(r["point"]["model"] == m for r in rows)]
    retentions = sorted({float(r["point"]["retention_s"]) for r in rows})
    noise = chip_noise_models(run_dir)
    caps = capacity_table(noise, retentions)
    cap_of = {c["retention_s"]: c["bits_mean"] for c in caps}
    figures: dict[str, Any] = {"models": {}, "validation_optimism": {}, "capacity": caps, "points": len(rows)}
    L: list[str] = []
    w = L.append
    w("# Results: analog storage against the strongest digital storage on the same chip\n")
    w(f"<!-- generated by `{command}` from the run directory; do not edit by hand -->\n")
    if cfg.quick:
        w("> **QUICK SAMPLE, not the study.** Produced by `pcm-hil study --quick`: "
          f"{', '.join(cfg.models)} only, {', '.join(retention_name(r) for r in cfg.retentions_s)}, "
          f"{len(cfg.chip_seeds)} chip seeds, {cfg.programmings} programmings per point, a "
          f"{cfg.medium_cells}-cell medium test per density. It shows what the report holds; its figures are "
          "too small a sample to decide anything. The study itself: `pcm-hil study` (see the end).\n")
    w(f"Generated {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by `{command}`: {len(rows)} store jobs "
      f"(points) on the emulated chip, profile `{cfg.profile}`, chip seeds {list(cfg.chip_seeds)}, job seed "
      f"{cfg.seed}. Every point is one store job on a fresh copy of its chip, in its own run store under the "
      "study's run directory; plots beside this file in "
      f"`{plot_dir.name}/`.\n")
    w("**How to read it.** *Cells* are everything the decoder reads: analog cells (replicas, reference cells "
      "and, with the mask in the cells, one RESET-only cell per pruned weight) plus the side information (the "
      "coded mask or the kept counts per channel, signs, replica map, verify flags, scales, digital "
      "parameters) on the digital medium measured on the same chip. *Stored accuracy* pools every programming on every chip: mean "
      "and 95 % Student-t interval over programmings × chips (test set). *Ratio* = digital cells / analog "
      "cells at the same accuracy: above 1 analog storage needs fewer cells (wins), below 1 it loses. Digital "
      "options are chosen and compared on the validation split (held out of the training data); the store job "
      "measures the test accuracy only of the option it chose at each point (— elsewhere). The front is the best "
      "of many options scored on one validation split, so it is optimistic (the best of many noisy estimates); "
      "the analog tables show, beside each point's chosen digital model, its test accuracy, and each model's "
      "section measures the optimism and gives the ratios with the front lowered by it.\n")
    missing = not_yet_run(rows, cfg)
    if missing:
        w(f"> **Incomplete: {sum(missing.values())} of {len(cfg.points())} points not yet run** ("
          + "; ".join(f"{m} after {retention_name(r)}: {n}" for (m, r), n in missing.items())
          + "). Their curves and ratios below are missing or partial; the same command runs them.\n")
    figures["points_missing"] = sum(missing.values())
    at_summary = len(L)  # the summary goes here once every model is measured
    summary: list[str] = []
    for m in models:
        mrows = [r for r in rows if r["point"]["model"] == m]
        w(f"\n## {m}\n")
        rec0 = mrows[0]["record"]
        mfig: dict[str, Any] = {}
        trained_on = shipped(m).get("trained_on")
        w(f"Reference accuracy {_pct(rec0['accuracy_reference'])} (test)"
          f"{f', trained on {trained_on}' if trained_on else ''}; {rec0['weights']:,} weights stored in cells.\n")
        w(f"![{m}: cells versus accuracy]({plot_dir.name}/{m}.png)\n")
        optimism = validation_optimism(mrows)
        shift = float(np.mean(optimism)) if optimism else 0.0
        if optimism:
            w(f"Validation optimism of the digital front: the chosen digital models' validation accuracy overstates "
              f"their test accuracy by **{100 * shift:+.2f} pp** on average more than the analog store's does "
              f"({100 * min(optimism):+.2f} to {100 * max(optimism):+.2f} over {len(optimism)} points; no interval: "
              "points share chosen options and chips). The iso-accuracy tables show beside each ratio the ratio "
              "with the front lowered by that mean (a sensitivity check, not the headline).\n")
        figures["validation_optimism"][m] = {"mean": shift, "per_point": optimism}
        per_ret = {}
        for ret in retentions:
            rrows = [r for r in mrows if float(r["point"]["retention_s"]) == ret]
            if not rrows:
                continue
            ana, dig = analog_points(rrows), digital_points(rrows)
            per_ret[ret] = (ana, dig)
            curve = [a for a in ana if a.ablation is None]
            w(f"\n### {m}, read after {retention_name(ret)}\n")
            w("Analog settings (every strategy on):\n")
            w("| setting | replicas/kept weight | sparsity | stored accuracy, test: mean (95 % CI) | programmings × "
              "chips | validation mean | total cells (analog + side) | cells/weight | strongest digital at that "
              "validation accuracy: cells (its test accuracy) | ratio |")
            w("|---|---|---|---|---|---|---|---|---|---|")
            for a in curve:
                w(f"| {a.setting} | {a.replicas:g} | {a.sparsity:.0%} | {_pct(a.accuracy_test_mean)} "
                  f"({_ci(a.accuracy_test_ci95)}) | {a.n_programmings} = {a.n_programmings // a.chips} × {a.chips} | "
                  f"{_pct(a.accuracy_val_mean)} | {_cells(a.total_cells)} ({_cells(a.analog_cells)} + "
                  f"{_cells(a.side_cells)}) | {a.total_cells / a.weights:.2f} | {_cells(a.best_digital_cells)} "
                  f"({_pct(a.best_digital_test)}) | "
                  f"{_ratio(a.ratio_vs_best_digital)} |")
            hidden = sum(d.per_layer and not d.pareto for d in dig)
            w("\nDigital options tried (◆ = on the Pareto front of cells against validation accuracy; every option "
              f"of one width, and the per-layer ones on the front: {hidden} more per-layer options, steps of the "
              "per-layer search off the front, are not listed):\n")
            if dig:
                w("| start | training | bits | sparsity | cells | validation | test |")
                w("|---|---|---|---|---|---|---|")
                for d in (d for d in dig if d.pareto or not d.per_layer):
                    bits = f"≤ {d.bits} per layer" if d.per_layer else str(d.bits)
                    w(f"| {'◆ ' if d.pareto else ''}{d.start} | {d.training} | {bits} | {d.sparsity:.0%} | "
                      f"{_cells(d.cells)} | {_pct(d.accuracy_val)} | {_pct(d.accuracy_test)} |")
            else:
                w("_None: the digital search was off for these points._")
            w("\nIso-accuracy ratio at the accuracy of each analog setting (validation mean; digital cells "
              "**interpolated linearly in accuracy along the digital Pareto front**):\n")
            w(f"| accuracy level (analog setting) | analog cells | digital cells | ratio | note | ratio, front "
              f"lowered {100 * shift:+.2f} pp |")
            w("|---|---|---|---|---|---|")
            iso = []
            for a in sorted(curve, key=lambda a: a.accuracy_val_mean):
                dc, why = digital_cells_at(dig, a.accuracy_val_mean)
                ratio = None if dc is None else dc / a.total_cells
                dc_corrected, _ = digital_cells_at(dig, a.accuracy_val_mean + shift)
                ratio_corrected = None if dc_corrected is None else dc_corrected / a.total_cells
                iso.append({"setting": a.setting, "accuracy_val": a.accuracy_val_mean, "analog_cells": a.total_cells,
                            "digital_cells": dc, "ratio": ratio, "note": why, "ratio_corrected": ratio_corrected})
                w(f"| {_pct(a.accuracy_val_mean)} ({a.setting}) | {_cells(a.total_cells)} | {_cells(dc)} | "
                  f"{_ratio(ratio)} | {why} | {_ratio(ratio_corrected)} |")
            wins = [i for i in iso if i["ratio"] is not None and i["ratio"] > 1]
            loses = [i for i in iso if i["ratio"] is not None and i["ratio"] < 1]
            unreached = [i for i in iso if i["ratio"] is None]
            if not dig:
                w(f"\n**Verdict ({m}, {retention_name(ret)}):** no comparison: the digital search was off.\n")
            else:
                w(f"\n**Verdict ({m}, {retention_name(ret)}):** analog storage needs fewer cells at {len(wins)} of "
                  f"{len(iso)} accuracy levels and **more cells at {len(loses)}**"
                  + (f"; at {len(unreached)} no digital option tried reaches the analog accuracy" if unreached else "")
                  + (f". Best ratio {max(i['ratio'] for i in iso if i['ratio'] is not None):.2f}×, worst "
                     f"{min(i['ratio'] for i in iso if i['ratio'] is not None):.2f}×." if len(iso) > len(unreached)
                     else ".") + "\n")
            cap = cap_of.get(ret)
            w("Bits per cell: the analog store carries *bits of the equally accurate digital model (the store "
              "job's chosen competitor) / analog total cells*; the digital medium carries its data bits per "
              f"cell after the code. Channel capacity after {retention_name(ret)}: "
              f"{'—' if cap is None else f'{cap:.2f}'} bits/cell (see Capacity).\n")
            w("| setting | analog: bits per cell stored | digital medium: data bits per cell | capacity |")
            w("|---|---|---|---|")
            for a in curve:
                w(f"| {a.setting} | {'—' if a.bits_per_cell_stored is None else f'{a.bits_per_cell_stored:.2f}'} | "
                  f"{a.medium_bits_per_cell:.2f} | {'—' if cap is None else f'{cap:.2f}'} |")
            summary.append(_summary_row(m, ret, curve, iso, bool(dig), rec0["accuracy_reference"]))
            mfig[retention_name(ret)] = {"analog": [asdict(a) for a in ana], "digital": [asdict(d) for d in dig],
                                         "iso_accuracy": iso}
        abl = [a for ret in per_ret for a in per_ret[ret][0] if a.ablation is not None and ret == cfg.ablation_retention_s]
        if abl and cfg.ablation_retention_s in per_ret:
            base = next((a for a in per_ret[cfg.ablation_retention_s][0] if a.setting == cfg.ablation_base), None)
            w(f"\n### {m}: ablation, each strategy off in turn ({cfg.ablation_base}, "
              f"{retention_name(cfg.ablation_retention_s)})\n")
            w("| strategy switched off | stored accuracy, test: mean (95 % CI) | Δ vs all on | total cells | "
              "Δ cells | ratio vs strongest digital |")
            w("|---|---|---|---|---|---|")
            if base is not None:
                w(f"| none (all on: {base.setting}) | {_pct(base.accuracy_test_mean)} ({_ci(base.accuracy_test_ci95)})"
                  f" | — | {_cells(base.total_cells)} | — | {_ratio(base.ratio_vs_best_digital)} |")
            for a in abl:
                if a.declined:
                    w(f"| {a.ablation} | not applied: the store job declined it ({a.declined}) | | | | |")
                    continue
                d_acc = "—" if base is None else f"{100 * (a.accuracy_test_mean - base.accuracy_test_mean):+.2f} pp"
                d_cells = "—" if base is None else f"{a.total_cells - base.total_cells:+,.0f}"
                w(f"| {a.ablation} | {_pct(a.accuracy_test_mean)} ({_ci(a.accuracy_test_ci95)}) | {d_acc} | "
                  f"{_cells(a.total_cells)} | {d_cells} | {_ratio(a.ratio_vs_best_digital)} |")
            if base is not None:
                w(f"| drift compensation (→ reads decoded as they are; the stored programming only, mean over "
                  f"{base.chips} chips, no interval) | {_pct(base.accuracy_uncompensated)} | "
                  f"{100 * (base.accuracy_uncompensated - base.accuracy_stored):+.2f} pp vs the same programming "
                  f"compensated ({_pct(base.accuracy_stored)}) | {_cells(base.total_cells)} | 0 | — |")
            for nr in not_run or []:
                if nr["strategy"] != "drift compensation":
                    w(f"| {nr['strategy']} | not run | {nr['why']} | | | |")
            mfig["ablation"] = [asdict(a) for a in abl]
        _plot(m, per_ret, plot_dir / f"{m}.png", shift)
        figures["models"][m] = mfig
    L[at_summary:at_summary] = [
        "\n## Summary\n",
        "Per model and retention time: the analog settings of the curve, the best and worst iso-accuracy ratio "
        "(digital cells / analog cells at the analog setting's validation mean, the digital front interpolated) "
        "and the best stored test accuracy. Above 1 analog storage wins. *Best ratio, front lowered*: the same "
        "with the digital front lowered by its measured validation optimism (see each model), a sensitivity "
        "check.\n",
        "| model | read after | settings | best ratio | worst ratio | best ratio, front lowered | best stored "
        "accuracy, test (setting) | reference, test |", "|---|---|---|---|---|---|---|---|", *summary]
    levers = out.parent / LEVERS
    if levers.exists():
        w("\n## What each lever bought\n")
        w(f"The hand-kept record from [`{LEVERS}`]({LEVERS}), copied here as it stands (measured session by "
          "session, not by this command; the ablations above measure the kept strategies again).\n")
        w(levers.read_text(encoding="utf-8").strip() + "\n")
    w("\n## Capacity of the calibrated channel\n")
    w("Method: input = the programmed level x on 64 levels spanning the calibrated range; read after the "
      "retention time y ~ N(x, E[e²](x)), E[e²] from the chip's noise model at one program-and-verify setting "
      "(tolerance, largest calibrated cap): programming error and offset, unverified cells, drift spread and "
      "1/f growth, the global drift compensated (`NoiseModel.sq_error_after`), **a Gaussian approximation per "
      "level** (it treats the heavy tail of unverified cells as Gaussian). y quantized in 800 bins; capacity = "
      "max over p(x) of I(X;Y) by Blahut–Arimoto, the best over the calibrated tolerances; I(X;Y) at uniform "
      "p(x) beside it. One cell, one read (8 reads averaged, as calibrated), no replicas.\n")
    w("| retention | chip | best tolerance (µS) | capacity (bits/cell) | uniform input | median σ (µS) |")
    w("|---|---|---|---|---|---|")
    for c in caps:
        for chip, v in c["chips"].items():
            b = v["best"]
            w(f"| {retention_name(c['retention_s'])} | {chip} | ±{b['tolerance_us']:g} | {b['bits']:.2f} | "
              f"{b['bits_uniform']:.2f} | {b['sigma_us_median']:.2f} |")
    w("\n## Settings\n")
    w(f"Study: `{json.dumps(cfg.as_dict(), default=str)}`\n")
    w("Each point's store settings are `StoreConfig.from_options(model, retention_s, programmings, medium_cells, "
      "digital_baseline, seed, **setting)`; everything else at the store job's defaults. The first point's full "
      "config, as its run recorded it:\n")
    first = point_from_dict(rows[0]["point"]) if rows else None
    if first is not None:
        w("<details><summary>StoreConfig</summary>\n\n```json\n"
          + json.dumps(asdict(first.store_config()), indent=1, default=str) + "\n```\n</details>\n")
    w("Chips: each point programs a fresh copy of its emulated chip (profile, seed, geometry); the noise model "
      "of each chip is calibrated once, on the last cells of its own copy, and used by every point on that chip. "
      "The model is compressed once per (model, sparsity) and the digital baselines' pruned starts once per "
      "(model, sparsity), cached by the SHA-256 of weights, data and settings.\n")
    for m in (m for m in cfg.models if m in cfg.reduced and not cfg.quick):
        settings, rets = cfg.curve_of(m)
        w(f"Reduced grid: {m} runs {', '.join(s.name for s in settings)} after "
          f"{', '.join(retention_name(r) for r in rets)} only, without ablations (too slow for the whole grid on "
          "2 cores: its fine-tunes alone take about 1 h on 2 workers).\n")
    if not_run:
        w("Not run (no switch in the store job): " + "; ".join(f"{n['strategy']} ({n['why']})" for n in not_run)
          + ".\n")
    w("\n## Reproduce\n")
    w("```bash\npcm-hil study --run-dir runs/study --out docs/results.md            # the full study (hours)\n"
      "pcm-hil study --quick --run-dir runs/study-quick --out docs/results.md  # this sample's size (minutes)\n"
      "pcm-hil study --address ray://HEAD:10001 ...                        # the same on a Ray cluster\n"
      "pcm-hil study --report-only --run-dir runs/study                   # this report from the finished points\n```\n"
      "A second run reuses every finished point of the run directory and only rebuilds this file.\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(L) + "\n", encoding="utf-8")
    figures["out"] = str(out)
    figures["plots"] = [str(plot_dir / f"{m}.png") for m in models]
    return figures
