"""Every preset and N random devices, default options only: calibrate, validate, demo.

Per device: the calibration's learned loop settings, the held-out validation errors (σ,
pulses, ν; targets ≤ 10 %), and a demo on fresh cells with levels from 1 µS to 0.8 × the
measured saturation, stuck cells screened out and spares used as the demo does (yield;
target ≥ 99 %; pulses per cell; the screen's catch against the emulator's stuck cells).
Two more yields use emulator ground truth no chip offers (labelled as such): the healthy-cell yield leaves out the cells
the emulator made stuck; the reachable yield also leaves out the cells whose own saturation
lies below their level + the tolerance (the SET-state spread puts 1–3 % of the cells of a
wide window there: no loop can reach them).
With ``store``, a LeNet-5 store on every device (calibrating on the spot, default options,
the mean over its programmings) and its accuracy loss after a day (target ≤ 1 pp); the
digital-competitor search is left out (it scores the store and changes nothing stored).
"""
from __future__ import annotations

import math
import tempfile
import time
from typing import Any, Callable

import numpy as np

from ..app import noise_model_for
from ..calibrate import CalibrationConfig, learned_settings, run_calibration, validate
from ..chip import Geometry
from ..demo import DemoConfig
from ..emulator import EmulatedChip, preset_names, random_profile
from ..program import program_verify
from ..run_store import RunStore
from ..screening import screen

TARGETS = {"yield_min": 0.99, "held_out_rel_error_max": 0.10, "store_loss_pp_max": 1.0}
LEVELS, LEVEL_MIN_US, TOP_FRACTION, TOLERANCE_US = 8, 1.0, 0.8, 0.5  # the demo's defaults
FULL = {"calibration": CalibrationConfig.cells, "validation": 20_000, "demo": 20_000}
QUICK = {"calibration": 4_000, "validation": 3_000, "demo": 4_000}
COLS = 256
MAIN_JOB = {"sparsity": 0.75, "replicas": "auto", "chips": 2}  # pcm-hil store's defaults (the command line's)


def devices(n_random: int, seed: int = 0) -> list[tuple[str, Any]]:
    """(label, profile) of every preset and ``n_random`` random devices (seeds seed … seed + n − 1)."""
    out: list[tuple[str, Any]] = [(name, name) for name in preset_names()]
    out += [(f"random-{s}", random_profile(s)) for s in range(seed, seed + n_random)]
    return out


def one_device(label: str, profile: Any, sizes: dict[str, int], seed: int = 0,
               progress: Callable[[str, float, float], None] | None = None) -> dict[str, Any]:
    """Calibrate, validate and demo one device with default options; the figures."""
    report = progress or (lambda *a: None)
    c, v, d = sizes["calibration"], sizes["validation"], sizes["demo"]
    claimed = DemoConfig(cells=d).cells_claimed()  # the demo screens spares beside its cells
    total = c + v + claimed
    chip = EmulatedChip(Geometry(1, -(-total // COLS), COLS), profile=profile, seed=seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, RunStore(f"{tmp}/s.sqlite") as store:
        report(f"{label}: calibrate", 0, 3)
        _, model = run_calibration(chip, store, CalibrationConfig(cells=c, first_cell=0, seed=seed))
    report(f"{label}: validate", 1, 3)
    val = validate(chip, model, cells=np.arange(c, c + v), check_chip=False)
    report(f"{label}: demo", 2, 3)
    # the demo's protocol (pcm-hil demo with its defaults, no read-back): stuck cells screened
    # out and spares used, levels 1 µS … 0.8 × the measured saturation, ±0.5 µS, the loop
    # settings the calibration learned
    candidates = np.arange(c + v, c + v + claimed, dtype=np.int64)
    settings = learned_settings(chip, candidates, TOLERANCE_US, model)
    screened = screen(chip, candidates, settings.verify)
    cells = candidates[screened.usable][:d]
    levels = np.linspace(LEVEL_MIN_US, TOP_FRACTION * settings.g_sat_us, LEVELS)
    targets = levels[np.arange(cells.size) % LEVELS]
    res = program_verify(chip, cells, targets, settings.verify)
    truly_stuck = chip.stuck[candidates] != 0
    healthy = chip.stuck[cells] == 0  # emulator ground truth: the cells it made stuck ...
    reachable = healthy & (chip.g_sat[cells] >= targets + TOLERANCE_US)  # ... and those that saturate below
    per_level = [float(res.converged[targets == lv].mean()) for lv in levels]
    resp = model.response_
    return {
        "device": label, "seconds": time.perf_counter() - t0,
        "g_sat_us": model.window_.g_sat_us, "g_sat_spread": model.window_.g_sat_spread,
        "verify": {k: getattr(settings.verify, k) for k in ("set_threshold_v", "set_max_v", "max_pulses",
                                                            "step_sigma_us")},
        "learned": {k: getattr(resp, k) for k in ("reset_amplitude_v", "threshold_v", "threshold_p90_v",
                                                  "set_max_v", "step_ref_us", "step_saturation_us")},
        "sigma_rel_error_max": val["sigma_rel_error_max"], "pulses_rel_error": val["pulses_rel_error"],
        "pulses_rel_error_total": val["pulses_rel_error_total"], "drift_nu_rel_error": val["drift_nu_rel_error"],
        "yield": float(res.converged.mean()), "yield_healthy": float(res.converged[healthy].mean()),
        "yield_reachable": float(res.converged[reachable].mean()),
        "yield_worst_level": min(per_level), "yield_per_level": [round(y, 4) for y in per_level],
        "pulses_mean": float(res.pulses.mean()), "resets_mean": float(res.resets.mean()),
        "top_level_us": float(levels[-1]), "stuck_fraction": float(truly_stuck.mean()),
        "screen": {"flagged": float(1 - screened.usable.mean()), "programmed": int(cells.size),
                   "stuck_missed": float(np.mean(screened.usable[truly_stuck])) if truly_stuck.any() else 0.0,
                   "healthy_flagged": float(np.mean(~screened.usable[~truly_stuck]))},
    }


def run(n_devices: int = 20, quick: bool = False, seed: int = 0, store: bool = False,
        progress: Callable[[str, float, float], None] | None = None) -> dict[str, Any]:
    """Every preset and ``n_devices`` random devices; per-device rows and the worst figures."""
    sizes = QUICK if quick else FULL
    rows = []
    for label, prof in devices(n_devices, seed):
        rows.append(one_device(label, prof, sizes, seed=seed, progress=progress))
    if store:
        from ..store_job import model_cache
        with tempfile.TemporaryDirectory() as cache:
            model_cache.use(cache)  # one compression of LeNet-5 serves every device
            try:
                for (label, prof), row in zip(devices(n_devices, seed), rows):
                    row["store"] = store_loss(prof, seed=seed, progress=progress)
            finally:
                model_cache.use(None)
    out: dict[str, Any] = {"sizes": sizes, "targets": TARGETS, "devices": rows}
    keys = ("yield", "yield_healthy", "yield_reachable", "yield_worst_level", "sigma_rel_error_max",
            "pulses_rel_error", "drift_nu_rel_error")
    out["worst"] = {k: (min if k.startswith("yield") else max)(r[k] for r in rows if r[k] is not None
                                                                  and not math.isnan(r[k])) for k in keys}
    out["meets"] = {r["device"]: bool(r["yield"] >= TARGETS["yield_min"] and max(
        r["sigma_rel_error_max"], r["pulses_rel_error"], r["drift_nu_rel_error"]) <= TARGETS["held_out_rel_error_max"]
        and ("store" not in r or r["store"]["loss_pp"] <= TARGETS["store_loss_pp_max"])) for r in rows}
    if store:
        out["worst"]["store_loss_pp"] = max(r["store"]["loss_pp"] for r in rows)
    return out


def store_loss(profile: Any = "pcm-realistic", seed: int = 0, model: str = "lenet5-fmnist",
               progress: Callable[[str, float, float], None] | None = None,
               replicas: float | str = MAIN_JOB["replicas"]) -> dict[str, Any]:
    """A LeNet-5 store with the main job's options on ``profile`` (calibrating on the spot,
    no competitor search): its mean accuracy after a day against the reference."""
    from ..store_job import StoreConfig, run_store_job
    from ..store_job.inputs import load_inputs

    auto = replicas == "auto"
    cfg = StoreConfig.from_options(model=model, sparsity=MAIN_JOB["sparsity"],
                                   replicas_per_weight=1.5 if auto else replicas, replicas_auto=auto,
                                   chips=MAIN_JOB["chips"], digital_baseline=False, seed=seed)
    inputs = load_inputs(cfg.network)
    chip = EmulatedChip(profile=profile, seed=seed)
    with tempfile.TemporaryDirectory() as tmp, RunStore(f"{tmp}/s.sqlite") as rs:
        noise = noise_model_for(chip, rs, None, seed=seed, progress=progress)  # as a store without --noise-model
        rec = run_store_job(chip, noise, rs, cfg, progress=progress, inputs=inputs).record
    keys = ("accuracy_reference", "accuracy_compressed", "accuracy_stored_mean", "accuracy_stored_ci95", "programmings",
            "pulses", "yield", "total_cells", "replicas_per_weight", "replica_choice")
    return {**{k: rec[k] for k in keys},
            "loss_pp": 100 * (rec["accuracy_reference"] - rec["accuracy_stored_mean"]),
            "storage_loss_pp": 100 * (rec["accuracy_compressed"] - rec["accuracy_stored_mean"])}
