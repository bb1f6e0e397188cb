"""The chip interface over the instrument bench: board, SMU and pulse generator.

Pulses and reads go through the board in batches (one transaction per chunk of cells).
``read_smu`` reads cell by cell through the SMU for precision; ``pulse_external`` fires
pulses shaped by the pulse generator. Soft limits are checked (in :class:`Chip`) before
anything is sent; the SMU's compliance is set before its output turns on; ``close``
leaves every output off and is idempotent, also after an error or Ctrl-C.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pcm_hil_drivers.errors import ConnectionLost, DriverError, InstrumentError, InstrumentTimeout, ProtocolError
from pcm_hil_drivers.keithley2600 import Keithley2600
from pcm_hil_drivers.keysight33500b import Keysight33500B
from pcm_hil_drivers.pcm_board import PCMBoard

from .config import BenchConfig
from ..chip import Chip, PulseKind, PulseUncertain

TRANSIENT_CODES = {210}  # board: "transient fault, command not executed"


@dataclass(frozen=True)
class RetryPolicy:
    """How board transactions recover: reconnect and retry, at most ``attempts`` times.

    Reads and clock queries are retried. A pulse batch whose outcome is unknown (timeout,
    corrupted reply, lost connection) is not re-sent: the board is reconnected and
    :class:`PulseUncertain` tells the caller to verify those cells. A transient error
    reply (the command did not run) is retried for pulses too.
    """

    attempts: int = 4
    backoff_s: float = 0.02


class GaveUp(DriverError):
    """The retry policy is exhausted; outputs are left off."""


class BenchChip(Chip):
    """A chip on the bench, driven through its controller board (and optional SMU and PG)."""

    def __init__(self, config: BenchConfig, retry: RetryPolicy | None = None) -> None:
        super().__init__(config.geometry, config.limits)
        self.config = config
        self.retry = retry or RetryPolicy()
        self.fault_log: list[dict[str, Any]] = []
        self.board: PCMBoard | None = None
        self.smu: Keithley2600 | None = None
        self.pg: Keysight33500B | None = None
        self._closed = False
        try:
            self._open()
        except BaseException as exc:
            try:
                self.close()
            except RuntimeError as also:  # keep the original error; say what shutdown could not do
                exc.add_note(str(also))
            raise

    @classmethod
    def from_file(cls, path: str | Path) -> "BenchChip":
        return cls(BenchConfig.load(path))

    def _open(self) -> None:
        cfg = self.config
        self.board = PCMBoard.from_resource(cfg.board.resource, timeout_s=cfg.board.timeout_s)
        self.board_idn, (arrays, rows, cols) = self._transact(
            "identify", lambda: (self.board.idn, self.board.geometry), idempotent=True)
        self._transact("setup", lambda: self._setup_board(reset=True), idempotent=True)
        self.virtual_clock = "-EMU" in self.board_idn.split(",")[1] if "," in self.board_idn else False
        if cfg.chip.rows > rows or cfg.chip.cols > cols or max(cfg.wiring_arrays) >= arrays:
            raise ValueError(f"bench file geometry/wiring does not fit the board's chip ({arrays}×{rows}×{cols})")
        self._board_shape = (arrays, rows, cols)
        self._wiring = np.asarray(cfg.wiring_arrays, dtype=np.int64)
        if cfg.smu:
            self.smu = Keithley2600.from_resource(cfg.smu.resource, timeout_s=cfg.smu.timeout_s)
            ch = self._smu_channel
            ch.output_enabled = False
            ch.source_function = "voltage"
            ch.compliance_current_a = cfg.smu.compliance_a
            ch.source_voltage_v = cfg.chip.read_bias_v
            ch.nplc = cfg.smu.nplc
            self.smu.check_errors()
        if cfg.pulse_generator:
            self.pg = Keysight33500B.from_resource(cfg.pulse_generator.resource,
                                                   timeout_s=cfg.pulse_generator.timeout_s)
            self._pg_channel.output_enabled = False
            self._pg_settings: tuple[float, float, float] | None = None
            self.pg.check_errors()

    def _setup_board(self, reset: bool) -> None:
        cfg = self.config
        if reset:
            self.board.reset()
        self.board.compliance_a = cfg.chip.pulse_compliance_a
        self.board.read_bias_v = cfg.chip.read_bias_v
        if reset:
            self.board.check_errors()
        self.board.output_enabled = True  # compliance is set first

    # -- recovery -------------------------------------------------------------------
    def _reconnect(self) -> None:
        """A fresh connection to the board, settings re-applied (compliance before output)."""
        try:
            self.board.transport.close()
        except OSError:
            pass
        self.board = PCMBoard.from_resource(self.config.board.resource, timeout_s=self.config.board.timeout_s)
        self._setup_board(reset=False)

    def _log(self, what: str, exc: Exception, attempt: int) -> None:
        self.fault_log.append({"what": what, "error": type(exc).__name__, "detail": str(exc)[:200],
                               "attempt": attempt, "time": time.time()})

    def _recover(self, what: str) -> None:
        """Reconnect, with backoff, within the policy; GaveUp when the board stays away."""
        for attempt in range(self.retry.attempts):
            time.sleep(self.retry.backoff_s * 2 ** attempt)
            try:
                self._reconnect()
                return
            except DriverError as exc:
                self._log(f"reconnect after {what}", exc, attempt)
        raise GaveUp(f"{what}: the board did not come back after {self.retry.attempts} reconnects")

    def _transact(self, what: str, fn: Callable[[], Any], idempotent: bool, cells: np.ndarray | None = None) -> Any:
        """Run one board transaction under the retry policy (see :class:`RetryPolicy`)."""
        for attempt in range(self.retry.attempts):
            try:
                return fn()
            except (InstrumentTimeout, ProtocolError, ConnectionLost, InstrumentError) as exc:
                if isinstance(exc, InstrumentError) and exc.code not in TRANSIENT_CODES:
                    raise
                self._log(what, exc, attempt)
                self._recover(what)
                if not idempotent and not isinstance(exc, InstrumentError):  # it may have run: never resend
                    raise PulseUncertain(cells if cells is not None else np.empty(0, np.int64), exc) from exc
        raise GaveUp(f"{what}: gave up after {self.retry.attempts} attempts")

    @property
    def _smu_channel(self) -> Any:
        return getattr(self.smu, f"smu{self.config.smu.channel}")  # type: ignore[union-attr]

    @property
    def _pg_channel(self) -> Any:
        return getattr(self.pg, f"ch{self.config.pulse_generator.channel}")  # type: ignore[union-attr]

    # -- addressing -----------------------------------------------------------------
    def board_index(self, cells: np.ndarray) -> np.ndarray:
        """Board flat indices of chip cells, through the wiring."""
        a, r, c = self.geometry.coords(cells)
        return np.ravel_multi_index((self._wiring[a], r, c), self._board_shape).astype(np.int64)

    def _chunks(self, n: int) -> range:
        return range(0, n, self.config.board.max_batch)

    # -- chip interface -------------------------------------------------------------
    def _pulse(self, cells: np.ndarray, kind: PulseKind, amplitude_v: np.ndarray, width_s: np.ndarray) -> None:
        board_cells = self.board_index(cells)
        step = self.config.board.max_batch
        unknown: list[PulseUncertain] = []
        for i in self._chunks(cells.size):
            sl = slice(i, i + step)
            amp = float(amplitude_v[0]) if amplitude_v.size == 1 else amplitude_v[sl]
            width = float(width_s[0]) if width_s.size == 1 else width_s[sl]
            try:
                self._transact("BULK:PULS", lambda: self.board.bulk_pulse(kind.value, board_cells[sl], amp, width),
                               idempotent=False, cells=cells[sl])
            except PulseUncertain as exc:  # the other chunks still go out; only this one is in doubt
                unknown.append(exc)
        if unknown:
            raise PulseUncertain(np.concatenate([u.cells for u in unknown]), unknown[0].cause)

    def _read(self, cells: np.ndarray, n_avg: int) -> np.ndarray:
        board_cells = self.board_index(cells)
        step = self.config.board.max_batch
        out = np.empty(cells.size, dtype=np.float32)
        for i in self._chunks(cells.size):
            out[i:i + step] = self._transact(
                "BULK:MEAS:G?", lambda: self.board.bulk_measure_g(board_cells[i:i + step], n_avg), idempotent=True)
        return out

    def now(self) -> float:
        return self._transact("SYST:CLK?", lambda: self.board.clock_s, idempotent=True)

    def _wait(self, seconds: float) -> None:
        if self.virtual_clock:  # idempotent by target time: a retried wait never waits twice
            target = self.now() + seconds
            self._transact("EMU:WAIT", lambda: self.board.emu_wait(max(0.0, target - self.board.clock_s)),
                           idempotent=True)
            return
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.5))  # short naps keep Ctrl-C responsive

    # -- precise and external paths ---------------------------------------------------
    def _select(self, cell: int) -> None:
        a, r, c = self.geometry.coords(np.array([cell]))
        self.board.select(int(self._wiring[a[0]]), int(r[0]), int(c[0]))  # type: ignore[union-attr]

    def read_smu(self, cells: Any) -> np.ndarray:
        """Conductance (µS) of each cell measured by the SMU at the read bias, cell by cell."""
        if self.smu is None:
            raise ValueError("this bench has no [smu] section: precise reads need an SMU")
        idx = self.cells(cells)
        ch, bias = self._smu_channel, self.config.chip.read_bias_v
        out = np.empty(idx.size, dtype=np.float64)
        ch.compliance_current_a = self.config.smu.compliance_a  # type: ignore[union-attr]
        ch.source_voltage_v = bias
        try:
            ch.output_enabled = True
            for k, cell in enumerate(idx):
                self._select(int(cell))
                self.board.route = "SMU"  # type: ignore[union-attr]
                out[k] = ch.measure_current() / bias * 1e6
                if ch.in_compliance:
                    raise ValueError(f"cell {int(cell)}: SMU in compliance at {self.config.smu.compliance_a} A; "
                                     "raise smu.compliance_a or lower the read bias")
        finally:
            ch.output_enabled = False
            self.board.route = "NONE"  # type: ignore[union-attr]
            if ch.output_enabled:  # the query also waits until the write above has been executed
                raise RuntimeError("the SMU output did not turn off")
        return out

    def pulse_external(self, cells: Any, kind: PulseKind | str, amplitude_v: Any, width_s: Any) -> None:
        """Pulses shaped by the pulse generator, one cell at a time (soft limits checked first)."""
        if self.pg is None:
            raise ValueError("this bench has no [pulse_generator] section")
        idx, kind, amp, width = self.validate_pulse(cells, kind, amplitude_v, width_s)
        pgc, cfg = self._pg_channel, self.config.pulse_generator
        trailing = cfg.reset_trailing_edge_s if kind is PulseKind.RESET else cfg.set_trailing_edge_s  # type: ignore[union-attr]
        try:
            for k, cell in enumerate(idx):
                a, w = float(amp[min(k, amp.size - 1)]), float(width[min(k, width.size - 1)])
                if self._pg_settings != (a, w, trailing):
                    pgc.configure_single_pulse(a, w, cfg.leading_edge_s, trailing,  # type: ignore[union-attr]
                                               limit_v=self.limits.max_amplitude_v)
                    self._pg_settings = (a, w, trailing)
                self._select(int(cell))
                self.board.route = "PG"  # type: ignore[union-attr]
                pgc.output_enabled = True
                self.pg.trigger()
                self.pg.wait_complete()
        finally:
            pgc.output_enabled = False
            self.board.route = "NONE"  # type: ignore[union-attr]
        self.pg.check_errors()

    # -- bookkeeping ----------------------------------------------------------------
    def chip_id(self) -> str:
        """The mounted chip as the bench file names it (``[chip] id``); without a name, the
        board it sits on stands in for it."""
        shape = "x".join(str(v) for v in self.geometry.shape)
        return f"bench:{self.config.chip.id or self.board_idn}:{shape}"

    def identity(self) -> dict[str, Any]:
        info = super().identity()
        info.update(board=self.board_idn, bench=self.config.to_dict(), virtual_clock=self.virtual_clock)
        if self.smu:
            info["smu"] = self.smu.idn
        if self.pg:
            info["pulse_generator"] = self.pg.idn
        return info

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            self.close()
        except RuntimeError as err:  # keep the error that ended the block; report the shutdown with it
            if exc is None:
                raise
            exc.add_note(str(err))

    def close(self) -> None:
        """Every output off, every connection closed; idempotent; tries all even if one fails."""
        if self._closed:
            return
        self._closed = True
        errors = []
        for inst in (self.pg, self.smu, self.board):
            if inst is None:
                continue
            try:
                inst.shutdown()
            except Exception as exc:  # keep shutting the others down, then report
                errors.append(f"{inst.name}: {exc}")
        if errors:
            raise RuntimeError("shutdown incomplete: " + "; ".join(errors))
