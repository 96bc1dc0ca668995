"""Base58 / Base58Check against Bitcoin Core's vectors."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miner.chain.base58 import (
    B58_ALPHABET,
    Base58Error,
    base58_decode,
    base58_encode,
    base58check_decode,
    base58check_encode,
)

from .vectors import PROPERTY, load_json

CORE_VECTORS = load_json("base58_encode_decode.json")


@pytest.mark.parametrize(("data_hex", "encoded"), CORE_VECTORS)
def test_core_base58_vectors(data_hex, encoded):
    data = bytes.fromhex(data_hex)
    assert base58_encode(data) == encoded
    assert base58_decode(encoded) == data


@PROPERTY
@given(st.binary(max_size=80))
def test_base58_round_trip(data):
    assert base58_decode(base58_encode(data)) == data


@PROPERTY
@given(st.binary(max_size=80))
def test_base58check_round_trip(data):
    assert base58check_decode(base58check_encode(data)) == data


def test_base58check_known_address():
    # The genesis coinbase's key, as a P2PKH address (version 0x00 + hash160).
    payload = bytes.fromhex("0062e907b15cbf27d5425399ebf6f0fb50ebb88f18")
    assert base58check_encode(payload) == "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"
    assert base58check_decode("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa") == payload


@PROPERTY
@given(st.binary(min_size=1, max_size=40), st.data())
def test_base58check_detects_single_character_change(data, draw):
    encoded = base58check_encode(data)
    pos = draw.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    replacement = draw.draw(st.sampled_from([c for c in B58_ALPHABET if c != encoded[pos]]))
    mutated = encoded[:pos] + replacement + encoded[pos + 1:]
    with pytest.raises(Base58Error):
        base58check_decode(mutated)


@pytest.mark.parametrize(
    "bad", ["0", "O", "I", "l", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfN0", "abc def"]
)
def test_invalid_characters(bad):
    with pytest.raises(Base58Error, match="invalid base58 character"):
        base58_decode(bad)


def test_base58check_too_short():
    with pytest.raises(Base58Error, match="too short"):
        base58check_decode(base58_encode(b"\x01\x02\x03"))


def test_base58check_bad_checksum_message():
    with pytest.raises(Base58Error, match="bad base58check checksum"):
        base58check_decode("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb")
