"""ByteReader strictness and CompactSize."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miner.chain.encoding import MAX_SIZE, ByteReader, DecodeError, compact_size

from .vectors import PROPERTY

COMPACT_SIZE_TABLE = [
    (0, "00"),
    (1, "01"),
    (0xFC, "fc"),
    (0xFD, "fdfd00"),
    (0xFFFF, "fdffff"),
    (0x10000, "fe00000100"),
    (0xFFFFFFFF, "feffffffff"),
    (0x100000000, "ff0000000001000000"),
    (0xFFFFFFFFFFFFFFFF, "ffffffffffffffffff"),
]


@pytest.mark.parametrize(("value", "encoded_hex"), COMPACT_SIZE_TABLE)
def test_compact_size_table(value, encoded_hex):
    assert compact_size(value).hex() == encoded_hex
    reader = ByteReader(bytes.fromhex(encoded_hex))
    assert reader.read_compact_size() == value
    reader.expect_end()


@PROPERTY
@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_compact_size_round_trip(value):
    encoded = compact_size(value)
    reader = ByteReader(encoded)
    assert reader.read_compact_size() == value
    reader.expect_end()


@pytest.mark.parametrize("value", [-1, 2**64])
def test_compact_size_out_of_range(value):
    with pytest.raises(ValueError):
        compact_size(value)


@pytest.mark.parametrize(
    "encoded_hex",
    ["fd0000", "fdfc00", "fe00000000", "feffff0000", "ff0000000000000000", "ffffffffff00000000"],
)
def test_non_canonical_compact_size_rejected(encoded_hex):
    with pytest.raises(DecodeError, match="non-canonical"):
        ByteReader(bytes.fromhex(encoded_hex)).read_compact_size()


@pytest.mark.parametrize("encoded_hex", ["", "fd", "fd00", "fe000001", "ff00000000000001"])
def test_truncated_compact_size_rejected(encoded_hex):
    with pytest.raises(DecodeError, match="truncated"):
        ByteReader(bytes.fromhex(encoded_hex)).read_compact_size()


def test_read_count_is_bounded_like_core():
    assert ByteReader(compact_size(MAX_SIZE)).read_count() == MAX_SIZE
    with pytest.raises(DecodeError, match="exceeds limit"):
        ByteReader(compact_size(MAX_SIZE + 1)).read_count()


def test_fixed_width_reads_are_little_endian():
    reader = ByteReader(bytes.fromhex("01000000" "feffffff" "ffffffff" "0807060504030201" "aabb"))
    assert reader.read_u32_le() == 1
    assert reader.read_i32_le() == -2
    assert reader.read_u32_le() == 0xFFFFFFFF
    assert reader.read_u64_le() == 0x0102030405060708
    assert reader.read_u16_le() == 0xBBAA
    reader.expect_end()


def test_read_past_end_raises_and_does_not_advance():
    reader = ByteReader(b"\x01\x02\x03")
    with pytest.raises(DecodeError, match="need 4 bytes"):
        reader.read(4)
    assert reader.position == 0
    assert reader.read(3) == b"\x01\x02\x03"
    with pytest.raises(DecodeError):
        reader.read_u8()


def test_expect_end_reports_trailing_bytes():
    reader = ByteReader(b"\x00\x01")
    reader.read(1)
    with pytest.raises(DecodeError, match="1 trailing bytes"):
        reader.expect_end()


def test_var_bytes_truncated():
    with pytest.raises(DecodeError):
        ByteReader(bytes.fromhex("05aabbcc")).read_var_bytes()


def test_decode_error_is_value_error():
    assert issubclass(DecodeError, ValueError)
