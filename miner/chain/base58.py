"""Base58 and Base58Check, as Bitcoin Core's src/base58.cpp defines them."""

from __future__ import annotations

from .hashes import sha256d

__all__ = [
    "Base58Error",
    "B58_ALPHABET",
    "base58_encode",
    "base58_decode",
    "base58check_encode",
    "base58check_decode",
]

B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(B58_ALPHABET)}


class Base58Error(ValueError):
    """A string that is not valid Base58 / Base58Check."""


def base58_encode(data: bytes) -> str:
    """Encode bytes as Base58; each leading zero byte becomes a leading '1'."""
    zeros = len(data) - len(data.lstrip(b"\x00"))
    n = int.from_bytes(data, "big")
    digits = []
    while n:
        n, rem = divmod(n, 58)
        digits.append(B58_ALPHABET[rem])
    return "1" * zeros + "".join(reversed(digits))


def base58_decode(s: str) -> bytes:
    """Decode Base58 to bytes; Base58Error names the first character outside the alphabet."""
    n = 0
    for pos, ch in enumerate(s):
        digit = _B58_INDEX.get(ch)
        if digit is None:
            raise Base58Error(f"invalid base58 character {ch!r} at position {pos}")
        n = n * 58 + digit
    zeros = len(s) - len(s.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\x00" * zeros + body


def base58check_encode(data: bytes) -> str:
    """Base58 of data followed by the first 4 bytes of sha256d(data)."""
    return base58_encode(bytes(data) + sha256d(data)[:4])


def base58check_decode(s: str) -> bytes:
    """Decode Base58Check and verify its 4-byte checksum; returns data (version byte included)."""
    raw = base58_decode(s)
    if len(raw) < 4:
        raise Base58Error(f"base58check string too short ({len(raw)} bytes decoded)")
    data, checksum = raw[:-4], raw[-4:]
    if sha256d(data)[:4] != checksum:
        raise Base58Error("bad base58check checksum")
    return data
