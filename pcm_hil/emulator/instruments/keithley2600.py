"""Emulated Keithley 2636B SourceMeter: TSP (the instrument's Lua dialect) on a Lua subset.

Every line is a Lua chunk run by :mod:`.tsp` in one global environment that holds the
instrument's objects: ``smua``/``smub`` (``source.*``, ``measure.*`` with buffered
measurements, ``nvbuffer1``/``nvbuffer2``, ``sense``, ``reset()``), ``localnode``,
``status.measurement.instrument.smuX.condition`` (compliance bits), ``errorqueue``,
``display``, ``format`` (ASCII, REAL32, REAL64, byte order), ``beeper``, ``timer``,
``printbuffer``/``printnumber``, ``delay``, ``waitcomplete``, ``reset()``. Scripts:
``loadscript [name]`` / ``loadandrunscript [name]`` … ``endscript`` collect the lines
in between; a named script becomes a global with ``run()``. ``*IDN?``, ``*RST``,
``*CLS``, ``*OPC?``, ``*TRG``, ``*WAI`` are understood as on the instrument.

Errors go to the error queue with the instrument's codes (-285 syntax, -286 runtime,
-222 out of range); nothing crashes the server. Every attribute is readable after
power-on and ``reset()``. The SMU measures the cell the board routes to its SMU port:
I = V·G (voltage source) or V = I/G (current source), limited by the compliance.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .bench_model import BenchModel, ErrorQueue
from .tsp import Interpreter, LuaError, Node, Table, number_text, runtime_error, standard_library, tostring

MODEL = "2636B"
V_RANGES = (0.2, 2.0, 20.0, 200.0)
I_RANGES = (1e-9, 10e-9, 100e-9, 1e-6, 10e-6, 100e-6, 1e-3, 10e-3, 100e-3, 1.0, 1.5)
LIMITS = {"levelv": (-202.0, 202.0), "leveli": (-1.515, 1.515), "limiti": (10e-9, 1.515), "limitv": (0.02, 202.0),
          "nplc": (0.001, 25.0), "count": (1, 60000), "interval": (0.0, 1.0), "delay": (0.0, 1e4),
          "capacity": (0, 60000)}
BUFFER_CAPACITY = 60000
VOLTAGE_LIMIT_BIT, CURRENT_LIMIT_BIT = 1, 2


def _num(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise runtime_error(f"bad argument to `{what}' (number expected, got {type(v).__name__})")
    return float(v)


def _ranged(v: Any, what: str, key: str) -> float:
    x = _num(v, what)
    lo, hi = LIMITS[key]
    if not lo <= x <= hi:
        raise LuaError(-222, f"Parameter too big or too small: {what} accepted [{lo:g}, {hi:g}]")
    return x


def _flag(v: Any, what: str, allowed: tuple[float, ...] = (0.0, 1.0)) -> int:
    x = _num(v, what)
    if x not in allowed:
        raise LuaError(-222, f"Parameter data out of range: {what}")
    return int(x)


def _pick_range(value: float, ranges: tuple[float, ...], what: str) -> float:
    for r in ranges:
        if abs(value) <= r * (1 + 1e-9):
            return r
    raise LuaError(-222, f"Parameter too big or too small: {what} at most {ranges[-1]:g}")


@dataclass
class SMUState:
    """One channel's settings, as after ``smuX.reset()``."""

    func: int = 1  # OUTPUT_DCVOLTS
    levelv: float = 0.0
    leveli: float = 0.0
    limiti: float = 100e-6
    limitv: float = 20.0
    nplc: float = 1.0
    output: int = 0
    offmode: int = 0
    sense: int = 0  # SENSE_LOCAL
    src_rangev: float = 0.2
    src_rangei: float = 100e-9
    src_autorangev: int = 1
    src_autorangei: int = 1
    src_delay: float = -1.0  # DELAY_AUTO
    meas_rangev: float = 0.2
    meas_rangei: float = 100e-9
    meas_autorangev: int = 1
    meas_autorangei: int = 1
    autozero: int = 2  # AUTOZERO_AUTO
    count: int = 1
    interval: float = 0.0
    meas_delay: float = -1.0
    filter_enable: int = 0
    filter_count: int = 1
    filter_type: int = 1
    compliance: bool = False
    condition: int = 0


@dataclass
class Buffer:
    """``smuX.nvbufferN``: readings with timestamps and source values."""

    name: str
    readings: list[float] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    sourcevalues: list[float] = field(default_factory=list)
    statuses: list[float] = field(default_factory=list)
    appendmode: int = 0
    collecttimestamps: int = 1
    collectsourcevalues: int = 0
    fresh: bool = True  # a measurement sequence starts with the next reading

    def clear(self) -> None:
        self.readings.clear()
        self.timestamps.clear()
        self.sourcevalues.clear()
        self.statuses.clear()

    def node(self) -> Node:
        def series(name: str, values: list[float]) -> Node:
            n = _ArrayNode(f"{self.name}.{name}", values)
            return n

        b = _ArrayNode(self.name, self.readings, props={
            "n": (lambda: float(len(self.readings)), None),
            "capacity": (lambda: float(BUFFER_CAPACITY), None),
            "appendmode": (lambda: float(self.appendmode), lambda v: setattr(self, "appendmode", _flag(v, "appendmode"))),
            "collecttimestamps": (lambda: float(self.collecttimestamps),
                                  lambda v: setattr(self, "collecttimestamps", _flag(v, "collecttimestamps"))),
            "collectsourcevalues": (lambda: float(self.collectsourcevalues),
                                    lambda v: setattr(self, "collectsourcevalues", _flag(v, "collectsourcevalues"))),
            "timestampresolution": (lambda: 1e-6, lambda v: None),
            "basetimestamp": (lambda: 0.0, None),
        })
        b.fields.update(readings=series("readings", self.readings), timestamps=series("timestamps", self.timestamps),
                        sourcevalues=series("sourcevalues", self.sourcevalues),
                        statuses=series("statuses", self.statuses), clear=lambda: self.clear(),
                        clearcache=lambda: None)
        return b


class _ArrayNode(Node):
    """A node that is also indexable by 1-based reading number (``buf[i]``, ``buf.readings[i]``)."""

    def __init__(self, name: str, values: list[float], props: dict | None = None) -> None:
        super().__init__(name, props=props)
        self.values = values
        self.props.setdefault("n", (lambda: float(len(self.values)), None))

    def get(self, key: Any) -> Any:
        if isinstance(key, (int, float)) and not isinstance(key, bool):
            i = int(key)
            return self.values[i - 1] if 1 <= i <= len(self.values) and i == key else None
        return super().get(key)


class ScriptObject(Node):
    """A named script loaded with ``loadscript``: ``name()`` or ``name.run()`` runs it."""

    def __init__(self, name: str, source: str, run: Callable[[str], None]) -> None:
        super().__init__(name, fields={"name": name, "source": source})
        self.fields["run"] = lambda *a: run(source)
        self._run = run

    def __call__(self, *args: Any) -> None:
        self._run(self.fields["source"])


class Keithley2600Emulator:
    """Executes one line of TSP; returns the printed text (or None)."""

    IDN = "Keithley Instruments Inc., Model 2636B, 4471234, 3.3.5"
    LINEFREQ = 50.0

    def __init__(self, model: BenchModel, seed: int = 0, channels: tuple[str, ...] = ("a", "b")) -> None:
        self.model = model
        self.errors = ErrorQueue(size=2048, overflow=(-350, "Queue overflow"))
        self.channel_names = channels
        self.channels = {ch: SMUState() for ch in channels}
        self.buffers = {ch: {n: Buffer(f"smu{ch}.nvbuffer{n}") for n in (1, 2)} for ch in channels}
        self.wired = channels[0]  # the board's SMU port is wired to the first channel
        self._rng = np.random.default_rng(seed)
        self.display_text = ""
        self.display_screen = 2.0
        self.beeps = 0
        self.fmt = {"data": 1.0, "asciiprecision": 6.0, "byteorder": 1.0}
        self._out: list[str] = []
        self._script: tuple[str, str | None, list[str]] | None = None  # (mode, name, lines) while loading
        self.t0 = self.model.chip.now()
        # ground truth for tests and the fault soak: every reading (measure.*) of the wired channel
        # as the instrument made it, before any wire fault: (routed cell or None, current A, voltage V)
        self.measurements: list[tuple[int | None, float, float]] = []
        self.read_offset_us = 0.0  # fault injection: what the SMU adds to the conductance it reports
        self.offset_reads = 0      # fault injection: readings that carried that offset
        self.globals = self._build_globals()
        self.interp = Interpreter(self.globals)

    # -- entry point ----------------------------------------------------------------
    def handle(self, line: str) -> str | None:
        line = line.rstrip("\r")
        stripped = line.strip()
        self._out = []
        if self._script is not None:
            if stripped == "endscript":
                self._end_script()
            else:
                self._script[2].append(line)
            return self._flush()
        if not stripped:
            return None
        words = stripped.split()
        if words[0] in ("loadscript", "loadandrunscript") and len(words) <= 2:
            self._script = (words[0], words[1] if len(words) == 2 else None, [])
            return None
        if stripped.startswith("*"):
            return self._common(stripped)
        self._run(line)
        return self._flush()

    def _flush(self) -> str | None:
        out, self._out = self._out, []
        return "\n".join(out) if out else None

    def _run(self, source: str) -> None:
        try:
            with self.model.lock:
                self.interp.run(source)
        except LuaError as exc:
            self.errors.push(exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001 - a script never takes the server down
            self.errors.push(-286, f"TSP Runtime error: {type(exc).__name__}")

    def _end_script(self) -> None:
        mode, name, lines = self._script  # type: ignore[misc]
        self._script = None
        source = "\n".join(lines)
        if name is not None:
            self.globals.set(name, ScriptObject(name, source, self._run_nested))
        else:
            self.globals.get("script").fields["anonymous"] = ScriptObject("anonymous", source, self._run_nested)
        if mode == "loadandrunscript":
            self._run(source)

    def _run_nested(self, source: str) -> None:
        Interpreter(self.globals).run(source)

    def _common(self, line: str) -> str | None:
        cmd = line.upper()
        if cmd == "*IDN?":
            return self.IDN
        if cmd == "*RST":
            with self.model.lock:
                self._reset_all()
        elif cmd == "*CLS":
            self.errors.clear()
        elif cmd == "*OPC?":
            return "1"
        elif cmd not in ("*OPC", "*WAI", "*TRG"):
            self.errors.push(-113, "Undefined header")
        return None

    # -- the instrument's namespace ---------------------------------------------------
    def _build_globals(self) -> Table:
        g = Table(standard_library(self._out_append, lambda: int(self.fmt["asciiprecision"])))
        for ch in self.channel_names:
            g.set(f"smu{ch}", self._smu_node(ch))
        g.set("localnode", Node("localnode", fields={"model": MODEL, "serialno": "4471234", "revision": "3.3.5",
                                                      "description": "Keithley Instruments SMU 2636B - 4471234",
                                                      "reset": lambda: self._reset_all()}, props={
            "linefreq": (lambda: self.LINEFREQ, lambda v: setattr(self, "LINEFREQ", float(_flag(v, "linefreq", (50.0, 60.0))))),
            "autolinefreq": (lambda: False, lambda v: None),
            "prompts": (lambda: 0.0, lambda v: None), "showerrors": (lambda: 0.0, lambda v: None),
            "password": (lambda: "", lambda v: None)}))
        g.set("errorqueue", Node("errorqueue", fields={"clear": lambda: self.errors.clear(), "next": self._err_next},
                                 props={"count": (lambda: float(len(self.errors)), None)}))
        g.set("status", self._status_node())
        g.set("display", self._display_node())
        g.set("format", Node("format", fields={"ASCII": 1.0, "SREAL": 4.0, "REAL32": 4.0, "REAL": 8.0, "REAL64": 8.0,
                                               "DREAL": 8.0, "NORMAL": 0.0, "BIGENDIAN": 0.0, "NETWORK": 0.0,
                                               "SWAPPED": 1.0, "LITTLEENDIAN": 1.0}, props={
            "data": (lambda: self.fmt["data"], lambda v: self.fmt.__setitem__("data", float(_flag(v, "format.data", (1.0, 4.0, 8.0))))),
            "asciiprecision": (lambda: self.fmt["asciiprecision"],
                               lambda v: self.fmt.__setitem__("asciiprecision", float(_flag(v, "asciiprecision", tuple(float(i) for i in range(1, 17)))))),
            "byteorder": (lambda: self.fmt["byteorder"], lambda v: self.fmt.__setitem__("byteorder", float(_flag(v, "byteorder"))))}))
        g.set("beeper", Node("beeper", fields={"beep": lambda d=0.1, f=1000: setattr(self, "beeps", self.beeps + 1),
                                               "ON": 1.0, "OFF": 0.0}, props={"enable": (lambda: 1.0, lambda v: None)}))
        g.set("timer", Node("timer", fields={"reset": self._timer_reset,
                                             "measure": Node("timer.measure", fields={"t": self._timer_t})}))
        g.set("script", Node("script", fields={"anonymous": None}))
        g.set("reset", lambda *a: self._reset_all())
        g.set("delay", self._delay)
        g.set("waitcomplete", lambda *a: None)
        g.set("printbuffer", self._printbuffer)
        g.set("printnumber", lambda *a: self._out_append(", ".join(self._ascii(_num(x, "printnumber")) for x in a)))
        g.set("opc", lambda: None)
        g.set("exit", lambda: None)
        return g

    def _out_append(self, text: str) -> None:
        self._out.append(text)

    def _ascii(self, v: float) -> str:
        return number_text(v, int(self.fmt["asciiprecision"]))

    def _err_next(self) -> list[Any]:
        e = self.errors.pop()
        if e is None:
            return [0.0, "Queue Is Empty", 0.0, 0.0]
        return [float(e[0]), e[1], 2.0, 0.0]

    def _timer_reset(self) -> None:
        self.t0 = self.model.chip.now()

    def _timer_t(self) -> float:
        return float(self.model.chip.now() - self.t0)

    def _delay(self, seconds: Any = 0.0) -> None:
        s = _num(seconds, "delay")
        if s < 0:
            raise LuaError(-222, "Parameter too big or too small: delay")
        self.model.chip.wait(s)  # the virtual clock advances; no real sleep

    def _status_node(self) -> Node:
        inst = Node("status.measurement.instrument", fields={
            f"smu{ch}": Node(f"status.measurement.instrument.smu{ch}", fields={
                "VOLTAGE_LIMIT": float(VOLTAGE_LIMIT_BIT), "CURRENT_LIMIT": float(CURRENT_LIMIT_BIT)}, props={
                "condition": (lambda ch=ch: float(self.channels[ch].condition), None),
                "event": (lambda ch=ch: float(self.channels[ch].condition), None),
                "enable": (lambda: 0.0, lambda v: None)}) for ch in self.channel_names})
        meas = Node("status.measurement", fields={"instrument": inst}, props={
            "condition": (lambda: float(any(s.condition for s in self.channels.values())), None)})
        return Node("status", fields={"measurement": meas, "reset": lambda: None}, props={
            "condition": (lambda: float(4 if len(self.errors) else 0), None)})

    def _display_node(self) -> Node:
        def settext(text: Any) -> None:
            self.display_text = tostring(text)[:32]

        return Node("display", fields={"settext": settext, "clear": lambda: setattr(self, "display_text", ""),
                                       "gettext": lambda *a: self.display_text, "setcursor": lambda *a: None,
                                       "sendkey": lambda key: None, "getlastkey": lambda: 0.0,
                                       "SMUA": 0.0, "SMUB": 1.0, "SMUA_SMUB": 2.0, "USER": 3.0,
                                       "KEY_EXIT": 75.0}, props={
            "screen": (lambda: self.display_screen,
                       lambda v: setattr(self, "display_screen", float(_flag(v, "display.screen", (0.0, 1.0, 2.0, 3.0))))),
        })

    def _smu_node(self, ch: str) -> Node:
        st = lambda: self.channels[ch]  # noqa: E731 - the state object is replaced by reset()

        def prop(attr: str, conv: Callable[[Any], Any]) -> tuple[Callable[[], Any], Callable[[Any], None]]:
            return (lambda: float(getattr(st(), attr)), lambda v: setattr(st(), attr, conv(v)))

        def level(attr: str, rng: str, auto: str, ranges: tuple[float, ...]) -> tuple:
            def setter(v: Any) -> None:
                x = _ranged(v, f"smu{ch}.source.{attr}", attr)
                s = st()
                if getattr(s, auto):
                    setattr(s, rng, _pick_range(x, ranges, f"smu{ch}.source.{attr}"))
                elif abs(x) > getattr(s, rng) * 1.01:
                    raise LuaError(-222, f"Parameter too big or too small: smu{ch}.source.{attr} exceeds the range")
                setattr(s, attr, x)
            return (lambda: float(getattr(st(), attr)), setter)

        def rng_prop(attr: str, auto: str, ranges: tuple[float, ...], what: str) -> tuple:
            def setter(v: Any) -> None:
                r = _pick_range(_num(v, what), ranges, what)
                setattr(st(), attr, r)
                setattr(st(), auto, 0)  # an explicit range turns autorange off
            return (lambda: float(getattr(st(), attr)), setter)

        def auto_prop(attr: str) -> tuple:
            return prop(attr, lambda v: _flag(v, attr))

        source = Node(f"smu{ch}.source", props={
            "func": prop("func", lambda v: _flag(v, "source.func")),
            "levelv": level("levelv", "src_rangev", "src_autorangev", V_RANGES),
            "leveli": level("leveli", "src_rangei", "src_autorangei", I_RANGES),
            "limiti": prop("limiti", lambda v: _ranged(v, f"smu{ch}.source.limiti", "limiti")),
            "limitv": prop("limitv", lambda v: _ranged(v, f"smu{ch}.source.limitv", "limitv")),
            "output": prop("output", lambda v: _flag(v, "source.output")),
            "offmode": prop("offmode", lambda v: _flag(v, "source.offmode", (0.0, 1.0, 2.0))),
            "rangev": rng_prop("src_rangev", "src_autorangev", V_RANGES, f"smu{ch}.source.rangev"),
            "rangei": rng_prop("src_rangei", "src_autorangei", I_RANGES, f"smu{ch}.source.rangei"),
            "autorangev": auto_prop("src_autorangev"), "autorangei": auto_prop("src_autorangei"),
            "delay": prop("src_delay", lambda v: _num(v, "source.delay")),
            "compliance": (lambda: self._compliance(ch), None),
        })
        filt = Node(f"smu{ch}.measure.filter", props={
            "enable": prop("filter_enable", lambda v: _flag(v, "filter.enable")),
            "count": prop("filter_count", lambda v: int(_ranged(v, "filter.count", "count"))),
            "type": prop("filter_type", lambda v: _flag(v, "filter.type", (0.0, 1.0, 2.0)))})
        measure = Node(f"smu{ch}.measure", fields={
            "filter": filt,
            "i": lambda *b: self._measure_call(ch, "i", b), "v": lambda *b: self._measure_call(ch, "v", b),
            "r": lambda *b: self._measure_call(ch, "r", b), "p": lambda *b: self._measure_call(ch, "p", b),
            "iv": lambda *b: self._measure_call(ch, "iv", b),
        }, props={
            "nplc": prop("nplc", lambda v: _ranged(v, f"smu{ch}.measure.nplc", "nplc")),
            "rangev": rng_prop("meas_rangev", "meas_autorangev", V_RANGES, f"smu{ch}.measure.rangev"),
            "rangei": rng_prop("meas_rangei", "meas_autorangei", I_RANGES, f"smu{ch}.measure.rangei"),
            "autorangev": auto_prop("meas_autorangev"), "autorangei": auto_prop("meas_autorangei"),
            "autozero": prop("autozero", lambda v: _flag(v, "measure.autozero", (0.0, 1.0, 2.0))),
            "count": prop("count", lambda v: int(_ranged(v, f"smu{ch}.measure.count", "count"))),
            "interval": prop("interval", lambda v: _ranged(v, f"smu{ch}.measure.interval", "interval")),
            "delay": prop("meas_delay", lambda v: _num(v, "measure.delay")),
        })
        consts = {"OUTPUT_ON": 1.0, "OUTPUT_OFF": 0.0, "OUTPUT_DCVOLTS": 1.0, "OUTPUT_DCAMPS": 0.0,
                  "AUTORANGE_ON": 1.0, "AUTORANGE_OFF": 0.0, "AUTORANGE_FOLLOW_LIMIT": 2.0,
                  "SENSE_LOCAL": 0.0, "SENSE_REMOTE": 1.0, "SENSE_CALA": 3.0,
                  "AUTOZERO_OFF": 0.0, "AUTOZERO_ONCE": 1.0, "AUTOZERO_AUTO": 2.0,
                  "OUTPUT_NORMAL": 0.0, "OUTPUT_HIGH_Z": 1.0, "OUTPUT_ZERO": 2.0, "DELAY_AUTO": -1.0, "DELAY_OFF": 0.0,
                  "FILTER_MOVING_AVG": 0.0, "FILTER_REPEAT_AVG": 1.0, "FILTER_MEDIAN": 2.0,
                  "ENABLE": 1.0, "DISABLE": 0.0}
        node = Node(f"smu{ch}", fields={"source": source, "measure": measure, "reset": lambda: self._reset(ch),
                                        "nvbuffer1": self.buffers[ch][1].node(),
                                        "nvbuffer2": self.buffers[ch][2].node(), **consts},
                    props={"sense": prop("sense", lambda v: _flag(v, "smu.sense", (0.0, 1.0, 3.0)))})
        return node

    # -- actions --------------------------------------------------------------------
    def _reset(self, ch: str) -> None:
        self.channels[ch] = SMUState()
        for b in self.buffers[ch].values():
            b.clear()
            b.appendmode, b.collecttimestamps, b.collectsourcevalues = 0, 1, 0

    def _reset_all(self) -> None:
        for ch in self.channel_names:
            self._reset(ch)
        self.fmt = {"data": 1.0, "asciiprecision": 6.0, "byteorder": 1.0}
        self.display_text = ""
        self.display_screen = 2.0

    def _compliance(self, ch: str) -> bool:
        s = self.channels[ch]
        if s.output:
            self._measure(s, ch)
        return s.compliance

    def _buffer_of(self, node: Any, ch: str) -> Buffer:
        for c in self.channel_names:
            for b in self.buffers[c].values():
                if isinstance(node, Node) and node.name == b.name:
                    return b
        raise runtime_error(f"bad argument to smu{ch}.measure (reading buffer expected)")

    def _measure_call(self, ch: str, what: str, bufs: tuple) -> list[float]:
        s = self.channels[ch]
        targets = [self._buffer_of(b, ch) for b in bufs if b is not None]
        if what == "iv" and len(targets) == 1:
            raise runtime_error(f"smu{ch}.measure.iv needs two reading buffers")
        if not targets:
            return self._one_reading(s, ch, what)
        for b in targets:
            if b.appendmode == 0:
                b.clear()
        values: list[float] = []
        for k in range(s.count):
            if k and s.interval:
                self.model.chip.wait(s.interval)
            values = self._one_reading(s, ch, what)
            t = float(self.model.chip.now() - self.t0)
            for b, v in zip(targets, values):
                if len(b.readings) >= BUFFER_CAPACITY:
                    raise LuaError(-286, "TSP Runtime error: reading buffer full")
                b.readings.append(v)
                b.timestamps.append(t)
                b.sourcevalues.append(s.levelv if s.func == 1 else s.leveli)
                b.statuses.append(float(s.condition))
        return values

    def _one_reading(self, s: SMUState, ch: str, what: str) -> list[float]:
        i, v = self._measure(s, ch)
        if ch == self.wired:
            self.measurements.append((self.model.routed_cell("SMU"), i, v))  # what it truly measured
            if self.read_offset_us and v:  # a reading that measures wrong, well formed (fault injection)
                i += self.read_offset_us * 1e-6 * v
                self.offset_reads += 1
        return {"i": [i], "v": [v], "r": [v / i if i else 9.91e37], "p": [v * i], "iv": [i, v]}[what]

    def _measure(self, s: SMUState, ch: str) -> tuple[float, float]:
        """(current A, voltage V) at the output terminals; sets the compliance flags."""
        if not s.output:
            s.compliance, s.condition = False, 0
            return float(self._rng.normal(0, 1e-12)), 0.0
        g_us = self.model.read_routed("SMU", n_avg=max(1, min(1024, round(16 * s.nplc)))) if ch == self.wired else None
        g = (g_us or 0.0) * 1e-6  # siemens
        if s.func == 1:  # voltage source: I = V·G, limited by limiti
            v = s.levelv
            i = v * g + float(self._rng.normal(0, 1e-12 + 1e-5 * abs(v * g)))
            s.compliance = abs(i) > s.limiti
            if s.compliance:
                i = math.copysign(s.limiti, i)
            s.condition = CURRENT_LIMIT_BIT if s.compliance else 0
            return i, v
        i = s.leveli  # current source: V = I/G, limited by limitv
        v = i / g if g > 0 else math.copysign(math.inf, i) if i else 0.0
        s.compliance = abs(v) > s.limitv
        if s.compliance:
            v = math.copysign(s.limitv, v)
            i = v * g
        s.condition = VOLTAGE_LIMIT_BIT if s.compliance else 0
        v += float(self._rng.normal(0, 1e-6))
        return i, v

    def _printbuffer(self, start: Any, end: Any, *bufs: Any) -> None:
        a, b = int(_num(start, "printbuffer")), int(_num(end, "printbuffer"))
        series = []
        for node in bufs:
            if not isinstance(node, _ArrayNode):
                raise runtime_error("bad argument to printbuffer (reading buffer expected)")
            series.append(node.values)
        if not series or a < 1 or b < a or any(b > len(s) for s in series):
            raise LuaError(-286, "TSP Runtime error: printbuffer index out of range")
        values = [s[k] for k in range(a - 1, b) for s in series]
        if self.fmt["data"] == 1.0:
            self._out.append(", ".join(self._ascii(v) for v in values))
            return
        code = ("<" if self.fmt["byteorder"] == 1.0 else ">") + ("f" if self.fmt["data"] == 4.0 else "d") * len(values)
        self._out.append("#0" + struct.pack(code, *values).decode("latin-1"))


def command_table() -> list[tuple[str, str, str]]:
    """(TSP name, what it is, how the emulator differs from the 2636B), generated from the namespace."""
    emu = Keithley2600Emulator(BenchModel.create(None, seed=0))
    rows: list[tuple[str, str, str]] = []
    notes = {
        "smua.source.levelv": "drives the cell routed to the SMU port (smua only); smub sources into nothing",
        "smua.measure.i": "I = V·G of the routed cell + noise; limited by limiti (compliance bit 2)",
        "smua.measure.interval": "advances the virtual clock of the emulated chip",
        "delay": "advances the virtual clock; returns at once",
        "smua.source.delay": "stored, not applied", "smua.measure.delay": "stored, not applied",
        "smua.measure.filter": "stored, not applied", "smua.measure.autozero": "stored, not applied",
        "smua.sense": "stored; 4-wire sensing has no effect", "localnode.linefreq": "50 Hz, settable to 50 or 60",
        "display": "text is kept for tests; nothing is drawn", "format.data": "ASCII, REAL32, REAL64",
        "status": "only the measurement-instrument compliance bits are modelled",
    }

    def walk(prefix: str, node: Node) -> None:
        for k in sorted(node.props):
            name = f"{prefix}.{k}"
            rows.append((name, "attribute" + ("" if node.props[k][1] else " (read-only)"), notes.get(name, "")))
        for k, v in sorted(node.fields.items()):
            name = f"{prefix}.{k}"
            if isinstance(v, Node):
                if prefix == "smub":
                    continue
                walk(name, v)
            elif callable(v):
                rows.append((name + "()", "function", notes.get(name, "")))
            elif v is not None:
                rows.append((name, "constant", ""))

    for key in ("smua", "localnode", "status", "errorqueue", "display", "format", "beeper", "timer"):
        walk(key, emu.globals.get(key))
    for name in ("reset", "delay", "waitcomplete", "printbuffer", "printnumber"):
        rows.append((name + "()", "function", notes.get(name, "")))
    rows.append(("smub.*", "same as smua", "not wired to the chip: measures an open circuit"))
    rows.append(("loadscript / loadandrunscript … endscript", "script loading", "scripts are not kept across power"
                 " cycles (no nonvolatile memory)"))
    return rows
