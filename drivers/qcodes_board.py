"""The controller board as a QCoDeS instrument (needs ``qcodes``; nothing else here does).

:class:`PCMBoardQcodes` wraps :class:`~pcm_hil_drivers.pcm_board.PCMBoard`: the framing,
CRC, locking and typed errors stay in the driver; QCoDeS sees ``write_raw``/``ask_raw``
with the board's payloads, so the parameters are declared with the board's own commands::

    from pcm_hil_drivers.qcodes_board import PCMBoardQcodes

    board = PCMBoardQcodes("board", "socket://127.0.0.1:5025", timeout_s=5.0)
    board.compliance(1e-3)            # A, validated by QCoDeS before anything is sent
    board.select(0, 3, 4)
    board.output(True)
    board.pulse("SET", 1.2, 100e-9)   # V, s
    g = board.conductance()           # µS, board.n_avg() reads averaged
    board.close()                     # routing NONE, pulse drivers off, connection closed

In a station YAML: ``type: pcm_hil_drivers.qcodes_board.PCMBoardQcodes`` with
``address: socket://HOST:PORT`` (or ``/dev/ttyUSB0``) and ``init: {timeout_s: 5.0}``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from qcodes import validators as vals
from qcodes.instrument import Instrument
from qcodes.parameters import create_on_off_val_mapping

from .pcm_board import COMPLIANCE_RANGE_A, N_AVG_RANGE, READ_BIAS_RANGE_V, PCMBoard

__all__ = ["CellAddress", "PCMBoardQcodes"]


class CellAddress(vals.Validator[tuple[int, int, int]]):
    """A cell address ``(array, row, col)`` inside a chip of ``geometry`` = (arrays, rows, cols)."""

    is_numeric = False

    def __init__(self, geometry: tuple[int, int, int]) -> None:
        self.geometry = tuple(int(g) for g in geometry)
        self._valid_values = ((0, 0, 0),)

    def validate(self, value: Any, context: str = "") -> None:
        if not isinstance(value, (tuple, list)) or len(value) != 3:
            raise ValueError(f"{value!r} is not an (array, row, col) address; {context}")
        for name, v, size in zip(("array", "row", "col"), value, self.geometry):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < size:
                raise ValueError(f"{name} {v!r} must be an integer in [0, {size - 1}]; {context}")

    def __repr__(self) -> str:
        return f"<CellAddress arrays<{self.geometry[0]}, rows<{self.geometry[1]}, cols<{self.geometry[2]}>"


def _cell_reply(reply: str) -> tuple[int, ...]:
    reply = reply.strip()
    return () if reply.upper() == "NONE" else tuple(int(p) for p in reply.split(","))


class PCMBoardQcodes(Instrument):
    """The PCM controller board in QCoDeS.

    ``address``: a pySerial URL (``/dev/ttyUSB0``, ``socket://127.0.0.1:5025``);
    ``timeout_s``: per-read timeout (s); ``baudrate``: serial line rate (baud);
    ``board``: an already open :class:`PCMBoard` to wrap instead (then ``address`` is
    only recorded). Parameters (unit): ``output`` (bool), ``compliance`` (A),
    ``read_bias`` (V), ``route`` (NONE/SMU/PG), ``selected_cell`` ((array, row, col);
    ``()`` when none is selected, e.g. after ``reset()``), ``n_avg`` (reads averaged by
    ``conductance``; kept here, not on the board), ``timeout`` (s); read-only ``clock``
    (s), ``geometry`` and ``conductance`` (µS, of the selected cell; not in the
    snapshot). Board errors raise :class:`~pcm_hil_drivers.errors.InstrumentError` at
    once (every command is answered), so the error queue stays empty after a success.
    """

    def __init__(self, name: str, address: str = "", timeout_s: float = 5.0, baudrate: int = 921_600,
                 board: PCMBoard | None = None, **kwargs: Any) -> None:
        if board is None and not address:
            raise ValueError("PCMBoardQcodes needs an address (e.g. socket://127.0.0.1:5025) or a board")
        self.board = board if board is not None else PCMBoard.from_resource(address, timeout_s=timeout_s,
                                                                            baudrate=baudrate, name=name)
        self.address = address or getattr(self.board.transport, "url", "")
        try:
            super().__init__(name, **kwargs)
            geom = self.board.geometry
        except BaseException:
            self.board.shutdown()
            raise

        self.output = self.add_parameter(
            "output", label="Pulse drivers enabled", get_cmd="OUTP?", set_cmd="OUTP {}",
            val_mapping=create_on_off_val_mapping(on_val="1", off_val="0"),
            docstring="Pulse drivers on/off; pulses are refused while off.")
        self.compliance = self.add_parameter(
            "compliance", label="Pulse current compliance", unit="A", get_cmd="SOUR:COMP?",
            set_cmd="SOUR:COMP {:.6g}", get_parser=float, vals=vals.Numbers(*COMPLIANCE_RANGE_A),
            docstring="Current compliance of on-board pulses.")
        self.read_bias = self.add_parameter(
            "read_bias", label="Read bias", unit="V", get_cmd="READ:BIAS?", set_cmd="READ:BIAS {:.6g}",
            get_parser=float, vals=vals.Numbers(*READ_BIAS_RANGE_V), docstring="Read bias of on-board reads.")
        self.route = self.add_parameter(
            "route", label="External route", get_cmd="ROUT:EXT?", set_cmd="ROUT:EXT {}", get_parser=str,
            vals=vals.Enum("NONE", "SMU", "PG"),
            docstring="Connect the selected cell to the external SMU or pulse-generator port (NONE: neither).")
        self.selected_cell = self.add_parameter(
            "selected_cell", label="Selected cell", get_cmd="CELL?", set_cmd=self._set_cell,
            get_parser=_cell_reply, vals=CellAddress(geom),
            docstring="(array, row, col) of the cell selected for single-cell pulses, reads and routing; "
                      "() when none is selected.")
        self.n_avg = self.add_parameter(
            "n_avg", label="Reads averaged", get_cmd=None, set_cmd=None, initial_value=1,
            vals=vals.Ints(*N_AVG_RANGE), docstring="Reads averaged by `conductance` and `read_cells`.")
        self.timeout = self.add_parameter(
            "timeout", label="Read timeout", unit="s", get_cmd=lambda: self.board.timeout_s,
            set_cmd=self._set_timeout, vals=vals.Numbers(0.001, 3600.0), docstring="Per-read timeout.")
        self.clock = self.add_parameter(
            "clock", label="Board clock", unit="s", get_cmd="SYST:CLK?", get_parser=float,
            docstring="Board clock; on the emulator, the virtual clock.")
        self.geometry = self.add_parameter(
            "geometry", label="Chip geometry (arrays, rows, cols)", get_cmd=lambda: self.board.geometry,
            docstring="(arrays, rows, cols) of the attached chip.")
        self.conductance = self.add_parameter(
            "conductance", label="Conductance", unit="µS", get_cmd=lambda: self.board.measure_g(self.n_avg()),
            snapshot_exclude=True, docstring="Conductance of the selected cell, n_avg reads averaged.")
        self.connect_message()

    # -- the raw layer QCoDeS's string commands go through -------------------------------
    def write_raw(self, cmd: str) -> None:
        """One board command; its ``OK`` is checked (errors raise InstrumentError)."""
        self.board.write(cmd)

    def ask_raw(self, cmd: str) -> str:
        """One board query; its reply payload."""
        return self.board.ask(cmd)

    def get_idn(self) -> dict[str, str | None]:
        """``*IDN?`` as vendor, model, serial, firmware."""
        parts = [p.strip() for p in self.board.idn.split(",", 3)]
        parts += [None] * (4 - len(parts))  # type: ignore[list-item]
        return dict(zip(("vendor", "model", "serial", "firmware"), parts))

    def _set_cell(self, cell: tuple[int, int, int]) -> None:
        self.board.select(*(int(c) for c in cell))

    def _set_timeout(self, seconds: float) -> None:
        self.board.timeout_s = seconds

    # -- actions ------------------------------------------------------------------------
    def select(self, array: int, row: int, col: int) -> None:
        """Select one cell (same as ``selected_cell((array, row, col))``)."""
        self.selected_cell((array, row, col))

    def pulse(self, kind: str, amplitude_v: float, width_s: float) -> None:
        """One SET or RESET pulse on the selected cell: ``amplitude_v`` (V, 0…5), ``width_s`` (s, 10 ns…100 µs)."""
        self.board.pulse(kind, amplitude_v, width_s)

    def read_cells(self, cells: Any, n_avg: int | None = None) -> np.ndarray:
        """Conductance (µS) of each flat board index in ``cells``, in one transaction."""
        return self.board.bulk_measure_g(cells, self.n_avg() if n_avg is None else n_avg)

    def pulse_cells(self, kind: str, cells: Any, amplitude_v: Any, width_s: Any) -> None:
        """One pulse per flat board index (V, s: scalars or one per cell), in one transaction."""
        self.board.bulk_pulse(kind, cells, amplitude_v, width_s)

    def reset(self) -> None:
        """``*RST``: pulse drivers off, routing NONE, no cell selected, error queue cleared."""
        self.board.reset()

    def clear(self) -> None:
        """``*CLS``: clear the error queue."""
        self.board.clear()

    def next_error(self) -> tuple[int, str]:
        """Oldest queued error, ``(0, "No error")`` when none."""
        return self.board.next_error()

    def safe_state(self) -> None:
        """Routing NONE and pulse drivers off."""
        self.board.safe_state()

    def close(self) -> None:
        """Routing NONE, pulse drivers off, connection closed, instrument unregistered. Idempotent."""
        try:
            if hasattr(self, "board"):
                self.board.shutdown()
        finally:
            super().close()
