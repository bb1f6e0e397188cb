"""Bench safety on the virtual bench (real sockets, real drivers): the board's interlock follows
the controlling connection and its heartbeat, shutdown is retried and read back, faults on the
SMU and pulse-generator links are typed and recovered within a bound, a dead instrument ends
in GaveUp with every other output off, and the board's temperature controller."""
from __future__ import annotations

import socket
import time
from dataclasses import replace

import numpy as np
import pytest

from pcm_hil_drivers import board_protocol as bp
from pcm_hil_drivers.errors import ConnectionLost, InstrumentError, InstrumentTimeout, ProtocolError
from pcm_hil_drivers.keithley2600 import Keithley2600
from pcm_hil_drivers.keysight33500b import Keysight33500B
from pcm_hil_drivers.pcm_board import PCMBoard
from pcm_hil.bench.chip import BenchChip, GaveUp, RetryPolicy
from pcm_hil.chip import Geometry, PulseUncertain
from pcm_hil.emulator.instruments import VirtualBench
from pcm_hil.emulator.instruments.faults import LINE_TRANSIENT_CODE, FaultPlan

GEOM = Geometry(1, 16, 16)
T = 0.2  # instrument timeouts in these tests (s)


def _cfg(vb: VirtualBench, lease_s: float = 5.0):
    cfg = vb.bench_config()
    return replace(cfg, board=replace(cfg.board, timeout_s=T, lease_s=lease_s),
                   smu=replace(cfg.smu, timeout_s=T), pulse_generator=replace(cfg.pulse_generator, timeout_s=T))


def _until(cond, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return cond()


def _drop_connections(chip: BenchChip) -> None:
    """The controlling host dies: its connections close, nothing is switched off."""
    for inst in (chip.board, chip.smu, chip.pg):
        if inst is not None:
            inst.transport.close()


# -- the interlock follows the controlling connection ---------------------------------------
def test_an_idle_connection_does_not_keep_the_output_on_after_the_controller_died() -> None:
    with VirtualBench(GEOM, seed=1) as vb, PCMBoard.from_resource(vb.addresses["board"], timeout_s=2.0) as idle:
        assert idle.idn.startswith("PCMHIL")  # a second host, connected before the controller
        chip = BenchChip(_cfg(vb))
        assert vb.board.output
        _drop_connections(chip)
        assert _until(lambda: not vb.board.output), "the idle connection kept the output on"
        assert vb.board.interlock_trips == 1
        assert idle.idn.startswith("PCMHIL") and idle.output_enabled is False  # it is still connected


def test_the_output_turns_off_when_the_controllers_lease_lapses() -> None:
    """A controller that hangs with its connection open: the heartbeat lapses, the output turns
    off; the next pulse renews the lease, switches the output on again and goes out."""
    with VirtualBench(GEOM, seed=1) as vb, PCMBoard.from_resource(vb.addresses["board"], timeout_s=2.0) as idle:
        idle.idn
        with BenchChip(_cfg(vb, lease_s=0.3)) as chip:
            assert vb.board.output
            assert _until(lambda: not vb.board.output)  # silent past the lease: the interlock trips
            assert vb.board.interlock_trips == 1
            before = vb.chip.pulse_count[:4].copy()
            chip.pulse(np.arange(4), "RESET", 2.2, 50e-9)
            assert vb.board.output and np.all(vb.chip.pulse_count[:4] == before + 1)


class _RawHost:
    """A host that speaks the board's frames over a plain socket (third-party code: no driver,
    no lease unless it sends one)."""

    def __init__(self, address: str) -> None:
        host, port = address.removeprefix("socket://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=2.0)

    def ask(self, payload: bytes) -> bytes:
        self.sock.sendall(bp.encode_frame(payload))
        head = self._exactly(bp.HEADER_LEN)
        return bp.check_frame(self._exactly(bp.payload_length(head) + bp.TRAILER_LEN))

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "the board closed the connection"
            data += chunk
        return data


IDLE = 0.5  # the board's idle lease in these tests (s)


@pytest.mark.parametrize("then", ["silent", "released"])
def test_a_hung_controller_that_took_no_lease_loses_the_output_within_the_idle_lease(then: str) -> None:
    """A host switches the output on without a lease (or releases the one it took, as the
    QCoDeS and PyMeasure board drivers may), then hangs with its socket open, as does a second
    host that connected and said nothing: the output turns off within the idle lease."""
    with VirtualBench(GEOM, seed=1, idle_lease_s=IDLE) as vb:
        mute = _RawHost(vb.addresses["board"])  # connected, never sends a frame
        hung = _RawHost(vb.addresses["board"])
        assert hung.ask(b"CELL 0,0,0") == b"OK" and hung.ask(b"OUTP 1") == b"OK"
        if then == "released":
            assert hung.ask(b"SYST:LEASE 5") == b"OK" and hung.ask(b"SYST:LEASE 0") == b"OK"
        t0 = time.monotonic()
        assert vb.board.output
        assert _until(lambda: not vb.board.output, 3 * IDLE), "a hung controller kept the output on"
        assert IDLE - 0.05 < time.monotonic() - t0 < IDLE + 0.3 and vb.board.interlock_trips == 1
        assert hung.ask(b"OUTP?") == b"0"  # still connected: the interlock, not a dropped socket
        before = vb.chip.pulse_count.copy()
        assert hung.ask(b"PULS SET,1.0,1e-7").startswith(b"ERR 201")  # and nothing goes out
        assert np.array_equal(vb.chip.pulse_count, before)
        mute.sock.close()
        hung.sock.close()


def test_a_controller_without_a_lease_keeps_the_output_while_it_talks() -> None:
    """The idle lease is a heartbeat, not a time limit: any frame renews it."""
    with VirtualBench(GEOM, seed=1, idle_lease_s=IDLE) as vb:
        host = _RawHost(vb.addresses["board"])
        assert host.ask(b"OUTP 1") == b"OK"
        for _ in range(int(4 * IDLE / 0.1)):
            assert host.ask(b"*IDN?").startswith(b"PCMHIL") and vb.board.output
            time.sleep(0.1)
        assert vb.board.interlock_trips == 0
        host.sock.close()
    with pytest.raises(ValueError, match=r"idle_lease_s must be in \[0, 600\] s"):
        VirtualBench(GEOM, idle_lease_s=-1)


def test_bench_chip_renews_the_lease_during_a_long_wait() -> None:
    with VirtualBench(GEOM, seed=1) as vb:
        with BenchChip(_cfg(vb, lease_s=0.3)) as chip:
            chip.virtual_clock = False  # as on a real bench: a wait that takes real time
            chip.wait(1.2)
            assert vb.board.output and vb.board.interlock_trips == 0
        assert vb.board.interlock_trips == 0  # closed by command, not by the interlock


def test_a_new_connection_takes_the_lease_over() -> None:
    """A controller that reconnects (its old connection not yet closed on the board's side)
    takes control; the old connection closing then switches nothing off."""
    with VirtualBench(GEOM, seed=1) as vb:
        old = PCMBoard.from_resource(vb.addresses["board"], timeout_s=2.0)
        old.lease_s = 5.0
        old.output_enabled = True
        new = PCMBoard.from_resource(vb.addresses["board"], timeout_s=2.0)
        new.lease_s = 5.0
        assert old.lease_s == 0 and 4 < new.lease_s <= 5  # only the holder has time left
        old.transport.close()
        time.sleep(0.2)
        assert vb.board.output and vb.board.interlock_trips == 0
        new.transport.close()
        assert _until(lambda: not vb.board.output)


# -- shutdown is retried, each instrument even if another fails -----------------------------
def test_close_retries_turning_each_output_off() -> None:
    with VirtualBench(GEOM, seed=1, faults=FaultPlan(), smu_faults=FaultPlan(), pg_faults=FaultPlan()) as vb:
        chip = BenchChip(_cfg(vb))
        chip._smu_channel.output_enabled = True
        chip._pg_channel.output_enabled = True
        assert chip._smu_channel.output_enabled and chip._pg_channel.output_enabled  # the queries wait for the writes
        assert vb.smu.channels["a"].output and vb.pg.ch[1].output and vb.board.output
        # the first exchanges of the shutdown fail: the board refuses, the SMU loses two lines,
        # the pulse generator's connection drops
        vb.faults.plan = FaultPlan(rate=1.0, kinds=("error",), max_faults=1)
        vb.smu_faults.plan = FaultPlan(rate=1.0, kinds=("error",), max_faults=2)
        vb.pg_faults.plan = FaultPlan(rate=1.0, kinds=("drop",), max_faults=1)
        chip.close()
        assert not vb.smu.channels["a"].output and not vb.pg.ch[1].output
        assert not vb.board.output and vb.board.interlock_trips == 0  # switched off, not left to the interlock
        tries = [e["what"] for e in chip.fault_log]
        assert {"shutdown pg", "shutdown smu", "shutdown board"} <= set(tries)


def test_a_dead_smu_gives_up_bounded_and_every_other_output_is_off() -> None:
    with VirtualBench(GEOM, seed=1, smu_faults=FaultPlan()) as vb:
        chip = BenchChip(_cfg(vb), retry=RetryPolicy(attempts=3, backoff_s=0.01))
        chip._pg_channel.output_enabled = True
        assert chip._pg_channel.output_enabled
        vb.smu_faults.plan = FaultPlan(rate=1.0, kinds=("dead",))
        t0 = time.monotonic()
        with pytest.raises(GaveUp) as info:
            with chip:
                chip.read_smu([0, 1])
        assert time.monotonic() - t0 < 20
        assert "keithley2600" in " ".join(info.value.__notes__)  # the shutdown says what it could not do
        assert not vb.board.output and vb.board.interlock_trips == 0 and not vb.pg.ch[1].output
        assert vb.model.route == "NONE"


# -- faults on the SMU and pulse-generator links --------------------------------------------
LINE_TYPED = {
    "drop": (ConnectionLost, InstrumentTimeout),
    "delay": (InstrumentTimeout,),
    "corrupt": (ProtocolError,),
    "truncate": (InstrumentTimeout,),
    "error": (InstrumentTimeout,),  # not executed: no reply, the error is queued
    "silent": (InstrumentTimeout,),
    "corrupt_request": (InstrumentTimeout,),  # a mangled query is a syntax error: no reply
    "dead": (ConnectionLost, InstrumentTimeout),
}


@pytest.mark.parametrize("instrument", ["smu", "pulse_generator"])
@pytest.mark.parametrize("kind", sorted(LINE_TYPED))
def test_each_fault_on_an_instrument_link_is_a_typed_error(instrument: str, kind: str) -> None:
    plan = FaultPlan(rate=1.0, kinds=(kind,), delay_s=3 * T, silent_s=3 * T)
    key = "smu_faults" if instrument == "smu" else "pg_faults"
    with VirtualBench(GEOM, seed=1, **{key: plan}) as vb:
        cls = Keithley2600 if instrument == "smu" else Keysight33500B
        inst = cls.from_resource(vb.addresses[instrument], timeout_s=T)
        try:
            with pytest.raises(LINE_TYPED[kind]):
                if instrument == "smu":
                    inst.smua.source_voltage_v
                else:
                    inst.ch1.high_v
        finally:
            inst.transport.close()
        assert getattr(vb, key).counts[kind] == 1
        if kind == "error":
            emu = vb.smu if instrument == "smu" else vb.pg
            assert emu.errors.pop()[0] == LINE_TRANSIENT_CODE


def test_an_smu_read_in_compliance_is_refused_with_the_limit_named_and_the_output_off() -> None:
    with VirtualBench(GEOM, seed=1) as vb:
        cfg = _cfg(vb)
        with BenchChip(replace(cfg, smu=replace(cfg.smu, compliance_a=100e-9))) as chip:
            chip.pulse(np.arange(2), "SET", 1.4, 100e-9)  # ~10 µS at the read bias: microamps
            with pytest.raises(ValueError, match=r"cell 0: SMU in compliance at 1e-07 A"):
                chip.read_smu(np.arange(2))
            assert vb.smu.channels["a"].output == 0 and vb.model.route == "NONE"


def test_a_late_command_that_switches_the_smu_off_is_caught_by_the_reading(monkeypatch) -> None:
    """A command still in flight on a dropped connection can run after the output was read
    back on (the emulator's silent and delay faults do this). Here a second client switches
    the output off, over its own connection, just after cell 2 is routed: the reading proves
    the state it was taken in, so the open-circuit current is refused, the SMU set up again
    and every cell read right."""
    with VirtualBench(GEOM, seed=1) as vb, BenchChip(_cfg(vb)) as chip:
        cells = np.arange(6)
        chip.pulse(cells, "SET", 1.4, 100e-9)
        late = Keithley2600.from_resource(vb.addresses["smu"], timeout_s=2.0)
        route, fired = BenchChip._route, []

        def route_then_late_off(self, cell, port):
            route(self, cell, port)
            if port == "SMU" and cell == 2 and not fired:
                fired.append(cell)
                late.smua.output_enabled = False
                assert late.smua.output_enabled is False  # executed before the chip measures

        monkeypatch.setattr(BenchChip, "_route", route_then_late_off)
        try:
            g = chip.read_smu(cells)
        finally:
            late.transport.close()
        truth = vb.chip.true_conductance(cells)
        assert fired
        assert np.all(np.abs(g - truth) < 0.15 * truth + 0.3)
        assert any("measured with its output off" in e["detail"] for e in chip.fault_log)


@pytest.mark.parametrize("seed", [0, 1])
def test_smu_reads_and_external_pulses_recover_from_link_faults(seed: int) -> None:
    kinds = ("drop", "delay", "corrupt", "truncate", "error", "silent", "corrupt_request")
    plan = FaultPlan(rate=0.08, kinds=kinds, seed=seed, delay_s=2 * T, silent_s=2 * T)
    with VirtualBench(GEOM, seed=1, smu_faults=plan, pg_faults=replace(plan, seed=seed + 10)) as vb:
        with BenchChip(_cfg(vb), retry=RetryPolicy(attempts=6, backoff_s=0.01)) as chip:
            cells = np.arange(24)
            chip.pulse(cells, "SET", 1.4, 100e-9)
            chip.pulse(cells, "SET", 1.4, 100e-9)
            g = chip.read_smu(cells)
            truth = vb.chip.true_conductance(cells)
            assert np.all(np.abs(g - truth) < 0.15 * truth + 0.3)  # every value is a real measurement
            assert vb.smu.channels["a"].output == 0 and vb.model.route == "NONE"
            high = vb.chip.true_conductance(cells)
            try:
                chip.pulse_external(cells, "RESET", 2.2, 50e-9)
                doubt = np.empty(0, np.int64)
            except PulseUncertain as exc:
                doubt = exc.cells
            sure = np.setdiff1d(cells, doubt)
            assert sure.size >= cells.size - 4
            assert np.all(vb.chip.true_conductance(sure) < 0.5 * high[sure])  # each sure pulse went out
            assert not vb.pg.ch[1].output and vb.model.route == "NONE"
            assert len(chip.fault_log) >= 1
        injected = vb.smu_faults.injected + vb.pg_faults.injected
        assert injected >= 3
        assert not vb.board.output and vb.board.interlock_trips == 0


def test_corrupted_board_requests_are_refused_by_the_crc_and_retried() -> None:
    with VirtualBench(GEOM, seed=1, faults=FaultPlan(rate=0.1, kinds=("corrupt_request",), seed=3)) as vb:
        with BenchChip(_cfg(vb), retry=RetryPolicy(attempts=8, backoff_s=0.001)) as chip:
            g = chip.read(np.arange(32), n_avg=8)
            assert np.all(np.isfinite(g))
            assert any(e["error"] == "InstrumentError" and "102" in e["detail"] for e in chip.fault_log)
        assert vb.faults.counts["corrupt_request"] >= 1


# -- temperature controller -------------------------------------------------------------------
def test_the_board_sets_and_reads_the_chip_temperature() -> None:
    with VirtualBench(GEOM, seed=1) as vb, BenchChip(_cfg(vb)) as chip:
        t0 = chip.temperature_k()
        assert t0 == pytest.approx(vb.chip.temperature_k())
        chip.set_temperature_k(358.15)
        assert vb.chip.temperature_k() == pytest.approx(358.15)  # the emulated chip is at the set point
        assert chip.temperature_k() == pytest.approx(358.15) and chip.board.temperature_setpoint_k == 358.15
        with pytest.raises(ValueError, match=r"\[150, 700\] K"):
            chip.set_temperature_k(900)
        with pytest.raises(ValueError, match=r"temperature_setpoint_k: .*\[150, 700\]"):
            chip.board.temperature_setpoint_k = 90
        assert vb.chip.temperature_k() == pytest.approx(358.15)  # refused: nothing changed
        with pytest.raises(InstrumentError, match=r"-222.*accepted \[150, 700\]"):
            chip.board.write("SOUR:TEMP 800")  # the board checks its own range too
        assert vb.chip.temperature_k() == pytest.approx(358.15)
