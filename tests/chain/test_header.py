"""The 80-byte header: real vectors, version sign handling, strict lengths."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miner.chain.encoding import DecodeError
from miner.chain.hashes import hex_display_from_internal, internal_from_hex_display
from miner.chain.header import BlockHeader

from .vectors import PROPERTY, load_json


def test_block_125552_header_hash():
    vector = load_json("mainnet_125552_header.json")
    header = BlockHeader(
        version=vector["version"],
        prev_hash_internal=internal_from_hex_display(vector["previousblockhash"]),
        merkle_root_internal=internal_from_hex_display(vector["merkleroot"]),
        time=vector["time"],
        bits=int(vector["bits"], 16),
        nonce=vector["nonce"],
    )
    assert header.to_bytes().hex() == vector["header"]
    assert header.hash_hex_display() == vector["hash"]
    assert BlockHeader.from_bytes(bytes.fromhex(vector["header"])) == header
    assert header.meets_target()


def test_genesis_header_fields():
    vector = load_json("mainnet_genesis.json")
    header = BlockHeader.from_bytes(bytes.fromhex(vector["block"])[:80])
    assert header.version == vector["version"]
    assert header.prev_hash_internal == bytes(32)
    assert hex_display_from_internal(header.merkle_root_internal) == vector["merkleroot"]
    assert header.time == vector["time"]
    assert header.bits == int(vector["bits"], 16)
    assert header.nonce == vector["nonce"]
    assert header.hash_hex_display() == vector["hash"]
    assert header.target() == 0xFFFF << 208


def test_prefix76_is_header_without_nonce():
    raw = bytes.fromhex(load_json("mainnet_125552_header.json")["header"])
    header = BlockHeader.from_bytes(raw)
    assert header.prefix76() == raw[:76]
    assert header.to_bytes() == header.prefix76() + header.nonce.to_bytes(4, "little")
    assert header.with_nonce(0).to_bytes()[:76] == raw[:76]
    assert not header.with_nonce(0).meets_target()


def test_high_bit_version_round_trips_as_signed():
    # Versions with the top bit set occur on mainnet (version rolling / BIP320 bits).
    raw = bytes.fromhex("000000e0") + bytes(76)
    header = BlockHeader.from_bytes(raw)
    assert header.version == -0x20000000
    assert header.version_u32 == 0xE0000000
    assert header.to_bytes() == raw
    # The unsigned spelling (stratum's) is folded to the same value.
    assert BlockHeader(0xE0000000, bytes(32), bytes(32), 0, 0, 0) == header


def test_real_versions_round_trip():
    block = load_json("bitcoin_mainnet_951658.json")
    header = BlockHeader.from_bytes(bytes.fromhex(block["block"])[:80])
    assert header.version == block["version"] == int(block["versionHex"], 16)


@pytest.mark.parametrize("size", [0, 79, 81, 160])
def test_from_bytes_requires_exactly_80(size):
    with pytest.raises(DecodeError):
        BlockHeader.from_bytes(bytes(size))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"version": 1 << 32},
        {"version": -(1 << 31) - 1},
        {"prev_hash_internal": bytes(31)},
        {"merkle_root_internal": bytes(33)},
        {"time": -1},
        {"bits": 1 << 32},
        {"nonce": 1 << 32},
    ],
)
def test_field_validation(kwargs):
    fields = dict(
        version=1, prev_hash_internal=bytes(32), merkle_root_internal=bytes(32), time=0, bits=0, nonce=0
    )
    fields.update(kwargs)
    with pytest.raises(ValueError):
        BlockHeader(**fields)


@PROPERTY
@given(
    st.integers(min_value=-(1 << 31), max_value=(1 << 31) - 1),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
    st.integers(min_value=0, max_value=0xFFFFFFFF),
    st.integers(min_value=0, max_value=0xFFFFFFFF),
    st.integers(min_value=0, max_value=0xFFFFFFFF),
)
def test_header_round_trip(version, prev, merkle, time, bits, nonce):
    header = BlockHeader(version, prev, merkle, time, bits, nonce)
    raw = header.to_bytes()
    assert len(raw) == 80
    assert BlockHeader.from_bytes(raw) == header
