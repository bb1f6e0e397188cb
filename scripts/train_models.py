#!/usr/bin/env python3
"""Train the reference models and write their checkpoints and manifest entries.

    python scripts/train_models.py lenet5-fmnist [--epochs N] [--seed S]

Writes pcm_hil/checkpoints/NAME.pt (a state dict) and records the command, accuracy,
epochs, seed and SHA-256 in pcm_hil/checkpoints/manifest.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from pcm_hil import datasets
from pcm_hil.models import CHECKPOINTS, accuracy, sha256, spec


def train(name: str, epochs: int | None, seed: int, batch: int = 128) -> dict:
    s = spec(name)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    full_train, test_set = datasets.load(s.dataset)
    train_set, val_set = datasets.hold_out(full_train, s.dataset)  # the validation split stays unseen in training
    model = s.build()
    epochs = epochs or s.epochs
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    rng = np.random.default_rng(seed)
    x, y = torch.from_numpy(train_set.x), torch.from_numpy(train_set.y)
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        for idx in np.array_split(rng.permutation(len(y)), max(1, len(y) // batch)):
            idx = torch.from_numpy(idx)
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
        val = accuracy(model, val_set.x, val_set.y)
        print(f"{name} epoch {epoch + 1}/{epochs}: validation accuracy {val:.4f} ({time.time() - t0:.0f} s)", flush=True)
    acc = accuracy(model, test_set.x, test_set.y)
    path = CHECKPOINTS / f"{name}.pt"
    torch.save(model.state_dict(), path)
    return {"file": path.name, "sha256": sha256(path), "dataset": s.dataset, "test_accuracy": acc, "validation_accuracy": val,
            "epochs": epochs, "seed": seed, "trained_on": f"{len(y)} of {len(full_train.y)} training examples "
                                                             "(the validation split held out)", "parameters": sum(p.numel() for p in model.parameters()),
            "command": f"python scripts/train_models.py {name} --epochs {epochs} --seed {seed}",
            "train_seconds": round(time.time() - t0), "torch": torch.__version__}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="+")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    CHECKPOINTS.mkdir(exist_ok=True)
    for name in args.names:
        entry = train(name, args.epochs, args.seed)
        path = CHECKPOINTS / "manifest.json"
        manifest = json.loads(path.read_text()) if path.exists() else {}
        manifest[name] = entry
        path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        print(json.dumps(entry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
