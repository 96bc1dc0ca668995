"""The CPU worker pool with the real kernel: blocks, shares, job switches, pause."""

import threading
import time

import pytest

from kernels import scan as kscan
from kernels.scan import warm_up
from miner.chain import bits_to_target, build_coinbase, sha256d
from miner.chain.target import DIFF1_TARGET
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
    got.wait_for(lambda xs: len(xs) >= 1)  # ">=": a second block fails below, clearly, not as a timeout
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
    got.wait_for(lambda xs: len(xs) >= 2)
    assert got.items[1][0] is refreshed
    pool.set_job(make_job("b", REGTEST_BITS, height=2))  # a new tip
    got.wait_for(lambda xs: len(xs) >= 3)
    assert [j.job_id for j, _, _ in got.items] == ["a", "a2", "b"]


def hash_int(job, solution) -> int:
    return int.from_bytes(job.solution_header(solution).hash_internal(), "little")


def test_pool_work_hits_exactly_the_pool_target_and_never_retires_a_tip(pool_factory):
    """Issue: with a pool's share target harder than the network's (regtest under a pool at
    difficulty above 4.66e-10) the threads hit the network target, called the first hit a
    block and retired the tip: one share, then nothing."""
    pool, got = pool_factory(threads=2)
    job = make_job("r", REGTEST_BITS)
    share_target = 1 << 240  # far harder than regtest's ~2**255: one share per ~65,000 nonces
    assert share_target < job.target
    pool.set_job(job, share_target=share_target)
    items = got.wait_for(lambda xs: len(xs) >= 12)
    assert all(hash_int(job, s) <= share_target for _, s, _ in items), "a hit below the pool's target was sent"
    assert all(is_block for _, _, is_block in items), "each also meets regtest's network target"
    assert pool.network_hits >= 12 and pool.hardware_errors == 0
    assert pool.best_share >= DIFF1_TARGET / share_target
    assert pool.best_share >= max(DIFF1_TARGET / hash_int(job, s) for _, s, _ in items)


def test_a_slow_threads_block_on_an_old_tip_does_not_reopen_the_new_one(pool_factory):
    """A thread still inside a chunk of tip P when our block on the next tip Q is found must
    neither send a second block on P nor reopen Q (the pool used to remember one tip)."""
    release, held = threading.Event(), threading.Event()

    def scan_holding_thread_1(*args):
        if threading.current_thread().name == "gridminer-hash-1" and not release.is_set():
            held.set()
            release.wait(30)
        elif not held.is_set():
            held.wait(30)  # thread 0 finds the block on P only once thread 1 is inside a chunk of P
        return kscan.scan_chunk(*args)

    pool, got = pool_factory(threads=2, scan_chunk=scan_holding_thread_1)
    pool.set_job(make_job("p", REGTEST_BITS, height=1))
    got.wait_for(lambda xs: len(xs) == 1)
    assert held.wait(30), "thread 1 never started its chunk"
    q = make_job("q", REGTEST_BITS, height=2)
    pool.set_job(q)
    got.wait_for(lambda xs: len(xs) == 2)
    assert got.items[1][0] is q
    release.set()  # thread 1 finishes its chunk of tip P: regtest, so it holds blocks on P
    # Both tips are solved: every thread ends up waiting for a new one (rate 0).
    deadline = time.monotonic() + 30
    while pool.rate() > 0 or pool._hashing:
        assert time.monotonic() < deadline, "threads still hashing on solved tips"
        time.sleep(0.02)
    assert [j.job_id for j, _, _ in got.items] == ["p", "q"]


def test_rate_is_zero_as_soon_as_nothing_hashes(pool_factory):
    pool, _ = pool_factory(threads=1)
    assert pool.rate() == 0.0, "no job yet"
    pool.set_job(make_job("h", HARD_BITS), share_target=1 << 200)
    deadline = time.monotonic() + 30
    while pool.rate() == 0.0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pool.pause()
    assert pool.rate() == 0.0, "paused: 0 at once, not a figure decaying over the window"
    assert pool.paused_by is None
    pool.resume()
    while pool.rate() == 0.0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pool.set_active_threads(0)
    assert pool.rate() == 0.0, "curtailed to no threads"
    pool.set_active_threads(1)
    while pool.rate() == 0.0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pool.pause(by="api")
    assert pool.paused_by == "api" and pool.rate() == 0.0
    pool.resume()
    assert pool.paused_by is None


def test_rate_falls_to_zero_once_a_block_retires_the_tip(pool_factory):
    pool, got = pool_factory(threads=2)
    pool.set_job(make_job("b", REGTEST_BITS))
    got.wait_for(lambda xs: len(xs) == 1)
    deadline = time.monotonic() + 30
    while pool.rate() > 0:  # each thread leaves its chunk, then waits for a new tip
        assert time.monotonic() < deadline, "the rate stays above 0 on a retired tip"
        time.sleep(0.02)


def test_rate_meter_reads_against_the_clock():
    now = [0.0]
    meter = RateMeter(window=10.0, clock=lambda: now[0])
    for _ in range(20):
        now[0] += 1.0
        meter.add(100)
    now[0] = 40.0  # nothing counted for 20 s: the window holds nothing
    assert meter.rate() == 0.0
    meter.idle(True)
    assert meter.rate() == 0.0
    now[0] = 100.0
    meter.idle(False)  # the window starts afresh: the idle time does not drag the figure down
    now[0] = 101.0
    meter.add(50)
    assert meter.rate() == pytest.approx(50.0)
    assert meter.total == 2050


def test_hits_failing_the_exact_recheck_are_hardware_errors_and_never_sent(pool_factory):
    job = make_job("hw", HARD_BITS)
    share_target = 1 << 244
    header_prefix = {}

    def scan_with_a_wrong_hit(scan_job, target_words, start, count, out):
        hits, consumed = kscan.scan_chunk(scan_job, target_words, start, count, out)
        if not header_prefix:
            # A nonce the kernel did not find: it fails the target (checked here with hashlib).
            bad = next(n for n in range(start, start + count) if int.from_bytes(
                sha256d(scan_job.header76 + n.to_bytes(4, "little")), "little") > share_target)
            header_prefix["bad"] = (scan_job.header76, bad)
            hits = [bad, *hits]
        return hits, consumed

    pool, got = pool_factory(threads=1, scan_chunk=scan_with_a_wrong_hit)
    pool.set_job(job, share_target=share_target)
    items = got.wait_for(lambda xs: len(xs) >= 3)
    assert pool.hardware_errors == 1
    header76, bad = header_prefix["bad"]
    assert not any(s.nonce == bad and job.header76(s.extranonce) == header76 for _, s, _ in items)
    assert all(hash_int(job, s) <= share_target for _, s, _ in items)


def test_unanswered_shares_hold_the_threads_until_answered(pool_factory):
    pool, got = pool_factory(threads=1, max_unanswered=3)
    pool.set_job(make_job("u", HARD_BITS), share_target=1 << 250)  # one share per ~64 nonces
    got.wait_for(lambda xs: len(xs) >= 3)
    time.sleep(0.3)
    assert len(got.items) == 3, "a fourth share before any answer"
    pool.answered()
    pool.answered()
    got.wait_for(lambda xs: len(xs) >= 5)
    time.sleep(0.3)
    assert len(got.items) == 5
