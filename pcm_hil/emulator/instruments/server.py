"""TCP servers on loopback for the emulated instruments (one thread per connection).

Instrument state lives in the emulator object, not in the connection: reconnecting
finds the instrument as it was, like a real one. A malformed message never stops the
server; a truncated board frame is discarded after ``frame_timeout_s``.
"""
from __future__ import annotations

import ipaddress
import socket
import socketserver
import threading
import time


from pcm_hil_drivers import board_protocol as bp
from pcm_hil_drivers.errors import ProtocolError

from .faults import LINE_TRANSIENT_CODE, TRANSIENT_CODE, FaultInjector

MAX_LINE = 1 << 20


HEX_UPPER = frozenset(b"0123456789ABCDEF")
BACKLOG = 512  # listen backlog: bursts of connections are queued, not refused and retried


def check_loopback(host: str) -> str:
    """Refuse anything but a loopback address: the virtual bench is never exposed.

    ``[::1]`` (bracketed IPv6) is accepted and returned without brackets."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ok = ipaddress.ip_address(socket.gethostbyname(bare) if bare == "localhost" else bare).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"the virtual bench binds to loopback only (127.0.0.0/8 or ::1), got {host!r}")
    return bare


def is_ipv6(host: str) -> bool:
    return ":" in host


def strict_payload_length(header: bytes) -> int:
    """Payload length from a frame header: ``$`` and exactly 8 upper-case hex digits.

    Stricter than ``int(x, 16)``, which also takes ``+``, ``_``, spaces and lower case."""
    if len(header) != bp.HEADER_LEN or header[:1] != bp.FRAME_START or not set(header[1:]) <= HEX_UPPER:
        raise ProtocolError(f"bad frame header {header[:16]!r}: expected '$' and 8 upper-case hex digits")
    return bp.payload_length(header)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = BACKLOG

    def __init__(self, host: str, port: int, handler: type, emulator: object, frame_timeout_s: float,
                 faults: "FaultInjector | None" = None) -> None:
        self.address_family = socket.AF_INET6 if is_ipv6(host) else socket.AF_INET
        self.emulator = emulator
        self.frame_timeout_s = frame_timeout_s
        self.faults = faults
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        self.dead = False  # fault "dead": the instrument never answers again
        super().__init__((host, port), handler)

    def close_connections(self) -> None:
        with self.conn_lock:
            for s in list(self.connections):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def setup(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.conn_lock:
            self.server.connections.add(self.request)

    def finish(self) -> None:
        with self.server.conn_lock:
            self.server.connections.discard(self.request)
            last = not self.server.connections
        lost = getattr(self.server.emulator, "host_lost", None)
        if lost is not None:  # interlock: the controlling host (or the last one) is gone, outputs off
            lost(self, last)

    def _die(self) -> None:
        """Fault ``dead``: from now on every connection is closed at once, forever."""
        self.server.dead = True
        self.server.close_connections()


class LineHandler(_Handler):
    """LF-terminated text messages (SCPI, TSP); CR before LF is ignored.

    Only complete lines run: input without its line ending when the client disconnects
    (a client that died mid-command) is discarded, never executed."""

    def handle(self) -> None:
        if self.server.dead:
            return
        f = self.request.makefile("rb")
        overlong = False
        while True:
            try:
                raw = f.readline(MAX_LINE)
            except OSError:
                return
            if not raw.endswith(b"\n"):
                if len(raw) < MAX_LINE:  # EOF: a truncated command is dropped
                    return
                if not overlong:
                    self.server.emulator.errors.push(-223, "Too much data")
                overlong = True  # the rest of this line is discarded too
                continue
            if overlong:
                overlong = False
                continue
            line = raw.decode("latin-1").rstrip("\r\n")
            if self.server.faults is not None:
                if not self._faulty(line):
                    return
                continue
            reply = self.server.emulator.handle(line)
            if reply is not None:
                try:
                    self.request.sendall(reply.encode("latin-1", "replace") + b"\n")
                except OSError:
                    return

    def _faulty(self, line: str) -> bool:
        """Serve one line under fault injection; False when the connection is gone."""
        emu, faults = self.server.emulator, self.server.faults
        kind = faults.draw()
        if kind == "dead":
            self._die()
            return False
        if kind == "error":  # not executed; the instrument queues an error, a query gets no reply
            emu.errors.push(LINE_TRANSIENT_CODE, "System error;transient fault, command not executed")
            return True
        if kind == "silent":
            time.sleep(faults.plan.silent_s)
            return True
        if kind == "drop":
            if faults.coin():
                emu.handle(line)
            try:
                self.request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return False
        if kind == "stuck":
            with emu.model.lock:
                emu.model.chip.inject_stuck(faults.stuck_cells(emu.model.chip.geometry.n_cells))
        if kind == "corrupt_request" and line:  # a flipped bit on the way in: the instrument runs what arrived
            i = len(line) // 2
            line = line[:i] + chr(ord(line[i]) ^ 0x40) + line[i + 1:]
        offset = kind == "offset" and hasattr(emu, "read_offset_us")  # the SMU: a reading that measures wrong
        if offset:
            emu.read_offset_us = faults.plan.offset_us
        try:
            reply = emu.handle(line)
        finally:
            if offset:
                emu.read_offset_us = 0.0
        if reply is None:
            return True
        data = reply.encode("latin-1", "replace") + b"\n"
        if kind == "delay":
            time.sleep(faults.plan.delay_s)
        elif kind == "corrupt":
            i = (len(data) - 1) // 2
            data = data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1:]
        elif kind == "truncate":
            try:
                self.request.sendall(data[: len(data) // 2])
            except OSError:
                return False
            time.sleep(faults.plan.delay_s)
            return True
        try:
            self.request.sendall(data)
        except OSError:
            return False
        return True


class FrameHandler(_Handler):
    """Board frames: header, payload and CRC; garbage and truncation are answered with ERR."""

    def _recv_exact(self, n: int) -> bytes | None:
        chunks, got = [], 0
        while got < n:
            chunk = self.request.recv(min(n - got, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _reply(self, payload: bytes) -> None:
        self.request.sendall(bp.encode_frame(payload))

    def _discard_pending(self) -> None:
        self.request.settimeout(0.05)
        try:
            while self.request.recv(1 << 16):
                pass
        except OSError:
            pass

    def handle(self) -> None:
        if self.server.dead:
            return
        emu = self.server.emulator
        while True:
            try:
                self.request.settimeout(None)
                head = self._recv_exact(1)
                if head is None:
                    return
                self.request.settimeout(self.server.frame_timeout_s)
                # the header is checked byte by byte: garbage is answered at once, not
                # after the frame timeout (an unframed "*IDN?" gets ERR 101 immediately)
                bad = head != bp.FRAME_START
                while not bad and len(head) < bp.HEADER_LEN:
                    b = self._recv_exact(1)
                    if b is None:
                        return
                    head += b
                    bad = b[0] not in HEX_UPPER
                try:
                    if bad:
                        raise ProtocolError(f"bad frame header {head!r}: expected '$' and 8 upper-case hex digits")
                    n = strict_payload_length(head)
                except ProtocolError as exc:
                    self._discard_pending()
                    emu.errors.push(101, f"Framing error;{exc}")
                    self._reply(b'ERR 101,"Framing error"')
                    continue
                body = self._recv_exact(n + bp.TRAILER_LEN)
                if body is None:
                    return
                try:
                    if not set(body[-bp.TRAILER_LEN:-1]) <= HEX_UPPER:
                        raise ProtocolError("bad CRC field: expected 8 upper-case hex digits")
                    payload = bp.check_frame(body)
                except ProtocolError as exc:
                    emu.errors.push(102, f"Frame rejected;{exc}")
                    self._reply(b'ERR 102,"Frame rejected;%s"' % str(exc).encode())
                    continue
                if self.server.faults is None:
                    self._reply(emu.handle(payload, self))
                elif not self._faulty(payload):
                    return
            except socket.timeout:
                emu.errors.push(103, "Frame truncated;discarded after timeout")
                try:
                    self._reply(b'ERR 103,"Frame truncated"')
                except OSError:
                    return
            except OSError:
                return


    def _faulty(self, payload: bytes) -> bool:
        """Serve one request under fault injection; False when the connection is gone."""
        emu, faults = self.server.emulator, self.server.faults
        kind = faults.draw()
        if kind == "dead":
            self._die()
            return False
        if kind == "error":
            self._reply(b'ERR %d,"Transient fault;retry"' % TRANSIENT_CODE)
            return True
        if kind == "corrupt_request":  # a flipped bit on the way in: the CRC refuses the frame
            emu.errors.push(102, "Frame rejected;frame CRC mismatch: message corrupted")
            self._reply(b'ERR 102,"Frame rejected;frame CRC mismatch: message corrupted"')
            return True
        if kind == "silent":
            time.sleep(faults.plan.silent_s)
            return True
        if kind == "drop":
            if faults.coin():
                emu.handle(payload, self)
            self.request.shutdown(socket.SHUT_RDWR)
            return False
        if kind == "stuck":
            with emu.model.lock:
                emu.model.chip.inject_stuck(faults.stuck_cells(emu.model.chip.geometry.n_cells))
        if kind == "offset":  # a well-formed, CRC-valid reply that measures wrong
            emu.model.read_offset_us = faults.plan.offset_us
        try:
            frame = bp.encode_frame(emu.handle(payload, self))
        finally:
            emu.model.read_offset_us = 0.0
        if kind == "delay":
            time.sleep(faults.plan.delay_s)
        elif kind == "corrupt":
            i = bp.HEADER_LEN + (len(frame) - bp.HEADER_LEN - bp.TRAILER_LEN) // 2
            frame = frame[:i] + bytes([frame[i] ^ 0x40]) + frame[i + 1:]
        elif kind == "truncate":
            self.request.sendall(frame[: len(frame) // 2])
            time.sleep(faults.plan.delay_s)
            return True
        self.request.sendall(frame)
        return True


class ServerThread:
    """One emulated instrument served on ``host:port`` in a background thread."""

    def __init__(self, emulator: object, handler: type, host: str = "127.0.0.1", port: int = 0,
                 frame_timeout_s: float = 2.0, faults: "FaultInjector | None" = None) -> None:
        try:
            self.server = _Server(check_loopback(host), port, handler, emulator, frame_timeout_s, faults)
        except OSError as exc:  # a busy port: one line, not a traceback
            raise ValueError(f"cannot serve the emulated {type(emulator).__name__} on {host} port {port}: "
                             f"{exc.strerror or exc} (accepted: a free port, or 0 for any)") from None
        self.host, self.port = self.server.server_address[:2]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"emulated-{type(emulator).__name__}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.close_connections()
        self.server.server_close()
        self._thread.join(timeout=5)


