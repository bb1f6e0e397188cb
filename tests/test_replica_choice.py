"""Replicas per kept weight chosen from the calibrated chip (``--replicas auto``)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pcm_hil_noisemodel import NoiseModel

from pcm_hil.cli import main
from pcm_hil.emulator import EmulatedChip
from pcm_hil.run_store import RunStore
from pcm_hil.store_job import StoreConfig, load_run, run_store_job
from pcm_hil.store_job.compression import compress
from pcm_hil.store_job.importance import estimate
from pcm_hil.store_job.inputs import load_inputs
from pcm_hil.store_job.replica_choice import ReplicaChoiceConfig, choose_replicas

from .test_store import GEOM


@pytest.fixture(scope="module")
def mlp():
    """mlp-digits compressed, its 360 test digits standing in for the 140-digit validation
    split (a 0.28 pp step instead of 0.71 pp)."""
    cfg = StoreConfig.from_options(model="mlp-digits", sparsity=0.5, importance_samples=300)
    inputs = load_inputs(cfg.network)
    comp = compress(inputs.network, inputs.names, inputs.train.x, inputs.train.y, cfg.compression)
    imp = estimate(comp.model, inputs.names, inputs.train, cfg.importance)
    return cfg, dataclasses.replace(inputs, val=inputs.test), comp, imp


def _choose(mlp, noise, **kw):
    cfg, inputs, comp, imp = mlp
    return choose_replicas(inputs, noise, comp, imp, cfg.layout, cfg.allocation, cfg.readback, cfg.retention_s,
                           ReplicaChoiceConfig(auto=True, **kw))


def _noisier(noise: NoiseModel, factor: float) -> NoiseModel:
    """The chip's noise model with ``factor`` × its programming error."""
    prog = dataclasses.replace(noise.programming_, sigma_us=factor * noise.programming_.sigma_us,
                               sigma_coef=factor * noise.programming_.sigma_coef)
    return NoiseModel.from_parts(noise.window_, prog, noise.read_noise_, noise.drift_, noise.faults_,
                                 noise.verify_settings_, noise.provenance, noise.response_)


def test_the_fewest_replicas_within_the_target_are_chosen(mlp, noise) -> None:
    loose = _choose(mlp, noise, max_storage_loss_pp=100.0, draws=2)
    first = ReplicaChoiceConfig().candidates[0]  # 1.25: one replica is never chosen automatically
    assert loose.replicas_per_weight == first and len(loose.rows) == 1  # the first candidate meets it: no more tried
    strict = _choose(mlp, _noisier(noise, 3.0), candidates=(1.0, 2.0, 4.0), max_storage_loss_pp=0.2, draws=3)
    losses = [r["predicted_loss_pp"] for r in strict.rows]
    assert all(loss > 0.2 for loss in losses[:-1])  # tried in order until one meets the target
    met = losses[-1] <= 0.2
    best = strict.rows[-1] if met else strict.rows[int(np.argmin(losses))]  # else the least loss
    assert strict.replicas_per_weight == best["replicas_per_weight"]
    assert len(losses) >= 2 and losses[0] > losses[-1]  # one replica loses more than two or four
    cells = [r["analog_cells"] for r in strict.rows]
    assert all(b > a for a, b in zip(cells, cells[1:]))  # more replicas, more cells


def test_a_noisier_chip_gets_more_replicas(mlp, noise) -> None:
    """The same network on a chip whose programming error is 5× larger needs more replicas
    for the same predicted loss (measured: 1.5 replicas at 0.17 pp on the chip; 0.92 pp there
    on the noisier one, which takes 4; 3× was within the 0.3 pp target at 1.5 as well)."""
    steps = (1.0, 1.5, 2.0, 3.0, 4.0)  # coarser than the default: mlp-digits scores in 0.28 pp steps
    base = _choose(mlp, noise, candidates=steps, max_storage_loss_pp=0.3, draws=3)
    worse = _choose(mlp, _noisier(noise, 5.0), candidates=steps, max_storage_loss_pp=0.3, draws=3)
    assert worse.replicas_per_weight > base.replicas_per_weight


def test_bad_choice_settings_are_refused(tmp_path, capsys) -> None:
    with pytest.raises(ValueError, match=r"ascending distinct numbers in \[1, 8\]"):
        ReplicaChoiceConfig(candidates=(2.0, 1.0))
    with pytest.raises(ValueError, match=r"max_storage_loss_pp must be in \(0, 100\]"):
        ReplicaChoiceConfig(max_storage_loss_pp=0)
    assert main(["store", "--model", "mlp-digits", "--replicas", "many", "--run-dir", str(tmp_path)]) == 2
    assert "expected a number in [1, 8], got 'many' (or 'auto')" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before the run store was opened


def test_auto_store_records_the_choice_and_loads_back(tmp_path, noise) -> None:
    chip = EmulatedChip(GEOM, profile="pcm", seed=2)
    with RunStore(tmp_path / "s.sqlite") as store:
        cfg = StoreConfig.from_options(model="mlp-digits", sparsity=0.5, importance_samples=300, programmings=2,
                                       medium_cells=256, replicas_auto=True, max_storage_loss_pp=0.8,
                                       digital_baseline=False)
        r = run_store_job(chip, noise, store, cfg).record
        choice = r["replica_choice"]
        assert choice["candidates"][-1]["replicas_per_weight"] == r["replicas_per_weight"]
        assert store.run(r["run_id"])["settings"]["config"]["layout"]["replicas_per_weight"] == r["replicas_per_weight"]
        assert abs(load_run(chip, store, r["run_id"])["accuracy_loaded"] - r["accuracy_stored"]) < 0.03
