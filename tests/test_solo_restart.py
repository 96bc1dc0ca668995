"""Solo mining across a Bitcoin Core restart: Core writes a new RPC cookie each start, and a
miner configured with node.cookie_file must read it again instead of being refused (HTTP
401) for good. A graceful stop keeps the chain, so mining simply goes on."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from tests.test_solo import miner_for
from tests.waiting import wait_until


@pytest.mark.skipif(shutil.which("bitcoind") is None,
                    reason="needs Bitcoin Core's bitcoind on PATH (the cookie is Core's; bcoin uses an api key)")
def test_mining_goes_on_after_core_restarts_with_a_new_cookie(regtest_node_factory, tmp_path):
    node = regtest_node_factory(kind="bitcoind", persistent=True)
    cookie = node.datadir / "regtest" / ".cookie"
    miner = miner_for(node, tmp_path, node.new_address("bech32"))

    async def scenario():
        task = asyncio.create_task(miner.run())
        try:
            await wait_until(lambda: miner.stats.accepted >= 2, 60, "first blocks")
            old_cookie = cookie.read_text()
            await asyncio.to_thread(node.restart)
            assert cookie.read_text() != old_cookie, "Core wrote a new cookie"
            accepted = miner.stats.accepted
            await wait_until(lambda: miner.stats.accepted >= accepted + 3, 60, "blocks after the restart")
        finally:
            miner.stop()
            await asyncio.wait_for(task, 30)

    asyncio.run(scenario())
