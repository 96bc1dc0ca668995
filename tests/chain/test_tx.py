"""Transactions: strict legacy/BIP144 parsing, round trips, txid vs wtxid."""

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miner.chain.block import Block
from miner.chain.encoding import DecodeError
from miner.chain.tx import MAX_MONEY_SATS, Transaction, TxIn, TxOut

from .vectors import PROPERTY, load_json

u32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
scripts = st.binary(max_size=80)

tx_ins = st.builds(TxIn, st.binary(min_size=32, max_size=32), u32, scripts, u32)
tx_outs = st.builds(TxOut, st.integers(min_value=0, max_value=MAX_MONEY_SATS), scripts)
stacks = st.lists(st.binary(max_size=80), max_size=4).map(tuple)


@st.composite
def transactions(draw, witness=None):
    inputs = draw(st.lists(tx_ins, min_size=1, max_size=4))
    outputs = draw(st.lists(tx_outs, max_size=4))
    use_witness = draw(st.booleans()) if witness is None else witness
    witnesses = ()
    if use_witness:
        witnesses = tuple(draw(stacks) for _ in inputs)
    return Transaction(draw(u32), inputs, outputs, draw(u32), witnesses)


def _segwit_tx_from_real_block() -> Transaction:
    block = Block.from_bytes(bytes.fromhex(load_json("bitcoin_mainnet_951658.json")["block"]))
    return next(tx for tx in block.transactions[1:] if tx.has_witness)


@PROPERTY
@given(transactions())
def test_round_trip(tx):
    raw = tx.serialize()
    parsed = Transaction.from_bytes(raw)
    assert parsed == tx
    assert parsed.serialize() == raw
    legacy = tx.serialize(with_witness=False)
    assert Transaction.from_bytes(legacy) == replace(tx, witnesses=())
    assert tx.txid_internal() == Transaction.from_bytes(legacy).txid_internal()


@PROPERTY
@given(transactions(witness=False))
def test_wtxid_equals_txid_without_witness(tx):
    assert not tx.has_witness
    assert tx.wtxid_internal() == tx.txid_internal()
    assert tx.size() == tx.stripped_size()
    assert tx.weight() == 4 * tx.size()


def test_witness_tx_ids_and_sizes():
    tx = _segwit_tx_from_real_block()
    assert tx.has_witness
    assert tx.wtxid_internal() != tx.txid_internal()
    assert tx.serialize()[4:6] == b"\x00\x01"
    assert tx.size() > tx.stripped_size()
    assert tx.weight() == 3 * tx.stripped_size() + tx.size()
    assert tx.txid_hex_display() == tx.txid_internal()[::-1].hex()
    assert tx.wtxid_hex_display() == tx.wtxid_internal()[::-1].hex()


@pytest.mark.parametrize("with_witness", [True, False])
def test_every_truncation_raises(with_witness):
    raw = _segwit_tx_from_real_block().serialize(with_witness)
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            Transaction.from_bytes(raw[:cut])


@pytest.mark.parametrize("with_witness", [True, False])
def test_trailing_bytes_raise(with_witness):
    raw = _segwit_tx_from_real_block().serialize(with_witness)
    with pytest.raises(DecodeError, match="trailing"):
        Transaction.from_bytes(raw + b"\x00")


def test_unknown_segwit_flag_rejected():
    raw = bytearray(_segwit_tx_from_real_block().serialize())
    raw[5] = 0x02
    with pytest.raises(DecodeError, match="unknown transaction optional data"):
        Transaction.from_bytes(bytes(raw))


def test_superfluous_witness_rejected():
    tx = Transaction(2, [TxIn(bytes(32), 0, b"\x51")], [TxOut(1, b"\x51")])
    legacy = tx.serialize()
    # Extended form whose only witness stack is empty: version | 00 01 | ins | outs | 00 | locktime.
    extended = legacy[:4] + b"\x00\x01" + legacy[4:-4] + b"\x00" + legacy[-4:]
    with pytest.raises(DecodeError, match="superfluous witness"):
        Transaction.from_bytes(extended)


def test_non_canonical_script_length_rejected():
    tx = Transaction(1, [TxIn(bytes(32), 0, b"\x51")], [TxOut(1, b"\x51")])
    raw = tx.serialize()
    script_len_at = 4 + 1 + 36
    assert raw[script_len_at] == 1
    bad = raw[:script_len_at] + b"\xfd\x01\x00" + raw[script_len_at + 1:]
    with pytest.raises(DecodeError, match="non-canonical"):
        Transaction.from_bytes(bad)


def test_negative_output_value_rejected():
    raw = bytearray(Transaction(1, [TxIn(bytes(32), 0, b"")], [TxOut(1, b"")]).serialize())
    value_at = 4 + 1 + 41 + 1
    raw[value_at:value_at + 8] = (-1).to_bytes(8, "little", signed=True)
    with pytest.raises(DecodeError, match="output value out of range"):
        Transaction.from_bytes(bytes(raw))


def test_all_empty_witness_normalised_to_none():
    txin = TxIn(bytes(32), 0, b"")
    assert Transaction(1, [txin], [], 0, ((),)) == Transaction(1, [txin], [], 0, ())
    assert not Transaction(1, [txin], [], 0, ((),)).has_witness


def test_coinbase_detection():
    coinbase = Transaction(1, [TxIn(bytes(32), 0xFFFFFFFF, b"\x51\x51")], [TxOut(0, b"")])
    assert coinbase.is_coinbase()
    assert not replace(coinbase, inputs=(TxIn(bytes(32), 0, b"\x51\x51"),)).is_coinbase()


@pytest.mark.parametrize(
    "build",
    [
        lambda: TxIn(bytes(31), 0, b""),
        lambda: TxIn(bytes(32), -1, b""),
        lambda: TxIn(bytes(32), 0, b"", 1 << 32),
        lambda: TxOut(-1, b""),
        lambda: TxOut(MAX_MONEY_SATS + 1, b""),
        lambda: Transaction(-1, [], []),
        lambda: Transaction(1, [TxIn(bytes(32), 0, b"")], [], 0, ((b"a",), (b"b",))),
    ],
)
def test_constructor_validation(build):
    with pytest.raises(ValueError):
        build()


def test_script_must_be_bytes():
    with pytest.raises(TypeError):
        TxOut(0, "51")
