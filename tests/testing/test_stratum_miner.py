"""StratumMiner: gridminer's stratum client and kernel as a test peer for pools."""

from __future__ import annotations

import socket
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miner.stratum.server import StratumServer
from miner.stratum.vardiff import VardiffConfig
from miner.testing import StratumMiner, StratumMinerError, StratumPool
from miner.testing.loop import LoopThread
from miner.testing.stratum_miner import roll_version
from miner.work.template import job_from_template
from tests.work.support import PAYOUT_SCRIPT, bcoin_template

U32 = 0xFFFFFFFF


def test_miner_against_our_pool_finds_accepted_shares_and_blocks(api_node):
    # Difficulty 1, capped at regtest's network difficulty: every share is a block.
    with StratumPool(api_node, difficulty=1.0) as pool:
        with StratumMiner(pool.url, shares=5) as miner:
            results = miner.wait_for_shares(5)
            assert [r.status for r in results] == ["accepted"] * 5 and miner.rejected == []
            assert all(r.is_block for r in results)
            blocks = pool.wait_for_blocks(5)
        for block_hash in blocks:  # each one in the node's best chain
            assert api_node.call("getblockheader", block_hash)["confirmations"] >= 1
        # After a block the miner waits for the pool's job on the new tip: no stale work.
        assert len({j.prev_hash for j in miner.jobs}) >= 5


def test_share_limit_stops_hashing(api_node):
    with StratumPool(api_node, difficulty=2**-32) as pool:
        with StratumMiner(pool.url, shares=3) as miner:
            miner.wait_for_shares(3)
            hashes = miner.hashes
            time.sleep(0.3)
            assert miner.submitted == 3 and miner.hashes == hashes
            assert len(pool.find("mining.submit", direction="in")) == 3


def serve_one_job(bits: str, blocks: list | None = None):
    """A real StratumServer with one job (never a new one) at difficulty 1 or the network's if lower."""
    template = bcoin_template()
    template.update(bits=bits)
    template.pop("target", None)
    job = job_from_template(template, payout_script=PAYOUT_SCRIPT, job_id="1", extranonce_size=8, clean=True)
    loop = LoopThread("one-job-pool")
    loop.start()
    found = blocks if blocks is not None else []
    server = StratumServer(lambda job, solution: found.append(solution), port=0,
                           vardiff=VardiffConfig(min_difficulty=1.0, max_difficulty=1.0, start_difficulty=1.0))

    async def start() -> None:
        await server.start()
        server.broadcast(job)

    loop.run(start(), 10)
    try:
        yield f"stratum+tcp://127.0.0.1:{server.port}"
    finally:
        loop.run(server.stop(reconnect_wait=None), 10)
        loop.stop()


@pytest.fixture
def hard_pool():
    """Difficulty 1: no share for billions of hashes."""
    yield from serve_one_job("1d00ffff")


def test_a_pool_that_never_moves_the_tip_gets_more_blocks_after_the_timeout():
    """After a block the miner waits for a new tip, but not forever (the pool's node may refuse it)."""
    blocks: list = []
    for url in serve_one_job("207fffff", blocks):  # regtest bits: every share is a block
        with StratumMiner(url, new_tip_timeout=0.3) as miner:
            [first] = miner.wait_for_shares(1)
            time.sleep(0.15)
            assert len(miner.results) == 1  # waiting for a job on a new tip
            results = miner.wait_for_shares(2, timeout=5)
        assert first.is_block and results[1].is_block and len(blocks) >= 2


def test_hashrate_cap_holds(hard_pool):
    cap = 50_000.0
    with StratumMiner(hard_pool, hashrate=cap) as miner:
        miner.wait_until(lambda: miner.hashes > 0, 10, "hashing to start")
        time.sleep(0.2)
        h0, t0 = miner.hashes, time.monotonic()
        time.sleep(1.5)
        rate = (miner.hashes - h0) / (time.monotonic() - t0)
        assert miner.results == []
    assert 0.7 * cap <= rate <= 1.15 * cap, rate


def test_no_pool_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(StratumMinerError, match=f"no job from stratum\\+tcp://127.0.0.1:{port} within 1 s"):
            with StratumMiner(f"stratum+tcp://127.0.0.1:{port}", connect_timeout=1.0):
                pass


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="hashrate"):
        StratumMiner("stratum+tcp://127.0.0.1:3333", hashrate=0)
    with pytest.raises(ValueError, match="shares"):
        StratumMiner("stratum+tcp://127.0.0.1:3333", shares=-1)


@given(st.integers(0, U32), st.integers(0, U32), st.integers(0, 2**40))
def test_roll_version_changes_only_masked_bits(base, mask, n):
    rolled = roll_version(base, mask, n)
    assert 0 <= rolled <= U32
    assert (rolled ^ base) & ~mask & U32 == 0


@given(st.integers(0, U32).filter(lambda m: 0 < bin(m).count("1") <= 12))
def test_roll_version_walks_every_combination_of_the_mask(mask):
    bits = bin(mask).count("1")
    versions = {roll_version(0x20000000, mask, n) for n in range(1 << bits)}
    assert len(versions) == 1 << bits
