"""The virtual bench: emulated board, SMU and pulse generator on loopback, one shared chip."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ...bench.config import BenchConfig, BoardConfig, ChipConfig, PulseGeneratorConfig, SMUConfig
from ...chip import Geometry, SoftLimits
from .bench_model import BenchModel
from .faults import FaultInjector, FaultPlan
from .board import IDLE_LEASE_S, BoardEmulator
from .keithley2600 import Keithley2600Emulator
from .keysight33500b import Keysight33500BEmulator
from .server import FrameHandler, LineHandler, ServerThread


class VirtualBench:
    """Serve the emulated instruments on 127.0.0.1 (or ``host="::1"``, IPv6 loopback).

    ``ports``: (board, smu, pulse generator); 0 picks a free port. A board frame that
    stops arriving midway is discarded after ``frame_timeout_s``. ``faults`` injects
    seeded faults into board transactions, ``smu_faults`` and ``pg_faults`` into the SMU's and
    the pulse generator's lines (see :mod:`.faults`); ``self.faults``, ``self.smu_faults`` and
    ``self.pg_faults`` count them (None where no plan was given). ``idle_lease_s``: how long
    the board keeps its output on for a controller that took no lease after its last frame
    (:data:`~.board.IDLE_LEASE_S`; a board setting, 0 for none). Use as a context manager,
    or call :meth:`close`.
    """

    def __init__(self, geometry: Geometry | None = None, profile: Any = None, seed: int = 0,
                 host: str = "127.0.0.1", ports: tuple[int, int, int] = (0, 0, 0),
                 frame_timeout_s: float = 2.0, faults: FaultPlan | None = None,
                 smu_faults: FaultPlan | None = None, pg_faults: FaultPlan | None = None,
                 idle_lease_s: float = IDLE_LEASE_S) -> None:
        self.model = BenchModel.create(geometry, profile=profile, seed=seed)
        self.board = BoardEmulator(self.model, idle_lease_s=idle_lease_s)
        self.smu = Keithley2600Emulator(self.model, seed=seed)
        self.pg = Keysight33500BEmulator(self.model)
        self.faults = FaultInjector(faults) if faults is not None else None
        self.smu_faults = FaultInjector(smu_faults) if smu_faults is not None else None
        self.pg_faults = FaultInjector(pg_faults) if pg_faults is not None else None
        self._servers: list[ServerThread] = []
        try:
            for emu, handler, port, inj in ((self.board, FrameHandler, ports[0], self.faults),
                                            (self.smu, LineHandler, ports[1], self.smu_faults),
                                            (self.pg, LineHandler, ports[2], self.pg_faults)):
                self._servers.append(ServerThread(emu, handler, host, port, frame_timeout_s, inj))
        except BaseException:
            self.close()
            raise

    @property
    def chip(self):  # noqa: ANN201 - the emulated chip behind the instruments (ground truth)
        return self.model.chip

    @property
    def addresses(self) -> dict[str, str]:
        b, s, p = self._servers

        def h(host: str) -> str:  # IPv6 literals in brackets (URL style)
            return f"[{host}]" if ":" in host else host

        return {
            "board": f"socket://{h(b.host)}:{b.port}",
            "smu": f"TCPIP::{h(s.host)}::{s.port}::SOCKET",
            "pulse_generator": f"TCPIP::{h(p.host)}::{p.port}::SOCKET",
        }

    def bench_config(self, limits: SoftLimits | None = None, **chip: Any) -> BenchConfig:
        """A bench configuration that reaches these servers (geometry of the emulated chip)."""
        g = self.chip.geometry
        a = self.addresses
        cfg = BenchConfig(
            board=BoardConfig(a["board"]),
            chip=ChipConfig(arrays=g.arrays, rows=g.rows, cols=g.cols, **chip),
            limits=limits or SoftLimits(),
            wiring_arrays=tuple(range(g.arrays)),
            smu=SMUConfig(a["smu"]),
            pulse_generator=PulseGeneratorConfig(a["pulse_generator"]),
        )
        cfg.validate()
        return cfg

    def write_ready_file(self, path: str | Path) -> None:
        """Addresses as JSON, written atomically once the servers accept connections."""
        path = Path(path)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.addresses) + "\n", encoding="utf-8")
        tmp.replace(path)

    def close(self) -> None:
        while self._servers:
            self._servers.pop().close()

    def __enter__(self) -> "VirtualBench":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
