#!/usr/bin/env python3
"""Calibrate a chip and check the model on fresh cells, in one go.

Measures (level sweep with program-and-verify, read noise, retention, faults), fits the
noise model, writes it with its PNG report, then programs fresh cells and prints how
well the model predicts them. Everything measured goes to the run store.

    python lab_scripts/calibrate_chip.py --cells 40000 --out chip7.json
    python lab_scripts/calibrate_chip.py --bench bench.toml --cells 4000 --validate-cells 2000
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pcm_hil_noisemodel.report import write_report
from pcm_hil.calibrate import CalibrationConfig, run_calibration, validate
from pcm_hil.app import ChipOptions, StageProgress, chip_arguments, chip_for_run, open_store, owned_run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[chip_arguments()])
    p.add_argument("--cells", type=int, default=CalibrationConfig.cells, help="cells to calibrate on")
    p.add_argument("--validate-cells", type=int, default=10_000, help="fresh cells for the check (0: skip)")
    p.add_argument("--out", default="noise-model.json", help="model file")
    p.add_argument("--run-dir", default="runs", help="run store directory")
    args = p.parse_args(argv)
    with open_store(args.run_dir) as store, chip_for_run(ChipOptions.of(args), store) as chip, \
            StageProgress(sys.stderr.isatty()) as bar:
        run_id, model = run_calibration(chip, store, CalibrationConfig(cells=args.cells, seed=args.seed), bar)
        model.save(args.out)
        data = {t: store.read(run_id, t) for t in ("programming", "retention", "trace")}
        png = write_report(model, data, Path(args.out).with_suffix(".png"))
        out = {"run_id": run_id, "noise_model": args.out, "report": str(png), **model.summary()}
        if args.validate_cells:
            check = owned_run(chip, store, "validation", args.validate_cells,  # on free cells
                              lambda cells: validate(chip, model, cells, progress=bar))
            out["validation"] = {k: v for k, v in check.items() if k != "per_level"}
    print(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
