"""Results as text for the terminal: one function per command, from the result record
alone (``--json`` prints the record itself)."""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from .. import __version__
from ..table import format_table


def as_json(result: dict[str, Any]) -> str:
    return json.dumps(result, default=_json_default)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def demo(r: dict[str, Any], seed: int) -> str:
    s, per_level = r["summary"], r["per_level"]
    return "\n".join([
        f"pcm-hil {__version__}: programmed {r['cells']} cells to {r['levels']} levels on {r['backend']}"
        f" (tolerance ±{r['verify']['tolerance_us']} µS, seed {seed})",
        f"levels up to {per_level[-1]['target_us']:.3g} µS = 0.8 × measured saturation {r['g_sat_us']:.3g} µS "
        f"(loop settings and range from {r['settings_from']})",
        *([f"screened {sc['cells']} cells: {sc['stuck']} stuck, left out"] if (sc := r.get("screen")) else []),
        f"yield {s['yield']:.1%}, {s['pulses_total']} SET pulses (mean {s['pulses_mean']:.2f}, p95 "
        f"{s['pulses_p95']:.0f}), {s['resets_total']} RESET restarts, {s['seconds']:.2f} s",
        "",
        format_table(list(per_level[0].keys()), [list(row.values()) for row in per_level],
                     title="per level (converged cells, reads averaged ×%d)" % r["verify"]["n_avg"]),
    ])


def benchmark(what: str, r: dict[str, Any]) -> str:
    if what == "emulator":
        return format_table(["figure", "value"], [
            ["cell-iterations/s (SET+read, ascending batch)", r["cell_iterations_per_s"]],
            ["cell-iterations/s (shuffled batch)", r["cell_iterations_per_s_shuffled"]],
            ["bytes per cell", r["bytes_per_cell"]],
            ["one normal draw per cell (s)", r["normal_draw_seconds"]],
            ["iteration / normal draw", r["iteration_over_normal_ratio"]],
        ], title=f"emulator benchmark, {r['cells']} cells, median of {r['repeats']}")
    if what == "wire":
        return format_table(["figure", "value"], [
            ["cell ops/s, batched blocks", r["cell_ops_per_s_block"]],
            ["cell ops/s, one cell per transaction", r["cell_ops_per_s_single"]],
            ["ratio", r["ratio"]],
        ], title=f"wire benchmark over loopback, median of {r['repeats']}")
    if what == "devices":
        stored = "store" in r["devices"][0] if r["devices"] else False
        rows = [[d["device"], d["g_sat_us"], d["top_level_us"], d.get("screen", {}).get("flagged"), d["yield"],
                 d["yield_healthy"], d.get("yield_reachable"), d["yield_worst_level"],
                 d["pulses_mean"], d["sigma_rel_error_max"], d["pulses_rel_error"], d["drift_nu_rel_error"],
                 *([d["store"]["loss_pp"]] if stored else []), "yes" if r["meets"][d["device"]] else "no"]
                for d in r["devices"]]
        return format_table(["device", "g_sat µS", "top µS", "screened out", "yield", "healthy", "reachable",
                             "worst level", "pulses",
                             "σ err", "pulse err", "ν err", *(["LeNet-5 loss pp"] if stored else []), "targets"], rows,
                            title=f"devices: calibrate ({r['sizes']['calibration']} cells), validate "
                                  f"({r['sizes']['validation']}), demo ({r['sizes']['demo']}, levels to 0.8 × "
                                  f"measured saturation){', LeNet-5 store' if stored else ''}; targets yield ≥ 99 %, "
                                  f"errors ≤ 10 %{', store loss ≤ 1 pp' if stored else ''}")
    if what == "faults":
        links = [[f"{figure} ({link})", n] for figure in ("faults_injected", "driver_errors_logged", "measurements_lost",
                                                          "cells_diverged")
                 for link, n in r.get(f"{figure}_by_link", {}).items()]
        return format_table(["figure", "value"], links + [[k, r[k]] for k in (
            "transactions", "faults_injected", "faults_detected", "pulse_batches_uncertain", "crashes",
            "runs_resumed", "measurements_lost", "cells_diverged", "cells_made_stuck", "reads_offset", "reads_disputed",
            "reads_disputed_uninterrupted", "cells_beyond_tolerance", "cells_beyond_tolerance_uninterrupted", "yield",
            "yield_uninterrupted", "yield_excluding_stuck", "seconds") if k in r], title=f"fault soak on the virtual bench, rate {r['fault_rate']}")
    return budgets(r)


def budgets(r: dict[str, Any]) -> str:
    b = r["best_uniform"]
    uniform = ("best all-uniform" + (f" ({b['replicas']} replica{'s' if b['replicas'] > 1 else ''}, ±{b['tolerance_us']:g} µS, "
                                     f"cap {b['cap']})" if b else ""))
    def whole(v: float | None) -> int | None:
        return None if v is None else int(round(v))

    rows = [[label, whole(r[f"pulses_{k}"]), whole(r[f"reads_{k}"]), r[f"cells_{k}"], r[f"accuracy_val_{k}"],
             r.get(f"accuracy_test_{k}", "")]
            for label, k in ((f"importance ({r['importance']['replicas']:g} replicas per weight by channel)"
                              if r.get("importance") else "importance", "importance"),
                             (uniform, "best_uniform"),
                             ("one option on the importance layout", "fixed_layout"), ("naive fixed-step loop", "naive"))]
    text = format_table(["setup (fewest pulses reaching the target)", "pulses", "verify reads", "cells", "val acc",
                         "test acc"], rows,
                        title=f"budgets, {r['model']} ({r['sparsity']:.0%} pruned), "
                              f"target {r['accuracy_target_val']:.2%} on validation "
                              f"(reference {r['accuracy_reference_val']:.2%} − {r['margin_pp']:g} pp), "
                              f"mean of {r['repeats']} programmings")
    ratios = [["best uniform / importance, pulses", r["pulse_ratio_vs_best_uniform"]],
              ["best uniform / importance, verify reads", r["read_ratio_vs_best_uniform"]],
              ["best uniform / importance, cells", r["cell_ratio_vs_best_uniform"]],
              ["bound: best uniform / cheapest plan", r["pulse_ratio_vs_best_uniform_bound"]],
              ["one option, importance layout / importance", r["pulse_ratio_fixed_layout"]],
              ["naive / importance", r["naive_ratio"]]]
    text += "\n\n" + format_table(["ratio", "value"], ratios)
    if r.get("by_target"):
        def setup(b: dict[str, Any] | None) -> str:
            return f"{b['replicas']} × ±{b['tolerance_us']:g} µS cap {b['cap']}" if b else ""

        curve = [[f"{t['margin_pp']:g} pp", t["accuracy_target_val"], whole(t["pulses_importance"]),
                  whole(t["pulses_best_uniform"]), setup(t["best_uniform"]), t["pulse_ratio_vs_best_uniform"],
                  t["cell_ratio_vs_best_uniform"], whole(t["pulses_fixed_layout"])] for t in r["by_target"]]
        text += "\n\n" + format_table(
            ["band", "val target", "importance", "best uniform", "its setup", "pulse ratio", "cell ratio",
             "one option"], curve,
            title=f"wider bands (validation; compressed model before storage {r['accuracy_compressed_val']:.2%}, "
                  f"best stored mean {r['accuracy_stored_val_max']:.2%})")
    return text


def profile(rows: list[tuple], name: str) -> str:
    return format_table(["field", "value", "unit", "source"], [list(r) for r in rows], title=f"profile {name}")


def calibration(summary: dict[str, Any], noise: Any, cells: int) -> str:
    p, nu = noise.programming_, noise.drift_.nu_mean
    rows = []
    for ti, tol in enumerate(noise.tolerances_us_):
        for li, lv in enumerate(noise.levels_us_):
            rows.append([tol, lv, int(p.n[ti, li]), p.converged_cdf[ti, li, -1], p.sigma_us[ti, li],
                         p.offset_us[ti, li], float(noise.expected_pulses(lv, tol, noise.max_pulses_)),
                         nu[li] if li < len(nu) else float("nan")])
    rn, f, w = noise.read_noise_, noise.faults_, noise.window_
    report = summary.get("report")
    return "\n".join([
        f"calibration {summary['run_id']}: {cells} cells, noise model written to {summary['noise_model']}"
        + (f", report {report}" if report else ""),
        f"window: floor {w.g_floor_us:.3g} µS, saturation {w.g_sat_us:.3g} µS (device spread {w.g_sat_spread:.1%})",
        f"read noise per read: σ = {rn.a:.4f}·G + {rn.b_us:.3f} µS (±{rn.a_se:.4f}, ±{rn.b_us_se:.3f}); "
        f"averaging exponent {rn.averaging_exponent:.3f} ± {rn.averaging_exponent_se:.3f}",
        f"faults: at RESET {f.reset:.3%}, at SET {f.set:.3%}, random {f.random:.3%} of {f.cells} cells",
        "",
        format_table(["tol_us", "level_us", "cells", "yield", "sigma_us", "offset_us", "pulses", "nu"], rows,
                     title=f"programming (cap {noise.max_pulses_}, error {noise.t0_s_:g} s after P&V) and drift"),
    ])


def validation(r: dict[str, Any], noise_path: str, tolerance_us: float, max_pulses: int) -> str:
    rows = [[x["level_us"], x["cells"], x["sigma_us"], x["sigma_predicted_us"], x["pulses"], x["pulses_predicted"],
             x["nu_mean"], x["nu_predicted"], x["ks"]] for x in r["per_level"]]
    return "\n".join([
        f"validation of {noise_path} on {r['cells']} fresh cells (from {r['first_cell']}), "
        f"±{tolerance_us} µS, cap {max_pulses}",
        f"worst level: σ error {r['sigma_rel_error_max']:.1%}, pulses error {r['pulses_rel_error']:.1%}, "
        f"KS {r['ks_max']:.3f}; drift ν error {r['drift_nu_rel_error']:.1%}",
        "",
        format_table(["level_us", "cells", "sigma", "sigma_pred", "pulses", "pulses_pred", "nu", "nu_pred", "ks"], rows),
    ])


def _precision(option: dict[str, Any]) -> str:
    return option.get("precision") or f"{option['bits']} bits"  # runs recorded before mixed precision lack it


def _on_chips(r: dict[str, Any]) -> str:
    """' on 2 chips (seed=0, seed=1)' where the programmings were spread over sibling chips."""
    ids = r.get("chip_ids") or []
    return f" on {len(ids)} chips ({', '.join(i.split(':')[-2] for i in ids)})" if len(ids) > 1 else ""


def store(r: dict[str, Any]) -> str:
    mr, best, med = r["memory_reduction"], r["best_digital"], r["digital_medium"]
    lo, hi = r["accuracy_stored_ci95"]
    side = ", ".join(f"{k} {v:,.0f}" for k, v in r["side_cells"].items() if v)
    rows = [
        ["accuracy: reference (float)", f"{r['accuracy_reference']:.2%}"],
        ["accuracy: compressed, stored digitally", f"{r['accuracy_compressed']:.2%}"],
        [f"accuracy: stored, read after {r['retention_s']:g} s",
         f"{r['accuracy_stored_mean']:.2%} (95 % CI {lo:.2%} – {hi:.2%}, {r['programmings']} programmings"
         f"{_on_chips(r)})"],
        *([["  the same, keeping the stored BN statistics", f"{r['accuracy_stored_without_bn_recalibration']:.2%}"]]
          if "accuracy_stored_without_bn_recalibration" in r else []),
        ["weights / analog cells", f"{r['weights']:,} / {r['analog_cells']:,}"],
        *([["  of them the mask in the cells (pruned weights)",
            f"{m['cells']:,} (gap {m['gap_us']:.2f} µS, threshold {m['threshold_us']:.2f} µS; "
            f"{r.get('mask_decoding', {}).get('decoded_wrong', 0)} positions decoded wrong)"]]
          if (m := r.get("mask_in_cells") or {}).get("on") else []),
        ["side information (cells)", side],
        ["cells per weight (all costs)", f"{r['cells_per_weight']:.3f}"],
        ["pulses (SET + RESET), yield", f"{r['pulses']:,}, {r['yield']:.2%}"],
        ["digital medium on this chip", f"{med['bits_per_cell']} bit/cell, {med['code']} (raw BER {med['raw_ber']:.1e})"],
        ["reduction vs fp32 on SLC + SECDED", f"{mr['fp32_slc_ecc']:.1f}×"],
        ["reduction vs compressed fp32 on the medium", f"{mr['compressed_fp32_on_medium']:.1f}×"],
        ["reduction vs strongest digital on the medium",
         "n/a" if mr["best_digital"] is None else f"{mr['best_digital']:.2f}×"
         + (f" ({_precision(best)}, {best['start']}; {best['accuracy_test']:.2%} test)" if best else "")],
        ["seconds", f"{r['seconds']:.1f}"],
    ]
    text = format_table(["", ""], rows, title=f"stored {r['model']} as run {r['run_id']} ({r['code']['code']} code, "
                                              f"{r['allocation']} allocation)")
    lost = r["accuracy_reference"] - r["accuracy_compressed"]
    if lost > 0.02:
        text += (f"\nnote: compression alone cost {lost:.1%} (pruning {r['sparsity']:.0%} of the weights); "
                 "a smaller model may need a lower --sparsity")
    return text


def plan(r: dict[str, Any]) -> str:
    head = (f"plan for {r['model']}: at most {r['max_accuracy_drop_pp']:g} pp below the float reference "
            f"({r['reference_val']:.2%} validation, {r['reference_test']:.2%} test); {r['candidates']} candidates, "
            f"{len(r['candidates_tried'])} drawn, {r['planning_seconds']:.0f} s")
    if r["configuration"] is None:
        best = max((c for c in r["candidates_tried"] if c["val_accuracy_mean"] is not None),
                   key=lambda c: c["val_accuracy_mean"], default=None)
        seen = "" if best is None else (f" (the best drawn: {best['val_accuracy_mean']:.2%} on validation, "
                                        f"against {r['reference_val'] - r['max_accuracy_drop']:.2%} needed)")
        return head + f"\nno configuration of the search space meets the target{seen}: allow a larger drop, more " \
                      "replicas or a lower sparsity"
    c = r["configuration"]
    budget = "store default" if c["pulse_budget"] is None else f"{c['pulse_budget']:,}"
    lo, hi = r["predicted_accuracy_ci95"]
    rows = [["configuration", f"sparsity {c['sparsity']:g}, {c['code']} code, {c['replicas_per_weight']:g} replicas "
                              f"per {c['replicas_per']}, pulse budget {budget}"]]
    measured = r.get("stored")
    rows.append(["accuracy, validation (chooses)", f"{r['predicted_accuracy_val']:.2%} predicted (lower "
                                                    f"{r['confidence']:.0%} bound {r['predicted_accuracy_val_lower']:.2%})"
                 + (f"; {r['measured_accuracy_val_mean']:.2%} measured" if measured else "")])
    rows.append(["accuracy, test: predicted", f"{r['predicted_accuracy']:.2%} (95 % CI {lo:.2%} – {hi:.2%})"])
    if measured:
        mlo, mhi = r["measured_accuracy_ci95"]
        rows += [["accuracy, test: measured", f"{r['measured_accuracy_mean']:.2%} (95 % CI {mlo:.2%} – {mhi:.2%}, "
                                              f"{len(r['measured_accuracy_programmings'])} programmings, run "
                                              f"{r['run_id']})"],
                 ["prediction − measurement", f"{r['prediction_error_pp']:+.2f} pp"]]
    rows.append(["total cells", f"{r['total_cells']:,.0f} predicted ({r['cells_per_weight']:.3f} per weight)"
                 + (f"; {r['measured_total_cells']:,.0f} measured ({r['measured_cells_per_weight']:.3f})"
                    if measured else "")])
    if measured and r.get("memory_reduction_vs_best_digital") is not None:
        rows.append(["reduction vs strongest digital", f"{r['memory_reduction_vs_best_digital']:.2f}×"])
    return format_table(["", ""], rows, title=head)


def load(r: dict[str, Any]) -> str:
    at_store = r["accuracy_stored_at_store_time"]
    return format_table(["", ""], [["accuracy read back now", f"{r['accuracy_loaded']:.2%}"],
                                   ["accuracy at store time", "n/a" if at_store is None else f"{at_store:.2%}"],
                                   ["reference accuracy", "n/a" if r["accuracy_reference"] is None
                                    else f"{r['accuracy_reference']:.2%}"],
                                   ["cells read", r["cells"]]], title=f"loaded {r['model']} from run {r['run_id']}")


def runs(table: Any, cells: Any) -> str:
    """The runs, then each chip's cell map (who holds which cells; released claims say by whom)."""
    out = [format_table(list(table.columns), table.values.tolist()) if len(table) else "no runs"]
    for chip_id, m in cells.groupby("chip_id", sort=True):
        if "derived" not in m:
            m = m.assign(derived=None)
        rows = [[f"[{a}, {b})", r, k, s, ("held" if h else f"free (taken by {t})" if t else "free (run done)")
                 + (f"; recorded before cell owners, cells from its {d}" if isinstance(d, str) else "")]
                for a, b, r, k, s, h, t, d in m[["first", "stop", "run_id", "kind", "status", "held",
                                                  "released_by", "derived"]].itertuples(index=False)]
        out.append(format_table(["cells", "run", "kind", "status", "now"], rows, title=f"\ncells of {chip_id}"))
    return "\n".join(out)


def emulate(addresses: dict[str, str], title: str) -> str:
    return format_table(["instrument", "resource"], list(addresses.items()), title=title)


def study(r: dict[str, Any]) -> str:
    est = r["estimate"]
    if "report" not in r:
        return f"{est['points']} points, {est['points_left']} left; estimated {est['seconds'] / 3600:.2f} h ({est['basis']})"
    lines = [f"study: {r['points']} points ({r['computed']} run now, {r['reused']} reused, {len(r['failed'])} failed"
             f"{', ' + str(r['report']['points_missing']) + ' not yet run' if r['report']['points_missing'] else ''}), "
             f"{r['chips_calibrated']} chips calibrated, model cache {r['cache']['hits']} hits / "
             f"{r['cache']['misses']} misses, {r['seconds']:.0f} s; run directory {r['run_dir']}"]
    for model, per in r["report"]["models"].items():
        for ret, fig in per.items():
            if ret == "ablation":
                continue
            rows = [[a["setting"], 100 * a["accuracy_test_mean"],
                     f"{100 * a['accuracy_test_ci95'][0]:.2f}–{100 * a['accuracy_test_ci95'][1]:.2f}",
                     round(a["total_cells"]), "—" if a["ratio_vs_best_digital"] is None else a["ratio_vs_best_digital"]]
                    for a in fig["analog"]]
            lines += ["", format_table(["setting", "stored acc. %", "95 % CI", "total cells", "vs digital ×"], rows,
                                       title=f"{model}, {ret}")]
    lines += ["", f"report: {r['report']['out']} (plots: {', '.join(r['report']['plots'])})"]
    return "\n".join(lines)
