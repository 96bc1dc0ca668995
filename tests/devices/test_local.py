"""The local CPU pool as a scheduler device, with the real kernel: pause, resume, partial
levels by active threads, and what read() reports."""

from __future__ import annotations

import asyncio
import time

import pytest

from kernels.scan import warm_up
from miner.devices.local import LocalWorkers, active_threads_for
from miner.hashing.pool import WorkerPool
from miner.metrics import Metrics
from miner.devices.model import DeviceError
from tests.hashing.test_pool import HARD_BITS, make_job


@pytest.fixture(scope="module", autouse=True)
def compiled_kernel():
    warm_up()


class ThreadsSeen:
    """Solution callback: which thread indexes found shares (the extranonce's thread byte)."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def __call__(self, job, solution, is_block) -> None:
        self.seen.add(solution.extranonce[0])


@pytest.fixture
def rig():
    """(pool of 2 threads hashing a share-rich job, its ThreadsSeen, its Metrics)."""
    threads_seen, metrics = ThreadsSeen(), Metrics()
    p = WorkerPool(2, threads_seen, metrics=metrics, site="texas")
    p.start()
    p.set_job(make_job("hard", HARD_BITS), share_target=1 << 248)  # a share every ~256 nonces
    yield p, threads_seen, metrics
    p.stop()


def threads_hashing(threads_seen: ThreadsSeen, seconds: float) -> set[int]:
    """Which thread indexes hashed during the next `seconds`."""
    threads_seen.seen.clear()
    time.sleep(seconds)
    return set(threads_seen.seen)


def test_active_threads_for_levels():
    assert active_threads_for(0.0, 8) == 0
    assert active_threads_for(1.0, 8) == 8
    assert active_threads_for(0.5, 3) == 2
    assert active_threads_for(0.3, 10) == 3  # not 4: 0.3 x 10 is 3.0000000000000004 in floats
    assert active_threads_for(0.01, 8) == 1  # on means at least one thread


def test_set_active_threads_idles_the_upper_threads(rig):
    pool, threads_seen, metrics = rig
    pool.set_active_threads(1)
    time.sleep(0.2)  # running chunks end
    assert threads_hashing(threads_seen, 0.5) == {0}
    assert metrics.registry.get_sample_value("gridminer_workers", {"site": "texas", "worker_group": "local"}) == 1
    pool.set_active_threads(2)
    assert threads_hashing(threads_seen, 0.5) == {0, 1}
    pool.set_active_threads(0)
    time.sleep(0.2)
    before = pool.hashes
    time.sleep(0.3)
    assert pool.hashes == before
    with pytest.raises(ValueError):
        pool.set_active_threads(3)


def test_apply_and_read_follow_the_pool(rig):
    pool, _, _ = rig
    now = [100.0]
    dev = LocalWorkers("cpu", pool, power_w=200.0, clock=lambda: now[0])

    async def scenario():
        time.sleep(0.3)
        first = await dev.read()
        await dev.apply(0.0)
        time.sleep(0.2)  # the running chunk ends
        await dev.read()  # takes the chunk's last hashes
        time.sleep(0.3)
        paused = await dev.read()
        await dev.apply(0.5)
        just_resumed = await dev.read()  # before any new hash: the grace period covers it
        time.sleep(0.3)
        half = await dev.read()
        await dev.apply(1.0)
        time.sleep(0.3)
        full = await dev.read()
        return first, paused, just_resumed, half, full

    first, paused, just_resumed, half, full = asyncio.run(scenario())
    assert first.hashing and first.hashrate_hs > 0 and first.power_w == 200.0
    assert not paused.hashing and paused.hashrate_hs == 0.0 and paused.power_w == 0.0
    assert pool.paused is False
    assert just_resumed.hashing
    assert half.hashing and half.level == 0.5 and half.power_w == 100.0
    assert full.hashing and full.level == 1.0 and full.power_w == 200.0


def test_resumed_pool_without_work_is_not_hashing_after_the_grace():
    """Not paused is not hashing: with no job the nonce counter stands still."""
    pool = WorkerPool(1, lambda *a: None, metrics=Metrics())
    pool.start()
    now = [0.0]
    dev = LocalWorkers("cpu", pool, clock=lambda: now[0], wake_grace_seconds=5.0)
    try:
        async def scenario():
            await dev.apply(0.0)
            await dev.apply(1.0)
            during = await dev.read()
            now[0] += 6.0
            return during, await dev.read()

        during, after = asyncio.run(scenario())
    finally:
        pool.stop()
    assert during.hashing
    assert not after.hashing and after.power_w is None


def test_bad_levels_and_a_pool_without_threads():
    pool = WorkerPool(0, lambda *a: None)
    dev = LocalWorkers("cpu", pool)
    for level in (-0.1, 1.5, float("nan")):
        with pytest.raises(DeviceError):
            asyncio.run(dev.apply(level))
    with pytest.raises(DeviceError, match="no CPU threads"):
        asyncio.run(dev.apply(1.0))
    asyncio.run(dev.apply(0.0))  # curtailing nothing is fine
    with pytest.raises(ValueError):
        LocalWorkers("cpu", pool, power_w=-5.0)
