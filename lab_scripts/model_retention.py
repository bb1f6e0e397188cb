#!/usr/bin/env python3
"""Model retention: read a stored model back at log-spaced times and track its accuracy.

Takes a finished ``pcm-hil store`` run, reads its cells at log-spaced ages (time since
programming) up to ``--until``, and decodes the model each time with and without the
global drift compensation from its reference cells. Writes a CSV and a PNG (accuracy
versus age) and prints a table. On the emulator the run's saved chip is used and the
virtual clock makes a year instant; on a bench the script waits, showing progress
(Ctrl-C stops it and keeps what was read).

    pcm-hil store --retention 60 --run-dir runs          # then, with its run id:
    python lab_scripts/model_retention.py RUN --run-dir runs --until 3.2e7
    python lab_scripts/model_retention.py RUN --bench bench.toml --until 86400
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pandas as pd
from tqdm import tqdm

from pcm_hil.checkpoint import wait_until
from pcm_hil.app import ChipOptions, chip_arguments, chip_for_run, open_store
from pcm_hil.store_job import load_run
from pcm_hil.table import format_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[chip_arguments()])
    p.add_argument("run", help="a finished store run")
    p.add_argument("--run-dir", default="runs", help="run store directory (default ./runs)")
    p.add_argument("--until", type=float, default=365 * 86400.0, help="last read, s after programming (default 1 year)")
    p.add_argument("--points", type=int, default=8, help="log-spaced reads (default 8)")
    p.add_argument("--out", default="model-retention", help="output prefix (.csv, .png)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if not 2 <= args.points <= 100:
        p.error(f"--points must be in [2, 100], got {args.points}")
    with open_store(args.run_dir) as store:
        info = store.run(args.run)
        if info["kind"] != "store" or "programmed" not in store.stages(args.run):
            p.error(f"run {args.run} is not a store run whose cells were programmed")
        with chip_for_run(ChipOptions.of(args), store, args.run) as chip:
            t_prog = store.stages(args.run)["programmed"]["t_chip_s"]
            start = max(chip.now() - t_prog, 1.0)
            if not args.until > start:
                p.error(f"--until must be later than the chip's age now, {start:.0f} s after programming")
            ages = np.geomspace(start, args.until, args.points)
            rows = []
            try:
                with tqdm(total=len(ages), desc="reads", disable=args.json or not sys.stderr.isatty()) as bar:
                    for age in ages:
                        wait_until(chip, t_prog + age)
                        r = load_run(chip, store, args.run)
                        rows.append({"age_s": r["age_s"], "accuracy": r["accuracy_loaded"],
                                     "accuracy_uncompensated": r["accuracy_loaded_uncompensated"],
                                     "gain_median": float(np.median(r["drift_compensation"]["alpha"]))})
                        bar.update()
            except KeyboardInterrupt:
                print(f"stopped after {len(rows)} reads", file=sys.stderr)
    stored = info.get("result") or {}
    result = {"run_id": args.run, "model": r["model"] if rows else None,
              "accuracy_reference": stored.get("accuracy_reference"),
              "accuracy_compressed": stored.get("accuracy_compressed"), "reads": rows}
    if rows:
        pd.DataFrame(rows).to_csv(args.out + ".csv", index=False)
        _plot(rows, result, args.out + ".png")
        result["files"] = [args.out + ".csv", args.out + ".png"]
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(["age (s)", "accuracy", "uncompensated", "median gain"],
                           [[f"{x['age_s']:.3g}", f"{x['accuracy']:.2%}", f"{x['accuracy_uncompensated']:.2%}",
                             f"{x['gain_median']:.3f}"] for x in rows], title=f"run {args.run} over time"))
    return 0 if rows else 130


def _plot(rows: list[dict], result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    age = [r["age_s"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.semilogx(age, [100 * r["accuracy"] for r in rows], "o-", label="drift compensated (reference cells)")
    ax.semilogx(age, [100 * r["accuracy_uncompensated"] for r in rows], "s--", label="uncompensated")
    reference, compressed = result["accuracy_reference"], result["accuracy_compressed"]
    if reference is not None:
        ax.axhline(100 * reference, color="k", lw=0.8, label="reference (float)")
        ax.axhline(100 * reference - 0.5, color="k", lw=0.8, ls=":", label="reference − 0.5 pp")
    if compressed is not None:
        ax.axhline(100 * compressed, color="tab:green", lw=0.8, ls="-.", label="compressed, stored digitally")
    for t, name in ((3600, "1 h"), (86400, "1 day"), (30 * 86400, "1 month"), (365 * 86400, "1 year")):
        if age[0] <= t <= age[-1]:
            ax.axvline(t, color="0.8", lw=0.8)
            ax.text(t, ax.get_ylim()[0], f" {name}", rotation=90, va="bottom", fontsize=8, color="0.4")
    ax.set(xlabel="time since programming (s)", ylabel="top-1 accuracy (%)",
           title=f"{result['model']} stored in run {result['run_id']}, over time")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
