"""Bech32 / Bech32m codecs and segwit addresses against the BIP173/BIP350 vectors."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miner.chain.bech32 import (
    CHARSET,
    Bech32Error,
    Encoding,
    bech32_decode,
    bech32_encode,
    convertbits,
    segwit_address_decode,
    segwit_address_encode,
)

from .vectors import PROPERTY, load_json

VECTORS = load_json("bip173_bip350_vectors.json")


@pytest.mark.parametrize("s", VECTORS["bech32_valid"])
def test_bip173_valid_bech32(s):
    hrp, data, encoding = bech32_decode(s)
    assert encoding is Encoding.BECH32
    # Re-encoding gives the lowercase form of the input.
    assert bech32_encode(hrp, data, encoding) == s.lower()


@pytest.mark.parametrize("s", VECTORS["bech32m_valid"])
def test_bip350_valid_bech32m(s):
    hrp, data, encoding = bech32_decode(s)
    assert encoding is Encoding.BECH32M
    assert bech32_encode(hrp, data, encoding) == s.lower()


@pytest.mark.parametrize(("s", "reason"), VECTORS["bech32_invalid"] + VECTORS["bech32m_invalid"])
def test_invalid_bech32_and_bech32m(s, reason):
    with pytest.raises(Bech32Error):
        bech32_decode(s)


def test_invalid_reasons_are_specific():
    cases = {
        "pzry9x0s0muk": "no '1' separator",
        "1pzry9x0s0muk": "empty human-readable part",
        "x1b4n0q5v": "invalid bech32 data character 'b'",
        "li1dgmt3": "checksum too short",
        "A1G7SGD8": "bad bech32 checksum",
        "a12UEL5L": "mixes upper and lower case",
    }
    for s, expected in cases.items():
        with pytest.raises(Bech32Error, match=expected):
            bech32_decode(s)


five_bit = st.integers(min_value=0, max_value=31)
hrps = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=10)


@PROPERTY
@given(hrps, st.lists(five_bit, max_size=60), st.sampled_from(Encoding))
def test_bech32_round_trip(hrp, data, encoding):
    encoded = bech32_encode(hrp, data, encoding)
    assert bech32_decode(encoded) == (hrp.lower(), data, encoding)
    assert bech32_decode(encoded.upper()) == (hrp.lower(), data, encoding)


@PROPERTY
@given(hrps, st.lists(five_bit, max_size=40), st.data())
def test_bech32_detects_single_substitution(hrp, data, draw):
    encoded = bech32_encode(hrp, data, Encoding.BECH32M)
    sep = encoded.rfind("1")
    pos = draw.draw(st.integers(min_value=sep + 1, max_value=len(encoded) - 1))
    new = draw.draw(st.sampled_from([c for c in CHARSET if c != encoded[pos]]))
    with pytest.raises(Bech32Error):
        bech32_decode(encoded[:pos] + new + encoded[pos + 1:])


def test_bech32_encode_rejects_over_90_chars():
    with pytest.raises(Bech32Error, match="max 90"):
        bech32_encode("bc", [0] * 83, Encoding.BECH32)


@PROPERTY
@given(st.binary(max_size=64))
def test_convertbits_round_trip(data):
    five = convertbits(data, 8, 5, True)
    assert bytes(convertbits(five, 5, 8, False)) == data


def test_convertbits_rejects_out_of_range_value():
    with pytest.raises(Bech32Error):
        convertbits([32], 5, 8, False)


@pytest.mark.parametrize(
    ("address", "script_hex"), VECTORS["bip350_segwit_valid"] + VECTORS["bip173_segwit_valid_v0"]
)
def test_segwit_valid_vectors_decode(address, script_hex):
    hrp, version, program = segwit_address_decode(address)
    script = bytes.fromhex(script_hex)
    expected_version = 0 if script[0] == 0 else script[0] - 0x50
    assert version == expected_version
    assert program == script[2:]
    assert segwit_address_encode(hrp, version, program) == address.lower()


@pytest.mark.parametrize(
    ("address", "reason"),
    [row for row in VECTORS["bip350_segwit_invalid"] + VECTORS["bip173_segwit_invalid"]
     if "human-readable" not in row[1]],
)
def test_segwit_invalid_vectors_rejected(address, reason):
    with pytest.raises(Bech32Error):
        segwit_address_decode(address)


@pytest.mark.parametrize(
    ("address", "script_hex"), VECTORS["bip173_segwit_v1plus_invalid_since_bip350"]
)
def test_bip173_v1_bech32_addresses_rejected_by_bip350(address, script_hex):
    with pytest.raises(Bech32Error, match="must use bech32m"):
        segwit_address_decode(address)


@PROPERTY
@given(
    st.sampled_from(["bc", "tb", "bcrt", "rb"]),
    st.integers(min_value=0, max_value=16),
    st.data(),
)
def test_segwit_round_trip(hrp, version, draw):
    if version == 0:
        size = draw.draw(st.sampled_from([20, 32]))
    else:
        size = draw.draw(st.integers(min_value=2, max_value=40))
    program = draw.draw(st.binary(min_size=size, max_size=size))
    address = segwit_address_encode(hrp, version, program)
    assert segwit_address_decode(address) == (hrp, version, program)
    _, _, encoding = bech32_decode(address)
    assert encoding is (Encoding.BECH32 if version == 0 else Encoding.BECH32M)


@pytest.mark.parametrize(
    ("version", "size"), [(0, 21), (0, 2), (1, 1), (1, 41), (17, 32), (-1, 20)]
)
def test_segwit_encode_rejects_bad_programs(version, size):
    with pytest.raises(Bech32Error):
        segwit_address_encode("bc", version, bytes(size))
