"""Agent mode end to end: CPU workers mine our own stratum server's jobs; the cgminer API
reports the rig and, with the token, curtails it."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace

import pytest

from miner.config import AgentConfig, Config, LogConfig, MetricsConfig, MiningConfig, StratumConfig, UpstreamConfig
from miner.modes.agent import AgentMiner
from miner.metrics import Metrics
from miner.stratum import protocol as p
from miner.stratum.server import StratumServer
from miner.testing import StratumPool
from tests.stratum.test_session import make_job
from tests.waiting import wait_until

TOKEN = "s3cret-token"
POOL_PASSWORD = "pool-pass-7f3a9c"


async def api_call(port: int, command: str, **extra) -> dict:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(json.dumps({"command": command, **extra}).encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return json.loads(data.rstrip(b"\x00"))




def test_agent_mines_a_pool_and_is_curtailed_through_the_cgminer_api():
    async def scenario():
        pool_server = StratumServer(lambda job, solution: None, port=0, metrics=Metrics())
        await pool_server.start()
        pool_server.broadcast(make_job("a"))  # mainnet-hard bits: shares, never blocks
        config = Config(mining=MiningConfig(mode="agent", threads=1),
                        upstream=UpstreamConfig(pools=[f"stratum+tcp://127.0.0.1:{pool_server.port}"],
                                                user="site1.rig7"),
                        agent=AgentConfig(api="127.0.0.1:0", token=TOKEN),
                        stratum=StratumConfig(listen="off"), metrics=MetricsConfig(listen="off"),
                        log=LogConfig(status_interval=60))
        agent = AgentMiner(config, metrics=Metrics(), out=open(os.devnull, "w"))
        task = asyncio.create_task(agent.run())
        try:
            await wait_until(lambda: agent.stats.accepted >= 3, 30, "accepted shares")
            summary = await api_call(agent.api_port, "summary")
            pools = await api_call(agent.api_port, "pools")
            refused = await api_call(agent.api_port, "pause")  # no token
            paused = await api_call(agent.api_port, "pause", token=TOKEN)
            await asyncio.sleep(0.3)  # the running kernel chunk ends
            hashes = agent.pool.hashes
            await asyncio.sleep(0.5)
            still = agent.pool.hashes
            devs = await api_call(agent.api_port, "devs")
            await api_call(agent.api_port, "resume", token=TOKEN)
            await wait_until(lambda: agent.pool.hashes > still, 10, "hashing to resume")
            agent.stop()
            await asyncio.wait_for(task, 30)
            server_accepted = pool_server.metrics.registry.get_sample_value(
                "gridminer_stratum_shares_total", {"site": "other", "result": "accepted"})
            return summary, pools, refused, paused, hashes, still, devs, agent.stats, server_accepted
        finally:
            agent.stop()
            await asyncio.gather(task, return_exceptions=True)
            await pool_server.stop(reconnect_wait=None)

    summary, pools, refused, paused, hashes, still, devs, stats, server_accepted = asyncio.run(scenario())
    assert summary["SUMMARY"][0]["Accepted"] >= 3 and summary["SUMMARY"][0]["MHS av"] > 0
    assert pools["POOLS"][0]["Status"] == "Alive" and pools["POOLS"][0]["User"] == "site1.rig7"
    assert refused["STATUS"][0]["Code"] == 45, "pause without the token is refused"
    assert paused["STATUS"][0]["STATUS"] == "S"
    assert still == hashes, "paused: no hashing"
    assert devs["DEVS"][0]["Status"] == "Idle"
    # Honest counting: what the agent calls accepted is what the pool accepted.
    assert stats.accepted == server_accepted and stats.rejected == 0


# --- against a real pool on a regtest node ----------------------------------------------------

# A share difficulty far above regtest's network difficulty (about 4.66e-10), as a pool
# that keeps its own difficulty sets it: one share per ~1M hashes, so hashes meet the
# network target long before they meet the pool's.
POOL_DIFFICULTY = 2.0 ** -20
# How long the pool's jobs are held back while the test tells the agent that difficulty.
NOTIFY_HOLD_S = 5.0


def agent_config(pool_url: str, threads: int = 1) -> Config:
    return Config(mining=MiningConfig(mode="agent", threads=threads),
                  upstream=UpstreamConfig(pools=[pool_url], user="site1.rig1"),
                  agent=AgentConfig(api="127.0.0.1:0", token=TOKEN),
                  stratum=StratumConfig(listen="off"), metrics=MetricsConfig(listen="off"),
                  log=LogConfig(status_interval=60))


async def set_pool_difficulty(pool: StratumPool, difficulty: float) -> None:
    """Make the agent mine at `difficulty` from its first job on.

    Our own server caps a share's difficulty at the network's (a share is never harder
    than a block), so on regtest it never holds a difficulty above it; pools that keep
    their own do. The pool's jobs are held back (delay_notify) until the agent has the
    server's set_difficulty and then ours, which applies from the next job on.
    """
    await wait_until(lambda: pool.find("mining.set_difficulty", direction="out"), 30,
                     "the pool's set_difficulty")
    pool.send({"id": None, "method": "mining.set_difficulty", "params": [difficulty]})
    pool.delay_notify(0, 0)


def test_a_pool_rejection_never_stops_the_agent(api_node):
    """Issue: the agent took a hash that met regtest's target for a block, sent it to a pool
    at difficulty above the network's, retired the tip when the pool rejected it, and
    hashed nothing more. Now the share target is the pool's and no answer stops it."""
    with StratumPool(api_node, difficulty=1.0) as pool:
        pool.delay_notify(NOTIFY_HOLD_S, count=None)
        # That pool's verdict on the agent's first share (the old agent sent one that met
        # the network target but not the pool's: a low-difficulty share).
        pool.reject_next_share(p.StratumError.LOW_DIFFICULTY)

        async def scenario():
            agent = AgentMiner(agent_config(pool.url), metrics=Metrics(), out=open(os.devnull, "w"))
            task = asyncio.create_task(agent.run())
            try:
                await set_pool_difficulty(pool, POOL_DIFFICULTY)
                await wait_until(lambda: agent.source.rejects[p.StratumError.LOW_DIFFICULTY], 60,
                                 "the pool's rejection")
                accepted_then = agent.stats.accepted
                await wait_until(lambda: agent.stats.accepted >= accepted_then + 3, 120,
                                 "shares accepted after the rejection")
                rate, status = agent.pool.rate(), agent.status_line()
                agent.stop()
                await asyncio.wait_for(task, 30)
                return agent, rate, status
            finally:
                agent.stop()
                await asyncio.gather(task, return_exceptions=True)

        agent, rate, status = asyncio.run(scenario())
        submits = pool.find("mining.submit", direction="in")
    # The injected verdict is the only low-difficulty one (others are jobs gone stale when
    # a block of the pool moved the tip, answered 21 by the pool).
    assert agent.source.rejects[p.StratumError.LOW_DIFFICULTY] == 1 and agent.stats.accepted >= 3
    assert rate > 0 and "paused" not in status and "curtailed" not in status
    # Every share the agent sent met the pool's difficulty, not merely the network's.
    assert agent.pool.hardware_errors == 0
    assert len(submits) == agent.stats.accepted + agent.stats.rejected + agent.stats.stale
    assert agent.pool.best_share >= POOL_DIFFICULTY


def test_a_paused_or_curtailed_agent_reports_no_rate_and_real_share_figures(api_node):
    """Issue: a paused agent's cgminer devs said Idle with MHS 5s > 0 and the status line
    decayed over the rate window; Found Blocks, Best Share and Hardware Errors were 0."""
    from miner.devices.local import LocalWorkers

    with StratumPool(api_node, difficulty=1.0) as pool:
        pool.delay_notify(NOTIFY_HOLD_S, count=None)

        async def scenario():
            agent = AgentMiner(agent_config(pool.url), metrics=Metrics(), out=open(os.devnull, "w"))
            task = asyncio.create_task(agent.run())
            seen = {}
            try:
                await set_pool_difficulty(pool, POOL_DIFFICULTY)
                await wait_until(lambda: agent.stats.accepted >= 2, 120, "accepted shares")
                port = agent.api_port
                seen["summary"] = (await api_call(port, "summary"))["SUMMARY"][0]
                seen["network_hits"], seen["best"] = agent.pool.network_hits, agent.pool.best_share
                await api_call(port, "pause", token=TOKEN)
                seen["paused"] = (await api_call(port, "summary"))["SUMMARY"][0]
                seen["paused_dev"] = (await api_call(port, "devs"))["DEVS"][0]
                seen["paused_line"] = agent.status_line()
                await api_call(port, "resume", token=TOKEN)
                await wait_until(lambda: agent.pool.rate() > 0, 30, "hashing again")
                seen["running_line"] = agent.status_line()
                curtail = LocalWorkers("rig", agent.pool)  # the scheduler's device for these workers
                await curtail.apply(0.0)
                seen["curtailed_dev"] = (await api_call(port, "devs"))["DEVS"][0]
                seen["curtailed_line"] = agent.status_line()
                await curtail.apply(1.0)
                await wait_until(lambda: agent.pool.rate() > 0, 30, "hashing again")
                agent.pool.set_active_threads(0)
                seen["no_threads"] = (await api_call(port, "summary"))["SUMMARY"][0]
                seen["no_threads_line"] = agent.status_line()
                agent.stop()
                await asyncio.wait_for(task, 30)
                return seen
            finally:
                agent.stop()
                await asyncio.gather(task, return_exceptions=True)

        seen = asyncio.run(scenario())
    summary = seen["summary"]
    # On regtest every share also meets the network target: each is a found block.
    assert summary["Found Blocks"] >= summary["Accepted"] >= 2
    assert summary["Found Blocks"] <= seen["network_hits"]
    assert POOL_DIFFICULTY <= summary["Best Share Difficulty"] <= seen["best"]
    assert summary["Hardware Errors"] == 0
    assert summary["MHS 5s"] > 0
    assert seen["paused"]["MHS 5s"] == 0 and seen["paused"]["MHS av"] == 0 and seen["paused"]["Paused"]
    assert seen["paused_dev"]["Status"] == "Idle" and seen["paused_dev"]["MHS 5s"] == 0
    assert seen["paused_line"].split("|")[0].strip() == "0 H/s" and seen["paused_line"].endswith("| paused")
    assert "paused" not in seen["running_line"] and "curtailed" not in seen["running_line"]
    assert seen["curtailed_dev"]["MHS 5s"] == 0 and seen["curtailed_line"].endswith("| curtailed")
    assert seen["no_threads"]["MHS 5s"] == 0 and seen["no_threads_line"].endswith("| curtailed")


def test_hardware_errors_reach_the_cgminer_api():
    """A kernel result that fails verification is a hardware error (cgminer's meaning), shown
    by summary and devs. The kernel here returns one wrong nonce: a faulty device."""
    from kernels import scan as kscan
    from miner.chain.target import difficulty_to_target
    from miner.devices.agent_api import AgentAPIServer
    from miner.hashing.pool import WorkerPool
    from miner.modes.agent import RigState

    share_target = difficulty_to_target(2.0 ** -20)
    wrong = []

    def faulty_scan(scan_job, target_words, start, count, out):
        hits, consumed = kscan.scan_chunk(scan_job, target_words, start, count, out)
        if not wrong:
            wrong.append(start)  # the first nonce of the range: no share (checked below)
            hits = [start, *hits]
        return hits, consumed

    async def scenario():
        config = agent_config("stratum+tcp://127.0.0.1:1")
        config = replace(config, upstream=replace(config.upstream, password=POOL_PASSWORD))
        agent = AgentMiner(config, metrics=Metrics(), out=open(os.devnull, "w"))
        agent.pool = WorkerPool(1, lambda *a: None, scan_chunk=faulty_scan)
        agent.pool.start()
        api = AgentAPIServer(RigState(agent), host="127.0.0.1", port=0, token=TOKEN)
        await api.start()
        try:
            agent.pool.set_job(make_job("hw"), share_target=share_target)
            await wait_until(lambda: agent.pool.hardware_errors, 30, "the wrong hit")
            shown = json.dumps([await api_call(api.port, cmd) for cmd in ("config", "pools", "summary", "stats")])
            assert TOKEN not in shown and POOL_PASSWORD not in shown, "the API shows no secret"
            return (await api_call(api.port, "summary"))["SUMMARY"][0], (await api_call(api.port, "devs"))["DEVS"][0]
        finally:
            await api.stop()
            await asyncio.to_thread(agent.pool.stop)

    summary, dev = asyncio.run(scenario())
    assert summary["Hardware Errors"] == 1 and dev["Hardware Errors"] == 1
    assert summary["Device Hardware%"] > 0



@pytest.mark.parametrize("policy", ["same-host", "any", "never"])
def test_client_reconnect_goes_to_the_configured_host_only(api_node, policy):
    """A pool's client.reconnect to another host would take our worker name and password
    there: followed only as upstream.follow_reconnect says (default: the same host)."""
    with StratumPool(api_node) as pool, StratumPool(api_node, host="127.0.0.2") as elsewhere, \
            StratumPool(api_node) as same_host:
        config = agent_config(pool.url, threads=0)
        config = replace(config, upstream=replace(config.upstream, password=POOL_PASSWORD, follow_reconnect=policy))

        def ping(n: int) -> None:
            """The agent answers in order: once it answers this ping it has handled what came before."""
            after = pool.messages[-1].seq
            pool.send({"id": n, "method": "mining.ping", "params": []})
            pool.wait_for_message(direction="in", after=after, timeout=30,
                                  predicate=lambda m: isinstance(m.data, dict) and m.data.get("id") == n)

        async def scenario():
            agent = AgentMiner(config, metrics=Metrics(), out=open(os.devnull, "w"))
            task = asyncio.create_task(agent.run())
            try:
                await wait_until(lambda: agent.failover is not None and agent.failover.up, 30, "the pool")
                client = agent.failover.client
                pool.send_reconnect("127.0.0.2", elsewhere.port)  # another host
                if policy == "any":
                    await wait_until(lambda: elsewhere.find("mining.authorize"), 30, "the other host")
                else:
                    await asyncio.to_thread(ping, 1001)
                pool.send_reconnect("127.0.0.1", same_host.port)  # the configured host, another port
                if policy == "same-host":
                    await wait_until(lambda: same_host.find("mining.authorize"), 30, "the same host's port")
                elif policy == "never":
                    await asyncio.to_thread(ping, 1002)
                return client.reconnects, client.reconnects_refused
            finally:
                agent.stop()
                await asyncio.gather(task, return_exceptions=True)

        followed, refused = asyncio.run(scenario())
        authorized_elsewhere = [m.params for m in elsewhere.find("mining.authorize")]
        authorized_same_host = [m.params for m in same_host.find("mining.authorize")]
    if policy == "same-host":
        assert authorized_elsewhere == [] and not elsewhere.connections
        assert authorized_same_host == [["site1.rig1", POOL_PASSWORD]]
        assert (followed, refused) == (1, 1)
    elif policy == "any":
        assert authorized_elsewhere == [["site1.rig1", POOL_PASSWORD]]
    else:
        assert not elsewhere.connections and not same_host.connections
        assert (followed, refused) == (0, 2)
