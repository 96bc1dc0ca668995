"""Per-worker accepted work (gridminer_stratum_worker_share_difficulty_total): a real miner
on a loopback socket, shares found by our kernel, and a label set that stays bounded
whatever names the miners choose."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miner.config import Config, ConfigError, StratumConfig, load
from miner.modes.base import stratum_policy
from miner.metrics import Metrics
from miner.stratum import protocol as p
from miner.stratum.server import ServerLimits, StratumServer
from miner.stratum.vardiff import VardiffConfig
from tests.stratum.test_server import Miner
from tests.stratum.test_session import make_job

WORKER_METRIC = "gridminer_stratum_worker_share_difficulty_total"
# Easy shares (a few thousand hashes each) that vardiff leaves alone during the test.
EASY = VardiffConfig(start_difficulty=1e-6, fast_start_retarget_shares=1000, burst_shares=1000)


def worker_samples(metrics: Metrics) -> dict[str, float]:
    return {s.labels["worker"]: s.value for m in metrics.registry.collect() if m.name + "_total" == WORKER_METRIC
            for s in m.samples if s.name == WORKER_METRIC}


def test_accepted_work_is_counted_per_worker_and_names_past_the_limit_are_other():
    async def scenario():
        server = StratumServer(lambda job, solution: None, port=0, vardiff=EASY, metrics=Metrics(),
                               limits=ServerLimits(max_worker_labels=2))
        await server.start()
        server.broadcast(make_job("a"))  # mainnet-hard bits: shares, never blocks
        try:
            miner = await Miner.connect(server.port)
            await miner.handshake("site1.a")
            for worker in ("site1.b", "site1.c", "site1.d"):
                assert (await miner.request("mining.authorize", [worker, "x"]))["result"] is True
            replies = []
            for i, worker in enumerate(("site1.a", "site1.b", "site1.c", "site1.d", "site1.a")):
                job_id, job = miner.jobs[-1]
                en2 = i.to_bytes(miner.extranonce2_size, "big")
                nonce, _ = await asyncio.to_thread(miner.find_share, job_id, job, en2)
                replies.append(await miner.request("mining.submit", p.submit_params(
                    worker, job_id, en2, job.ntime, nonce, 0x2000)))
            # A rejected share (the same one again: a duplicate) adds no work to anyone.
            replies.append(await miner.request("mining.submit", p.submit_params(
                "site1.b", job_id, en2, job.ntime, nonce, 0x2000)))
            return replies, miner.difficulty, worker_samples(server.metrics), len(server._worker_counters)
        finally:
            await server.stop(reconnect_wait=None)

    replies, difficulty, samples, cached = asyncio.run(scenario())
    assert [r["result"] for r in replies[:5]] == [True] * 5, replies
    assert replies[5]["error"][0] == 22  # duplicate
    # The first two names keep their label (site1.a counted twice, also after the limit was
    # reached); the third and fourth distinct names share "other".
    assert samples == pytest.approx({"site1.a": 2 * difficulty, "site1.b": difficulty, "other": 2 * difficulty})
    assert cached == 2


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(0, 6),
       shares=st.lists(st.tuples(st.sampled_from([f"s.rig{i}" for i in range(12)] + ["other"]),
                                 st.sampled_from([1e-6, 0.5, 1.0, 2.0 ** 20])), max_size=60))
def test_worker_labels_are_the_first_names_up_to_the_limit_and_no_work_is_lost(limit, shares):
    server = StratumServer(lambda job, solution: None, metrics=Metrics(), limits=ServerLimits(max_worker_labels=limit))
    for worker, difficulty in shares:
        server.count_worker_work(worker, difficulty)
    samples = worker_samples(server.metrics)
    first_names = list(dict.fromkeys(w for w, _ in shares))[:limit]
    assert set(samples) <= set(first_names) | {"other"}
    assert len(samples) <= limit + 1
    assert sum(samples.values()) == pytest.approx(sum(d for _, d in shares))
    for name in first_names:
        if name != "other":
            assert samples[name] == pytest.approx(sum(d for w, d in shares if w == name))
    assert len(server._worker_counters) <= limit


def test_the_limit_comes_from_the_stratum_config(tmp_path):
    assert StratumConfig().max_worker_labels == 200 == ServerLimits().max_worker_labels
    path = tmp_path / "gridminer.toml"
    path.write_text("[stratum]\nmax_worker_labels = 7\n")
    assert stratum_policy(load(path, env={}))["limits"].max_worker_labels == 7
    assert stratum_policy(Config())["limits"].max_worker_labels == 200
    path.write_text("[stratum]\nmax_worker_labels = -1\n")
    with pytest.raises(ConfigError, match="stratum.max_worker_labels"):
        load(path, env={})
