"""The model cache's read-only shipped layer: the default main job's fine-tunes ship in the
package (pcm_hil/checkpoints/cache/, made by scripts/ship_cache.py), a hit gives the model
that was saved, and nothing at run time writes the shipped layer."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pcm_hil.cli import build_parser
from pcm_hil.cli.commands import store_config
from pcm_hil.store_job import model_cache
from pcm_hil.store_job.baselines import QAT_CLIP, fake_quantizer
from pcm_hil.store_job.inputs import NetworkConfig, load_inputs

REGENERATE = "OMP_NUM_THREADS=1 python scripts/ship_cache.py lenet5-fmnist"


def _listing(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_the_shipped_cache_holds_every_fine_tune_of_the_default_main_job() -> None:
    """The keys the default ``pcm-hil store --model lenet5-fmnist`` computes (no training: the
    quantization-aware ones from their shipped starts) all have an entry."""
    shipped = model_cache.SHIPPED
    stale = f"the shipped model cache is stale for the default main job: regenerate it with '{REGENERATE}' " \
            "(docs/storage.md, 'Run time and the shipped cache')"
    assert (shipped / "manifest.json").exists(), stale
    manifest = json.loads((shipped / "manifest.json").read_text())["entries"]
    cfg = store_config(build_parser().parse_args(["store", "--model", "lenet5-fmnist"]))
    inputs = load_inputs(cfg.network)
    x, y, names = inputs.train.x, inputs.train.y, inputs.names
    need = {model_cache.key(inputs.network, names, x, y, model_cache.compress_settings(cfg.compression)): "compress"}
    for s in cfg.baselines.sparsities:
        if s > 0:
            settings = model_cache.prune_settings(s, cfg.compression.finetune_epochs, cfg.compression.seed)
            need[model_cache.key(inputs.network, names, x, y, settings)] = f"pruned {s:.0%}"
    for k, what in need.items():
        assert (shipped / f"{k}.pt").exists(), f"{what}: no entry {k}; {stale}"
    qat = {k: e for k, e in manifest.items() if e["settings"]["stage"] == "quantization_aware"}
    assert len(qat) >= 1 or cfg.baselines.qat_epochs == 0, stale
    for k, e in qat.items():
        s = e["settings"]
        if e["start"] == "reference":
            net = inputs.network
            masks = {n: np.ones(tuple(dict(net.named_parameters())[n].shape), bool) for n in names}
        else:
            assert e["start"] in need, f"quantization-aware entry {k} starts from a fine-tune the job no longer makes; {stale}"
            found = model_cache.lookup(e["start"])
            assert found is not None and found[0].parent == shipped
            net = copy.deepcopy(inputs.network)
            net.load_state_dict(found[1]["state_dict"], strict=True)
            masks = found[1]["masks"] or {n: np.ones(tuple(dict(net.named_parameters())[n].shape), bool)
                                          for n in names}
        settings = model_cache.quantization_aware_settings(masks, s["bits"], QAT_CLIP, cfg.baselines.qat_epochs,
                                                           cfg.compression.seed)
        assert model_cache.key(net, list(masks), x, y, settings) == k, f"quantization-aware {s['bits']} bits: {stale}"
    assert set(manifest) == {p.stem for p in shipped.glob("*.pt")}, stale
    assert sum(p.stat().st_size for p in shipped.glob("*.pt")) < 5e6  # the package stays small


def test_a_shipped_hit_is_the_saved_model_and_the_shipped_layer_is_never_written(tmp_path, monkeypatch) -> None:
    inputs = load_inputs(NetworkConfig("mlp-digits"))
    x, y, names = inputs.train.x, inputs.train.y, inputs.names
    shipped = tmp_path / "shipped"
    monkeypatch.setenv(model_cache.SHIPPED_ENV, "off")
    try:
        model_cache.use(tmp_path / "made")  # make the entries as scripts/ship_cache.py does
        pruned, masks = model_cache.cached_prune(inputs.network, names, 0.5, x, y, 1)
        qat = model_cache.cached_quantization_aware(pruned, masks, x, y, 3, QAT_CLIP, 1, 0, fake_quantizer(3, QAT_CLIP))
        assert (model_cache.stats.hits, model_cache.stats.misses) == (0, 2)
        shutil.copytree(tmp_path / "made", shipped)
        monkeypatch.setenv(model_cache.SHIPPED_ENV, str(shipped))
        before = _listing(shipped)
        with pytest.raises(ValueError, match="read-only"):
            model_cache.use(shipped)
        for writable in (tmp_path / "writable", None):  # a run directory's cache, or none at all
            model_cache.use(writable)
            again, again_masks = model_cache.cached_prune(inputs.network, names, 0.5, x, y, 1)
            again_qat = model_cache.cached_quantization_aware(again, again_masks, x, y, 3, QAT_CLIP, 1, 0,
                                                              fake_quantizer(3, QAT_CLIP))
            assert (model_cache.stats.hits, model_cache.stats.shipped, model_cache.stats.misses) == (2, 2, 0)
            for a, b in ((pruned, again), (qat, again_qat)):
                for (n, t), u in zip(a.state_dict().items(), b.state_dict().values()):
                    assert torch.equal(t, u), n
                assert not b.training
            assert all(np.array_equal(masks[n], again_masks[n]) for n in names)
            # a miss (another sparsity) goes to the writable directory only
            model_cache.cached_prune(inputs.network, names, 0.6, x, y, 1)
            assert model_cache.stats.misses == 1
            assert _listing(shipped) == before
        assert len(list((tmp_path / "writable").glob("*.pt"))) == 1
    finally:
        model_cache.use(None)


def test_a_change_to_the_fine_tuning_code_misses(monkeypatch) -> None:
    before = model_cache.prune_settings(0.5)
    from pcm_hil.store_job import compression

    original = compression.finetune

    def finetune(*args, **kwargs):  # another function: another source text
        return original(*args, **kwargs)

    monkeypatch.setattr(compression, "finetune", finetune)
    assert model_cache.prune_settings(0.5)["code"] != before["code"]
    assert {k: v for k, v in model_cache.prune_settings(0.5).items() if k != "code"} == \
        {k: v for k, v in before.items() if k != "code"}
