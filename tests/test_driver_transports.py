"""Transports on real loopback connections: terminators, timeouts, short reads, board framing.

What a single property sends is tested in memory (test_driver_protocols.py); here the
drivers are opened with ``from_resource`` on a scripted server, as on a bench.
"""
from __future__ import annotations

import socket
import struct
import time

import numpy as np
import pytest

from pcm_hil_drivers.errors import ConnectionLost, InstrumentTimeout, ProtocolError
from pcm_hil_drivers.keithley2600 import Keithley2600
from pcm_hil_drivers.keysight33500b import Keysight33500B
from pcm_hil_drivers.pcm_board import PCMBoard
from pcm_hil_drivers.transport import SerialTransport, VisaTransport

from .protocol import board_frame, scripted_server


def visa(port: int) -> str:
    return f"TCPIP::127.0.0.1::{port}::SOCKET"


def free_port() -> int:
    """A loopback port where nothing listens."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# -- VISA raw socket -------------------------------------------------------------------
def test_visa_terminators_are_set_both_ways() -> None:
    """LF goes out with every message, and a reply ends at its LF rather than at the timeout."""
    pairs = [("smua.source.levelv = 0.2", None), ("*IDN?", "Keithley Instruments Inc., Model 2636B, 1, 3.3.5")]
    with scripted_server(pairs) as port:
        smu = Keithley2600.from_resource(visa(port), timeout_s=2.0)
        assert isinstance(smu.transport, VisaTransport)
        smu.smua.source_voltage_v = 0.2
        start = time.monotonic()
        assert smu.idn.startswith("Keithley")
        assert time.monotonic() - start < 1.0
        smu.transport.close()


def test_visa_silence_is_a_typed_timeout_after_timeout_s() -> None:
    with scripted_server([("print(smua.measure.i())", None)]) as port:
        smu = Keithley2600.from_resource(visa(port), timeout_s=0.3)
        start = time.monotonic()
        with pytest.raises(InstrumentTimeout, match=r"no reply within 0.3 s"):
            smu.smua.measure_current()
        assert 0.25 < time.monotonic() - start < 2.0
        smu.transport.close()


def test_visa_timeout_is_seconds_in_the_api_and_ms_in_pyvisa() -> None:
    with scripted_server([]) as port:
        pg = Keysight33500B.from_resource(visa(port), timeout_s=2.0, channels=(1,))
        pg.timeout_s = 0.25
        assert pg.timeout_s == 0.25 and pg.transport._res.timeout == 250
        with pytest.raises(ValueError, match=r"Keysight33500B\.timeout_s: .* \[0.001, 3600\]"):
            pg.timeout_s = 0.0
        pg.transport.close()


def test_visa_context_manager_leaves_outputs_off_and_closes() -> None:
    with scripted_server([("OUTP1 0", None), ("OUTP2 0", None)]) as port:
        with Keysight33500B.from_resource(visa(port), timeout_s=2.0) as pg:
            pass
        with pytest.raises(ConnectionLost):
            pg.transport.write("*CLS")


def test_visa_unreachable_resource_is_connection_lost() -> None:
    # pyvisa-py opens a refused TCPIP SOCKET resource without complaint: the first exchange fails
    with pytest.raises(ConnectionLost, match="refused|cannot open VISA resource"):
        Keithley2600.from_resource(visa(free_port()), timeout_s=0.5).idn


# -- serial (pySerial URL) and the board's framing -------------------------------------
def test_board_frames_on_the_wire() -> None:
    """Frames as documented (built independently by the server), blocks included."""
    cells = np.array([0, 5, 9], dtype="<u4")
    g = np.array([1.5, 12.25, 20.0], dtype="<f4")
    pairs = [(b"CHIP:GEOM?", b"1,4,4"),
             (b"SOUR:COMP 0.001", b"OK"),
             (b"BULK:PULS SET,#236" + b"".join(struct.pack("<Iff", c, 1.0, 1e-7) for c in cells), b"OK"),
             (b"BULK:MEAS:G? 8,#212" + cells.tobytes(), b"#212" + g.tobytes()),
             (b"ROUT:EXT NONE", b"OK"), (b"OUTP 0", b"OK")]
    with scripted_server(pairs, framed=True) as port:
        with PCMBoard.from_resource(f"socket://127.0.0.1:{port}", timeout_s=2.0) as board:
            assert isinstance(board.transport, SerialTransport)
            assert board.geometry == (1, 4, 4)
            board.compliance_a = 1e-3
            board.bulk_pulse("SET", cells.astype(np.int64), 1.0, 1e-7)
            assert np.array_equal(board.bulk_measure_g(cells.astype(np.int64), 8), g)


def test_board_corrupted_then_truncated_reply_over_a_socket() -> None:
    """A bad CRC or header is a ProtocolError, a frame cut short a timeout (not short data); the link stays usable."""
    bad_crc = board_frame(b"1,4,4")[:-9] + b"DEADBEEF\n"
    pairs = [(b"CHIP:GEOM?", b"!raw:" + bad_crc), (b"SYST:ERR?", b"!raw:HELLO WORLD, NOT A FRAME\n"),
             (b"*IDN?", b"!raw:$00000020PCMHIL,PCM"), (b"SYST:CLK?", b"1.5")]
    with scripted_server(pairs, framed=True) as port:
        board = PCMBoard.from_resource(f"socket://127.0.0.1:{port}", timeout_s=0.3)
        with pytest.raises(ProtocolError, match="CRC mismatch"):
            board.geometry
        with pytest.raises(ProtocolError, match="bad frame header"):  # the rest of it is discarded
            board.next_error()
        start = time.monotonic()
        with pytest.raises(InstrumentTimeout, match="got 10 of 41 bytes within 0.3 s"):
            board.idn
        assert time.monotonic() - start >= 0.25
        assert board.clock_s == 1.5
        board.transport.close()


def test_serial_unreachable_resource_is_connection_lost() -> None:
    with pytest.raises(ConnectionLost, match="cannot open serial resource"):
        PCMBoard.from_resource(f"socket://127.0.0.1:{free_port()}", timeout_s=0.5)
