"""Emulated Keysight 33522B waveform generator: the 33500 series SCPI command tree.

Headers match in short or long form, case-insensitive, with optional nodes and channel
suffixes (``SOUR1:FUNC:PULS:WIDT``, ``:source2:function:pulse:width``, ``FUNC:PULS:WIDT``
for channel 1). Several commands may share a line, separated by ``;``; a command that
does not start with ``:`` is first tried relative to the previous command's path, as
SCPI specifies, then from the root. Numeric arguments take ``MIN``, ``MAX``, ``DEF`` and
unit suffixes (``100 ns``, ``1 kHz``, ``200 mV``); numeric queries take ``MIN``/``MAX``.

Couplings of the real instrument: amplitude and offset with high and low level,
frequency with period, pulse width with period (``FUNC:PULS:HOLD WIDT|DCYC``), edge
times with width and period, displayed levels with the load setting (levels are stored
as the voltage into 50 Ω and shown scaled by ``2·R/(R+50)``), voltage limits with
levels. An out-of-range value is clipped and reported as -222; a value that conflicts
with another setting is adjusted and reported as -221 (the instrument's own behaviour).
Unknown headers give -113; a query that has no reply still costs a queued error, never
a silent timeout; nothing crashes the server.

A trigger (``*TRG`` for channels on bus trigger, ``TRIG<n>`` for any) fires one burst of
pulses into the cell the board routes to its PG port. The chip is a high-impedance
load: with the load set to 50 Ω the delivered voltage is twice the set level, as on the
real instrument. A trailing edge under 20 ns melt-quenches (RESET); slower edges let the
cell recrystallize (SET).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .bench_model import BenchModel, ErrorQueue

HIGH_Z = 9.9e37
QUENCH_EDGE_S = 20e-9
V50_MAX = 5.0           # |level| into 50 Ω
AMP50_MIN = 1e-3        # Vpp into 50 Ω
MIN_WIDTH_S = 16e-9
EDGE_RANGE_S = (8.4e-9, 1e-6)
EDGE_FRACTION = 0.625   # each edge <= 0.625 × width and <= 0.625 × (period − width)
MAX_FREQ_HZ = {"SIN": 30e6, "SQU": 30e6, "PULS": 30e6, "RAMP": 200e3, "TRI": 200e3, "PRBS": 30e6, "NOIS": 30e6,
               "DC": 30e6, "ARB": 30e6}
BUILTIN_ARB = "INT:\\BUILTIN\\EXP_RISE.ARB"
RMS_PER_VPP = {"SIN": 1 / (2 * math.sqrt(2)), "SQU": 0.5, "PULS": 0.5, "RAMP": 1 / (2 * math.sqrt(3)),
               "TRI": 1 / (2 * math.sqrt(3)), "PRBS": 0.5, "NOIS": 1 / 6.0, "ARB": 1 / (2 * math.sqrt(2)), "DC": 0.5}

UNITS = {"": 1.0, "S": 1.0, "MS": 1e-3, "US": 1e-6, "NS": 1e-9, "PS": 1e-12, "HZ": 1.0, "KHZ": 1e3, "MHZ": 1e6,
         "GHZ": 1e9, "V": 1.0, "MV": 1e-3, "UV": 1e-6, "VPP": 1.0, "MVPP": 1e-3, "VRMS": 1.0, "MVRMS": 1e-3,
         "DBM": 1.0, "DEG": 1.0, "PCT": 1.0, "OHM": 1.0, "KOHM": 1e3}
NUMBER = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*$")


class SCPIError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


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
        elif c == "|":
            out.append("|")
        elif c in "*?":
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


def _split_commands(line: str) -> list[str]:
    """``;``-separated commands; quoted strings may contain ``;``."""
    out, cur, quote = [], [], None
    for c in line:
        if quote:
            cur.append(c)
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
            cur.append(c)
        elif c == ";":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    out.append("".join(cur))
    return [c.strip() for c in out if c.strip()]


def _num_reply(v: float) -> str:
    return "%+.15E" % v


@dataclass
class PGChannel:
    """One output channel. Levels are stored as the voltage into 50 Ω (``*_50``)."""

    function: str = "SIN"
    freq_hz: float = 1e3
    high_50: float = 0.05
    low_50: float = -0.05
    unit: str = "VPP"
    phase_deg: float = 0.0
    square_dcyc: float = 50.0
    ramp_symm: float = 100.0
    width_s: float = 100e-6
    lead_s: float = 10e-9
    trail_s: float = 10e-9
    hold: str = "WIDT"
    lim_high_v: float = 5.0
    lim_low_v: float = -5.0
    lim_on: bool = False
    output: bool = False
    load_ohm: float = 50.0
    polarity: str = "NORM"
    out_mode: str = "NORM"
    burst: bool = False
    burst_mode: str = "TRIG"
    ncyc: float = 1
    burst_period_s: float = 10e-3
    burst_phase_deg: float = 0.0
    gate_pol: str = "NORM"
    trig_source: str = "IMM"
    trig_slope: str = "POS"
    trig_count: float = 1
    trig_delay_s: float = 0.0
    trig_timer_s: float = 1e-3
    freq_mode: str = "CW"
    arb: str = BUILTIN_ARB
    arb_srate: float = 40e3
    arb_adv: str = "SRAT"
    arb_filter: str = "NORM"
    out_trig: bool = False
    out_trig_slope: str = "POS"
    out_trig_source: str = "CH1"
    volatile: dict[str, int] = field(default_factory=dict)  # arb name -> points

    # displayed levels depend on the load setting
    @property
    def scale(self) -> float:
        return 2.0 if self.load_ohm >= HIGH_Z else 2.0 * self.load_ohm / (self.load_ohm + 50.0)

    @property
    def high_v(self) -> float:
        return self.high_50 * self.scale

    @property
    def low_v(self) -> float:
        return self.low_50 * self.scale

    @property
    def period_s(self) -> float:
        return 1.0 / self.freq_hz


@dataclass
class Command:
    """One node of the command tree: its header pattern and what the emulator does."""

    pattern: str
    handler: Callable[..., str | None]
    summary: str
    differs: str = ""
    channel: bool = True  # has a channel suffix / acts per channel
    regex: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        self.regex = scpi_pattern(self.pattern)


class Keysight33500BEmulator:
    """Executes one line of SCPI; returns the reply text (or None)."""

    IDN = "Keysight Technologies,33522B,MY52400001,4.00-1.19-2.00-58-00"
    MODEL = "33522B"

    def __init__(self, model: BenchModel, wired_channel: int = 1) -> None:
        self.model = model
        self.errors = ErrorQueue(size=20, overflow=(-350, "Queue overflow"))
        self.wired = wired_channel
        self.pulses_fired = 0
        self._reset_state()
        self.commands = self._build_table()

    def _reset_state(self) -> None:
        self.ch = {1: PGChannel(), 2: PGChannel(out_trig_source="CH1")}
        self.sync_on = True
        self.sync_source = "CH1"
        self.sync_mode = "NORM"
        self.sync_pol = "NORM"
        self.display_on = True
        self.display_text = ""
        self.beeper = True
        self.beeps = 0
        self.ese = 0
        self.sre = 0
        self.esr = 0

    # -- entry point ----------------------------------------------------------------
    def handle(self, line: str) -> str | None:
        replies = []
        prefix = ""
        with self.model.lock:
            for command in _split_commands(line):
                try:
                    r, prefix = self._one(command, prefix)
                except SCPIError as exc:
                    self.errors.push(exc.code, exc.message)
                    r = None
                if r is not None:
                    replies.append(r)
        return ";".join(replies) if replies else None

    def _resolve(self, header: str, prefix: str) -> tuple[Command, re.Match[str]] | None:
        candidates = [header] if header.startswith(":") or not prefix else [prefix + header, header]
        for h in candidates:
            h = h.lstrip(":")
            for cmd in self.commands:
                m = cmd.regex.match(h)
                if m:
                    return cmd, m
        return None

    def _one(self, command: str, prefix: str) -> tuple[str | None, str]:
        header, _, arg = command.partition(" ")
        header, arg = header.upper(), arg.strip() or None
        query = header.endswith("?")
        if query:
            header = header[:-1]
        if header.startswith("*"):
            return self._common(header, query, arg), prefix
        found = self._resolve(header, prefix)
        if found is None:
            raise SCPIError(-113, "Undefined header")
        cmd, m = found
        full = m.group(0)
        new_prefix = full.rsplit(":", 1)[0] + ":" if ":" in full else ""
        n = int(m.groupdict().get("ch") or 1)
        return cmd.handler(n, arg, query), new_prefix

    def _common(self, header: str, query: bool, arg: str | None) -> str | None:
        table: dict[str, tuple[Callable[[], str | None] | None, Callable[[str], None] | None]] = {
            "*IDN": (lambda: self.IDN, None), "*OPC": (lambda: "1", lambda a: None),
            "*RST": (None, lambda a: self._rst()), "*CLS": (None, lambda a: self._cls()),
            "*TRG": (None, lambda a: self._bus_trigger()), "*WAI": (None, lambda a: None),
            "*STB": (lambda: "+%d" % ((4 if len(self.errors) else 0) | (32 if self.esr & self.ese else 0)), None),
            "*ESR": (self._esr_read, None), "*ESE": (lambda: "+%d" % self.ese, lambda a: setattr(self, "ese", self._int(a, 0, 255))),
            "*SRE": (lambda: "+%d" % self.sre, lambda a: setattr(self, "sre", self._int(a, 0, 255))),
            "*OPT": (lambda: '"MEM,IQP"', None), "*TST": (lambda: "+0", None),
        }
        if header not in table:
            raise SCPIError(-113, "Undefined header")
        get, put = table[header]
        if query:
            if get is None:
                raise SCPIError(-113, "Undefined header")
            return get()
        if put is None:
            raise SCPIError(-113, "Undefined header")
        needs_arg = header in ("*ESE", "*SRE")
        if needs_arg and arg is None:
            raise SCPIError(-109, "Missing parameter")
        if not needs_arg and arg is not None:
            raise SCPIError(-108, "Parameter not allowed")
        put(arg or "")
        return None

    def _esr_read(self) -> str:
        v, self.esr = self.esr, 0
        return "+%d" % v

    def _cls(self) -> None:
        self.errors.clear()
        self.esr = 0

    # -- argument parsing -------------------------------------------------------------
    def _number(self, arg: str | None, lo: float, hi: float, default: float, allow_inf: bool = False) -> float:
        """A numeric argument, clipped to [lo, hi] with -222 as the instrument does."""
        if arg is None:
            raise SCPIError(-109, "Missing parameter")
        a = arg.strip().upper()
        special = {"MIN": lo, "MINIMUM": lo, "MAX": hi, "MAXIMUM": hi, "DEF": default, "DEFAULT": default}
        if allow_inf:
            special.update(INF=HIGH_Z, INFINITY=HIGH_Z)
        if a in special:
            return special[a]
        m = NUMBER.match(a)
        if not m or m.group(2) not in UNITS:
            raise SCPIError(-104 if not m else -131, "Data type error" if not m else "Invalid suffix")
        v = float(m.group(1)) * UNITS[m.group(2)]
        if not math.isfinite(v):
            raise SCPIError(-104, "Data type error")
        if v > hi:
            self.errors.push(-222, "Data out of range;value clipped to upper limit")
            return hi
        if v < lo:
            self.errors.push(-222, "Data out of range;value clipped to lower limit")
            return lo
        return v

    def _int(self, arg: str | None, lo: int, hi: int) -> int:
        return int(round(self._number(arg, lo, hi, lo)))

    @staticmethod
    def _query_limit(arg: str | None, lo: float, hi: float, default: float) -> float | None:
        if arg is None:
            return None
        a = arg.upper()
        if a in ("MIN", "MINIMUM"):
            return lo
        if a in ("MAX", "MAXIMUM"):
            return hi
        if a in ("DEF", "DEFAULT"):
            return default
        raise SCPIError(-108, "Parameter not allowed")

    @staticmethod
    def _choice(arg: str | None, values: dict[str, str]) -> str:
        if arg is None:
            raise SCPIError(-109, "Missing parameter")
        v = values.get(arg.strip().upper())
        if v is None:
            raise SCPIError(-224, "Illegal parameter value")
        return v

    @staticmethod
    def _onoff(arg: str | None) -> bool:
        if arg is None:
            raise SCPIError(-109, "Missing parameter")
        v = {"ON": True, "1": True, "OFF": False, "0": False}.get(arg.strip().upper())
        if v is None:
            raise SCPIError(-224, "Illegal parameter value")
        return v

    @staticmethod
    def _string(arg: str | None) -> str:
        if arg is None:
            raise SCPIError(-109, "Missing parameter")
        a = arg.strip()
        if len(a) >= 2 and a[0] == a[-1] and a[0] in "\"'":
            return a[1:-1]
        return a

    # -- generic handler factories ------------------------------------------------------
    def _numeric(self, attr: str, lo: float | Callable[[PGChannel], float], hi: float | Callable[[PGChannel], float],
                 default: float, allow_inf: bool = False, integer: bool = False,
                 after: Callable[[PGChannel], None] | None = None) -> Callable[..., str | None]:
        def bounds(ch: PGChannel) -> tuple[float, float]:
            return (lo(ch) if callable(lo) else lo), (hi(ch) if callable(hi) else hi)

        def fn(n: int, arg: str | None, query: bool) -> str | None:
            ch = self.ch[n]
            a, b = bounds(ch)
            if query:
                q = self._query_limit(arg, a, b, default)
                v = getattr(ch, attr) if q is None else q
                if integer and v < HIGH_Z:
                    return "%+d" % v
                return _num_reply(v)
            v = self._number(arg, a, b, default, allow_inf)
            setattr(ch, attr, (int(round(v)) if integer and v < HIGH_Z else v))
            if after is not None:
                after(ch)
            return None
        return fn

    def _enum(self, attr: str, values: dict[str, str], target: str = "channel") -> Callable[..., str | None]:
        def fn(n: int, arg: str | None, query: bool) -> str | None:
            obj = self.ch[n] if target == "channel" else self
            if query:
                if arg is not None:
                    raise SCPIError(-108, "Parameter not allowed")
                return getattr(obj, attr)
            setattr(obj, attr, self._choice(arg, values))
            return None
        return fn

    def _boolean(self, attr: str, target: str = "channel") -> Callable[..., str | None]:
        def fn(n: int, arg: str | None, query: bool) -> str | None:
            obj = self.ch[n] if target == "channel" else self
            if query:
                if arg is not None:
                    raise SCPIError(-108, "Parameter not allowed")
                return "1" if getattr(obj, attr) else "0"
            setattr(obj, attr, self._onoff(arg))
            return None
        return fn

    def _action(self, fn0: Callable[[int], None], takes_arg: bool = False) -> Callable[..., str | None]:
        def fn(n: int, arg: str | None, query: bool) -> str | None:
            if query:
                raise SCPIError(-113, "Undefined header")
            if arg is not None and not takes_arg:
                raise SCPIError(-108, "Parameter not allowed")
            fn0(n) if not takes_arg else fn0(n, arg)  # type: ignore[call-arg]
            return None
        return fn

    # -- the command tree ---------------------------------------------------------------
    def _build_table(self) -> list[Command]:
        E = {  # noqa: N806 - enumerations, long and short forms
            "func": {"SIN": "SIN", "SINUSOID": "SIN", "SQU": "SQU", "SQUARE": "SQU", "RAMP": "RAMP", "PULS": "PULS",
                     "PULSE": "PULS", "NOIS": "NOIS", "NOISE": "NOIS", "DC": "DC", "PRBS": "PRBS", "ARB": "ARB",
                     "TRI": "TRI", "TRIANGLE": "TRI"},
            "trig": {"IMM": "IMM", "IMMEDIATE": "IMM", "EXT": "EXT", "EXTERNAL": "EXT", "TIM": "TIM", "TIMER": "TIM",
                     "BUS": "BUS"},
            "slope": {"POS": "POS", "POSITIVE": "POS", "NEG": "NEG", "NEGATIVE": "NEG"},
            "pol": {"NORM": "NORM", "NORMAL": "NORM", "INV": "INV", "INVERTED": "INV"},
            "burst": {"TRIG": "TRIG", "TRIGGERED": "TRIG", "GAT": "GAT", "GATED": "GAT"},
            "fmode": {"CW": "CW", "FIX": "FIX", "FIXED": "FIX", "LIST": "LIST", "SWE": "SWE", "SWEEP": "SWE"},
            "hold": {"WIDT": "WIDT", "WIDTH": "WIDT", "DCYC": "DCYC", "DCYCLE": "DCYC"},
            "chan": {"CH1": "CH1", "CH2": "CH2"},
            "adv": {"TRIG": "TRIG", "TRIGGER": "TRIG", "SRAT": "SRAT", "SRATE": "SRAT"},
            "filt": {"NORM": "NORM", "NORMAL": "NORM", "STEP": "STEP", "OFF": "OFF"},
            "omode": {"NORM": "NORM", "NORMAL": "NORM", "GAT": "GAT", "GATED": "GAT"},
            "smode": {"NORM": "NORM", "NORMAL": "NORM", "CARR": "CARR", "CARRIER": "CARR", "MARK": "MARK",
                      "MARKER": "MARK"},
        }
        nm = self._numeric
        C = Command  # noqa: N806
        return [
            C("[SOURce#:]FUNCtion[:SHAPe]", self._function, "waveform SIN, SQU, TRI, RAMP, PULS, PRBS, NOIS, ARB, DC",
              "only PULS drives the chip; other shapes are stored"),
            C("[SOURce#:]FREQuency[:CW]", self._frequency, "frequency (Hz); coupled with the pulse period"),
            C("[SOURce#:]FREQuency:FIXed", self._frequency, "same as FREQ"),
            C("[SOURce#:]FREQuency:MODE", self._enum("freq_mode", E["fmode"]), "CW, FIX, LIST, SWE",
              "sweeps and lists are not generated"),
            C("[SOURce#:]PHASe[:ADJust]", nm("phase_deg", -360.0, 360.0, 0.0), "phase offset (deg)"),
            C("[SOURce#:]PHASe:SYNChronize", self._action(lambda n: None), "align the channels' phases",
              "no effect (no waveform is synthesized)", channel=False),
            C("[SOURce#:]VOLTage[:LEVel][:IMMediate][:AMPLitude]", self._amplitude,
              "amplitude in the VOLT:UNIT unit; coupled with high/low and offset"),
            C("[SOURce#:]VOLTage[:LEVel][:IMMediate]:OFFSet", self._offset, "offset (V); coupled with high/low"),
            C("[SOURce#:]VOLTage[:LEVel][:IMMediate]:HIGH", self._level("high"), "high level (V)"),
            C("[SOURce#:]VOLTage[:LEVel][:IMMediate]:LOW", self._level("low"), "low level (V)"),
            C("[SOURce#:]VOLTage:UNIT", self._unit, "VPP, VRMS or DBM (DBM refused at high-Z load)"),
            C("[SOURce#:]VOLTage:LIMit:HIGH", self._limit("lim_high_v"), "output limit, high (V)"),
            C("[SOURce#:]VOLTage:LIMit:LOW", self._limit("lim_low_v"), "output limit, low (V)"),
            C("[SOURce#:]VOLTage:LIMit:STATe", self._limit_state, "enforce the output limits"),
            C("[SOURce#:]FUNCtion:SQUare:DCYCle", nm("square_dcyc", 0.01, 99.99, 50.0), "square duty cycle (%)"),
            C("[SOURce#:]FUNCtion:RAMP:SYMMetry", nm("ramp_symm", 0.0, 100.0, 100.0), "ramp symmetry (%)"),
            C("[SOURce#:]FUNCtion:PULSe:PERiod", self._pulse_period, "pulse period (s); sets the frequency"),
            C("[SOURce#:]FUNCtion:PULSe:WIDTh", self._pulse_width, "pulse width (s), 16 ns … period − 16 ns"),
            C("[SOURce#:]FUNCtion:PULSe:DCYCle", self._pulse_dcyc, "pulse duty cycle (%), i.e. width/period"),
            C("[SOURce#:]FUNCtion:PULSe:HOLD", self._enum("hold", E["hold"]),
              "WIDT or DCYC: what is held when the period changes"),
            C("[SOURce#:]FUNCtion:PULSe:TRANsition[:BOTH]", self._edge("both"),
              "both edge times (s); the query answers the leading edge"),
            C("[SOURce#:]FUNCtion:PULSe:TRANsition:LEADing", self._edge("lead_s"), "leading edge (s), 8.4 ns … 1 µs"),
            C("[SOURce#:]FUNCtion:PULSe:TRANsition:TRAiling", self._edge("trail_s"),
              "trailing edge (s); < 20 ns quenches the cell (RESET), slower edges SET"),
            C("[SOURce#:]FUNCtion:ARBitrary", self._arb_select, "select an arb loaded with DATA:ARB",
              "only the name and point count are kept"),
            C("[SOURce#:]FUNCtion:ARBitrary:SRATe", nm("arb_srate", 1e-6, 250e6, 40e3), "arb sample rate (Sa/s)"),
            C("[SOURce#:]FUNCtion:ARBitrary:ADVance", self._enum("arb_adv", E["adv"]), "TRIG or SRAT"),
            C("[SOURce#:]FUNCtion:ARBitrary:FILTer", self._enum("arb_filter", E["filt"]), "NORM, STEP or OFF"),
            C("[SOURce#:]FUNCtion:ARBitrary:PTPeak", self._arb_ptp, "arb peak-to-peak (V), same as the amplitude"),
            C("[SOURce#:]FUNCtion:ARBitrary:POINts", self._arb_points, "points of the selected arb (query)"),
            C("[SOURce#:]DATA:ARBitrary:DAC", self._data_arb(32767), "load an arb (name, DAC values ±32767)",
              "values are counted and range-checked, not played"),
            C("[SOURce#:]DATA:ARBitrary", self._data_arb(1.0), "load an arb (name, values ±1)",
              "values are counted and range-checked, not played"),
            C("[SOURce#:]DATA:VOLatile:CLEar", self._action(lambda n: self.ch[n].volatile.clear()),
              "clear the arb memory"),
            C("[SOURce#:]DATA:VOLatile:CATalog", self._vol_catalog, "names of the loaded arbs (query)"),
            C("[SOURce#:]BURSt:STATe", self._boolean("burst"), "burst mode on/off"),
            C("[SOURce#:]BURSt:MODE", self._enum("burst_mode", E["burst"]), "TRIG or GAT",
              "gated bursts fire nothing (no gate input)"),
            C("[SOURce#:]BURSt:NCYCles", nm("ncyc", 1, 1e8, 1, allow_inf=True, integer=True),
              "cycles per burst (INF allowed)", "an INF burst fires one pulse per trigger"),
            C("[SOURce#:]BURSt:INTernal:PERiod", nm("burst_period_s", 1e-6, 8e3, 10e-3), "burst period (s)"),
            C("[SOURce#:]BURSt:PHASe", nm("burst_phase_deg", -360.0, 360.0, 0.0), "burst start phase (deg)"),
            C("[SOURce#:]BURSt:GATE:POLarity", self._enum("gate_pol", E["pol"]), "gate polarity NORM or INV"),
            C("OUTPut#[:STATe]", self._boolean("output"), "output on/off"),
            C("OUTPut#:LOAD", self._load, "expected load (Ω), 1 … 10 kΩ or INF; rescales the displayed levels"),
            C("OUTPut#:POLarity", self._enum("polarity", E["pol"]), "NORM or INV",
              "INV stores the setting; the chip sees the same |high − low| pulse"),
            C("OUTPut#:MODE", self._enum("out_mode", E["omode"]), "NORM or GAT"),
            C("OUTPut:SYNC[:STATe]", self._boolean("sync_on", "global"), "sync output on/off", channel=False),
            C("OUTPut:SYNC:SOURce", self._enum("sync_source", E["chan"], "global"), "CH1 or CH2", channel=False),
            C("OUTPut:SYNC:MODE", self._enum("sync_mode", E["smode"], "global"), "NORM, CARR or MARK",
              channel=False),
            C("OUTPut:SYNC:POLarity", self._enum("sync_pol", E["pol"], "global"), "NORM or INV", channel=False),
            C("OUTPut:TRIGger[:STATe]", self._boolean("out_trig"), "trigger output on/off", channel=False),
            C("OUTPut:TRIGger:SLOPe", self._enum("out_trig_slope", E["slope"]), "POS or NEG", channel=False),
            C("OUTPut:TRIGger:SOURce", self._enum("out_trig_source", E["chan"]), "CH1 or CH2", channel=False),
            C("TRIGger#[:IMMediate]", self._action(self._trigger_now), "trigger now (any trigger source)"),
            C("TRIGger#:SOURce", self._enum("trig_source", E["trig"]), "IMM, EXT, TIM or BUS",
              "EXT and TIM never fire (no trigger input, no timer)"),
            C("TRIGger#:SLOPe", self._enum("trig_slope", E["slope"]), "POS or NEG"),
            C("TRIGger#:COUNt", nm("trig_count", 1, 1e6, 1, allow_inf=True, integer=True), "triggers accepted"),
            C("TRIGger#:DELay", nm("trig_delay_s", 0.0, 1000.0, 0.0), "trigger delay (s)",
              "stored; the virtual clock is not advanced"),
            C("TRIGger#:TIMer", nm("trig_timer_s", 1e-6, 8000.0, 1e-3), "trigger timer period (s)"),
            C("DISPlay[:STATe]", self._boolean("display_on", "global"), "front panel on/off", channel=False),
            C("DISPlay:TEXT[:DATA]", self._display_text, "text message on the display", channel=False),
            C("DISPlay:TEXT:CLEar", self._action(lambda n: setattr(self, "display_text", "")),
              "remove the text message", channel=False),
            C("SYSTem:BEEPer[:IMMediate]", self._action(self._beep), "beep (counted)", channel=False),
            C("SYSTem:BEEPer:STATe", self._boolean("beeper", "global"), "beeper on/off", channel=False),
            C("SYSTem:ERRor[:NEXT]", self._error_next, "oldest error (query), +0,\"No error\" when empty",
              channel=False),
            C("SYSTem:VERSion", self._const("1999.0"), "SCPI version (query)", channel=False),
        ]

    # -- handlers: waveform -------------------------------------------------------------
    def _const(self, value: str) -> Callable[..., str | None]:
        def fn(n: int, arg: str | None, query: bool) -> str | None:
            if not query:
                raise SCPIError(-113, "Undefined header")
            return value
        return fn

    def _function(self, n: int, arg: str | None, query: bool) -> str | None:
        ch = self.ch[n]
        if query:
            return ch.function
        ch.function = self._choice(arg, {k: v for k, v in {
            "SIN": "SIN", "SINUSOID": "SIN", "SQU": "SQU", "SQUARE": "SQU", "RAMP": "RAMP", "PULS": "PULS",
            "PULSE": "PULS", "NOIS": "NOIS", "NOISE": "NOIS", "DC": "DC", "PRBS": "PRBS", "ARB": "ARB",
            "TRI": "TRI", "TRIANGLE": "TRI"}.items()})
        top = MAX_FREQ_HZ[ch.function]
        if ch.freq_hz > top:
            self.errors.push(-221, "Settings conflict;frequency reduced for the new function")
            self._set_period(ch, 1.0 / top)
        return None

    def _frequency(self, n: int, arg: str | None, query: bool) -> str | None:
        ch = self.ch[n]
        lo, hi = 1e-6, MAX_FREQ_HZ[ch.function]
        if query:
            q = self._query_limit(arg, lo, hi, 1e3)
            return _num_reply(ch.freq_hz if q is None else q)
        self._set_period(ch, 1.0 / self._number(arg, lo, hi, 1e3))
        return None

    def _pulse_period(self, n: int, arg: str | None, query: bool) -> str | None:
        ch = self.ch[n]
        lo, hi = 33e-9, 1e6
        if query:
            q = self._query_limit(arg, lo, hi, 1e-3)
            return _num_reply(ch.period_s if q is None else q)
        self._set_period(ch, self._number(arg, lo, hi, 1e-3))
        return None

    def _set_period(self, ch: PGChannel, period: float) -> None:
        """New period; the width follows FUNC:PULS:HOLD and is adjusted to fit, edges too."""
        dcyc = ch.width_s / ch.period_s
        ch.freq_hz = 1.0 / period
        if ch.hold == "DCYC":
            ch.width_s = dcyc * period
        ch.width_s = min(max(ch.width_s, MIN_WIDTH_S), max(MIN_WIDTH_S, period - MIN_WIDTH_S))
        self._fit_edges(ch)

    def _edge_max(self, ch: PGChannel) -> float:
        return max(EDGE_RANGE_S[0], EDGE_FRACTION * min(ch.width_s, ch.period_s - ch.width_s))

    def _fit_edges(self, ch: PGChannel) -> None:
        top = self._edge_max(ch)
        ch.lead_s, ch.trail_s = min(ch.lead_s, top), min(ch.trail_s, top)

    def _pulse_width(self, n: int, arg: str | None, query: bool) -> str | None:
        ch = self.ch[n]
        lo, hi = MIN_WIDTH_S, 1e6
        if query:
            q = self._query_limit(arg, lo, hi, 100e-6)
            return _num_reply(ch.width_s if q is None else q)
        self._set_width(ch, self._number(arg, lo, hi, 100e-6))
        return None

    def _set_width(self, ch: PGChannel, w: float) -> None:
        top = ch.period_s - MIN_WIDTH_S
        if w > top:
            self.errors.push(-221, "Settings conflict;pulse width decreased due to period")
            w = max(MIN_WIDTH_S, top)
        ch.width_s = w
        self._fit_edges(ch)  # the instrument adjusts the edges to fit the new width

    def _pulse_dcyc(self, n: int, arg: str | None, query: bool) -> str | None:
        ch = self.ch[n]
        if query:
            q = self._query_limit(arg, 0.0, 100.0, 10.0)
            return _num_reply(100.0 * ch.width_s / ch.period_s if q is None else q)
        self._set_width(ch, self._number(arg, 0.0, 100.0, 10.0) / 100.0 * ch.period_s)
        return None

    def _edge(self, which: str) -> Callable[..., str | None]:
        def fn(n: int, arg: str | None, query: bool) -> str | None:
            ch = self.ch[n]
            lo, hi = EDGE_RANGE_S
            if query:
                q = self._query_limit(arg, lo, hi, 10e-9)
                return _num_reply((ch.lead_s if which == "both" else getattr(ch, which)) if q is None else q)
            v = self._number(arg, lo, hi, 10e-9)
            top = self._edge_max(ch)
            if v > top:
                self.errors.push(-221, "Settings conflict;edge time decreased due to pulse width")
                v = top
            for attr in (("lead_s", "trail_s") if which == "both" else (which,)):
                setattr(ch, attr, v)
            return None
        return fn

    # -- handlers: levels ---------------------------------------------------------------------
    def _check_limits(self, ch: PGChannel, high_50: float, low_50: float) -> None:
        if ch.lim_on and not (ch.lim_low_v <= low_50 * ch.scale and high_50 * ch.scale <= ch.lim_high_v):
            raise SCPIError(-221, "Settings conflict;level outside the output voltage limits")

    def _level(self, which: str) -> Callable[..., str | None]:
        def fn(n: int, arg: str | None, query: bool) -> str | None:
            ch = self.ch[n]
            s = ch.scale
            lo, hi = (-V50_MAX * s + AMP50_MIN * s, V50_MAX * s) if which == "high" else \
                     (-V50_MAX * s, V50_MAX * s - AMP50_MIN * s)
            if query:
                q = self._query_limit(arg, lo, hi, 0.05 * s if which == "high" else -0.05 * s)
                return _num_reply((ch.high_v if which == "high" else ch.low_v) if q is None else q)
            v50 = self._number(arg, lo, hi, 0.05 * s if which == "high" else -0.05 * s) / s
            high, low = (v50, ch.low_50) if which == "high" else (ch.high_50, v50)
            if high - low < AMP50_MIN - 1e-15:
                # the instrument moves the other level to keep the minimum amplitude
                self.errors.push(-221, "Settings conflict;high level must be above low level")
                if which == "high":
                    low = high - AMP50_MIN
                else:
                    high = low + AMP50_MIN
            self._check_limits(ch, high, low)
            ch.high_50, ch.low_50 = high, low
            return None
        return fn

    def _amp_in_unit(self, ch: PGChannel, vpp: float) -> float:
        if ch.unit == "VPP":
            return vpp
        vrms = vpp * RMS_PER_VPP[ch.function]
        if ch.unit == "VRMS":
            return vrms
        return 10 * math.log10(max(vrms, 1e-12) ** 2 / ch.load_ohm / 1e-3)

    def _vpp_from_unit(self, ch: PGChannel, v: float) -> float:
        if ch.unit == "VPP":
            return v
        if ch.unit == "VRMS":
            return v / RMS_PER_VPP[ch.function]
        return math.sqrt(10 ** (v / 10) * 1e-3 * ch.load_ohm) / RMS_PER_VPP[ch.function]

    def _amplitude(self, n: int, arg: str | None, query: bool) -> str | None:
        ch = self.ch[n]
        s = ch.scale
        lo_pp, hi_pp = AMP50_MIN * s, 2 * V50_MAX * s
        lo, hi = self._amp_in_unit(ch, lo_pp), self._amp_in_unit(ch, hi_pp)
        if query:
            q = self._query_limit(arg, lo, hi, self._amp_in_unit(ch, 0.1 * s))
            return _num_reply(self._amp_in_unit(ch, (ch.high_50 - ch.low_50) * s) if q is None else q)
        amp50 = self._vpp_from_unit(ch, self._number(arg, lo, hi, self._amp_in_unit(ch, 0.1 * s))) / s
        off50 = (ch.high_50 + ch.low_50) / 2
        room = 2 * (V50_MAX - abs(off50))
        if amp50 > room + 1e-12:
            self.errors.push(-221, "Settings conflict;amplitude changed due to offset")
            amp50 = room
        high, low = off50 + amp50 / 2, off50 - amp50 / 2
        self._check_limits(ch, high, low)
        ch.high_50, ch.low_50 = high, low
        return None

    def _offset(self, n: int, arg: str | None, query: bool) -> str | None:
        ch = self.ch[n]
        s = ch.scale
        lo, hi = -(V50_MAX - AMP50_MIN / 2) * s, (V50_MAX - AMP50_MIN / 2) * s
        if query:
            q = self._query_limit(arg, lo, hi, 0.0)
            return _num_reply((ch.high_50 + ch.low_50) / 2 * s if q is None else q)
        off50 = self._number(arg, lo, hi, 0.0) / s
        amp50 = ch.high_50 - ch.low_50
        room = 2 * (V50_MAX - abs(off50))
        if amp50 > room + 1e-12:
            self.errors.push(-221, "Settings conflict;offset changed due to amplitude")
            off50 = math.copysign(V50_MAX - amp50 / 2, off50)
        high, low = off50 + amp50 / 2, off50 - amp50 / 2
        self._check_limits(ch, high, low)
        ch.high_50, ch.low_50 = high, low
        return None

    def _unit(self, n: int, arg: str | None, query: bool) -> str | None:
        ch = self.ch[n]
        if query:
            return ch.unit
        unit = self._choice(arg, {"VPP": "VPP", "VRMS": "VRMS", "DBM": "DBM"})
        if unit == "DBM" and ch.load_ohm >= HIGH_Z:
            raise SCPIError(-221, "Settings conflict;dBm units not available with a high-Z load")
        ch.unit = unit
        return None

    def _limit(self, attr: str) -> Callable[..., str | None]:
        def fn(n: int, arg: str | None, query: bool) -> str | None:
            ch = self.ch[n]
            lo, hi = -2 * V50_MAX, 2 * V50_MAX
            if query:
                q = self._query_limit(arg, lo, hi, V50_MAX if attr == "lim_high_v" else -V50_MAX)
                return _num_reply(getattr(ch, attr) if q is None else q)
            v = self._number(arg, lo, hi, V50_MAX if attr == "lim_high_v" else -V50_MAX)
            other = ch.lim_low_v if attr == "lim_high_v" else ch.lim_high_v
            if (attr == "lim_high_v" and v <= other) or (attr == "lim_low_v" and v >= other):
                raise SCPIError(-221, "Settings conflict;high limit must be above low limit")
            if ch.lim_on:
                hi_v, lo_v = (v, other) if attr == "lim_high_v" else (other, v)
                if not (lo_v <= ch.low_v and ch.high_v <= hi_v):
                    raise SCPIError(-221, "Settings conflict;output level outside the new limit")
            setattr(ch, attr, v)
            return None
        return fn

    def _limit_state(self, n: int, arg: str | None, query: bool) -> str | None:
        ch = self.ch[n]
        if query:
            return "1" if ch.lim_on else "0"
        on = self._onoff(arg)
        if on and not (ch.lim_low_v <= ch.low_v and ch.high_v <= ch.lim_high_v):
            raise SCPIError(-221, "Settings conflict;output level outside the limits")
        ch.lim_on = on
        return None

    def _load(self, n: int, arg: str | None, query: bool) -> str | None:
        ch = self.ch[n]
        if query:
            q = self._query_limit(arg, 1.0, 10e3, 50.0)
            return _num_reply(ch.load_ohm if q is None else q)
        ch.load_ohm = self._number(arg, 1.0, 10e3, 50.0, allow_inf=True)
        if ch.load_ohm >= HIGH_Z and ch.unit == "DBM":
            ch.unit = "VPP"
            self.errors.push(-221, "Settings conflict;amplitude units changed to Vpp for a high-Z load")
        return None

    # -- handlers: arbs, display, system ----------------------------------------------------
    def _arb_select(self, n: int, arg: str | None, query: bool) -> str | None:
        ch = self.ch[n]
        if query:
            return '"%s"' % ch.arb
        name = self._string(arg)
        if name != BUILTIN_ARB and name not in ch.volatile:
            raise SCPIError(-224, "Illegal parameter value;arb waveform not loaded")
        ch.arb = name
        return None

    def _arb_ptp(self, n: int, arg: str | None, query: bool) -> str | None:
        ch = self.ch[n]
        unit, ch.unit = ch.unit, "VPP"
        try:
            return self._amplitude(n, arg, query)
        finally:
            ch.unit = unit

    def _arb_points(self, n: int, arg: str | None, query: bool) -> str | None:
        if not query:
            raise SCPIError(-113, "Undefined header")
        ch = self.ch[n]
        return "+%d" % ch.volatile.get(ch.arb, 8)

    def _data_arb(self, limit: float) -> Callable[..., str | None]:
        def fn(n: int, arg: str | None, query: bool) -> str | None:
            return self._load_arb(n, arg, query, limit)
        return fn

    def _load_arb(self, n: int, arg: str | None, query: bool, limit: float) -> str | None:
        if query:
            raise SCPIError(-113, "Undefined header")
        if arg is None:
            raise SCPIError(-109, "Missing parameter")
        name, *values = [a.strip() for a in arg.split(",")]
        try:
            data = [float(v) for v in values]
        except ValueError:
            raise SCPIError(-104, "Data type error") from None
        if not 8 <= len(data) <= 65536:
            raise SCPIError(-222, "Data out of range;an arb has 8 … 65536 points")
        if any(abs(v) > limit for v in data):
            raise SCPIError(-222, "Data out of range;arb values must lie within ±%g" % limit)
        self.ch[n].volatile[name] = len(data)
        return None

    def _vol_catalog(self, n: int, arg: str | None, query: bool) -> str | None:
        if not query:
            raise SCPIError(-113, "Undefined header")
        return ",".join('"%s"' % k for k in self.ch[n].volatile) or '""'

    def _display_text(self, n: int, arg: str | None, query: bool) -> str | None:
        if query:
            return '"%s"' % self.display_text
        self.display_text = self._string(arg)[:40]
        return None

    def _beep(self, n: int) -> None:
        if self.beeper:
            self.beeps += 1

    def _error_next(self, n: int, arg: str | None, query: bool) -> str | None:
        if not query:
            raise SCPIError(-113, "Undefined header")
        e = self.errors.pop()
        return '+0,"No error"' if e is None else '%+d,"%s"' % e

    # -- actions --------------------------------------------------------------------
    def _rst(self) -> None:
        self._reset_state()

    def _bus_trigger(self) -> None:
        bus = [n for n, ch in self.ch.items() if ch.trig_source == "BUS"]
        if not bus:
            raise SCPIError(-211, "Trigger ignored")
        for n in bus:
            if self.ch[n].burst:
                self._fire(n, self.ch[n])

    def _trigger_now(self, n: int) -> None:
        ch = self.ch[n]
        if not ch.burst:
            raise SCPIError(-211, "Trigger ignored")
        self._fire(n, ch)

    def _fire(self, n: int, ch: PGChannel) -> None:
        if not ch.output or ch.function != "PULS" or ch.burst_mode != "TRIG":
            return
        count = 1 if ch.ncyc >= HIGH_Z else int(ch.ncyc)
        self.pulses_fired += count
        cell = self.model.routed_cell("PG") if n == self.wired else None
        if cell is None:
            return
        # the levels are stored as the voltage into 50 Ω; into the chip's high impedance
        # the generator delivers twice that, whatever the load setting says
        amplitude = max(0.0, 2.0 * (ch.high_50 - ch.low_50))
        kind = "RESET" if ch.trail_s < QUENCH_EDGE_S else "SET"
        for _ in range(count):
            self.model.chip.pulse(np.array([cell]), kind, amplitude, ch.width_s)


def command_table(emu: Keysight33500BEmulator | None = None) -> list[tuple[str, str, str]]:
    """(header, what it does, how the emulator differs from the 33522B) for every command."""
    if emu is None:
        emu = Keysight33500BEmulator(BenchModel.create(None, seed=0))
    rows = [(c.pattern.replace("#", "[1|2]"), c.summary, c.differs) for c in emu.commands]
    rows += [(h, s, d) for h, s, d in (
        ("*IDN?", "identity", ""), ("*RST", "defaults, outputs off", ""), ("*CLS", "clear errors and status", ""),
        ("*OPC / *OPC?", "operation complete", "always complete at once"), ("*WAI", "wait", "returns at once"),
        ("*TRG", "bus trigger (channels with TRIG:SOUR BUS)", ""), ("*STB? *ESR? *ESE *SRE *OPT? *TST?",
                                                                     "status and self-test", "self-test always passes"))]
    return rows
