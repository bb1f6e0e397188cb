"""Typed driver errors: every failure on the wire is one of these."""
from __future__ import annotations


class DriverError(Exception):
    """Base of all driver errors."""


class InstrumentTimeout(DriverError, TimeoutError):
    """No complete reply within the timeout (dropped connection, silent instrument, truncation)."""


class ProtocolError(DriverError):
    """A malformed reply: bad framing, checksum mismatch, unexpected content."""


class ConnectionLost(DriverError, ConnectionError):
    """The transport closed or reset underneath us."""


class InstrumentError(DriverError):
    """The instrument reported an error (from its reply or its error queue)."""

    def __init__(self, code: int, message: str, instrument: str = "") -> None:
        self.code, self.message, self.instrument = int(code), message, instrument
        where = f"{instrument}: " if instrument else ""
        super().__init__(f"{where}error {code}: {message}")
