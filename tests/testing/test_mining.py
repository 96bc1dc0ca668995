"""miner.testing's node and mining API against a real regtest node.

The coinbase spend uses no wallet and no key: the blocks pay P2SH(OP_TRUE), which
anyone can spend with the redeem script as scriptSig, so the test controls exactly
which coinbase is spent.
"""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miner.chain.address import address_to_script, p2sh_script, script_to_address
from miner.chain.block import Block
from miner.chain.tx import Transaction, TxIn, TxOut
from miner.testing import MiningError, MiningTimeout, RegtestNode, RegtestUnavailable, mine, mine_until
from miner.testing import mining
from miner.testing.mining import COINBASE_TAG, _parents_first
from miner.testing.node import preferred_kind
from miner.work.gbt import GBT_PARAMS

OP_TRUE = b"\x51"
# HASH160(OP_TRUE): Core's functional tests fund P2SH(OP_TRUE) the same way.
OP_TRUE_HASH160 = bytes.fromhex("da1745e9b549bd0bfa1a569971c77eba30cd5a4b")
FEE_SATS = 10_000


def op_true_address(node: RegtestNode) -> str:
    return script_to_address(p2sh_script(OP_TRUE_HASH160), node.network_name)


def block_from_node(node: RegtestNode, block_hash: str) -> Block:
    return Block.from_bytes(bytes.fromhex(node.call("getblock", block_hash, False)))


def test_op_true_hash_is_hash160_of_op_true():
    try:
        ripemd = hashlib.new("ripemd160", hashlib.sha256(OP_TRUE).digest()).digest()
    except ValueError:
        pytest.skip("this OpenSSL has no ripemd160")
    assert ripemd == OP_TRUE_HASH160


def test_mine_101_blocks_and_spend_a_coinbase(api_node):
    node = api_node
    start = node.call("getblockcount")
    blocks = mine(node, 101, op_true_address(node))
    assert len(blocks) == 101 and node.call("getblockcount") == start + 101
    assert node.call("getbestblockhash") == blocks[-1]

    coinbase = block_from_node(node, blocks[0]).transactions[0]
    assert coinbase.is_coinbase() and coinbase.outputs[0].script_pubkey == p2sh_script(OP_TRUE_HASH160)
    # scriptSig: push of the redeem script (one byte 0x51: a 1-byte push, minimal).
    spend = Transaction(2, (TxIn(coinbase.txid_internal(), 0, b"\x01" + OP_TRUE),),
                        (TxOut(coinbase.outputs[0].value_sats - FEE_SATS,
                               address_to_script(node.new_address("legacy"), node.network_name)),))
    txid = node.call("sendrawtransaction", spend.serialize().hex())
    assert txid == spend.txid_hex_display()
    node.wait_for_mempool(txid)  # accepted by the node (bcoin answers a txid before checking)

    [confirming] = mine(node, 1)
    assert txid in node.call("getblock", confirming)["tx"]
    assert txid not in node.call("getrawmempool")


def test_blocks_are_built_by_gridminer_not_by_the_node(api_node):
    node = api_node
    address = op_true_address(node)
    for block_hash in mine(node, 2, address):
        block = block_from_node(node, block_hash)
        coinbase = block.transactions[0]
        assert COINBASE_TAG in coinbase.inputs[0].script_sig  # our coinbase, not generatetoaddress's
        assert coinbase.outputs[0].script_pubkey == address_to_script(address, node.network_name)
        assert block.check(check_pow=True) == []


def test_mine_to_a_core_style_address_on_any_regtest_node(api_node):
    """bcrt1 (Core) and rb1 (bcoin) are both regtest: either node can pay either."""
    program = bytes(range(20))
    for network in ("regtest", "bcoin-regtest"):
        address = script_to_address(bytes((0, 20)) + program, network)
        [block_hash] = mine(api_node, 1, address)
        assert block_from_node(api_node, block_hash).transactions[0].outputs[0].script_pubkey \
            == bytes((0, 20)) + program


def test_mine_includes_mempool_transactions_even_with_a_cached_template(api_node):
    node = api_node
    mine(node, 101)  # mature coins for the node's wallet (legacy: spendable before segwit)
    first = node.wallet_call("sendtoaddress", node.new_address("legacy"), 1)
    node.wait_for_mempool(first)
    # Someone asks for a template now (a pool would): the node caches it, and a
    # transaction arriving within the next seconds is left out of what it serves.
    node.call("getblocktemplate", GBT_PARAMS)
    second = node.wallet_call("sendtoaddress", node.new_address("legacy"), 2)
    node.wait_for_mempool(second)
    served = {tx["txid"] for tx in node.call("getblocktemplate", GBT_PARAMS)["transactions"]}

    [block_hash] = mine(node, 1)
    mined = node.call("getblock", block_hash)["tx"]
    assert first in mined and second in mined
    assert node.call("getrawmempool") == []
    if node.kind == "bcoin":
        assert second not in served  # the case mine() had to cover (bcoin 1.0.2's 10 s cache)


def test_mine_until(api_node):
    node = api_node
    target = node.call("getblockcount") + 3
    hashes = mine_until(node, lambda: node.call("getblockcount") >= target, timeout=30)
    assert len(hashes) == 3 and node.call("getblockcount") == target
    assert mine_until(node, lambda: True, timeout=1) == []
    with pytest.raises(MiningTimeout, match="after 2 blocks"):
        mine_until(node, lambda: False, timeout=30, max_blocks=2)
    assert node.call("getblockcount") == target + 2


def test_mine_refuses_bad_arguments(api_node):
    assert mine(api_node, 0) == []
    with pytest.raises(ValueError, match="n must be"):
        mine(api_node, -1)
    with pytest.raises(ValueError, match="cannot mine to"):
        mine(api_node, 1, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4")  # a mainnet address


def test_a_refused_block_raises_with_the_node_reason(api_node):
    """A coinbase claiming one satoshi more than the block may pay: the node's reason reaches the caller."""
    node = api_node
    template = node.call("getblocktemplate", GBT_PARAMS)
    template["coinbasevalue"] += 1
    job = mining._job(template, address_to_script(op_true_address(node), node.network_name))
    before = node.call("getblockcount")
    with pytest.raises(MiningError, match=r"refused block [0-9a-f]{64} at height \d+: bad-cb-amount"):
        mining._solve_and_submit(node, job, None)
    assert node.call("getblockcount") == before


def _chain(n: int) -> list[Transaction]:
    """n transactions, each spending the previous one's output."""
    txs: list[Transaction] = []
    prev = bytes(32)
    for i in range(n):
        tx = Transaction(2, (TxIn(prev, 0, b"\x01" + OP_TRUE),), (TxOut(1000 - i, b"\x51"),))
        txs.append(tx)
        prev = tx.txid_internal()
    return txs


@given(st.integers(1, 8).flatmap(lambda n: st.permutations(range(n))))
def test_mempool_transactions_are_added_parents_first(order):
    chain = _chain(len(order))
    shuffled = {chain[i].txid_hex_display(): chain[i] for i in order}
    assert _parents_first(shuffled) == chain


# --- the node class -------------------------------------------------------------------


def test_preferred_kind(tmp_path, monkeypatch):
    monkeypatch.delenv("GRIDMINER_REGTEST_NODE", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert preferred_kind() == "bcoin"  # no bitcoind on PATH
    fake = tmp_path / "bitcoind"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert preferred_kind() == "bitcoind"  # Core first when it is installed
    assert preferred_kind("bcoin") == "bcoin"
    assert preferred_kind(env={"GRIDMINER_REGTEST_NODE": "bcoin"}) == "bcoin"
    assert preferred_kind("auto", bitcoind=fake) == "bitcoind"
    with pytest.raises(ValueError, match="kind must be"):
        preferred_kind("btcd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="GRIDMINER_REGTEST_NODE"):
        preferred_kind(env={"GRIDMINER_REGTEST_NODE": "btcd"})


def test_a_bitcoind_path_that_is_not_executable_is_a_clear_error(tmp_path):
    not_executable = tmp_path / "bitcoind"
    not_executable.write_text("")
    node = RegtestNode(bitcoind=not_executable)
    assert node.kind == "bitcoind"
    with pytest.raises(RegtestUnavailable, match="not an executable file"):
        with node:
            pass
    assert not node.running
    with pytest.raises(ValueError, match="given with kind='bcoin'"):
        RegtestNode("bcoin", bitcoind=not_executable)


def test_no_node_tools_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("GRIDMINER_REGTEST_NODE", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # neither bitcoind nor node nor npm
    node = RegtestNode()
    with pytest.raises(RegtestUnavailable, match=r"node and npm not found on PATH.*Node\.js.*bitcoind"):
        with node:
            pass
    assert not node.running


def test_node_is_stopped_and_removed_when_the_test_fails():
    try:
        node = RegtestNode()
        with node:
            datadir, pid = node.datadir, node.pid
            assert node.call("getblockcount") >= 0
            raise KeyError("the test failed")
    except RegtestUnavailable as e:
        pytest.skip(f"regtest node unavailable: {e}")
    except KeyError:
        pass
    assert not node.running
    assert not datadir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
