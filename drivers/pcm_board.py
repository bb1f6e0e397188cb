"""Driver for the PCM test chip's controller board (framed SCPI-like protocol over serial).

``PCMBoard.from_resource("socket://127.0.0.1:5025")`` reaches the emulated board;
``PCMBoard.from_resource("/dev/ttyUSB0")`` a real one; ``PCMBoard(transport)`` takes any
:class:`~pcm_hil_drivers.transport.ByteTransport`. The command set is in docs/protocol.md.
The driver knows cells as (array, row, col) addresses and flat board indices, never
what a cell stores.
"""
from __future__ import annotations

from typing import Any, Self

import numpy as np

from . import board_protocol as bp
from .base import CommonBase, Instrument, strict_discrete_set, strict_int_range, strict_range
from .errors import DriverError, InstrumentError, ProtocolError
from .interrupt import deferred_sigint
from .transport import ByteTransport, SerialTransport

AMPLITUDE_RANGE_V = (0.0, 5.0)
WIDTH_RANGE_S = (10e-9, 100e-6)
COMPLIANCE_RANGE_A = (1e-6, 10e-3)
READ_BIAS_RANGE_V = (0.01, 1.0)
N_AVG_RANGE = (1, 1024)
LEASE_RANGE_S = (0.0, 600.0)
TEMPERATURE_RANGE_K = (150.0, 700.0)
MAX_BULK_CELLS = 1 << 22
KINDS = {"SET": "SET", "RESET": "RES"}


def _parse_error(reply: str) -> tuple[int, str]:
    code, _, msg = reply.partition(",")
    try:
        return int(code), msg.strip().strip('"')
    except ValueError:
        raise ProtocolError(f"malformed error reply {reply!r}") from None


class PCMBoard(Instrument):
    """The chip's controller board: cell selection, on-chip pulses and reads, routing."""

    name = "pcm-board"

    def __init__(self, transport: ByteTransport, name: str | None = None) -> None:
        super().__init__(transport, name)
        self._geometry: tuple[int, int, int] | None = None

    @classmethod
    def from_resource(cls, resource: str, timeout_s: float = 5.0, baudrate: int = 921_600,  # type: ignore[override]
                      name: str | None = None) -> Self:
        """Open ``resource`` with pySerial (``/dev/ttyUSB0``, ``socket://host:port``) and build the driver.

        ``timeout_s``: per-read timeout (s); ``baudrate``: serial line rate (baud).
        """
        return cls._built_on(SerialTransport(resource, timeout_s=timeout_s, baudrate=baudrate), name=name)

    # -- transactions ---------------------------------------------------------------
    def transact(self, payload: bytes) -> bytes:
        """Send one frame, return the reply payload; ``ERR`` replies raise InstrumentError."""
        t = self.transport
        with t.lock, deferred_sigint():
            try:
                t.write(bp.encode_frame(payload))
                n = bp.payload_length(t.read_exact(bp.HEADER_LEN))
                reply = bp.check_frame(t.read_exact(n + bp.TRAILER_LEN))
            except DriverError:
                t.discard_input()
                raise
        if reply.startswith(b"ERR "):
            code, msg = _parse_error(reply[4:].decode("ascii", "replace"))
            raise InstrumentError(code, msg, self.name)
        return reply

    def write(self, command: str) -> None:
        reply = self.transact(command.encode("ascii"))
        if reply != b"OK":
            raise ProtocolError(f"{command!r}: expected OK, got {reply[:40]!r}")

    def ask(self, command: str) -> str:
        return self.transact(command.encode("ascii")).decode("ascii", "replace")

    # -- declarative properties -----------------------------------------------------
    idn = CommonBase.measurement("*IDN?", "Identification: maker, model, serial, firmware.", get_process=str)
    clock_s = CommonBase.measurement("SYST:CLK?", "Board clock (s); on the emulator, the virtual clock.",
                                     get_process=float)
    output_enabled = CommonBase.control(
        "OUTP?", "OUTP %d", "Pulse drivers enabled (bool). Pulses are refused while off.",
        validator=strict_discrete_set, values={False: 0, True: 1}, map_values=True)
    compliance_a = CommonBase.control(
        "SOUR:COMP?", "SOUR:COMP %.6g", "Current compliance of on-board pulses (A).",
        validator=strict_range, values=COMPLIANCE_RANGE_A, get_process=float)
    read_bias_v = CommonBase.control(
        "READ:BIAS?", "READ:BIAS %.6g", "Read bias of on-board reads (V).",
        validator=strict_range, values=READ_BIAS_RANGE_V, get_process=float)
    lease_s = CommonBase.control(
        "SYST:LEASE?", "SYST:LEASE %.6g",
        "Heartbeat lease (s): setting it makes this connection the controlling one; any frame it "
        "sends renews the lease, and the board turns its output off when the lease lapses or this "
        "connection closes. 0 releases it. Reads the time left (0: this connection holds none).",
        validator=strict_range, values=LEASE_RANGE_S, get_process=float)
    temperature_setpoint_k = CommonBase.control(
        "SOUR:TEMP?", "SOUR:TEMP %.6g", "Set point of the chip's temperature controller (K).",
        validator=strict_range, values=TEMPERATURE_RANGE_K, get_process=float)
    temperature_k = CommonBase.measurement("MEAS:TEMP?", "Chip temperature as the board measures it (K).",
                                           get_process=float)
    route = CommonBase.control(
        "ROUT:EXT?", "ROUT:EXT %s", "Connect the selected cell to an external port: NONE, SMU or PG.",
        validator=strict_discrete_set, values=["NONE", "SMU", "PG"], get_process=str)

    @property
    def geometry(self) -> tuple[int, int, int]:
        """(arrays, rows, cols) of the attached chip."""
        if self._geometry is None:
            parts = self.ask("CHIP:GEOM?").split(",")
            try:
                self._geometry = tuple(int(p) for p in parts)  # type: ignore[assignment]
            except ValueError:
                raise ProtocolError(f"malformed geometry reply {parts!r}") from None
            if len(self._geometry) != 3:
                raise ProtocolError(f"malformed geometry reply {parts!r}")
        return self._geometry  # type: ignore[return-value]

    @property
    def selected_cell(self) -> tuple[int, int, int] | None:
        """The selected cell as (array, row, col), or None when no cell is selected (``CELL?``)."""
        reply = self.ask("CELL?").strip()
        if reply.upper() == "NONE":
            return None
        try:
            cell = tuple(int(p) for p in reply.split(","))
        except ValueError:
            raise ProtocolError(f"CELL?: malformed reply {reply!r}") from None
        if len(cell) != 3:
            raise ProtocolError(f"CELL?: malformed reply {reply!r}")
        return cell  # type: ignore[return-value]

    @property
    def n_cells(self) -> int:
        a, r, c = self.geometry
        return a * r * c

    # -- actions --------------------------------------------------------------------
    def reset(self) -> None:
        """*RST: outputs off, routing NONE, selection cleared, error queue cleared."""
        self.write("*RST")

    def clear(self) -> None:
        self.write("*CLS")

    def next_error(self) -> tuple[int, str]:
        return _parse_error(self.ask("SYST:ERR?"))

    def select(self, array: int, row: int, col: int) -> None:
        """Select one cell for single-cell operations and routing."""
        for name, v, size in zip(("array", "row", "col"), (array, row, col), self.geometry):
            try:
                strict_int_range(int(v) if isinstance(v, np.integer) else v, (0, size - 1))
            except ValueError as exc:
                raise ValueError(f"PCMBoard.select {name}: {exc}") from None
        self.write(f"CELL {int(array)},{int(row)},{int(col)}")

    def pulse(self, kind: str, amplitude_v: float, width_s: float) -> None:
        """One pulse on the selected cell."""
        kind = self._kind(kind)
        amp = self._checked("amplitude_v", amplitude_v, AMPLITUDE_RANGE_V)
        width = self._checked("width_s", width_s, WIDTH_RANGE_S)
        self.write(f"PULS {kind},{amp:.6g},{width:.6g}")

    def measure_g(self, n_avg: int = 1) -> float:
        """Conductance of the selected cell (µS), ``n_avg`` reads averaged."""
        n_avg = self._n_avg(n_avg)
        try:
            return float(self.ask(f"MEAS:G? {n_avg}"))
        except ValueError:
            raise ProtocolError("MEAS:G?: reply is not a number") from None

    def bulk_pulse(self, kind: str, cells: Any, amplitude_v: Any, width_s: Any) -> None:
        """One pulse per cell in one transaction (flat board indices; amplitude/width scalar or per cell)."""
        kind = self._kind(kind)
        idx = self._cells(cells)
        rec = np.empty(idx.size, dtype=bp.PULSE_RECORD)
        rec["cell"] = idx
        rec["amplitude_v"] = self._checked_array("amplitude_v", amplitude_v, idx.size, AMPLITUDE_RANGE_V)
        rec["width_s"] = self._checked_array("width_s", width_s, idx.size, WIDTH_RANGE_S)
        reply = self.transact(b"BULK:PULS %s,%s" % (kind.encode(), bp.encode_block(rec)))
        if reply != b"OK":
            raise ProtocolError(f"BULK:PULS: expected OK, got {reply[:40]!r}")

    def bulk_measure_g(self, cells: Any, n_avg: int = 1) -> np.ndarray:
        """Conductance (µS, float32) of each cell in one transaction."""
        idx = self._cells(cells)
        n_avg = self._n_avg(n_avg)
        reply = self.transact(b"BULK:MEAS:G? %d,%s" % (n_avg, bp.encode_block(idx.astype(bp.CELL_DTYPE))))
        values = bp.array_from_reply(reply, bp.VALUE_DTYPE, "BULK:MEAS:G?")
        if values.size != idx.size:
            raise ProtocolError(f"BULK:MEAS:G?: asked for {idx.size} cells, got {values.size} values")
        return values.astype(np.float32)

    def emu_wait(self, seconds: float) -> None:
        """Emulator-only extension: advance the virtual clock by ``seconds``."""
        self.write(f"EMU:WAIT {strict_range(seconds, (0.0, 1e10)):.17g}")

    # -- validation helpers ---------------------------------------------------------
    @staticmethod
    def _kind(kind: str) -> str:
        k = str(getattr(kind, "value", kind)).upper()
        if k not in KINDS:
            raise ValueError(f"pulse kind must be one of {list(KINDS)}, got {kind!r}")
        return KINDS[k]

    @staticmethod
    def _checked(name: str, value: Any, bounds: tuple[float, float]) -> float:
        try:
            return strict_range(float(value) if isinstance(value, np.floating) else value, bounds)
        except ValueError as exc:
            raise ValueError(f"PCMBoard {name}: {exc}") from None

    @staticmethod
    def _checked_array(name: str, value: Any, n: int, bounds: tuple[float, float]) -> np.ndarray:
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim == 0:
            arr = np.full(n, float(arr))
        if arr.shape != (n,):
            raise ValueError(f"PCMBoard {name}: need a scalar or {n} values, got shape {arr.shape}")
        if n and (not np.all(np.isfinite(arr)) or arr.min() < bounds[0] or arr.max() > bounds[1]):
            raise ValueError(f"PCMBoard {name}: values must be finite and in [{bounds[0]:g}, {bounds[1]:g}]")
        return arr

    def _cells(self, cells: Any) -> np.ndarray:
        idx = np.asarray(cells)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise ValueError("PCMBoard cells must be a 1-D array of integer board indices")
        if idx.size > MAX_BULK_CELLS:
            raise ValueError(f"PCMBoard: at most {MAX_BULK_CELLS} cells per transaction, got {idx.size}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_cells):
            raise ValueError(f"PCMBoard cells must be in [0, {self.n_cells - 1}]")
        return idx

    @staticmethod
    def _n_avg(n_avg: int) -> int:
        try:
            return strict_int_range(int(n_avg) if isinstance(n_avg, np.integer) else n_avg, N_AVG_RANGE)
        except ValueError as exc:
            raise ValueError(f"PCMBoard n_avg: {exc}") from None

    # -- safety ---------------------------------------------------------------------
    def safe_state(self) -> None:
        """External routing off and pulse drivers off."""
        self.write("ROUT:EXT NONE")
        self.write("OUTP 0")
