#!/usr/bin/env python3
"""Retention: program cells to several levels, read them at log-spaced times, fit drift.

On the emulator the virtual clock makes a day instant; on a bench the script waits,
showing an ETA. Writes a CSV and a log-log PNG; prints ν per level.

    python lab_scripts/retention.py --levels 2 6 10 14 18 --until 86400
    python lab_scripts/retention.py --bench bench.toml --cells 200 --until 3600
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd
from tqdm import tqdm

from pcm_hil_noisemodel.stats import cell_slopes
from pcm_hil.app import ChipOptions, chip_arguments, chip_for_run, open_store, owned_run
from pcm_hil.program import program_verify
from pcm_hil.table import format_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[chip_arguments()])
    p.add_argument("--levels", type=float, nargs="+", default=[2.0, 6.0, 10.0, 14.0, 18.0], help="targets (µS)")
    p.add_argument("--cells", type=int, default=1000, help="cells per level")
    p.add_argument("--run-dir", default="runs", help="run store: the cells used are claimed there (default ./runs)")
    p.add_argument("--overwrite", metavar="RUN", help="reuse the cells of this run (its model is lost)")
    p.add_argument("--tolerance", type=float, default=0.5, help="verify tolerance (µS)")
    p.add_argument("--t0", type=float, default=20.0, help="first read after programming (s)")
    p.add_argument("--until", type=float, default=86400.0, help="last read after programming (s)")
    p.add_argument("--points", type=int, default=10, help="log-spaced read times")
    p.add_argument("--n-avg", type=int, default=8)
    p.add_argument("--out", default="retention", help="output prefix (.csv, .png)")
    args = p.parse_args(argv)
    if not args.until > args.t0 > 0:
        p.error("need 0 < --t0 < --until")
    times = np.geomspace(args.t0, args.until, args.points)
    n = args.cells * len(args.levels)
    target = np.repeat(args.levels, args.cells)
    rows = []

    def measure(chip, cells: np.ndarray) -> dict:  # noqa: ANN001
        res = program_verify(chip, cells, target, tolerance_us=args.tolerance)
        t_end = chip.now()
        with tqdm(total=args.until, desc="retention", unit="s", disable=not sys.stderr.isatty()) as bar:
            for k, t in enumerate(times):
                chip.wait(max(0.0, t_end + t - chip.now()))
                g = chip.read(cells, n_avg=args.n_avg)
                rows.append(pd.DataFrame({"cell": cells, "level_us": target, "read_idx": k,
                                          "age_s": chip.now() - t_end, "g_us": g, "converged": res.converged}))
                bar.update(t - bar.n)
        return {"levels_us": args.levels, "first_cell": int(cells[0]), "yield": float(res.converged.mean())}

    with open_store(args.run_dir) as store, chip_for_run(ChipOptions.of(args), store) as chip:
        # the cells are claimed like any job's: a stored model's cells are never pulsed
        owned_run(chip, store, "retention", n, lambda c: measure(chip, c), {"levels_us": args.levels}, args.overwrite)
    df = pd.concat(rows, ignore_index=True)
    df.to_csv(args.out + ".csv", index=False)
    ok = df[df["converged"]]
    table = []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for lv, part in ok.groupby("level_us"):
        g = part.pivot_table(index="cell", columns="read_idx", values="g_us")
        age = part.pivot_table(index="cell", columns="read_idx", values="age_s")
        good = (g > 0).all(axis=1)
        nu = -cell_slopes(np.log(age[good].to_numpy() / args.t0), np.log(g[good].to_numpy()))[0]
        table.append([lv, int(good.sum()), nu.mean(), nu.std(), g.median().iloc[-1] / g.median().iloc[0]])
        ax.loglog(age.median(), g.median(), "o-", label=f"{lv:g} µS: ν = {nu.mean():.3f}")
    ax.set(xlabel="time since programming (s)", ylabel="median G (µS)", title="retention")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=110)
    print(format_table(["level_us", "cells", "nu_mean", "nu_std", "G(end)/G(t0)"], table))
    print(f"wrote {args.out}.csv and {args.out}.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
