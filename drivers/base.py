"""A small PyMeasure-style declarative layer: validated properties, channels, shutdown.

A driver is mostly ``control`` / ``measurement`` / ``setting`` declarations; commands
may contain ``{ch}``, filled in by a :class:`Channel`. Validators are strict: an
out-of-range value raises ``ValueError`` naming the property and the accepted range,
and nothing is sent.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Self, Sequence

from .errors import InstrumentError
from .interrupt import deferred_sigint
from .transport import VisaTransport

Validator = Callable[[Any, Any], Any]


def strict_range(value: Any, bounds: Sequence[float]) -> float:
    """``value`` as a float inside ``[lo, hi]``, else ``ValueError``."""
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"must be a finite number in [{lo:g}, {hi:g}], got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{value!r} is outside the accepted range [{lo:g}, {hi:g}]")
    return float(value)


def strict_int_range(value: Any, bounds: Sequence[int]) -> int:
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def strict_discrete_set(value: Any, allowed: Iterable[Any]) -> Any:
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{value!r} is not one of {allowed}")
    return value


class _Control:
    """Descriptor behind :meth:`CommonBase.control`."""

    def __init__(self, get_cmd: str | None, set_cmd: str | None, doc: str, validator: Validator | None,
                 values: Any, map_values: bool, get_process: Callable[[str], Any] | None,
                 set_process: Callable[[Any], Any] | None) -> None:
        self.get_cmd, self.set_cmd, self.validator = get_cmd, set_cmd, validator
        self.values, self.map_values = values, map_values
        self.get_process, self.set_process = get_process, set_process
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        if self.get_cmd is None:
            raise AttributeError(f"{self.name} is write-only")
        raw = obj.ask(self.get_cmd)
        value = self.get_process(raw) if self.get_process else _auto(raw)
        if self.map_values and isinstance(self.values, dict):
            inverse = {v: k for k, v in self.values.items()}
            if value not in inverse:
                from .errors import ProtocolError

                raise ProtocolError(f"{self.name}: unexpected reply {raw!r}")
            value = inverse[value]
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        if self.set_cmd is None:
            raise AttributeError(f"{self.name} is read-only")
        try:
            if self.validator is not None:
                value = self.validator(value, self.values if not isinstance(self.values, dict) else list(self.values))
        except ValueError as exc:
            raise ValueError(f"{type(obj).__name__}.{self.name}: {exc}") from None
        if self.map_values and isinstance(self.values, dict):
            value = self.values[value]
        if self.set_process:
            value = self.set_process(value)
        obj.write(self.set_cmd % (value,))


def _auto(raw: str) -> Any:
    raw = raw.strip()
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        return raw


class CommonBase:
    """Something with ``write``/``ask``: an instrument or one of its channels."""

    @staticmethod
    def control(get_cmd: str | None, set_cmd: str | None, doc: str, validator: Validator | None = None,
                values: Any = None, map_values: bool = False, get_process: Callable[[str], Any] | None = None,
                set_process: Callable[[Any], Any] | None = None) -> Any:
        """A property that reads with ``get_cmd`` and writes ``set_cmd % value`` after validation."""
        return _Control(get_cmd, set_cmd, doc, validator, values, map_values, get_process, set_process)

    @classmethod
    def measurement(cls, get_cmd: str, doc: str, get_process: Callable[[str], Any] | None = None) -> Any:
        return cls.control(get_cmd, None, doc, get_process=get_process)

    @classmethod
    def setting(cls, set_cmd: str, doc: str, validator: Validator | None = None, values: Any = None,
                map_values: bool = False, set_process: Callable[[Any], Any] | None = None) -> Any:
        return cls.control(None, set_cmd, doc, validator, values, map_values, set_process=set_process)

    def write(self, command: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def ask(self, command: str) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


class Channel(CommonBase):
    """One channel of an instrument: fills ``{ch}`` in its commands and delegates."""

    def __init__(self, parent: "Instrument", ch: Any) -> None:
        self.parent, self.id = parent, ch

    def write(self, command: str) -> None:
        self.parent.write(command.format(ch=self.id))

    def ask(self, command: str) -> str:
        return self.parent.ask(command.format(ch=self.id))


class Instrument(CommonBase):
    """A message-based instrument on a transport passed in (PyMeasure's ``Instrument(adapter, name)``).

    ``transport`` is a :class:`~pcm_hil_drivers.transport.MessageTransport` (or, for the
    board, a :class:`~pcm_hil_drivers.transport.ByteTransport`): a real connection, or an
    in-memory :class:`~pcm_hil_drivers.testing.ProtocolAdapter` in tests.
    :meth:`from_resource` opens the usual connection from an address string.

    Every driver is a context manager; :meth:`shutdown` is idempotent and leaves the
    outputs off. ``write``/``ask`` hold the connection's lock and defer Ctrl-C until the
    exchange is complete, so a query is atomic.
    """

    name = "instrument"

    def __init__(self, transport: Any, name: str | None = None) -> None:
        if isinstance(transport, (str, bytes)):
            raise TypeError(f"{type(self).__name__} takes a transport, not the address {transport!r}: "
                            f"use {type(self).__name__}.from_resource({transport!r})")
        self.transport = transport
        if name is not None:
            self.name = name
        self._closed = False

    @classmethod
    def from_resource(cls, resource: str, timeout_s: float = 5.0, backend: str = "@py", **kwargs: Any) -> Self:
        """Open ``resource`` with pyvisa (LF terminators both ways) and build the driver on it.

        ``resource``: a VISA address, e.g. ``TCPIP::192.168.0.5::5025::SOCKET``;
        ``timeout_s``: per-read timeout (s); ``backend``: the pyvisa backend; ``kwargs``
        go to the constructor. The connection is closed again if the constructor fails.
        """
        return cls._built_on(VisaTransport(resource, timeout_s=timeout_s, backend=backend), **kwargs)

    @classmethod
    def _built_on(cls, transport: Any, **kwargs: Any) -> Self:
        """``cls(transport, **kwargs)``; the transport is closed if that fails."""
        try:
            return cls(transport, **kwargs)
        except BaseException:
            transport.close()
            raise

    def write(self, command: str) -> None:
        with self.transport.lock, deferred_sigint():
            self.transport.write(command)

    def ask(self, command: str) -> str:
        with self.transport.lock, deferred_sigint():
            self.transport.write(command)
            return self.transport.read().strip()

    @property
    def timeout_s(self) -> float:
        """Per-read timeout of the connection (s), 0.001 … 3600."""
        return self.transport.timeout_s

    @timeout_s.setter
    def timeout_s(self, value: float) -> None:
        try:
            self.transport.timeout_s = strict_range(value, (0.001, 3600.0))
        except ValueError as exc:
            raise ValueError(f"{type(self).__name__}.timeout_s: {exc}") from None

    def next_error(self) -> tuple[int, str]:  # pragma: no cover - per driver
        raise NotImplementedError

    def check_errors(self) -> None:
        """Drain the error queue; raise :class:`InstrumentError` with the first error found."""
        first: tuple[int, str] | None = None
        for _ in range(64):
            code, msg = self.next_error()
            if code == 0:
                break
            first = first or (code, msg)
        if first:
            raise InstrumentError(first[0], first[1], self.name)

    def safe_state(self) -> None:
        """Put outputs off (per driver)."""

    def shutdown(self) -> None:
        """Outputs off, connection closed. Idempotent; safe after a lost connection."""
        if self._closed:
            return
        self._closed = True
        try:
            self.safe_state()
        finally:
            self.transport.close()

    def __enter__(self) -> "Instrument":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
