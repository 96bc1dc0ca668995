"""Real blocks from mainnet, testnet3, testnet4 and signet, byte for byte."""

import functools
from dataclasses import replace

import pytest

from miner.chain.block import Block, BlockError, block_from_parts
from miner.chain.coinbase import (
    WITNESS_COMMITMENT_HEADER,
    decode_bip34_height,
    encode_bip34_height,
    find_witness_commitment,
)
from miner.chain.encoding import DecodeError
from miner.chain.hashes import hex_display_from_internal
from miner.chain.networks import get_network
from miner.chain.tx import TxOut

from .vectors import load_bytes, load_json

# getblock-style vectors: (file, network).
RPC_BLOCKS = [
    ("bitcoin_mainnet_951658.json", "mainnet"),
    ("bitcoin_testnet4_40000.json", "testnet4"),
    ("bitcoin_signet_31500.json", "signet"),
]
TESTNET3_ROWS = load_json("testnet3_blocks_blockfilters.json")[1:]


@functools.cache
def parsed(key: str) -> tuple[Block, bytes]:
    """(block, raw bytes) for a JSON file name, 'testnet3:<height>' or a .raw file."""
    if key.endswith(".raw"):
        raw = load_bytes(key)
    elif key.startswith("testnet3:"):
        height = int(key.split(":")[1])
        raw = bytes.fromhex(next(row[2] for row in TESTNET3_ROWS if row[0] == height))
    else:
        raw = bytes.fromhex(load_json(key)["block"])
    return Block.from_bytes(raw), raw


def test_genesis_block():
    vector = load_json("mainnet_genesis.json")
    block, raw = parsed("mainnet_genesis.json")
    assert len(raw) == vector["size"] == 285
    assert block.hash_hex_display() == vector["hash"]
    (coinbase,) = block.transactions
    assert coinbase.is_coinbase()
    assert coinbase.txid_hex_display() == vector["merkleroot"]
    assert hex_display_from_internal(block.compute_merkle_root()) == vector["merkleroot"]
    assert block.serialize() == raw
    assert block.compute_witness_commitment() is None
    assert block.check(check_pow=True) == []
    # The genesis coinbase predates BIP34: its scriptSig starts with the bits, not a height.
    assert decode_bip34_height(coinbase.inputs[0].script_sig) == 0x1D00FFFF


@pytest.mark.parametrize(("name", "network"), RPC_BLOCKS)
def test_rpc_block_vectors(name, network):
    vector = load_json(name)
    block, raw = parsed(name)
    assert block.hash_hex_display() == vector["hash"]
    assert hex_display_from_internal(block.header.prev_hash_internal) == vector["previousblockhash"]
    assert (block.header.time, block.header.nonce) == (vector["time"], vector["nonce"])
    assert block.header.bits == int(vector["bits"], 16)
    assert [tx.txid_hex_display() for tx in block.transactions] == vector["tx"]
    assert hex_display_from_internal(block.compute_merkle_root()) == vector["merkleroot"]
    assert block.serialize(with_witness=True) == raw
    assert block.size() == vector["size"]
    assert block.check(check_pow=True) == []
    assert block.header.target() <= get_network(network).pow_limit
    coinbase = block.transactions[0]
    assert coinbase.inputs[0].script_sig.startswith(encode_bip34_height(vector["height"]))
    committed = find_witness_commitment(coinbase)
    if committed is not None:
        assert block.compute_witness_commitment() == committed


def test_mainnet_951658_details():
    vector = load_json("bitcoin_mainnet_951658.json")
    block, _ = parsed("bitcoin_mainnet_951658.json")
    assert len(block.transactions) == vector["nTx"] == 374
    assert block.header.version == vector["version"]
    assert block.stripped_size() == vector["strippedsize"]
    assert block.size() == vector["size"]
    assert block.weight() == vector["weight"]
    coinbase = block.transactions[0]
    assert coinbase.version == vector["coinbase_tx"]["version"]
    assert coinbase.inputs[0].script_sig.hex() == vector["coinbase_tx"]["coinbase"]
    assert coinbase.inputs[0].script_sig.startswith(bytes.fromhex("036a850e"))
    assert coinbase.witnesses == ((bytes.fromhex(vector["coinbase_tx"]["witness"]),),)
    # Taproot-era block: the commitment rebuilt from every wtxid equals the coinbase's.
    assert sum(tx.has_witness for tx in block.transactions[1:]) > 100
    assert block.compute_witness_commitment() == find_witness_commitment(coinbase)


def test_witness_blocks_really_carry_commitments():
    for name, _ in RPC_BLOCKS:
        block, _ = parsed(name)
        assert find_witness_commitment(block.transactions[0]) is not None, name


@pytest.mark.parametrize("height", [row[0] for row in TESTNET3_ROWS])
def test_testnet3_blockfilter_blocks(height):
    row = next(r for r in TESTNET3_ROWS if r[0] == height)
    block, raw = parsed(f"testnet3:{height}")
    assert block.hash_hex_display() == row[1]
    assert block.serialize() == raw
    assert block.compute_merkle_root() == block.header.merkle_root_internal
    assert block.check(check_pow=True) == []
    committed = find_witness_commitment(block.transactions[0])
    if committed is not None:
        assert block.compute_witness_commitment() == committed
    if height >= get_network("testnet").bip34_height:
        assert decode_bip34_height(block.transactions[0].inputs[0].script_sig) == height


def test_testnet3_witness_block_has_witness_data():
    block, _ = parsed("testnet3:1263442")
    assert any(tx.has_witness for tx in block.transactions[1:])
    assert block.size() > block.stripped_size()
    assert block.weight() < 4 * block.size()


def test_mainnet_413567_raw():
    block, raw = parsed("mainnet_413567.raw")
    assert len(block.transactions) > 1000
    assert block.serialize() == raw
    assert block.compute_merkle_root() == block.header.merkle_root_internal
    assert block.check(check_pow=True) == []
    assert not any(tx.has_witness for tx in block.transactions)
    assert block.compute_witness_commitment() is None
    assert block.weight() == 4 * len(raw)
    assert decode_bip34_height(block.transactions[0].inputs[0].script_sig) == 413567


@pytest.mark.parametrize("key", ["mainnet_genesis.json", "bitcoin_signet_31500.json", "testnet3:2"])
def test_every_truncation_raises(key):
    _, raw = parsed(key)
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            Block.from_bytes(raw[:cut])


@pytest.mark.parametrize("key", ["mainnet_genesis.json", "bitcoin_signet_31500.json"])
def test_trailing_bytes_raise(key):
    _, raw = parsed(key)
    with pytest.raises(DecodeError, match="trailing"):
        Block.from_bytes(raw + b"\x00")


def test_cve_2012_2459_duplicated_transactions_detected():
    # Five transactions: repeating the odd last one leaves the merkle root unchanged.
    block, _ = parsed("testnet3:180480")
    assert len(block.transactions) == 5
    mutated = replace(block, transactions=block.transactions + block.transactions[-1:])
    assert mutated.compute_merkle_root() == block.header.merkle_root_internal
    problems = mutated.check()
    assert any(p.startswith("bad-txns-duplicate") for p in problems)
    assert not any(p.startswith("bad-txnmrklroot") for p in problems)


def test_structural_problems_reported():
    block, _ = parsed("bitcoin_signet_31500.json")
    coinbase, *rest = block.transactions

    swapped = replace(block, transactions=(*rest, coinbase))
    assert any(p.startswith("bad-cb-missing") for p in swapped.check())
    assert any(p.startswith("bad-txnmrklroot") for p in swapped.check())

    wrong_root = replace(block, header=replace(block.header, merkle_root_internal=bytes(32)))
    assert any(p.startswith("bad-txnmrklroot") for p in wrong_root.check())
    with pytest.raises(BlockError, match="bad-txnmrklroot"):
        wrong_root.validate()

    assert replace(block, transactions=()).check() == ["bad-blk-length: block has no transactions"]
    unmined = replace(block, header=block.header.with_nonce(0))
    assert any(p.startswith("high-hash") for p in unmined.check(check_pow=True))


def test_witness_problems_reported():
    block, _ = parsed("bitcoin_mainnet_951658.json")
    coinbase = block.transactions[0]
    index = next(i for i, tx in enumerate(block.transactions) if i and tx.has_witness)
    segwit_tx = block.transactions[index]

    # Changing a witness leaves the txid (and merkle root) alone but breaks the commitment.
    stacks = list(segwit_tx.witnesses)
    stacks[0] = stacks[0] + (b"\x00",)
    txs = list(block.transactions)
    txs[index] = replace(segwit_tx, witnesses=tuple(stacks))
    tampered = replace(block, transactions=tuple(txs))
    assert tampered.compute_merkle_root() == block.header.merkle_root_internal
    assert [p.split(":")[0] for p in tampered.check()] == ["bad-witness-merkle-match"]

    plain_outputs = tuple(
        o for o in coinbase.outputs if not o.script_pubkey.startswith(WITNESS_COMMITMENT_HEADER)
    )
    no_commitment = replace(coinbase, outputs=plain_outputs)
    stripped = replace(block, transactions=(no_commitment, *block.transactions[1:]))
    assert "unexpected-witness" in [p.split(":")[0] for p in stripped.check()]

    bad_nonce = replace(coinbase, witnesses=((bytes(31),),))
    nonce_block = replace(block, transactions=(bad_nonce, *block.transactions[1:]))
    assert "bad-witness-nonce-size" in [p.split(":")[0] for p in nonce_block.check()]


def test_block_from_parts_keeps_order():
    block, _ = parsed("bitcoin_testnet4_40000.json")
    rebuilt = block_from_parts(block.header, block.transactions[0], block.transactions[1:])
    assert rebuilt == block
    coinbase = block.transactions[0]
    extra = replace(coinbase, outputs=coinbase.outputs + (TxOut(0, b"\x6a"),))
    changed = block_from_parts(block.header, extra, block.transactions[1:])
    assert any(p.startswith("bad-txnmrklroot") for p in changed.check())
