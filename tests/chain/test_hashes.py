"""sha256/sha256d and the two hash byte orders."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miner.chain.hashes import (
    hex_display_from_internal,
    internal_from_hex_display,
    sha256,
    sha256d,
)

from .vectors import PROPERTY

GENESIS_HASH_DISPLAY = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"


def test_sha256_known_values():
    assert sha256(b"").hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256(b"abc").hex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256d(b"").hex() == "5df6e0e2761359d30a8275058e299fcc0381534545f55cf43e41983f5d4c9456"


def test_display_is_byte_reversed_internal():
    internal = internal_from_hex_display(GENESIS_HASH_DISPLAY)
    assert internal.hex() == "6fe28c0ab6f1b372c1a6a246ae63f74f931e8365e15a089c68d6190000000000"
    assert hex_display_from_internal(internal) == GENESIS_HASH_DISPLAY


@PROPERTY
@given(st.binary(min_size=32, max_size=32))
def test_display_round_trip(internal):
    assert internal_from_hex_display(hex_display_from_internal(internal)) == internal


def test_uppercase_display_hex_accepted():
    assert internal_from_hex_display(GENESIS_HASH_DISPLAY.upper()) == internal_from_hex_display(
        GENESIS_HASH_DISPLAY
    )


@pytest.mark.parametrize(
    "bad",
    [
        "",
        GENESIS_HASH_DISPLAY[:-2],
        GENESIS_HASH_DISPLAY + "00",
        "zz" + GENESIS_HASH_DISPLAY[2:],
        " " + GENESIS_HASH_DISPLAY[1:],
        "0x" + GENESIS_HASH_DISPLAY[2:],
    ],
)
def test_internal_from_hex_display_validates(bad):
    with pytest.raises(ValueError):
        internal_from_hex_display(bad)


def test_hex_display_requires_32_bytes():
    with pytest.raises(ValueError):
        hex_display_from_internal(bytes(31))
