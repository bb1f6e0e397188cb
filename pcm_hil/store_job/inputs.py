"""The store job's inputs: the trained network and its data, loaded and checked once per
job, before any pulse (a typo costs no calibration)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import datasets
from ..models import accuracy, load_model, manifest, spec
from .compression import analog_parameters


@dataclass(frozen=True)
class NetworkConfig:
    """Which network to store: a registry name, or your own ``file.py:Class`` with a
    state-dict ``checkpoint`` and a ``data_dir`` (x_test.npy, y_test.npy, optionally
    x_train.npy, y_train.npy; or a cifar-10-batches-py directory)."""

    name: str = "lenet5-fmnist"
    checkpoint: str | None = None
    data_dir: str | None = None


def shipped(name: str) -> dict[str, Any]:
    """The manifest entry of the checkpoint the registry network ``name`` ships with (its ``sha256``,
    ``test_accuracy``, ``trained_on``, training ``command``); empty for your own architecture."""
    return manifest().get(name, {})


@dataclass
class Inputs:
    """The trained network, the names of its tensors stored in cells, and its data."""

    network: nn.Module
    names: list[str]  # its tensors stored in cells
    train: datasets.Split  # fine-tuning, importance, batch-norm re-estimation
    val: datasets.Split    # held out of the training data: chooses settings and the digital competitor
    test: datasets.Split   # reported figures only
    accuracy_reference: float


def load_inputs(cfg: NetworkConfig) -> Inputs:
    """Load and check the network and its data; ValueError names what is wrong."""
    if cfg.data_dir and not Path(cfg.data_dir).is_dir():
        raise ValueError(f"--data-dir {cfg.data_dir} is not a directory (accepted: a directory with x_test.npy and "
                         "y_test.npy, or the dataset's own files)")
    model = load_model(cfg.name, cfg.checkpoint)
    if not spec(cfg.name).dataset and not _own_data(cfg):
        raise ValueError(f"{cfg.name} is your own architecture: give --data-dir with x_test.npy and y_test.npy "
                         "(and x_train.npy, y_train.npy for fine-tuning and importance)")
    names = analog_parameters(model)
    params = dict(model.named_parameters())
    for n in names:
        if not torch.isfinite(params[n]).all():
            raise ValueError(f"model weights {n} hold NaN or infinite values")
    full_train, test = _dataset(cfg)
    train, val = datasets.hold_out(full_train, "" if _own_data(cfg) else spec(cfg.name).dataset)
    try:
        acc = accuracy(model, test.x, test.y)
    except RuntimeError as exc:  # shapes or dtypes the network does not take
        raise ValueError(f"the data of {cfg.name} do not fit the network: {exc}") from None
    return Inputs(model, names, train, val, test, acc)


def _own_data(cfg: NetworkConfig) -> bool:
    """Whether the data come from the user's arrays in ``data_dir`` (not the network's registry dataset)."""
    return bool(cfg.data_dir and Path(cfg.data_dir, "x_test.npy").exists())


def _dataset(cfg: NetworkConfig) -> tuple[datasets.Split, datasets.Split]:
    if _own_data(cfg):
        d = Path(cfg.data_dir)

        def load(name: str) -> np.ndarray:
            return np.load(d / name, allow_pickle=False)

        test = datasets.Split(load("x_test.npy").astype(np.float32), load("y_test.npy").astype(np.int64))
        if (d / "x_train.npy").exists():
            return datasets.Split(load("x_train.npy").astype(np.float32), load("y_train.npy").astype(np.int64)), test
        # no training data: fine-tune and estimate importance on one half, report accuracy on the
        # other, so that no accuracy is measured on data the model was tuned with
        idx = np.random.default_rng(0).permutation(len(test))
        half = len(test) // 2
        return (datasets.Split(test.x[idx[:half]], test.y[idx[:half]]),
                datasets.Split(test.x[idx[half:]], test.y[idx[half:]]))
    return datasets.load(spec(cfg.name).dataset, cfg.data_dir)
