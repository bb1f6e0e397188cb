"""Keithley 2600B-series SourceMeter (TSP command syntax), over pyvisa.

Only what a cell read needs: voltage source level, current compliance, NPLC, output
on/off, current measurement, error queue. Commands follow the 2600B reference manual,
e.g. ``smua.source.levelv = 0.2`` and ``print(smua.measure.i())``.
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import Channel, Instrument, strict_discrete_set, strict_range
from .errors import ProtocolError
from .transport import MessageTransport

VOLTAGE_RANGE_V = (-200.0, 200.0)
CURRENT_LIMIT_RANGE_A = (10e-9, 1.5)
NPLC_RANGE = (0.001, 25.0)


def _tsp_float(reply: str) -> float:
    try:
        return float(reply.split("\t")[0])
    except ValueError:
        raise ProtocolError(f"expected a number, got {reply!r}") from None


def _tsp_bool(reply: str) -> bool:
    if reply not in ("true", "false"):
        raise ProtocolError(f"expected true/false, got {reply!r}")
    return reply == "true"


@dataclass(frozen=True)
class SourcedReading:
    """A current reading and the source state it was taken in."""

    current_a: float
    output_on: bool
    level_v: float
    in_compliance: bool


class SMUChannel(Channel):
    """One SMU channel, ``smua`` or ``smub``."""

    source_function = Channel.control(
        "print(smu{ch}.source.func)", "smu{ch}.source.func = %s", "Source function: 'voltage' or 'current'.",
        validator=strict_discrete_set, values={"voltage": "smu{ch}.OUTPUT_DCVOLTS", "current": "smu{ch}.OUTPUT_DCAMPS"},
        map_values=True,
        get_process=lambda r: {1.0: "smu{ch}.OUTPUT_DCVOLTS", 0.0: "smu{ch}.OUTPUT_DCAMPS"}.get(_tsp_float(r), r))
    source_voltage_v = Channel.control(
        "print(smu{ch}.source.levelv)", "smu{ch}.source.levelv = %.6g", "DC source voltage (V).",
        validator=strict_range, values=VOLTAGE_RANGE_V, get_process=_tsp_float)
    compliance_current_a = Channel.control(
        "print(smu{ch}.source.limiti)", "smu{ch}.source.limiti = %.6g", "Current compliance (A).",
        validator=strict_range, values=CURRENT_LIMIT_RANGE_A, get_process=_tsp_float)
    nplc = Channel.control(
        "print(smu{ch}.measure.nplc)", "smu{ch}.measure.nplc = %.6g", "Integration time in power-line cycles.",
        validator=strict_range, values=NPLC_RANGE, get_process=_tsp_float)
    output_enabled = Channel.control(
        "print(smu{ch}.source.output)", "smu{ch}.source.output = %d", "Output on (bool).",
        validator=strict_discrete_set, values={False: 0, True: 1}, map_values=True, get_process=_tsp_float)
    in_compliance = Channel.measurement(
        "print(smu{ch}.source.compliance)", "True while the source is limited by its compliance.",
        get_process=_tsp_bool)

    def measure_current(self) -> float:
        """One current measurement (A)."""
        return _tsp_float(self.ask("print(smu{ch}.measure.i())"))

    def measure_current_sourced(self) -> SourcedReading:
        """One current measurement with the state it was taken in, in one exchange (one round
        trip instead of four queries). A command that runs between two separate queries (one
        still in flight on a connection that was dropped) cannot come between these."""
        parts = self.ask("print(smu{ch}.measure.i(), smu{ch}.source.output, smu{ch}.source.levelv, "
                         "smu{ch}.source.compliance)").split("\t")
        if len(parts) != 4:
            raise ProtocolError(f"expected current, output, level and compliance, got {len(parts)} values: {parts!r}")
        return SourcedReading(_tsp_float(parts[0]), _tsp_float(parts[1]) == 1.0, _tsp_float(parts[2]),
                              _tsp_bool(parts[3]))

    def reset(self) -> None:
        self.write("smu{ch}.reset()")


class Keithley2600(Instrument):
    """Keithley 2600B SourceMeter, e.g. ``Keithley2600.from_resource("TCPIP::192.168.0.5::5025::SOCKET")``."""

    name = "keithley2600"

    def __init__(self, transport: MessageTransport, channels: tuple[str, ...] = ("a", "b"),
                 name: str | None = None) -> None:
        super().__init__(transport, name)
        for ch in channels:
            setattr(self, f"smu{ch}", SMUChannel(self, ch))
        self.channels = tuple(getattr(self, f"smu{ch}") for ch in channels)

    idn = Instrument.measurement("*IDN?", "Identification string.", get_process=str)

    def reset(self) -> None:
        """``reset()``: every channel to its defaults, outputs off."""
        self.write("reset()")

    def clear(self) -> None:
        self.write("errorqueue.clear()")

    def next_error(self) -> tuple[int, str]:
        parts = self.ask("print(errorqueue.next())").split("\t")
        try:
            return int(float(parts[0])), parts[1] if len(parts) > 1 else ""
        except ValueError:
            raise ProtocolError(f"malformed error queue entry {parts!r}") from None

    def safe_state(self) -> None:
        for ch in self.channels:
            ch.output_enabled = False
