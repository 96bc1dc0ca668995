"""A stock stratum miner (pooler's cpuminer, `minerd`) mining through our stratum server
onto a regtest node: Bitcoin Core when bitcoind is on PATH, else bcoin.

At regtest difficulty nearly every hash minerd makes is a block, so minerd sends shares
as fast as it can hash: the server must serve that (no throttling of valid shares, no
refusal when minerd reconnects) and the blocks must land. One bounded run is shared by
the tests of this module.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections import Counter

import pytest

from miner.config import Config, LogConfig, MetricsConfig, MiningConfig, NodeConfig, StratumConfig
from miner.modes.solo import SoloMiner
from miner.metrics import Metrics
from tests.conftest import _require_tools
from tests.stratum.minerd import Minerd, require_minerd

# Blocks the node must accept from minerd before the run ends (issue: >= 10 in 60 s).
MIN_BLOCKS = 10
# Upper bound of one run; the run ends as soon as MIN_BLOCKS are in (or minerd is cut off).
RUN_TIMEOUT_S = 240.0
# Disconnect reasons that are the server's decision (anything but the miner leaving).
SERVER_CLOSED = {"message_rate", "invalid_shares", "line_too_long", "slow_reader", "idle_timeout",
                 "unauthorized_timeout", "upstream_changed"}


def _by_label(metrics: Metrics, family_name: str, label: str) -> Counter:
    out: Counter = Counter()
    for family in metrics.registry.collect():
        if family.name == family_name:
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.value:
                    out[sample.labels[label]] += int(sample.value)
    return out


def _disconnects(metrics: Metrics) -> Counter:
    return _by_label(metrics, "gridminer_stratum_disconnects", "reason")


def _run(tmp_path_factory, miner_class, timeout: float):
    """minerd -t 1 through `miner run --threads 0` until MIN_BLOCKS are accepted (or timeout s)."""
    from miner.node.regtest import RegtestNode

    require_minerd()
    kind = "bitcoind" if shutil.which("bitcoind") else "bcoin"
    _require_tools(kind)
    tmp = tmp_path_factory.mktemp("minerd")
    node = RegtestNode(kind, persistent=False)
    try:
        node.start()
        metrics = Metrics()
        auth = node.auth
        if callable(auth):  # bitcoind: a cookie file
            credentials = {"cookie_file": str(auth.path)}
        else:
            credentials = {"user": auth.user, "password": auth.password}
        config = Config(node=NodeConfig(url=node.rpc_url, zmq=node.zmq_url, poll_interval=0.1, **credentials),
                        mining=MiningConfig(address=node.new_address("bech32"), threads=0,
                                            journal=str(tmp / "journal.jsonl")),
                        stratum=StratumConfig(listen="127.0.0.1:0"), metrics=MetricsConfig(listen="off"),
                        log=LogConfig(status_interval=600))
        solo = miner_class(config, metrics=metrics, out=open(os.devnull, "w"))

        async def scenario():
            task = asyncio.create_task(solo.run())
            try:
                deadline = time.monotonic() + 120
                while solo.stratum_port is None or solo.source is None or solo.source.current is None:
                    assert time.monotonic() < deadline and not task.done(), "the miner did not start"
                    await asyncio.sleep(0.05)
                start = await asyncio.to_thread(node.rpc.call_sync, "getblockcount")
                with Minerd(solo.stratum_port, tmp / "minerd.log") as minerd:
                    deadline = time.monotonic() + timeout
                    while solo.stats.accepted < MIN_BLOCKS and time.monotonic() < deadline:
                        assert minerd.proc.poll() is None, f"minerd exited:\n{minerd.log()[-2000:]}"
                        await asyncio.sleep(0.2)
                    seconds = timeout - (deadline - time.monotonic())
                    minerd.stop()
                end = await asyncio.to_thread(node.rpc.call_sync, "getblockcount")
                tips = await asyncio.to_thread(node.rpc.call_sync, "getchaintips")
                return start, end, tips, seconds, minerd
            finally:
                solo.stop()
                await asyncio.wait_for(task, 60)

        start, end, tips, seconds, minerd = asyncio.run(scenario())
        return {"kind": kind, "blocks": end - start, "tips": tips, "seconds": seconds, "solo": solo,
               "metrics": metrics, "minerd_log": minerd.log(), "minerd": minerd}
    finally:
        node.close()


@pytest.fixture(scope="module")
def minerd_run(tmp_path_factory):
    return _run(tmp_path_factory, SoloMiner, RUN_TIMEOUT_S)


def test_minerd_mines_blocks_through_our_server(minerd_run):
    r = minerd_run
    log = r["minerd_log"]
    context = (f"{r['kind']}, {r['seconds']:.0f} s, disconnects {dict(_disconnects(r['metrics']))}, shares "
               f"{dict(_by_label(r['metrics'], 'gridminer_stratum_shares', 'result'))}, limits "
               f"{dict(_by_label(r['metrics'], 'gridminer_stratum_limit_hits', 'limit'))}, connects "
               f"{r['metrics'].registry.get_sample_value('gridminer_stratum_connects_total')}\n{log[-1500:]}")
    print(context[:600])
    # Valid shares are never throttled and a reconnect is never refused.
    assert not SERVER_CLOSED & set(_disconnects(r["metrics"])), context
    assert "authentication failed" not in log, context
    # minerd kept getting work: every block needs a new job on the new tip.
    assert r["blocks"] >= MIN_BLOCKS, context
    assert r["metrics"].registry.get_sample_value(
        "gridminer_stratum_shares_total", {"site": "other", "result": "accepted"}) >= MIN_BLOCKS, context


def test_minerd_storm_sends_almost_no_competing_blocks(minerd_run):
    r = minerd_run
    assert r["blocks"] >= MIN_BLOCKS
    assert _competing(r) <= max(2, r["blocks"] // 10), r["solo"].stats
    assert r["solo"].stats.rejected <= max(2, r["blocks"] // 10), r["solo"].stats
    print(f"minerd -t 1 through our server on {r['kind']}: {r['blocks']} blocks in {r['seconds']:.1f} s, "
          f"{_competing(r)} competing; {r['solo'].stats}")


def _competing(r) -> int:
    """Blocks the node has that are not on its best chain (our own 'inconclusive' ones)."""
    return sum(1 for tip in r["tips"] if tip.get("status") in ("valid-headers", "valid-fork"))
