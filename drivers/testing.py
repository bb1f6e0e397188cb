"""In-memory protocol tests for drivers, as PyMeasure's ``ProtocolAdapter`` / ``expected_protocol``.

A test lists the (sent, reply) message pairs one property or action should exchange::

    with expected_protocol(Keithley2600, [("smua.source.levelv = 0.2", None)]) as smu:
        smu.smua.source_voltage_v = 0.2

Every message the driver writes must equal the next pair's ``sent`` (``reply`` None: the
instrument does not answer), and on leaving the block every pair must have been consumed
and every reply read. Text pairs (``str``) serve message instruments; byte pairs serve
byte-stream instruments such as the board, whose pairs are whole frames. No sockets, no
threads: a protocol test runs in microseconds. The transports themselves (termination,
timeouts, short reads) need real connections and are tested on loopback sockets.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator, Sequence, TypeVar

from .errors import InstrumentTimeout

Message = str | bytes
Pair = tuple[Message, Message | None]
T = TypeVar("T")


class ProtocolMismatch(AssertionError):
    """The driver did not exchange the scripted messages."""


class ProtocolAdapter:
    """A scripted in-memory transport: a MessageTransport (``str`` pairs) and a ByteTransport (``bytes`` pairs).

    ``pairs``: the expected (sent, reply) messages in order; ``timeout_s``: reported to the
    driver, never waited for. A mismatch raises :class:`ProtocolMismatch` at once, naming
    the pair. A ``read_exact`` that asks for more bytes than the scripted reply holds
    raises :class:`InstrumentTimeout`, as a real port would: so truncated replies can be
    scripted.
    """

    def __init__(self, pairs: Sequence[Pair], timeout_s: float = 1.0) -> None:
        self.pairs = list(pairs)
        self.timeout_s = timeout_s
        self.url = "protocol-adapter"
        self.lock = threading.RLock()
        self.consumed = 0
        self.closed = False
        self._pending: str | bytes | None = None  # the reply not yet read

    def _expect(self, got: Message) -> None:
        if self._pending is not None:
            raise ProtocolMismatch(f"message {self.consumed}: {got!r} written while the reply {self._pending!r} "
                                   "to the previous message was still unread")
        if self.consumed >= len(self.pairs):
            raise ProtocolMismatch(f"unexpected message {got!r}: all {len(self.pairs)} pairs already consumed")
        sent, reply = self.pairs[self.consumed]
        if got != sent:
            raise ProtocolMismatch(f"message {self.consumed}: expected {sent!r}, got {got!r}")
        self.consumed += 1
        self._pending = reply

    def _take(self, kind: type) -> Any:
        if self._pending is None:
            raise ProtocolMismatch(f"read after message {self.consumed - 1}, which has no scripted reply")
        if not isinstance(self._pending, kind):
            raise ProtocolMismatch(f"reply {self._pending!r} is scripted as {type(self._pending).__name__}, "
                                   f"the driver reads {kind.__name__}")
        return self._pending

    def write(self, message: Message) -> None:
        """Check ``message`` (without terminator; one frame for byte instruments) against the next pair."""
        if self.closed:
            raise ProtocolMismatch(f"{message!r} written after close()")
        self._expect(message)

    def read(self) -> str:
        """The whole scripted reply to the last message."""
        reply = self._take(str)
        self._pending = None
        return reply

    def read_exact(self, n: int) -> bytes:
        """The next ``n`` bytes of the scripted reply; :class:`InstrumentTimeout` if it holds fewer."""
        reply = self._take(bytes)
        if len(reply) < n:
            self._pending = None
            raise InstrumentTimeout(f"{self.url}: got {len(reply)} of {n} bytes within {self.timeout_s} s")
        self._pending = reply[n:] or None
        return reply[:n]

    def discard_input(self) -> None:
        self._pending = None

    def close(self) -> None:
        self.closed = True

    def assert_consumed(self) -> None:
        """Every pair sent and every reply read, else :class:`ProtocolMismatch`."""
        if self.consumed != len(self.pairs):
            raise ProtocolMismatch(f"only {self.consumed} of {len(self.pairs)} message pairs were consumed; "
                                   f"next expected: {self.pairs[self.consumed][0]!r}")
        if self._pending is not None:
            raise ProtocolMismatch(f"the reply {self._pending!r} to the last message was never read")


@contextmanager
def expected_protocol(instrument_class: type[T], pairs: Sequence[Pair], **kwargs: Any) -> Iterator[T]:
    """A driver built on a :class:`ProtocolAdapter` scripted with ``pairs``; on exit, all must be consumed.

    ``kwargs`` go to the driver's constructor (e.g. ``channels=("a",)``). The driver is not
    shut down on exit: script its safe-state messages and call ``shutdown()`` to test them.
    """
    adapter = ProtocolAdapter(pairs)
    yield instrument_class(adapter, **kwargs)  # type: ignore[call-arg]
    adapter.assert_consumed()
