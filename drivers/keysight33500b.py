"""Keysight 33500B-series waveform generator as a single-shot pulse source (SCPI), over pyvisa.

Pulse function, high/low levels, width, edges, burst of one cycle on a bus trigger,
output load and voltage limits, error queue. Syntax per the 33500B programming guide,
e.g. ``SOUR1:FUNC:PULS:WIDT 1e-07``, ``OUTP1:LOAD INF``, ``*TRG``.
"""
from __future__ import annotations

from .base import Channel, Instrument, strict_discrete_set, strict_range
from .errors import ProtocolError
from .transport import MessageTransport

LEVEL_RANGE_V = (-10.0, 10.0)  # into high impedance
WIDTH_RANGE_S = (16e-9, 1e6)
EDGE_RANGE_S = (8.4e-9, 1e-6)
PERIOD_RANGE_S = (33e-9, 1e6)
HIGH_Z = 9.9e37


def _scpi_float(reply: str) -> float:
    try:
        return float(reply)
    except ValueError:
        raise ProtocolError(f"expected a number, got {reply!r}") from None


class PulseChannel(Channel):
    """Output channel 1 or 2."""

    function = Channel.control(
        "SOUR{ch}:FUNC?", "SOUR{ch}:FUNC %s", "Waveform: PULS, SIN, SQU, RAMP, TRI, NOIS, PRBS, DC, ARB.",
        validator=strict_discrete_set, values=["PULS", "SIN", "SQU", "RAMP", "TRI", "NOIS", "PRBS", "DC", "ARB"],
        get_process=str)
    high_v = Channel.control("SOUR{ch}:VOLT:HIGH?", "SOUR{ch}:VOLT:HIGH %.6g", "High level (V).",
                             validator=strict_range, values=LEVEL_RANGE_V, get_process=_scpi_float)
    low_v = Channel.control("SOUR{ch}:VOLT:LOW?", "SOUR{ch}:VOLT:LOW %.6g", "Low level (V).",
                            validator=strict_range, values=LEVEL_RANGE_V, get_process=_scpi_float)
    width_s = Channel.control("SOUR{ch}:FUNC:PULS:WIDT?", "SOUR{ch}:FUNC:PULS:WIDT %.6g", "Pulse width (s).",
                              validator=strict_range, values=WIDTH_RANGE_S, get_process=_scpi_float)
    period_s = Channel.control("SOUR{ch}:FUNC:PULS:PER?", "SOUR{ch}:FUNC:PULS:PER %.6g", "Pulse period (s).",
                               validator=strict_range, values=PERIOD_RANGE_S, get_process=_scpi_float)
    leading_edge_s = Channel.control(
        "SOUR{ch}:FUNC:PULS:TRAN:LEAD?", "SOUR{ch}:FUNC:PULS:TRAN:LEAD %.6g", "Leading edge time (s).",
        validator=strict_range, values=EDGE_RANGE_S, get_process=_scpi_float)
    trailing_edge_s = Channel.control(
        "SOUR{ch}:FUNC:PULS:TRAN:TRA?", "SOUR{ch}:FUNC:PULS:TRAN:TRA %.6g", "Trailing edge time (s).",
        validator=strict_range, values=EDGE_RANGE_S, get_process=_scpi_float)
    limit_high_v = Channel.control("SOUR{ch}:VOLT:LIM:HIGH?", "SOUR{ch}:VOLT:LIM:HIGH %.6g",
                                   "Output voltage limit, high (V).", validator=strict_range, values=LEVEL_RANGE_V,
                                   get_process=_scpi_float)
    limit_low_v = Channel.control("SOUR{ch}:VOLT:LIM:LOW?", "SOUR{ch}:VOLT:LIM:LOW %.6g",
                                  "Output voltage limit, low (V).", validator=strict_range, values=LEVEL_RANGE_V,
                                  get_process=_scpi_float)
    limits_enabled = Channel.control(
        "SOUR{ch}:VOLT:LIM:STAT?", "SOUR{ch}:VOLT:LIM:STAT %d", "Voltage limits enforced (bool).",
        validator=strict_discrete_set, values={False: 0, True: 1}, map_values=True)
    output_enabled = Channel.control(
        "OUTP{ch}?", "OUTP{ch} %d", "Output on (bool).",
        validator=strict_discrete_set, values={False: 0, True: 1}, map_values=True)
    high_impedance_load = Channel.control(
        "OUTP{ch}:LOAD?", "OUTP{ch}:LOAD %s", "Load setting: True = INF (high-Z, levels as set), False = 50 Ω.",
        validator=strict_discrete_set, values={True: "INF", False: "50"}, map_values=True,
        get_process=lambda r: "INF" if _scpi_float(r) >= HIGH_Z else "50")
    burst_enabled = Channel.control(
        "SOUR{ch}:BURS:STAT?", "SOUR{ch}:BURS:STAT %d", "Burst mode on (bool).",
        validator=strict_discrete_set, values={False: 0, True: 1}, map_values=True)
    burst_mode = Channel.control("SOUR{ch}:BURS:MODE?", "SOUR{ch}:BURS:MODE %s", "TRIG or GAT.",
                                 validator=strict_discrete_set, values=["TRIG", "GAT"], get_process=str)
    burst_cycles = Channel.control("SOUR{ch}:BURS:NCYC?", "SOUR{ch}:BURS:NCYC %d", "Cycles per burst.",
                                   validator=strict_range, values=(1, 1e8), get_process=lambda r: int(_scpi_float(r)))
    trigger_source = Channel.control("TRIG{ch}:SOUR?", "TRIG{ch}:SOUR %s", "IMM, EXT, TIM or BUS.",
                                     validator=strict_discrete_set, values=["IMM", "EXT", "TIM", "BUS"],
                                     get_process=str)

    def configure_single_pulse(self, high_v: float, width_s: float, leading_s: float, trailing_s: float,
                               limit_v: float) -> None:
        """One pulse 0 → ``high_v`` per bus trigger, into a high-impedance load, output limited to ±``limit_v``."""
        self.output_enabled = False
        self.high_impedance_load = True
        self.function = "PULS"
        self.limit_high_v = limit_v
        self.limit_low_v = -limit_v
        self.limits_enabled = True
        self.low_v = 0.0
        self.high_v = high_v
        self.period_s = max(10 * width_s, 1e-6)
        self.width_s = width_s
        self.leading_edge_s = leading_s
        self.trailing_edge_s = trailing_s
        self.burst_mode = "TRIG"
        self.burst_cycles = 1
        self.burst_enabled = True
        self.trigger_source = "BUS"


class Keysight33500B(Instrument):
    """Keysight 33500B waveform generator, e.g. ``Keysight33500B.from_resource("TCPIP::192.168.0.6::5025::SOCKET")``."""

    name = "keysight33500b"

    def __init__(self, transport: MessageTransport, channels: tuple[int, ...] = (1, 2),
                 name: str | None = None) -> None:
        super().__init__(transport, name)
        for ch in channels:
            setattr(self, f"ch{ch}", PulseChannel(self, ch))
        self.channels = tuple(getattr(self, f"ch{ch}") for ch in channels)

    idn = Instrument.measurement("*IDN?", "Identification string.", get_process=str)

    def reset(self) -> None:
        self.write("*RST")

    def clear(self) -> None:
        self.write("*CLS")

    def trigger(self) -> None:
        """Bus trigger (``*TRG``): fires one burst on channels whose trigger source is BUS."""
        self.write("*TRG")

    def wait_complete(self) -> None:
        """Block until pending operations have finished (``*OPC?``)."""
        if self.ask("*OPC?") != "1":
            raise ProtocolError("*OPC? did not answer 1")

    def next_error(self) -> tuple[int, str]:
        code, _, msg = self.ask("SYST:ERR?").partition(",")
        try:
            return int(code), msg.strip('"')
        except ValueError:
            raise ProtocolError(f"malformed error reply {code!r}") from None

    def safe_state(self) -> None:
        for ch in self.channels:
            ch.output_enabled = False
