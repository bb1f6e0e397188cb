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
from pcm_hil.app import ChipOptions, chip_arguments, open_chip
from pcm_hil.program import program_verify
from pcm_hil.table import format_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[chip_arguments()])
    p.add_argument("--levels", type=float, nargs="+", default=[2.0, 6.0, 10.0, 14.0, 18.0], help="targets (µS)")
    p.add_argument("--cells", type=int, default=1000, help="cells per level")
    p.add_argument("--first-cell", type=int, default=0)
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
    cells = np.arange(args.first_cell, args.first_cell + n)
    target = np.repeat(args.levels, args.cells)
    rows = []
    with open_chip(ChipOptions.of(args)) as chip:
        res = program_verify(chip, cells, target, tolerance_us=args.tolerance)
        t_end = chip.now()
        with tqdm(total=args.until, desc="retention", unit="s", disable=not sys.stderr.isatty()) as bar:
            for k, t in enumerate(times):
                chip.wait(max(0.0, t_end + t - chip.now()))
                g = chip.read(cells, n_avg=args.n_avg)
                rows.append(pd.DataFrame({"cell": cells, "level_us": target, "read_idx": k,
                                          "age_s": chip.now() - t_end, "g_us": g, "converged": res.converged}))
                bar.update(t - bar.n)
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
