"""Pool-proxy mode for real: a rig mines through our proxy onto our own server running as
the upstream pool in another process (solo on the regtest node); the upstream dies, the
proxy fails over to the second pool, the first comes back and the proxy returns to it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from miner.config import Config, LogConfig, MetricsConfig, MiningConfig, StratumConfig, UpstreamConfig
from miner.modes.proxy import ProxyMiner
from miner.metrics import Metrics
from tests.stratum.test_client import make_job, start_server, url
from tests.stratum.test_server import Miner
from miner.node.regtest import free_port
from tests.waiting import wait_port, wait_until


def start_upstream(node, port: int, journal) -> subprocess.Popen:
    """`miner run` (solo, no CPU threads) serving stratum on port: our server as a pool."""
    env = dict(os.environ, GRIDMINER_RPC_USER=node.auth.user, GRIDMINER_RPC_PASSWORD=node.auth.password)
    return subprocess.Popen([sys.executable, "-m", "miner", "run", "--node", node.rpc_url,
                             "--address", node.new_address("bech32"), "--threads", "0",
                             "--stratum", f"127.0.0.1:{port}", "--metrics", "off", "--journal", str(journal),
                             "--log-level", os.environ.get("PROXY_TEST_UPSTREAM_LOG", "warning")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def until_current_job(rig: Miner, proxy: ProxyMiner) -> None:
    """Read until the rig's newest job is the one the proxy serves now (after a pool change,
    jobs of the old pool may still be queued: a share on one of those is honestly stale)."""
    deadline = time.monotonic() + 30
    while True:
        current = proxy.server.current_job
        if rig.jobs and current is not None and rig.jobs[-1][1].coinbase.coinb2 == current.coinbase.coinb2:
            return
        assert time.monotonic() < deadline, "the rig never got the current pool's job"
        try:
            await rig.wait(lambda m: m.get("method") == "mining.notify", timeout=0.5)
        except asyncio.TimeoutError:
            pass


async def mine_one(miner: Miner, i: int) -> dict:
    """Wait for a job made after the latest set_extranonce, find a share and submit it."""
    job_id, job = miner.jobs[-1]
    en2 = i.to_bytes(miner.extranonce2_size, "big")
    nonce, _ = await asyncio.to_thread(miner.find_share, job_id, job, en2)
    return await miner.submit(job_id, en2, job.ntime, nonce, 0x2000)


def test_proxy_forwards_shares_and_fails_over_and_back(regtest_node_factory, tmp_path):
    node = regtest_node_factory(persistent=False)
    p1, p2 = free_port(), free_port()
    up1 = start_upstream(node, p1, tmp_path / "j1.jsonl")
    up2 = start_upstream(node, p2, tmp_path / "j2.jsonl")
    procs = [up1, up2]
    try:
        wait_port(p1)
        wait_port(p2)
        config = Config(mining=MiningConfig(mode="proxy", threads=0),
                        upstream=UpstreamConfig(pools=[f"stratum+tcp://127.0.0.1:{p1}", f"stratum+tcp://127.0.0.1:{p2}"],
                                                user="site1.proxy", probe_interval=1.0),
                        stratum=StratumConfig(listen="127.0.0.1:0"), metrics=MetricsConfig(listen="off"),
                        log=LogConfig(status_interval=60))
        proxy = ProxyMiner(config, metrics=Metrics(), out=open(os.devnull, "w"))

        async def scenario():
            task = asyncio.create_task(proxy.run())
            try:
                deadline = time.monotonic() + 30
                while proxy.stratum_port is None or proxy.server.current_job is None:
                    assert time.monotonic() < deadline and not task.done(), "proxy did not start"
                    await asyncio.sleep(0.05)
                rig = await Miner.connect(proxy.stratum_port)
                await rig.request("mining.extranonce.subscribe", [])
                await rig.handshake()
                h0 = node.rpc.call_sync("getblockcount")
                first = await mine_one(rig, 1)
                assert proxy.failover.state.index == 0

                # The upstream answers the share, then journals and submits the block: let it
                # land before killing that pool (killed earlier, it stays in its journal).
                await wait_until(lambda: node.rpc.call_sync("getblockcount") >= h0 + 1, 15, "the first block")
                up1.kill()  # the first pool dies
                up1.wait(10)
                await wait_until(lambda: proxy.failover.state.index == 1 and proxy.failover.state.up, 20, "failover")
                # The new pool's first job (and a set_extranonce, had its extranonce1 differed).
                await until_current_job(rig, proxy)
                second = await mine_one(rig, 2)

                procs.append(start_upstream(node, p1, tmp_path / "j1b.jsonl"))  # it comes back
                await asyncio.to_thread(wait_port, p1)
                await wait_until(lambda: proxy.failover.state.index == 0 and proxy.failover.state.up, 30, "return")
                await until_current_job(rig, proxy)
                back = proxy.failover.state.index
                third = await mine_one(rig, 3)
                # Every forwarded share was a block at regtest difficulty: the upstream answers
                # the share at once and submits the block right after. Wait for it here, while
                # the upstreams still run: terminated first, a block stays in its journal.
                await wait_until(lambda: node.rpc.call_sync("getblockcount") >= h0 + 3, 15,
                                 "the forwarded blocks on the node")
                return first, second, third, back, h0
            finally:
                proxy.stop()
                await asyncio.wait_for(task, 30)

        first, second, third, back, h0 = asyncio.run(scenario())
    finally:
        # Every upstream is stopped, whatever happens: terminate all, then kill stragglers
        # (one may spend its shutdown grace on a submission to a node that is gone).
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if os.environ.get("PROXY_TEST_UPSTREAM_LOG"):
                print("UPSTREAM", proc.pid, proc.stderr.read().decode()[-3000:])
    assert first["result"] is True and second["result"] is True and third["result"] is True, (first, second, third)
    assert back == 0, "the proxy returns to the first pool once it is healthy"
    assert node.rpc.call_sync("getblockcount") >= h0 + 3
    assert proxy.stats.accepted == 3 and proxy.stats.rejected == 0
    sample = proxy.metrics.registry.get_sample_value
    assert sample("gridminer_upstream_failovers_total") >= 2  # to the second pool and back (at least)
    assert sample("gridminer_upstream_shares_total", {"result": "accepted"}) == 3
    assert sample("gridminer_upstream_pool_index") == 0


def test_a_pools_new_version_mask_reaches_the_rigs_and_their_shares_are_accepted():
    """BIP310 across the proxy: the pool (our own server, in process) changes the mask
    mid-connection with mining.set_version_mask; the proxy tells its rolling rig at once,
    and the rig's share rolled in a bit of the new mask is accepted by the pool."""
    async def scenario():
        pool, blocks = await start_server(make_job("tpl1"))
        config = Config(mining=MiningConfig(mode="proxy", threads=0),
                        upstream=UpstreamConfig(pools=[url(pool.port)], user="site1.proxy"),
                        stratum=StratumConfig(listen="127.0.0.1:0"), metrics=MetricsConfig(listen="off"),
                        log=LogConfig(status_interval=60))
        proxy = ProxyMiner(config, metrics=Metrics(), out=open(os.devnull, "w"))
        task = asyncio.create_task(proxy.run())
        try:
            await wait_until(lambda: proxy.stratum_port is not None and proxy.server.current_job is not None
                             or task.done(), 30, "the proxy serving the pool's job")
            assert not task.done()
            rig = await Miner.connect(proxy.stratum_port)
            await rig.handshake()
            pool.set_upstream(pool.extranonce1_prefix, pool.extranonce2_size, 0x00FFE000)  # fewer bits
            told = await rig.wait(lambda m: m.get("method") == "mining.set_version_mask")
            job_id, job = rig.jobs[-1]
            en2 = (1).to_bytes(rig.extranonce2_size, "big")
            nonce, version = await asyncio.to_thread(rig.find_share, job_id, job, en2, 0x4000)
            reply = await rig.submit(job_id, en2, job.ntime, nonce, 0x4000)
            assert proxy.source.info(proxy.source.current).version_mask == 0x00FFE000
            return told["params"], reply, proxy.failover.client.malformed, blocks.items
        finally:
            proxy.stop()
            await asyncio.wait_for(task, 30)
            await pool.stop()

    told, reply, malformed, found = asyncio.run(scenario())
    assert told == ["00ffe000"]
    assert reply["result"] is True, reply
    assert malformed == 0
    assert len(found) == 1 and found[0][1].version & 0x1FFFE000 == 0x4000  # regtest: the share is a block

