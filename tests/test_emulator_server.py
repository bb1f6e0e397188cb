"""Transport-level behaviour of the emulated instruments' servers (all on loopback)."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from pcm_hil_drivers import board_protocol as bp
from pcm_hil.chip import Geometry
from pcm_hil.emulator.instruments import VirtualBench

GEOM = Geometry(1, 8, 8)


@pytest.fixture
def vb():
    with VirtualBench(GEOM, seed=1) as bench:
        yield bench


def _port(address: str) -> int:
    return int(address.rsplit("::", 2)[-2] if address.startswith("TCPIP") else address.rsplit(":", 1)[1])


def _ask(port: int, line: bytes, host: str = "127.0.0.1") -> bytes:
    with socket.create_connection((host, port), timeout=3) as s:
        s.sendall(line)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        return buf


def _send_and_close(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(data)


def _settle(port: int) -> None:
    """A full round trip on a new connection: the closed one has been handled by then."""
    time.sleep(0.1)
    assert _ask(port, b"*IDN?\n")


def test_half_sent_tsp_command_is_discarded_at_disconnect(vb) -> None:
    port = _port(vb.addresses["smu"])
    _send_and_close(port, b"smua.source.levelv=1.5")  # no line ending, then the client dies
    _settle(port)
    assert vb.smu.channels["a"].levelv == 0.0
    _send_and_close(port, b"smua.source.levelv=1.5\n")  # a complete line runs
    _settle(port)
    assert vb.smu.channels["a"].levelv == 1.5


def test_half_sent_scpi_command_is_discarded_at_disconnect(vb) -> None:
    port = _port(vb.addresses["pulse_generator"])
    _send_and_close(port, b"OUTP1 ON")
    _settle(port)
    assert vb.pg.ch[1].output is False
    _send_and_close(port, b"OUTP1 ON\n")
    _settle(port)
    assert vb.pg.ch[1].output is True


def _needs_ipv6_loopback() -> None:
    """Skip, saying why, where this machine has no IPv6 loopback."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python build")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("IPv6 loopback is not configured on this machine")


def test_ipv6_loopback_serves_all_three() -> None:
    _needs_ipv6_loopback()
    with VirtualBench(GEOM, seed=1, host="::1") as v6:
        a = v6.addresses
        assert a["board"].startswith("socket://[::1]:") and "[::1]" in a["smu"]
        assert _ask(_port(a["smu"]), b"*IDN?\n", "::1").startswith(b"Keithley")
        assert _ask(_port(a["pulse_generator"]), b"*IDN?\n", "::1").startswith(b"Keysight")
        with socket.create_connection(("::1", _port(a["board"])), timeout=3) as s:
            s.sendall(bp.encode_frame(b"*IDN?"))
            assert s.recv(100).startswith(b"$")


def test_cli_emulate_binds_ipv6_loopback(tmp_path) -> None:
    _needs_ipv6_loopback()
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen([sys.executable, "-m", "pcm_hil.cli", "emulate", "--host", "::1", "--geometry", "1", "4",
                             "4", "--ready-file", str(ready)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()
        assert "[::1]" in ready.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_listen_backlog_takes_a_burst_of_connections(vb) -> None:
    port = _port(vb.addresses["pulse_generator"])
    t0 = time.monotonic()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
    for s in socks:
        s.close()
    elapsed = time.monotonic() - t0
    assert elapsed < 3.0, f"200 connections took {elapsed:.1f} s (SYN retries: backlog too small)"
    assert _ask(port, b"*IDN?\n").startswith(b"Keysight")


def _board(vb) -> socket.socket:
    return socket.create_connection(("127.0.0.1", _port(vb.addresses["board"])), timeout=5)


def _frame_reply(s: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        buf += s.recv(4096)
    return bp.decode_frame(buf)


def test_board_answers_an_unframed_command_at_once() -> None:
    with VirtualBench(GEOM, seed=1, frame_timeout_s=2.0) as vb, _board(vb) as s:
        t0 = time.monotonic()
        s.sendall(b"*IDN?\n")
        assert _frame_reply(s).startswith(b"ERR 101")
        assert time.monotonic() - t0 < 0.5
        s.sendall(bp.encode_frame(b"*IDN?"))
        assert _frame_reply(s).startswith(b"PCMHIL")


@pytest.mark.parametrize("header", [b"$+0000005", b"$_0000005", b"$ 0000005", b"$0000000a", b"$0000005 "])
def test_board_header_is_strict(vb, header: bytes) -> None:
    with _board(vb) as s:
        s.sendall(header + b"*IDN?" + b"%08X\n" % __import__("zlib").crc32(b"*IDN?"))
        assert _frame_reply(s).startswith(b"ERR 101")
        s.sendall(bp.encode_frame(b"*IDN?"))
        assert _frame_reply(s).startswith(b"PCMHIL")


def test_board_crc_field_is_strict(vb) -> None:
    frame = bp.encode_frame(b"CHIP:GEOM?")
    crc = frame[-9:-1]
    if crc.lower() == crc:  # all digits: nothing to lower-case; use a payload whose CRC has letters
        pytest.skip("CRC without hex letters")
    with _board(vb) as s:
        s.sendall(frame[:-9] + crc.lower() + b"\n")
        assert _frame_reply(s).startswith(b"ERR 102")
