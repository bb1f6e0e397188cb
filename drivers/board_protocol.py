"""Wire format of the PCM controller board (see docs/protocol.md).

Every message, in both directions, is one frame::

    "$" LLLLLLLL PAYLOAD CCCCCCCC "\\n"

``LLLLLLLL``: payload length in bytes, 8 upper-case hex digits; ``CCCCCCCC``: CRC-32
(zlib/IEEE) of the payload, 8 upper-case hex digits. A reader takes 9 bytes, then exactly
``L + 9`` more, so a truncated frame is a timeout and a corrupted one a checksum error.

The payload is SCPI-like text, ``HEADER[ ARG[,ARG...]]``; an argument may be an IEEE
488.2 definite-length block ``#<n><len><bytes>`` carrying little-endian arrays. Blocks
are written and their headers parsed by :mod:`pyvisa.util`; this module adds only what
the board's strictness needs on top (definite length, decimal digits, whole records).
"""
from __future__ import annotations

import zlib

import numpy as np
from pyvisa import util as visa_util

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
    """IEEE 488.2 definite-length block ``#<n><len><bytes>`` of ``data``'s raw bytes (arrays as they are laid out)."""
    raw = np.ascontiguousarray(data).tobytes() if isinstance(data, np.ndarray) else bytes(data)
    return visa_util.to_ieee_block(raw, datatype="B")


def parse_block(payload: bytes, start: int = 0) -> tuple[bytes, int]:
    """The data of the definite-length block at ``payload[start]`` and the index just after it.

    The header is parsed by :func:`pyvisa.util.parse_ieee_block_header`; on top, the board
    wants all the announced length digits, decimal (no indefinite ``#0`` block, no sign or
    space, which ``int()`` would take), and all the announced bytes.
    """
    try:
        offset, length = visa_util.parse_ieee_block_header(payload[start:], length_before_block=0,
                                                           raise_on_late_block=True)
    except (ValueError, RuntimeError) as exc:
        raise ProtocolError(f"bad block header: {exc}") from None
    digits = payload[start + 2:start + offset]
    if len(digits) != offset - 2 or not digits.isdigit():  # refuses #0 (indefinite), signs, spaces, cut-off digits
        raise ProtocolError("bad block header: expected '#', a digit 1-9 and that many decimal digits of length")
    begin, end = start + offset, start + offset + length
    if end > len(payload):
        raise ProtocolError(f"block announces {length} bytes, only {len(payload) - begin} present")
    return payload[begin:end], end


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
            block, i = parse_block(payload, i)
            args.append(block)
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
    """A block argument's data (from :func:`split_payload`) as a read-only array of ``dtype``."""
    if not isinstance(block, bytes):
        raise ProtocolError(f"{what}: expected a binary block")
    if len(block) % dtype.itemsize:
        raise ProtocolError(f"{what}: block of {len(block)} bytes is not a whole number of {dtype.itemsize}-byte items")
    return np.frombuffer(block, dtype=dtype)


def array_from_reply(reply: bytes, dtype: np.dtype, what: str) -> np.ndarray:
    """A reply payload that is exactly one block, as an array of ``dtype``."""
    block, end = parse_block(reply)
    if end != len(reply):
        raise ProtocolError(f"{what}: {len(reply) - end} unexpected bytes after the block")
    return array_from_block(block, dtype, what)
