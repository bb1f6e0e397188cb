"""The chip interface over the instrument bench: board, SMU and pulse generator.

Pulses and reads go through the board in batches (one transaction per chunk of cells).
``read_smu`` reads cell by cell through the SMU for precision; ``pulse_external`` fires
pulses shaped by the pulse generator. Soft limits are checked (in :class:`Chip`) before
anything is sent; the SMU's compliance is set before its output turns on; ``close``
leaves every output off and is idempotent, also after an error or Ctrl-C.
"""
from __future__ import annotations

import math
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

TRANSIENT_CODES = {210, 101, 102, 103}  # board: transient fault / framing / CRC / truncated: not executed
# SMU and pulse generator: errors our own well-formed commands only get when a message was lost
# or mangled on the way (system error, command errors, TSP syntax/runtime): worth a retry.
# Settings conflicts and out-of-range data (-221, -222) are real and raised at once.
LINE_TRANSIENT_CODES = {-310, -285, -286, *range(-199, -99)}


@dataclass(frozen=True)
class RetryPolicy:
    """How instrument exchanges recover: reconnect and retry, at most ``attempts`` times.

    Reads and clock queries are retried. A pulse batch whose outcome is unknown (timeout,
    corrupted reply, lost connection) is not re-sent: the board is reconnected and
    :class:`PulseUncertain` tells the caller to verify those cells. A transient error
    reply (the command did not run) is retried for pulses too. The SMU and the pulse
    generator recover the same way (reconnect, settings re-applied, read back); a pulse
    generator trigger whose outcome is unknown is :class:`PulseUncertain` too.
    ``shutdown_attempts``: how often ``close`` tries to turn each instrument's output off
    (and read it back), reconnecting in between.
    """

    attempts: int = 4
    backoff_s: float = 0.02
    shutdown_attempts: int = 3


class GaveUp(DriverError):
    """The retry policy is exhausted; outputs are left off."""


def _retryable(exc: BaseException, codes: set[int]) -> bool:
    if isinstance(exc, InstrumentError):
        return exc.code in codes
    return isinstance(exc, (InstrumentTimeout, ProtocolError, ConnectionLost))


class BenchChip(Chip):
    """A chip on the bench, driven through its controller board (and optional SMU and PG)."""

    def __init__(self, config: BenchConfig, retry: RetryPolicy | None = None) -> None:
        super().__init__(config.geometry, config.limits)
        self.config = config
        self.retry = retry or RetryPolicy()
        self.fault_log: list[dict[str, Any]] = []
        self.reads_disputed = 0  # read batches whose two transactions disagreed (then re-read)
        self.board: PCMBoard | None = None
        self.smu: Keithley2600 | None = None
        self.pg: Keysight33500B | None = None
        self._closed = False
        self._last_board = time.monotonic()
        self._smu_on = False
        self._pg_settings: tuple[float, float, float] | None = None
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
            self._line_retry("SMU setup", "smu", lambda: self._setup_smu(clear=False))
        if cfg.pulse_generator:
            self.pg = Keysight33500B.from_resource(cfg.pulse_generator.resource,
                                                   timeout_s=cfg.pulse_generator.timeout_s)
            self._line_retry("PG setup", "pg", lambda: self._setup_pg(clear=False))

    def _setup_board(self, reset: bool) -> None:
        cfg = self.config
        if reset:
            self.board.reset()
        self.board.compliance_a = cfg.chip.pulse_compliance_a
        self.board.read_bias_v = cfg.chip.read_bias_v
        if reset:
            self.board.check_errors()
        self.board.lease_s = cfg.board.lease_s  # this connection controls the output, on a heartbeat
        self.board.output_enabled = True  # compliance is set first
        self._last_board = time.monotonic()

    def _setup_smu(self, clear: bool) -> None:
        """SMU output off, then source, compliance, level and NPLC (compliance before any output)."""
        cfg = self.config
        self._smu_on = False  # first: a setup that fails midway leaves the output to be switched on again
        if clear:  # a reconnect: errors queued by the fault that made us reconnect are stale
            self.smu.clear()
        ch = self._smu_channel
        ch.output_enabled = False
        ch.source_function = "voltage"
        ch.compliance_current_a = cfg.smu.compliance_a
        ch.source_voltage_v = cfg.chip.read_bias_v
        ch.nplc = cfg.smu.nplc
        self._drain_errors(self.smu)

    def _setup_pg(self, clear: bool) -> None:
        self._pg_settings = None  # first: after a failed setup the pulse shape is sent again
        if clear:
            self.pg.clear()
        self._pg_channel.output_enabled = False
        self._drain_errors(self.pg)

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

    def _keep_lease(self) -> None:
        """Renew the board's heartbeat lease when the board has not heard from us for half of it
        (any frame renews it); after a lapse the board switched its output off: on again."""
        if time.monotonic() - self._last_board > self.config.board.lease_s / 2:
            self.board.lease_s = self.config.board.lease_s
            self.board.output_enabled = True
            self._last_board = time.monotonic()

    def _transact(self, what: str, fn: Callable[[], Any] | None, idempotent: bool,
                  cells: np.ndarray | None = None) -> Any:
        """Run one board transaction under the retry policy (see :class:`RetryPolicy`); ``fn``
        None: only the heartbeat, when it is due."""
        for attempt in range(self.retry.attempts):
            sent = False
            try:
                self._keep_lease()
                if fn is None:
                    return None
                sent = True
                out = fn()
                self._last_board = time.monotonic()
                return out
            except (InstrumentTimeout, ProtocolError, ConnectionLost, InstrumentError) as exc:
                if isinstance(exc, InstrumentError) and exc.code not in TRANSIENT_CODES:
                    raise
                self._log(what, exc, attempt)
                self._recover(what)
                if sent and not idempotent and not isinstance(exc, InstrumentError):  # it may have run: never resend
                    raise PulseUncertain(cells if cells is not None else np.empty(0, np.int64), exc) from exc
        raise GaveUp(f"{what}: gave up after {self.retry.attempts} attempts")

    def _reopen(self, name: str) -> None:
        """A fresh connection to the SMU (``smu``) or pulse generator (``pg``), settings re-applied."""
        inst = getattr(self, name)
        if inst is not None:
            try:
                inst.transport.close()
            except OSError:
                pass
        setattr(self, name, None)
        self._smu_on, self._pg_settings = (False, self._pg_settings) if name == "smu" else (self._smu_on, None)
        if name == "smu":
            self.smu = Keithley2600.from_resource(self.config.smu.resource, timeout_s=self.config.smu.timeout_s)
            self._setup_smu(clear=True)
        else:
            self.pg = Keysight33500B.from_resource(self.config.pulse_generator.resource,
                                                   timeout_s=self.config.pulse_generator.timeout_s)
            self._setup_pg(clear=True)

    def _line_retry(self, what: str, name: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (idempotent exchanges with the SMU or pulse generator, board transactions
        inside it recover on their own) under the retry policy: on a wire fault reconnect that
        instrument, re-apply its settings and try again; GaveUp when it stays away."""
        for attempt in range(self.retry.attempts):
            try:
                return fn()
            except DriverError as exc:
                if isinstance(exc, GaveUp) or not _retryable(exc, LINE_TRANSIENT_CODES):
                    raise
                self._log(what, exc, attempt)
                time.sleep(self.retry.backoff_s * 2 ** attempt)
                try:
                    self._reopen(name)
                except DriverError as again:
                    self._log(f"reconnect after {what}", again, attempt)
        raise GaveUp(f"{what}: the {name} did not recover after {self.retry.attempts} attempts")

    def _drain_errors(self, inst: Any) -> None:
        """Empty an instrument's error queue; raise the first error (a transient one, retried
        by the caller, only when no real one was queued)."""
        errors = []
        for _ in range(64):
            code, msg = inst.next_error()
            if code == 0:
                break
            errors.append((code, msg))
        if errors:
            real = [e for e in errors if e[0] not in LINE_TRANSIENT_CODES]
            code, msg = (real or errors)[0]
            raise InstrumentError(code, msg, inst.name)

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
            out[i:i + step] = self._read_chunk(board_cells[i:i + step], n_avg)
        return out

    def _bulk_read(self, board_cells: np.ndarray, n_avg: int) -> np.ndarray:
        """One read transaction; a value that is not a finite number is implausible: read again."""
        def once() -> np.ndarray:
            g = self.board.bulk_measure_g(board_cells, n_avg)
            if not np.all(np.isfinite(g)):
                raise ProtocolError(f"BULK:MEAS:G?: {int((~np.isfinite(g)).sum())} values are not finite numbers")
            return g

        return self._transact("BULK:MEAS:G?", once, idempotent=True)

    MAX_CONFIRM_READS = 8  # read transactions per chunk before a disagreement gives up

    def _read_chunk(self, board_cells: np.ndarray, n_avg: int) -> np.ndarray:
        """Read a chunk; with ``confirm_reads`` in two transactions that must agree.

        ``n_avg`` ≥ 2 reads are split into two halves, each its own transaction, and averaged
        (as many reads as asked, the same noise); one read is confirmed by a second. Two
        transactions that differ on average by more than ``confirm_us`` plus ``confirm_rel`` of
        the mean G (scaled to their noise and to the size of the chunk), or in one cell by six
        times that at the cell's G, mean one of them
        measured wrong (a CRC-valid reply can still be off): the chunk is read again until
        three transactions agree, and their average is the value (at most
        ``MAX_CONFIRM_READS`` transactions, then :class:`GaveUp`).
        """
        if not self.config.board.confirm_reads:
            return self._bulk_read(board_cells, n_avg)
        h1 = max(n_avg // 2, 1)
        h2 = max(n_avg - h1, 1)
        m = board_cells.size
        reads = [(self._bulk_read(board_cells, h1).astype(np.float64), h1),
                 (self._bulk_read(board_cells, h2).astype(np.float64), h2)]
        if m == 0 or self._agree(reads[0], reads[1]):
            (a, _), (b, _) = reads
            return (a if n_avg == 1 else (a * h1 + b * h2) / n_avg).astype(np.float32)
        self.reads_disputed += 1
        d = reads[0][0] - reads[1][0]
        self.fault_log.append({"what": "BULK:MEAS:G? confirm", "error": "ReadsDisagree",
                               "detail": f"two read transactions of {m} cells differ by {float(d.mean()):+.3g} µS on "
                                         f"average (limit {float(self._limit(h1, h2, reads[0][0]).mean()):.3g} µS); "
                                         "read again",
                               "attempt": 0, "time": time.time()})
        while len(reads) < self.MAX_CONFIRM_READS:
            h = (h1, h2)[len(reads) % 2]
            reads.append((self._bulk_read(board_cells, h).astype(np.float64), h))
            for r in reads:  # the first group of three transactions that all agree with each other
                group = [q for q in reads if q is r or self._agree(r, q)]
                if len(group) >= 3 and all(self._agree(p, q) for k, p in enumerate(group) for q in group[k + 1:]):
                    w = np.array([q[1] for q in group], np.float64)
                    return (np.stack([q[0] for q in group]).T @ w / w.sum()).astype(np.float32)
        raise GaveUp(f"reads of {m} cells disagree across {len(reads)} transactions: the board measures wrong")

    def _limit(self, n1: int, n2: int, g_us: np.ndarray) -> np.ndarray:
        """Per cell read as ``g_us``, how far two read transactions of ``n1`` and ``n2`` averaged
        reads of those cells may differ on average: half of ``confirm_us`` + ``confirm_rel`` × G
        for two 4-read halves of 8 or more cells, scaled to other sizes."""
        b = self.config.board
        return ((b.confirm_us + b.confirm_rel * np.abs(g_us)) * 0.5 * math.sqrt((1 / n1 + 1 / n2) / 0.5)
                * max(1.0, math.sqrt(8 / max(g_us.size, 1))))

    def _agree(self, r: tuple[np.ndarray, int], q: tuple[np.ndarray, int]) -> bool:
        limit = self._limit(r[1], q[1], 0.5 * (r[0] + q[0]))
        d = r[0] - q[0]
        return abs(float(d.mean())) <= float(limit.mean()) and bool(np.all(np.abs(d) <= 6 * limit))

    def now(self) -> float:
        return self._transact("SYST:CLK?", lambda: self.board.clock_s, idempotent=True)

    def _wait(self, seconds: float) -> None:
        if self.virtual_clock:  # idempotent by target time: a retried wait never waits twice
            target = self.now() + seconds
            self._transact("EMU:WAIT", lambda: self.board.emu_wait(max(0.0, target - self.board.clock_s)),
                           idempotent=True)
            return
        end = time.monotonic() + seconds
        nap = min(0.5, self.config.board.lease_s / 3)
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, nap))  # short naps keep Ctrl-C responsive
            self._transact("SYST:LEASE", None, idempotent=True)  # the heartbeat, when it is due

    # -- temperature ----------------------------------------------------------------
    def temperature_k(self) -> float:
        """The chip temperature the board's temperature controller measures (K)."""
        return self._temperature("MEAS:TEMP?", lambda: self.board.temperature_k)

    def _set_temperature_k(self, kelvin: float) -> None:
        self._temperature("SOUR:TEMP", lambda: setattr(self.board, "temperature_setpoint_k", kelvin))

    def _temperature(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return self._transact(what, fn, idempotent=True)
        except InstrumentError as exc:
            if exc.code == -113:  # the board does not know the command
                raise NotImplementedError(f"this board has no temperature controller ({exc})") from None
            raise

    # -- precise and external paths ---------------------------------------------------
    def _select(self, cell: int) -> None:
        a, r, c = self.geometry.coords(np.array([cell]))
        self.board.select(int(self._wiring[a[0]]), int(r[0]), int(c[0]))  # type: ignore[union-attr]

    def _route(self, cell: int | None, port: str) -> None:
        """Connect ``cell`` to an external port (or disconnect: ``port`` NONE), one board transaction each."""
        def go() -> None:
            if cell is not None:
                self._select(cell)
            self.board.route = port  # type: ignore[union-attr]

        self._transact(f"ROUT:EXT {port}", go, idempotent=True)

    def _smu_read_cell(self, cell: int) -> float:
        ch, bias = self._smu_channel, self.config.chip.read_bias_v
        if not self._smu_on:
            limit = self.config.smu.compliance_a  # type: ignore[union-attr]
            ch.compliance_current_a = limit
            ch.source_voltage_v = bias
            ch.output_enabled = True
            # every setting read back: a lost command would measure an open circuit, or at 0 V
            # (a zero current every confirming read agrees with)
            if not ch.output_enabled:
                raise ProtocolError("the SMU output did not turn on (command lost?)")
            if not (math.isclose(ch.source_voltage_v, bias, rel_tol=1e-5, abs_tol=1e-9)
                    and math.isclose(ch.compliance_current_a, limit, rel_tol=1e-5)):
                raise ProtocolError("the SMU did not take its read bias or compliance (command lost?)")
            self._smu_on = True
        self._route(cell, "SMU")
        # the state proven with the measurement itself: a command still in flight on a dropped
        # connection may run after the settings were read back (output off, level reset), and
        # every confirming read would agree on the open-circuit current
        r = ch.measure_current_sourced()
        if not (r.output_on and math.isclose(r.level_v, bias, rel_tol=1e-5, abs_tol=1e-9)):
            self._smu_on = False
            raise ProtocolError(f"cell {cell}: the SMU measured with its output {'on' if r.output_on else 'off'} "
                                f"at {r.level_v:g} V, not on at the read bias {bias:g} V (a late command?)")
        if r.in_compliance:
            raise ValueError(f"cell {cell}: SMU in compliance at {self.config.smu.compliance_a} A; "
                             "raise smu.compliance_a or lower the read bias")
        return r.current_a / bias * 1e6

    def smu_confirm_limit_us(self, g_us: float) -> float:
        """How far two SMU readings of a cell reading ``g_us`` may differ (µS): ``smu.confirm_us``
        plus ``smu.confirm_rel`` of G (read noise grows with G; a wrong reading within it is
        indistinguishable from noise)."""
        cfg = self.config.smu
        return cfg.confirm_us + cfg.confirm_rel * abs(g_us)  # type: ignore[union-attr]

    def _smu_confirmed(self, cell: int) -> float:
        """One cell's SMU conductance (µS); with ``smu.confirm_reads`` two readings that must agree
        within :meth:`smu_confirm_limit_us`, else more until three agree pairwise (their mean), at
        most ``MAX_CONFIRM_READS``, then :class:`GaveUp`: a well-formed reading can still be wrong."""
        def read() -> float:
            return self._line_retry("SMU read", "smu", lambda: self._smu_read_cell(cell))

        cfg = self.config.smu
        reads = [read()]
        if not cfg.confirm_reads:  # type: ignore[union-attr]
            return reads[0]
        reads.append(read())
        limit = self.smu_confirm_limit_us(min(abs(reads[0]), abs(reads[1])))
        if abs(reads[0] - reads[1]) <= limit:
            return 0.5 * (reads[0] + reads[1])
        self.reads_disputed += 1
        self.fault_log.append({"what": "SMU read confirm", "error": "ReadsDisagree",
                               "detail": f"cell {cell}: two SMU readings differ by {reads[0] - reads[1]:+.3g} µS "
                                         f"(limit {limit:.3g} µS); read again", "attempt": 0, "time": time.time()})
        while len(reads) < self.MAX_CONFIRM_READS:
            reads.append(read())
            for r in reads:
                group = [q for q in reads if abs(q - r) <= limit]
                if len(group) >= 3 and max(group) - min(group) <= limit:
                    return float(np.mean(group))
        raise GaveUp(f"SMU readings of cell {cell} disagree across {len(reads)} reads: the SMU measures wrong")

    def _smu_idle(self) -> None:
        """SMU output off (read back) and the cell disconnected."""
        def off() -> None:
            ch = self._smu_channel
            ch.output_enabled = False
            if ch.output_enabled:  # the query also waits until the write above has been executed
                raise ProtocolError("the SMU output did not turn off")
            self._smu_on = False

        try:
            self._line_retry("SMU output off", "smu", off)
        finally:
            self._route(None, "NONE")

    def read_smu(self, cells: Any) -> np.ndarray:
        """Conductance (µS) of each cell measured by the SMU at the read bias, cell by cell.

        Wire faults on the SMU link are recovered under the retry policy (reconnect, settings
        re-applied, the cell read again); the output is off and read back at the end."""
        if self.smu is None:
            raise ValueError("this bench has no [smu] section: precise reads need an SMU")
        idx = self.cells(cells)
        out = np.empty(idx.size, dtype=np.float64)
        try:
            for k, cell in enumerate(idx):
                out[k] = self._smu_confirmed(int(cell))
        except BaseException as exc:
            try:
                self._smu_idle()
            except Exception as also:  # noqa: BLE001 - the first error stays the one raised
                exc.add_note(f"and the SMU could not be switched off: {type(also).__name__}: {also}")
            raise
        self._smu_idle()
        return out

    def _pg_arm(self, cell: int, a: float, w: float, trailing: float) -> None:
        """Pulse shape set (when it changed), the cell on the PG port, output on; every setting
        confirmed (error queue empty, output read back) before a trigger may fire."""
        pgc, cfg = self._pg_channel, self.config.pulse_generator
        if self._pg_settings != (a, w, trailing):
            self._pg_settings = None
            pgc.configure_single_pulse(a, w, cfg.leading_edge_s, trailing,  # type: ignore[union-attr]
                                       limit_v=self.limits.max_amplitude_v)
            self._drain_errors(self.pg)
            self._pg_settings = (a, w, trailing)
        self._route(cell, "PG")
        pgc.output_enabled = True
        if not pgc.output_enabled:
            raise ProtocolError("the pulse generator output did not turn on (command lost?)")

    def _pg_idle(self) -> None:
        def off() -> None:
            pgc = self._pg_channel
            pgc.output_enabled = False
            if pgc.output_enabled:
                raise ProtocolError("the pulse generator output did not turn off")

        try:
            self._line_retry("PG output off", "pg", off)
        finally:
            self._route(None, "NONE")

    def pulse_external(self, cells: Any, kind: PulseKind | str, amplitude_v: Any, width_s: Any) -> None:
        """Pulses shaped by the pulse generator, one cell at a time (soft limits checked first).

        Faults before a trigger are recovered (reconnect, settings re-applied and confirmed);
        a trigger whose outcome is unknown is never repeated: those cells raise
        :class:`PulseUncertain` at the end, after the others were pulsed."""
        if self.pg is None:
            raise ValueError("this bench has no [pulse_generator] section")
        idx, kind, amp, width = self.validate_pulse(cells, kind, amplitude_v, width_s)
        cfg = self.config.pulse_generator
        trailing = cfg.reset_trailing_edge_s if kind is PulseKind.RESET else cfg.set_trailing_edge_s  # type: ignore[union-attr]
        doubt: list[int] = []
        cause: BaseException | None = None
        try:
            for k, cell in enumerate(idx):
                a, w = float(amp[min(k, amp.size - 1)]), float(width[min(k, width.size - 1)])
                self._line_retry("PG setup", "pg", lambda: self._pg_arm(int(cell), a, w, trailing))
                try:
                    self.pg.trigger()
                    self.pg.wait_complete()
                except DriverError as exc:  # fired or not: never fire again blindly
                    if not _retryable(exc, LINE_TRANSIENT_CODES):
                        raise
                    self._log("PG trigger", exc, 0)
                    doubt.append(int(cell))
                    cause = cause or exc
                    self._reopen_logged("pg")
        except BaseException as exc:
            try:
                self._pg_idle()
            except Exception as also:  # noqa: BLE001
                exc.add_note(f"and the pulse generator could not be switched off: {type(also).__name__}: {also}")
            raise
        self._pg_idle()
        self._line_retry("PG errors", "pg", lambda: self._drain_errors(self.pg))
        if doubt:
            raise PulseUncertain(np.asarray(doubt, np.int64), cause)  # type: ignore[arg-type]

    def _reopen_logged(self, name: str) -> None:
        """Reconnect ``name`` within the policy; GaveUp when it stays away."""
        for attempt in range(self.retry.attempts):
            time.sleep(self.retry.backoff_s * 2 ** attempt)
            try:
                self._reopen(name)
                return
            except DriverError as exc:
                self._log(f"reconnect {name}", exc, attempt)
        raise GaveUp(f"the {name} did not come back after {self.retry.attempts} reconnects")

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
        """Every output off and read back, every connection closed; idempotent.

        Each instrument is tried even if another fails, each up to
        ``retry.shutdown_attempts`` times, on a fresh connection after a failed try; what
        could not be switched off is reported in one ``RuntimeError`` at the end."""
        if self._closed:
            return
        self._closed = True
        errors = [e for e in (self._shut("pg"), self._shut("smu"), self._shut("board")) if e]
        if errors:
            raise RuntimeError("shutdown incomplete: " + "; ".join(errors))

    def _connect(self, name: str) -> Any:
        cfg = self.config
        if name == "board":
            return PCMBoard.from_resource(cfg.board.resource, timeout_s=cfg.board.timeout_s)
        if name == "smu":
            return Keithley2600.from_resource(cfg.smu.resource, timeout_s=cfg.smu.timeout_s)
        return Keysight33500B.from_resource(cfg.pulse_generator.resource, timeout_s=cfg.pulse_generator.timeout_s)

    @staticmethod
    def _off_confirmed(inst: Any) -> None:
        """Outputs off (board: routing NONE too), then read back."""
        if isinstance(inst, PCMBoard):
            inst.route = "NONE"
            inst.output_enabled = False
            if inst.output_enabled:
                raise ProtocolError("the board output is still on after OUTP 0")
            return
        for ch in inst.channels:
            ch.output_enabled = False
        for ch in inst.channels:
            if ch.output_enabled:
                raise ProtocolError(f"output {ch.id} is still on after switching it off")

    @staticmethod
    def _close_quietly(inst: Any) -> None:
        if inst is not None:
            inst._closed = True
            try:
                inst.transport.close()
            except Exception:  # noqa: BLE001 - closing what is already gone
                pass

    def _shut(self, name: str) -> str | None:
        """Switch one instrument off within ``retry.shutdown_attempts``; an error text, or None."""
        inst = getattr(self, name)
        if inst is None:
            return None
        label = inst.name
        last: Exception | None = None
        attempts = max(1, self.retry.shutdown_attempts)
        try:
            for attempt in range(attempts):
                try:
                    if inst is None:
                        inst = self._connect(name)
                    self._off_confirmed(inst)
                    return None
                except Exception as exc:  # keep trying this one, then the others
                    last = exc
                    self._log(f"shutdown {name}", exc, attempt)
                    if attempt + 1 < attempts:
                        time.sleep(self.retry.backoff_s * 2 ** attempt)
                    if not isinstance(exc, InstrumentError):  # the instrument answered: keep its connection
                        self._close_quietly(inst)
                        inst = None
        finally:
            self._close_quietly(inst)
        return f"{label}: {last} (outputs not confirmed off after {attempts} attempts)"
