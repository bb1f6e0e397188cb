"""The application layer: what the command line and the lab scripts share.

Opening a chip (emulated, or a bench file), the chip an earlier run used, the noise model
for a job (a file, or a calibration now), the run store of a run directory, and progress
bars per stage. Nothing here parses arguments or prints results.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pcm_hil_noisemodel import NoiseModel

from .calibrate import CalibrationConfig, run_calibration
from .checkpoint import recording_outcome
from .chip import Chip, Geometry
from .run_store import CellClaim, RunStore

STORE_FILE = "pcm-hil.sqlite"


@dataclass(frozen=True)
class ChipOptions:
    """Which chip: ``bench`` (a bench TOML file) or the emulator with ``profile`` and ``seed``."""

    bench: str | None = None
    profile: str = "pcm-realistic"
    seed: int = 0

    def __post_init__(self) -> None:
        if type(self.seed) is not int or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2**63 - 1], got {self.seed!r}")

    @classmethod
    def of(cls, args: argparse.Namespace) -> "ChipOptions":
        """From options declared by :func:`chip_arguments`."""
        return cls(bench=args.bench, profile=args.profile, seed=args.seed)


def chip_arguments() -> argparse.ArgumentParser:
    """A parent parser with ``--emulated``/``--bench FILE``, ``--profile`` and ``--seed``, for
    the command line and lab scripts alike (``ArgumentParser(parents=[chip_arguments()])``)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--emulated", action="store_true", default=True, help="use the in-process emulated chip (default)")
    g.add_argument("--bench", metavar="FILE", help="use the instrument bench described by a bench TOML file")
    p.add_argument("--profile", default="pcm-realistic",
                   help="emulator device profile: preset name or .toml/.json file (default pcm-realistic)")
    p.add_argument("--seed", type=int, default=0, help="chip seed (emulator), also seeds the job (default 0)")
    return p


def open_chip(opts: ChipOptions, geometry: Geometry | None = None) -> Chip:
    """The chip ``opts`` names; ``geometry`` applies to the emulator (a bench file has its own)."""
    if opts.bench:
        from .bench import BenchChip

        return BenchChip.from_file(opts.bench)
    from .emulator import EmulatedChip

    return EmulatedChip(geometry, profile=opts.profile, seed=opts.seed)


def open_store(run_dir: str | Path) -> RunStore:
    """The run store of a run directory."""
    return RunStore(Path(run_dir) / STORE_FILE)


def chip_for_run(opts: ChipOptions, store: RunStore, run_id: str | None = None) -> Chip:
    """The chip for a new run (``opts``), or the one an earlier run ``run_id`` used, locked
    for this process (``RunLocked`` if another one drives it). An emulated chip lives in the
    run directory (``store.chip_file``) like a chip on a bench: every run of the directory
    finds the cells as the runs before left them."""
    from .emulator import EmulatedChip

    if run_id is not None:
        recorded = store.run(run_id)["settings"].get("chip_id")  # names an unknown run before anything else
    if opts.bench:
        chip = open_chip(opts)
    elif run_id is None:
        chip = open_chip(opts)
        if store.chip_file(chip.chip_id()).exists():
            chip = EmulatedChip.load_state(store.chip_file(chip.chip_id()))
    else:
        # runs recorded before the chip lived in the run directory kept an emulated chip of their own
        state = store.run_file(run_id, "chip")
        if not state.exists() and recorded:
            state = store.chip_file(recorded)
        if not state.exists():
            raise ValueError(f"run {run_id} has no saved emulated chip ({state}); give --bench FILE for a real chip")
        chip = EmulatedChip.load_state(state)
    try:
        store.lock_chip(chip.chip_id())
    except BaseException:
        chip.close()
        raise
    return chip


def owned_run(chip: Chip, store: RunStore, kind: str, count: int, work: Callable[[np.ndarray], dict[str, Any]],
              settings: dict[str, Any] | None = None, overwrite: str | None = None) -> dict[str, Any]:
    """Run ``work(cells)`` as a run of ``kind`` on ``count`` free cells it claims (or the cells
    of run ``overwrite``); the result is recorded with the run and returned with its id."""
    from . import __version__

    run_id = store.create_run(kind, {"procedure": kind, "software": f"pcm-hil {__version__}",
                                     "chip": chip.identity(), "chip_id": chip.chip_id(), **(settings or {})},
                              CellClaim(chip.chip_id(), chip.geometry.n_cells, count, overwrite=overwrite))
    with recording_outcome(store, run_id):
        chip.attach_state(store.chip_file(chip.chip_id()))
        result = {"run_id": run_id, **work(store.cells_of(run_id))}
        chip.sync()
    store.finish(run_id, result=result)
    return result


def noise_model_for(chip: Chip, store: RunStore, path: str | None, seed: int = 0,
                    progress: Callable[[str, float, float], None] | None = None,
                    stop: Callable[[], bool] | None = None, purpose: dict[str, Any] | None = None) -> NoiseModel:
    """The noise model in ``path`` (checked to belong to ``chip``), or one calibrated now on
    the chip's last free cells (its run records ``purpose``: what the job will do with it)."""
    if path:
        model = NoiseModel.load(path)
        chip.require_same_chip(model.provenance.get("chip_id"), f"noise model {path} was fitted")
        return model
    n = chip.geometry.n_cells
    cells = min(CalibrationConfig.cells, n // 4)
    _, model = run_calibration(chip, store, CalibrationConfig(cells=cells, seed=seed), progress=progress, stop=stop,
                               from_end=True, purpose=purpose)
    return model


class StageProgress:
    """One tqdm bar per stage of a procedure (``progress(stage, done, total)``); silent when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bar, self.stage = enabled, None, None

    def __call__(self, stage: str, done: float, total: float) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=stage, leave=False, dynamic_ncols=True)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "StageProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
