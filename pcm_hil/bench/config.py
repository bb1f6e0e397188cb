"""The bench file: instruments, chip geometry, wiring, soft limits and read bias (TOML).

Example (``pcm-hil emulate --bench-file bench.toml`` writes one for the virtual bench)::

    [board]
    resource = "socket://127.0.0.1:5025"    # or "/dev/ttyUSB0"
    timeout_s = 5.0
    lease_s = 5.0                            # heartbeat: outputs off this long after the host goes silent
    confirm_reads = true                     # every read in two transactions, compared
    confirm_us = 1.0                         # how far two halves of an 8-read average may differ: 1 µS + 4 % of G
    confirm_rel = 0.04

    [smu]                                    # optional: precise reads
    resource = "TCPIP::127.0.0.1::5026::SOCKET"
    channel = "a"
    compliance_a = 1e-4
    confirm_reads = true                     # every cell read twice; a third read settles a disagreement
    confirm_us = 0.5                         # how far two reads of one cell may differ: 0.5 µS + 4 % of G
    confirm_rel = 0.04

    [pulse_generator]                        # optional: externally shaped pulses
    resource = "TCPIP::127.0.0.1::5027::SOCKET"
    channel = 1

    [chip]
    id = "wafer7-die12"                      # which chip is mounted: runs and noise models name it
    arrays = 4
    rows = 512
    cols = 512
    read_bias_v = 0.2
    pulse_compliance_a = 1e-3

    [wiring]
    arrays = [0, 1, 2, 3]                    # board array port of each chip array

    [limits]
    max_amplitude_v = 3.0
    max_width_s = 1e-5
    max_energy_j = 5e-9
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pcm_hil_drivers import keithley2600, keysight33500b, pcm_board

from ..chip import Geometry, SoftLimits


@dataclass(frozen=True)
class BoardConfig:
    resource: str
    timeout_s: float = 5.0
    max_batch: int = 1 << 18
    lease_s: float = 5.0  # the board's heartbeat lease: its output turns off this long after the host fell silent
    confirm_reads: bool = True  # read each batch in two transactions and compare (a board that measures wrong)
    confirm_us: float = 1.0  # two halves of an 8-read average farther apart than this on average ...
    confirm_rel: float = 0.04  # ... plus this fraction of the conductance read (read noise grows with G): re-read


@dataclass(frozen=True)
class SMUConfig:
    resource: str
    channel: str = "a"
    compliance_a: float = 1e-4
    nplc: float = 1.0
    timeout_s: float = 5.0
    confirm_reads: bool = True  # read each cell twice and compare (an SMU that measures wrong)
    confirm_us: float = 0.5     # two reads of one cell farther apart than this (µS) ...
    confirm_rel: float = 0.04   # ... plus this fraction of the conductance read: read again


@dataclass(frozen=True)
class PulseGeneratorConfig:
    resource: str
    channel: int = 1
    leading_edge_s: float = 8.4e-9
    set_trailing_edge_s: float = 100e-9
    reset_trailing_edge_s: float = 8.4e-9
    timeout_s: float = 5.0


@dataclass(frozen=True)
class ChipConfig:
    id: str = ""  # the mounted chip's name (wafer, die, package): what runs and noise models are tied to
    arrays: int = 4
    rows: int = 512
    cols: int = 512
    read_bias_v: float = 0.2
    pulse_compliance_a: float = 1e-3


@dataclass(frozen=True)
class BenchConfig:
    board: BoardConfig
    chip: ChipConfig = field(default_factory=ChipConfig)
    limits: SoftLimits = field(default_factory=SoftLimits)
    wiring_arrays: tuple[int, ...] = ()
    smu: SMUConfig | None = None
    pulse_generator: PulseGeneratorConfig | None = None

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.chip.arrays, self.chip.rows, self.chip.cols)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["wiring"] = {"arrays": list(d.pop("wiring_arrays"))}
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def load(cls, path: str | Path) -> "BenchConfig":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"cannot read bench file {path}: {exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"bench file {path} is not valid TOML: {exc}") from None
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"bench file {path}: {exc}") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BenchConfig":
        _only(data, {"board", "smu", "pulse_generator", "chip", "wiring", "limits"}, "top level")
        if "board" not in data:
            raise ValueError("[board] with a resource string is required")
        board = _section(BoardConfig, data["board"], "board")
        chip = _section(ChipConfig, data.get("chip", {}), "chip")
        limits = _section(SoftLimits, data.get("limits", {}), "limits")
        smu = _section(SMUConfig, data["smu"], "smu") if "smu" in data else None
        pg = _section(PulseGeneratorConfig, data["pulse_generator"], "pulse_generator") if "pulse_generator" in data else None
        wiring = data.get("wiring", {})
        _only(wiring, {"arrays"}, "[wiring]")
        arrays = tuple(wiring.get("arrays", range(chip.arrays)))
        cfg = cls(board, chip, limits, arrays, smu, pg)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Ranges, and soft limits inside what the instruments can do."""
        Geometry(self.chip.arrays, self.chip.rows, self.chip.cols)
        _range("board.timeout_s", self.board.timeout_s, 0.01, 3600)
        _range("board.max_batch", self.board.max_batch, 1, pcm_board.MAX_BULK_CELLS)
        _range("board.lease_s", self.board.lease_s, 0.05, pcm_board.LEASE_RANGE_S[1])
        _range("board.confirm_us", self.board.confirm_us, 0.01, 100.0)
        _range("board.confirm_rel", self.board.confirm_rel, 0.0, 1.0)
        _range("chip.read_bias_v", self.chip.read_bias_v, *pcm_board.READ_BIAS_RANGE_V)
        _range("chip.pulse_compliance_a", self.chip.pulse_compliance_a, *pcm_board.COMPLIANCE_RANGE_A)
        if self.chip.read_bias_v > self.limits.max_read_bias_v:
            raise ValueError(f"chip.read_bias_v {self.chip.read_bias_v} V exceeds limits.max_read_bias_v "
                             f"{self.limits.max_read_bias_v} V")
        hi_amp = pcm_board.AMPLITUDE_RANGE_V[1]
        if self.limits.max_amplitude_v > hi_amp:
            raise ValueError(f"limits.max_amplitude_v {self.limits.max_amplitude_v} V is above the board's range "
                             f"(at most {hi_amp} V)")
        if self.limits.max_width_s > pcm_board.WIDTH_RANGE_S[1]:
            raise ValueError(f"limits.max_width_s {self.limits.max_width_s} s is above the board's range "
                             f"(at most {pcm_board.WIDTH_RANGE_S[1]} s)")
        if len(self.wiring_arrays) != self.chip.arrays or len(set(self.wiring_arrays)) != len(self.wiring_arrays):
            raise ValueError(f"wiring.arrays must list {self.chip.arrays} distinct board array ports")
        if any(not isinstance(a, int) or a < 0 for a in self.wiring_arrays):
            raise ValueError("wiring.arrays must hold non-negative integers")
        if self.smu:
            if self.smu.channel not in ("a", "b"):
                raise ValueError(f"smu.channel must be 'a' or 'b', got {self.smu.channel!r}")
            _range("smu.compliance_a", self.smu.compliance_a, *keithley2600.CURRENT_LIMIT_RANGE_A)
            _range("smu.nplc", self.smu.nplc, *keithley2600.NPLC_RANGE)
            _range("smu.confirm_us", self.smu.confirm_us, 0.001, 100.0)
            _range("smu.confirm_rel", self.smu.confirm_rel, 0.0, 1.0)
        if self.pulse_generator:
            pg = self.pulse_generator
            if pg.channel not in (1, 2):
                raise ValueError(f"pulse_generator.channel must be 1 or 2, got {pg.channel!r}")
            for name in ("leading_edge_s", "set_trailing_edge_s", "reset_trailing_edge_s"):
                _range(f"pulse_generator.{name}", getattr(pg, name), *keysight33500b.EDGE_RANGE_S)
            if self.limits.max_amplitude_v > keysight33500b.LEVEL_RANGE_V[1]:
                raise ValueError("limits.max_amplitude_v is above the pulse generator's range")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(to_toml(self.to_dict()), encoding="utf-8")


def _only(data: dict[str, Any], allowed: set[str], where: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a table")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"unknown key(s) in {where}: {', '.join(unknown)} (accepted: {', '.join(sorted(allowed))})")


def _section(cls: type, data: Any, name: str) -> Any:
    _only(data, {f.name for f in fields(cls)}, f"[{name}]")
    for f in fields(cls):
        if f.name in data:
            v = data[f.name]
            want = f.type if isinstance(f.type, str) else f.type.__name__
            if "float" in want and not (isinstance(v, (int, float)) and not isinstance(v, bool)):
                raise ValueError(f"{name}.{f.name} must be a number, got {v!r}")
            if want == "int" and not (isinstance(v, int) and not isinstance(v, bool)):
                raise ValueError(f"{name}.{f.name} must be an integer, got {v!r}")
            if want == "bool" and not isinstance(v, bool):
                raise ValueError(f"{name}.{f.name} must be true or false, got {v!r}")
            if want == "str" and not isinstance(v, str):
                raise ValueError(f"{name}.{f.name} must be a string, got {v!r}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ValueError(f"[{name}]: {exc}") from None


def _range(name: str, value: float, lo: float, hi: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"{name} must be in [{lo:g}, {hi:g}], got {value!r}")


def to_toml(data: dict[str, Any]) -> str:
    """Minimal TOML writer for the bench file's tables of scalars and lists."""
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        for key, v in values.items():
            if isinstance(v, str):
                lines.append(f'{key} = "{v}"')
            elif isinstance(v, bool):
                lines.append(f"{key} = {'true' if v else 'false'}")
            elif isinstance(v, (list, tuple)):
                lines.append(f"{key} = [{', '.join(str(x) for x in v)}]")
            else:
                lines.append(f"{key} = {v!r}")
        lines.append("")
    return "\n".join(lines)
