"""Emulated Keithley 2636B SourceMeter: a subset of TSP (the instrument's Lua dialect).

Understood: ``*IDN?``, ``*RST``, ``*CLS``, ``*OPC?``; assignments such as
``smua.source.levelv = 0.2``; calls such as ``smua.reset()``, ``reset()``,
``errorqueue.clear()``, ``delay(0.1)``; ``print(...)`` of attributes and of
``smua.measure.i()``/``v()``/``r()``/``iv()``, ``errorqueue.next()``, ``errorqueue.count``.
Several statements may share a line. Anything else is reported through the error queue
the way the instrument does (-285 syntax error, -286 runtime error), never crashes.
The SMU measures the cell the board routes to its SMU port: I = V·G.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bench_model import BenchModel, ErrorQueue

TOKEN = re.compile(r"""\s*(?:
    (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)
  | (?P<str>"[^"]*"|'[^']*')
  | (?P<op>[=(),;\-])
)""", re.X)

LIMITS = {"levelv": (-202.0, 202.0), "leveli": (-1.515, 1.515), "limiti": (10e-9, 1.515), "limitv": (0.02, 202.0),
          "nplc": (0.001, 25.0), "rangev": (0.0, 202.0), "rangei": (0.0, 1.515)}


class TSPError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _syntax(near: str) -> TSPError:
    return TSPError(-285, f"TSP Syntax error at line 1: unexpected symbol near `{near}'")


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if v is None:
        return "nil"
    return "%.5e" % v


@dataclass
class SMUState:
    func: int = 1  # OUTPUT_DCVOLTS
    levelv: float = 0.0
    leveli: float = 0.0
    limiti: float = 100e-6
    limitv: float = 20.0
    nplc: float = 1.0
    output: int = 0
    compliance: bool = False
    other: dict[str, float] = field(default_factory=dict)


class Keithley2600Emulator:
    """Executes one line of TSP; returns the printed text (or None)."""

    IDN = "Keithley Instruments Inc., Model 2636B, 4471234, 3.3.5"

    def __init__(self, model: BenchModel, seed: int = 0, channels: tuple[str, ...] = ("a", "b")) -> None:
        self.model = model
        self.errors = ErrorQueue(size=2048, overflow=(-350, "Queue overflow"))
        self.channels = {ch: SMUState() for ch in channels}
        self.wired = channels[0]  # the board's SMU port is wired to the first channel
        self._rng = np.random.default_rng(seed)

    # -- entry point ----------------------------------------------------------------
    def handle(self, line: str) -> str | None:
        line = line.strip()
        if not line:
            return None
        if line.startswith("*"):
            return self._common(line)
        out: list[str] = []
        try:
            with self.model.lock:
                self._run(line, out)
        except TSPError as exc:
            self.errors.push(exc.code, exc.message)
        return "\n".join(out) if out else None

    def _common(self, line: str) -> str | None:
        cmd = line.upper()
        if cmd == "*IDN?":
            return self.IDN
        if cmd == "*RST":
            self._reset_all()
        elif cmd == "*CLS":
            self.errors.clear()
        elif cmd == "*OPC?":
            return "1"
        elif cmd not in ("*OPC", "*WAI"):
            self.errors.push(-113, "Undefined header")
        return None

    # -- a tiny Lua subset ------------------------------------------------------------
    def _tokens(self, line: str) -> list[tuple[str, str]]:
        toks, pos = [], 0
        while pos < len(line):
            m = TOKEN.match(line, pos)
            if not m or m.end() == pos:
                if line[pos:].strip() == "":
                    break
                raise _syntax(line[pos:pos + 10].strip())
            pos = m.end()
            kind = m.lastgroup
            toks.append((kind, m.group(kind)))
        return toks

    def _run(self, line: str, out: list[str]) -> None:
        toks = self._tokens(line)
        i = 0
        while i < len(toks):
            kind, text = toks[i]
            if (kind, text) == ("op", ";"):
                i += 1
                continue
            if kind != "name":
                raise _syntax(text)
            nxt = toks[i + 1] if i + 1 < len(toks) else ("eof", "<eof>")
            if nxt == ("op", "="):
                values, i = self._exprs(toks, i + 2, single=True)
                self._assign(text, values[0])
            elif nxt == ("op", "("):
                args, i = self._args(toks, i + 2)
                result = self._call(text, args)
                if text == "print":
                    out.append("\t".join(_fmt(v) for v in result))
            else:
                raise _syntax(nxt[1])

    def _args(self, toks: list, i: int) -> tuple[list[Any], int]:
        """Arguments after '(' up to the matching ')'."""
        args: list[Any] = []
        if i < len(toks) and toks[i] == ("op", ")"):
            return args, i + 1
        while True:
            values, i = self._exprs(toks, i, single=False)
            args.extend(values)
            if i >= len(toks):
                raise _syntax("<eof>")
            if toks[i] == ("op", ")"):
                return args, i + 1
            if toks[i] != ("op", ","):
                raise _syntax(toks[i][1])
            i += 1

    def _exprs(self, toks: list, i: int, single: bool) -> tuple[list[Any], int]:
        """One expression; a call may return several values (all kept unless ``single``)."""
        if i >= len(toks):
            raise _syntax("<eof>")
        kind, text = toks[i]
        if (kind, text) == ("op", "-") and i + 1 < len(toks) and toks[i + 1][0] == "num":
            return [-float(toks[i + 1][1])], i + 2
        if kind == "num":
            return [float(text)], i + 1
        if kind == "str":
            return [text[1:-1]], i + 1
        if kind == "name":
            if text in ("true", "false"):
                return [text == "true"], i + 1
            if text == "nil":
                return [None], i + 1
            if i + 1 < len(toks) and toks[i + 1] == ("op", "("):
                args, j = self._args(toks, i + 2)
                values = self._call(text, args)
                return (values[:1] if single else values), j
            return [self._get(text)], i + 1
        raise _syntax(text)

    # -- the instrument's namespace ---------------------------------------------------
    def _channel(self, name: str) -> tuple[SMUState, str, str]:
        head, _, rest = name.partition(".")
        if not head.startswith("smu") or head[3:] not in self.channels:
            raise TSPError(-286, f"TSP Runtime error at line 1: attempt to index global `{head}' (a nil value)")
        return self.channels[head[3:]], head[3:], rest

    CONSTANTS = {"OUTPUT_ON": 1, "OUTPUT_OFF": 0, "OUTPUT_DCVOLTS": 1, "OUTPUT_DCAMPS": 0,
                 "AUTORANGE_ON": 1, "AUTORANGE_OFF": 0}

    def _get(self, name: str) -> Any:
        if name == "errorqueue.count":
            return float(len(self.errors))
        st, _, rest = self._channel(name)
        if rest in self.CONSTANTS:
            return float(self.CONSTANTS[rest])
        attr = rest.split(".")[-1]
        if rest == "source.compliance":
            return st.compliance
        if rest.startswith(("source.", "measure.")) and hasattr(st, attr) and attr not in ("other", "compliance"):
            return float(getattr(st, attr))
        if rest in st.other:
            return st.other[rest]
        raise TSPError(-286, f"TSP Runtime error at line 1: attempt to index field `{attr}' (a nil value)")

    def _assign(self, name: str, value: Any) -> None:
        st, _, rest = self._channel(name)
        if isinstance(value, bool) or not isinstance(value, float) or not math.isfinite(value):
            raise TSPError(-286, f"TSP Runtime error at line 1: bad value for `{rest}'")
        attr = rest.split(".")[-1]
        if rest in ("source.func", "source.output"):
            if value not in (0.0, 1.0):
                raise TSPError(-222, f"Parameter data out of range: {rest}")
            setattr(st, attr, int(value))
            return
        if rest in ("source.levelv", "source.leveli", "source.limiti", "source.limitv", "measure.nplc"):
            lo, hi = LIMITS[attr]
            if not lo <= value <= hi:
                raise TSPError(-222, f"Parameter data out of range: {rest} accepted [{lo:g}, {hi:g}]")
            setattr(st, attr, value)
            return
        if rest in ("source.rangev", "measure.rangei", "source.autorangev", "measure.autorangei",
                    "measure.autorangev", "source.autorangei", "source.rangei", "measure.rangev"):
            st.other[rest] = value
            return
        raise TSPError(-286, f"TSP Runtime error at line 1: attempt to index field `{attr}' (a nil value)")

    def _call(self, name: str, args: list[Any]) -> list[Any]:
        if name == "print":
            return args
        if name == "reset":
            self._reset_all()
            return []
        if name == "errorqueue.clear":
            self.errors.clear()
            return []
        if name == "errorqueue.next":
            e = self.errors.pop()
            if e is None:
                return [0.0, "Queue Is Empty", 0.0, 0.0]
            return [float(e[0]), e[1], 2.0, 0.0]
        if name in ("delay", "waitcomplete"):
            return []
        st, ch, rest = self._channel(name)
        if rest == "reset":
            self.channels[ch] = SMUState()
            return []
        if rest in ("measure.i", "measure.v", "measure.r", "measure.iv"):
            i, v = self._measure(st, ch)
            return {"measure.i": [i], "measure.v": [v], "measure.r": [v / i if i else 9.91e37],
                    "measure.iv": [i, v]}[rest]
        raise TSPError(-286, f"TSP Runtime error at line 1: attempt to call field `{rest.split('.')[-1]}' (a nil value)")

    def _reset_all(self) -> None:
        for ch in self.channels:
            self.channels[ch] = SMUState()

    def _measure(self, st: SMUState, ch: str) -> tuple[float, float]:
        """(current A, voltage V) at the output terminals."""
        if not st.output:
            st.compliance = False
            return float(self._rng.normal(0, 1e-12)), 0.0
        v = st.levelv if st.func == 1 else 0.0
        g_us = self.model.read_routed("SMU", n_avg=max(1, min(1024, round(16 * st.nplc)))) if ch == self.wired else None
        i = (v * (g_us or 0.0) * 1e-6) + float(self._rng.normal(0, 1e-12 + 1e-5 * abs(v * (g_us or 0.0) * 1e-6)))
        st.compliance = abs(i) > st.limiti
        if st.compliance:
            i = math.copysign(st.limiti, i)
        return i, v
