"""Cells written behind a stored model's back: detect them before trusting a read-back.

The run store keeps which run owns which cells (``RunStore.cell_owners``), so pcm-hil never
writes a stored model's cells unless told to (``--overwrite RUN``). What the run store cannot
see (another run directory, a lab script, another program) :func:`check_unchanged` catches
when the model is loaded: with the chip's per-cell write counter where it has one (the
emulator), else by comparing every cell with the read-back of the store run.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .chip import Chip
from .run_store import RunStore

WRITES_TABLE = "cell_writes"
MOVED_US = 2.0           # a cell moved if it is this far (plus MOVED_REL of it) from its drifted read-back
MOVED_REL = 0.15
MOVED_FRACTION = 0.02    # more moved cells than this: the model's cells were written since it was stored


class CellsOverwritten(ValueError):
    """Cells of a stored model were written since it was stored: its read-back would be wrong."""


def record_writes(store: RunStore, run_id: str, chip: Chip, cells: np.ndarray) -> None:
    """Record each cell's write counter after programming (nothing where the chip has none)."""
    counts = chip.write_counts(cells)
    if counts is not None and WRITES_TABLE not in store.stages(run_id):
        store.append(run_id, WRITES_TABLE, pd.DataFrame({"cell": cells, "writes": counts}), stage=WRITES_TABLE)


def check_unchanged(store: RunStore, run_id: str, chip: Chip, cells: np.ndarray, reads_us: np.ndarray) -> None:
    """Raise :class:`CellsOverwritten` if cells of stored run ``run_id`` were written since:
    given to another run (``--overwrite``), pulsed (write counter), or, on a chip without
    counter, moved away from their read-back beyond drift and noise."""
    taken = store.overwritten_by(run_id)
    if taken and store.claim_source(taken[0]) is not None:
        raise CellsOverwritten(f"the cells of run {run_id} were written over by run {', '.join(taken)} (both recorded "
                               "before pcm-hil kept cell owners): the model is no longer on the chip; store it again")
    if taken:
        raise CellsOverwritten(f"the cells of run {run_id} were given to run {', '.join(taken)} (--overwrite): "
                               "the model is no longer on the chip; store it again")
    recorded = store.read(run_id, WRITES_TABLE)
    now = chip.write_counts(cells)
    if now is not None and len(recorded) == cells.size:
        written = np.flatnonzero(now != recorded["writes"].to_numpy(np.int64))
        if written.size:
            raise CellsOverwritten(
                f"{written.size} of the {cells.size} cells of run {run_id} were written since the model was stored "
                f"(first: cell {int(cells[written[0]])}; by a program or run directory pcm-hil does not see): "
                "its read-back would be wrong; store it again")
        return
    back = store.read(run_id, "readback")
    if len(back) != cells.size:
        return  # not read back yet: nothing to compare with
    then = back["read_us"].to_numpy(np.float64)
    ok = then > 1.0
    # the common drift since: of the cells' own ratios, the one that leaves the fewest cells moved
    # (robust where a median is not: with half the cells rewritten, the median ratio is theirs)
    ratios = np.append(np.quantile(reads_us[ok] / then[ok], np.linspace(0.02, 0.98, 49)) if ok.any() else [], 1.0)
    moved = min((np.abs(reads_us - r * then) > MOVED_US + MOVED_REL * r * then for r in ratios), key=np.count_nonzero)
    if moved.mean() > MOVED_FRACTION:
        raise CellsOverwritten(
            f"{int(moved.sum())} of the {cells.size} cells of run {run_id} moved more than {MOVED_US:g} µS "
            f"+ {MOVED_REL:.0%} from their read-back after the common drift: they were written since the model "
            "was stored; its read-back would be wrong; store it again")
