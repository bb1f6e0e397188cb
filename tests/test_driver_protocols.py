"""Protocol tests: the exact messages each driver exchanges, as (sent, reply) pairs."""
from __future__ import annotations

import numpy as np
import pytest

from pcm_hil_drivers import board_protocol as bp
from pcm_hil_drivers.errors import InstrumentError, InstrumentTimeout, ProtocolError
from pcm_hil_drivers.keithley2600 import Keithley2600
from pcm_hil_drivers.keysight33500b import Keysight33500B
from pcm_hil_drivers.pcm_board import PCMBoard

from .protocol import board_frame, expected_protocol


def visa(port: int) -> str:
    return f"TCPIP::127.0.0.1::{port}::SOCKET"


# -- framing ---------------------------------------------------------------------------
def test_frame_layout_is_fixed() -> None:
    assert bp.encode_frame(b"*IDN?") == b"$00000005*IDN?0440BDA5\n"
    assert bp.decode_frame(b"$00000005*IDN?0440BDA5\n") == b"*IDN?"
    with pytest.raises(ProtocolError, match="CRC mismatch"):
        bp.decode_frame(b"$00000005*IDN!0440BDA5\n")
    with pytest.raises(ProtocolError, match="header"):
        bp.decode_frame(b"#00000005*IDN?0440BDA5\n")
    assert bp.encode_block(b"abc") == b"#13abc"
    assert bp.split_payload(b"BULK:PULS SET,#13abc") == ("BULK:PULS", ["SET", b"abc"])
    with pytest.raises(ProtocolError, match="announces 9 bytes"):
        bp.split_payload(b"X #19abc")


# -- Keithley 2600B --------------------------------------------------------------------
def test_keithley_read_setup_and_measure() -> None:
    pairs = [
        ("*IDN?", "Keithley Instruments Inc., Model 2636B, 4471234, 3.3.5"),
        ("smua.source.func = smua.OUTPUT_DCVOLTS", None),
        ("smua.source.limiti = 0.0001", None),
        ("smua.source.levelv = 0.2", None),
        ("print(smua.source.levelv)", "2.00000e-01"),
        ("smua.source.output = 1", None),
        ("print(smua.measure.i())", "2.40000e-06"),
        ("print(smua.source.compliance)", "false"),
        ("print(errorqueue.next())", "-2.86000e+02\tTSP Runtime error\t2.00000e+00\t0.00000e+00"),
        ("print(errorqueue.next())", "0.00000e+00\tQueue Is Empty\t0.00000e+00\t0.00000e+00"),
        ("smua.source.output = 0", None),
        ("smub.source.output = 0", None),
    ]
    with expected_protocol(pairs) as port:
        smu = Keithley2600(visa(port), timeout_s=2)
        assert smu.idn.startswith("Keithley")
        smu.smua.source_function = "voltage"
        smu.smua.compliance_current_a = 1e-4
        smu.smua.source_voltage_v = 0.2
        assert smu.smua.source_voltage_v == 0.2
        smu.smua.output_enabled = True
        assert smu.smua.measure_current() == pytest.approx(2.4e-6)
        assert smu.smua.in_compliance is False
        with pytest.raises(InstrumentError, match="-286"):
            smu.check_errors()
        smu.shutdown()
        smu.shutdown()  # idempotent: nothing more is sent


def test_keithley_refuses_out_of_range_without_sending() -> None:
    with expected_protocol([]) as port:
        smu = Keithley2600(visa(port), timeout_s=2)
        with pytest.raises(ValueError, match=r"compliance_current_a: .* \[1e-08, 1.5\]"):
            smu.smua.compliance_current_a = 2.0
        with pytest.raises(ValueError, match="source_voltage_v"):
            smu.smua.source_voltage_v = float("nan")
        smu.transport.close()


def test_keithley_timeout_is_typed() -> None:
    with expected_protocol([("print(smua.measure.i())", None)]) as port:
        smu = Keithley2600(visa(port), timeout_s=0.2)
        with pytest.raises(InstrumentTimeout):
            smu.smua.measure_current()
        smu.transport.close()


# -- Keysight 33500B -------------------------------------------------------------------
def test_keysight_single_pulse_configuration_and_trigger() -> None:
    pairs = [
        ("OUTP1 0", None), ("OUTP1:LOAD INF", None), ("SOUR1:FUNC PULS", None),
        ("SOUR1:VOLT:LIM:HIGH 3", None), ("SOUR1:VOLT:LIM:LOW -3", None), ("SOUR1:VOLT:LIM:STAT 1", None),
        ("SOUR1:VOLT:LOW 0", None), ("SOUR1:VOLT:HIGH 2.2", None), ("SOUR1:FUNC:PULS:PER 1e-06", None),
        ("SOUR1:FUNC:PULS:WIDT 5e-08", None), ("SOUR1:FUNC:PULS:TRAN:LEAD 8.4e-09", None),
        ("SOUR1:FUNC:PULS:TRAN:TRA 8.4e-09", None), ("SOUR1:BURS:MODE TRIG", None),
        ("SOUR1:BURS:NCYC 1", None), ("SOUR1:BURS:STAT 1", None), ("TRIG1:SOUR BUS", None),
        ("OUTP1 1", None), ("*TRG", None), ("*OPC?", "1"),
        ("OUTP1:LOAD?", "+9.900000000000000E+37"),
        ("SYST:ERR?", '+0,"No error"'),
        ("OUTP1 0", None), ("OUTP2 0", None),
    ]
    with expected_protocol(pairs) as port:
        with Keysight33500B(visa(port), timeout_s=2) as pg:
            pg.ch1.configure_single_pulse(2.2, 50e-9, 8.4e-9, 8.4e-9, limit_v=3.0)
            pg.ch1.output_enabled = True
            pg.trigger()
            pg.wait_complete()
            assert pg.ch1.high_impedance_load is True
            pg.check_errors()


def test_keysight_refuses_out_of_range_without_sending() -> None:
    with expected_protocol([]) as port:
        pg = Keysight33500B(visa(port), timeout_s=2)
        with pytest.raises(ValueError, match=r"width_s: .* \[1.6e-08"):
            pg.ch1.width_s = 1e-9
        with pytest.raises(ValueError, match="trigger_source"):
            pg.ch2.trigger_source = "NOW"
        pg.transport.close()


# -- PCM board -------------------------------------------------------------------------
def _records(cells, amp, width) -> bytes:
    rec = np.empty(len(cells), dtype=bp.PULSE_RECORD)
    rec["cell"], rec["amplitude_v"], rec["width_s"] = cells, amp, width
    return rec.tobytes()


def test_board_session() -> None:
    cells = np.array([0, 5, 9], dtype="<u4")
    g = np.array([1.5, 12.25, 20.0], dtype="<f4")
    pairs = [
        (b"*IDN?", b"PCMHIL,PCM-BOARD-EMU,EMU0001,0.1.0"),
        (b"CHIP:GEOM?", b"1,4,4"),
        (b"SOUR:COMP 0.001", b"OK"),
        (b"OUTP 1", b"OK"),
        (b"OUTP?", b"1"),
        (b"BULK:PULS SET,#236" + _records(cells, 1.0, 1e-7), b"OK"),
        (b"BULK:MEAS:G? 8,#212" + cells.tobytes(), b"#212" + g.tobytes()),
        (b"CELL 0,1,2", b"OK"),
        (b"PULS RES,2.2,5e-08", b'ERR 201,"Output disabled;send OUTP 1 first"'),
        (b"SYST:ERR?", b'0,"No error"'),
        (b"ROUT:EXT NONE", b"OK"),
        (b"OUTP 0", b"OK"),
    ]
    with expected_protocol(pairs, framed=True) as port:
        with PCMBoard(f"socket://127.0.0.1:{port}", timeout_s=2) as board:
            assert board.idn.startswith("PCMHIL")
            assert board.geometry == (1, 4, 4)
            board.compliance_a = 1e-3
            board.output_enabled = True
            assert board.output_enabled is True
            board.bulk_pulse("SET", cells.astype(np.int64), 1.0, 1e-7)
            assert np.array_equal(board.bulk_measure_g(cells.astype(np.int64), 8), g)
            board.select(0, 1, 2)
            with pytest.raises(InstrumentError, match="201"):
                board.pulse("RESET", 2.2, 50e-9)
            board.check_errors()
            # invalid requests are refused before anything is sent
            with pytest.raises(ValueError, match="row"):
                board.select(0, 4, 0)
            with pytest.raises(ValueError, match=r"amplitude_v: values must be finite and in \[0, 5\]"):
                board.bulk_pulse("SET", np.array([1]), 7.0, 1e-7)
            with pytest.raises(ValueError, match=r"cells must be in \[0, 15\]"):
                board.bulk_measure_g(np.array([16]))


def test_board_detects_corrupted_and_truncated_replies() -> None:
    bad_crc = board_frame(b"1,4,4")[:-9] + b"DEADBEEF\n"
    pairs = [(b"CHIP:GEOM?", b"!raw:" + bad_crc), (b"*IDN?", b"!raw:$00000020PCMHIL,PCM")]
    with expected_protocol(pairs, framed=True) as port:
        board = PCMBoard(f"socket://127.0.0.1:{port}", timeout_s=0.3)
        with pytest.raises(ProtocolError, match="CRC mismatch"):
            board.geometry
        with pytest.raises(InstrumentTimeout, match="bytes within"):
            board.idn
        board.transport.close()
