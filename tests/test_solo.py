"""Solo mining against the real regtest node: blocks, payouts, mempool transactions,
new tips, a node that dies and comes back, and a miner killed between found and accepted.

Everything here is real: the pinned node on free loopback ports, our kernel, the
controller, the journal on disk. The node is never asked to mine except where a test
needs a block that is not ours (a competing tip).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import zmq

from miner.chain.address import address_to_script
from miner.config import Config, LogConfig, MetricsConfig, MiningConfig, NodeConfig, StratumConfig
from miner.modes.solo import SoloMiner
from miner.metrics import Metrics
from miner.work.gbt import GBTSettings
from tests.miner_run import node_credentials
from tests.waiting import wait_until
from tests.work.support import running_gbt_source


def node_config(node, **kw) -> NodeConfig:
    if node.kind == "bcoin":
        return NodeConfig(url=node.rpc_url, user=node.auth.user, password=node.auth.password, **kw)
    return NodeConfig(url=node.rpc_url, cookie_file=str(node.auth.path), **kw)


def miner_for(node, tmp_path: Path, address: str, blocks: int = 0, threads: int = 2, **node_kw) -> SoloMiner:
    config = Config(node=node_config(node, poll_interval=0.1, **node_kw),
                    mining=MiningConfig(address=address, threads=threads, blocks=blocks,
                                        journal=str(tmp_path / "journal.jsonl")),
                    metrics=MetricsConfig(listen="127.0.0.1:0"),  # free ports: tests run side by side
                    stratum=StratumConfig(listen="127.0.0.1:0"),
                    log=LogConfig(status_interval=60))
    return SoloMiner(config, metrics=Metrics(), out=open(os.devnull, "w"))


def mine(node, tmp_path, address, blocks, timeout=120.0) -> SoloMiner:
    miner = miner_for(node, tmp_path, address, blocks=blocks)
    asyncio.run(asyncio.wait_for(miner.run(), timeout))
    return miner


def coinbase_script_hex(node, height: int) -> str:
    return block_at(node, height)["tx"][0]["vout"][0]["scriptPubKey"]["hex"]


def block_at(node, height: int) -> dict:
    """getblock with its transactions decoded: bcoin takes (verbose, details), Core a verbosity."""
    block_hash = node.rpc.call_sync("getblockhash", height)
    if node.kind == "bcoin":
        return node.rpc.call_sync("getblock", block_hash, True, True)
    return node.rpc.call_sync("getblock", block_hash, 2)




def test_mines_110_blocks_paying_a_bech32_then_a_legacy_address(regtest_node_factory, node_kind, tmp_path):
    node = regtest_node_factory(kind=node_kind, persistent=False)
    bech32, legacy = node.new_address("bech32"), node.new_address("legacy")
    first = mine(node, tmp_path, bech32, blocks=110)
    assert first.stats.accepted >= 110 and first.stats.rejected == 0
    h1 = node.rpc.call_sync("getblockcount")
    second = mine(node, tmp_path, legacy, blocks=5)
    assert second.stats.rejected == 0
    h2 = node.rpc.call_sync("getblockcount")
    assert h1 >= 110 and h2 >= h1 + 5
    script_b = address_to_script(bech32, node.network_name).hex()
    script_l = address_to_script(legacy, node.network_name).hex()
    assert [coinbase_script_hex(node, h) for h in range(1, h1 + 1)] == [script_b] * h1
    assert [coinbase_script_hex(node, h) for h in range(h1 + 1, h2 + 1)] == [script_l] * (h2 - h1)


def test_mempool_transactions_with_a_segwit_spend_are_mined(regtest_node_factory, node_kind, tmp_path):
    node = regtest_node_factory(kind=node_kind, persistent=False)
    wallet_bech32 = node.new_address("bech32")
    # bcoin activates segwit by version bits at height 432; mining with the template's
    # version signals it. Coinbases to a P2WPKH address make every wallet spend a segwit one.
    mine(node, tmp_path, wallet_bech32, blocks=440, timeout=300)
    if node.kind == "bcoin":
        info = node.rpc.call_sync("getblockchaininfo")
        segwit = info["bip9_softforks"]["segwit"]["status"]
    else:  # Core moved deployments to getdeploymentinfo (v23); segwit is buried there
        info = node.rpc.call_sync("getdeploymentinfo")
        segwit = info["deployments"]["segwit"]["active"]
    assert segwit in ("active", True), info

    # The wallet follows the chain asynchronously, and bcoin's sendtoaddress returns a txid
    # even when its mempool refuses the spend: send only once the wallet has caught up.
    node.wait_for_wallet()
    txids = [node.wallet_call("sendtoaddress", target, 1.5)
             for target in (node.new_address("legacy"), node.new_address("bech32"))]
    node.wait_for_mempool(*txids)

    # bcoin rebuilds its cached template only on a new block (or for a transaction that
    # arrives over 10 s after the last build), so the transactions may first show up in
    # the template for the block after next: mine one block at a time, at most three.
    mined, witness_seen, height = set(), False, node.rpc.call_sync("getblockcount")
    for _ in range(3):
        miner = mine(node, tmp_path, wallet_bech32, blocks=1)
        assert miner.stats.rejected == 0
        for height in range(height + 1, node.rpc.call_sync("getblockcount") + 1):
            for tx in block_at(node, height)["tx"][1:]:
                mined.add(tx["txid"])
                witness_seen |= tx.get("hash", tx["txid"]) != tx["txid"]
        if set(txids) <= mined:
            break
    assert set(txids) <= mined, "the mempool transactions must be in our blocks"
    assert witness_seen, "a segwit spend (wtxid != txid) must be in our blocks"


def test_a_run_started_right_after_a_payment_mines_it_on_core(regtest_node_factory, tmp_path):
    """Core caches a template for 5 s whatever enters the mempool: the first job of a
    regtest run must still hold the transaction sent just before (issue 11 item 11)."""
    node = regtest_node_factory(kind="bitcoind", persistent=False)
    address = node.new_address("bech32")
    node.mine_with_node(101)
    node.rpc.call_sync("getblocktemplate", {"rules": ["segwit"]})  # the node caches this one
    txid = node.wallet_call("sendtoaddress", node.new_address("bech32"), 1.0)
    height = node.rpc.call_sync("getblockcount")
    mine(node, tmp_path, address, blocks=1)
    assert txid in [tx["txid"] for tx in block_at(node, height + 1)["tx"]]


# --- new tips: polling within 1 s, ZMQ within 100 ms --------------------------------------

async def _switch_latency(node, tmp_path, *, settings: GBTSettings, publish=None) -> float:
    async with running_gbt_source(node, tmp_path / "j.jsonl", settings, ready_timeout=10) as (_, jobs):
        if publish is not None:
            await asyncio.sleep(0.5)  # let the subscriber connect (ZMQ's slow joiner)
        new_tip = (await asyncio.to_thread(node.mine_with_node, 1))[0]
        t0 = time.monotonic()
        if publish is not None:
            publish(new_tip)
        while True:
            job = await asyncio.wait_for(jobs.__anext__(), 5)
            if job.prev_hash_hex_display == new_tip:
                assert job.clean
                return time.monotonic() - t0


def test_new_tip_by_polling_within_one_second(regtest_node_factory, node_kind, tmp_path):
    node = regtest_node_factory(kind=node_kind, persistent=False)
    script = address_to_script(node.new_address("bech32"), node.network_name)
    latency = asyncio.run(_switch_latency(node, tmp_path, settings=GBTSettings(
        payout_script=script, poll_interval=0.5, longpoll=False)))
    assert latency < 1.0


def test_new_tip_by_zmq_within_100_ms(regtest_node_factory, node_kind, tmp_path):
    node = regtest_node_factory(kind=node_kind, persistent=False)
    script = address_to_script(node.new_address("bech32"), node.network_name)
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sequence = [0]

    def publish(tip_hex_display: str) -> None:  # bitcoind's framing: topic, body, LE sequence
        pub.send_multipart([b"hashblock", bytes.fromhex(tip_hex_display), sequence[0].to_bytes(4, "little")])
        sequence[0] += 1

    try:
        latency = asyncio.run(_switch_latency(node, tmp_path, publish=publish, settings=GBTSettings(
            payout_script=script, poll_interval=30.0, longpoll=False, zmq_url=f"tcp://127.0.0.1:{port}")))
    finally:
        pub.close(0)
    assert latency < 0.1


# --- the node dies while we mine, and a block found meanwhile is not lost --------------------

def test_node_killed_and_restarted_while_mining(regtest_node_factory, node_kind, tmp_path):
    node = regtest_node_factory(kind=node_kind, persistent=True)
    address = node.new_address("bech32")
    miner = miner_for(node, tmp_path, address)

    async def scenario():
        task = asyncio.create_task(miner.run())
        try:
            await wait_until(lambda: miner.stats.accepted >= 3, 30, "first blocks")
            # Hold the workers, let the source catch up with the tip, then take the node
            # away: the block found next is found while the node is down.
            miner.pool.pause()
            while True:  # a block found just before the pause may still move the tip
                await wait_until(lambda: not miner._submissions, 30, "submissions in flight to be answered")
                tip = await asyncio.to_thread(node.rpc.call_sync, "getbestblockhash")
                await wait_until(lambda: miner.source.tip_hex_display == tip, 10, "a job on the tip")
                if not miner._submissions and tip == await asyncio.to_thread(node.rpc.call_sync, "getbestblockhash"):
                    break
            if node.kind == "bitcoind":
                # Core loses unflushed blocks to kill -9 (its tip comes back lower, and the
                # block found meanwhile builds on nothing); gettxoutsetinfo flushes them.
                await asyncio.to_thread(node.rpc.call_sync, "gettxoutsetinfo", "none")
            await asyncio.to_thread(node.kill)
            accepted_before = miner.stats.accepted
            miner.pool.resume()
            await wait_until(lambda: miner.stats.found > accepted_before + miner.stats.rejected, 10,
                             "a block found while the node is down")
            await asyncio.sleep(1.0)  # the submitter is retrying against a dead port
            assert miner.stats.accepted == accepted_before
            await asyncio.to_thread(node.restart)
            await wait_until(lambda: miner.stats.accepted > accepted_before, 30, "the block submitted after restart")
            await wait_until(lambda: miner.stats.accepted >= accepted_before + 3, 30, "mining to continue")
        finally:
            miner.stop()
            await asyncio.wait_for(task, 30)

    asyncio.run(scenario())
    assert miner.stats.rejected == 0
    journal_lines = [json.loads(x) for x in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert any(str(x.get("result", "")) in ("unavailable", "warming-up") for x in journal_lines), \
        "the block found while the node was down must have been journaled as not yet answered"


def _journal_state(path: Path) -> tuple[set[str], set[str]]:
    """(found hashes, hashes with a final answer) read straight from the journal file."""
    found, final = set(), set()
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            h = rec["hash"]
            if rec["type"] == "found":
                found.add(h)
            elif rec.get("final"):
                final.add(h)
    return found, final


def test_miner_killed_between_found_and_accepted_resubmits_on_restart(regtest_node_factory, node_kind, tmp_path):
    node = regtest_node_factory(kind=node_kind, persistent=True)
    address = node.new_address("bech32")
    journal = tmp_path / "journal.jsonl"
    cmd = [sys.executable, "-m", "miner", "run", "--node", node.rpc_url, "--address", address,
           "--journal", str(journal), "--threads", "1", "--log-level", "warning",
           "--stratum", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]
    credentials, args = node_credentials(node)  # bcoin's from the environment, as an operator would
    env, cmd = dict(os.environ, **credentials), cmd + args
    miner = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pending: set[str] = set()
    try:
        deadline = time.monotonic() + 60
        while not pending:
            assert time.monotonic() < deadline, "never caught a block between found and accepted"
            assert miner.poll() is None, miner.stderr.read().decode()
            found, final = _journal_state(journal)
            if found - final:
                # Freeze the node with a block journaled but unanswered; if its answer was
                # already on the way, thaw and try again.
                os.kill(node.pid, signal.SIGSTOP)
                time.sleep(0.3)
                found, final = _journal_state(journal)
                pending = found - final
                if not pending:
                    os.kill(node.pid, signal.SIGCONT)
            time.sleep(0.001)
        miner.kill()  # kill -9 between "found" and "accepted"
        miner.wait(10)
    finally:
        if miner.poll() is None:
            miner.kill()
    node.kill()  # the frozen node dies too: the submit it had not read is gone with it
    node.restart()
    # (Under load the node may already have taken the block before the freeze while the
    # miner had not written the answer yet; either way the restart must settle the entry.)
    try:
        # A repeated option's last value wins: info-level logs, for the message below.
        restarted = subprocess.run(cmd + ["--log-level", "info", "--blocks", "1"], env=env, capture_output=True,
                                   timeout=120)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"the restarted miner never finished; its log:\n{(e.stderr or b'').decode()[-4000:]}"
                             f"\n{(e.stdout or b'').decode()[-2000:]}") from None
    assert restarted.returncode == 0, restarted.stderr.decode()
    for block_hash in pending:
        # On the active chain, not merely known: getblockheader also finds side-chain blocks.
        header = node.rpc.call_sync("getblockheader", block_hash)
        assert node.rpc.call_sync("getblockhash", header["height"]) == block_hash
    _, final = _journal_state(journal)
    assert pending <= final


def test_metrics_endpoint_counts_blocks_and_hashes(regtest_node_factory, node_kind, tmp_path):
    import urllib.request

    node = regtest_node_factory(kind=node_kind, persistent=False)
    miner = miner_for(node, tmp_path, node.new_address("bech32"))

    async def scenario() -> str:
        task = asyncio.create_task(miner.run())
        try:
            # The height gauge follows the job on the new tip, which comes after the answer.
            await wait_until(lambda: miner.stats.accepted >= 3 and miner.metrics_port
                             and (miner.source.height or 0) >= 4, 30, "blocks")
            url = f"http://127.0.0.1:{miner.metrics_port}/metrics"
            return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
        finally:
            miner.stop()
            await asyncio.wait_for(task, 30)

    text = asyncio.run(scenario())
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line and not line.startswith("#")}
    assert samples['gridminer_blocks_total{stage="accepted"}'] >= 3
    assert samples['gridminer_hashes_total{site="local",worker_group="local"}'] > 0
    assert samples["gridminer_node_up"] == 1
    assert samples["gridminer_node_height"] >= 3
