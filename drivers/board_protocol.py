"""Wire format of the PCM controller board (see docs/protocol.md).

Every message, in both directions, is one frame::

    "$" LLLLLLLL PAYLOAD CCCCCCCC "\\n"

``LLLLLLLL``: payload length in bytes, 8 upper-case hex digits; ``CCCCCCCC``: CRC-32
(zlib/IEEE) of the payload, 8 upper-case hex digits. A reader takes 9 bytes, then exactly
``L + 9`` more, so a truncated frame is a timeout and a corrupted one a checksum error.

The payload is SCPI-like text, ``HEADER[ ARG[,ARG...]]``; an argument may be an IEEE
488.2 definite-length block ``#<n><len><bytes>`` carrying little-endian arrays.
"""
from __future__ import annotations

import zlib

import numpy as np

from .errors import ProtocolError

FRAME_START = b"$"
HEADER_LEN = 9
TRAILER_LEN = 9
MAX_PAYLOAD = 64 << 20  # 64 MiB

CELL_DTYPE = np.dtype("<u4")
VALUE_DTYPE = np.dtype("<f4")
PULSE_RECORD = np.dtype([("cell", "<u4"), ("amplitude_v", "<f4"), ("width_s", "<f4")])


def encode_frame(payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte frame limit")
    return b"$%08X%s%08X\n" % (len(payload), payload, zlib.crc32(payload))


def payload_length(header: bytes) -> int:
    """Payload length from the 9-byte frame header; ``ProtocolError`` if malformed."""
    if len(header) != HEADER_LEN or header[:1] != FRAME_START:
        raise ProtocolError(f"bad frame header {header[:16]!r}: expected '$' and 8 hex digits")
    try:
        n = int(header[1:], 16)
    except ValueError:
        raise ProtocolError(f"bad frame length field {header[1:]!r}") from None
    if n > MAX_PAYLOAD:
        raise ProtocolError(f"frame length {n} exceeds the {MAX_PAYLOAD}-byte limit")
    return n


def check_frame(rest: bytes) -> bytes:
    """Payload from the bytes after the header (payload + CRC + newline), CRC checked."""
    payload, crc, end = rest[:-TRAILER_LEN], rest[-TRAILER_LEN:-1], rest[-1:]
    if end != b"\n":
        raise ProtocolError("frame does not end with a newline")
    try:
        expected = int(crc, 16)
    except ValueError:
        raise ProtocolError(f"bad CRC field {crc!r}") from None
    if zlib.crc32(payload) != expected:
        raise ProtocolError("frame CRC mismatch: message corrupted")
    return payload


def decode_frame(frame: bytes) -> bytes:
    """Payload of one whole frame (for tests and tools)."""
    n = payload_length(frame[:HEADER_LEN])
    if len(frame) != HEADER_LEN + n + TRAILER_LEN:
        raise ProtocolError(f"frame is {len(frame)} bytes, its header announces {HEADER_LEN + n + TRAILER_LEN}")
    return check_frame(frame[HEADER_LEN:])


def encode_block(data: bytes | np.ndarray) -> bytes:
    """IEEE 488.2 definite-length block ``#<n><len><bytes>``."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    length = str(len(raw)).encode()
    if len(length) > 9:
        raise ValueError("block too long for a definite-length header")
    return b"#%d%s%s" % (len(length), length, raw)


def split_payload(payload: bytes) -> tuple[str, list[str | bytes]]:
    """``(HEADER, args)``; text arguments as ``str``, blocks as ``bytes``."""
    space = payload.find(b" ")
    head = payload if space < 0 else payload[:space]
    try:
        header = head.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("command header is not ASCII") from None
    args: list[str | bytes] = []
    if space < 0:
        return header, args
    i, n = space + 1, len(payload)
    while i <= n:
        if i < n and payload[i:i + 1] == b"#":
            if i + 2 > n or not payload[i + 1:i + 2].isdigit() or payload[i + 1:i + 2] == b"0":
                raise ProtocolError("bad block header: expected '#' and a digit 1-9")
            nd = int(payload[i + 1:i + 2])
            digits = payload[i + 2:i + 2 + nd]
            if len(digits) != nd or not digits.isdigit():
                raise ProtocolError("bad block length field")
            start = i + 2 + nd
            end = start + int(digits)
            if end > n:
                raise ProtocolError(f"block announces {int(digits)} bytes, only {n - start} present")
            args.append(payload[start:end])
            i = end
            if i < n and payload[i:i + 1] != b",":
                raise ProtocolError("expected ',' after a block")
            i += 1
            if i == n:
                raise ProtocolError("trailing ',' after the last argument")
            continue
        comma = payload.find(b",", i)
        chunk = payload[i:] if comma < 0 else payload[i:comma]
        try:
            args.append(chunk.decode("ascii").strip())
        except UnicodeDecodeError:
            raise ProtocolError("argument is not ASCII") from None
        if comma < 0:
            break
        i = comma + 1
    return header, args


def array_from_block(block: bytes | str, dtype: np.dtype, what: str) -> np.ndarray:
    if not isinstance(block, bytes):
        raise ProtocolError(f"{what}: expected a binary block")
    if len(block) % dtype.itemsize:
        raise ProtocolError(f"{what}: block of {len(block)} bytes is not a whole number of {dtype.itemsize}-byte items")
    return np.frombuffer(block, dtype=dtype)
