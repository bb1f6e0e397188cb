"""Reference models and their registry (architectures, datasets, shipped checkpoints).

Checkpoints are plain state dicts, loaded with ``torch.load(..., weights_only=True)``;
``pcm_hil/checkpoints/manifest.json`` records each one's training command, accuracy and
SHA-256, checked on load.
"""
from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

CHECKPOINTS = Path(__file__).parent / "checkpoints"


def max_pool2(x: torch.Tensor) -> torch.Tensor:
    """2×2 max pooling, stride 2 (``F.max_pool2d(x, 2)``). Without autograd it is taken as the
    maximum of four strided views: the same values (a maximum rounds nothing), about 2.5× faster
    on CPU, where evaluation spends most of its time pooling. With autograd it is
    ``F.max_pool2d``, whose gradient goes to one input of a tie (training is unchanged)."""
    if torch.is_grad_enabled():
        return F.max_pool2d(x, 2)
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2  # an odd last row or column is dropped, as there
    return torch.maximum(torch.maximum(x[..., 0:h:2, 0:w:2], x[..., 0:h:2, 1:w:2]),
                         torch.maximum(x[..., 1:h:2, 0:w:2], x[..., 1:h:2, 1:w:2]))


class LeNet5(nn.Module):
    """LeNet-5 (LeCun 1998) with ReLU and max pooling, for 1×28×28 inputs: 61,706 parameters."""

    def __init__(self, in_channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = max_pool2(F.relu(self.conv1(x)))
        x = max_pool2(F.relu(self.conv2(x)))
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 (He et al. 2016, CIFAR variant) for 32×32 inputs: 0.27 M parameters."""

    def __init__(self, in_channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                layers.append(_Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class MLP(nn.Module):
    """A small MLP for 8×8 digits (fast tests)."""

    def __init__(self, inputs: int = 64, hidden: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]
    dataset: str
    epochs: int
    lr: float = 1e-3


REGISTRY = {s.name: s for s in [
    ModelSpec("lenet5-fmnist", LeNet5, "fmnist", 10),
    ModelSpec("lenet5-mnist5k", LeNet5, "mnist5k", 30),
    ModelSpec("resnet20-fmnist32", ResNet20, "fmnist32", 4),
    ModelSpec("mlp-digits", MLP, "digits", 60),
]}


def spec(name: str) -> ModelSpec:
    """A registry model, or your own architecture named ``file.py:Class`` or
    ``package.module:Class`` (built with no arguments; its data come from ``--data-dir``)."""
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" in name:
        return ModelSpec(name, _own_class(name), dataset="", epochs=0)
    raise ValueError(f"unknown model {name!r}; shipped: {', '.join(sorted(REGISTRY))}; or your own "
                     "architecture as 'file.py:Class' or 'package.module:Class'")


def own_model_name(name: str) -> str:
    """``name`` with a ``file.py:Class`` path made absolute, so a run can be loaded from anywhere."""
    where, _, cls = name.rpartition(":")
    return f"{Path(where).resolve()}:{cls}" if where.endswith(".py") else name


def _own_class(name: str) -> Callable[[], nn.Module]:
    """The nn.Module subclass ``name`` points at (this imports your code, as Python would)."""
    import importlib
    import importlib.util

    where, _, cls = name.rpartition(":")
    if where.endswith(".py") and not Path(where).is_file():
        raise ValueError(f"model file {where} does not exist")
    try:
        if where.endswith(".py"):
            tag = hashlib.sha1(where.encode()).hexdigest()[:8]
            mod_spec = importlib.util.spec_from_file_location(f"pcm_hil_own_{tag}", where)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except Exception as e:  # the user's module failed to import: say which, keep the cause
        raise ValueError(f"cannot import {where!r} for model {name!r}: {type(e).__name__}: {e}") from e
    obj = getattr(module, cls, None)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ValueError(f"{where!r} has no nn.Module subclass named {cls!r}")

    def build() -> nn.Module:
        try:
            return obj()
        except TypeError as e:
            raise ValueError(f"{name}: the class must build with no arguments ({e})") from e
    return build


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest() -> dict:
    path = CHECKPOINTS / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file, safely (weights only); a clear error for anything else."""
    path = Path(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"model file {path} does not exist") from None
    except pickle.UnpicklingError:  # torch's own text suggests weights_only=False: never for untrusted files
        raise ValueError(f"{path} is not a loadable weights-only checkpoint: it is not a torch file, or it holds "
                         "Python objects besides tensors (pcm-hil does not run pickled code); save "
                         "model.state_dict() instead") from None
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        raise ValueError(f"{path} is not a loadable weights-only checkpoint: {type(exc).__name__}: {exc}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return sd


def load_model(name: str, checkpoint: str | Path | None = None) -> nn.Module:
    """A registry model with its shipped checkpoint (checksum verified) or ``checkpoint``."""
    s = spec(name)
    model = s.build()
    if checkpoint is None:
        path = CHECKPOINTS / f"{name}.pt"
        entry = manifest().get(name)
        if name not in REGISTRY:
            raise ValueError(f"{name} is your own architecture: give its weights with --checkpoint FILE (a state dict)")
        if entry is None or not path.exists():
            raise ValueError(f"no shipped checkpoint for {name}: train it with "
                             f"'python scripts/train_models.py {name}'")
        if sha256(path) != entry["sha256"]:
            raise ValueError(f"checkpoint {path} does not match its SHA-256 in the manifest")
        checkpoint = path
    sd = load_state_dict(checkpoint)
    want = model.state_dict()
    problems = [f"missing {', '.join(sorted(set(want) - set(sd)))}" if set(want) - set(sd) else "",
                f"unexpected {', '.join(sorted(set(sd) - set(want)))}" if set(sd) - set(want) else ""]
    problems += [f"{k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}"
                 for k, v in want.items() if k in sd and sd[k].shape != v.shape]
    if any(problems):
        raise ValueError(f"{checkpoint} does not fit {name}: " + "; ".join(p for p in problems if p))
    model.load_state_dict(sd)
    return model.eval()


def batchnorms(model: nn.Module) -> list[nn.Module]:
    """The model's batch-norm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x, batch: int = 250) -> bool:
    """Re-estimate every batch-norm layer's running mean and variance, in place, from the
    inputs ``x`` passed through the model as it now is (its weights read back from cells).

    Noisy weights shift each layer's activation statistics; the stored statistics no
    longer match and the error compounds through the network. The statistics are digital
    parameters, so this changes no cell. Returns False (model untouched) without BN layers.
    """
    norms = batchnorms(model)
    if not norms or len(x) == 0:
        return False
    momenta = [m.momentum for m in norms]
    model.eval()  # only the norms collect statistics (dropout and the like stay off)
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over all batches
        m.train()
    try:
        for i in range(0, len(x), batch):
            model(torch.from_numpy(x[i:i + batch]))
    finally:
        model.eval()
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    return True


@torch.no_grad()
def accuracy(model: nn.Module, x, y, batch: int = 500) -> float:
    """Top-1 accuracy on numpy arrays (batches of 500: a third less time than 2,000 on CPU, the
    same outputs)."""
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        out = model(torch.from_numpy(x[i:i + batch]))
        correct += int((out.argmax(1).numpy() == y[i:i + batch]).sum())
    return correct / len(y)
