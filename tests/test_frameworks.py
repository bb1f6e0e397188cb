"""The lab's frameworks, unmodified, against the emulated bench (`pcm-hil emulate`).

PyMeasure's ``Agilent33500`` and ``Keithley2600`` and QCoDeS's ``Keysight33522B`` and
``Keithley2636B`` connect, take a full snapshot with no empty parameter and no queued
error, round-trip every settable parameter, and switch the outputs on and off.
"""
from __future__ import annotations

import inspect
import itertools
import math
import time

import numpy as np
import pytest

from pcm_hil.chip import Geometry
from pcm_hil.emulator.instruments import VirtualBench

qcodes = pytest.importorskip("qcodes", reason="QCoDeS is not installed (pip install -e '.[test]')")
pymeasure = pytest.importorskip("pymeasure", reason="PyMeasure is not installed (pip install -e '.[test]')")

from pymeasure.instruments.agilent.agilent33500 import Agilent33500, Agilent33500Channel  # noqa: E402
from qcodes.instrument_drivers.Keysight import Keysight33522B  # noqa: E402

GEOM = Geometry(1, 8, 8)
_names = itertools.count()


@pytest.fixture
def vb():
    with VirtualBench(GEOM, seed=5) as bench:
        yield bench


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
    return a == b


def _qcodes(cls, vb, key: str):
    qcodes.Instrument.close_all()
    return cls(f"{cls.__name__.lower()}_{next(_names)}", vb.addresses[key], visalib="@py", timeout=2)


# -- the pulse generator -------------------------------------------------------------------
PG_QCODES_VALUES = {  # parameter -> value to round-trip (every settable parameter of a channel)
    "function_type": "PULS", "frequency_mode": "LIST", "frequency": 2.5e5, "phase": 45.0, "amplitude_unit": "VRMS",
    "amplitude": 0.3, "offset": 0.25, "output": "ON", "ramp_symmetry": 40.0, "pulse_width": 1e-6,
    "trigger_source": "BUS", "trigger_slope": "NEG", "trigger_count": 7, "trigger_delay": 2e-3,
    "trigger_timer": 0.5, "output_polarity": "INV", "burst_state": "ON", "burst_mode": "Gated",
    "burst_ncycles": 12, "burst_phase": -90.0, "burst_polarity": "INV", "burst_int_period": 0.25,
}


def test_qcodes_keysight33522b(vb) -> None:
    t0 = time.monotonic()
    pg = _qcodes(Keysight33522B, vb, "pulse_generator")
    try:
        assert pg.IDN()["model"] == "33522B"
        snap = pg.snapshot(update=True)
        elapsed = time.monotonic() - t0
        empty = [f"{sub}.{name}" for sub, s in snap["submodules"].items()
                 for name, p in s["parameters"].items() if p.get("value") is None]
        assert not empty, f"empty parameters: {empty}"
        assert elapsed < 5, f"connect + snapshot took {elapsed:.1f} s"
        assert pg.error() == (0, "No error")
        for ch in (pg.ch1, pg.ch2):
            settable = {n for n, p in ch.parameters.items() if p.settable}
            assert settable == set(PG_QCODES_VALUES), settable ^ set(PG_QCODES_VALUES)
            for name, value in PG_QCODES_VALUES.items():
                getattr(ch, name)(value)
                got = getattr(ch, name)()
                assert _same(got, value), (ch.name, name, value, got)
                assert pg.error() == (0, "No error"), (ch.name, name)
        for value in ("ON", "OFF"):
            pg.sync.output(value)
            assert pg.sync.output() == value
        pg.sync.source(2)
        assert pg.sync.source() == 2
        pg.ch1.output("OFF")
        assert pg.ch1.output() == "OFF" and not vb.pg.ch[1].output
        pg.ch1.output("ON")
        assert pg.ch1.output() == "ON" and vb.pg.ch[1].output  # the query orders it after the write
        pg.force_trigger()
        pg.sync_channel_phases()
        assert pg.error() == (0, "No error")
    finally:
        pg.close()


PG_PYMEASURE_VALUES = {
    "shape": "PULS", "frequency": 2e5, "amplitude": 0.4, "amplitude_unit": "VPP", "offset": 0.1,
    "voltage_high": 0.5, "voltage_low": -0.2, "phase": 30.0, "square_dutycycle": 20.0, "ramp_symmetry": 30.0,
    "pulse_period": 1e-5, "pulse_hold": "DCYC", "pulse_width": 2e-6, "pulse_dutycycle": 30.0,
    "pulse_transition": 50e-9, "output": True, "output_load": 1000.0, "burst_state": True, "burst_mode": "GAT",
    "burst_period": 0.5, "burst_ncycles": 9, "arb_file": None, "arb_advance": "TRIG", "arb_filter": "STEP",
    "arb_srate": 1e6,
}


def _pm_props(cls) -> set[str]:
    return {k for k in dir(cls) if isinstance(inspect.getattr_static(cls, k, None), property)
            and inspect.getattr_static(cls, k).fset is not None}


def test_pymeasure_agilent33500(vb) -> None:
    pg = Agilent33500(vb.addresses["pulse_generator"], visa_library="@py", read_termination="\n",
                      write_termination="\n", timeout=2000)
    try:
        assert "33522B" in pg.id
        assert _pm_props(Agilent33500Channel) == set(PG_PYMEASURE_VALUES)
        for ch in (pg.channels[1], pg.channels[2]):
            ch.data_volatile_clear()
            ch.data_arb("ramp", range(-100, 100, 10), data_format="DAC")
            for name, value in PG_PYMEASURE_VALUES.items():
                value = '"ramp"' if name == "arb_file" else value
                if name == "arb_file":
                    ch.arb_file = "ramp"
                else:
                    setattr(ch, name, value)
                got = getattr(ch, name)
                assert _same(got, value), (ch.id, name, value, got)
                assert pg.check_errors() == [], (ch.id, name)
        # the instrument-level (default channel) forms
        pg.shape = "PULS"
        pg.pulse_period = 1e-6
        pg.pulse_width = 200e-9
        pg.pulse_transition = 100e-9  # a slow-edge SET pulse
        assert pg.pulse_transition == pytest.approx(100e-9) and vb.pg.ch[1].trail_s == pytest.approx(100e-9)
        pg.trigger_source = "BUS"
        assert pg.trigger_source == "BUS"
        pg.ext_trig_out = True
        assert pg.ext_trig_out is True
        pg.display = "hello"
        assert pg.complete == "1" and vb.pg.display_text == "hello"
        pg.clear_display()
        pg.beep()
        pg.phase_sync()
        pg.output = True
        assert pg.output is True and vb.pg.ch[1].output
        pg.output = False
        assert pg.output is False and not vb.pg.ch[1].output
        pg.trigger()
        assert pg.check_errors() == []
    finally:
        pg.adapter.close()


def test_pg_couplings_and_limits(vb) -> None:
    pg = vb.pg

    def err() -> str:
        return pg.handle("SYST:ERR?")

    pg.handle("FUNC PULS;:FREQ 1e6")
    assert float(pg.handle("FUNC:PULS:PER?")) == pytest.approx(1e-6)  # frequency with period
    pg.handle("FUNC:PULS:WIDT 900e-9")
    pg.handle("FUNC:PULS:PER 500e-9")  # width held, adjusted to fit the shorter period
    assert float(pg.handle("FUNC:PULS:WIDT?")) <= 500e-9 - 16e-9
    pg.handle("FUNC:PULS:PER 1e-6;WIDT 100e-9;TRAN:TRA 1e-6")  # edge longer than the width allows
    assert err().startswith("-221")
    assert float(pg.handle("FUNC:PULS:TRAN:TRA?")) == pytest.approx(0.625 * 100e-9)
    pg.handle("VOLT 2;VOLT:OFFS 1")
    assert float(pg.handle("VOLT:HIGH?")) == pytest.approx(2.0) and float(pg.handle("VOLT:LOW?")) == pytest.approx(0)
    pg.handle("VOLT:OFFS 4.5")  # |offset| + amplitude/2 above 5 V into 50 Ω
    assert err().startswith("-221") and float(pg.handle("VOLT:OFFS?")) == pytest.approx(4.0)
    pg.handle("OUTP1:LOAD INF")  # displayed levels double; the generator did not change
    assert float(pg.handle("VOLT:HIGH?")) == pytest.approx(10.0)
    pg.handle("FREQ 99e6")
    assert err().startswith("-222") and float(pg.handle("FREQ?")) == 30e6
    assert pg.handle("FREQ? MAX") == "+3.000000000000000E+07"
    pg.handle("SOUR2:FUNC RAMP;:SOUR2:FREQ 1e6")  # ramps stop at 200 kHz
    assert err().startswith("-222") and float(pg.handle("SOUR2:FREQ?")) == 200e3
    assert float(pg.handle("SOUR1:FREQ?")) == 30e6  # channels are independent
    pg.handle("TRIG")  # continuous mode: ignored, reported
    assert err().startswith("-211")
    assert err() == '+0,"No error"'
    pg.handle("VOLT:LIM:HIGH 1;LOW -1")
    pg.handle("VOLT:LIM:STAT ON")  # levels outside the limits: refused
    assert err().startswith("-221") and pg.handle("VOLT:LIM:STAT?") == "0"
    pg.handle("FREQ 1 kHz;VOLT:UNIT DBM")  # dBm needs a finite load
    assert float(pg.handle("FREQ?")) == 1e3 and err().startswith("-221")


# -- the SMU ---------------------------------------------------------------------------------
SMU_QCODES_VALUES = {  # parameter -> value (every settable parameter of a channel)
    "mode": "current", "output": True, "nplc": 2.0, "four_wire_measurement": True,
    "sourcerange_v": 20.0, "source_autorange_v_enabled": True, "measurerange_v": 2.0,
    "measure_autorange_v_enabled": True, "sourcerange_i": 1e-3, "source_autorange_i_enabled": True,
    "measurerange_i": 1e-6, "measure_autorange_i_enabled": True, "limitv": 5.0, "limiti": 1e-3,
    "volt": 0.3, "curr": 1e-6,
}


def test_qcodes_keithley2636b(vb) -> None:
    from qcodes.instrument_drivers.Keithley import Keithley2636B

    t0 = time.monotonic()
    smu = _qcodes(Keithley2636B, vb, "smu")
    try:
        assert smu.model == "2636B"
        for reset in (False, True):
            if reset:
                smu.reset()
            snap = smu.snapshot(update=True)
            # the driver itself keeps measurements (volt, curr: snapshot_get=False) and its
            # sweep/trace helpers (no get command) out of the snapshot
            empty = [f"{sub}.{name}" for sub, s in snap["submodules"].items()
                     for name, p in s["parameters"].items()
                     if p.get("value") is None and getattr(smu.submodules[sub].parameters[name], "_snapshot_get", True)
                     and name not in ("fastsweep", "timetrace", "timetrace_npts", "timetrace_dt", "timetrace_mode",
                                      "time_axis")]
            assert not empty, f"empty parameters after {'reset' if reset else 'power-on'}: {empty}"
        elapsed = time.monotonic() - t0
        assert elapsed < 5, f"connect + snapshots took {elapsed:.1f} s"
        assert smu.ask("errorqueue.count") == "0.00000e+00"
        for ch in (smu.smua, smu.smub):
            settable = {n for n, p in ch.parameters.items() if p.settable and n not in (
                "fastsweep", "timetrace_npts", "timetrace_dt", "timetrace_mode")}
            assert settable == set(SMU_QCODES_VALUES), settable ^ set(SMU_QCODES_VALUES)
            for name, value in SMU_QCODES_VALUES.items():
                if name == "volt":
                    ch.mode("voltage")
                if name == "curr":
                    ch.mode("current")
                getattr(ch, name)(value)
                got = getattr(ch, name)()
                if name in ("volt", "curr"):  # set the source level, get a measurement (open circuit here)
                    assert isinstance(got, float)
                else:
                    assert _same(got, value), (ch.name, name, value, got)
                assert smu.ask("errorqueue.count") == "0.00000e+00", (name, smu.ask("errorqueue.next()"))
        smu.display_settext("pcm-hil")
        smu.display_normal()
        smu.display_clear()
        assert smu.ask("errorqueue.count") == "0.00000e+00"
        assert vb.smu.channels["a"].levelv == 0.3 and vb.smu.channels["a"].leveli == 1e-6
        smu.smua.output(False)
        assert smu.smua.output() is False and vb.smu.channels["a"].output == 0
    finally:
        smu.close()


def test_qcodes_keithley_compliance_status_and_buffered_scripts(vb) -> None:
    from qcodes.instrument_drivers.Keithley import Keithley2636B

    smu = _qcodes(Keithley2636B, vb, "smu")
    try:
        ch = smu.smua
        vb.model.selected, vb.model.route = (0, 0, 0), "SMU"
        ch.mode("voltage")
        ch.limiti(1e-8)
        ch.output("on")
        ch.volt(1.0)
        i = ch.curr()
        assert abs(i) == pytest.approx(1e-8) and ch.curr.measurement_status.name == "CURRENT_COMPLIANCE_ERROR"
        ch.limiti(1e-3)
        ch.curr()
        assert ch.curr.measurement_status.name == "NORMAL"
        # a buffered sweep: loadandrunscript, for loop, nvbuffer1, REAL32 printbuffer
        g = vb.chip.true_conductance([0])[0] * 1e-6
        from qcodes.dataset import LinSweep

        ch.setup_fastsweep(LinSweep(ch.volt, 0.0, 0.4, 5))
        data = np.asarray(ch.fastsweep())
        assert data.shape == (5,)
        assert g > 0 and data[0] == pytest.approx(0, abs=1e-9)  # I = V·G of the routed cell (read noise)
        assert np.polyfit(np.linspace(0, 0.4, 5), data, 1)[0] > 0
        # a time trace: measure.count and interval, then the virtual clock moved
        t0 = vb.chip.now()
        ch.timetrace_npts(20)
        ch.nplc(0.1)
        ch.timetrace_dt(0.01)
        ch.timetrace_mode("current")
        trace = np.asarray(ch.timetrace())
        assert trace.shape == (20,) and vb.chip.now() - t0 == pytest.approx(0.19, abs=0.01)
        assert smu.ask("errorqueue.count") == "0.00000e+00"
        ch.output("off")
    finally:
        vb.model.route = "NONE"
        smu.close()


def test_pymeasure_keithley2600(vb) -> None:
    from pymeasure.instruments.keithley import Keithley2600

    smu = Keithley2600(vb.addresses["smu"], visa_library="@py", read_termination="\n", write_termination="\n",
                       timeout=2000)
    try:
        values = {"source_output": "ON", "source_mode": "current", "measure_nplc": 25.0,  # PyMeasure maps nplc onto [0.001, 25]: only the ends read back "source_current": 1e-4,
                  "compliance_current": 1e-3, "source_current_range": 1e-3, "current_range": 1e-3,
                  "source_voltage": 0.5, "compliance_voltage": 3.0, "source_voltage_range": 2.0,
                  "voltage_range": 20.0, "wires_mode": "4"}
        for ch in (smu.ChA, smu.ChB):
            for name, value in values.items():
                if name == "source_voltage":
                    ch.source_mode = "voltage"
                setattr(ch, name, value)
                assert _same(getattr(ch, name), value), (ch.channel, name, value, getattr(ch, name))
                assert smu.next_error[0] == 0, name
            assert isinstance(ch.current, float) and isinstance(ch.voltage, float)
            ch.source_output = "OFF"
            assert ch.source_output == "OFF"
        assert vb.smu.channels["a"].output == 0 and vb.smu.channels["b"].output == 0
    finally:
        smu.adapter.close()


def test_protocol_doc_carries_the_generated_command_tables() -> None:
    from pathlib import Path

    from pcm_hil.emulator.instruments.tables import BEGIN, END, markdown

    text = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert BEGIN in text and END in text, "docs/protocol.md lacks the command tables"
    section = text[text.index(BEGIN):text.index(END) + len(END)]
    assert section == markdown(), "docs/protocol.md is stale: python -m pcm_hil.emulator.instruments.tables"
