"""The study (issue #14): the sweep runs real store jobs on the emulator, resumes without
recomputing, fine-tunes each model once (the model cache), the Ray dispatch path runs,
the report holds its tables with intervals, and Ray missing is one clear error line."""
from __future__ import annotations

import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pcm_hil.cli import main
from pcm_hil.store_job import StoreConfig, model_cache, prepare
from pcm_hil.store_job.compression import CompressionConfig
from pcm_hil.store_job.inputs import NetworkConfig, load_inputs
from pcm_hil.study import ProcessBackend, RayBackend, StudyConfig, estimate_seconds, finished_points, run_study
from pcm_hil.study.capacity import blahut_arimoto, channel_capacity
from pcm_hil.study.grid import DAY_S, HOUR_S, YEAR_S, Setting
from pcm_hil.study.report import build

TINY = replace(StudyConfig.quick_preset(), settings=(Setting("r1-s50", 1.0, 0.5),), ablation_base="",
               medium_cells=256)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The tiny grid (mlp-digits, 1 setting, 1 day, 2 chips, 2 programmings, digital search on),
    first on a real local Ray instance (``--address local``), then again on the process pool."""
    run_dir = tmp_path_factory.mktemp("study")
    ray = RayBackend("local")
    try:
        first = run_study(TINY, run_dir, ray)
    finally:
        ray.close()
    pool = ProcessBackend(2)
    try:
        second = run_study(TINY, run_dir, pool)
    finally:
        pool.close()
    return run_dir, first, second


@pytest.mark.slow
def test_the_sweep_runs_real_store_jobs_through_the_ray_dispatch(sweep) -> None:
    run_dir, first, _ = sweep
    assert first.failed == [] and first.computed == 2 and len(first.rows) == 2
    assert {r["point"]["chip_seed"] for r in first.rows} == {0, 1}
    for r in first.rows:
        rec = r["record"]
        assert rec["programmings"] == 2 and rec["retention_s"] == DAY_S
        assert rec["accuracy_stored_ci95"][0] <= rec["accuracy_stored_mean"] <= rec["accuracy_stored_ci95"][1]
        assert rec["total_cells"] > rec["analog_cells"] > 0 and rec["digital_options_tried"]
        assert (Path(r["directory"]) / "pcm-hil.sqlite").exists()  # each point in its own run store
        assert "accuracy_curve" not in rec  # the report does not read the noise model's prediction
    assert len(finished_points(run_dir)) == 2


@pytest.mark.slow
def test_a_second_run_recomputes_nothing(sweep) -> None:
    run_dir, first, second = sweep
    assert (second.computed, second.reused, second.calibrated) == (0, 2, 0)
    assert second.cache == {"hits": 0, "misses": 0}  # nothing compressed either
    assert [r["record"]["run_id"] for r in second.rows] == [r["record"]["run_id"] for r in first.rows]


@pytest.mark.slow
def test_a_point_of_a_model_retrained_since_is_not_finished(sweep, monkeypatch) -> None:
    """Points are keyed by their settings; the checkpoint they loaded is in the row, and a model
    retrained since (a new SHA-256 in the manifest) makes its points run again, not reused."""
    import pcm_hil.store_job.inputs
    from pcm_hil.models import manifest

    run_dir, first, _ = sweep
    shipped = manifest()
    assert {r["checkpoint"] for r in first.rows} == {shipped["mlp-digits"]["sha256"]}
    retrained = {**shipped, "mlp-digits": {**shipped["mlp-digits"], "sha256": "0" * 64}}
    monkeypatch.setattr(pcm_hil.store_job.inputs, "manifest", lambda: retrained)
    assert finished_points(run_dir) == {}
    assert estimate_seconds(TINY, run_dir, 2)["points_left"] == 2


@pytest.mark.slow
def test_each_model_is_fine_tuned_once_per_sweep(sweep) -> None:
    """The warm-up compresses the analog start and the 4 pruned digital starts (5 misses);
    each of the 2 points then finds all 5 in the cache. The competitor's quantization-aware
    fine-tunes go through the cache too (one lookup each: a miss, or a hit when another point
    made the same one first)."""
    _, first, _ = sweep
    # one fine-tune per (start, bits) and point; per-layer precision rounds reuse its network
    qat = sum(len({(o["start"], o["bits"]) for o in r["record"]["digital_options_tried"]
                   if o["training"] == "quantization-aware" and not o.get("layer_bits")}) for r in first.rows)
    assert first.cache["hits"] >= 10 and first.cache["misses"] >= 5
    assert first.cache["hits"] - 10 + first.cache["misses"] - 5 == qat


@pytest.mark.slow
def test_the_report_holds_the_tables_with_intervals(sweep, tmp_path) -> None:
    run_dir, first, _ = sweep
    out = tmp_path / "results.md"
    figures = build(first.rows, TINY, run_dir, out, "pcm-hil study --test")
    text = out.read_text()
    assert "QUICK SAMPLE" in text
    assert re.search(r"\| r1-s50 \| 1 \| 50% \| \d+\.\d\d % \(\d+\.\d\d–\d+\.\d\d\) \| 4 = 2 × 2 \|", text)
    assert "Digital options tried" in text and "| start | training | bits | sparsity | cells | validation | test |" in text
    assert "Iso-accuracy ratio" in text and "interpolated linearly" in text
    assert re.search(r"\| 1 day \| pcm-realistic-seed0-1x128x256 \| ±[\d.]+ \| \d\.\d\d \|", text)  # capacity per chip
    assert "**Verdict (mlp-digits, 1 day):**" in text
    assert Path(figures["plots"][0]).stat().st_size > 10_000
    iso = figures["models"]["mlp-digits"]["1 day"]["iso_accuracy"]
    assert len(iso) == 1 and iso[0]["note"]
    # the summary: one row per model and retention, before the models' sections
    row = re.search(r"\| mlp-digits \| 1 day \| 1 \| (.*) \| (.*) \| \d+\.\d\d % \(r1-s50\) \| \d+\.\d\d % \|", text)
    assert row and text.index("## Summary") < row.start() < text.index("## mlp-digits")
    assert "What each lever bought" not in text  # no lever record beside this report
    assert "best ratio, front lowered" in text and "mlp-digits" in figures["validation_optimism"]
    assert "Incomplete" not in text and figures["points_missing"] == 0
    (tmp_path / "levers.md").write_text("| lever | measured | kept? |\n|---|---|---|\n| x | +1 pp | yes |\n")
    build(first.rows, TINY, run_dir, out, "pcm-hil study --test")
    text = out.read_text()
    assert "## What each lever bought" in text and "| x | +1 pp | yes |" in text


def test_the_digital_front_keeps_quantization_aware_and_per_layer_options_apart() -> None:
    """The report once averaged a quantization-aware option with the post-training one of the
    same start and width, and left per-layer precision off the front: a weaker digital side
    than the store jobs had measured (LeNet-5 / Fashion-MNIST after a day: best ratio 1.06×
    then, 0.89× with the front as tried)."""
    from pcm_hil.study.report import digital_cells_at, digital_points

    def opt(training, acc, cells, layer_bits=None):
        return {"start": "pruned 75%", "bits": 3, "sparsity": 0.75, "training": training, "accuracy_val": acc,
                "accuracy_test": None, "cells": cells, "layer_bits": layer_bits}

    rows = [{"record": {"digital_options_tried": [opt("post-training", 0.880, 1000.0),
                                                  opt("quantization-aware", 0.906, 1000.0)]}},
            {"record": {"digital_options_tried": [opt("quantization-aware", 0.906, 1010.0),
                                                  opt("quantization-aware", 0.905, 900.0, {"a": 3, "b": 2})]}}]
    front = digital_points(rows)
    assert [(d.training, d.per_layer, d.cells, d.accuracy_val, d.pareto) for d in front] == [
        ("quantization-aware", True, 900.0, 0.905, True), ("post-training", False, 1000.0, 0.880, False),
        ("quantization-aware", False, 1005.0, 0.906, True)]
    assert digital_cells_at(front, 0.905)[0] == 900.0


def test_the_validation_optimism_of_the_chosen_digital_models_is_measured() -> None:
    """A digital model picked as the best of many on one validation split reads better there than on test;
    the report measures by how much more than the analog store does and lowers the front by it."""
    from pcm_hil.study.report import digital_cells_at, digital_points, validation_optimism

    def row(val, test, analog_val, analog_tests):
        return {"record": {"best_digital": {"accuracy_val": val, "accuracy_test": test},
                           "accuracy_stored_val_mean": analog_val, "accuracy_stored_programmings": analog_tests}}

    rows = [row(0.90, 0.88, 0.90, [0.895, 0.905]), row(0.91, 0.90, 0.905, [0.90, 0.90]),
            {"record": {"best_digital": None}}]
    assert validation_optimism(rows) == pytest.approx([0.02, 0.005])
    opts = [{"start": "s", "bits": b, "sparsity": 0.5, "training": "post-training", "accuracy_val": a,
             "accuracy_test": None, "cells": c} for b, a, c in ((2, 0.88, 100.0), (4, 0.92, 200.0))]
    front = digital_points([{"record": {"digital_options_tried": opts}}])
    # lowered by 1 pp, the front needs the option it would score at 0.90 + 0.01 on validation
    assert digital_cells_at(front, 0.90 + 0.01)[0] == pytest.approx(175.0)
    assert digital_cells_at(front, 0.915 + 0.01)[0] is None


@pytest.mark.slow
def test_a_report_of_an_unfinished_study_names_what_is_missing(sweep, tmp_path, capsys) -> None:
    """A third chip seed adds one point per setting that the run directory does not hold: the
    report is written from what is there and says so at the top."""
    run_dir, first, _ = sweep
    out = tmp_path / "results.md"
    figures = build(first.rows, replace(TINY, chip_seeds=(0, 1, 2)), run_dir, out, "pcm-hil study --test")
    assert figures["points_missing"] == 1
    assert "**Incomplete: 1 of 3 points not yet run** (mlp-digits after 1 day: 1)" in out.read_text()
    # --report-only runs nothing: without finished points it says so and writes no report
    empty = tmp_path / "empty"
    assert main(["study", "--report-only", "--run-dir", str(empty), "--out", str(tmp_path / "r.md")]) == 2
    assert "no finished point" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists() and not empty.exists()


def test_compression_is_a_cache_hit_the_second_time_and_a_miss_when_the_config_changes(tmp_path, noise) -> None:
    cfg = StoreConfig.from_options(model="mlp-digits", sparsity=0.5, finetune_epochs=1, replicas_per_weight=1.0,
                                   importance_samples=100, programmings=2, medium_cells=256)
    inputs = load_inputs(cfg.network)
    model_cache.use(tmp_path / "cache")
    try:
        first = prepare(inputs, noise, cfg, 1 << 20)  # the store job's own stage, with its hook
        assert (model_cache.stats.hits, model_cache.stats.misses) == (0, 1)
        again = prepare(inputs, noise, cfg, 1 << 20)
        assert (model_cache.stats.hits, model_cache.stats.misses) == (1, 1)
        for (n, a), b in zip(first.compressed.model.state_dict().items(), again.compressed.model.state_dict().values()):
            assert torch.equal(a, b), n
        assert all(np.array_equal(first.compressed.masks[n], again.compressed.masks[n]) for n in inputs.names)
        other = replace(cfg, compression=replace(cfg.compression, sparsity=0.6))
        prepare(inputs, noise, other, 1 << 20)
        assert (model_cache.stats.hits, model_cache.stats.misses) == (1, 2)
        # the digital baselines' pruned starts: the same cache
        model_cache.cached_prune(inputs.network, inputs.names, 0.9, inputs.train.x, inputs.train.y, 1)
        model_cache.cached_prune(inputs.network, inputs.names, 0.9, inputs.train.x, inputs.train.y, 1)
        assert (model_cache.stats.hits, model_cache.stats.misses) == (2, 3)
        assert len(list((tmp_path / "cache").glob("*.pt"))) == 3 and not list((tmp_path / "cache").glob("*.tmp"))
    finally:
        model_cache.use(None)


def test_the_cache_key_covers_weights_data_and_settings() -> None:
    inputs = load_inputs(NetworkConfig("mlp-digits"))
    x, y, names = inputs.train.x, inputs.train.y, inputs.names
    cfg = CompressionConfig(sparsity=0.5)
    k = model_cache.key(inputs.network, names, x, y, cfg)
    assert k == model_cache.key(inputs.network, names, x.copy(), y.copy(), CompressionConfig(sparsity=0.5))
    assert k != model_cache.key(inputs.network, names, x, y, CompressionConfig(sparsity=0.5, seed=1))
    assert k != model_cache.key(inputs.network, names, x[:-1], y[:-1], cfg)
    with torch.no_grad():
        next(inputs.network.parameters()).view(-1)[0] += 1e-3
    assert k != model_cache.key(inputs.network, names, x, y, cfg)


def test_blahut_arimoto_finds_known_capacities() -> None:
    assert blahut_arimoto(np.eye(4))[0] == pytest.approx(2.0, abs=1e-4)
    p = 0.11
    bsc = np.array([[1 - p, p], [p, 1 - p]])
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    assert blahut_arimoto(bsc)[0] == pytest.approx(1 - h, abs=1e-4)


def test_capacity_falls_with_retention(noise) -> None:
    tol = float(noise.tolerances_us_[1])
    hour, year = (channel_capacity(noise, t, tol, 20).bits for t in (3600.0, 365 * 86400.0))
    assert 0.5 < year < hour < np.log2(64)


def test_address_without_ray_is_one_clear_error_line(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # a machine without Ray: ``import ray`` fails
    rc = main(["study", "--quick", "--address", "ray://127.0.0.1:10001", "--run-dir", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "pip install ray" in err and err.startswith("pcm-hil: error: --address")
    assert not (tmp_path / "s").exists()  # nothing started


def test_cli_and_lab_script_run_the_same_code_and_estimate_first(tmp_path, capsys) -> None:
    import json
    import runpy

    assert main(["study", "--quick", "--estimate-only", "--json", "--run-dir", str(tmp_path / "s")]) == 0
    out = capsys.readouterr()
    r = json.loads(out.out)
    assert r["estimate"]["points"] == r["estimate"]["points_left"] == 22 and r["config"]["quick"]
    assert out.err.startswith("study: 22 points (22 left) on ") and "estimated" in out.err
    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "lab_scripts" / "study.py"))
    assert script["main"](["--quick", "--estimate-only", "--run-dir", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().err == out.err


def test_a_smaller_grid_for_a_slow_model(tmp_path, capsys) -> None:
    """--settings, --retentions and --no-ablations cut the grid; ResNet-20 runs a reduced grid
    by default (its fine-tunes alone take hours on 2 cores), so the default study fits."""
    import json

    args = ["study", "--models", "lenet5-fmnist", "--estimate-only", "--json", "--run-dir", str(tmp_path / "s")]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["estimate"]["points"] == 8 * 3 * 2 + 8 * 2  # curve, ablations
    assert main(args + ["--settings", "r1.25-s75,r2-s75", "--retentions", "day", "--no-ablations"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["estimate"]["points"] == 2 * 1 * 2  # settings × retention × chip seeds
    assert [s["name"] for s in r["config"]["settings"]] == ["r1.25-s75", "r2-s75"]
    assert r["config"]["retentions_s"] == [DAY_S] and r["config"]["ablation_base"] == ""
    # the ablations, kept, start from a setting of the smaller grid at a retention it has
    assert main(args + ["--settings", "r1.5-s75", "--retentions", "year"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["config"]["ablation_base"] == "r1.5-s75" and r["config"]["ablation_retention_s"] == 365 * DAY_S
    assert r["estimate"]["points"] == 2 + 2 * 8
    for bad in (["--settings", "r9-s75"], ["--retentions", "week"], ["--settings", "r2-s75,r2-s75"]):
        assert main(args + bad) == 2
        assert "among" in capsys.readouterr().err
    # the default study: ResNet-20 at 4 settings after 1 hour, 1 day and 1 year on 2 chips, no ablations
    points = StudyConfig().points()
    resnet = [p for p in points if p.model == "resnet20-fmnist32"]
    assert sorted({p.setting.name for p in resnet}) == ["r1.25-s75", "r1.25-s90", "r2-s75", "r2-s90"]
    assert len(resnet) == 4 * 3 * 2
    assert {p.retention_s for p in resnet} == {HOUR_S, DAY_S, YEAR_S}
    assert all(p.setting.ablation is None for p in resnet)
    assert len([p for p in points if p.model == "lenet5-fmnist"]) == 8 * 3 * 2 + 8 * 2
    assert main(["study", "--models", "resnet20-fmnist32", "--settings", "r1-s75,r3-s75", "--estimate-only",
                 "--run-dir", str(tmp_path / "s")]) == 2
    assert "reduced grid" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_study_point_stores_as_the_main_job_does_but_for_what_its_setting_names() -> None:
    """A point with every strategy on is the ``pcm-hil store`` command line's config with its
    replicas and sparsity (the study once ran with the coded mask where the store job put
    the mask in the cells, because its code options read as an old run's record); each
    ablation differs from its base in the one stage option it names."""
    from dataclasses import asdict

    from pcm_hil.cli import build_parser
    from pcm_hil.cli.commands import store_config
    from pcm_hil.study.grid import Point

    cfg = StudyConfig()
    base = next(s for s in cfg.settings if s.name == cfg.ablation_base)
    point = Point("lenet5-fmnist", base, DAY_S, 0)
    args = build_parser().parse_args(["store", "--model", "lenet5-fmnist", "--replicas", str(base.replicas_per_weight),
                                      "--sparsity", str(base.sparsity)])
    cli = replace(store_config(args), baselines=point.store_config().baselines,
                  evaluation=point.store_config().evaluation, medium=point.store_config().medium)
    assert point.store_config() == cli
    assert not point.store_config().layout.mask_in_cells
    for s in cfg.ablation_settings()[0]:
        a, b = asdict(Point("lenet5-fmnist", s, DAY_S, 0).store_config()), asdict(point.store_config())
        changed = [(stage, k) for stage in a if isinstance(a[stage], dict)
                   for k in a[stage] if a[stage][k] != b[stage][k]]
        assert 1 <= len(changed) <= 2, (s.name, changed)  # replicas-by-importance: redundancy and replicas


def test_an_ablation_the_store_job_declined_is_not_reported_as_measured() -> None:
    """The store job keeps the coded mask where it takes fewer cells than the mask in the cells;
    the ablation asking for it is then reported as declined (with why), not as a +0.00 pp row."""
    from pcm_hil.study.report import _declined

    why = "the coded mask takes fewer cells on the predicted medium (2 bit/cell): 33,491 against 47,525 in the cells"
    asked = {"mask_in_cells": True}
    assert _declined(asked, [{"mask_in_cells": {"on": False, "why": why}}] * 2) == why
    assert _declined(asked, [{"mask_in_cells": {"on": True}}, {"mask_in_cells": {"on": False, "why": why}}]) is None
    assert _declined({"mask_in_cells": False}, [{"mask_in_cells": {"on": False}}]) is None
