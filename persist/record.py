"""CRC-framed records: the one way our files and shared memory tell whole from torn.

Every structure we store where a process may die half-way through writing it (the region's
header, snapshot slots and journal mark, a connection's header, commits and seal, the
journal's records) is a fixed layout followed by the CRC32C of its bytes; a journal record
extends the CRC over the payload that follows it. A reader that finds the CRC wrong knows
the record is torn or damaged, never half-believes it. Declared here once, so the framing
of all of them is the same and none of them spells the CRC out by hand.
"""
from __future__ import annotations

import struct
from typing import Any

import crc32c

Buffer = bytes | bytearray | memoryview
CRC = struct.Struct("<I")


def checksum(data: Buffer, *more: Buffer) -> int:
    """CRC32C of ``data`` followed by ``more``, without joining them."""
    value = crc32c.crc32c(data)
    for part in more:
        value = crc32c.crc32c(part, value)
    return value


class Sealed:
    """A layout and, right after it, the CRC32C of its bytes (and of ``covers``, the
    payload a record declares, when there is one)."""

    def __init__(self, layout: struct.Struct) -> None:
        self.layout = layout
        self._body = struct.Struct(layout.format)   # a plain Struct: commits are frequent
        self.size = layout.size + CRC.size

    def pack(self, *values: Any, covers: Buffer = b"") -> bytes:
        body = self._body.pack(*values)
        return body + CRC.pack(checksum(body, covers))

    def unpack(self, buf: Buffer, offset: int = 0,
               covers: Buffer = b"") -> tuple[Any, ...] | None:
        """The fields, or None when the CRC does not match (torn or damaged)."""
        end = offset + self.layout.size
        if len(buf) < end + CRC.size:
            return None
        (crc,) = CRC.unpack_from(buf, end)
        if crc != checksum(buf[offset:end], covers):
            return None
        return self._body.unpack_from(buf, offset)

    def peek(self, buf: Buffer, offset: int = 0) -> tuple[Any, ...]:
        """The fields without the check: to learn what to check against (a magic, a
        version, a payload length) before trusting them."""
        return self.layout.unpack_from(buf, offset)

    def blank(self, buf: Buffer, offset: int = 0) -> bool:
        """True if the record's bytes are all zero: never written, as opposed to damaged
        (all-zero bytes never carry a matching CRC)."""
        return not any(buf[offset:offset + self.size])
