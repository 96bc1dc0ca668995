"""A pool developer's view: the faults a miner must survive, seen by gridminer's miner."""

import pytest


@pytest.mark.gridminer_pool(extranonce2_size=6, version_mask=0x00FFE000)
def test_a_miner_survives_a_rejected_share_a_drop_and_a_reconnect(stratum_pool, stratum_miner):
    stratum_pool.reject_next_share(23)
    miner = stratum_miner(hashrate=100)
    miner.wait_until(lambda: miner.rejected, timeout=20)
    assert miner.rejected[0] == (23, "Low difficulty share")

    assert stratum_pool.drop_connections() == 1
    miner.wait_for_sessions(2)
    assert stratum_pool.send_reconnect() == 1
    miner.wait_for_sessions(3)
    assert miner.reconnect_requests == 1

    accepted = miner.accepted
    miner.wait_until(lambda: miner.accepted > accepted, timeout=20)
    assert [c.close_reason for c in stratum_pool.connections[:1]] == ["dropped"]
    assert miner.sessions[-1].extranonce2_size == 6 and miner.sessions[-1].version_mask == 0x00FFE000
