"""StratumPool: a real stratum server on a regtest node; every fault seen by gridminer's client.

The client under each fault is StratumMiner (gridminer's StratumClient, PoolFailover and
kernel), so each test shows the fault on the wire (pool.messages) and its effect on a
real miner.
"""

from __future__ import annotations

import time

import pytest

from miner.stratum.vardiff import VardiffConfig
from miner.testing import StratumMiner, StratumPool, mine

# Regtest's network difficulty (bits 207fffff), which caps every share difficulty.
REGTEST_DIFFICULTY = 0xFFFF * 2**208 / (0x7FFFFF * 2**232)


@pytest.fixture
def pool(api_node):
    with StratumPool(api_node) as pool:
        yield pool


def shares_seen_by_server(pool: StratumPool, result: str = "accepted") -> float:
    value = pool.metrics.registry.get_sample_value("gridminer_stratum_shares_total",
                                                   {"site": "other", "result": result})
    return value or 0.0


def test_every_message_is_recorded_both_ways(pool):
    with StratumMiner(pool.url, user="site1.rig7", shares=1) as miner:
        miner.wait_for_shares(1)
    methods_in = [m.method for m in pool.messages if m.direction == "in"]
    assert methods_in[:3] == ["mining.configure", "mining.subscribe", "mining.authorize"]
    assert "mining.submit" in methods_in
    replies = {m.reply_to: m for m in pool.find(direction="out") if m.reply_to}
    assert replies["mining.authorize"].result is True
    assert replies["mining.submit"].result is True and replies["mining.submit"].worker == "site1.rig7"
    assert [m.method for m in pool.find(direction="out") if m.method][:2] == ["mining.set_difficulty",
                                                                              "mining.notify"]
    assert [m.seq for m in pool.messages] == list(range(1, len(pool.messages) + 1))
    [conn] = pool.connections
    assert conn.worker == "site1.rig7" and conn.extranonce1 == miner.sessions[0].extranonce1
    assert pool.wait_until(lambda: pool.connections[0].close_reason, 5, "the close") == "miner_closed"
    assert not any(m.injected for m in pool.messages)


def test_reject_next_share_with_code_23(pool):
    pool.reject_next_share(23)
    pool.reject_next_share(21, "stale, sorry")
    with StratumMiner(pool.url, shares=4) as miner:
        miner.wait_for_shares(4)
        assert miner.rejected == [(23, "Low difficulty share"), (21, "stale, sorry")]
        assert miner.accepted == 2
    injected = [m for m in pool.messages if m.injected]
    assert [m.error for m in injected] == [[23, "Low difficulty share", None], [21, "stale, sorry", None]]
    assert all(m.reply_to == "mining.submit" for m in injected)
    # The rejected shares never reached the server: it counted only the accepted ones.
    assert shares_seen_by_server(pool) == 2
    assert len(pool.find("mining.submit", direction="in")) == 4


def test_a_dropped_connection_is_seen_and_survived(pool):
    with StratumMiner(pool.url, hashrate=200) as miner:
        miner.wait_until(lambda: miner.accepted >= 1, 20, "a first accepted share")
        assert pool.drop_connections() == 1
        sessions = miner.wait_for_sessions(2)
        assert sessions[1].extranonce1 != sessions[0].extranonce1  # a new connection, a new extranonce1
        accepted = miner.accepted
        miner.wait_until(lambda: miner.accepted > accepted, 20, "an accepted share after the drop")
    first, second = pool.connections[:2]
    assert first.close_reason == "dropped" and second.id == 2
    assert miner.reconnect_requests == 0  # it reconnected by itself


def test_a_delayed_notify_reaches_the_miner_late(pool, api_node):
    delay = 1.5
    with StratumMiner(pool.url, shares=0) as miner:  # listens, never hashes
        def job_on(tip: str) -> float | None:
            return next((j.time for j in miner.jobs if j.prev_hash == tip), None)

        before = time.monotonic()
        [tip] = mine(api_node, 1)
        on_time = miner.wait_until(lambda: job_on(tip), 10, "the job on the new tip") - before
        assert on_time < 1.0

        pool.delay_notify(delay)
        before = time.monotonic()
        [tip] = mine(api_node, 1)
        late = miner.wait_until(lambda: job_on(tip), 10, "the delayed job") - before
        assert late >= delay
    held = [m for m in pool.find("mining.notify") if m.delayed_s]
    assert len(held) == 1 and held[0].delayed_s == delay


def test_client_reconnect_is_followed(pool):
    with StratumMiner(pool.url, shares=0) as miner:
        assert pool.send_reconnect(wait=0) == 1
        sessions = miner.wait_for_sessions(2)
        assert miner.reconnect_requests == 1 and len(sessions) == 2
        [sent] = pool.find("client.reconnect")
        assert sent.injected and sent.params == [pool.host, pool.port, 0]
        pool.wait_for_connections(2)
    closed = pool.wait_until(lambda: [c.close_reason for c in pool.connections if c.close_reason][1:], 5,
                             "both connections closed")
    assert pool.connections[0].close_reason == "miner_closed" and closed == ["miner_closed"]


def test_difficulty_extranonce_and_version_rolling_knobs(api_node):
    mask = 0x00FFE000
    with StratumPool(api_node, difficulty=2**-32, extranonce1_size=2, extranonce2_size=6,
                     version_mask=mask) as pool:
        with StratumMiner(pool.url, shares=6) as miner:
            results = miner.wait_for_shares(6)
        [session] = miner.sessions
        assert len(bytes.fromhex(session.extranonce1)) == 2 and session.extranonce2_size == 6
        assert session.version_mask == mask
        assert all(r.difficulty == 2**-32 for r in results) and miner.accepted == 6
        # 2**-32 is below regtest's network difficulty, so some shares are not blocks.
        assert 2**-32 < REGTEST_DIFFICULTY
        assert pool.find("mining.set_difficulty")[0].params == [2**-32]
        submits = pool.find("mining.submit", direction="in")
        extranonce2s = [bytes.fromhex(m.params[2]) for m in submits]
        assert all(len(e) == 6 for e in extranonce2s)
        version_bits = [int(m.params[5], 16) for m in submits]
        assert all(v & ~mask == 0 for v in version_bits) and any(version_bits)  # rolled, inside the mask


def test_vardiff_knob(api_node):
    with StratumPool(api_node, vardiff=VardiffConfig(start_difficulty=1e-10, min_difficulty=1e-12)) as pool:
        with StratumMiner(pool.url, shares=0):
            first = pool.wait_for_message("mining.set_difficulty")
    assert first.params == [1e-10]


def test_bad_knobs_are_refused():
    with pytest.raises(ValueError, match="not both"):
        StratumPool(difficulty=1.0, vardiff=VardiffConfig())
    with pytest.raises(ValueError, match="difficulty must be > 0"):
        StratumPool(difficulty=0)
    with pytest.raises(ValueError, match="extranonce1_size"):
        StratumPool(extranonce1_size=0)
    with pytest.raises(ValueError, match="extranonce2_size"):
        StratumPool(extranonce2_size=17)
    with pytest.raises(RuntimeError, match="not started"):
        StratumPool().drop_connections()


def test_a_pool_without_a_node_runs_its_own(api_node):
    with StratumPool() as pool:
        node = pool.node
        assert node is not None and node is not api_node and node.running
        datadir = node.datadir
        with StratumMiner(pool.url, shares=2) as miner:
            miner.wait_for_shares(2)
        assert pool.wait_for_blocks(1)
        assert node.call("getblockcount") >= 1
    assert not node.running and not datadir.exists()
