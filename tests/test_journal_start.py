"""A start with a big journal of earlier blocks, against the real node: the first job goes out
at once, the blocks on the tip are resubmitted before it, and every other entry is judged
in bulk in the background (issue: 41,498 entries judged one by one, ~11 ms apiece, before
any job). Also: one default journal per network and chain.
"""

from __future__ import annotations

import asyncio
import os
import time

from miner.chain.address import address_to_script
from miner.config import Config
from miner.metrics import Metrics
from miner.node.rpc import NodeRPC
from miner.work.gbt import GBTSettings, GBTWorkSource
from miner.work.journal import Journal
from miner.work.submit import BlockSubmitter, node_chain_name
from tests.waiting import wait_until
from tests.work.journal_gen import found_record, stale_entries, write_journal
from tests.work.support import job_for, solve

# Earlier entries in the generated journal (the start had 41,498).
EARLIER_ENTRIES = 40_000
# Bound on the first job (seconds): generous for a loaded machine; the old start needed
# one RPC per entry first (minutes for this journal).
FIRST_JOB_BOUND_S = 60.0


def _calls(metrics: Metrics, method: str) -> float:
    return metrics.registry.get_sample_value("gridminer_rpc_calls_total", {"method": method}) or 0.0


def test_a_start_with_tens_of_thousands_of_pending_entries_publishes_its_first_job_at_once(
        regtest_node_factory, node_kind, tmp_path):
    node = regtest_node_factory(kind=node_kind, persistent=False)
    payout = address_to_script(node.new_address("bech32"), node.network_name)
    chain = node.mine_with_node(20)
    tip = chain[-1]
    # Ours, found on the tip just before a crash: must reach the node before any new work.
    job = job_for(node.rpc.call_sync("getblocktemplate", {"rules": ["segwit"]}))
    on_tip = job.block(solve(job))
    assert job.prev_hash_hex_display == tip
    # Ours too, accepted before the crash and built upon since: in the chain, not stale.
    in_chain_hash = chain[9]
    in_chain_raw = bytes.fromhex(node.rpc.call_sync("getblock", in_chain_hash, 0))
    stale = stale_entries(EARLIER_ENTRIES, list(range(1, 21)) + [30])  # 30: above the node's tip

    path = tmp_path / "journal.jsonl"
    write_journal(path, [found_record(h, p, height, raw) for h, p, height, raw in stale]
                  + [found_record(in_chain_hash, chain[8], 10, in_chain_raw),
                     found_record(on_tip.hash_hex_display(), tip, 21, on_tip.serialize())])

    async def scenario():
        metrics = Metrics()
        rpc = NodeRPC(node.rpc_url, node.auth, metrics=metrics)
        started = time.monotonic()
        journal = Journal(path)
        replayed = time.monotonic() - started
        assert journal.pending_count() == EARLIER_ENTRIES + 2
        source = GBTWorkSource(rpc, BlockSubmitter(rpc, journal, metrics),
                               GBTSettings(payout_script=payout, longpoll=False), metrics)
        task = asyncio.create_task(source.run())
        try:
            await asyncio.wait_for(source.ready.wait(), FIRST_JOB_BOUND_S)
            first_job = time.monotonic() - started
            first = source.current
            calls_before_job = {m: _calls(metrics, m) for m in ("submitblock", "getblockheader", "getblockhash")}
            await wait_until(lambda: metrics.registry.get_sample_value("gridminer_blocks_total", {"stage": "stale"})
                             == EARLIER_ENTRIES, 300, "every earlier entry judged", interval=0.1)
            judged = time.monotonic() - started
            return journal, metrics, first, calls_before_job, (replayed, first_job, judged)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            rpc.close()

    journal, metrics, first, calls, (replayed, first_job, judged) = asyncio.run(scenario())
    print(f"{node_kind}: {EARLIER_ENTRIES + 2} pending entries: journal replayed in {replayed:.2f} s, "
          f"first job after {first_job:.2f} s, all judged after {judged:.2f} s")
    try:
        # The block on the tip went first: the first job already builds on it.
        assert journal.get(on_tip.hash_hex_display()).final_result == "accepted"
        assert first.prev_hash_hex_display == on_tip.hash_hex_display()
        assert node.rpc.call_sync("getbestblockhash") == on_tip.hash_hex_display()
        # Nothing was judged one by one before the first job, and nothing stale was sent.
        assert calls["submitblock"] == 1 and calls["getblockheader"] == 0 and calls["getblockhash"] <= 21
        assert _calls(metrics, "submitblock") == 1
        assert _calls(metrics, "getblockhash") <= 20  # one per height at most, in bulk
        assert journal.get(in_chain_hash).final_result == "accepted"
        assert {journal.get(h).final_result for h, *_ in stale} == {"stale"}
        stale_count = metrics.registry.get_sample_value("gridminer_blocks_total", {"stage": "stale"})
        assert stale_count == EARLIER_ENTRIES
    finally:
        journal.close()


def test_one_default_journal_per_network_and_chain(regtest_node_factory, tmp_path, monkeypatch):
    # Regtest chains share a genesis: block 1 tells them apart; a chain without one yet is
    # "genesis" (a block found there extends the same genesis on any of them).
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    first, second = regtest_node_factory(persistent=False), regtest_node_factory(persistent=False)

    async def name(node) -> str:
        rpc = NodeRPC(node.rpc_url, node.auth)
        try:
            return await node_chain_name(rpc)
        finally:
            rpc.close()

    assert asyncio.run(name(first)) == "regtest-genesis"
    block1_a = first.mine_with_node(1)[0]
    block1_b = second.mine_with_node(1)[0]
    assert block1_a != block1_b
    names = [asyncio.run(name(first)), asyncio.run(name(second))]
    assert names == [f"regtest-{block1_a[:16]}", f"regtest-{block1_b[:16]}"]
    paths = [Config().default_journal_path(n) for n in names]
    assert paths[0] != paths[1]
    assert paths[0] == tmp_path / "gridminer" / f"found-blocks-regtest-{block1_a[:16]}.jsonl"
    first.mine_with_node(3)
    assert asyncio.run(name(first)) == names[0]  # block 1 stays block 1
    assert os.environ["XDG_DATA_HOME"] == str(tmp_path)
