"""gridminer's stratum miner against gridminer's stratum pool, both from fixtures."""

import pytest


@pytest.mark.gridminer_pool(difficulty=1)  # capped at regtest's network difficulty: every share a block
def test_our_miner_finds_blocks_through_our_pool(regtest_node, stratum_pool, stratum_miner):
    miner = stratum_miner(shares=3)
    assert [r.status for r in miner.wait_for_shares(3)] == ["accepted"] * 3
    for block_hash in stratum_pool.wait_for_blocks(3):
        assert regtest_node.call("getblockheader", block_hash)["confirmations"] >= 1
    methods = {m.method for m in stratum_pool.messages}
    assert {"mining.subscribe", "mining.authorize", "mining.submit", "mining.notify"} <= methods
