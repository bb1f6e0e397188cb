"""The planner (``pcm-hil plan``): fewest total cells meeting an accuracy target, chosen on
the noise model alone, then stored and measured."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pcm_hil.chip import Geometry
from pcm_hil.cli import main
from pcm_hil.coding import CodeConfig
from pcm_hil.emulator import EmulatedChip
from pcm_hil.models import accuracy
from pcm_hil.run_store import RunStore
from pcm_hil.store_job import StoreConfig, allocation, layout as layout_stage, model_cache
from pcm_hil.store_job.importance import estimate
from pcm_hil.store_job.inputs import NetworkConfig, load_inputs
from pcm_hil.store_job.plan import PlanConfig, SearchSpace, plan_and_store, plan_store
from pcm_hil.store_job.readback import decoded_from_reads, evaluate_reads, simulate_reads

GEOM = Geometry(1, 128, 128)  # the store tests' chip (conftest's calibration sits on its last 8,000 cells)
# the store tests' small evaluation: 2 programmings and a small medium test fit beside the calibration
BASE = dict(model="mlp-digits", importance_samples=300, programmings=2, medium_cells=256, digital_baseline=False)
SPACE = SearchSpace(sparsities=(0.0, 0.5), codes=("sign", "offset"), replicas=(1.0, 1.5, 2.0),
                    budget_tolerances_us=(None,))
FAST = dict(space=SPACE, min_draws=4, reject_after=4, max_draws=8, batch=4, final_draws=4, final_max_draws=4)


@pytest.fixture(scope="module")
def inputs():
    return load_inputs(NetworkConfig(name="mlp-digits"))


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """Each sparsity is fine-tuned once for the whole module."""
    model_cache.use(tmp_path_factory.mktemp("cache"))
    yield
    model_cache.use(None)


def test_plan_stores_the_cheapest_configuration_that_meets_the_target(tmp_path, noise, inputs) -> None:
    chip = EmulatedChip(GEOM, profile="pcm", seed=2)
    with RunStore(tmp_path / "s.sqlite") as store:
        r = plan_and_store(chip, noise, store, inputs, BASE, PlanConfig(max_accuracy_drop=0.03, **FAST))
    assert r["stored"] and r["configuration"] is not None
    for key in ("predicted_accuracy", "measured_accuracy_mean", "total_cells", "configuration"):
        assert r[key] is not None
    assert set(r["configuration"]) == {"sparsity", "code", "replicas_per_weight", "replicas_per", "pulse_budget"}
    # the target holds where the planner looked (validation, lower bound of the mean over draws)
    assert r["predicted_accuracy_val_lower"] >= r["reference_val"] - 0.03
    # no candidate with fewer cells was accepted: the accepted one is the first in cell order
    tried = r["candidates_tried"]
    assert [c["verdict"] for c in tried][-1] == "accepted" and all(c["verdict"] != "accepted" for c in tried[:-1])
    assert [c["total_cells"] for c in tried] == sorted(c["total_cells"] for c in tried)
    # the layout the store programmed is the planned one: the same analog cells, and the total counted the same way
    assert r["measured_analog_cells"] == r["analog_cells"]
    # every side-information part the same but the verify flags (drawn) and the medium's rate (measured)
    assert {k: v for k, v in r["measured_side_bits"].items() if k != "verify_flags"} == \
        {k: v for k, v in r["side_bits"].items() if k != "verify_flags"}
    # the flags follow the cells that failed to verify, which the noise model predicts within 2x on this small
    # chip (measured after the reference models were retrained: 352 bits against 224 predicted)
    assert 0.5 <= r["measured_side_bits"]["verify_flags"] / r["side_bits"]["verify_flags"] <= 2.0
    rate = r["measured_digital_medium"]["cells_per_bit"]
    assert r["measured_total_cells"] == pytest.approx(r["analog_cells"] + rate * sum(r["measured_side_bits"].values()))
    # prediction beside measurement (2 programmings on a 397-image test set: a loose check)
    assert abs(r["prediction_error_pp"]) < 5


def test_a_tighter_target_never_costs_fewer_cells(noise, inputs) -> None:
    cells = []
    for drop in (0.10, 0.03, 0.015, 0.0):
        r = plan_store(inputs, noise, BASE, PlanConfig(max_accuracy_drop=drop, **FAST)).as_dict()
        cells.append(np.inf if r["configuration"] is None else r["total_cells"])
    assert cells == sorted(cells)
    assert cells[0] < cells[1], "a looser target should buy a cheaper configuration in this space"


def test_simulated_reads_decode_through_the_store_jobs_own_read_back(noise, inputs) -> None:
    """The planner's accuracy is the store job's read-back chain on noise-model reads."""
    cfg = StoreConfig.from_options(**BASE, sparsity=0.5, code=CodeConfig("sign"), replicas_per_weight=1.5)
    comp = model_cache.cached_compress(inputs.network, inputs.names, inputs.train.x, inputs.train.y, cfg.compression)
    imp = estimate(comp.model, inputs.names, inputs.train, cfg.importance)
    lay = layout_stage.encode(comp.model, inputs.names, comp.masks, imp, noise, cfg.layout, cfg.retention_s)
    plan = allocation.plan_cells(noise, lay.targets, lay.importance, lay.reference, cfg.allocation)
    reads, verified = simulate_reads(noise, plan.aim_us, plan.tolerance_us, plan.max_pulses, cfg.retention_s,
                                     np.random.default_rng(0))
    assert 0.9 < verified.mean() < 1.0  # some cells fail to verify, as on the chip
    back = evaluate_reads(reads, comp.model, inputs.names, lay, cfg.layout.code, verified, inputs.train, inputs.test,
                          cfg.readback, inputs.val)
    decoded = decoded_from_reads(reads, comp.model, inputs.names, lay, cfg.layout.code, verified, inputs.train,
                                 cfg.readback)
    assert accuracy(decoded, inputs.val.x, inputs.val.y) == back.figures["accuracy_stored_val"]
    # RESET-only cells (aimed at the floor) read near the floor, not at a calibrated level's offset
    floor = plan.aim_us <= noise.window_.g_floor_us
    assert floor.any() and np.all(reads[floor] < 1.0)


def test_stuck_cells_hold_their_value_through_the_retention_time(noise) -> None:
    t = np.full(200_000, 10.0)
    rng = np.random.default_rng(0)
    g_held, conv = noise.sample(t, 0.5, 5, elapsed_s=86400, seed=rng, return_converged=True, stuck_hold=True)
    g_drift = noise.sample(t, 0.5, 5, elapsed_s=86400, seed=np.random.default_rng(0))
    assert np.array_equal(g_held[conv], g_drift[conv])  # the other draws are unchanged
    assert (g_held[~conv] != g_drift[~conv]).any()  # failed cells that are stuck did not drift


@pytest.mark.parametrize("args, says", [
    (["--max-accuracy-drop", "-1"], "[0, 50] pp"),
    (["--max-accuracy-drop", "60"], "[0, 50] pp"),
    (["--max-accuracy-drop", "1", "--sparsities", "0,1.5"], "[0, 0.99]"),
    (["--max-accuracy-drop", "1", "--codes", "sign,split"], "sign, offset, pair"),
    (["--max-accuracy-drop", "1", "--replicas", "0.5"], "[1, 8]"),
    (["--max-accuracy-drop", "1", "--budget-tolerances", "0"], "(0, 10] µS or 'default'"),
    (["--max-accuracy-drop", "1", "--max-draws", "2"], "[4, 1000]"),
    (["--max-accuracy-drop", "1", "--final-max-draws", "1"], "[2, 10000]"),
    ([], "--max-accuracy-drop"),
])
def test_bad_plan_options_are_refused_before_any_pulse(tmp_path, capsys, args, says) -> None:
    code = main(["plan", "--model", "mlp-digits", "--run-dir", str(tmp_path), *args])
    assert code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "pcm-hil.sqlite").exists()  # no run store, no chip, no calibration


def test_an_unknown_model_is_refused_before_any_pulse(tmp_path, capsys) -> None:
    code = main(["plan", "--model", "no-such-net", "--run-dir", str(tmp_path), "--max-accuracy-drop", "1"])
    assert code == 2 and "unknown model" in capsys.readouterr().err
    assert not (tmp_path / "pcm-hil.sqlite").exists()


@pytest.mark.slow
def test_cli_plan_json(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "pcm_hil.cli", "plan", "--model", "mlp-digits", "--json",
                        "--max-accuracy-drop", "3", "--sparsities", "0,0.5", "--replicas", "1,1.5",
                        "--budget-tolerances", "default", "--final-max-draws", "30", "--no-digital-baseline",
                        "--run-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("predicted_accuracy", "measured_accuracy_mean", "total_cells", "configuration"):
        assert out[key] is not None
    assert out["stored"] and out["measured_accuracy_ci95"][0] <= out["measured_accuracy_mean"]
    assert 24 <= out["predicted_draws"] <= 30  # at least --final-draws, at most --final-max-draws


def test_the_prediction_draws_on_until_its_interval_is_tight(noise, inputs) -> None:
    """A small test set scatters one draw by about ±0.5 pp: the final prediction draws more
    than its minimum until the 95 % interval of its mean is within the half-width asked."""
    one = SearchSpace(sparsities=(0.5,), codes=("sign",), replicas=(1.0,), budget_tolerances_us=(None,))
    fast = {**FAST, "space": one, "final_max_draws": 12}
    loose = plan_store(inputs, noise, BASE, PlanConfig(max_accuracy_drop=0.5, final_halfwidth=0.05, **fast)).as_dict()
    tight = plan_store(inputs, noise, BASE, PlanConfig(max_accuracy_drop=0.5, final_halfwidth=1e-4, **fast)).as_dict()
    assert loose["predicted_draws"] == 4 and tight["predicted_draws"] == 12
    lo, hi = tight["predicted_accuracy_ci95"]
    assert hi - lo < loose["predicted_accuracy_ci95"][1] - loose["predicted_accuracy_ci95"][0]
