"""Seeded fault injection for the virtual bench: board transactions, SMU and pulse-generator lines.

Each board transaction (each SMU or pulse-generator line) draws a fault with probability
``rate``, at most ``max_faults`` in all when that is set. Kinds (on the board link; the
text links of the SMU and pulse generator as noted):

- ``drop``: the connection closes mid-transaction (the command ran or not, 50/50);
- ``delay``: the command runs, the reply comes ``delay_s`` later (past the client timeout);
- ``corrupt``: the command runs, one byte of the reply is flipped (CRC mismatch);
- ``truncate``: the command runs, half the reply is sent, then nothing;
- ``error``: the board answers ``ERR 210,"Transient fault"`` without running it (text links:
  the command is not run, error -310 is queued, a query gets no reply);
- ``corrupt_request``: a bit of the request flips on the way in (board: the CRC refuses the
  frame, ``ERR 102``; text links: the instrument runs what arrived, mostly a syntax error);
- ``silent``: the board stops answering for ``silent_s`` (the command is lost);
- ``stuck``: a burst of ``stuck_burst`` random cells becomes stuck where it is, then the
  command runs normally (a physical fault, invisible to the drivers);
- ``offset`` (opt-in, not in the default kinds): a conductance read comes back ``offset_us``
  off, in a well-formed frame with a valid CRC (a board that measures wrong: invisible on
  the wire; ``BenchChip``'s confirming reads catch it); on the SMU link, the readings the
  line takes report ``offset_us`` more conductance (a line that measures nothing is
  unaffected); the pulse generator measures nothing, so there it does nothing;
- ``dead`` (opt-in): the instrument dies for good: this and every later connection is closed
  at once.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

FAULT_KINDS = ("drop", "delay", "corrupt", "truncate", "error", "silent", "stuck", "corrupt_request")  # default
ALL_FAULT_KINDS = (*FAULT_KINDS, "offset", "dead")
TRANSIENT_CODE = 210
LINE_TRANSIENT_CODE = -310  # SMU and pulse generator: "System error" queued for a command not run


@dataclass(frozen=True)
class FaultPlan:
    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    seed: int = 0
    delay_s: float = 2.0
    silent_s: float = 2.0
    stuck_burst: int = 16
    offset_us: float = 1.5
    max_faults: int | None = None  # at most this many faults in all (then healthy); None: no cap

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate must be in [0, 1], got {self.rate!r}")
        unknown = [k for k in self.kinds if k not in ALL_FAULT_KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"fault kinds must be among {', '.join(ALL_FAULT_KINDS)}, got {list(self.kinds)}")
        if self.delay_s < 0 or self.silent_s < 0 or self.stuck_burst < 0:
            raise ValueError("delay_s, silent_s and stuck_burst must be >= 0")
        if self.max_faults is not None and self.max_faults < 0:
            raise ValueError(f"max_faults must be >= 0 or None, got {self.max_faults!r}")


@dataclass
class FaultInjector:
    plan: FaultPlan
    counts: dict[str, int] = field(default_factory=lambda: {k: 0 for k in ALL_FAULT_KINDS})
    transactions: int = 0

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.plan.seed)
        self._lock = threading.Lock()

    def draw(self) -> str | None:
        """The fault for the next transaction, or None."""
        with self._lock:
            self.transactions += 1
            if self.plan.max_faults is not None and self.injected >= self.plan.max_faults:
                return None
            if self.plan.rate <= 0 or self._rng.random() >= self.plan.rate:
                return None
            kind = str(self._rng.choice(self.plan.kinds))
            self.counts[kind] += 1
            return kind

    def coin(self) -> bool:
        with self._lock:
            return bool(self._rng.random() < 0.5)

    def stuck_cells(self, n_cells: int) -> np.ndarray:
        with self._lock:
            return self._rng.choice(n_cells, size=min(self.plan.stuck_burst, n_cells), replace=False)

    @property
    def injected(self) -> int:
        return sum(self.counts.values())
