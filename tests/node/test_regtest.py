"""The regtest launcher and the bcoin 1.0.2 facts recorded in miner/node/regtest.py, on real nodes."""

from __future__ import annotations

import os
import shutil
import socket
import time

import pytest

from miner.chain.address import address_to_script, script_to_address
from miner.chain.block import Block
from miner.chain.hashes import sha256d
from miner.chain.target import bits_to_target, hash_meets_target
from miner.node.regtest import (
    PIN_DIR,
    INSTALL_MARKER,
    RegtestError,
    RegtestNode,
    RegtestUnavailable,
    bcoin_install_dir,
    find_node_tools,
    install_bcoin,
    lockfile_key,
)
from miner.node.rpc import NodeUnavailable, RPCInvalidParameter, submitblock_reason

SEGWIT = {"rules": ["segwit"]}
REGTEST_TARGET = bits_to_target(0x207FFFFF)


def refuses_connections(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) != 0


def foreign_address(node: RegtestNode, seed: int) -> str:
    """A valid address of the node's network that its wallet does not own."""
    return script_to_address(bytes.fromhex("0014") + bytes([seed]) * 20, node.network_name)


def bcoin_only(node: RegtestNode) -> None:
    if node.kind != "bcoin":
        pytest.skip("a bcoin 1.0.2 fact")


# --- installation -----------------------------------------------------------------------


def test_install_is_cached_under_the_lockfile_hash(regtest_node):
    if regtest_node.kind != "bcoin":
        pytest.skip("bcoin install")
    target = bcoin_install_dir()
    assert target.name == f"regtest-node-{lockfile_key()}"
    assert (target / INSTALL_MARKER).is_file()
    assert not (PIN_DIR / "node_modules").exists(), "the node must not be installed into the repo"
    started = time.monotonic()
    assert install_bcoin() == target
    assert time.monotonic() - started < 2.0


def test_changed_lockfile_gets_a_new_install_dir(tmp_path):
    copy = tmp_path / "regtest"
    shutil.copytree(PIN_DIR, copy, ignore=shutil.ignore_patterns("node_modules"))
    before = lockfile_key(copy)
    (copy / "package-lock.json").write_text((copy / "package-lock.json").read_text() + "\n")
    assert lockfile_key(copy) != before
    assert bcoin_install_dir(copy, tmp_path).name == f"regtest-node-{lockfile_key(copy)}"


def test_missing_node_tools_say_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RegtestUnavailable, match="node and npm not found on PATH.*Node.js"):
        find_node_tools()


def test_kind_is_validated_and_auto_follows_the_environment(monkeypatch):
    with pytest.raises(ValueError, match="'auto', 'bcoin' or 'bitcoind'"):
        RegtestNode("btcd")  # type: ignore[arg-type]
    monkeypatch.setenv("GRIDMINER_REGTEST_NODE", "bitcoind")
    node = RegtestNode("auto")
    assert node.kind == "bitcoind" and node.network_name == "regtest"
    with pytest.raises(RegtestError, match="before start"):
        node.rpc_url  # noqa: B018  (ports are picked by start())


# --- lifecycle ----------------------------------------------------------------------------


def test_start_stop_and_close(regtest_node_factory):
    node = regtest_node_factory(persistent=False)
    assert node.running and node.pid
    assert node.rpc_url.startswith("http://127.0.0.1:")
    assert node.rpc.call_sync("getblockcount") == 0
    assert node.network_name == ("bcoin-regtest" if node.kind == "bcoin" else "regtest")
    assert (node.zmq_url is None) == (node.kind == "bcoin")
    assert node.log_path.is_file() and node.tail_log()
    port, datadir = node.ports["rpc"], node.datadir
    started = time.monotonic()
    node.stop()
    assert time.monotonic() - started < 5.0
    assert not node.running and refuses_connections(port)
    with pytest.raises(NodeUnavailable):
        node.rpc.call_sync("getblockcount")
    assert datadir.is_dir()  # kept until close(), for restarts and post-mortems
    node.close()
    assert not datadir.exists()


def test_persistent_chain_and_wallet_survive_restart_and_kill(regtest_node_factory):
    node = regtest_node_factory(persistent=True)
    node.mine_with_node(3)
    best = node.rpc.call_sync("getbestblockhash")
    ports = node.ports

    node.restart()
    assert node.ports == ports
    assert node.rpc.call_sync("getblockcount") == 3
    assert node.rpc.call_sync("getbestblockhash") == best

    node.kill()  # a crash: no chance to flush anything
    assert not node.running
    node.start()
    assert node.rpc.call_sync("getbestblockhash") == best
    # Listing coins iterates the wallet database: empty without the leveldown preload.
    assert len(node.wallet_call("listunspent", 0)) == 3
    assert node.mine_with_node(1)  # and it keeps mining on top
    assert node.rpc.call_sync("getblockcount") == 4


def test_memory_node_forgets_its_chain_on_restart(regtest_node_factory):
    node = regtest_node_factory(persistent=False)
    if node.kind != "bcoin":
        pytest.skip("bitcoind is always persistent")
    node.mine_with_node(2, foreign_address(node, 1))
    node.restart()
    assert node.rpc.call_sync("getblockcount") == 0


def test_start_failure_quotes_the_log(regtest_node_factory):
    first = regtest_node_factory(persistent=True)
    second = regtest_node_factory(start=False, persistent=True, datadir=first.datadir, start_timeout=20)
    with pytest.raises(RegtestError, match=r"exited with code \d+ while starting; last lines of .*node\.log"):
        second.start()  # the datadir's database is locked by the first node
    assert not second.running
    assert first.rpc.call_sync("getblockcount") == 0


# --- wallet and mining --------------------------------------------------------------------


@pytest.mark.parametrize("kind, script_prefix", [("bech32", "0014"), ("legacy", "76a914")])
def test_new_address_is_ours_and_on_the_right_network(regtest_node, kind, script_prefix):
    first, second = regtest_node.new_address(kind), regtest_node.new_address(kind)
    assert first != second
    script = address_to_script(first, regtest_node.network_name)
    assert script.hex().startswith(script_prefix)
    if regtest_node.kind == "bcoin":
        assert first.startswith("rb1q" if kind == "bech32" else "R")


def test_bcoin_wallet_rpc_getnewaddress_is_refused(regtest_node):
    bcoin_only(regtest_node)
    with pytest.raises(RegtestError, match="mainnet"):
        regtest_node.wallet_call("getnewaddress", "")


def test_mine_with_node_pays_the_address(regtest_node):
    address = regtest_node.new_address("bech32")
    height = regtest_node.rpc.call_sync("getblockcount")
    hashes = regtest_node.mine_with_node(2, address)
    assert len(hashes) == 2
    assert regtest_node.rpc.call_sync("getbestblockhash") == hashes[-1]
    assert regtest_node.rpc.call_sync("getblockcount") == height + 2
    raw = regtest_node.rpc.call_sync("getblock", hashes[-1], False)
    block = Block.from_bytes(bytes.fromhex(raw))
    assert block.hash_hex_display() == hashes[-1]
    assert block.transactions[0].outputs[0].script_pubkey == address_to_script(address, regtest_node.network_name)


def test_wallet_funds_a_transaction_that_reaches_the_template(regtest_node_factory):
    node = regtest_node_factory(persistent=False)
    # Mined by plain RPC (as our miner's blocks arrive): the wallet catches up on its own time.
    node.rpc.call_sync("generatetoaddress", 101, node.new_address("legacy"))  # maturity is 100
    node.wait_for_wallet()
    assert node.wallet_call("getbalance") > 0
    txid = node.wallet_call("sendtoaddress", node.new_address("bech32"), 1.5)
    node.wait_for_mempool(txid)  # bcoin's wallet answers before its mempool has the tx
    template = node.rpc.call_sync("getblocktemplate", SEGWIT)
    assert txid in [tx["txid"] for tx in template["transactions"]]


# --- bcoin facts ---------------------------------------------------------------------------


def test_bcoin_segwit_deployment_states(regtest_node_factory):
    node = regtest_node_factory(persistent=False)
    bcoin_only(node)
    payee = foreign_address(node, 2)

    def state() -> str:
        return node.rpc.call_sync("getblockchaininfo")["bip9_softforks"]["segwit"]["status"]

    template = node.rpc.call_sync("getblocktemplate", SEGWIT)  # a fresh node gives templates
    assert (state(), template["rules"], template["version"]) == ("defined", [], 0x20000000)
    node.mine_with_node(143, payee)
    template = node.rpc.call_sync("getblocktemplate", SEGWIT)
    assert state() == "started" and template["version"] == 0x30000003
    assert template["vbavailable"] == {"csv": 0, "!segwit": 1, "testdummy": 28}
    node.mine_with_node(144, payee)
    assert state() == "locked_in"
    node.mine_with_node(144, payee)
    template = node.rpc.call_sync("getblocktemplate", SEGWIT)
    assert state() == "active" and template["height"] == 432
    assert "!segwit" in template["rules"] and template["weightlimit"] == 4_000_000
    with pytest.raises(RPCInvalidParameter, match="Client must support segwit"):
        node.rpc.call_sync("getblocktemplate", {})


def test_bcoin_template_is_cached_against_the_mempool(regtest_node_factory):
    """A tx entering the mempool within 10 s of the cached template is left out of it."""
    node = regtest_node_factory(persistent=False)
    bcoin_only(node)
    node.mine_with_node(101)
    before = node.rpc.call_sync("getblocktemplate", SEGWIT)
    txid = node.wallet_call("sendtoaddress", node.new_address("legacy"), 1.0)
    node.wait_for_mempool(txid)
    after = node.rpc.call_sync("getblocktemplate", SEGWIT)
    assert after["transactions"] == before["transactions"] == []
    assert after["longpollid"] == before["longpollid"][:64] + "00000001"  # the live mempool size
    node.mine_with_node(1)  # a new block rebuilds the template: the tx is in that block
    assert txid not in node.rpc.call_sync("getrawmempool")


def test_bcoin_submitblock_answers(regtest_node_factory):
    miner, other = regtest_node_factory(persistent=False), regtest_node_factory(persistent=False)
    bcoin_only(miner)
    hashes = miner.mine_with_node(2, foreign_address(miner, 3))
    raw1, raw2 = (bytes.fromhex(miner.rpc.call_sync("getblock", h, False)) for h in hashes)

    # The second block's parent is unknown to the other node.
    assert other.rpc.call_sync("submitblock", raw2.hex()) == "rejected: bad-prevblk"
    # Same block with a nonce whose hash misses the target.
    for nonce in range(1000):
        header = raw1[:76] + nonce.to_bytes(4, "little")
        if not hash_meets_target(sha256d(header), REGTEST_TARGET):
            break
    assert other.rpc.call_sync("submitblock", (header + raw1[80:]).hex()) == "rejected: high-hash"
    # The real block: null is acceptance. bcoin kept the "rejected" orphan all the same
    # and connects it behind its parent.
    assert other.rpc.call_sync("submitblock", raw1.hex()) is None
    assert other.rpc.call_sync("getbestblockhash") == hashes[1]
    answer = other.rpc.call_sync("submitblock", raw1.hex())
    assert answer == "rejected: duplicate" and submitblock_reason(answer) == "duplicate"


def test_bcoin_cleans_its_environment(regtest_node_factory, monkeypatch):
    """BCOIN_* variables would reconfigure the node (bcoin reads them); the launcher drops them."""
    monkeypatch.setenv("BCOIN_NETWORK", "main")
    node = regtest_node_factory(persistent=False)
    bcoin_only(node)
    assert node.rpc.call_sync("getblockchaininfo")["chain"] == "regtest"
    assert os.environ["BCOIN_NETWORK"] == "main"
