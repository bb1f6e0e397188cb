"""Transports: a pyserial port or a pyvisa resource, each with one lock per connection.

A driver is built on a transport passed in (``PCMBoard(SerialTransport(url))``) or opens
the usual one itself (``PCMBoard.from_resource(url)``); tests pass an in-memory
:class:`~pcm_hil_drivers.testing.ProtocolAdapter` instead. What a driver needs of its
transport is :class:`MessageTransport` (text instruments) or :class:`ByteTransport`
(the framed board).

Timeouts are in seconds here (pyvisa wants ms: converted). A read that times out raises
:class:`InstrumentTimeout` instead of returning short data.
"""
from __future__ import annotations

import threading
from typing import Any, ContextManager, Protocol

from .errors import ConnectionLost, InstrumentTimeout


class _Transport(Protocol):
    lock: ContextManager[Any]  # one per connection: held for a whole transaction
    url: str  # the resource it was opened on, for messages

    @property
    def timeout_s(self) -> float: ...

    @timeout_s.setter
    def timeout_s(self, value: float) -> None: ...

    def discard_input(self) -> None:
        """Drop whatever is buffered (after an error, to resynchronise)."""

    def close(self) -> None: ...


class MessageTransport(_Transport, Protocol):
    """Terminated text messages (SCPI, TSP): what :class:`VisaTransport` provides."""

    def write(self, message: str) -> None:
        """Send one message; the transport adds the terminator."""

    def read(self) -> str:
        """One whole message, terminator removed; :class:`InstrumentTimeout` if none arrives."""


class ByteTransport(_Transport, Protocol):
    """A byte stream: what :class:`SerialTransport` provides."""

    def write(self, data: bytes) -> None: ...

    def read_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or :class:`InstrumentTimeout` (short data is never returned)."""


class SerialTransport:
    """Byte stream over ``serial.serial_for_url``: ``/dev/ttyUSB0`` and ``socket://host:port`` alike."""

    def __init__(self, url: str, timeout_s: float = 5.0, baudrate: int = 921_600) -> None:
        import serial

        self.url = url
        self.lock = threading.RLock()
        self._serial_exc = serial.SerialException
        try:
            self._port = serial.serial_for_url(url, baudrate=baudrate, timeout=timeout_s, write_timeout=timeout_s)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise ConnectionLost(f"cannot open serial resource {url!r}: {exc} (accepted: a device such as "
                                 "/dev/ttyUSB0 or a pySerial URL such as socket://host:port)") from None

    @property
    def timeout_s(self) -> float:
        return float(self._port.timeout)

    @timeout_s.setter
    def timeout_s(self, value: float) -> None:
        self._port.timeout = value
        self._port.write_timeout = value

    def write(self, data: bytes) -> None:
        try:
            self._port.write(data)
        except self._serial_exc as exc:
            if "timeout" in str(exc).lower():
                raise InstrumentTimeout(f"{self.url}: write timed out after {self.timeout_s} s") from None
            raise ConnectionLost(f"{self.url}: {exc}") from None

    def read_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or :class:`InstrumentTimeout` (short data is never returned)."""
        try:
            data = self._port.read(n)
        except self._serial_exc as exc:
            raise ConnectionLost(f"{self.url}: {exc}") from None
        if len(data) < n:
            raise InstrumentTimeout(f"{self.url}: got {len(data)} of {n} bytes within {self.timeout_s} s")
        return data

    def discard_input(self) -> None:
        """Drop whatever is buffered (after an error, to resynchronise)."""
        try:
            self._port.reset_input_buffer()
        except (self._serial_exc, OSError):
            pass

    def close(self) -> None:
        self._port.close()


class VisaTransport:
    """Message-based pyvisa resource with explicit terminators (raw sockets have no default)."""

    def __init__(self, resource: str, timeout_s: float = 5.0, backend: str = "@py",
                 read_termination: str = "\n", write_termination: str = "\n") -> None:
        import pyvisa

        self.url = resource
        self.lock = threading.RLock()
        self._errors = pyvisa.errors
        try:
            self._rm = pyvisa.ResourceManager(backend)
            self._res: Any = self._rm.open_resource(
                resource, read_termination=read_termination, write_termination=write_termination,
                timeout=int(round(timeout_s * 1000)))
        except (pyvisa.errors.Error, ValueError, OSError) as exc:
            raise ConnectionLost(f"cannot open VISA resource {resource!r}: {exc}") from None

    @property
    def timeout_s(self) -> float:
        return self._res.timeout / 1000.0

    @timeout_s.setter
    def timeout_s(self, value: float) -> None:
        self._res.timeout = int(round(value * 1000))

    def _wrap(self, exc: Exception) -> Exception:
        code = getattr(exc, "error_code", None)
        if code == self._errors.StatusCode.error_timeout:
            return InstrumentTimeout(f"{self.url}: no reply within {self.timeout_s} s")
        return ConnectionLost(f"{self.url}: {exc}")

    def write(self, message: str) -> None:
        try:
            self._res.write(message)
        except (self._errors.Error, OSError) as exc:
            raise self._wrap(exc) from None

    def read(self) -> str:
        try:
            return self._res.read()
        except (self._errors.Error, OSError) as exc:
            raise self._wrap(exc) from None
        except UnicodeDecodeError as exc:
            from .errors import ProtocolError

            raise ProtocolError(f"{self.url}: reply is not text: {exc}") from None

    def discard_input(self) -> None:
        try:
            self._res.clear()
        except (self._errors.Error, OSError):
            pass

    def close(self) -> None:
        # only our session: the ResourceManager is shared by every resource of its backend
        try:
            self._res.close()
        except (self._errors.Error, OSError):
            pass
