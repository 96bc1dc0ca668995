"""Bitcoin wire encoding: a strict byte reader and CompactSize.

Strict in the python-bitcoinlib sense: a short read is an error, a non-canonical
CompactSize is an error, and bytes left over after a complete object are an error.
"""

from __future__ import annotations

import struct

__all__ = ["DecodeError", "ByteReader", "compact_size", "MAX_SIZE"]

# Core's MAX_SIZE: the largest vector length ReadCompactSize accepts with range_check.
MAX_SIZE = 0x02000000


class DecodeError(ValueError):
    """Bytes that are not a valid encoding of the expected object."""


def compact_size(n: int) -> bytes:
    """Encode n as a Bitcoin CompactSize (varint) in its canonical, shortest form."""
    if n < 0 or n > 0xFFFFFFFFFFFFFFFF:
        raise ValueError(f"compact size out of range: {n}")
    if n < 0xFD:
        return bytes((n,))
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


class ByteReader:
    """Cursor over bytes whose reads raise DecodeError instead of returning short data."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._data = bytes(data)
        self._pos = 0

    @property
    def position(self) -> int:
        """Offset of the next unread byte."""
        return self._pos

    def remaining(self) -> int:
        """Number of bytes not yet read."""
        return len(self._data) - self._pos

    def peek(self, n: int) -> bytes:
        """Return the next n bytes without consuming them; DecodeError if fewer remain."""
        if n < 0:
            raise ValueError(f"negative read length: {n}")
        end = self._pos + n
        if end > len(self._data):
            raise DecodeError(
                f"truncated: need {n} bytes at offset {self._pos}, only {self.remaining()} left"
            )
        return self._data[self._pos:end]

    def read(self, n: int) -> bytes:
        """Consume and return exactly n bytes."""
        out = self.peek(n)
        self._pos += n
        return out

    def read_u8(self) -> int:
        """Read one unsigned byte."""
        return self.read(1)[0]

    def read_u16_le(self) -> int:
        """Read a little-endian uint16."""
        return struct.unpack("<H", self.read(2))[0]

    def read_u32_le(self) -> int:
        """Read a little-endian uint32."""
        return struct.unpack("<I", self.read(4))[0]

    def read_i32_le(self) -> int:
        """Read a little-endian int32 (two's complement)."""
        return struct.unpack("<i", self.read(4))[0]

    def read_u64_le(self) -> int:
        """Read a little-endian uint64."""
        return struct.unpack("<Q", self.read(8))[0]

    def read_i64_le(self) -> int:
        """Read a little-endian int64 (two's complement)."""
        return struct.unpack("<q", self.read(8))[0]

    def read_compact_size(self, limit: int | None = None) -> int:
        """Read a CompactSize, rejecting non-canonical forms and values above limit."""
        start = self._pos
        first = self.read_u8()
        if first < 0xFD:
            value = first
        elif first == 0xFD:
            value = self.read_u16_le()
            minimum = 0xFD
        elif first == 0xFE:
            value = self.read_u32_le()
            minimum = 0x10000
        else:
            value = self.read_u64_le()
            minimum = 0x100000000
        # A value that fits a shorter form has two encodings; Core rejects the long one
        # so that every object has exactly one serialization (and one hash).
        if first >= 0xFD and value < minimum:
            raise DecodeError(f"non-canonical compact size {value} at offset {start}")
        if limit is not None and value > limit:
            raise DecodeError(f"compact size {value} at offset {start} exceeds limit {limit}")
        return value

    def read_count(self) -> int:
        """Read a vector length, bounded like Core's ReadCompactSize(range_check=true)."""
        return self.read_compact_size(limit=MAX_SIZE)

    def read_var_bytes(self) -> bytes:
        """Read a CompactSize length followed by that many bytes."""
        return self.read(self.read_count())

    def expect_end(self) -> None:
        """Raise DecodeError if any bytes remain unread."""
        if self._pos != len(self._data):
            raise DecodeError(
                f"{self.remaining()} trailing bytes after offset {self._pos}"
            )


class WitnessSized:
    """size, stripped_size and BIP141 weight for a class with serialize(with_witness)."""

    def size(self) -> int:
        """Serialized size with witness data, in bytes."""
        return len(self.serialize(with_witness=True))

    def stripped_size(self) -> int:
        """Serialized size without witness data, in bytes."""
        return len(self.serialize(with_witness=False))

    def weight(self) -> int:
        """BIP141 weight: 3 * stripped size + total size."""
        return 3 * self.stripped_size() + self.size()
