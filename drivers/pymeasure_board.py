"""The controller board as a PyMeasure instrument (needs ``pymeasure``; nothing else here does).

Declarative, as PyMeasure drivers are: the properties of :class:`PCMBoardPyMeasure` are
``Instrument.control``/``measurement``/``setting`` declarations with the board's own
commands and strict validators. They run on :class:`FramedBoardAdapter`, a PyMeasure
``Adapter`` over our :class:`~pcm_hil_drivers.pcm_board.PCMBoard`: each ``write`` is one
framed transaction (CRC, lock, deferred Ctrl-C, typed errors from the driver). The board
answers every frame, so the adapter checks a command's ``OK`` itself and keeps a query's
reply for the following ``read``; an ``ERR`` reply raises
:class:`~pcm_hil_drivers.errors.InstrumentError` at once instead of being left in the
error queue for ``check_errors``. Binary-block transfers (``read_cells``,
``pulse_cells``) go through the wrapped driver::

    from pcm_hil_drivers.pymeasure_board import PCMBoardPyMeasure

    with PCMBoardPyMeasure("socket://127.0.0.1:5025", timeout_s=5.0) as board:
        board.compliance = 1e-3          # A; out of range: ValueError, nothing sent
        board.selected_cell = (0, 3, 4)
        board.output_enabled = True
        board.pulse("SET", 1.2, 100e-9)  # V, s
        g = board.conductance            # µS, board.n_avg reads averaged
    # leaving the block: routing NONE, pulse drivers off, connection closed
"""
from __future__ import annotations

from typing import Any

import numpy as np
from pymeasure.adapters import Adapter
from pymeasure.instruments import Instrument
from pymeasure.instruments.validators import strict_discrete_set, strict_range

from .errors import ProtocolError
from .pcm_board import COMPLIANCE_RANGE_A, N_AVG_RANGE, READ_BIAS_RANGE_V, PCMBoard

__all__ = ["FramedBoardAdapter", "PCMBoardPyMeasure"]


class FramedBoardAdapter(Adapter):
    """A PyMeasure adapter speaking the board's framed protocol through a :class:`PCMBoard`.

    ``write(cmd)`` sends one frame and receives its reply: for a command (header not
    ending in ``?``) the reply must be ``OK``; a query's reply is kept for ``read()``.
    """

    def __init__(self, board: PCMBoard, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.board = board
        self.connection = board.transport
        self._reply: str | None = None

    def _write(self, command: str, **kwargs: Any) -> None:
        self._reply = None
        reply = self.board.ask(command)
        if command.split(" ", 1)[0].endswith("?"):
            self._reply = reply
        elif reply != "OK":
            raise ProtocolError(f"{command!r}: expected OK, got {reply[:40]!r}")

    def _read(self, **kwargs: Any) -> str:
        if self._reply is None:
            raise ProtocolError("read without a query: the board answers each query once")
        reply, self._reply = self._reply, None
        return reply

    def flush_read_buffer(self) -> None:
        self._reply = None
        self.board.transport.discard_input()

    def close(self) -> None:
        board = getattr(self, "board", None)
        if board is not None:
            board.transport.close()


def _strict_cell(value: Any, geometry: tuple[int, int, int]) -> tuple[int, int, int]:
    """``value`` as an (array, row, col) tuple inside ``geometry``, else ``ValueError``."""
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise ValueError(f"{value!r} is not an (array, row, col) address")
    for name, v, size in zip(("array", "row", "col"), value, geometry):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < size:
            raise ValueError(f"{name} {v!r} must be an integer in [0, {size - 1}]")
    return tuple(int(v) for v in value)  # type: ignore[return-value]


def _no_cell(reply: Any) -> tuple[()]:
    """``CELL?`` answered with one item: only ``NONE`` is valid."""
    if reply != "NONE":
        raise ProtocolError(f"CELL?: malformed reply {reply!r}")
    return ()


def _strict_int(value: Any, bounds: tuple[int, int]) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"must be an integer in [{bounds[0]}, {bounds[1]}], got {value!r}")
    return int(value)


class PCMBoardPyMeasure(Instrument):
    """The PCM controller board in PyMeasure (declarative properties on the framed protocol).

    ``adapter``: a pySerial URL (``/dev/ttyUSB0``, ``socket://127.0.0.1:5025``), an open
    :class:`PCMBoard`, or a :class:`FramedBoardAdapter`; ``timeout_s``: per-read timeout
    (s) and ``baudrate`` (baud) when a URL is given. Not SCPI (``includeSCPI=False``):
    ``id``, ``next_error``, ``check_errors``, ``reset`` and ``clear`` are defined here.
    """

    def __init__(self, adapter: str | PCMBoard | FramedBoardAdapter, name: str = "PCM controller board",
                 timeout_s: float = 5.0, baudrate: int = 921_600, **kwargs: Any) -> None:
        if isinstance(adapter, str):
            adapter = PCMBoard.from_resource(adapter, timeout_s=timeout_s, baudrate=baudrate)
        if isinstance(adapter, PCMBoard):
            adapter = FramedBoardAdapter(adapter)
        if not isinstance(adapter, FramedBoardAdapter):
            raise TypeError(f"PCMBoardPyMeasure needs an address, a PCMBoard or a FramedBoardAdapter, "
                            f"not {type(adapter).__name__}")
        super().__init__(adapter, name, includeSCPI=False, **kwargs)
        self.board: PCMBoard = adapter.board
        try:
            self.selected_cell_values = self.geometry
        except BaseException:
            adapter.close()
            raise
        self._n_avg = 1

    # -- declarative properties ----------------------------------------------------------
    id = Instrument.measurement(
        "*IDN?", "Get the identification: maker, model, serial, firmware (str).", cast=str, maxsplit=0)
    clock = Instrument.measurement(
        "SYST:CLK?", "Get the board clock (s); on the emulator, the virtual clock.")
    geometry = Instrument.measurement(
        "CHIP:GEOM?", "Get the chip geometry (arrays, rows, cols).", cast=int, get_process_list=tuple)
    output_enabled = Instrument.control(
        "OUTP?", "OUTP %d", "Control the pulse drivers (bool); pulses are refused while off.",
        validator=strict_discrete_set, values={False: 0, True: 1}, map_values=True, cast=int)
    compliance = Instrument.control(
        "SOUR:COMP?", "SOUR:COMP %.6g", "Control the current compliance of on-board pulses (A, 1 µA … 10 mA).",
        validator=strict_range, values=COMPLIANCE_RANGE_A)
    read_bias = Instrument.control(
        "READ:BIAS?", "READ:BIAS %.6g", "Control the read bias of on-board reads (V, 0.01 … 1).",
        validator=strict_range, values=READ_BIAS_RANGE_V)
    route = Instrument.control(
        "ROUT:EXT?", "ROUT:EXT %s",
        "Control the external route of the selected cell: NONE, SMU or PG (str).",
        validator=strict_discrete_set, values=("NONE", "SMU", "PG"), cast=str)
    selected_cell = Instrument.control(
        "CELL?", "CELL %d,%d,%d",
        "Control the selected cell (array, row, col); () when none is selected (after reset()).",
        validator=_strict_cell, values=(1, 1, 1), cast=int, dynamic=True,
        get_process=lambda v: _no_cell(v), get_process_list=tuple)

    @property
    def n_avg(self) -> int:
        """Control the reads averaged by :attr:`conductance` and :meth:`read_cells` (1 … 1024; kept here)."""
        return self._n_avg

    @n_avg.setter
    def n_avg(self, value: int) -> None:
        try:
            self._n_avg = _strict_int(value, N_AVG_RANGE)
        except ValueError as exc:
            raise ValueError(f"PCMBoardPyMeasure.n_avg: {exc}") from None

    @property
    def timeout_s(self) -> float:
        """Control the per-read timeout of the connection (s, 0.001 … 3600)."""
        return self.board.timeout_s

    @timeout_s.setter
    def timeout_s(self, value: float) -> None:
        self.board.timeout_s = value

    @property
    def conductance(self) -> float:
        """Measure the selected cell's conductance (µS), :attr:`n_avg` reads averaged."""
        return self.board.measure_g(self._n_avg)

    @property
    def next_error(self) -> tuple[int, str]:
        """Get the oldest queued error as (code, message); (0, 'No error') when none."""
        return self.board.next_error()

    # -- actions -------------------------------------------------------------------------
    def check_errors(self) -> list[tuple[int, str]]:
        """Drain the error queue; return the errors found (empty when none)."""
        errors = []
        for _ in range(64):
            err = self.next_error
            if err[0] == 0:
                break
            errors.append(err)
        return errors

    def reset(self) -> None:
        """``*RST``: pulse drivers off, routing NONE, no cell selected, error queue cleared."""
        self.write("*RST")

    def clear(self) -> None:
        """``*CLS``: clear the error queue."""
        self.write("*CLS")

    def select(self, array: int, row: int, col: int) -> None:
        """Select one cell (same as ``selected_cell = (array, row, col)``)."""
        self.selected_cell = (array, row, col)

    def pulse(self, kind: str, amplitude_v: float, width_s: float) -> None:
        """One SET or RESET pulse on the selected cell: ``amplitude_v`` (V, 0…5), ``width_s`` (s, 10 ns…100 µs)."""
        self.board.pulse(kind, amplitude_v, width_s)

    def read_cells(self, cells: Any, n_avg: int | None = None) -> np.ndarray:
        """Conductance (µS) of each flat board index in ``cells``, in one transaction."""
        return self.board.bulk_measure_g(cells, self._n_avg if n_avg is None else n_avg)

    def pulse_cells(self, kind: str, cells: Any, amplitude_v: Any, width_s: Any) -> None:
        """One pulse per flat board index (V, s: scalars or one per cell), in one transaction."""
        self.board.bulk_pulse(kind, cells, amplitude_v, width_s)

    def shutdown(self) -> None:
        """Routing NONE, pulse drivers off, connection closed. Idempotent."""
        if self.isShutdown:
            return
        try:
            self.board.shutdown()
        finally:
            super().shutdown()
