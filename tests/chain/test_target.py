"""bits <-> target <-> difficulty, checked against Core's arith_uint256 vectors and real blocks."""

import math
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miner.chain.target import (
    DIFF1_TARGET,
    MAX_TARGET,
    bits_to_target,
    difficulty_to_target,
    hash_meets_target,
    hash_to_int,
    target_to_bits,
    target_to_difficulty,
)

from .vectors import PROPERTY, load_json

# (compact, target, GetCompact of that target): Core's arith_uint256_tests.cpp, bignum_SetCompact.
CORE_SET_COMPACT = [
    (0x00000000, 0, 0),
    (0x00123456, 0, 0),
    (0x01003456, 0, 0),
    (0x02000056, 0, 0),
    (0x03000000, 0, 0),
    (0x04000000, 0, 0),
    (0x00923456, 0, 0),
    (0x01803456, 0, 0),
    (0x02800056, 0, 0),
    (0x03800000, 0, 0),
    (0x04800000, 0, 0),
    (0x01123456, 0x12, 0x01120000),
    (0x02123456, 0x1234, 0x02123400),
    (0x03123456, 0x123456, 0x03123456),
    (0x04123456, 0x12345600, 0x04123456),
    (0x05009234, 0x92340000, 0x05009234),
    (0x20123456, 0x123456 << 232, 0x20123456),
]


@pytest.mark.parametrize(("bits", "target", "recompacted"), CORE_SET_COMPACT)
def test_core_set_compact_vectors(bits, target, recompacted):
    assert bits_to_target(bits) == target
    assert target_to_bits(target) == recompacted


def test_get_compact_never_sets_sign_bit():
    assert target_to_bits(0x80) == 0x02008000


@pytest.mark.parametrize("bits", [0x01FEDCBA, 0x04923456])
def test_negative_compact_rejected(bits):
    with pytest.raises(ValueError, match="negative"):
        bits_to_target(bits)


@pytest.mark.parametrize("bits", [0xFF123456, 0x23000001, 0x22000100, 0x21010000])
def test_overflowing_compact_rejected(bits):
    with pytest.raises(ValueError, match="overflow"):
        bits_to_target(bits)


def test_largest_non_overflowing_compacts():
    assert bits_to_target(0x220000FF) == 0xFF << 248
    assert bits_to_target(0x2100FFFF) == 0xFFFF << 240
    assert bits_to_target(0x207FFFFF) == 0x7FFFFF << 232


def test_bits_out_of_range():
    for bits in (-1, 2**32):
        with pytest.raises(ValueError):
            bits_to_target(bits)


def test_diff1():
    assert DIFF1_TARGET == int("00000000FFFF" + "00" * 26, 16)
    assert bits_to_target(0x1D00FFFF) == DIFF1_TARGET
    assert target_to_bits(DIFF1_TARGET) == 0x1D00FFFF
    assert difficulty_to_target(1) == DIFF1_TARGET
    assert difficulty_to_target(1.0) == DIFF1_TARGET
    assert target_to_difficulty(DIFF1_TARGET) == 1.0


def test_real_block_bits_and_difficulty():
    block = load_json("bitcoin_mainnet_951658.json")
    target = bits_to_target(int(block["bits"], 16))
    assert target == int(block["target"], 16)
    assert target_to_bits(target) == int(block["bits"], 16)
    assert target_to_difficulty(target) == pytest.approx(block["difficulty"], rel=1e-12)


def test_regtest_difficulty_below_one():
    target = bits_to_target(0x207FFFFF)
    # Core's getdifficulty on regtest reports 4.656542373906925e-10.
    assert target_to_difficulty(target) == pytest.approx(4.656542373906925e-10, rel=1e-12)
    # Slightly easier than regtest's bits still fits 256 bits...
    assert target < difficulty_to_target(4.6e-10) < MAX_TARGET
    # ...but 1e-10 asks for a target above 2**256: clamp instead of overflowing.
    assert difficulty_to_target(1e-10) == MAX_TARGET
    assert difficulty_to_target(target_to_difficulty(target)) == pytest.approx(target, rel=1e-12)


def test_fractional_difficulties_are_exact():
    assert difficulty_to_target(0.5) == 2 * DIFF1_TARGET
    assert difficulty_to_target(Fraction(1, 3)) == 3 * DIFF1_TARGET
    assert difficulty_to_target(Decimal("0.25")) == 4 * DIFF1_TARGET
    assert difficulty_to_target(3) == DIFF1_TARGET // 3
    assert difficulty_to_target(65536) == DIFF1_TARGET >> 16


@pytest.mark.parametrize("bad", [0, -1, 0.0, -0.5, math.nan, math.inf, -math.inf, Decimal("NaN")])
def test_bad_difficulty_value(bad):
    with pytest.raises(ValueError):
        difficulty_to_target(bad)


@pytest.mark.parametrize("bad", ["1", None, True])
def test_bad_difficulty_type(bad):
    with pytest.raises(TypeError):
        difficulty_to_target(bad)


@pytest.mark.parametrize("bad", [0, -1, MAX_TARGET + 1])
def test_bad_target_for_difficulty(bad):
    with pytest.raises(ValueError):
        target_to_difficulty(bad)


@PROPERTY
@given(st.integers(min_value=0, max_value=MAX_TARGET))
def test_target_bits_round_trip(target):
    bits = target_to_bits(target)
    compacted = bits_to_target(bits)
    # Compact keeps the top 23 significant bits (a signed 24-bit mantissa), never rounds up.
    assert compacted <= target
    assert target - compacted < max(1, 1 << max(0, target.bit_length() - 16))
    assert target_to_bits(compacted) == bits


@PROPERTY
@given(st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_bits_target_round_trip_for_valid_bits(bits):
    try:
        target = bits_to_target(bits)
    except ValueError:
        return
    again = target_to_bits(target)
    # Canonical bits survive exactly; any valid bits re-expand to the same target.
    assert bits_to_target(again) == target


difficulties = st.floats(min_value=1e-12, max_value=1e15, allow_nan=False, allow_infinity=False)


@PROPERTY
@given(difficulties, difficulties)
def test_difficulty_to_target_monotonic(d1, d2):
    low, high = sorted((d1, d2))
    assert difficulty_to_target(low) >= difficulty_to_target(high)


@PROPERTY
@given(st.floats(min_value=1e-9, max_value=1e15, allow_nan=False, allow_infinity=False))
def test_difficulty_target_inverse(difficulty):
    target = difficulty_to_target(difficulty)
    if target < MAX_TARGET:
        assert target_to_difficulty(target) == pytest.approx(difficulty, rel=1e-12)


def test_hash_comparison_is_little_endian_and_inclusive():
    target = 0x1234
    assert hash_to_int(bytes.fromhex("3412") + bytes(30)) == target
    assert hash_meets_target(bytes.fromhex("3412") + bytes(30), target)
    assert not hash_meets_target(bytes.fromhex("3512") + bytes(30), target)
    assert hash_meets_target(bytes(32), 0)
    with pytest.raises(ValueError):
        hash_to_int(bytes(31))
