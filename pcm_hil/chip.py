"""The chip interface: one API for the emulated chip and for the instrument bench.

Cells are addressed by flat indices (numpy integer arrays) over a geometry of
``arrays × rows × columns``; :class:`Geometry` converts to and from coordinates.
All validation (addresses, finite values, soft safety limits) happens here, in the
base class, *before* a backend sees the request, so a bad request changes nothing on
any backend.
"""
from __future__ import annotations

import enum
import math
import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

class PulseUncertain(RuntimeError):
    """A pulse batch failed midway: these cells may or may not have been pulsed.

    Never re-send blindly: read (verify) the cells and decide from what they hold.
    """

    def __init__(self, cells: np.ndarray, cause: BaseException) -> None:
        super().__init__(f"pulse outcome unknown for {len(cells)} cells ({type(cause).__name__}: {cause})")
        self.cells, self.cause = cells, cause


class PulseKind(str, enum.Enum):
    """Pulse shape: SET crystallizes partially (slow quench), RESET melt-quenches."""

    SET = "SET"
    RESET = "RESET"

    @classmethod
    def parse(cls, kind: "PulseKind | str") -> "PulseKind":
        try:
            return cls(str(kind.value if isinstance(kind, PulseKind) else kind).upper())
        except ValueError:
            raise ValueError(f"pulse kind must be 'SET' or 'RESET', got {kind!r}") from None


@dataclass(frozen=True)
class Geometry:
    """Chip geometry: ``arrays`` × ``rows`` × ``cols`` cells."""

    arrays: int = 4
    rows: int = 512
    cols: int = 512

    def __post_init__(self) -> None:
        for name in ("arrays", "rows", "cols"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1 or value > 1 << 16:
                raise ValueError(f"geometry.{name} must be an integer in [1, 65536], got {value!r}")

    @property
    def n_cells(self) -> int:
        return self.arrays * self.rows * self.cols

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.arrays, self.rows, self.cols)

    def index(self, array: Any, row: Any, col: Any) -> np.ndarray:
        """Flat indices of cells given (array, row, col) coordinates (broadcast)."""
        coords = [np.asarray(c) for c in (array, row, col)]
        for name, c, size in zip(("array", "row", "col"), coords, self.shape):
            if c.size and (not np.issubdtype(c.dtype, np.integer) or c.min() < 0 or c.max() >= size):
                raise ValueError(f"{name} coordinates must be integers in [0, {size - 1}]")
        return np.ravel_multi_index(tuple(coords), self.shape).astype(np.int64)

    def coords(self, cells: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(array, row, col) coordinates of flat cell indices."""
        return np.unravel_index(np.asarray(cells), self.shape)


@dataclass(frozen=True)
class SoftLimits:
    """Per-chip soft safety limits, checked before any pulse is sent.

    The pulse energy is estimated as ``amplitude² · load_conductance · width`` with the
    worst-case load conductance of a cell during a pulse (threshold-switched state).
    """

    max_amplitude_v: float = 3.0
    max_width_s: float = 10e-6
    max_energy_j: float = 5e-9
    load_conductance_s: float = 1e-3
    max_read_bias_v: float = 0.3

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"soft limit {name} must be a finite positive number, got {value!r}")

    def check_pulse(self, amplitude_v: np.ndarray, width_s: np.ndarray) -> None:
        """Raise ``ValueError`` naming the limit if any pulse is outside the soft limits."""
        amax = float(np.max(np.abs(amplitude_v))) if amplitude_v.size else 0.0
        if amax > self.max_amplitude_v:
            raise ValueError(
                f"pulse amplitude {amax:.4g} V exceeds soft limit max_amplitude_v={self.max_amplitude_v:.4g} V"
            )
        wmax = float(np.max(width_s)) if width_s.size else 0.0
        if wmax > self.max_width_s:
            raise ValueError(f"pulse width {wmax:.4g} s exceeds soft limit max_width_s={self.max_width_s:.4g} s")
        if amplitude_v.size:
            energy = float(np.max(np.square(amplitude_v, dtype=np.float64) * width_s)) * self.load_conductance_s
            if energy > self.max_energy_j:
                raise ValueError(
                    f"pulse energy {energy:.4g} J exceeds soft limit max_energy_j={self.max_energy_j:.4g} J"
                )


def _as_float_array(name: str, value: Any, n: int) -> np.ndarray:
    """A float64 array of shape (1,) for a scalar, else (n,); finite values only."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    elif arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have one value per cell ({n}), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (got NaN or infinite values)")
    return arr


class Chip(ABC):
    """Abstract chip: batched pulses and reads over flat cell indices, and a clock.

    Subclasses implement ``_pulse``, ``_read``, ``now``, ``_wait`` and may override
    ``close``. Public methods validate everything first; a bad request raises
    ``ValueError`` and sends nothing.
    """

    geometry: Geometry
    limits: SoftLimits

    def __init__(self, geometry: Geometry, limits: SoftLimits | None = None) -> None:
        self.geometry = geometry
        self.limits = limits or SoftLimits()

    # -- addressing ---------------------------------------------------------------
    def cells(self, cells: Any = None) -> np.ndarray:
        """Validate a cell selection; return flat int64 indices (None = every cell)."""
        n = self.geometry.n_cells
        if cells is None:
            return np.arange(n, dtype=np.int64)
        if isinstance(cells, slice):
            return np.arange(n, dtype=np.int64)[cells]
        arr = np.asarray(cells)
        if arr.ndim != 1:
            raise ValueError(f"cells must be a 1-D array of flat indices, got shape {arr.shape}")
        if arr.size == 0:
            return arr.astype(np.int64)
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"cells must be integer indices, got dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"cell index out of range: got [{lo}, {hi}], accepted [0, {n - 1}]")
        return arr.astype(np.int64, copy=False)

    def _unique(self, cells: np.ndarray) -> None:
        if cells.size > 1 and not bool(np.all(cells[1:] > cells[:-1])):
            seen = np.zeros(self.geometry.n_cells, dtype=np.bool_)
            seen[cells] = True
            if np.count_nonzero(seen) != cells.size:
                raise ValueError("cells must not repeat within one pulse batch")

    # -- operations ---------------------------------------------------------------
    def validate_pulse(self, cells: Any, kind: PulseKind | str, amplitude_v: Any, width_s: Any
                       ) -> tuple[np.ndarray, PulseKind, np.ndarray, np.ndarray]:
        """Check a pulse request against addresses, values and soft limits; return it normalised."""
        kind = PulseKind.parse(kind)
        idx = self.cells(cells)
        amp = _as_float_array("amplitude_v", amplitude_v, idx.size)
        width = _as_float_array("width_s", width_s, idx.size)
        if idx.size and (np.min(amp) < 0):
            raise ValueError(f"amplitude_v must be >= 0 V, got {np.min(amp):.4g}")
        if idx.size and np.min(width) <= 0:
            raise ValueError(f"width_s must be > 0 s, got {np.min(width):.4g}")
        self.limits.check_pulse(amp, width)
        self._unique(idx)
        return idx, kind, amp, width

    def pulse(self, cells: Any, kind: PulseKind | str, amplitude_v: Any, width_s: Any) -> None:
        """Apply one pulse of ``kind`` to each cell (amplitude in V, width in s, per cell or scalar)."""
        idx, kind, amp, width = self.validate_pulse(cells, kind, amplitude_v, width_s)
        if idx.size:
            self._pulse(idx, kind, amp, width)

    def read(self, cells: Any = None, n_avg: int = 1) -> np.ndarray:
        """Read conductance (µS) of each cell, averaging ``n_avg`` reads per cell."""
        idx = self.cells(cells)
        if not isinstance(n_avg, (int, np.integer)) or not 1 <= n_avg <= 1024:
            raise ValueError(f"n_avg must be an integer in [1, 1024], got {n_avg!r}")
        if idx.size == 0:
            return np.empty(0, dtype=np.float32)
        return self._read(idx, int(n_avg))

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass (instant on the emulator's virtual clock)."""
        if not (isinstance(seconds, (int, float, np.floating)) and math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        self._wait(float(seconds))

    # -- temperature --------------------------------------------------------------
    def temperature_k(self) -> "float | None":
        """Chip temperature in kelvin, or None where the backend has no temperature controller
        (the default)."""
        return None

    def set_temperature_k(self, kelvin: float) -> None:
        """Bring the chip to ``kelvin`` (150–700 K). Raises ``NotImplementedError`` on a backend
        without a temperature controller (the default)."""
        if isinstance(kelvin, bool) or not isinstance(kelvin, (int, float, np.floating)) or not 150 <= kelvin <= 700:
            raise ValueError(f"kelvin must be a number in [150, 700] K, got {kelvin!r}")
        self._set_temperature_k(float(kelvin))

    def _set_temperature_k(self, kelvin: float) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no temperature controller")

    @abstractmethod
    def now(self) -> float:
        """Current chip time in seconds."""

    @abstractmethod
    def _pulse(self, cells: np.ndarray, kind: PulseKind, amplitude_v: np.ndarray, width_s: np.ndarray) -> None: ...

    @abstractmethod
    def _read(self, cells: np.ndarray, n_avg: int) -> np.ndarray: ...

    @abstractmethod
    def _wait(self, seconds: float) -> None: ...

    def identity(self) -> dict[str, Any]:
        """What this chip is, for run records."""
        return {"backend": type(self).__name__, "geometry": asdict(self.geometry), "limits": asdict(self.limits)}

    def chip_id(self) -> str:
        """A stable identity of the physical (or emulated) chip, recorded with every run and
        noise model. Subclasses say which chip this is (not which instrument reaches it)."""
        return f"{type(self).__name__}:" + "x".join(str(v) for v in self.geometry.shape)

    def require_same_chip(self, recorded_id: str | None, what: str) -> None:
        """Raise ``ValueError`` if a record was made on another chip; ``what`` says what was done
        ("run R was stored"); records without an identity are accepted."""
        if recorded_id not in (None, self.chip_id()):
            raise ValueError(f"{what} on {recorded_id!r}, not on this chip ({self.chip_id()!r})")

    def write_counts(self, cells: Any = None) -> np.ndarray | None:
        """Pulses each cell has taken over its life (int64), or None where the backend keeps no
        such counter; ``load`` compares them with the counts recorded when a model was stored."""
        return None

    def sibling(self, offset: int) -> "Chip":
        """A fresh chip of the same device type, for measuring chip-to-chip spread; only the
        emulator has them (chip seed + ``offset``, same profile, geometry and temperature).
        A bench has one chip: ``NotImplementedError``."""
        raise NotImplementedError(f"{type(self).__name__} has one chip: sibling chips exist only on the emulator")

    def attach_state(self, path: "str | os.PathLike[str]") -> None:
        """Keep the chip's state in ``path`` from now on (``sync`` writes it). A no-op on
        hardware, whose cells keep their state; the emulator saves itself there."""

    def sync(self) -> None:
        """Make the chip's state durable before a checkpoint claims it. A no-op on hardware:
        PCM cells are non-volatile. The emulator writes its state file, if it has one."""

    def close(self) -> None:
        """Release the chip (idempotent)."""

    def __enter__(self) -> "Chip":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
