#!/usr/bin/env python3
"""Programming curve: conductance versus SET pulse number, for several pulse amplitudes.

RESETs N cells per amplitude, applies P identical SET pulses, reads after each one.
Writes a CSV (one row per cell and pulse) and a PNG of median and 10–90 % band.

    python lab_scripts/programming_curve.py --amplitudes 0.7 0.85 1.0 1.2 --pulses 30
    python lab_scripts/programming_curve.py --bench bench.toml --cells 64
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from pcm_hil.app import ChipOptions, chip_arguments, chip_for_run, open_store, owned_run
from pcm_hil.table import format_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[chip_arguments()])
    p.add_argument("--amplitudes", type=float, nargs="+", default=[0.7, 0.85, 1.0, 1.2], help="SET amplitudes (V)")
    p.add_argument("--width", type=float, default=100e-9, help="SET width (s)")
    p.add_argument("--pulses", type=int, default=30, help="SET pulses per cell")
    p.add_argument("--cells", type=int, default=500, help="cells per amplitude")
    p.add_argument("--run-dir", default="runs", help="run store: the cells used are claimed there (default ./runs)")
    p.add_argument("--overwrite", metavar="RUN", help="reuse the cells of this run (its model is lost)")
    p.add_argument("--reset-amplitude", type=float, default=2.2, help="RESET amplitude (V)")
    p.add_argument("--n-avg", type=int, default=8, help="reads averaged per read")
    p.add_argument("--out", default="programming_curve", help="output prefix (.csv, .png)")
    args = p.parse_args(argv)
    rows = []

    def measure(chip, cells: np.ndarray) -> dict:  # noqa: ANN001
        for k, amp in enumerate(args.amplitudes):
            part = cells[k * args.cells:(k + 1) * args.cells]
            chip.pulse(part, "RESET", args.reset_amplitude, 50e-9)
            rows.append(pd.DataFrame({"amplitude_v": amp, "cell": part, "pulse": 0,
                                      "g_us": chip.read(part, n_avg=args.n_avg)}))
            for n in range(1, args.pulses + 1):
                chip.pulse(part, "SET", amp, args.width)
                rows.append(pd.DataFrame({"amplitude_v": amp, "cell": part, "pulse": n,
                                          "g_us": chip.read(part, n_avg=args.n_avg)}))
        return {"amplitudes_v": args.amplitudes, "pulses": args.pulses, "first_cell": int(cells[0])}

    with open_store(args.run_dir) as store, chip_for_run(ChipOptions.of(args), store) as chip:
        # the cells are claimed like any job's: a stored model's cells are never pulsed
        owned_run(chip, store, "programming_curve", args.cells * len(args.amplitudes), lambda c: measure(chip, c),
                  {"amplitudes_v": args.amplitudes}, args.overwrite)
    df = pd.concat(rows, ignore_index=True)
    df.to_csv(args.out + ".csv", index=False)
    stats = df.groupby(["amplitude_v", "pulse"])["g_us"].quantile([0.1, 0.5, 0.9]).unstack()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for amp, part in stats.groupby(level=0):
        x = part.index.get_level_values(1)
        ax.plot(x, part[0.5], label=f"{amp:g} V")
        ax.fill_between(x, part[0.1], part[0.9], alpha=0.2)
    ax.set(xlabel="SET pulse number", ylabel="G (µS), median and 10–90 %",
           title=f"programming curve ({args.width * 1e9:g} ns SET pulses)")
    ax.legend(title="amplitude")
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=110)
    last = stats.xs(args.pulses, level=1)
    first = stats.xs(1, level=1)
    print(format_table(["amplitude_V", "G after 1 pulse", f"G after {args.pulses}", "p10", "p90"],
                       [[a, first.loc[a, 0.5], last.loc[a, 0.5], last.loc[a, 0.1], last.loc[a, 0.9]]
                        for a in last.index]))
    print(f"wrote {args.out}.csv and {args.out}.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
