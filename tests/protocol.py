"""``expected_protocol``: a scripted instrument on a real loopback socket.

Like PyMeasure's helper of the same name, a test lists (sent, reply) message pairs; the
server checks every message the driver sends against the next pair, answers with its
reply (None: no reply), and the test fails unless every pair was consumed. Messages are
real bytes on a real TCP connection: LF-terminated lines, or board frames.
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


class _Script(threading.Thread):
    def __init__(self, pairs: Sequence[tuple[bytes | str, bytes | str | None]], framed: bool) -> None:
        super().__init__(daemon=True)
        self.pairs, self.framed = list(pairs), framed
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(10)
        self.consumed = 0
        self.failure: str | None = None
        self.stop = threading.Event()

    def _read_message(self, conn: socket.socket, buf: bytearray) -> bytes | None:
        while True:
            if self.framed:
                m = FRAME.match(bytes(buf[:9]))
                if m:
                    n = int(m.group(1), 16)
                    if len(buf) >= 9 + n + 9:
                        frame = bytes(buf[:18 + n])
                        del buf[:18 + n]
                        payload = frame[9:9 + n]
                        if frame[-9:] != b"%08X\n" % zlib.crc32(payload):
                            raise AssertionError(f"bad CRC in frame {frame[:40]!r}")
                        return payload
                elif len(buf) >= 9:
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

    def run(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        buf = bytearray()
        with conn:
            conn.settimeout(10)
            try:
                for sent, reply in self.pairs:
                    got = self._read_message(conn, buf)
                    expected = sent.encode() if isinstance(sent, str) else sent
                    if got != expected:
                        self.failure = f"message {self.consumed}: expected {expected!r}, got {got!r}"
                        return
                    self.consumed += 1
                    if reply is not None:
                        raw = reply.encode() if isinstance(reply, str) else reply
                        conn.sendall(board_frame(raw) if self.framed and not raw.startswith(b"!raw:") else
                                     raw.removeprefix(b"!raw:") if self.framed else raw + b"\n")
                # anything more the driver sends is a failure too
                conn.settimeout(0.02)
                while not self.stop.is_set():
                    if buf:
                        raise AssertionError(f"unexpected extra message {bytes(buf[:60])!r}")
                    try:
                        chunk = conn.recv(1 << 16)
                    except socket.timeout:
                        continue
                    if not chunk:
                        return
                    buf.extend(chunk)
            except (AssertionError, OSError) as exc:
                self.failure = f"message {self.consumed}: {exc}"


@contextmanager
def expected_protocol(pairs: Sequence[tuple[bytes | str, bytes | str | None]], framed: bool = False
                      ) -> Iterator[int]:
    """Yield the port of a scripted server; on exit assert every pair was consumed.

    In framed mode a reply starting with ``b"!raw:"`` is sent as raw bytes (to script
    corrupted or truncated frames).
    """
    script = _Script(pairs, framed)
    script.start()
    try:
        yield script.port
    finally:
        script.stop.set()
        script.sock.close()
        script.join(timeout=10)
    assert script.failure is None, script.failure
    assert script.consumed == len(script.pairs), (
        f"only {script.consumed} of {len(script.pairs)} message pairs were consumed")
