"""Checkpoints, resume and clean stops for long procedures.

A :class:`VerifyJournal` writes the per-cell state of a program-and-verify loop to the run
store as it goes; :meth:`VerifyJournal.load` turns it back into a
:class:`~pcm_hil.program.VerifyState` to resume from. Before rows are written the chip is
made durable (``chip.sync()``: a no-op on hardware, whose cells are non-volatile; the
emulator saves its state file), so the store never claims more than the chip holds.

:class:`StopRequest` turns the first Ctrl-C (or SIGTERM) into a request to stop after the
transaction in flight; a second one aborts at once, and so does a request that no procedure
takes up in time.
"""
from __future__ import annotations

import _thread
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from .chip import Chip
from .program import VerifyState
from .run_store import RunStore

TABLE = "verify_checkpoint"


class Interrupted(Exception):
    """A procedure stopped on request; its run is resumable."""

    def __init__(self, run_id: str, stage: str) -> None:
        super().__init__(f"run {run_id} stopped during {stage}; it can be resumed")
        self.run_id, self.stage = run_id, stage


@contextmanager
def recording_outcome(store: RunStore, run_id: str) -> Iterator[None]:
    """Record why a run ended early (``interrupted`` or ``failed: ...``), then re-raise."""
    try:
        yield
    except Interrupted:
        store.finish(run_id, status="interrupted")
        raise
    except BaseException as exc:
        store.finish(run_id, status=f"failed: {type(exc).__name__}: {exc}"[:500])
        raise


class VerifyJournal:
    """Per-cell checkpoints of one program-and-verify loop (``part``) of a run.

    Used as the ``checkpoint`` callback of :func:`~pcm_hil.program.program_verify`: the
    cells changed since the last flush are written at most every ``every_s`` seconds and
    always at the end, each flush one committed transaction.
    """

    def __init__(self, store: RunStore, run_id: str, part: str, cells: np.ndarray, every_s: float = 2.0,
                 sync: Callable[[], None] | None = None) -> None:
        self.store, self.run_id, self.part = store, run_id, part
        self.cells = np.asarray(cells, np.int64)
        self.every_s, self.sync = every_s, sync or (lambda: None)
        self._dirty = np.zeros(self.cells.size, bool)
        self._last = time.monotonic()
        self.seq = 0

    def load(self) -> VerifyState | None:
        """The state at the last flush, or None when nothing was written yet."""
        df = self.store.read(self.run_id, TABLE)
        if df.empty or not (df["part"] == self.part).any():
            return None
        df = df[df["part"] == self.part].sort_values("seq", kind="stable").drop_duplicates("cell", keep="last")
        pos = np.searchsorted(self.cells, df["cell"].to_numpy())
        if (pos >= self.cells.size).any() or (self.cells[np.minimum(pos, self.cells.size - 1)] != df["cell"]).any():
            raise ValueError(f"checkpoint of run {self.run_id} names cells outside the run's layout")
        st = VerifyState.fresh(self.cells.size)
        st.final_us[pos] = df["final_us"].to_numpy(np.float32)
        for name in ("pulses", "resets", "since_reset"):
            getattr(st, name)[pos] = df[name].to_numpy(np.int64)
        st.need_reset[pos] = df["need_reset"].to_numpy(bool)
        st.status[pos] = df["status"].to_numpy(np.int8)
        st.t_read_s[pos] = df["t_read_s"].to_numpy(np.float64)
        st.iteration = int(df["iteration"].max()) + 1
        self.seq = int(df["seq"].max()) + 1
        return st

    def __call__(self, state: VerifyState, changed: np.ndarray) -> None:
        self._dirty[changed] = True
        final = changed.size == 0
        if final or time.monotonic() - self._last >= self.every_s:
            self.flush(state)

    def flush(self, state: VerifyState) -> None:
        pos = np.flatnonzero(self._dirty)
        if pos.size == 0:
            return
        self.sync()
        self.store.append(self.run_id, TABLE, pd.DataFrame({
            "part": self.part, "seq": self.seq, "cell": self.cells[pos], **state.rows(pos)}))
        self._dirty[pos] = False
        self.seq += 1
        self._last = time.monotonic()


def wait_until(chip: Chip, t_end_s: float, between: Callable[[float], None] | None = None) -> None:
    """Wait by the chip's clock until ``t_end_s``, in slices, calling ``between(now)`` after
    each (progress, or raising to honour a stop request). On a real clock a slice lasts at
    most 2 s, so Ctrl-C is prompt; on a virtual clock slices grow to 1 % of the wait."""
    total = t_end_s - chip.now()
    big = max(1.0, total / 100)
    step = min(2.0, big)
    while (left := t_end_s - chip.now()) > 0:
        t0 = time.monotonic()
        chip.wait(min(step, left))
        if time.monotonic() - t0 < 0.25 * min(step, left):  # time passes faster than the wall clock
            step = big
        if between is not None:
            between(chip.now())


class StopRequest:
    """``with StopRequest() as stop:`` the first Ctrl-C or SIGTERM sets ``stop()`` to True (the
    procedure ends after the transaction in flight, resumable); a second one aborts at once
    (KeyboardInterrupt, deferred by the drivers until the exchange on the wire is complete).
    A request that no procedure takes up aborts too: after ``grace_s`` in a stage that does
    not poll (preparing a model), or after three of its usual intervals in a loop that polls
    slowly (a long transaction on a bench). Outside the main thread it only offers
    :meth:`request`."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, message: str = "stopping after the transaction in flight (Ctrl-C again to abort)",
                 grace_s: float = 1.5) -> None:
        self.message, self.grace_s = message, grace_s
        self._event = threading.Event()
        self._taken = threading.Event()
        self._previous: dict[int, object] = {}
        self._polls: list[float] = []  # when stop() was last asked (the last few times)

    def __call__(self) -> bool:
        self._polls = [*self._polls[-7:], time.monotonic()]
        if self._event.is_set():
            self._taken.set()  # a procedure saw the request: it stops cleanly, no abort needed
            return True
        return False

    def request(self) -> None:
        self._event.set()

    def _watch(self) -> None:
        """Abort unless a procedure takes the request up in time (see the class)."""
        asked = time.monotonic()
        while not self._taken.wait(0.05):
            now, polls = time.monotonic(), self._polls
            usual = float(np.median(np.diff(polls))) if len(polls) >= 3 else 0.0
            if now - asked >= self.grace_s and now - (polls[-1] if polls else asked) > max(self.grace_s, 3 * usual):
                _thread.interrupt_main(signal.SIGINT)  # through the SIGINT handler in place (deferred on the wire)
                return

    def _handler(self, signum, frame) -> None:  # noqa: ANN001
        if self._event.is_set():
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            _thread.interrupt_main(signal.SIGINT)  # a second SIGTERM: abort as a second Ctrl-C would
            return
        self._event.set()
        print(f"\n{self.message}", file=sys.stderr, flush=True)
        threading.Thread(target=self._watch, daemon=True, name="stop-watchdog").start()

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        self._taken.set()  # ends the watchdog
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
