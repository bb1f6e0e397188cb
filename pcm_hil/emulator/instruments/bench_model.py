"""State shared by the emulated instruments: the chip and the board's switch matrix."""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ...chip import Geometry, SoftLimits
from ..chip import EmulatedChip

# The emulated chip accepts whatever the board hardware can deliver; soft limits belong
# to the controller (BenchChip), which checks them before anything is sent.
HARDWARE_LIMITS = SoftLimits(max_amplitude_v=10.0, max_width_s=1.0, max_energy_j=1.0, max_read_bias_v=1.0)


class ErrorQueue:
    """An instrument error queue (oldest first, overflow reported as the last entry)."""

    def __init__(self, size: int = 32, overflow: tuple[int, str] = (-350, "Queue overflow")) -> None:
        self._q: deque[tuple[int, str]] = deque()
        self.size, self.overflow = size, overflow

    def push(self, code: int, message: str) -> None:
        if len(self._q) >= self.size - 1:
            if len(self._q) == self.size - 1:
                self._q.append(self.overflow)
            return
        self._q.append((code, message))

    def pop(self) -> tuple[int, str] | None:
        return self._q.popleft() if self._q else None

    def clear(self) -> None:
        self._q.clear()

    def __len__(self) -> int:
        return len(self._q)


@dataclass
class BenchModel:
    """One emulated chip behind a controller board, with routing to the SMU and pulse generator."""

    chip: EmulatedChip
    lock: threading.RLock = field(default_factory=threading.RLock)
    selected: tuple[int, int, int] | None = None
    route: str = "NONE"
    read_offset_us: float = 0.0  # fault injection: what the board adds to every conductance it measures
    offset_reads: int = 0  # fault injection: read replies that carried that offset

    @classmethod
    def create(cls, geometry: Geometry | None = None, profile: object = None, seed: int = 0) -> "BenchModel":
        return cls(EmulatedChip(geometry, profile=profile, seed=seed, limits=HARDWARE_LIMITS))

    def routed_cell(self, port: str) -> int | None:
        """Flat index of the cell connected to ``port`` (SMU or PG), or None."""
        if self.route != port or self.selected is None:
            return None
        return int(self.chip.geometry.index(*self.selected))

    def read_routed(self, port: str, n_avg: int) -> float | None:
        cell = self.routed_cell(port)
        if cell is None:
            return None
        return float(self.chip.read(np.array([cell]), n_avg=n_avg)[0])
