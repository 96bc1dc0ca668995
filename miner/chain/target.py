"""Compact "bits", 256-bit targets and difficulty, with Core's exact conversions.

A hash meets a target when, read as a little-endian 256-bit integer, it is <= the
target. Difficulty d means target = DIFF1_TARGET / d; d may be below 1 (regtest,
tiny miners), which gives a target above DIFF1_TARGET.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

__all__ = [
    "DIFF1_TARGET",
    "MAX_TARGET",
    "bits_to_target",
    "target_to_bits",
    "difficulty_to_target",
    "target_to_difficulty",
    "hash_to_int",
    "hash_meets_target",
]

# Target of difficulty 1: bits 0x1d00ffff, i.e. 0x00000000FFFF0000...0000.
DIFF1_TARGET = 0xFFFF << 208
MAX_TARGET = (1 << 256) - 1


def bits_to_target(bits: int) -> int:
    """Expand compact bits to a target, rejecting the negative/overflow forms Core flags."""
    if not 0 <= bits <= 0xFFFFFFFF:
        raise ValueError(f"bits out of uint32 range: {bits:#x}")
    size = bits >> 24
    word = bits & 0x007FFFFF
    if size <= 3:
        word >>= 8 * (3 - size)
        target = word
    else:
        target = word << (8 * (size - 3))
    # Same conditions as arith_uint256::SetCompact's pfNegative / pfOverflow, which
    # DeriveTarget turns into "invalid bits". They test the (shifted) mantissa, so a
    # sign bit on a zero mantissa, e.g. 0x01803456, reads as target 0, not negative.
    if word != 0 and bits & 0x00800000:
        raise ValueError(f"bits {bits:#010x} encode a negative target")
    if word != 0 and (size > 34 or (word > 0xFF and size > 33) or (word > 0xFFFF and size > 32)):
        raise ValueError(f"bits {bits:#010x} overflow 256 bits")
    return target


def target_to_bits(target: int) -> int:
    """Compact form of target, as arith_uint256::GetCompact (loses low-order bits)."""
    if not 0 <= target <= MAX_TARGET:
        raise ValueError(f"target out of 256-bit range: {target:#x}")
    size = (target.bit_length() + 7) // 8
    if size <= 3:
        compact = target << (8 * (3 - size))
    else:
        compact = target >> (8 * (size - 3))
    # The mantissa is signed; if its top bit would be set, shift it down a byte so the
    # compact form does not read back as negative.
    if compact & 0x00800000:
        compact >>= 8
        size += 1
    return compact | (size << 24)


def difficulty_to_target(difficulty: float | int | Fraction | Decimal) -> int:
    """floor(DIFF1_TARGET / difficulty), clamped to 2**256-1; exactly DIFF1 at d=1."""
    if isinstance(difficulty, bool) or not isinstance(difficulty, (int, float, Fraction, Decimal)):
        raise TypeError(f"difficulty must be a number, got {type(difficulty).__name__}")
    if isinstance(difficulty, float) and not math.isfinite(difficulty):
        raise ValueError(f"difficulty must be finite, got {difficulty}")
    if isinstance(difficulty, Decimal) and not difficulty.is_finite():
        raise ValueError(f"difficulty must be finite, got {difficulty}")
    # A float is an exact binary fraction, so Fraction keeps every bit of it and the
    # division below is exact integer math; float division would lose ~200 bits.
    d = Fraction(difficulty)
    if d <= 0:
        raise ValueError(f"difficulty must be positive, got {difficulty}")
    target = (DIFF1_TARGET * d.denominator) // d.numerator
    return min(target, MAX_TARGET)


def target_to_difficulty(target: int) -> float:
    """DIFF1_TARGET / target as a float (correctly rounded)."""
    if not 0 < target <= MAX_TARGET:
        raise ValueError(f"target must be in 1..2**256-1, got {target}")
    # int / int is correctly rounded in Python, exactly like float(Fraction(...)), and ~10x
    # cheaper: the stratum server calls this for every share.
    return DIFF1_TARGET / target


def hash_to_int(hash_internal: bytes) -> int:
    """A 32-byte internal-order hash as the little-endian integer compared to targets."""
    if len(hash_internal) != 32:
        raise ValueError(f"hash must be 32 bytes, got {len(hash_internal)}")
    return int.from_bytes(hash_internal, "little")


def hash_meets_target(hash_internal: bytes, target: int) -> bool:
    """True when the hash, read little-endian, is <= target."""
    return hash_to_int(hash_internal) <= target
