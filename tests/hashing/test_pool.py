"""The CPU worker pool with the real kernel: blocks, shares, job switches, pause."""

import threading
import time

import pytest

from kernels.scan import warm_up
from miner.chain import bits_to_target, build_coinbase
from miner.hashing.pool import RateMeter, WorkerPool
from miner.metrics import Metrics
from miner.work.job import Job

REGTEST_BITS = 0x207FFFFF
HARD_BITS = 0x1702068F  # mainnet 951658: no block in any test's lifetime


def make_job(job_id: str, bits: int, height: int = 1) -> Job:
    coinbase = build_coinbase(height, 50 * 10**8, bytes.fromhex("0014" + "11" * 20), extranonce_size=8)
    return Job(job_id=job_id, prev_hash_internal=bytes(31) + bytes((height,)), version=0x20000000, bits=bits,
               ntime=1_700_000_000, target=bits_to_target(bits), coinbase=coinbase, merkle_branch=(),
               clean=True, height=height)


class Collector:
    def __init__(self):
        self.items, self.cond = [], threading.Condition()

    def __call__(self, job, solution, is_block):
        with self.cond:
            self.items.append((job, solution, is_block))
            self.cond.notify_all()

    def wait_for(self, predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.items):
                left = deadline - time.monotonic()
                assert left > 0, f"timed out; got {len(self.items)} solutions"
                self.cond.wait(left)
        return list(self.items)


@pytest.fixture(scope="module", autouse=True)
def compiled_kernel():
    """Compile (or load) the kernel first: a cold numba cache must not eat the timed windows."""
    warm_up()


@pytest.fixture
def pool_factory():
    pools = []

    def make(threads=2, **kw):
        collector = Collector()
        pool = WorkerPool(threads, collector, metrics=kw.pop("metrics", None) or Metrics(), **kw)
        pool.start()
        pools.append(pool)
        return pool, collector

    yield make
    for p in pools:
        p.stop()


def test_block_solution_is_a_valid_block_and_retires_the_job(pool_factory):
    pool, got = pool_factory(threads=2, extranonce_prefix=b"\x00\x00\x00\x07")
    job = make_job("a", REGTEST_BITS)
    pool.set_job(job)
    items = got.wait_for(lambda xs: len(xs) >= 1)
    job_, solution, is_block = items[0]
    assert is_block and job_ is job
    block = job.block(solution)
    assert block.check(check_pow=True) == []
    assert solution.extranonce[:4] == b"\x00\x00\x00\x07"
    time.sleep(0.3)
    assert len(got.items) == 1, "a job whose block was found must not be hashed further"


def test_new_job_reaches_the_threads_within_a_chunk(pool_factory):
    pool, got = pool_factory(threads=2)
    pool.set_job(make_job("hard", HARD_BITS))
    time.sleep(0.3)
    t0 = time.monotonic()
    pool.set_job(make_job("easy", REGTEST_BITS, height=2))
    items = got.wait_for(lambda xs: any(j.job_id == "easy" for j, _, _ in xs))
    assert time.monotonic() - t0 < 1.0
    assert all(j.job_id == "easy" for j, _, _ in items)


def test_shares_below_the_block_target_keep_hashing(pool_factory):
    metrics = Metrics()
    pool, got = pool_factory(threads=2, metrics=metrics)
    job = make_job("s", HARD_BITS)
    share_target = 1 << 244  # ~1 share per 4096 nonces
    pool.set_job(job, share_target=share_target)
    # Both threads must have found shares (under load one may start a little later).
    items = got.wait_for(lambda xs: len(xs) >= 40 and len({s.extranonce[0] for _, s, _ in xs}) == 2)
    assert not any(is_block for _, _, is_block in items)
    for _, solution, _ in items:
        header = job.solution_header(solution)
        assert header.meets_target(share_target)
    # Two threads, distinct extranonces: the thread byte differs, no header is hashed twice.
    assert len({s.extranonce[0] for _, s, _ in items}) == 2
    assert len({(s.extranonce, s.nonce) for _, s, _ in items}) == len(items)
    assert metrics.registry.get_sample_value("gridminer_hashes_total", {"site": "local", "worker_group": "local"}) > 0
    assert pool.rate() > 0


def test_pause_stops_hashing_and_resume_restarts_it(pool_factory):
    pool, _ = pool_factory(threads=1)
    pool.set_job(make_job("p", HARD_BITS))
    time.sleep(0.3)
    pool.pause()
    time.sleep(0.2)  # let the running chunk end
    before = pool.hashes
    time.sleep(0.3)
    assert pool.hashes == before
    pool.resume()
    time.sleep(0.3)
    assert pool.hashes > before


def test_zero_threads_and_bad_arguments():
    pool = WorkerPool(0, lambda *a: None)
    pool.start()
    pool.set_job(make_job("z", REGTEST_BITS))
    pool.stop()
    assert pool.hashes == 0
    with pytest.raises(ValueError):
        WorkerPool(-1, lambda *a: None)
    with pytest.raises(ValueError, match="extranonce"):
        WorkerPool(1, lambda *a: None, extranonce_prefix=bytes(7)).set_job(make_job("x", REGTEST_BITS))


def test_rate_meter_window():
    now = [0.0]
    meter = RateMeter(window=10.0, clock=lambda: now[0])
    for _ in range(20):
        now[0] += 1.0
        meter.add(100)
    assert meter.rate() == pytest.approx(100.0, rel=0.11)
    assert meter.total == 2000


def test_a_found_block_retires_its_tip_until_it_moves_or_is_retried(pool_factory):
    pool, got = pool_factory(threads=2)
    pool.set_job(make_job("a", REGTEST_BITS, height=1))
    got.wait_for(lambda xs: len(xs) == 1)
    # A refreshed template for the same tip (new fees, same prev hash) must not be mined:
    # a second block on that prev hash would compete with our own.
    refreshed = make_job("a2", REGTEST_BITS, height=1)
    pool.set_job(refreshed)
    time.sleep(0.3)
    assert len(got.items) == 1
    pool.retry_tip(bytes(32))  # a rejection on some other tip changes nothing here
    time.sleep(0.3)
    assert len(got.items) == 1
    pool.retry_tip(refreshed.prev_hash_internal)  # the node rejected our block: the tip is open again
    got.wait_for(lambda xs: len(xs) == 2)
    assert got.items[1][0] is refreshed
    pool.set_job(make_job("b", REGTEST_BITS, height=2))  # a new tip
    got.wait_for(lambda xs: len(xs) == 3)
    assert got.items[2][0].job_id == "b"
