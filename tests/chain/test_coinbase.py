"""BIP34 heights, the witness commitment, and the stratum coinb1/coinb2 split."""

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miner.chain.address import address_to_script
from miner.chain.block import Block, block_from_parts
from miner.chain.coinbase import (
    WITNESS_COMMITMENT_HEADER,
    build_coinbase,
    decode_bip34_height,
    decode_script_num,
    encode_bip34_height,
    encode_script_num,
    find_witness_commitment,
    push_data,
    witness_commitment,
    witness_commitment_script,
)
from miner.chain.encoding import DecodeError
from miner.chain.hashes import sha256d
from miner.chain.merkle import coinbase_merkle_branch, root_from_branch, witness_root
from miner.chain.tx import Transaction, TxOut

from .vectors import PROPERTY, load_json

PAYOUT = address_to_script("bcrt1qdavt4j2sd7dlhqsavtnfxvzppw6k7qy97tmnu9", "regtest")

BIP34_TABLE = [
    (1, "51"),
    (2, "52"),
    (16, "60"),
    (17, "0111"),
    (127, "017f"),
    (128, "028000"),
    (255, "02ff00"),
    (256, "020001"),
    (32767, "02ff7f"),
    (32768, "03008000"),
    (65535, "03ffff00"),
    (65536, "03000001"),
    (8388607, "03ffff7f"),
    (8388608, "0400008000"),
    (951658, "036a850e"),
    (2**31 - 1, "04ffffff7f"),
]
# Every height through 70000 covers each 1-, 2- and 3-byte boundary; the table adds
# the 3/4-byte edges and the largest int32 height.
HEIGHTS = sorted(set(range(1, 70_000)) | {h for h, _ in BIP34_TABLE})


@pytest.mark.parametrize(("height", "push_hex"), BIP34_TABLE)
def test_bip34_table(height, push_hex):
    assert encode_bip34_height(height).hex() == push_hex
    assert decode_bip34_height(bytes.fromhex(push_hex)) == height


def test_bip34_decodes_back_as_minimal_script_number():
    for height in HEIGHTS:
        push = encode_bip34_height(height)
        assert decode_bip34_height(push + b"\xde\xad") == height
        if height <= 16:
            assert push == bytes((0x50 + height,))
            continue
        number = push[1:]
        assert push[0] == len(number)
        assert decode_script_num(number) == height
        # Minimal: the last byte carries magnitude bits unless it is a needed sign byte.
        assert number[-1] & 0x7F or (len(number) > 1 and number[-2] & 0x80)
        # Positive: the sign bit of the last byte is clear.
        assert not number[-1] & 0x80


@PROPERTY
@given(st.integers(min_value=1, max_value=2**31 - 1))
def test_bip34_round_trip(height):
    assert decode_bip34_height(encode_bip34_height(height)) == height


@PROPERTY
@given(st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1))
def test_script_num_round_trip(n):
    assert decode_script_num(encode_script_num(n)) == n


def test_script_num_signs():
    assert encode_script_num(0) == b""
    assert encode_script_num(-1).hex() == "81"
    assert encode_script_num(-128).hex() == "8080"
    assert encode_script_num(-255).hex() == "ff80"


@pytest.mark.parametrize("height", [0, -1, 2**31])
def test_bip34_height_range(height):
    with pytest.raises(ValueError):
        encode_bip34_height(height)


def test_decode_bip34_rejects_non_push():
    with pytest.raises(DecodeError):
        decode_bip34_height(b"")
    with pytest.raises(DecodeError):
        decode_bip34_height(b"\x6a")
    with pytest.raises(DecodeError):
        decode_bip34_height(b"\x03\x01\x02")


def test_push_data_sizes():
    assert push_data(b"") == b"\x00"
    assert push_data(b"\xaa" * 75)[:1] == b"\x4b"
    assert push_data(b"\xaa" * 76)[:2] == b"\x4c\x4c"
    assert push_data(b"\xaa" * 256)[:3] == b"\x4d\x00\x01"


def test_witness_commitment_script_shape():
    commitment = sha256d(b"x")
    script = witness_commitment_script(commitment)
    assert script == bytes.fromhex("6a24aa21a9ed") + commitment
    assert script.startswith(WITNESS_COMMITMENT_HEADER)
    assert witness_commitment(bytes(32)) == sha256d(bytes(64))


def test_find_witness_commitment_takes_last_match():
    first, second = sha256d(b"1"), sha256d(b"2")
    tx = Transaction(
        1,
        [],
        [
            TxOut(0, witness_commitment_script(first)),
            TxOut(0, b"\x51"),
            TxOut(0, witness_commitment_script(second) + b"\x00"),
        ],
    )
    assert find_witness_commitment(tx) == second
    assert find_witness_commitment(replace(tx, outputs=tx.outputs[1:2])) is None
    # A 37-byte script with the header is too short to qualify.
    short = TxOut(0, WITNESS_COMMITMENT_HEADER + bytes(31))
    assert find_witness_commitment(replace(tx, outputs=(short,))) is None


def test_template_concatenation_is_the_legacy_serialization():
    template = build_coinbase(1000, 50 * 10**8, PAYOUT, extranonce_size=8)
    extranonce = bytes(range(8))
    raw = template.coinb1 + extranonce + template.coinb2
    tx = Transaction.from_bytes(raw)
    assert tx.is_coinbase()
    assert tx.serialize(with_witness=False) == raw
    assert template.txid_internal(extranonce) == sha256d(raw) == tx.txid_internal()
    script_sig = tx.inputs[0].script_sig
    assert script_sig.startswith(encode_bip34_height(1000) + push_data(b"/gridminer/"))
    assert script_sig.endswith(bytes((8,)) + extranonce)
    assert tx.outputs == (TxOut(50 * 10**8, PAYOUT),)
    assert not tx.has_witness
    assert template.build(extranonce) == tx


def test_template_with_witness_commitment():
    commitment = sha256d(b"commit")
    extra = TxOut(0, b"\x6a\x04test")
    template = build_coinbase(
        5, 1234, PAYOUT, 4, tag=b"", witness_commitment=commitment, extra_outputs=[extra]
    )
    tx = template.build(b"\x01\x02\x03\x04")
    assert tx.inputs[0].script_sig == bytes.fromhex("55" "04" "01020304")
    assert [o.script_pubkey for o in tx.outputs] == [
        PAYOUT,
        extra.script_pubkey,
        witness_commitment_script(commitment),
    ]
    assert tx.outputs[-1].value_sats == 0
    assert tx.witnesses == ((bytes(32),),)
    assert find_witness_commitment(tx) == commitment
    # The txid is over the legacy bytes; the witness only changes the wtxid.
    assert tx.txid_internal() == template.txid_internal(b"\x01\x02\x03\x04")
    assert tx.wtxid_internal() != tx.txid_internal()


def test_script_sig_length_limits():
    with pytest.raises(ValueError, match="2..100"):
        build_coinbase(1, 0, PAYOUT, 0, tag=b"")
    assert build_coinbase(1, 0, PAYOUT, 1, tag=b"")  # OP_1 + push(1) + 1 byte = 3 bytes
    with pytest.raises(ValueError, match="2..100"):
        build_coinbase(1000, 0, PAYOUT, 8, tag=b"x" * 90)
    with pytest.raises(ValueError, match="extranonce_size"):
        build_coinbase(1000, 0, PAYOUT, 76)


def test_wrong_extranonce_length_rejected():
    template = build_coinbase(1000, 0, PAYOUT, 8)
    with pytest.raises(ValueError, match="8 bytes"):
        template.txid_internal(bytes(7))


@PROPERTY
@given(
    st.integers(min_value=1, max_value=2**31 - 1),
    st.integers(min_value=0, max_value=21 * 10**14),
    st.binary(max_size=40),
    st.integers(min_value=0, max_value=32),
    st.booleans(),
    st.data(),
)
def test_template_invariants(height, value, tag, extranonce_size, with_commitment, data):
    commitment = sha256d(tag) if with_commitment else None
    try:
        template = build_coinbase(
            height, value, PAYOUT, extranonce_size, tag=tag, witness_commitment=commitment
        )
    except ValueError:
        script_len = len(encode_bip34_height(height)) + (len(push_data(tag)) if tag else 0)
        script_len += extranonce_size + (1 if extranonce_size else 0)
        assert not 2 <= script_len <= 100
        return
    extranonce = data.draw(st.binary(min_size=extranonce_size, max_size=extranonce_size))
    tx = template.build(extranonce)
    assert tx.serialize(with_witness=False) == template.coinb1 + extranonce + template.coinb2
    assert decode_bip34_height(tx.inputs[0].script_sig) == height
    assert 2 <= len(tx.inputs[0].script_sig) <= 100
    assert find_witness_commitment(tx) == commitment
    assert tx.has_witness == with_commitment


def test_stratum_split_rebuilds_real_block_merkle_root():
    real = Block.from_bytes(bytes.fromhex(load_json("bitcoin_mainnet_951658.json")["block"]))
    others = real.transactions[1:]
    commitment = witness_commitment(witness_root([tx.wtxid_internal() for tx in others]))
    template = build_coinbase(951658, 3 * 10**8, PAYOUT, 8, witness_commitment=commitment)
    branch = coinbase_merkle_branch([tx.txid_internal() for tx in others])
    extranonce1, extranonce2 = bytes.fromhex("f000000d"), bytes.fromhex("00000001")

    # What a stratum miner does with mining.notify: coinbase hash, then fold the branch.
    coinbase_txid = sha256d(template.coinb1 + extranonce1 + extranonce2 + template.coinb2)
    root = root_from_branch(coinbase_txid, branch)

    header = replace(real.header, merkle_root_internal=root)
    block = block_from_parts(header, template.build(extranonce1 + extranonce2), others)
    assert block.compute_merkle_root() == root
    assert block.compute_witness_commitment() == commitment
    assert block.check() == []
    assert Block.from_bytes(block.serialize()) == block
