"""job_from_template on real templates (bcoin regtest, mainnet block 951658 as Core would send it) and random ones."""

from __future__ import annotations

import copy
import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import kernels
from miner.chain.block import Block
from miner.chain.coinbase import (
    WITNESS_COMMITMENT_HEADER,
    decode_bip34_height,
    find_witness_commitment,
    witness_commitment,
    witness_commitment_script,
)
from miner.chain.encoding import ByteReader
from miner.chain.hashes import internal_from_hex_display, sha256d
from miner.chain.header import BlockHeader
from miner.chain.merkle import root_from_branch, witness_root
from miner.chain.target import bits_to_target
from miner.chain.tx import MAX_MONEY_SATS, Transaction, TxIn, TxOut
from miner.work.job import Solution
from miner.work.template import TEMPLATE_ERROR_REASONS, TemplateError, job_from_template

from .support import PAYOUT_SCRIPT, PROPERTY, REGTEST_BITS, bcoin_template, job_for, load_json, solve, tx_entry

MAINNET = "bitcoin_mainnet_951658.json"
EMPTY_COMMITMENT = "e2f61c3f71d1defd3fa999dfa36953755c690689799962b48bebd836974e8cf9"


def mine_with_kernel(job, extranonce: bytes) -> Solution:
    header76 = job.header76(extranonce)
    nonces = kernels.search(header76, job.target, 0, 1 << 12)
    assert nonces, "an easy target should have hits in 4096 nonces"
    return Solution(job.job_id, extranonce, job.ntime, nonces[0], job.version)


# -- bcoin 1.0.2 regtest, height 1

def test_bcoin_regtest_template():
    template = bcoin_template()
    job = job_for(template, job_id="b1")
    assert job.height == 1
    assert job.version == 0x20000000
    assert job.bits == 0x207FFFFF
    assert job.target == 0x7FFFFF << 232 == int(template["target"], 16)
    assert job.prev_hash_hex_display == template["previousblockhash"]
    assert job.ntime == template["curtime"] and job.min_time == template["mintime"]
    assert job.merkle_branch == () and job.transactions == ()
    # rules is [] (segwit only "defined" on bcoin's regtest at height 1): the node's
    # default_witness_commitment must not be used.
    assert job.coinbase.witness_commitment is None

    extranonce = bytes(range(8))
    block = job.block(mine_with_kernel(job, extranonce))
    assert block.check(check_pow=True) == []
    (coinbase,) = block.transactions
    assert not coinbase.has_witness
    assert coinbase.inputs[0].script_sig[0] == 0x51  # OP_1: BIP34 height 1
    assert sum(o.value_sats for o in coinbase.outputs) == template["coinbasevalue"]
    assert coinbase.outputs[0].script_pubkey == PAYOUT_SCRIPT
    assert Block.from_bytes(block.serialize()) == block


def test_bcoin_default_commitment_matches_ours_when_segwit_is_active():
    template = bcoin_template()
    template["rules"] = ["csv", "!segwit"]
    job = job_for(template)
    assert job.coinbase.witness_commitment.hex() == EMPTY_COMMITMENT
    assert template["default_witness_commitment"] == "6a24aa21a9ed" + EMPTY_COMMITMENT
    block = job.block(solve(job))
    assert block.check(check_pow=True) == []
    assert block.transactions[0].witnesses == ((bytes(32),),)


def test_bcoin_default_commitment_ignored_while_segwit_inactive():
    template = bcoin_template()
    template["default_witness_commitment"] = "6a24aa21a9ed" + "00" * 32  # wrong, but unused
    assert job_for(template).coinbase.witness_commitment is None
    template["rules"] = ["segwit"]
    with pytest.raises(TemplateError) as e:
        job_for(template)
    assert e.value.reason == "commitment"


def test_ntime_override_clamped_to_mintime():
    template = bcoin_template()
    assert job_for(template, ntime=template["mintime"] - 5).ntime == template["mintime"]
    assert job_for(template, ntime=template["curtime"] + 7).ntime == template["curtime"] + 7
    del template["mintime"]
    job = job_for(template, ntime=5)
    assert job.ntime == 5 and job.min_time is None


# -- mainnet block 951658 as a Core template

def raw_transactions(block_hex: str) -> list[bytes]:
    """The exact bytes of each transaction in a serialized block, coinbase first."""
    reader = ByteReader(bytes.fromhex(block_hex))
    BlockHeader.read(reader)
    out = []
    raw = bytes.fromhex(block_hex)
    for _ in range(reader.read_count()):
        start = reader.position
        Transaction.read(reader)
        out.append(raw[start:reader.position])
    reader.expect_end()
    return out


def core_template(vector: dict) -> tuple[dict, Transaction, list[bytes]]:
    """(template, real coinbase, raw non-coinbase txs) for a getblock vector, as Core's GBT shapes it."""
    raws = raw_transactions(vector["block"])
    coinbase = Transaction.from_bytes(raws[0])
    commitment_script = next(
        o.script_pubkey for o in reversed(coinbase.outputs)
        if o.script_pubkey.startswith(WITNESS_COMMITMENT_HEADER)
    )
    template = {
        "capabilities": ["proposal"],
        "version": vector["version"],
        "rules": ["csv", "!segwit", "taproot"],
        "vbavailable": {},
        "vbrequired": 0,
        "previousblockhash": vector["previousblockhash"],
        "transactions": [tx_entry(Transaction.from_bytes(raw), raw) for raw in raws[1:]],
        "coinbaseaux": {},
        "coinbasevalue": sum(o.value_sats for o in coinbase.outputs),
        "longpollid": vector["previousblockhash"] + "1",
        "target": vector["target"],
        "mintime": vector["mediantime"] + 1,
        "mutable": ["time", "transactions", "prevblock"],
        "noncerange": "00000000ffffffff",
        "sigoplimit": 80000,
        "sizelimit": 4000000,
        "weightlimit": 4000000,
        "curtime": vector["time"],
        "bits": vector["bits"],
        "height": vector["height"],
        "default_witness_commitment": commitment_script.hex(),
    }
    return template, coinbase, raws[1:]


def test_mainnet_951658_template_reproduces_the_real_block():
    vector = load_json(MAINNET)
    template, real_coinbase, raws = core_template(vector)
    assert len(raws) + 1 == vector["nTx"] == 374
    job = job_for(template, job_id="m1")

    assert job.height == 951658 and job.version == 0x253AC004
    assert job.target == bits_to_target(0x1702068F)
    # The branch is the real coinbase's: folding its real txid gives the real root.
    assert root_from_branch(real_coinbase.txid_internal(), job.merkle_branch) == \
        internal_from_hex_display(vector["merkleroot"])
    # Our commitment, from the wtxids alone, is the one the real coinbase carries.
    assert job.coinbase.witness_commitment == find_witness_commitment(real_coinbase)
    assert template["default_witness_commitment"] == (
        WITNESS_COMMITMENT_HEADER + job.coinbase.witness_commitment
    ).hex()
    # Our coinbase starts with the same BIP34 push the real one does.
    assert job.coinbase.coinb1[42:46] == bytes.fromhex(vector["coinbase_tx"]["coinbase"])[:4] \
        == bytes.fromhex("036a850e")

    # On an easy target, a solved job is a complete, valid block holding every real tx.
    easy = copy.deepcopy(template)
    easy["bits"] = REGTEST_BITS
    del easy["target"]
    job = job_for(easy, job_id="m2")
    extranonce = bytes.fromhex("00112233445566ff")
    block = job.block(mine_with_kernel(job, extranonce))
    assert block.check(check_pow=True) == []
    assert len(block.transactions) == 374
    assert [tx.serialize() for tx in block.transactions[1:]] == raws
    assert block.transactions[0].witnesses == ((bytes(32),),)
    assert decode_bip34_height(block.transactions[0].inputs[0].script_sig) == 951658
    assert Block.from_bytes(block.serialize()) == block
    assert block.header.prev_hash_internal == internal_from_hex_display(vector["previousblockhash"])


def test_mainnet_template_with_a_tampered_commitment_is_refused():
    template, _, _ = core_template(load_json(MAINNET))
    script = bytearray.fromhex(template["default_witness_commitment"])
    script[-1] ^= 1
    template["default_witness_commitment"] = script.hex()
    with pytest.raises(TemplateError) as e:
        job_for(template)
    assert e.value.reason == "commitment"


def test_mainnet_transactions_with_witness_need_segwit():
    template, _, _ = core_template(load_json(MAINNET))
    template["rules"] = ["csv"]
    with pytest.raises(TemplateError) as e:
        job_for(template)
    assert e.value.reason == "witness_without_segwit"
    assert "segwit" in str(e.value)


@pytest.mark.parametrize(("height", "push_hex"), [
    (1, "51"), (16, "60"), (17, "0111"), (127, "017f"), (128, "028000"), (255, "02ff00"),
    (256, "020001"), (32768, "03008000"), (951658, "036a850e"),
])
def test_bip34_height_in_coinbase(height, push_hex):
    template = bcoin_template()
    template["height"] = height
    job = job_for(template)
    script_sig = job.coinbase.build(bytes(8)).inputs[0].script_sig
    assert script_sig.startswith(bytes.fromhex(push_hex))
    assert decode_bip34_height(script_sig) == height
    assert job.block(solve(job)).check(check_pow=True) == []


# -- refusals, one per reason

def _with(**changes):
    def mutate(t):
        for key, value in changes.items():
            if value is DELETE:
                t.pop(key, None)
            else:
                t[key] = value
    return mutate


DELETE = object()
LEGACY_TX = Transaction(1, (TxIn(sha256d(b"a"), 0, b"\x51"),), (TxOut(1000, b"\x51"),))
WITNESS_TX = Transaction(2, (TxIn(sha256d(b"b"), 1, b""),), (TxOut(2000, b"\x51"),), 0, ((b"\x01" * 33,),))
COINBASE_LIKE = Transaction(1, (TxIn(bytes(32), 0xFFFFFFFF, b"\x51\x51"),), (TxOut(0, b"\x51"),))


def _tx_mutation(fn):
    def mutate(t):
        t["transactions"] = [tx_entry(LEGACY_TX), tx_entry(WITNESS_TX)]
        t["rules"] = ["segwit"]
        t.pop("default_witness_commitment")
        fn(t)
    return mutate


REFUSALS = [
    ("not_a_dict", None, "malformed"),
    ("height_missing", _with(height=DELETE), "height"),
    ("height_zero", _with(height=0), "height"),
    ("height_string", _with(height="1"), "height"),
    ("height_bool", _with(height=True), "height"),
    ("height_float", _with(height=1.0), "height"),
    ("height_huge", _with(height=1 << 31), "height"),
    ("version_string", _with(version="20000000"), "version"),
    ("version_too_big", _with(version=1 << 32), "version"),
    ("bits_missing", _with(bits=DELETE), "bits"),
    ("bits_short", _with(bits="207fff"), "bits"),
    ("bits_not_hex", _with(bits="207fffzz"), "bits"),
    ("bits_space", _with(bits="207 ffff"), "bits"),
    ("bits_number", _with(bits=0x207FFFFF), "bits"),
    ("bits_negative", _with(bits="20ffffff", target=DELETE), "bits"),
    ("bits_overflow", _with(bits="ff7fffff", target=DELETE), "bits"),
    ("bits_zero", _with(bits="00000000", target=DELETE), "bits"),
    ("target_disagrees", _with(target="7ffffe" + "0" * 58), "target_mismatch"),
    ("target_short", _with(target="7fffff"), "target_mismatch"),
    ("prevhash_missing", _with(previousblockhash=DELETE), "prevhash"),
    ("prevhash_short", _with(previousblockhash="0f9188f1"), "prevhash"),
    ("prevhash_not_hex", _with(previousblockhash="x" * 64), "prevhash"),
    ("curtime_missing", _with(curtime=DELETE), "time"),
    ("curtime_negative", _with(curtime=-1), "time"),
    ("mintime_string", _with(mintime="1296688603"), "time"),
    ("coinbasevalue_missing", _with(coinbasevalue=DELETE), "coinbasevalue"),
    ("coinbasevalue_negative", _with(coinbasevalue=-1), "coinbasevalue"),
    ("coinbasevalue_too_big", _with(coinbasevalue=MAX_MONEY_SATS + 1), "coinbasevalue"),
    ("coinbasevalue_btc_float", _with(coinbasevalue=50.0), "coinbasevalue"),
    ("rules_string", _with(rules="segwit"), "rules"),
    ("rules_numbers", _with(rules=[1]), "rules"),
    ("rule_signet", _with(rules=["!signet", "!segwit"]), "unsupported_rule"),
    ("transactions_missing", _with(transactions=DELETE), "transaction"),
    ("transactions_dict", _with(transactions={}), "transaction"),
    ("tx_not_object", _tx_mutation(lambda t: t["transactions"].append("00")), "transaction"),
    ("tx_no_data", _tx_mutation(lambda t: t["transactions"][0].pop("data")), "transaction"),
    ("tx_data_not_hex", _tx_mutation(lambda t: t["transactions"][0].update(data="zz")), "transaction"),
    ("tx_data_truncated",
     _tx_mutation(lambda t: t["transactions"][0].update(data=t["transactions"][0]["data"][:-2])), "transaction"),
    ("tx_data_trailing",
     _tx_mutation(lambda t: t["transactions"][0].update(data=t["transactions"][0]["data"] + "00")), "transaction"),
    ("tx_coinbase", _tx_mutation(lambda t: t["transactions"].append(tx_entry(COINBASE_LIKE))), "transaction"),
    ("txid_wrong", _tx_mutation(lambda t: t["transactions"][0].update(txid="00" * 32)), "txid_mismatch"),
    ("txid_is_wtxid",
     _tx_mutation(lambda t: t["transactions"][1].update(txid=t["transactions"][1]["hash"])), "txid_mismatch"),
    ("txid_not_hex", _tx_mutation(lambda t: t["transactions"][0].update(txid=5)), "txid_mismatch"),
    ("wtxid_is_txid",
     _tx_mutation(lambda t: t["transactions"][1].update(hash=t["transactions"][1]["txid"])), "wtxid_mismatch"),
    ("tx_duplicate", _tx_mutation(lambda t: t["transactions"].append(dict(t["transactions"][0]))), "duplicate_tx"),
    ("witness_without_segwit", _tx_mutation(lambda t: t.update(rules=["csv"])), "witness_without_segwit"),
    ("commitment_wrong",
     _tx_mutation(lambda t: t.update(default_witness_commitment="6a24aa21a9ed" + EMPTY_COMMITMENT)), "commitment"),
    ("commitment_not_string",
     _tx_mutation(lambda t: t.update(default_witness_commitment=None)), "commitment"),
    ("commitment_not_hex",
     _tx_mutation(lambda t: t.update(default_witness_commitment="6a24aa21a9edzz")), "commitment"),
]


@pytest.mark.parametrize(("name", "mutate", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(name, mutate, reason):
    template = "[]" if mutate is None else bcoin_template()
    if mutate is not None:
        mutate(template)
    with pytest.raises(TemplateError) as e:
        job_for(template)
    assert e.value.reason == reason
    assert isinstance(e.value, ValueError)


def test_the_tx_mutation_base_is_valid():
    template = bcoin_template()
    _tx_mutation(lambda t: None)(template)
    job = job_for(template)
    assert job.block(solve(job)).check(check_pow=True) == []


def test_coinbase_too_long_for_the_tag():
    with pytest.raises(TemplateError) as e:
        job_for(bcoin_template(), tag=b"x" * 95)
    assert e.value.reason == "coinbase"


def test_every_reason_has_a_refusal_test():
    covered = {reason for _, _, reason in REFUSALS} | {"coinbase"}
    assert covered == TEMPLATE_ERROR_REASONS


def test_caller_arguments_are_checked():
    with pytest.raises(ValueError):
        job_from_template(bcoin_template(), payout_script=b"", job_id="x", clean=True)
    with pytest.raises(ValueError):
        job_for(bcoin_template(), ntime=1 << 32)


# -- properties

@st.composite
def random_tx(draw, index: int) -> Transaction:
    """A random non-coinbase tx; its outpoints depend on index so no two txs collide."""
    n_in = draw(st.integers(1, 3))
    inputs = tuple(
        TxIn(sha256d(b"%d/%d" % (index, i)), draw(st.integers(0, 0xFFFFFFFF)),
             draw(st.binary(max_size=30)), draw(st.integers(0, 0xFFFFFFFF)))
        for i in range(n_in)
    )
    outputs = tuple(
        TxOut(draw(st.integers(0, MAX_MONEY_SATS)), draw(st.binary(max_size=30)))
        for _ in range(draw(st.integers(0, 3)))
    )
    witnesses = ()
    if draw(st.booleans()):
        witnesses = tuple(tuple(draw(st.lists(st.binary(max_size=40), max_size=3))) for _ in inputs)
    return Transaction(draw(st.integers(0, 0xFFFFFFFF)), inputs, outputs,
                       draw(st.integers(0, 0xFFFFFFFF)), witnesses)


@st.composite
def random_template(draw) -> tuple[dict, list[Transaction]]:
    txs = [draw(random_tx(i)) for i in range(draw(st.integers(0, 12)))]
    segwit = any(tx.has_witness for tx in txs) or draw(st.booleans())
    template = bcoin_template()
    template.update(
        height=draw(st.integers(1, (1 << 31) - 1)),
        version=draw(st.integers(0, 0xFFFFFFFF)),
        previousblockhash=draw(st.binary(min_size=32, max_size=32)).hex(),
        curtime=draw(st.integers(0, 0xFFFFFFFF)),
        mintime=draw(st.integers(0, 0xFFFFFFFF)),
        coinbasevalue=draw(st.integers(0, MAX_MONEY_SATS)),
        rules=draw(st.sampled_from([["segwit"], ["csv", "!segwit", "taproot"]])) if segwit else [],
        transactions=[tx_entry(tx) for tx in txs],
    )
    if draw(st.booleans()):
        del template["default_witness_commitment"]
    elif segwit:
        template["default_witness_commitment"] = witness_commitment_script(
            witness_commitment(witness_root([tx.wtxid_internal() for tx in txs]))).hex()
    return template, txs


@PROPERTY
@given(random_template(), st.binary(min_size=8, max_size=8))
def test_random_valid_templates_give_blocks_that_check_clean(template_and_txs, extranonce):
    template, txs = template_and_txs
    job = job_for(template)
    assert job.ntime == max(template["curtime"], template["mintime"])
    assert job.transactions == tuple(txs)
    block = job.block(solve(job, extranonce))
    assert block.check(check_pow=True) == []
    assert block.transactions[1:] == tuple(txs)
    assert decode_bip34_height(block.transactions[0].inputs[0].script_sig) == template["height"]
    assert (job.coinbase.witness_commitment is not None) == ("segwit" in template["rules"]
                                                             or "!segwit" in template["rules"])
    assert Block.from_bytes(block.serialize()) == block


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=True)
    | st.text(max_size=70) | st.text(alphabet=string.hexdigits, max_size=70),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
TOP_FIELDS = ["height", "version", "bits", "target", "previousblockhash", "curtime", "mintime",
              "coinbasevalue", "rules", "transactions", "default_witness_commitment"]
TX_FIELDS = ["data", "txid", "hash"]


def _outcome(template):
    try:
        job_for(template)
    except TemplateError as e:
        assert e.reason in TEMPLATE_ERROR_REASONS
        return e.reason
    return None


@PROPERTY
@given(random_template(), st.sampled_from(TOP_FIELDS), st.one_of(st.just(DELETE), json_values))
def test_mutated_top_level_fields_give_template_errors_only(template_and_txs, field, value):
    template, _ = template_and_txs
    if value is DELETE:
        template.pop(field, None)
    else:
        template[field] = value
    _outcome(template)


@PROPERTY
@given(random_template(), st.data())
def test_mutated_transaction_entries_give_template_errors_only(template_and_txs, data):
    template, txs = template_and_txs
    assume(txs)
    i = data.draw(st.integers(0, len(txs) - 1))
    field = data.draw(st.sampled_from(TX_FIELDS))
    entry = template["transactions"][i]
    how = data.draw(st.sampled_from(["delete", "json", "flip", "truncate"]))
    if how == "delete":
        entry.pop(field)
    elif how == "json":
        entry[field] = data.draw(json_values)
    else:
        raw = bytearray.fromhex(entry[field])
        if how == "flip":
            pos = data.draw(st.integers(0, len(raw) - 1))
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        else:
            del raw[data.draw(st.integers(0, len(raw) - 1)):]
        entry[field] = raw.hex()
        reason = _outcome(template)
        # txid and hash are checked against data, so any change is a mismatch; a changed
        # data is either unparseable or no longer the tx its txid/hash name.
        expected = {"txid": {"txid_mismatch"}, "hash": {"wtxid_mismatch"},
                    "data": {"transaction", "txid_mismatch", "wtxid_mismatch"}}[field]
        assert reason in expected
        return
    _outcome(template)


@PROPERTY
@given(json_values)
def test_any_json_value_as_a_template_gives_template_errors_only(value):
    _outcome(value)
