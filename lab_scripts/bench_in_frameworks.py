#!/usr/bin/env python3
"""The whole bench in QCoDeS and in PyMeasure, from a bench TOML file.

QCoDeS: a Station from lab_scripts/bench_station.yaml holds the board
(pcm_hil_drivers.qcodes_board.PCMBoardQcodes), the SMU (Keithley2636B) and the pulse
generator (Keysight33522B), with the bench file's addresses; it reads a few cells through
the board, measures the first cell through the SMU, and snapshots the whole station.
PyMeasure: a Procedure holding PCMBoardPyMeasure, Keithley2600 and Agilent33500 does the
same, run by a Worker that writes a CSV. Every output is off at the end (checked).

    pcm-hil emulate --port 5025 --bench-file bench.toml &
    python lab_scripts/bench_in_frameworks.py --bench bench.toml --cells 4 --json
    python lab_scripts/bench_in_frameworks.py            # an emulated bench in this process
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STATION_YAML = Path(__file__).resolve().with_name("bench_station.yaml")


@contextlib.contextmanager
def _bench_file(path: str | None, seed: int) -> Iterator[str]:
    """``path``, or a bench file for an emulated bench served by this process while in use."""
    if path:
        yield path
        return
    from pcm_hil.chip import Geometry
    from pcm_hil.emulator.instruments import VirtualBench

    with VirtualBench(Geometry(1, 16, 16), seed=seed) as vb, tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "bench.toml"
        vb.bench_config().save(f)
        yield str(f)


def _n_params(snap: dict[str, Any]) -> tuple[int, list[str]]:
    """Parameters in an instrument snapshot (submodules included), and those without a value."""
    n, empty = 0, []
    stack = [("", snap)]
    while stack:
        prefix, s = stack.pop()
        for name, p in s.get("parameters", {}).items():
            n += 1
            if p.get("value") is None:
                empty.append(prefix + name)
        stack.extend((f"{prefix}{k}.", v) for k, v in s.get("submodules", {}).items())
    return n, sorted(empty)


# -- QCoDeS --------------------------------------------------------------------------------
def run_qcodes(cfg: Any, station_yaml: Path, cells: int, n_avg: int, bias_v: float) -> dict[str, Any]:
    """Load the station, read ``cells`` cells through the board, one SMU measurement, snapshot."""
    from qcodes import Station

    station = Station(config_file=str(station_yaml), default=False)
    out: dict[str, Any] = {}
    try:
        with contextlib.redirect_stdout(sys.stderr):  # drivers print "Connected to: ..."
            board = station.load_instrument("board", address=cfg.board.resource, timeout_s=cfg.board.timeout_s)
            smu = (station.load_instrument("smu", address=cfg.smu.resource, timeout=cfg.smu.timeout_s)
                   if cfg.smu else None)
            _pg = (station.load_instrument("pulse_generator", address=cfg.pulse_generator.resource,
                                           timeout=cfg.pulse_generator.timeout_s) if cfg.pulse_generator else None)
        board.n_avg(n_avg)
        out["board_reads_us"] = [float(g) for g in board.read_cells(list(range(cells)))]
        if smu is not None:
            ch = getattr(smu, f"smu{cfg.smu.channel}")
            board.select(0, 0, 0)
            board.route("SMU")
            ch.mode("voltage")
            ch.limiti(cfg.smu.compliance_a)
            ch.nplc(cfg.smu.nplc)
            ch.volt(bias_v)
            ch.output(True)
            i = ch.curr()
            ch.output(False)
            board.route("NONE")
            out["smu"] = {"cell": 0, "voltage_v": bias_v, "current_a": i, "g_us": i / bias_v * 1e6}
        snap = station.snapshot(update=True)
        out["instruments"] = {}
        for name, s in snap["instruments"].items():
            n, empty = _n_params(s)
            idn = s["parameters"]["IDN"]["value"] or {}
            out["instruments"][name] = {"type": s["__class__"], "model": idn.get("model"), "parameters": n,
                                        "without_value": empty}
    finally:
        out["outputs_off"] = _qcodes_outputs_off(station)
        station.close_all_registered_instruments()
    return out


def _qcodes_outputs_off(station: Any) -> dict[str, bool]:
    """Switch every output off, then read each back: instrument -> all off."""
    off: dict[str, bool] = {}
    comps = station.components
    if "board" in comps:
        comps["board"].safe_state()
        off["board"] = comps["board"].output() is False and comps["board"].route() == "NONE"
    if "smu" in comps:
        chans = (comps["smu"].smua, comps["smu"].smub)
        for ch in chans:
            ch.output(False)
        off["smu"] = all(ch.output() is False for ch in chans)
    if "pulse_generator" in comps:
        chans = (comps["pulse_generator"].ch1, comps["pulse_generator"].ch2)
        for ch in chans:
            ch.output("OFF")
        off["pulse_generator"] = all(ch.output() == "OFF" for ch in chans)
    return off


# -- PyMeasure -----------------------------------------------------------------------------
def bench_procedure() -> type:
    """The PyMeasure procedure class (defined on first use: PyMeasure is imported here only)."""
    from pymeasure.experiment import FloatParameter, IntegerParameter, Parameter, Procedure

    class BenchReadProcedure(Procedure):
        """Read ``cells`` cells through the board, then cell 0 through the SMU at ``bias_v``."""

        board_resource = Parameter("Board resource")
        board_timeout_s = FloatParameter("Board timeout", units="s", default=5.0)
        smu_resource = Parameter("SMU resource", default="")
        smu_channel = Parameter("SMU channel", default="a")
        smu_compliance_a = FloatParameter("SMU compliance", units="A", default=1e-4)
        pg_resource = Parameter("Pulse generator resource", default="")
        cells = IntegerParameter("Cells", minimum=1, maximum=1 << 16, default=4)
        n_avg = IntegerParameter("Reads averaged", minimum=1, maximum=1024, default=4)
        bias_v = FloatParameter("SMU read bias", units="V", minimum=0.01, maximum=1.0, default=0.2)

        DATA_COLUMNS = ("cell", "source", "g_us", "current_a")

        def startup(self) -> None:
            from pcm_hil_drivers.pymeasure_board import PCMBoardPyMeasure
            from pymeasure.instruments.agilent import Agilent33500
            from pymeasure.instruments.keithley import Keithley2600

            self.board = self.smu = self.pg = None
            self.outputs_off: dict[str, bool] = {}
            visa = {"visa_library": "@py", "read_termination": "\n", "write_termination": "\n"}
            self.board = PCMBoardPyMeasure(self.board_resource, timeout_s=self.board_timeout_s)
            with warnings.catch_warnings():  # PyMeasure: "not known whether this device supports SCPI"
                warnings.simplefilter("ignore", FutureWarning)
                if self.smu_resource:
                    self.smu = Keithley2600(self.smu_resource, timeout=int(self.board_timeout_s * 1000), **visa)
                if self.pg_resource:
                    self.pg = Agilent33500(self.pg_resource, timeout=int(self.board_timeout_s * 1000), **visa)

        def execute(self) -> None:
            self.board.n_avg = self.n_avg
            g = self.board.read_cells(list(range(self.cells)))
            for k, v in enumerate(g):
                self.emit("results", {"cell": k, "source": "board", "g_us": float(v), "current_a": math.nan})
                self.emit("progress", 100.0 * (k + 1) / (self.cells + 1))
            if self.smu is not None and not self.should_stop():
                ch = getattr(self.smu, f"Ch{self.smu_channel.upper()}")
                self.board.select(0, 0, 0)
                self.board.route = "SMU"
                ch.source_mode = "voltage"
                ch.compliance_current = self.smu_compliance_a
                ch.source_voltage = self.bias_v
                ch.source_output = "ON"
                i = ch.current
                ch.source_output = "OFF"
                self.board.route = "NONE"
                self.emit("results", {"cell": 0, "source": "smu", "g_us": i / self.bias_v * 1e6, "current_a": i})

        def shutdown(self) -> None:
            """Every output off and read back (``outputs_off``), connections closed; runs after errors too."""
            if self.smu is not None:
                for ch in (self.smu.ChA, self.smu.ChB):
                    ch.source_output = "OFF"
                self.outputs_off["smu"] = all(ch.source_output == "OFF" for ch in (self.smu.ChA, self.smu.ChB))
                self.smu.adapter.close()
            if self.pg is not None:
                for n in (1, 2):
                    self.pg.channels[n].output = False
                self.outputs_off["pulse_generator"] = not any(self.pg.channels[n].output for n in (1, 2))
                self.pg.adapter.close()
            if self.board is not None:
                self.board.board.safe_state()
                self.outputs_off["board"] = self.board.output_enabled is False and self.board.route == "NONE"
                self.board.shutdown()

    return BenchReadProcedure


def run_pymeasure(cfg: Any, data_file: Path, cells: int, n_avg: int, bias_v: float) -> dict[str, Any]:
    """Run the procedure with a PyMeasure Worker; the data file has every parameter in its header."""
    import pandas as pd
    from pymeasure.experiment import Procedure, Results, Worker

    proc = bench_procedure()()
    proc.board_resource = cfg.board.resource
    proc.board_timeout_s = cfg.board.timeout_s
    proc.smu_resource = cfg.smu.resource if cfg.smu else ""
    proc.smu_channel = cfg.smu.channel if cfg.smu else "a"
    proc.smu_compliance_a = cfg.smu.compliance_a if cfg.smu else 1e-4
    proc.pg_resource = cfg.pulse_generator.resource if cfg.pulse_generator else ""
    proc.cells, proc.n_avg, proc.bias_v = cells, n_avg, bias_v
    data_file.unlink(missing_ok=True)
    worker = Worker(Results(proc, str(data_file)))
    worker.start()
    worker.join(timeout=600)
    status = {Procedure.FINISHED: "finished", Procedure.FAILED: "failed", Procedure.ABORTED: "aborted"}.get(
        proc.status, str(proc.status))
    out: dict[str, Any] = {"status": status, "data_file": str(data_file),
                           "outputs_off": getattr(proc, "outputs_off", {})}
    if data_file.exists():
        df = pd.read_csv(data_file, comment="#")
        out["rows"] = len(df)
        out["board_reads_us"] = df.loc[df["source"] == "board", "g_us"].astype(float).tolist()
        smu = df[df["source"] == "smu"]
        if len(smu):
            out["smu"] = {"cell": 0, "voltage_v": bias_v, "current_a": float(smu["current_a"].iloc[0]),
                          "g_us": float(smu["g_us"].iloc[0])}
    return out


# -- main ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", metavar="FILE", help="bench TOML file (default: an emulated bench in this process)")
    p.add_argument("--station", metavar="YAML", default=str(STATION_YAML), help="QCoDeS station configuration")
    p.add_argument("--framework", choices=("qcodes", "pymeasure", "both"), default="both")
    p.add_argument("--cells", type=int, default=4, help="cells read through the board (from board index 0)")
    p.add_argument("--n-avg", type=int, default=4, help="reads averaged per cell (1 … 1024)")
    p.add_argument("--bias", type=float, default=0.2, help="SMU read bias (V)")
    p.add_argument("--out", default="bench_in_frameworks", help="PyMeasure data file prefix (.csv)")
    p.add_argument("--seed", type=int, default=0, help="chip seed of the in-process emulated bench")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = p.parse_args(argv)
    if not 1 <= args.n_avg <= 1024:
        p.error("--n-avg must be in [1, 1024]")
    if not 0.01 <= args.bias <= 1.0:
        p.error("--bias must be in [0.01, 1] V")

    from pcm_hil.bench.config import BenchConfig

    with _bench_file(args.bench, args.seed) as bench:
        try:
            cfg = BenchConfig.load(bench)
        except ValueError as exc:
            p.error(str(exc))
        if not 1 <= args.cells <= cfg.geometry.n_cells:
            p.error(f"--cells must be in [1, {cfg.geometry.n_cells}] (the chip's cells)")
        summary: dict[str, Any] = {"bench": {"board": cfg.board.resource,
                                             "smu": cfg.smu.resource if cfg.smu else None,
                                             "pulse_generator": cfg.pulse_generator.resource
                                             if cfg.pulse_generator else None}}
        if args.framework in ("qcodes", "both"):
            summary["qcodes"] = run_qcodes(cfg, Path(args.station), args.cells, args.n_avg, args.bias)
        if args.framework in ("pymeasure", "both"):
            summary["pymeasure"] = run_pymeasure(cfg, Path(args.out + ".csv"), args.cells, args.n_avg, args.bias)

    ok = all(all(part.get("outputs_off", {}).values()) and part.get("status", "finished") == "finished"
             for k, part in summary.items() if k != "bench")
    summary["ok"] = ok
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        _print(summary)
    return 0 if ok else 1


def _print(summary: dict[str, Any]) -> None:
    from pcm_hil.table import format_table

    if "qcodes" in summary:
        q = summary["qcodes"]
        print("QCoDeS station snapshot")
        print(format_table(["instrument", "type", "model", "parameters", "without value"],
                           [[n, i["type"].rsplit(".", 1)[-1], i["model"], i["parameters"], len(i["without_value"])]
                            for n, i in q.get("instruments", {}).items()]))
        print(f"board reads (µS): {', '.join(f'{g:.3f}' for g in q.get('board_reads_us', []))}")
        if "smu" in q:
            print(f"SMU: cell 0 at {q['smu']['voltage_v']:g} V: {q['smu']['current_a']:.4g} A "
                  f"({q['smu']['g_us']:.3f} µS)")
        print(f"outputs off: {q['outputs_off']}")
    if "pymeasure" in summary:
        m = summary["pymeasure"]
        print(f"PyMeasure procedure: {m['status']}, {m.get('rows', 0)} rows in {m['data_file']}")
        print(f"board reads (µS): {', '.join(f'{g:.3f}' for g in m.get('board_reads_us', []))}")
        if "smu" in m:
            print(f"SMU: cell 0: {m['smu']['current_a']:.4g} A ({m['smu']['g_us']:.3f} µS)")
        print(f"outputs off: {m['outputs_off']}")


if __name__ == "__main__":
    sys.exit(main())
