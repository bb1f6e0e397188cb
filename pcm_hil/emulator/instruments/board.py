"""The emulated controller board: payload in, payload out (framing lives in the server)."""
from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np
from pyvisa import util as visa_util

from pcm_hil_drivers import board_protocol as bp
from pcm_hil_drivers.errors import ProtocolError

from ... import __version__
from .bench_model import BenchModel, ErrorQueue

KINDS = {"SET": "SET", "RES": "RESET", "RESET": "RESET"}

# The emulated board's own ranges, as the instrument documents them (docs/protocol.md).
# It models the instrument: the driver checks its own copy independently.
AMPLITUDE_RANGE_V = (0.0, 5.0)  # on-board pulse amplitude
WIDTH_RANGE_S = (10e-9, 100e-6)  # on-board pulse width
COMPLIANCE_RANGE_A = (1e-6, 10e-3)  # current compliance of on-board pulses
READ_BIAS_RANGE_V = (0.01, 1.0)  # read bias of on-board reads
N_AVG_RANGE = (1, 1024)  # reads averaged per MEAS:G?
LEASE_RANGE_S = (0.0, 600.0)  # heartbeat lease of the controlling connection (0 releases it)
# the lease a controller holds without asking (switched the output on, took no lease or released
# it): a host that hangs with its connection open loses the output this long after its last frame
IDLE_LEASE_S = 60.0
TEMPERATURE_RANGE_K = (150.0, 700.0)  # the temperature controller's set-point range


class BoardCommandError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _num(arg: str | bytes, what: str) -> float:
    if isinstance(arg, bytes):
        raise BoardCommandError(-104, f"Data type error;{what} must be a number")
    try:
        v = float(arg)
    except ValueError:
        raise BoardCommandError(-104, f"Data type error;{what} must be a number") from None
    if not np.isfinite(v):
        raise BoardCommandError(-222, f"Data out of range;{what} must be finite")
    return v


def _in(v: float, bounds: tuple[float, float], what: str) -> float:
    if not bounds[0] <= v <= bounds[1]:
        raise BoardCommandError(-222, f"Data out of range;{what} accepted [{bounds[0]:g}, {bounds[1]:g}]")
    return v


def _int(arg: str | bytes, bounds: tuple[int, int], what: str) -> int:
    v = _num(arg, what)
    if v != int(v):
        raise BoardCommandError(-104, f"Data type error;{what} must be an integer")
    return int(_in(v, bounds, what))


class BoardEmulator:
    """Executes one board command payload and returns the reply payload (never raises)."""

    IDN = f"PCMHIL,PCM-BOARD-EMU,EMU0001,{__version__}"

    def __init__(self, model: BenchModel, idle_lease_s: float = IDLE_LEASE_S) -> None:
        if not (isinstance(idle_lease_s, (int, float)) and 0 <= idle_lease_s <= LEASE_RANGE_S[1]):
            raise ValueError(f"idle_lease_s must be in [0, {LEASE_RANGE_S[1]:g}] s (0: none), got {idle_lease_s!r}")
        self.model = model
        # a board setting, not a host command: a host cannot lift it (0 turns it off, for tests)
        self.idle_lease_s = float(idle_lease_s)
        self.errors = ErrorQueue()
        # interlock: the output follows the controlling connection (the last one that switched
        # it on or took the lease) and its heartbeat: the lease it took, else the idle lease
        self._output = False
        self._conn_lock = threading.Lock()
        self.controller: object | None = None
        self.lease_s = 0.0
        self._lease_until = 0.0
        self.interlock_trips = 0  # times the interlock, not a command, turned the output off
        self._conn: object | None = None
        self._reset_settings()
        self._table: dict[str, Callable[[list], bytes]] = {
            "*IDN?": lambda a: self.IDN.encode(),
            "*RST": self._rst, "*CLS": self._cls,
            "SYST:ERR?": self._err, "SYST:CLK?": lambda a: b"%.17g" % self.model.chip.now(),
            "CHIP:GEOM?": lambda a: ("%d,%d,%d" % self.model.chip.geometry.shape).encode(),
            "OUTP": self._outp, "OUTP?": lambda a: b"%d" % self.output,
            "SYST:LEASE": self._lease, "SYST:LEASE?": self._lease_q,
            "SOUR:TEMP": self._temp, "SOUR:TEMP?": lambda a: b"%.6g" % self._setpoint_k,
            "MEAS:TEMP?": lambda a: b"%.6g" % self.model.chip.temperature_k(),
            "SOUR:COMP": self._comp, "SOUR:COMP?": lambda a: b"%.6g" % self.compliance_a,
            "READ:BIAS": self._bias, "READ:BIAS?": lambda a: b"%.6g" % self.read_bias_v,
            "CELL": self._cell, "CELL?": self._cell_q,
            "ROUT:EXT": self._route, "ROUT:EXT?": lambda a: self.model.route.encode(),
            "PULS": self._pulse, "MEAS:G?": self._meas,
            "BULK:PULS": self._bulk_pulse, "BULK:MEAS:G?": self._bulk_meas,
            "EMU:WAIT": self._emu_wait,
        }

    def _reset_settings(self) -> None:
        self.output = False
        self._setpoint_k = float(self.model.chip.temperature_k())
        self.compliance_a = 1e-3
        self.read_bias_v = 0.2
        self.model.selected = None
        self.model.route = "NONE"

    # -- interlock ------------------------------------------------------------------
    @property
    def output(self) -> bool:
        """Pulse drivers on; off by itself once the controlling connection's lease lapses."""
        with self._conn_lock:
            if self._output and self.lease_s > 0 and time.monotonic() > self._lease_until:
                self._trip()
            return self._output

    @output.setter
    def output(self, value: bool) -> None:
        with self._conn_lock:
            self._output = bool(value)

    def _trip(self) -> None:  # with _conn_lock held
        if self._output:
            self.interlock_trips += 1
        self._output = False
        self.controller, self.lease_s = None, 0.0

    def _renew(self, conn: object | None) -> None:
        """Any frame from the controlling connection renews its lease (unless it lapsed)."""
        with self._conn_lock:
            if conn is not None and conn is self.controller and self.lease_s > 0:
                if time.monotonic() > self._lease_until:
                    self._trip()
                else:
                    self._lease_until = time.monotonic() + self.lease_s

    def host_lost(self, conn: object | None = None, last: bool = True) -> None:
        """Interlock: the output turns off when the controlling connection closes, and when the
        last host connection closes (a controller that never took the lease or switched the
        output on)."""
        with self._conn_lock:
            if (conn is not None and conn is self.controller) or last:
                self._trip()

    # -- entry point ----------------------------------------------------------------
    def handle(self, payload: bytes, conn: object | None = None) -> bytes:
        """Run one command; ``conn`` identifies the host connection it came on (the interlock
        follows the controlling one)."""
        self._renew(conn)
        try:
            header, args = bp.split_payload(payload)
        except ProtocolError as exc:
            return self._error(-102, f"Syntax error;{exc}")
        fn = self._table.get(header.upper())
        if fn is None:
            return self._error(-113, f"Undefined header;{header[:40]}")
        try:
            with self.model.lock:
                self._conn = conn  # the connection this command came on (commands run one at a time)
                return fn(args)
        except BoardCommandError as exc:
            return self._error(exc.code, exc.message)
        except ValueError as exc:  # the chip refused the request: nothing was applied
            return self._error(-224, f"Illegal parameter value;{exc}")

    def _error(self, code: int, message: str) -> bytes:
        return b'ERR %d,"%s"' % (code, message.replace('"', "'").encode("ascii", "replace"))

    @staticmethod
    def _nargs(args: list, n: int) -> None:
        if len(args) < n:
            raise BoardCommandError(-109, f"Missing parameter;expected {n}")
        if len(args) > n:
            raise BoardCommandError(-108, f"Parameter not allowed;expected {n}")

    # -- commands -------------------------------------------------------------------
    def _rst(self, args: list) -> bytes:
        self._nargs(args, 0)
        self._reset_settings()
        self.errors.clear()
        return b"OK"

    def _cls(self, args: list) -> bytes:
        self._nargs(args, 0)
        self.errors.clear()
        return b"OK"

    def _err(self, args: list) -> bytes:
        self._nargs(args, 0)
        e = self.errors.pop()
        return b'0,"No error"' if e is None else b'%d,"%s"' % (e[0], e[1].encode("ascii", "replace"))

    def _outp(self, args: list) -> bytes:
        self._nargs(args, 1)
        on = bool(_int(args[0], (0, 1), "output state"))
        with self._conn_lock:
            self._output = on
            if on and (self._conn is not self.controller or self.lease_s == 0):
                # whoever switches it on controls it, under the idle lease until it takes one
                self.controller = self._conn
                self._idle_lease()
        return b"OK"

    def _idle_lease(self) -> None:  # with _conn_lock held
        self.lease_s = self.idle_lease_s
        self._lease_until = time.monotonic() + self.lease_s

    def _lease(self, args: list) -> bytes:
        self._nargs(args, 1)
        s = _in(_num(args[0], "lease"), LEASE_RANGE_S, "lease")
        with self._conn_lock:
            if s == 0:
                if self._conn is self.controller:  # released: back to the idle lease
                    self._idle_lease()
            else:
                self.controller, self.lease_s = self._conn, s
                self._lease_until = time.monotonic() + s
        return b"OK"

    def _lease_q(self, args: list) -> bytes:
        self._nargs(args, 0)
        with self._conn_lock:
            held = self.lease_s > 0 and self._conn is self.controller
            left = max(0.0, self._lease_until - time.monotonic()) if held else 0.0
        return b"%.6g" % left

    def _temp(self, args: list) -> bytes:
        self._nargs(args, 1)
        k = _in(_num(args[0], "temperature"), TEMPERATURE_RANGE_K, "temperature")
        self.model.chip.set_temperature_k(k)
        self._setpoint_k = k
        return b"OK"

    def _comp(self, args: list) -> bytes:
        self._nargs(args, 1)
        self.compliance_a = _in(_num(args[0], "compliance"), COMPLIANCE_RANGE_A, "compliance")
        return b"OK"

    def _bias(self, args: list) -> bytes:
        self._nargs(args, 1)
        self.read_bias_v = _in(_num(args[0], "read bias"), READ_BIAS_RANGE_V, "read bias")
        return b"OK"

    def _cell(self, args: list) -> bytes:
        self._nargs(args, 3)
        shape = self.model.chip.geometry.shape
        self.model.selected = tuple(_int(a, (0, s - 1), n) for a, s, n in zip(args, shape, ("array", "row", "col")))
        return b"OK"

    def _cell_q(self, args: list) -> bytes:
        self._nargs(args, 0)
        return b"NONE" if self.model.selected is None else ("%d,%d,%d" % self.model.selected).encode()

    def _route(self, args: list) -> bytes:
        self._nargs(args, 1)
        port = args[0].upper() if isinstance(args[0], str) else ""
        if port not in ("NONE", "SMU", "PG"):
            raise BoardCommandError(-224, "Illegal parameter value;route must be NONE, SMU or PG")
        if port != "NONE" and self.model.selected is None:
            raise BoardCommandError(202, "No cell selected")
        self.model.route = port
        return b"OK"

    def _selected_index(self) -> np.ndarray:
        if self.model.selected is None:
            raise BoardCommandError(202, "No cell selected")
        return np.array([self.model.chip.geometry.index(*self.model.selected)])

    def _kind(self, arg: str | bytes) -> str:
        kind = KINDS.get(arg.upper()) if isinstance(arg, str) else None
        if kind is None:
            raise BoardCommandError(-224, "Illegal parameter value;pulse kind must be SET or RES")
        return kind

    def _check_output(self) -> None:
        if not self.output:
            raise BoardCommandError(201, "Output disabled;send OUTP 1 first")

    def _pulse(self, args: list) -> bytes:
        self._nargs(args, 3)
        kind = self._kind(args[0])
        amp = _in(_num(args[1], "amplitude"), AMPLITUDE_RANGE_V, "amplitude")
        width = _in(_num(args[2], "width"), WIDTH_RANGE_S, "width")
        cell = self._selected_index()
        self._check_output()
        self.model.chip.pulse(cell, kind, amp, width)
        return b"OK"

    def _meas(self, args: list) -> bytes:
        self._nargs(args, 1)
        n_avg = _int(args[0], N_AVG_RANGE, "n_avg")
        cell = self._selected_index()
        return b"%.9g" % self.model.chip.read(cell, n_avg=n_avg)[0]

    def _bulk_pulse(self, args: list) -> bytes:
        self._nargs(args, 2)
        kind = self._kind(args[0])
        try:
            rec = bp.array_from_block(args[1], bp.PULSE_RECORD, "pulse records")
        except ProtocolError as exc:
            raise BoardCommandError(-160, f"Block data error;{exc}") from None
        cells = rec["cell"].astype(np.int64)
        amp, width = rec["amplitude_v"].astype(np.float64), rec["width_s"].astype(np.float64)
        if cells.size:
            if cells.max() >= self.model.chip.geometry.n_cells:
                raise BoardCommandError(-222, f"Data out of range;cell accepted [0, {self.model.chip.geometry.n_cells - 1}]")
            for v, bounds, what in ((amp, AMPLITUDE_RANGE_V, "amplitude"), (width, WIDTH_RANGE_S, "width")):
                if not np.all(np.isfinite(v)) or v.min() < bounds[0] or v.max() > bounds[1]:
                    raise BoardCommandError(-222, f"Data out of range;{what} accepted [{bounds[0]:g}, {bounds[1]:g}]")
        self._check_output()
        if np.all(amp == amp[:1]) and np.all(width == width[:1]) and cells.size:
            amp, width = amp[:1], width[:1]  # uniform batch: scalar pulse parameters
        self.model.chip.pulse(cells, kind, amp if amp.size != 1 else float(amp[0]),
                              width if width.size != 1 else float(width[0]))
        return b"OK"

    def _bulk_meas(self, args: list) -> bytes:
        self._nargs(args, 2)
        n_avg = _int(args[0], N_AVG_RANGE, "n_avg")
        try:
            cells = bp.array_from_block(args[1], bp.CELL_DTYPE, "cells").astype(np.int64)
        except ProtocolError as exc:
            raise BoardCommandError(-160, f"Block data error;{exc}") from None
        if cells.size and cells.max() >= self.model.chip.geometry.n_cells:
            raise BoardCommandError(-222, f"Data out of range;cell accepted [0, {self.model.chip.geometry.n_cells - 1}]")
        g = self.model.chip.read(cells, n_avg=n_avg) if cells.size else np.empty(0, np.float32)
        if self.model.read_offset_us and cells.size:
            self.model.offset_reads += 1
        g = g + np.float32(self.model.read_offset_us)
        return visa_util.to_ieee_block(np.asarray(g, dtype=np.float32), datatype="f")  # little-endian float32

    def _emu_wait(self, args: list) -> bytes:
        self._nargs(args, 1)
        self.model.chip.wait(_in(_num(args[0], "seconds"), (0.0, 1e10), "seconds"))
        return b"OK"
