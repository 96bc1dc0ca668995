"""Bech32 (BIP173) and Bech32m (BIP350), and segwit addresses built on them.

Follows the reference code in sipa/bech32 ref/python/segwit_addr.py, but raises
Bech32Error with the reason instead of returning None.
"""

from __future__ import annotations

from enum import Enum
from typing import Iterable, Sequence

__all__ = [
    "Bech32Error",
    "Encoding",
    "CHARSET",
    "bech32_encode",
    "bech32_decode",
    "convertbits",
    "segwit_address_encode",
    "segwit_address_decode",
]

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_INDEX = {c: i for i, c in enumerate(CHARSET)}
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_BECH32_CONST = 1
_BECH32M_CONST = 0x2BC830A3
# BIP173 caps the whole string at 90 characters; the checksum is only designed to
# guarantee error detection up to that length.
MAX_LENGTH = 90


class Bech32Error(ValueError):
    """A string that is not valid Bech32/Bech32m, or not a valid segwit address."""


class Encoding(Enum):
    """Which checksum constant a string uses."""

    BECH32 = _BECH32_CONST
    BECH32M = _BECH32M_CONST


def _polymod(values: Iterable[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GENERATOR[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _create_checksum(hrp: str, data: Sequence[int], encoding: Encoding) -> list[int]:
    polymod = _polymod(_hrp_expand(hrp) + list(data) + [0] * 6) ^ encoding.value
    return [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]


def bech32_encode(hrp: str, data: Sequence[int], encoding: Encoding) -> str:
    """Encode an HRP and 5-bit values as a lowercase Bech32 or Bech32m string."""
    if not hrp or any(not 33 <= ord(c) <= 126 for c in hrp):
        raise Bech32Error(f"invalid human-readable part {hrp!r}")
    if any(not 0 <= d < 32 for d in data):
        raise Bech32Error("data values must be 5-bit (0..31)")
    hrp = hrp.lower()
    combined = list(data) + _create_checksum(hrp, data, encoding)
    out = hrp + "1" + "".join(CHARSET[d] for d in combined)
    if len(out) > MAX_LENGTH:
        raise Bech32Error(f"bech32 string would be {len(out)} characters, max {MAX_LENGTH}")
    return out


def bech32_decode(s: str) -> tuple[str, list[int], Encoding]:
    """Decode a Bech32/Bech32m string to (lowercase hrp, 5-bit data without checksum, encoding)."""
    if len(s) > MAX_LENGTH:
        raise Bech32Error(f"bech32 string is {len(s)} characters, max {MAX_LENGTH}")
    for pos, ch in enumerate(s):
        if not 33 <= ord(ch) <= 126:
            raise Bech32Error(f"character {ch!r} at position {pos} is out of range")
    if s.lower() != s and s.upper() != s:
        raise Bech32Error("bech32 string mixes upper and lower case")
    s = s.lower()
    sep = s.rfind("1")
    if sep == -1:
        raise Bech32Error("bech32 string has no '1' separator")
    if sep == 0:
        raise Bech32Error("bech32 string has an empty human-readable part")
    if sep + 7 > len(s):
        raise Bech32Error("bech32 checksum too short")
    hrp = s[:sep]
    data = []
    for pos in range(sep + 1, len(s)):
        value = _CHARSET_INDEX.get(s[pos])
        if value is None:
            raise Bech32Error(f"invalid bech32 data character {s[pos]!r} at position {pos}")
        data.append(value)
    check = _polymod(_hrp_expand(hrp) + data)
    if check == _BECH32_CONST:
        encoding = Encoding.BECH32
    elif check == _BECH32M_CONST:
        encoding = Encoding.BECH32M
    else:
        raise Bech32Error("bad bech32 checksum")
    return hrp, data[:-6], encoding


def convertbits(data: Iterable[int], frombits: int, tobits: int, pad: bool) -> list[int]:
    """Regroup a stream of frombits-wide values into tobits-wide values (BIP173)."""
    acc = 0
    bits = 0
    out = []
    maxv = (1 << tobits) - 1
    max_acc = (1 << (frombits + tobits - 1)) - 1
    for value in data:
        if value < 0 or value >> frombits:
            raise Bech32Error(f"value {value} does not fit in {frombits} bits")
        acc = ((acc << frombits) | value) & max_acc
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits:
        raise Bech32Error(f"more than {frombits - 1} bits of padding")
    elif (acc << (tobits - bits)) & maxv:
        raise Bech32Error("non-zero padding bits")
    return out


def segwit_address_encode(hrp: str, witness_version: int, program: bytes) -> str:
    """Encode a witness program: Bech32 for version 0, Bech32m for versions 1..16."""
    _check_program(witness_version, program)
    encoding = Encoding.BECH32 if witness_version == 0 else Encoding.BECH32M
    return bech32_encode(hrp, [witness_version] + convertbits(program, 8, 5, True), encoding)


def segwit_address_decode(address: str) -> tuple[str, int, bytes]:
    """Decode a segwit address to (hrp, witness version, program), enforcing BIP350's rules."""
    hrp, data, encoding = bech32_decode(address)
    if not data:
        raise Bech32Error("segwit address has an empty data section")
    version = data[0]
    program = bytes(convertbits(data[1:], 5, 8, False))
    _check_program(version, program)
    # BIP350: v0 keeps Bech32, v1+ must use Bech32m, so a v1 string with an old
    # checksum (which some wallets would mangle) is rejected, not silently accepted.
    if version == 0 and encoding is not Encoding.BECH32:
        raise Bech32Error("witness v0 address must use bech32, not bech32m")
    if version != 0 and encoding is not Encoding.BECH32M:
        raise Bech32Error(f"witness v{version} address must use bech32m, not bech32")
    return hrp, version, program


def _check_program(version: int, program: bytes) -> None:
    if not 0 <= version <= 16:
        raise Bech32Error(f"invalid witness version {version}")
    if not 2 <= len(program) <= 40:
        raise Bech32Error(f"invalid witness program length {len(program)} (must be 2..40)")
    if version == 0 and len(program) not in (20, 32):
        raise Bech32Error(f"invalid witness v0 program length {len(program)} (must be 20 or 32)")
