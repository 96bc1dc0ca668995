"""SHA-256 helpers and the two byte orders a Bitcoin hash is written in.

Internal order is what sha256d returns and what goes on the wire; display order
(RPC, explorers) is the same 32 bytes reversed, shown as hex.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "sha256",
    "sha256d",
    "hex_display_from_internal",
    "internal_from_hex_display",
    "ZERO_HASH",
]

ZERO_HASH = bytes(32)
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def sha256(data: bytes) -> bytes:
    """Single SHA-256."""
    return hashlib.sha256(data).digest()


def sha256d(data: bytes) -> bytes:
    """Double SHA-256, in internal byte order."""
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def hex_display_from_internal(h: bytes) -> str:
    """Internal-order 32-byte hash to the byte-reversed hex used by RPC and explorers."""
    if len(h) != 32:
        raise ValueError(f"hash must be 32 bytes, got {len(h)}")
    return bytes(h)[::-1].hex()


def internal_from_hex_display(s: str) -> bytes:
    """Display-order hex (64 hex digits) to internal-order bytes."""
    if not isinstance(s, str) or len(s) != 64:
        raise ValueError(f"display hash must be 64 hex digits, got {s!r}")
    # bytes.fromhex would skip embedded whitespace; a hash has none.
    if not all(c in _HEX_DIGITS for c in s):
        raise ValueError(f"display hash is not hex: {s!r}")
    return bytes.fromhex(s)[::-1]
