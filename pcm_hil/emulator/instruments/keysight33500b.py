"""Emulated Keysight 33522B waveform generator: the pulse subset of its SCPI command set.

Headers match in short or long form, case-insensitive, with optional nodes and channel
suffixes (``SOUR1:FUNC:PULS:WIDT``, ``:source2:function:pulse:width``,
``FUNC:PULS:WIDT`` for channel 1). Several commands may share a line, separated by ``;``
(each taken from the root). Out-of-range values are clipped and reported as -222, as the
instrument does; unknown headers give -113; nothing crashes the server.

A bus trigger fires one pulse into the cell the board routes to its PG port. The chip is
a high-impedance load: with the load set to 50 Ω the delivered voltage is twice the set
level, as on the real instrument. A trailing edge under 20 ns melt-quenches (RESET);
slower edges let the cell recrystallize (SET).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .bench_model import BenchModel, ErrorQueue

HIGH_Z = 9.9e37
QUENCH_EDGE_S = 20e-9


def scpi_pattern(pattern: str) -> re.Pattern[str]:
    """Regex for a SCPI header pattern such as ``[SOURce#:]FUNCtion:PULSe:WIDTh``."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "[":
            out.append("(?:")
        elif c == "]":
            out.append(")?")
        elif c == ":":
            out.append(":")
        elif c == "*" or c == "?":
            out.append(re.escape(c))
        else:
            m = re.match(r"[A-Za-z]+#?", pattern[i:])
            assert m, pattern
            word = m.group(0)
            short = "".join(ch for ch in word if ch.isupper())
            long_ = word.rstrip("#").upper()
            alts = short if short == long_ else f"{short}|{long_}"
            out.append(f"(?:{alts})" + (r"(?P<ch>[12])?" if word.endswith("#") else ""))
            i += len(word)
            continue
        i += 1
    return re.compile("".join(out) + r"\Z")


@dataclass
class PGChannel:
    function: str = "SIN"
    high_v: float = 0.05
    low_v: float = -0.05
    width_s: float = 100e-6
    period_s: float = 1e-3
    lead_s: float = 10e-9
    trail_s: float = 10e-9
    lim_high_v: float = 5.0
    lim_low_v: float = -5.0
    lim_on: bool = False
    output: bool = False
    load_ohm: float = 50.0
    burst: bool = False
    burst_mode: str = "TRIG"
    ncyc: int = 1
    trig_source: str = "IMM"


FUNCS = {"SIN": "SIN", "SINUSOID": "SIN", "SQU": "SQU", "SQUARE": "SQU", "RAMP": "RAMP", "PULS": "PULS",
         "PULSE": "PULS", "NOIS": "NOIS", "NOISE": "NOIS", "DC": "DC", "PRBS": "PRBS", "ARB": "ARB",
         "TRI": "TRI", "TRIANGLE": "TRI"}


class Keysight33500BEmulator:
    """Executes one line of SCPI; returns the reply text (or None)."""

    IDN = "Keysight Technologies,33522B,MY52400001,4.00-1.19-2.00-58-00"

    def __init__(self, model: BenchModel, wired_channel: int = 1) -> None:
        self.model = model
        self.errors = ErrorQueue(size=20, overflow=(-350, "Error queue overflow"))
        self.ch = {1: PGChannel(), 2: PGChannel()}
        self.wired = wired_channel
        self.pulses_fired = 0
        n = self._num
        self._table: list[tuple[re.Pattern[str], Callable[[PGChannel, str | None, bool], str | None]]] = [
            (scpi_pattern(p), fn) for p, fn in [
                ("[SOURce#:]FUNCtion[:SHAPe]", self._function),
                ("[SOURce#:]FUNCtion:PULSe:WIDTh", n("width_s", 16e-9, 1e6)),
                ("[SOURce#:]FUNCtion:PULSe:PERiod", n("period_s", 33e-9, 1e6)),
                ("[SOURce#:]FUNCtion:PULSe:TRANsition:LEADing", n("lead_s", 8.4e-9, 1e-6)),
                ("[SOURce#:]FUNCtion:PULSe:TRANsition:TRAiling", n("trail_s", 8.4e-9, 1e-6)),
                ("[SOURce#:]VOLTage:HIGH", self._level("high_v")),
                ("[SOURce#:]VOLTage:LOW", self._level("low_v")),
                ("[SOURce#:]VOLTage:LIMit:HIGH", n("lim_high_v", -10.0, 10.0)),
                ("[SOURce#:]VOLTage:LIMit:LOW", n("lim_low_v", -10.0, 10.0)),
                ("[SOURce#:]VOLTage:LIMit:STATe", self._bool("lim_on")),
                ("[SOURce#:]BURSt:STATe", self._bool("burst")),
                ("[SOURce#:]BURSt:MODE", self._enum("burst_mode", {"TRIG": "TRIG", "TRIGGERED": "TRIG",
                                                                   "GAT": "GAT", "GATED": "GAT"})),
                ("[SOURce#:]BURSt:NCYCles", n("ncyc", 1, 1e8, integer=True)),
                ("OUTPut#[:STATe]", self._bool("output")),
                ("OUTPut#:LOAD", self._load),
                ("TRIGger#:SOURce", self._enum("trig_source", {"IMM": "IMM", "IMMEDIATE": "IMM", "EXT": "EXT",
                                                               "EXTERNAL": "EXT", "TIM": "TIM", "TIMER": "TIM",
                                                               "BUS": "BUS"})),
                ("TRIGger#[:IMMediate]", self._trigger_now),
            ]]
        self._system_err = scpi_pattern("SYSTem:ERRor[:NEXT]")

    # -- entry point ----------------------------------------------------------------
    def handle(self, line: str) -> str | None:
        replies = []
        with self.model.lock:
            for command in line.strip().split(";"):
                command = command.strip()
                if command:
                    r = self._one(command)
                    if r is not None:
                        replies.append(r)
        return ";".join(replies) if replies else None

    def _one(self, command: str) -> str | None:
        header, _, arg = command.partition(" ")
        arg = arg.strip() or None
        header = header.lstrip(":").upper()
        query = header.endswith("?")
        if query:
            header = header[:-1]
            if arg is not None:
                self.errors.push(-108, "Parameter not allowed")
                return None
        common = {"*IDN": lambda: self.IDN, "*OPC": lambda: "1" if query else None, "*RST": self._rst,
                  "*CLS": self.errors.clear, "*TRG": self._bus_trigger, "*WAI": lambda: None}
        if header in common:
            if query and header not in ("*IDN", "*OPC") or (not query and header == "*IDN"):
                self.errors.push(-113, "Undefined header")
                return None
            return common[header]()
        if self._system_err.match(header) and query:
            e = self.errors.pop()
            return '+0,"No error"' if e is None else '%+d,"%s"' % e
        for pat, fn in self._table:
            m = pat.match(header)
            if m:
                ch = self.ch[int(m.group("ch") or 1)]
                if not query and arg is None:
                    self.errors.push(-109, "Missing parameter")
                    return None
                return fn(ch, arg, query)
        self.errors.push(-113, "Undefined header")
        return None

    # -- value handlers -------------------------------------------------------------
    def _parse_num(self, arg: str, lo: float, hi: float) -> float | None:
        special = {"MIN": lo, "MINIMUM": lo, "MAX": hi, "MAXIMUM": hi}
        if arg.upper() in special:
            return special[arg.upper()]
        try:
            v = float(arg)
        except ValueError:
            self.errors.push(-104, "Data type error")
            return None
        if not np.isfinite(v):
            self.errors.push(-104, "Data type error")
            return None
        if v > hi:
            self.errors.push(-222, "Data out of range;value clipped to upper limit")
            return hi
        if v < lo:
            self.errors.push(-222, "Data out of range;value clipped to lower limit")
            return lo
        return v

    def _num(self, attr: str, lo: float, hi: float, integer: bool = False) -> Callable:
        def fn(ch: PGChannel, arg: str | None, query: bool) -> str | None:
            if query:
                v = getattr(ch, attr)
                return "%+d" % v if integer else "%+.15E" % v
            v = self._parse_num(arg, lo, hi)
            if v is not None:
                if attr == "width_s" and v >= ch.period_s:
                    self.errors.push(-221, "Settings conflict;pulse width must be less than the period")
                    return None
                setattr(ch, attr, int(round(v)) if integer else v)
            return None
        return fn

    def _level(self, attr: str) -> Callable:
        def fn(ch: PGChannel, arg: str | None, query: bool) -> str | None:
            if query:
                return "%+.15E" % getattr(ch, attr)
            v = self._parse_num(arg, -10.0, 10.0)
            if v is None:
                return None
            if ch.lim_on and not ch.lim_low_v <= v <= ch.lim_high_v:
                self.errors.push(-221, "Settings conflict;level outside the voltage limits")
                return None
            setattr(ch, attr, v)
            return None
        return fn

    def _bool(self, attr: str) -> Callable:
        def fn(ch: PGChannel, arg: str | None, query: bool) -> str | None:
            if query:
                return "1" if getattr(ch, attr) else "0"
            value = {"ON": True, "1": True, "OFF": False, "0": False}.get(arg.upper())
            if value is None:
                self.errors.push(-224, "Illegal parameter value")
            else:
                setattr(ch, attr, value)
            return None
        return fn

    def _enum(self, attr: str, values: dict[str, str]) -> Callable:
        def fn(ch: PGChannel, arg: str | None, query: bool) -> str | None:
            if query:
                return getattr(ch, attr)
            if arg.upper() not in values:
                self.errors.push(-224, "Illegal parameter value")
            else:
                setattr(ch, attr, values[arg.upper()])
            return None
        return fn

    def _function(self, ch: PGChannel, arg: str | None, query: bool) -> str | None:
        return self._enum("function", FUNCS)(ch, arg, query)

    def _load(self, ch: PGChannel, arg: str | None, query: bool) -> str | None:
        if query:
            return "%+.15E" % ch.load_ohm
        if arg.upper() in ("INF", "INFINITY"):
            ch.load_ohm = HIGH_Z
            return None
        v = self._parse_num(arg, 1.0, 10e3)
        if v is not None:
            ch.load_ohm = v
        return None

    # -- actions --------------------------------------------------------------------
    def _rst(self) -> None:
        self.ch = {1: PGChannel(), 2: PGChannel()}

    def _bus_trigger(self) -> None:
        for n, ch in self.ch.items():
            if ch.burst and ch.trig_source == "BUS":
                self._fire(n, ch)

    def _trigger_now(self, ch: PGChannel, arg: str | None, query: bool) -> None:
        if query or arg is not None:
            self.errors.push(-108, "Parameter not allowed")
            return None
        n = 1 if ch is self.ch[1] else 2
        if ch.burst:
            self._fire(n, ch)
        else:
            self.errors.push(-211, "Trigger ignored")
        return None

    def _fire(self, n: int, ch: PGChannel) -> None:
        if not ch.output or ch.function != "PULS":
            return
        self.pulses_fired += ch.ncyc
        cell = self.model.routed_cell("PG") if n == self.wired else None
        if cell is None:
            return
        # the set levels assume the load setting; into the chip's high impedance a 50 Ω
        # setting delivers twice the voltage
        gain = 1.0 if ch.load_ohm >= HIGH_Z else (ch.load_ohm + 50.0) / ch.load_ohm
        amplitude = max(0.0, (ch.high_v - ch.low_v) * gain)
        kind = "RESET" if ch.trail_s < QUENCH_EDGE_S else "SET"
        for _ in range(ch.ncyc):
            self.model.chip.pulse(np.array([cell]), kind, amplitude, ch.width_s)

