#!/usr/bin/env python3
"""Regenerate the shipped layer of the model cache: the fine-tunes of the default main job.

    OMP_NUM_THREADS=1 python scripts/ship_cache.py [lenet5-fmnist ...] [--run-dir DIR]

For each model (default: lenet5-fmnist) this runs the default main job,
``pcm-hil store --model NAME --json --run-dir DIR`` (emulated chip, default profile), with
the shipped layer off, so that every fine-tune it needs is computed and written to
``DIR/model-cache``: the analog model's noise-aware compression, the digital competitor's
pruned starts and its quantization-aware fine-tunes. Those files replace
``pcm_hil/checkpoints/cache/`` (entries of other models are dropped: name them all), and
``manifest.json`` there records what each entry is; tests/test_model_cache.py checks that
the entries match the keys the default job computes now. About 20 min per LeNet-5 on
2 cores. The cache is read-only at run time: nothing but this script writes it.

Which quantization-aware fine-tunes the job needs depends on the accuracy the chip run
reached (the competitor's target); a run that needs others computes them (slower, not wrong).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from pcm_hil.store_job import model_cache


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", default=["lenet5-fmnist"])
    p.add_argument("--run-dir", default=None, help="where to run the jobs (default: a temporary directory); a "
                                                    "run directory of an earlier call is reused, its cache with it")
    args = p.parse_args()
    out = model_cache.SHIPPED
    work = Path(args.run_dir or tempfile.mkdtemp(prefix="pcm-hil-ship-cache-"))
    env = {**os.environ, model_cache.SHIPPED_ENV: "off"}
    env.pop(model_cache.ENV, None)
    entries: dict[str, dict] = {}
    files: dict[str, Path] = {}
    for name in args.names:
        run_dir = work / name
        cmd = [sys.executable, "-m", "pcm_hil.cli", "store", "--model", name, "--json", "--run-dir", str(run_dir)]
        print("running", " ".join(cmd), flush=True)
        result = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True)
        record = json.loads(result.stdout)
        for path in sorted((run_dir / "model-cache").glob("*.pt")):
            entry = torch.load(path, weights_only=True)
            settings = json.loads(entry["settings"])
            entries[path.stem] = {"model": name, "settings": settings, "bytes": path.stat().st_size}
            files[path.stem] = path
        _starts_of_quantization_aware(name, entries, files)
        print(f"{name}: {sum(e['model'] == name for e in entries.values())} entries; best digital "
              f"{(record.get('best_digital') or {}).get('precision')}", flush=True)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for k, path in files.items():
        shutil.copyfile(path, out / f"{k}.pt")
    manifest = {"command": "python scripts/ship_cache.py " + " ".join(args.names), "torch": torch.__version__,
                "entries": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"{len(files)} entries, {sum(e['bytes'] for e in entries.values()) / 1e6:.1f} MB in {out}")
    return 0


def _starts_of_quantization_aware(name: str, entries: dict[str, dict], files: dict[str, Path]) -> None:
    """Record which entry (or ``reference``: the shipped checkpoint) each quantization-aware
    fine-tune started from; its key covers the start's weights, so the test can recompute it."""
    from pcm_hil.store_job.inputs import NetworkConfig, load_inputs

    inputs = load_inputs(NetworkConfig(name))
    x, y = inputs.train.x, inputs.train.y
    candidates = {"reference": (inputs.network, None)}
    for k, e in entries.items():
        if e["model"] == name and e["settings"]["stage"] != "quantization_aware":
            hit = torch.load(files[k], weights_only=True)
            net = copy.deepcopy(inputs.network)
            net.load_state_dict(hit["state_dict"], strict=True)
            candidates[k] = (net, hit["masks"])
    for k, e in entries.items():
        if e["model"] != name or e["settings"]["stage"] != "quantization_aware":
            continue
        s = e["settings"]
        for start, (net, masks) in candidates.items():
            params = dict(net.named_parameters())
            keep = ({n: np.ones(tuple(params[n].shape), bool) for n in inputs.names} if masks is None else
                    {n: m.numpy().astype(bool) for n, m in masks.items()})
            settings = model_cache.quantization_aware_settings(keep, s["bits"], s["clip"], s["epochs"], s["seed"])
            if model_cache.key(net, list(keep), x, y, settings) == k:
                e["start"] = start
                break
        else:
            raise SystemExit(f"no start matches the quantization-aware entry {k}")


if __name__ == "__main__":
    sys.exit(main())
