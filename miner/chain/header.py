"""The 80-byte block header.

Layout: version (int32 LE) | prev hash (32, internal order) | merkle root (32,
internal order) | time (uint32 LE) | bits (uint32 LE) | nonce (uint32 LE).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from .encoding import ByteReader, DecodeError
from .hashes import hex_display_from_internal, sha256d
from .target import bits_to_target, hash_meets_target

__all__ = ["BlockHeader", "HEADER_SIZE"]

HEADER_SIZE = 80
_TAIL = struct.Struct("<III")  # time, bits, nonce


@dataclass(frozen=True)
class BlockHeader:
    """A block header; version is kept as the signed int32 Core stores."""

    version: int
    prev_hash_internal: bytes
    merkle_root_internal: bytes
    time: int
    bits: int
    nonce: int

    def __post_init__(self) -> None:
        # Stratum and GBT hand out the version as an unsigned 32-bit number (BIP9/BIP320
        # set the top bits); fold it to the signed value so both spellings compare equal.
        if not -(1 << 31) <= self.version <= 0xFFFFFFFF:
            raise ValueError(f"version does not fit 32 bits: {self.version}")
        if self.version >= 1 << 31:
            object.__setattr__(self, "version", self.version - (1 << 32))
        for name in ("prev_hash_internal", "merkle_root_internal"):
            value = getattr(self, name)
            if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
                raise ValueError(f"{name} must be 32 bytes")
            object.__setattr__(self, name, bytes(value))
        for name in ("time", "bits", "nonce"):
            value = getattr(self, name)
            if not 0 <= value <= 0xFFFFFFFF:
                raise ValueError(f"{name} out of uint32 range: {value}")

    @property
    def version_u32(self) -> int:
        """The version as an unsigned 32-bit integer (stratum's notion)."""
        return self.version & 0xFFFFFFFF

    def to_bytes(self) -> bytes:
        """The 80-byte serialization that is hashed."""
        return self.prefix76() + self.nonce.to_bytes(4, "little")

    def prefix76(self) -> bytes:
        """The first 76 bytes: everything but the nonce, which the kernels vary."""
        return (
            struct.pack("<i", self.version)
            + self.prev_hash_internal
            + self.merkle_root_internal
            + struct.pack("<II", self.time, self.bits)
        )

    @classmethod
    def read(cls, reader: ByteReader) -> BlockHeader:
        """Read 80 bytes from reader."""
        version = reader.read_i32_le()
        prev = reader.read(32)
        merkle = reader.read(32)
        time, bits, nonce = _TAIL.unpack(reader.read(12))
        return cls(version, prev, merkle, time, bits, nonce)

    @classmethod
    def from_bytes(cls, data: bytes) -> BlockHeader:
        """Parse exactly 80 bytes; DecodeError on any other length."""
        if len(data) != HEADER_SIZE:
            raise DecodeError(f"block header must be {HEADER_SIZE} bytes, got {len(data)}")
        reader = ByteReader(data)
        header = cls.read(reader)
        reader.expect_end()
        return header

    def hash_internal(self) -> bytes:
        """sha256d of the header, internal byte order."""
        return sha256d(self.to_bytes())

    def hash_hex_display(self) -> str:
        """Block hash as RPC and explorers show it."""
        return hex_display_from_internal(self.hash_internal())

    def target(self) -> int:
        """Target encoded by bits."""
        return bits_to_target(self.bits)

    def meets_target(self, target: int | None = None) -> bool:
        """Whether the hash is <= target (default: the header's own bits)."""
        return hash_meets_target(self.hash_internal(), self.target() if target is None else target)

    def with_nonce(self, nonce: int) -> BlockHeader:
        """Copy with another nonce."""
        return replace(self, nonce=nonce)
