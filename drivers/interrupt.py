"""Defer Ctrl-C until the transaction in flight has finished (as QCoDeS does)."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def deferred_sigint() -> Iterator[None]:
    """Inside the block SIGINT is remembered, not raised; it is raised on exit.

    Only the main thread can own signal handlers: elsewhere this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[object] = []
    previous = signal.getsignal(signal.SIGINT)
    if getattr(previous, "_pcm_hil_deferring", False):  # nested: the outer block defers
        yield
        return

    def handler(signum, frame):  # noqa: ANN001
        received.append(frame)

    handler._pcm_hil_deferring = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(signal.SIGINT, received[-1])
        elif received:
            raise KeyboardInterrupt
