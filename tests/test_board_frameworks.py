"""The controller board in QCoDeS and PyMeasure, the whole bench as a QCoDeS station, and
the lab script that holds it in both frameworks: against a VirtualBench on loopback.

Output-off checks keep a second host connection open and check that the board's interlock
never tripped (``interlock_trips``): it switches the output off by itself when the
controlling connection (or the last one) closes, which would hide a close() that leaves it on.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from pcm_hil_drivers.pcm_board import PCMBoard
from pcm_hil_drivers.testing import expected_protocol

from pcm_hil.chip import Geometry
from pcm_hil.emulator.instruments import VirtualBench

from .protocol import framed

qcodes = pytest.importorskip("qcodes", reason="QCoDeS is not installed (pip install -e '.[test]')")
pytest.importorskip("pymeasure", reason="PyMeasure is not installed (pip install -e '.[test]')")

from pcm_hil_drivers.pymeasure_board import PCMBoardPyMeasure
from pcm_hil_drivers.qcodes_board import PCMBoardQcodes

ROOT = Path(__file__).resolve().parents[1]
GEOM = Geometry(2, 8, 16)
_names = itertools.count()


@pytest.fixture
def vb():
    with VirtualBench(GEOM, seed=3) as bench:
        yield bench


@pytest.fixture
def other(vb):
    """A second host connection: keeps the interlock from turning the output off on close."""
    with PCMBoard.from_resource(vb.addresses["board"], timeout_s=2.0) as board:
        yield board


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-6)
    return a == b


def _board_state(vb) -> dict:
    return {"output": vb.board.output, "route": vb.model.route, "selected": vb.model.selected}


# -- QCoDeS --------------------------------------------------------------------------------
QC_VALUES = {  # every settable parameter -> two values to round-trip (both differ from power-on)
    "output": (True, False), "compliance": (2.5e-4, 7e-3), "read_bias": (0.15, 0.9), "route": ("SMU", "PG"),
    "selected_cell": ((1, 7, 15), (0, 2, 3)), "n_avg": (16, 1024), "timeout": (1.5, 3.0),
}
QC_BAD = {"output": 2, "compliance": 0.02, "read_bias": 0.0, "route": "DMM", "selected_cell": (2, 0, 0),
          "n_avg": 0, "timeout": 0.0}


def _qcodes_board(vb) -> PCMBoardQcodes:
    return PCMBoardQcodes(f"board_{next(_names)}", vb.addresses["board"], timeout_s=2.0)


def test_qcodes_board_snapshot_and_round_trips(vb, other) -> None:
    board = _qcodes_board(vb)
    try:
        assert board.IDN()["model"] == "PCM-BOARD-EMU"
        snap = board.snapshot(update=True)
        empty = [n for n, p in snap["parameters"].items() if p.get("value") is None]
        assert not empty, f"empty parameters: {empty}"
        assert snap["parameters"]["geometry"]["value"] == (2, 8, 16)
        assert snap["parameters"]["compliance"]["unit"] == "A" and snap["parameters"]["read_bias"]["unit"] == "V"
        assert "conductance" not in snap["parameters"]  # a measurement, not a setting
        assert board.next_error() == (0, "No error")
        settable = {n for n, p in board.parameters.items() if p.settable}
        assert settable == set(QC_VALUES), settable ^ set(QC_VALUES)
        for name, values in QC_VALUES.items():
            if name == "route":
                board.selected_cell((0, 1, 1))  # routing needs a selected cell
            for value in values:
                getattr(board, name)(value)
                got = getattr(board, name).get()
                assert _same(got, value), (name, value, got)
            assert board.next_error() == (0, "No error"), name
        assert vb.model.selected == (0, 2, 3) and vb.model.route == "PG"
        assert vb.board.compliance_a == pytest.approx(7e-3) and vb.board.read_bias_v == pytest.approx(0.9)
        # strict validation: refused before anything is sent
        before = (_board_state(vb), board.compliance(), board.n_avg())
        for name, value in QC_BAD.items():
            with pytest.raises(ValueError):
                getattr(board, name)(value)
        assert (_board_state(vb), board.compliance(), board.n_avg()) == before
        # output on and off, checked against the emulator after a query orders it
        for value in (True, False, True):
            board.output(value)
            assert board.output() is value and vb.board.output is value
        # actions
        board.select(1, 2, 3)
        board.pulse("SET", 1.0, 200e-9)
        board.n_avg(8)
        assert isinstance(board.conductance(), float)
        g = board.read_cells([0, 1, 2])
        assert g.shape == (3,)
        with pytest.raises(ValueError):
            board.pulse("SET", 6.0, 200e-9)
        board.reset()
        assert board.selected_cell() == () and board.output() is False
        board.output(True)
        board.selected_cell((0, 0, 0))
        board.route("SMU")
    finally:
        board.close()
    assert other.output_enabled is False and other.route == "NONE"
    assert vb.board.output is False and vb.model.route == "NONE" and vb.board.interlock_trips == 0
    assert board.name not in qcodes.Instrument._all_instruments
    board.close()  # idempotent


def test_qcodes_board_snapshot_after_reset_has_no_empty_parameter(vb) -> None:
    board = _qcodes_board(vb)
    try:
        board.selected_cell((0, 1, 2))
        board.reset()
        params = board.snapshot(update=True)["parameters"]
        assert params["selected_cell"]["value"] == () and all(p["value"] is not None for p in params.values())
    finally:
        board.close()


# -- PyMeasure -----------------------------------------------------------------------------
PM_VALUES = {  # every settable property -> two values to round-trip
    "output_enabled": (True, False), "compliance": (2.5e-4, 7e-3), "read_bias": (0.15, 0.9),
    "route": ("SMU", "PG"), "selected_cell": ((1, 7, 15), (0, 2, 3)), "n_avg": (16, 1024),
    "timeout_s": (1.5, 3.0),
}
PM_BAD = {"output_enabled": 2, "compliance": 0.02, "read_bias": 0.0, "route": "DMM", "selected_cell": (0, 8, 0),
          "n_avg": 0, "timeout_s": 0.0}
PM_READ = {"id", "clock", "geometry", "conductance", "next_error"}


def _settable(cls) -> set[str]:
    import inspect

    out = set()
    for k in dir(cls):
        attr = inspect.getattr_static(cls, k, None)
        if not isinstance(attr, property) or attr.fset is None:
            continue
        params = inspect.signature(attr.fset).parameters  # PyMeasure's measurements have an fset that refuses
        if "set_command" in params and params["set_command"].default is None:
            continue
        out.add(k)
    return out


def test_pymeasure_board_properties_round_trip(vb, other) -> None:
    board = PCMBoardPyMeasure(vb.addresses["board"], timeout_s=2.0)
    try:
        assert board.id.split(",")[1] == "PCM-BOARD-EMU"
        assert board.geometry == (2, 8, 16) and isinstance(board.clock, float)
        settable = _settable(PCMBoardPyMeasure) - {"complete", "status", "options"}
        assert settable == set(PM_VALUES), settable ^ set(PM_VALUES)
        # power-on state readable, nothing empty
        state = {name: getattr(board, name) for name in [*PM_VALUES, *PM_READ - {"conductance"}]}
        assert all(v is not None for v in state.values()), state
        assert state["selected_cell"] == () and state["next_error"] == (0, "No error")
        for name, values in PM_VALUES.items():
            if name == "route":
                board.selected_cell = (0, 1, 1)
            for value in values:
                setattr(board, name, value)
                got = getattr(board, name)
                assert _same(got, value), (name, value, got)
            assert board.check_errors() == [], name
        assert vb.model.selected == (0, 2, 3) and vb.model.route == "PG"
        before = (_board_state(vb), board.compliance, board.n_avg)
        for name, value in PM_BAD.items():
            with pytest.raises(ValueError):
                setattr(board, name, value)
        assert (_board_state(vb), board.compliance, board.n_avg) == before
        for value in (True, False, True):
            board.output_enabled = value
            assert board.output_enabled is value and vb.board.output is value
        board.select(1, 2, 3)
        board.pulse("RESET", 3.0, 50e-9)
        assert isinstance(board.conductance, float) and board.read_cells([5, 6]).shape == (2,)
        board.reset()
        assert board.selected_cell == () and board.output_enabled is False
        # an error reply raises at once (a pulse with the output off) and leaves no stale reply
        from pcm_hil_drivers.errors import InstrumentError

        board.select(0, 0, 0)
        with pytest.raises(InstrumentError, match="201"):
            board.pulse("SET", 1.0, 100e-9)
        board.clear()
        assert board.compliance == pytest.approx(1e-3)
        board.output_enabled = True
        board.route = "PG"
    finally:
        board.shutdown()
    assert other.output_enabled is False and other.route == "NONE"
    assert vb.board.output is False and vb.model.route == "NONE" and vb.board.interlock_trips == 0
    board.shutdown()  # idempotent


def test_pymeasure_board_context_manager_leaves_output_off(vb, other) -> None:
    with PCMBoardPyMeasure(PCMBoard.from_resource(vb.addresses["board"], timeout_s=2.0)) as board:
        board.output_enabled = True
        assert vb.board.output is True
    assert vb.board.output is False and other.output_enabled is False and vb.board.interlock_trips == 0


def test_selected_cell_query_protocol() -> None:
    with expected_protocol(PCMBoard, framed([(b"CELL?", b"1,2,3"), (b"CELL?", b"NONE")])) as board:
        assert board.selected_cell == (1, 2, 3)
        assert board.selected_cell is None


def test_drivers_import_without_the_frameworks() -> None:
    code = ("import sys; sys.modules['qcodes'] = None; sys.modules['pymeasure'] = None\n"
            "import pcm_hil_drivers, pcm_hil_drivers.pcm_board, pcm_hil_drivers.keithley2600, "
            "pcm_hil_drivers.keysight33500b, pcm_hil_drivers.testing\n"
            "assert not any(m == 'pcm_hil' or m.startswith('pcm_hil.') for m in sys.modules), 'pcm_hil imported'\n"
            "try:\n    import pcm_hil_drivers.qcodes_board\nexcept ImportError:\n    pass\n"
            "else:\n    raise SystemExit('qcodes_board imported without qcodes')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr


# -- the station ---------------------------------------------------------------------------
def test_station_yaml_holds_the_whole_bench(vb, capsys) -> None:
    from qcodes import Station

    qcodes.Instrument.close_all()
    station = Station(config_file=str(ROOT / "lab_scripts" / "bench_station.yaml"), default=False)
    try:
        addr = vb.addresses
        board = station.load_instrument("board", address=addr["board"], timeout_s=2.0)
        smu = station.load_instrument("smu", address=addr["smu"], timeout=2)
        pg = station.load_instrument("pulse_generator", address=addr["pulse_generator"], timeout=2)
        assert set(station.components) == {"board", "smu", "pulse_generator"}
        assert isinstance(board, PCMBoardQcodes) and board.n_avg() == 4  # from the YAML
        snap = station.snapshot(update=True)["instruments"]
        assert {n: s["parameters"]["IDN"]["value"]["model"] for n, s in snap.items()} == {
            "board": "PCM-BOARD-EMU", "smu": "2636B", "pulse_generator": "33522B"}
        assert all(p["value"] is not None for p in snap["board"]["parameters"].values())
        assert snap["pulse_generator"]["submodules"]["ch1"]["parameters"]["output"]["value"] == "OFF"
        assert snap["smu"]["submodules"]["smua"]["parameters"]["output"]["value"] is False
        assert board.next_error() == (0, "No error") and pg.error() == (0, "No error")
        assert smu.ask("errorqueue.count") == "0.00000e+00"
    finally:
        station.close_all_registered_instruments()
    assert not qcodes.Instrument._all_instruments


# -- the lab script ------------------------------------------------------------------------
def _script():
    spec = importlib.util.spec_from_file_location("lab_bench_in_frameworks", ROOT / "lab_scripts" /
                                                  "bench_in_frameworks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lab_script_runs_the_bench_in_both_frameworks(vb, tmp_path, capsys) -> None:
    bench = tmp_path / "bench.toml"
    vb.bench_config().save(bench)
    with PCMBoard.from_resource(vb.addresses["board"], timeout_s=2.0) as board:  # cell 0 SET: well above read noise
        board.select(0, 0, 0)
        board.output_enabled = True
        for _ in range(5):
            board.pulse("SET", 1.0, 1e-6)
    vb.board.output = True  # the script must leave everything off, whatever it found
    out = tmp_path / "pm"
    assert _script().main(["--bench", str(bench), "--cells", "5", "--json", "--out", str(out)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ok"] is True
    q, m = r["qcodes"], r["pymeasure"]
    assert {n: i["model"] for n, i in q["instruments"].items()} == {
        "board": "PCM-BOARD-EMU", "smu": "2636B", "pulse_generator": "33522B"}
    assert q["instruments"]["board"]["without_value"] == [] and q["instruments"]["pulse_generator"][
        "without_value"] == []
    assert len(q["board_reads_us"]) == 5 and len(m["board_reads_us"]) == 5
    g0 = vb.chip.true_conductance([0])[0]
    for part in (q, m):  # cell 0 through the SMU: I = V·G (read noise)
        assert g0 > 10 and part["smu"]["g_us"] == pytest.approx(g0, rel=0.1)
        assert part["outputs_off"] == {"board": True, "smu": True, "pulse_generator": True}
    assert m["status"] == "finished" and m["rows"] == 6
    header = out.with_suffix(".csv").read_text().split("#Data:")[0]
    assert "Cells: 5" in header and "SMU read bias: 0.2 V" in header
    assert vb.board.output is False and vb.model.route == "NONE" and vb.board.interlock_trips == 0
    assert all(ch.output == 0 for ch in vb.smu.channels.values())
    assert not any(vb.pg.ch[n].output for n in (1, 2))
    assert not qcodes.Instrument._all_instruments


def test_lab_script_text_and_own_bench(tmp_path, capsys) -> None:
    assert _script().main(["--framework", "qcodes", "--cells", "2"]) == 0
    text = capsys.readouterr().out
    assert "QCoDeS station snapshot" in text and "PCM-BOARD-EMU" in text and "PyMeasure" not in text
