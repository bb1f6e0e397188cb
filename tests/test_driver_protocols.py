"""Protocol tests, in memory: the exact messages each property and action exchanges.

One property per test, as (sent, reply) pairs on a ProtocolAdapter (no sockets). What
needs a real connection (terminators, timeouts, short reads, framing on the wire) is in
test_driver_transports.py.
"""
from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from pcm_hil.emulator.instruments import board as emulated_board
from pcm_hil_drivers import board_protocol as bp
from pcm_hil_drivers import pcm_board
from pcm_hil_drivers.errors import InstrumentError, InstrumentTimeout, ProtocolError
from pcm_hil_drivers.keithley2600 import Keithley2600
from pcm_hil_drivers.keysight33500b import Keysight33500B
from pcm_hil_drivers.pcm_board import PCMBoard
from pcm_hil_drivers.testing import ProtocolAdapter, ProtocolMismatch, expected_protocol

from .protocol import board_frame, framed


def _attr(obj: Any, path: str) -> tuple[Any, str]:
    """(owner, attribute) of a dotted path such as ``smua.nplc``."""
    *owners, name = path.split(".")
    for o in owners:
        obj = getattr(obj, o)
    return obj, name


def check_set(cls: type, path: str, value: Any, pairs: list) -> None:
    with expected_protocol(cls, pairs) as inst:
        setattr(*_attr(inst, path), value)


def check_get(cls: type, path: str, pairs: list, expected: Any) -> None:
    with expected_protocol(cls, pairs) as inst:
        got = getattr(*_attr(inst, path))
    assert got == pytest.approx(expected) if isinstance(expected, float) else got == expected
    assert type(got) is type(expected)


def check_refused(cls: type, path: str, value: Any, match: str) -> None:
    with expected_protocol(cls, []) as inst:  # nothing may be sent
        with pytest.raises(ValueError, match=match):
            setattr(*_attr(inst, path), value)


# -- the in-memory adapter itself ------------------------------------------------------
def test_adapter_names_the_mismatched_message() -> None:
    adapter = ProtocolAdapter([("OUTP 1", None)])
    with pytest.raises(ProtocolMismatch, match=r"message 0: expected 'OUTP 1', got 'OUTP 0'"):
        adapter.write("OUTP 0")


def test_adapter_requires_every_pair_consumed() -> None:
    with pytest.raises(ProtocolMismatch, match=r"only 0 of 1 message pairs were consumed; next expected: '\*IDN\?'"):
        with expected_protocol(Keithley2600, [("*IDN?", "x")]):
            pass


def test_adapter_requires_every_reply_read() -> None:
    adapter = ProtocolAdapter([("*IDN?", "x")])
    adapter.write("*IDN?")
    with pytest.raises(ProtocolMismatch, match="never read"):
        adapter.assert_consumed()
    with pytest.raises(ProtocolMismatch, match="still unread"):
        adapter.write("*IDN?")


def test_adapter_refuses_extra_messages_and_unscripted_reads() -> None:
    adapter = ProtocolAdapter([("*CLS", None)])
    adapter.write("*CLS")
    with pytest.raises(ProtocolMismatch, match="no scripted reply"):
        adapter.read()
    with pytest.raises(ProtocolMismatch, match="all 1 pairs already consumed"):
        adapter.write("*CLS")


def test_adapter_short_byte_reply_is_a_timeout() -> None:
    adapter = ProtocolAdapter([(b"Q", b"abc")])
    adapter.write(b"Q")
    assert adapter.read_exact(2) == b"ab"
    with pytest.raises(InstrumentTimeout, match="got 1 of 2 bytes"):
        adapter.read_exact(2)


@pytest.mark.parametrize("cls", [PCMBoard, Keithley2600, Keysight33500B])
def test_a_driver_takes_a_transport_not_an_address(cls: type) -> None:
    with pytest.raises(TypeError, match=rf"use {cls.__name__}\.from_resource\('COM3'\)"):
        cls("COM3")


# -- Keithley 2600B --------------------------------------------------------------------
SMU_SET = [  # (property, value, message)
    ("smua.source_function", "voltage", "smua.source.func = smua.OUTPUT_DCVOLTS"),
    ("smub.source_function", "current", "smub.source.func = smub.OUTPUT_DCAMPS"),
    ("smua.source_voltage_v", 0.2, "smua.source.levelv = 0.2"),
    ("smub.source_voltage_v", -1.23456, "smub.source.levelv = -1.23456"),  # 6 significant digits
    ("smua.compliance_current_a", 1e-4, "smua.source.limiti = 0.0001"),
    ("smua.nplc", 1, "smua.measure.nplc = 1"),
    ("smua.output_enabled", True, "smua.source.output = 1"),
    ("smub.output_enabled", False, "smub.source.output = 0"),
]
SMU_GET = [  # (property, query, reply, value)
    ("idn", "*IDN?", "Keithley Instruments Inc., Model 2636B, 4471234, 3.3.5",
     "Keithley Instruments Inc., Model 2636B, 4471234, 3.3.5"),
    ("smua.source_function", "print(smua.source.func)", "1.00000e+00", "voltage"),
    ("smub.source_function", "print(smub.source.func)", "0.00000e+00", "current"),
    ("smua.source_voltage_v", "print(smua.source.levelv)", "2.00000e-01", 0.2),
    ("smua.compliance_current_a", "print(smua.source.limiti)", "1.00000e-04", 1e-4),
    ("smua.nplc", "print(smua.measure.nplc)", "1.00000e+00", 1.0),
    ("smua.output_enabled", "print(smua.source.output)", "1.00000e+00", True),
    ("smub.output_enabled", "print(smub.source.output)", "0.00000e+00", False),
    ("smua.in_compliance", "print(smua.source.compliance)", "true", True),
    ("smua.in_compliance", "print(smua.source.compliance)", "false", False),
]
SMU_REFUSED = [  # (property, value, message pattern)
    ("smua.compliance_current_a", 2.0, r"SMUChannel\.compliance_current_a: .* \[1e-08, 1.5\]"),
    ("smua.compliance_current_a", 1e-9, r"compliance_current_a: .* \[1e-08, 1.5\]"),
    ("smua.source_voltage_v", float("nan"), r"source_voltage_v: must be a finite number in \[-200, 200\]"),
    ("smua.source_voltage_v", 200.1, r"source_voltage_v: .* \[-200, 200\]"),
    ("smua.source_voltage_v", True, "source_voltage_v: must be a finite number"),
    ("smua.nplc", 30, r"nplc: .* \[0.001, 25\]"),
    ("smua.source_function", "resistance", "source_function: 'resistance' is not one of"),
    ("smua.output_enabled", 2, "output_enabled: 2 is not one of"),
]


@pytest.mark.parametrize("path, value, message", SMU_SET)
def test_keithley_sets(path: str, value: Any, message: str) -> None:
    check_set(Keithley2600, path, value, [(message, None)])


@pytest.mark.parametrize("path, query, reply, value", SMU_GET)
def test_keithley_reads(path: str, query: str, reply: str, value: Any) -> None:
    check_get(Keithley2600, path, [(query, reply)], value)


@pytest.mark.parametrize("path, value, match", SMU_REFUSED)
def test_keithley_refuses_out_of_range_without_sending(path: str, value: Any, match: str) -> None:
    check_refused(Keithley2600, path, value, match)


def test_keithley_measure_current() -> None:
    with expected_protocol(Keithley2600, [("print(smub.measure.i())", "2.40000e-06")]) as smu:
        assert smu.smub.measure_current() == pytest.approx(2.4e-6)


def test_keithley_measures_current_with_the_state_it_was_taken_in() -> None:
    query = "print(smua.measure.i(), smua.source.output, smua.source.levelv, smua.source.compliance)"
    with expected_protocol(Keithley2600, [(query, "2.40000e-06\t1.00000e+00\t2.00000e-01\tfalse"),
                                          (query, "1.20000e-13\t0.00000e+00\t2.00000e-01\ttrue")]) as smu:
        r = smu.smua.measure_current_sourced()
        assert (r.current_a, r.output_on, r.level_v, r.in_compliance) == (pytest.approx(2.4e-6), True,
                                                                           pytest.approx(0.2), False)
        r = smu.smua.measure_current_sourced()
        assert (r.output_on, r.in_compliance) == (False, True)
    with expected_protocol(Keithley2600, [(query, "2.40000e-06")]) as smu:
        with pytest.raises(ProtocolError, match="expected current, output, level and compliance, got 1 values"):
            smu.smua.measure_current_sourced()


def test_keithley_malformed_number_is_a_protocol_error() -> None:
    with expected_protocol(Keithley2600, [("print(smua.measure.i())", "nil")]) as smu:
        with pytest.raises(ProtocolError, match="expected a number, got 'nil'"):
            smu.smua.measure_current()


@pytest.mark.parametrize("action, message", [("reset", "reset()"), ("clear", "errorqueue.clear()"),
                                             ("smua.reset", "smua.reset()")])
def test_keithley_actions(action: str, message: str) -> None:
    with expected_protocol(Keithley2600, [(message, None)]) as smu:
        getattr(*_attr(smu, action))()


def test_keithley_check_errors_drains_the_queue_and_raises_the_first() -> None:
    pairs = [("print(errorqueue.next())", "-2.86000e+02\tTSP Runtime error\t2.00000e+00\t0.00000e+00"),
             ("print(errorqueue.next())", "-2.85000e+02\tTSP Syntax error\t2.00000e+00\t0.00000e+00"),
             ("print(errorqueue.next())", "0.00000e+00\tQueue Is Empty\t0.00000e+00\t0.00000e+00")]
    with expected_protocol(Keithley2600, pairs) as smu:
        with pytest.raises(InstrumentError, match="keithley2600: error -286: TSP Runtime error"):
            smu.check_errors()


def test_keithley_shutdown_turns_every_channel_off_once() -> None:
    pairs = [("smua.source.output = 0", None), ("smub.source.output = 0", None)]
    with expected_protocol(Keithley2600, pairs) as smu:
        with smu:
            pass
        smu.shutdown()  # idempotent: nothing more is sent
        assert smu.transport.closed


def test_keithley_declared_channels_only() -> None:
    with expected_protocol(Keithley2600, [("smua.source.output = 0", None)], channels=("a",)) as smu:
        assert not hasattr(smu, "smub")
        smu.shutdown()


# -- Keysight 33500B -------------------------------------------------------------------
PG_SET = [
    ("ch1.function", "PULS", "SOUR1:FUNC PULS"),
    ("ch1.high_v", 2.2, "SOUR1:VOLT:HIGH 2.2"),
    ("ch2.low_v", 0, "SOUR2:VOLT:LOW 0"),
    ("ch1.width_s", 50e-9, "SOUR1:FUNC:PULS:WIDT 5e-08"),
    ("ch1.period_s", 1e-6, "SOUR1:FUNC:PULS:PER 1e-06"),
    ("ch1.leading_edge_s", 8.4e-9, "SOUR1:FUNC:PULS:TRAN:LEAD 8.4e-09"),
    ("ch1.trailing_edge_s", 1e-7, "SOUR1:FUNC:PULS:TRAN:TRA 1e-07"),
    ("ch1.limit_high_v", 3.0, "SOUR1:VOLT:LIM:HIGH 3"),
    ("ch1.limit_low_v", -3.0, "SOUR1:VOLT:LIM:LOW -3"),
    ("ch1.limits_enabled", True, "SOUR1:VOLT:LIM:STAT 1"),
    ("ch2.output_enabled", True, "OUTP2 1"),
    ("ch1.high_impedance_load", True, "OUTP1:LOAD INF"),
    ("ch1.high_impedance_load", False, "OUTP1:LOAD 50"),
    ("ch1.burst_enabled", True, "SOUR1:BURS:STAT 1"),
    ("ch1.burst_mode", "TRIG", "SOUR1:BURS:MODE TRIG"),
    ("ch1.burst_cycles", 1, "SOUR1:BURS:NCYC 1"),
    ("ch1.trigger_source", "BUS", "TRIG1:SOUR BUS"),
]
PG_GET = [
    ("idn", "*IDN?", "Agilent Technologies,33522B,MY52301234,4.00", "Agilent Technologies,33522B,MY52301234,4.00"),
    ("ch1.function", "SOUR1:FUNC?", "PULS", "PULS"),
    ("ch1.high_v", "SOUR1:VOLT:HIGH?", "+2.200000000000000E+00", 2.2),
    ("ch2.width_s", "SOUR2:FUNC:PULS:WIDT?", "+5.000000000000000E-08", 5e-8),
    ("ch1.limits_enabled", "SOUR1:VOLT:LIM:STAT?", "1", True),
    ("ch1.output_enabled", "OUTP1?", "0", False),
    ("ch1.high_impedance_load", "OUTP1:LOAD?", "+9.900000000000000E+37", True),
    ("ch1.high_impedance_load", "OUTP1:LOAD?", "+5.000000000000000E+01", False),
    ("ch1.burst_cycles", "SOUR1:BURS:NCYC?", "+1.000000000000000E+00", 1),
    ("ch1.trigger_source", "TRIG1:SOUR?", "BUS", "BUS"),
]
PG_REFUSED = [
    ("ch1.width_s", 1e-9, r"PulseChannel\.width_s: .* \[1.6e-08, 1e\+06\]"),
    ("ch1.high_v", 10.5, r"high_v: .* \[-10, 10\]"),
    ("ch1.leading_edge_s", 1e-9, r"leading_edge_s: .* \[8.4e-09, 1e-06\]"),
    ("ch2.trigger_source", "NOW", "trigger_source: 'NOW' is not one of"),
    ("ch1.function", "puls", "function: 'puls' is not one of"),
    ("ch1.burst_cycles", 0, r"burst_cycles: .* \[1, 1e\+08\]"),
]


@pytest.mark.parametrize("path, value, message", PG_SET)
def test_keysight_sets(path: str, value: Any, message: str) -> None:
    check_set(Keysight33500B, path, value, [(message, None)])


@pytest.mark.parametrize("path, query, reply, value", PG_GET)
def test_keysight_reads(path: str, query: str, reply: str, value: Any) -> None:
    check_get(Keysight33500B, path, [(query, reply)], value)


@pytest.mark.parametrize("path, value, match", PG_REFUSED)
def test_keysight_refuses_out_of_range_without_sending(path: str, value: Any, match: str) -> None:
    check_refused(Keysight33500B, path, value, match)


def test_keysight_single_pulse_configuration() -> None:
    pairs = [
        ("OUTP1 0", None), ("OUTP1:LOAD INF", None), ("SOUR1:FUNC PULS", None),
        ("SOUR1:VOLT:LIM:HIGH 3", None), ("SOUR1:VOLT:LIM:LOW -3", None), ("SOUR1:VOLT:LIM:STAT 1", None),
        ("SOUR1:VOLT:LOW 0", None), ("SOUR1:VOLT:HIGH 2.2", None), ("SOUR1:FUNC:PULS:PER 1e-06", None),
        ("SOUR1:FUNC:PULS:WIDT 5e-08", None), ("SOUR1:FUNC:PULS:TRAN:LEAD 8.4e-09", None),
        ("SOUR1:FUNC:PULS:TRAN:TRA 8.4e-09", None), ("SOUR1:BURS:MODE TRIG", None),
        ("SOUR1:BURS:NCYC 1", None), ("SOUR1:BURS:STAT 1", None), ("TRIG1:SOUR BUS", None),
    ]
    with expected_protocol(Keysight33500B, pairs) as pg:
        pg.ch1.configure_single_pulse(2.2, 50e-9, 8.4e-9, 8.4e-9, limit_v=3.0)


@pytest.mark.parametrize("action, pairs", [("trigger", [("*TRG", None)]), ("reset", [("*RST", None)]),
                                           ("clear", [("*CLS", None)]), ("wait_complete", [("*OPC?", "1")]),
                                           ("check_errors", [("SYST:ERR?", '+0,"No error"')])])
def test_keysight_actions(action: str, pairs: list) -> None:
    with expected_protocol(Keysight33500B, pairs) as pg:
        getattr(pg, action)()


def test_keysight_wait_complete_wants_one() -> None:
    with expected_protocol(Keysight33500B, [("*OPC?", "0")]) as pg:
        with pytest.raises(ProtocolError, match=r"\*OPC\? did not answer 1"):
            pg.wait_complete()


def test_keysight_check_errors_raises_the_first() -> None:
    pairs = [("SYST:ERR?", '-222,"Data out of range"'), ("SYST:ERR?", '+0,"No error"')]
    with expected_protocol(Keysight33500B, pairs) as pg:
        with pytest.raises(InstrumentError, match="keysight33500b: error -222: Data out of range"):
            pg.check_errors()


def test_keysight_shutdown_turns_every_output_off_once() -> None:
    with expected_protocol(Keysight33500B, [("OUTP1 0", None), ("OUTP2 0", None)]) as pg:
        with pg:
            pass
        pg.shutdown()
        assert pg.transport.closed


# -- PCM board -------------------------------------------------------------------------
GEOM = (b"CHIP:GEOM?", b"1,4,4")


def _records(cells: list[int], amp: float, width: float) -> bytes:
    """Pulse records packed independently of the driver: (uint32, float32, float32) little-endian."""
    return b"".join(struct.pack("<Iff", c, amp, width) for c in cells)


BOARD_SET = [
    ("compliance_a", 1e-3, b"SOUR:COMP 0.001"),
    ("read_bias_v", 0.2, b"READ:BIAS 0.2"),
    ("output_enabled", True, b"OUTP 1"),
    ("output_enabled", False, b"OUTP 0"),
    ("route", "SMU", b"ROUT:EXT SMU"),
    ("route", "NONE", b"ROUT:EXT NONE"),
    ("lease_s", 5.0, b"SYST:LEASE 5"),  # take (or renew) the heartbeat lease
    ("lease_s", 0, b"SYST:LEASE 0"),  # release it
    ("temperature_setpoint_k", 358.15, b"SOUR:TEMP 358.15"),
]
BOARD_GET = [
    ("idn", b"*IDN?", b"PCMHIL,PCM-BOARD-EMU,EMU0001,0.1.0", "PCMHIL,PCM-BOARD-EMU,EMU0001,0.1.0"),
    ("clock_s", b"SYST:CLK?", b"12.5", 12.5),
    ("compliance_a", b"SOUR:COMP?", b"0.001", 1e-3),
    ("read_bias_v", b"READ:BIAS?", b"0.2", 0.2),
    ("output_enabled", b"OUTP?", b"1", True),
    ("output_enabled", b"OUTP?", b"0", False),
    ("route", b"ROUT:EXT?", b"PG", "PG"),
    ("geometry", b"CHIP:GEOM?", b"2,64,32", (2, 64, 32)),
    ("n_cells", b"CHIP:GEOM?", b"2,64,32", 4096),
    ("lease_s", b"SYST:LEASE?", b"4.25", 4.25),
    ("temperature_setpoint_k", b"SOUR:TEMP?", b"300", 300.0),
    ("temperature_k", b"MEAS:TEMP?", b"358.15", 358.15),
]
BOARD_REFUSED = [
    ("compliance_a", 20e-3, r"PCMBoard\.compliance_a: .* \[1e-06, 0.01\]"),
    ("read_bias_v", 0.0, r"read_bias_v: .* \[0.01, 1\]"),
    ("output_enabled", "on", "output_enabled: 'on' is not one of"),
    ("route", "DMM", "route: 'DMM' is not one of"),
    ("lease_s", 601, r"PCMBoard\.lease_s: .* \[0, 600\]"),
    ("lease_s", -1, r"lease_s: .* \[0, 600\]"),
    ("temperature_setpoint_k", 100, r"PCMBoard\.temperature_setpoint_k: .* \[150, 700\]"),
    ("temperature_setpoint_k", float("nan"), r"temperature_setpoint_k: must be a finite number in \[150, 700\]"),
]


@pytest.mark.parametrize("path, value, message", BOARD_SET)
def test_board_sets(path: str, value: Any, message: bytes) -> None:
    check_set(PCMBoard, path, value, framed([(message, b"OK")]))


@pytest.mark.parametrize("path, query, reply, value", BOARD_GET)
def test_board_reads(path: str, query: bytes, reply: bytes, value: Any) -> None:
    check_get(PCMBoard, path, framed([(query, reply)]), value)


@pytest.mark.parametrize("path, value, match", BOARD_REFUSED)
def test_board_refuses_out_of_range_without_sending(path: str, value: Any, match: str) -> None:
    check_refused(PCMBoard, path, value, match)


def test_board_unexpected_value_is_a_protocol_error() -> None:
    with expected_protocol(PCMBoard, framed([(b"OUTP?", b"2")])) as board:
        with pytest.raises(ProtocolError, match="output_enabled: unexpected reply '2'"):
            board.output_enabled


def test_board_geometry_is_asked_once() -> None:
    with expected_protocol(PCMBoard, framed([GEOM])) as board:
        assert board.geometry == (1, 4, 4) and board.n_cells == 16


@pytest.mark.parametrize("reply", [b"1,4", b"1,four,4"])
def test_board_malformed_geometry_is_a_protocol_error(reply: bytes) -> None:
    with expected_protocol(PCMBoard, framed([(b"CHIP:GEOM?", reply)])) as board:
        with pytest.raises(ProtocolError, match="malformed geometry"):
            board.geometry


@pytest.mark.parametrize("action, args, message", [
    ("reset", (), b"*RST"),
    ("clear", (), b"*CLS"),
    ("pulse", ("RESET", 2.2, 50e-9), b"PULS RES,2.2,5e-08"),
    ("pulse", ("set", 1.0, 1e-7), b"PULS SET,1,1e-07"),
    ("emu_wait", (3600.0,), b"EMU:WAIT 3600"),
])
def test_board_commands(action: str, args: tuple, message: bytes) -> None:
    with expected_protocol(PCMBoard, framed([(message, b"OK")])) as board:
        getattr(board, action)(*args)


def test_board_select_checks_the_address_against_the_geometry() -> None:
    with expected_protocol(PCMBoard, framed([GEOM, (b"CELL 0,1,2", b"OK")])) as board:
        board.select(0, 1, 2)
        with pytest.raises(ValueError, match=r"select row: must be an integer in \[0, 3\], got 4"):
            board.select(0, 4, 0)


def test_board_measure_g() -> None:
    with expected_protocol(PCMBoard, framed([(b"MEAS:G? 8", b"12.25")])) as board:
        assert board.measure_g(8) == 12.25


@pytest.mark.parametrize("call, match", [
    (lambda b: b.pulse("MELT", 1.0, 1e-7), "pulse kind must be one of"),
    (lambda b: b.pulse("SET", 5.5, 1e-7), r"amplitude_v: .* \[0, 5\]"),
    (lambda b: b.pulse("SET", 1.0, 1e-3), r"width_s: .* \[1e-08, 0.0001\]"),
    (lambda b: b.measure_g(0), r"n_avg: must be an integer in \[1, 1024\]"),
    (lambda b: b.emu_wait(-1.0), r"\[0, 1e\+10\]"),
])
def test_board_actions_refuse_without_sending(call: Any, match: str) -> None:
    with expected_protocol(PCMBoard, []) as board:
        with pytest.raises(ValueError, match=match):
            call(board)


def test_board_bulk_pulse_sends_records_in_one_block() -> None:
    pairs = framed([GEOM, (b"BULK:PULS SET,#236" + _records([0, 5, 9], 1.0, 1e-7), b"OK")])
    with expected_protocol(PCMBoard, pairs) as board:
        board.bulk_pulse("SET", np.array([0, 5, 9]), 1.0, 1e-7)


def test_board_bulk_pulse_per_cell_parameters() -> None:
    rec = _records([3], 2.2, 5e-8) + _records([4], 1.2, 1e-7)
    with expected_protocol(PCMBoard, framed([GEOM, (b"BULK:PULS RES,#224" + rec, b"OK")])) as board:
        board.bulk_pulse("RESET", [3, 4], [2.2, 1.2], [5e-8, 1e-7])


def test_board_bulk_measure_g() -> None:
    cells = np.array([0, 5, 9], dtype="<u4")
    g = np.array([1.5, 12.25, 20.0], dtype="<f4")
    with expected_protocol(PCMBoard, framed([GEOM, (b"BULK:MEAS:G? 8,#212" + cells.tobytes(),
                                                    b"#212" + g.tobytes())])) as board:
        got = board.bulk_measure_g(np.array([0, 5, 9]), 8)
    assert got.dtype == np.float32 and np.array_equal(got, g)


@pytest.mark.parametrize("reply, match", [
    (b"#18" + b"\0" * 8, "asked for 3 cells, got 2 values"),
    (b"#213" + b"\0" * 13, "not a whole number of 4-byte items"),
    (b"#212" + b"\0" * 12 + b"X", "1 unexpected bytes after the block"),
    (b"1.5", "bad block header"),
])
def test_board_bulk_measure_g_malformed_reply(reply: bytes, match: str) -> None:
    cells = np.array([0, 5, 9], dtype="<u4")
    with expected_protocol(PCMBoard, framed([GEOM, (b"BULK:MEAS:G? 1,#212" + cells.tobytes(), reply)])) as board:
        with pytest.raises(ProtocolError, match=match):
            board.bulk_measure_g(cells)


@pytest.mark.parametrize("call, match", [
    (lambda b: b.bulk_pulse("SET", np.array([1]), 7.0, 1e-7), r"amplitude_v: values must be finite and in \[0, 5\]"),
    (lambda b: b.bulk_pulse("SET", np.array([1, 2]), 1.0, [1e-7] * 3), r"width_s: need a scalar or 2 values"),
    (lambda b: b.bulk_measure_g(np.array([16])), r"cells must be in \[0, 15\]"),
    (lambda b: b.bulk_measure_g(np.array([[1]])), "cells must be a 1-D array of integer"),
])
def test_board_bulk_refuses_without_sending(call: Any, match: str) -> None:
    with expected_protocol(PCMBoard, framed([GEOM])) as board:
        board.geometry
        with pytest.raises(ValueError, match=match):
            call(board)


def test_board_error_reply_is_an_instrument_error() -> None:
    pairs = framed([(b"PULS RES,2.2,5e-08", b'ERR 201,"Output disabled;send OUTP 1 first"')])
    with expected_protocol(PCMBoard, pairs) as board:
        with pytest.raises(InstrumentError, match="pcm-board: error 201: Output disabled") as info:
            board.pulse("RESET", 2.2, 50e-9)
    assert info.value.code == 201


def test_board_command_not_answered_ok_is_a_protocol_error() -> None:
    with expected_protocol(PCMBoard, framed([(b"OUTP 1", b"1")])) as board:
        with pytest.raises(ProtocolError, match="expected OK"):
            board.output_enabled = True


def test_board_check_errors() -> None:
    pairs = framed([(b"SYST:ERR?", b'-222,"Data out of range"'), (b"SYST:ERR?", b'0,"No error"')])
    with expected_protocol(PCMBoard, pairs) as board:
        with pytest.raises(InstrumentError, match="-222: Data out of range"):
            board.check_errors()


def test_board_corrupted_reply_is_a_protocol_error() -> None:
    bad_crc = board_frame(b"1,4,4")[:-9] + b"DEADBEEF\n"
    with expected_protocol(PCMBoard, framed([(b"CHIP:GEOM?", b"!raw:" + bad_crc)])) as board:
        with pytest.raises(ProtocolError, match="CRC mismatch"):
            board.geometry


def test_board_discards_the_rest_of_a_bad_reply() -> None:
    pairs = framed([(b"*IDN?", b"!raw:HELLO WORLD, NOT A FRAME\n"), (b"SYST:CLK?", b"1.5")])
    with expected_protocol(PCMBoard, pairs) as board:
        with pytest.raises(ProtocolError, match="bad frame header b'HELLO WOR'"):
            board.idn
        assert board.clock_s == 1.5


def test_board_truncated_reply_is_a_timeout() -> None:
    with expected_protocol(PCMBoard, framed([(b"*IDN?", b"!raw:$00000020PCMHIL,PCM")])) as board:
        with pytest.raises(InstrumentTimeout, match="got 10 of 41 bytes"):
            board.idn


def test_board_shutdown_routes_off_then_output_off_once() -> None:
    with expected_protocol(PCMBoard, framed([(b"ROUT:EXT NONE", b"OK"), (b"OUTP 0", b"OK")])) as board:
        with board:
            pass
        board.shutdown()
        assert board.transport.closed


# -- board codec and limits ------------------------------------------------------------
def test_frame_layout_is_fixed() -> None:
    assert bp.encode_frame(b"*IDN?") == b"$00000005*IDN?0440BDA5\n" == board_frame(b"*IDN?")
    assert bp.decode_frame(b"$00000005*IDN?0440BDA5\n") == b"*IDN?"
    with pytest.raises(ProtocolError, match="CRC mismatch"):
        bp.decode_frame(b"$00000005*IDN!0440BDA5\n")
    with pytest.raises(ProtocolError, match="header"):
        bp.decode_frame(b"#00000005*IDN?0440BDA5\n")


def test_blocks_are_ieee_definite_length() -> None:
    assert bp.encode_block(b"abc") == b"#13abc"
    assert bp.encode_block(np.arange(3, dtype="<u4")) == b"#212" + struct.pack("<3I", 0, 1, 2)
    assert bp.encode_block(b"x" * 1000) == b"#41000" + b"x" * 1000
    assert bp.split_payload(b"BULK:PULS SET,#13abc") == ("BULK:PULS", ["SET", b"abc"])
    assert bp.split_payload(b"X a,#210" + b"0123456789" + b",b") == ("X", ["a", b"0123456789", "b"])


@pytest.mark.parametrize("payload, match", [
    (b"X #19abc", "announces 9 bytes, only 3 present"),
    (b"X #0abc", "bad block header"),  # indefinite length: not in the protocol
    (b"X #2+3abc", "bad block header"),  # a sign is no digit
    (b"X #512", "bad block header"),  # length digits cut off
    (b"X #A0000000000", "bad block header"),  # a hex digit count
    (b"X #13abcd", "expected ',' after a block"),
    (b"X #13abc,", "trailing ','"),
])
def test_malformed_blocks_are_protocol_errors(payload: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        bp.split_payload(payload)


@pytest.mark.parametrize("name", ["AMPLITUDE_RANGE_V", "WIDTH_RANGE_S", "COMPLIANCE_RANGE_A", "READ_BIAS_RANGE_V",
                                  "N_AVG_RANGE", "LEASE_RANGE_S", "TEMPERATURE_RANGE_K"])
def test_driver_and_emulated_board_agree_on_limits(name: str) -> None:
    assert getattr(pcm_board, name) == getattr(emulated_board, name)
