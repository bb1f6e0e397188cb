"""The virtual bench on loopback: real syntax, robustness, routing physics and safety."""
from __future__ import annotations

import os
import signal
import socket

import numpy as np
import pytest
import pyvisa

from pcm_hil_drivers import board_protocol as bp
from pcm_hil_drivers.errors import ConnectionLost
from pcm_hil_drivers.interrupt import deferred_sigint
from pcm_hil.bench.chip import BenchChip
from pcm_hil.bench.config import BenchConfig
from pcm_hil.chip import Geometry, SoftLimits
from pcm_hil.emulator.instruments import VirtualBench

GEOM = Geometry(1, 16, 16)


@pytest.fixture
def vb():
    with VirtualBench(GEOM, profile="pcm", seed=3) as bench:
        yield bench


@pytest.fixture
def rm():
    manager = pyvisa.ResourceManager("@py")
    yield manager


def _open(rm, address: str):
    return rm.open_resource(address, read_termination="\n", write_termination="\n", timeout=2000)


def test_third_party_tsp_code_runs_unchanged(vb, rm) -> None:
    """Plain pyvisa code written for a real 2636B, not our driver."""
    smu = _open(rm, vb.addresses["smu"])
    assert "Model 2636B" in smu.query("*IDN?")
    smu.write("reset()")
    smu.write("smua.source.func = smua.OUTPUT_DCVOLTS; smua.source.limiti = 1e-4")
    smu.write("smua.source.levelv = 0.2 smua.measure.nplc = 1")  # two statements, Lua style
    assert float(smu.query("print(smua.source.levelv)")) == pytest.approx(0.2)
    smu.write("smua.source.output = smua.OUTPUT_ON")
    i, v = (float(x) for x in smu.query("print(smua.measure.iv())").split("\t"))
    assert v == pytest.approx(0.2) and abs(i) < 1e-9  # no cell routed: open circuit
    smu.write("smua.source.output = smua.OUTPUT_OFF")
    assert smu.query("print(errorqueue.count)") == "0.00000e+00"
    smu.close()


def test_malformed_tsp_goes_to_the_error_queue(vb, rm) -> None:
    smu = _open(rm, vb.addresses["smu"])
    smu.write("smua.source.levelv = = 3")
    smu.write("smuz.source.levelv = 1")
    smu.write("smua.source.limiti = 5")
    smu.write("*FOO")
    codes = [int(float(smu.query("print(errorqueue.next())").split("\t")[0])) for _ in range(5)]
    assert codes == [-285, -286, -222, -113, 0]
    assert smu.query("*IDN?").startswith("Keithley")  # still serving
    smu.close()


def test_third_party_scpi_forms_and_errors(vb, rm) -> None:
    pg = _open(rm, vb.addresses["pulse_generator"])
    pg.write(":source1:function pulse;:SOURce1:FUNCtion:PULSe:WIDTh 2e-7")
    assert pg.query("FUNC?") == "PULS"
    assert float(pg.query("SOUR1:FUNC:PULS:WIDT?")) == pytest.approx(2e-7)
    pg.write("VOLT:HIGH 25")  # clipped to 5 V (into the default 50 Ω load), reported
    assert float(pg.query("SOUR1:VOLT:HIGH?")) == 5.0
    pg.write("SOUR1:BOGUS 1")
    assert pg.query("SYST:ERR?").startswith("-222")
    assert pg.query("SYSTem:ERRor?").startswith("-113")
    assert pg.query("SYST:ERR?") == '+0,"No error"'
    pg.close()


def _raw_board(vb) -> socket.socket:
    port = int(vb.addresses["board"].rsplit(":", 1)[1])
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s


def _reply(s: socket.socket) -> bytes:
    head = b""
    while len(head) < 9:
        head += s.recv(9 - len(head))
    n = bp.payload_length(head)
    rest = b""
    while len(rest) < n + 9:
        rest += s.recv(n + 9 - len(rest))
    return bp.check_frame(rest)


def test_board_survives_garbage_corruption_and_truncation() -> None:
    with VirtualBench(GEOM, seed=3, frame_timeout_s=0.2) as vb:
        _board_robustness(vb)


def _board_robustness(vb) -> None:
    s = _raw_board(vb)
    s.sendall(b"hello there\n")
    assert _reply(s).startswith(b"ERR 101")
    frame = bytearray(bp.encode_frame(b"*IDN?"))
    frame[10] ^= 0x20
    s.sendall(bytes(frame))
    assert _reply(s).startswith(b"ERR 102")
    s.sendall(bp.encode_frame(b"CHIP:GEOM?")[:12])  # truncated, then silence
    assert _reply(s).startswith(b"ERR 103")
    s.sendall(bp.encode_frame(b"NO:SUCH:CMD"))
    assert _reply(s).startswith(b"ERR -113")
    s.sendall(bp.encode_frame(b"*IDN?"))
    assert _reply(s).startswith(b"PCMHIL")
    s.close()


def test_virtual_bench_binds_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        VirtualBench(GEOM, host="0.0.0.0")


def test_pulse_generator_load_setting_doubles_delivered_voltage(vb) -> None:
    """1.1 V RESET-shaped pulses cannot melt (v_melt 1.8 V) unless the PG is left at 50 Ω."""
    with BenchChip(vb.bench_config()) as chip:
        cells = np.arange(8)
        chip.pulse(cells, "SET", 1.4, 100e-9)
        chip.pulse(cells, "SET", 1.4, 100e-9)
        high = vb.chip.true_conductance(cells)
        chip.pulse_external(cells[:4], "RESET", 1.1, 100e-9)  # driver sets OUTP:LOAD INF
        assert np.all(vb.chip.true_conductance(cells[:4]) >= high[:4])
        # third-party code forgets the load: the same setting now delivers 2.2 V and melts
        vb.pg.handle("OUTP1:LOAD 50;:SOUR1:VOLT:HIGH 1.1")  # levels as set for the default 50 Ω
        assert vb.pg.handle("SOUR1:VOLT:HIGH?;LOW?") == "+1.100000000000000E+00;+0.000000000000000E+00"
        for cell in cells[4:]:
            vb.model.selected, vb.model.route = (0, 0, int(cell)), "PG"
            vb.pg.handle("OUTP1 1")
            vb.pg.handle("*TRG")
        vb.model.route = "NONE"
        assert np.all(vb.chip.true_conductance(cells[4:]) < 0.5)


def test_outputs_off_after_an_error_inside_the_session(vb) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with BenchChip(vb.bench_config()) as chip:
            chip._smu_channel.output_enabled = True
            vb.model.selected, vb.model.route = (0, 0, 0), "SMU"
            raise RuntimeError("boom")
    assert vb.board.output is False and vb.model.route == "NONE"
    assert vb.smu.channels["a"].output == 0 and not vb.pg.ch[1].output


def test_soft_limits_checked_before_anything_is_sent(vb) -> None:
    with BenchChip(vb.bench_config(limits=SoftLimits(max_amplitude_v=2.0))) as chip:
        before = vb.chip.true_conductance()
        fired = vb.pg.pulses_fired
        with pytest.raises(ValueError, match="max_amplitude_v"):
            chip.pulse([0, 1], "RESET", 2.2, 50e-9)
        with pytest.raises(ValueError, match="max_amplitude_v"):
            chip.pulse_external([0], "RESET", 2.2, 50e-9)
        assert np.array_equal(vb.chip.true_conductance(), before) and vb.pg.pulses_fired == fired


def test_smu_reads_agree_with_board_reads(vb) -> None:
    with BenchChip(vb.bench_config()) as chip:
        cells = np.arange(20)
        chip.pulse(cells, "RESET", 2.2, 50e-9)
        chip.pulse(cells, "SET", 1.2, 100e-9)
        g_true = vb.chip.true_conductance(cells)
        g_smu = chip.read_smu(cells)
        assert np.all(np.abs(g_smu - g_true) < 0.15 * g_true + 0.2)
        assert vb.smu.channels["a"].output == 0 and vb.model.route == "NONE"


def test_ctrl_c_waits_for_the_exchange_in_flight() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_sigint():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("exchange finished")
    assert done == ["exchange finished"]


def test_bench_file_round_trip_and_bad_files(vb, tmp_path) -> None:
    path = tmp_path / "bench.toml"
    vb.bench_config().save(path)
    cfg = BenchConfig.load(path)
    assert cfg.geometry == GEOM and cfg.board.resource == vb.addresses["board"]
    with BenchChip.from_file(path) as chip:
        assert chip.identity()["virtual_clock"] is True
    text = path.read_text()
    cases = [
        (text.replace("[limits]", "[limits]\nmax_amplitude_v = 7.0", 1).replace("max_amplitude_v = 3.0\n", ""),
         "above the board's range"),
        (text + "\n[extra]\nx = 1\n", "unknown key"),
        (text.replace("timeout_s = 5.0", "timeout_s = 'slow'", 1), "must be a number"),
        ("[board\n", "not valid TOML"),
        ("[chip]\narrays = 1\n", r"\[board\] with a resource"),
        (text.replace("read_bias_v = 0.2", "read_bias_v = 0.5"), "exceeds limits.max_read_bias_v"),
    ]
    for content, match in cases:
        path.write_text(content)
        with pytest.raises(ValueError, match=match):
            BenchConfig.load(path)


def test_unreachable_resource_is_a_clear_error(tmp_path) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    cfg = BenchConfig.from_dict({"board": {"resource": f"socket://127.0.0.1:{port}", "timeout_s": 1.0}})
    with pytest.raises(ConnectionLost, match="cannot open serial resource"):
        BenchChip(cfg)
