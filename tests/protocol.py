"""Helpers for driver tests: board frames built independently, and a scripted loopback server.

Single-property protocol tests run in memory (:mod:`pcm_hil_drivers.testing`); for the
board their pairs are whole frames, made by :func:`framed`. :func:`scripted_server` is
the same (sent, reply) script on a real TCP connection, for what only a real connection
shows: terminators, timeouts, short reads and the board's framing on the wire.
"""
from __future__ import annotations

import re
import socket
import threading
import zlib
from contextlib import contextmanager
from typing import Iterator, Sequence

FRAME = re.compile(rb"\$([0-9A-F]{8})")


def board_frame(payload: bytes) -> bytes:
    """A board frame built independently of the driver's codec."""
    return b"$" + b"%08X" % len(payload) + payload + b"%08X" % zlib.crc32(payload) + b"\n"


def framed(pairs: Sequence[tuple[bytes, bytes | None]]) -> list[tuple[bytes, bytes | None]]:
    """Board (command, reply) payload pairs as frame pairs for an in-memory ProtocolAdapter.

    A reply starting with ``b"!raw:"`` is used as raw bytes (corrupted or truncated frames).
    """
    return [(board_frame(sent), None if reply is None else
             reply.removeprefix(b"!raw:") if reply.startswith(b"!raw:") else board_frame(reply))
            for sent, reply in pairs]


def _as_bytes(message: bytes | str) -> bytes:
    return message.encode() if isinstance(message, str) else message


class _Script(threading.Thread):
    """Serves one connection: whole frames (framed) or LF-terminated lines, compared byte for byte."""

    def __init__(self, pairs: Sequence[tuple[bytes | str, bytes | str | None]], framed_mode: bool) -> None:
        super().__init__(daemon=True)
        self.framed = framed_mode
        self.pairs = framed([(_as_bytes(s), None if r is None else _as_bytes(r)) for s, r in pairs]) if framed_mode \
            else [(_as_bytes(s), None if r is None else _as_bytes(r) + b"\n") for s, r in pairs]
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(10)
        self.consumed = 0
        self.failure: str | None = None
        self.stop = threading.Event()

    def _read_message(self, conn: socket.socket, buf: bytearray) -> bytes | None:
        """The next whole frame, or the next line without its LF; None at EOF."""
        while True:
            if self.framed:
                m = FRAME.match(bytes(buf[:9]))
                if m and len(buf) >= 18 + int(m.group(1), 16):
                    n = 18 + int(m.group(1), 16)
                    frame = bytes(buf[:n])
                    del buf[:n]
                    return frame
                if not m and len(buf) >= 9:
                    raise AssertionError(f"not a board frame: {bytes(buf[:20])!r}")
            else:
                i = buf.find(b"\n")
                if i >= 0:
                    line = bytes(buf[:i])
                    del buf[:i + 1]
                    return line
            chunk = conn.recv(1 << 20)
            if not chunk:
                return None
            buf.extend(chunk)

    def _accept(self) -> socket.socket | None:
        """The driver's connection, even one made just before the test ended; None if there was none."""
        self.sock.settimeout(0.05)
        while True:
            try:
                return self.sock.accept()[0]
            except socket.timeout:
                if self.stop.is_set():
                    return None
            except OSError:
                return None

    def run(self) -> None:
        conn = self._accept()
        if conn is None:
            return
        buf = bytearray()
        with conn:
            conn.settimeout(10)
            try:
                for sent, reply in self.pairs:
                    got = self._read_message(conn, buf)
                    if got != sent:
                        self.failure = f"message {self.consumed}: expected {sent!r}, got {got!r}"
                        return
                    self.consumed += 1
                    if reply is not None:
                        conn.sendall(reply)
                # anything more the driver sends is a failure too, up to what arrived before the end
                conn.settimeout(0.02)
                while True:
                    if buf:
                        raise AssertionError(f"unexpected extra message {bytes(buf[:60])!r}")
                    stopping = self.stop.is_set()
                    try:
                        chunk = conn.recv(1 << 16)
                    except socket.timeout:
                        if stopping:
                            return
                        continue
                    if not chunk:
                        return
                    buf.extend(chunk)
            except (AssertionError, OSError) as exc:
                self.failure = f"message {self.consumed}: {exc}"


@contextmanager
def scripted_server(pairs: Sequence[tuple[bytes | str, bytes | str | None]], framed: bool = False
                    ) -> Iterator[int]:
    """Yield the port of a scripted server; on exit assert every pair was consumed.

    Line mode: messages are LF-terminated text. Framed mode: pairs are payloads, sent and
    expected as board frames (see :func:`framed`, also for raw replies).
    """
    script = _Script(pairs, framed)
    script.start()
    try:
        yield script.port
    finally:
        script.stop.set()
        script.join(timeout=12)
        script.sock.close()
    assert script.failure is None, script.failure
    assert script.consumed == len(script.pairs), (
        f"only {script.consumed} of {len(script.pairs)} message pairs were consumed")
