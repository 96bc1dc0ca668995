"""Agent mode end to end: CPU workers mine our own stratum server's jobs; the cgminer API
reports the rig and, with the token, curtails it."""

from __future__ import annotations

import asyncio
import json
import os

from miner.config import AgentConfig, Config, LogConfig, MetricsConfig, MiningConfig, StratumConfig, UpstreamConfig
from miner.controller import AgentMiner
from miner.metrics import Metrics
from miner.stratum.server import StratumServer
from tests.stratum.test_session import make_job
from tests.waiting import wait_until

TOKEN = "s3cret-token"


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
