"""CPU worker pool: threads that scan the current job's nonces with the kernels.

    set_job(job)                ──► solo work: hits are blocks (<= the job's network target)
    set_job(job, share_target)  ──► pool work: hits are shares (<= the pool's target, exactly)
        generation += 1; every thread sees it after its chunk
    thread i:  extranonce = prefix | i (1 byte) | its own counter   (no two threads,
               and no two headers of one thread, share a coinbase)
               header76 ─► kernels.prepare ─► scan_chunk() chunks of ~50 ms ─► hits
    hit ─► exact recheck (hashlib) ─► Solution ─► on_solution(job, solution, is_block)
           (called on the worker thread; a hit that fails the recheck is a hardware error)

Solo work: a block retires its tip. Any further block on the same previous block, from
this job or a refreshed one, would compete with our own, so the threads wait for a job
on a new tip (or for retry_tip() when the node rejected our block).

Pool work: the pool decides what a share is worth, so nothing retires a tip and no
answer of the pool stops the threads. A hit is a share only when it meets the pool's
target; is_block then only says whether it also met the network target (for counting).

Rates are counted nonces over a sliding window read against the clock, 0 as soon as no
thread hashes; never a figure derived from a benchmark.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, NamedTuple

import numpy as np

from kernels import scan as kscan
from miner.chain.hashes import sha256d
from miner.chain.target import DIFF1_TARGET
from miner.metrics import Metrics
from miner.work.job import Job, Solution

log = logging.getLogger(__name__)

# How long one kernel call may run: a new job reaches every thread within this (seconds).
CHUNK_SECONDS = 0.05
# Chunk size bounds in nonces (a multiple of the kernel's block size).
MIN_CHUNK = kscan.BLOCK_LANES * 4
MAX_CHUNK = 1 << 26
FIRST_CHUNK = 1 << 18
# Hits one kernel call returns before stopping early: on regtest half of all nonces hit.
HITS_PER_CALL = 8
# Window of the measured hash rate (seconds).
RATE_WINDOW = 10.0
# Tips (previous-block hashes) remembered as solved: a slow thread's block on an older
# tip must neither be sent twice nor reopen one.
SOLVED_TIPS = 16

SolutionCallback = Callable[[Job, Solution, bool], None]
# kernels.scan.scan_chunk's shape: (job, target words, start, count, out) -> (hits, consumed)
ScanChunk = Callable[[kscan.ScanJob, np.ndarray, int, int, np.ndarray], tuple[list[int], int]]


class _Work(NamedTuple):
    """What the threads hash: one job, its hit target and extranonce prefix."""

    generation: int
    job: Job
    hit_target: int  # the pool's share target (pool work) or the job's network target (solo)
    prefix: bytes
    pool_work: bool  # the pool decides what a hit is worth: no block concept, no retired tips


class RateMeter:
    """Counted events per second over a sliding window, read against the clock; thread-safe.

    idle(True) says nothing is counting any more: the rate is 0 from then on, and the
    window starts afresh at idle(False), so a pause never drags the next figure down.
    """

    def __init__(self, window: float = RATE_WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        self.window, self._clock = window, clock
        self._lock = threading.Lock()
        self._total = 0
        self._idle = False
        self._samples: deque[tuple[float, int]] = deque([(clock(), 0)])

    def _trim(self, now: float) -> None:
        # Keep one sample at or before the window's start: the baseline of the figure.
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()

    def add(self, n: int) -> None:
        with self._lock:
            self._total += n
            now = self._clock()
            self._samples.append((now, self._total))
            self._trim(now)

    def idle(self, idle: bool) -> None:
        with self._lock:
            if idle == self._idle:
                return
            self._idle = idle
            if not idle:
                self._samples = deque([(self._clock(), self._total)])

    @property
    def total(self) -> int:
        return self._total

    def rate(self) -> float:
        with self._lock:
            if self._idle:
                return 0.0
            now = self._clock()
            self._trim(now)
            t0, n0 = self._samples[0]
            return (self._total - n0) / (now - t0) if now > t0 else 0.0


class WorkerPool:
    def __init__(self, threads: int, on_solution: SolutionCallback, *, extranonce_prefix: bytes = b"",
                 metrics: Metrics | None = None, worker_group: str = "local",
                 site: str = "local", chunk_seconds: float = CHUNK_SECONDS,
                 scan_chunk: ScanChunk = kscan.scan_chunk, max_unanswered: int | None = None) -> None:
        """max_unanswered: solutions handed on but not yet answered() after which a thread
        waits before handing on another (None: never waits). A pool whose share target is
        as easy as regtest's gets a share every other nonce: this keeps the submissions in
        flight bounded by the pool's answers instead of flooding the event loop."""
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        if threads > 256:
            raise ValueError("at most 256 threads: each gets one byte of the extranonce")
        if max_unanswered is not None and max_unanswered < 1:
            raise ValueError(f"max_unanswered must be >= 1 or None, got {max_unanswered}")
        self.threads, self.worker_group, self.site = threads, worker_group, site
        self._on_solution = on_solution
        self._prefix = bytes(extranonce_prefix)
        self._metrics = metrics if metrics is not None else Metrics()
        self._chunk_seconds = chunk_seconds
        self._scan_chunk = scan_chunk
        self._max_unanswered = max_unanswered
        self._unanswered = 0
        self._cond = threading.Condition()
        self._generation = 0
        self._current: _Work | None = None
        self._solved_tips: deque[bytes] = deque(maxlen=SOLVED_TIPS)  # prev hashes our blocks build on
        self._paused = False
        self._paused_by: str | None = None
        self._active = threads  # threads with index >= _active idle (partial power levels)
        self._stopping = False
        self._hashing = 0  # threads inside a scan loop right now
        self._meter = RateMeter()
        self._meter.idle(True)  # until a thread has work
        self._threads: list[threading.Thread] = []
        # What the hits were worth (cgminer's Best Share, Found Blocks, Hardware Errors).
        self.best_share = 0.0  # highest difficulty of a hit that passed the recheck
        self.network_hits = 0  # hits that also met the job's network target
        self.hardware_errors = 0  # kernel hits that failed the exact recheck (never sent)

    # -- control ------------------------------------------------------------------------

    def start(self) -> None:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), name=f"gridminer-hash-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        self._metrics.workers.labels(self.site, self.worker_group).set(self._active)

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()
        self._metrics.workers.labels(self.site, self.worker_group).set(0)

    def set_job(self, job: Job, share_target: int | None = None, extranonce_prefix: bytes | None = None) -> None:
        """Hash `job` from now on.

        share_target None: solo work, hits are blocks and a block retires its tip.
        share_target given: pool work, hits are exactly the hashes <= share_target (the
        pool's, whether easier or harder than the network's) and nothing retires a tip.
        extranonce_prefix: the part of the extranonce this job fixes (an upstream pool's
        extranonce1, which changes on failover); default: the pool's own prefix.
        """
        prefix = self._prefix if extranonce_prefix is None else bytes(extranonce_prefix)
        en2_size = job.extranonce_size - len(prefix)
        if en2_size < 2:
            raise ValueError(f"job leaves {en2_size} extranonce bytes after the prefix; need >= 2")
        pool_work = share_target is not None
        target = share_target if pool_work else job.target
        if not 0 < target < 1 << 256:
            raise ValueError(f"share target must be in 1..2**256-1, got {target}")
        with self._cond:
            self._generation += 1
            self._current = _Work(self._generation, job, target, prefix, pool_work)
            self._cond.notify_all()

    def pause(self, by: str | None = None) -> None:
        """Stop hashing within a chunk; `by` names who asked (None: the scheduler, a curtailment)."""
        with self._cond:
            self._paused, self._paused_by = True, by
            self._sync_meter()

    def resume(self) -> None:
        with self._cond:
            self._paused, self._paused_by = False, None
            self._sync_meter()
            self._cond.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def paused_by(self) -> str | None:
        """Who paused the pool (pause(by=...)); None while running or when paused unnamed."""
        return self._paused_by

    def set_active_threads(self, n: int) -> None:
        """Hash on threads 0..n-1 only; the others idle within a chunk (a lower power level)."""
        if not 0 <= n <= self.threads:
            raise ValueError(f"active threads must be 0..{self.threads}, got {n}")
        with self._cond:
            self._active = n
            self._sync_meter()
            self._cond.notify_all()
        if self._threads:
            self._metrics.workers.labels(self.site, self.worker_group).set(n)

    @property
    def active_threads(self) -> int:
        return self._active

    def rate(self) -> float:
        """Measured hashes per second over the last RATE_WINDOW seconds; 0 while nothing hashes."""
        return self._meter.rate()

    @property
    def hashes(self) -> int:
        return self._meter.total

    # -- worker threads -----------------------------------------------------------------

    def _wait_for_next_job(self, generation: int) -> None:
        with self._cond:
            while not self._stopping and self._generation == generation:
                self._cond.wait()

    def _retired(self, work: _Work) -> bool:
        return not work.pool_work and work.job.prev_hash_internal in self._solved_tips

    def _wait_for_work(self, index: int, hashing: bool) -> _Work | None:
        """The work to hash next (None: stopping); the calling thread counts as idle while it waits."""
        with self._cond:
            while not self._stopping and (self._paused or index >= self._active or self._current is None
                                           or self._retired(self._current)):
                if hashing:
                    hashing = False
                    self._hashing -= 1
                    self._sync_meter()
                self._cond.wait()
            if self._stopping:
                if hashing:
                    self._hashing -= 1
                    self._sync_meter()
                return None
            if not hashing:
                self._hashing += 1
                self._sync_meter()
            return self._current

    def _sync_meter(self) -> None:
        """The rate is 0 from the moment nothing hashes (called with the condition held)."""
        self._meter.idle(self._paused or self._active == 0 or self._hashing == 0)

    def retry_tip(self, prev_hash_internal: bytes) -> None:
        """Mine on prev_hash_internal again: the block we found on it was rejected.

        Only that tip: a late rejection of a block on an older tip must not reopen the
        tip we have since found a block on.
        """
        with self._cond:
            if prev_hash_internal in self._solved_tips:
                self._solved_tips.remove(prev_hash_internal)
                self._cond.notify_all()

    def answered(self) -> None:
        """One solution handed to on_solution was dealt with (see max_unanswered)."""
        with self._cond:
            self._unanswered = max(0, self._unanswered - 1)
            self._cond.notify_all()

    def _wait_to_hand_on(self) -> None:
        """Wait while max_unanswered solutions are in flight (never once stopping: those are kept)."""
        if self._max_unanswered is None:
            return
        with self._cond:
            while self._unanswered >= self._max_unanswered and not self._stopping:
                self._cond.wait()
            self._unanswered += 1

    def _still_current(self, generation: int, index: int) -> bool:
        return not self._stopping and not self._paused and index < self._active and self._generation == generation \
            and not self._retired(self._current)

    def _claim_block(self, job: Job) -> bool:
        """One block per tip: False when a block on job's tip was already found (by any thread)."""
        with self._cond:
            if job.prev_hash_internal in self._solved_tips:
                return False
            self._solved_tips.append(job.prev_hash_internal)
            return True

    def _recheck(self, job: Job, header76: bytes, nonce: int, target: int) -> int | None:
        """The hit's hash as the integer compared to targets, or None (a hardware error) when
        hashlib says it does not meet `target`: a wrong hit is never sent."""
        hash_int = int.from_bytes(sha256d(header76 + nonce.to_bytes(4, "little")), "little")
        if hash_int <= target:
            return hash_int
        with self._cond:
            self.hardware_errors += 1
        log.error("kernel hit for job %s nonce %08x fails the exact check: not sent (hardware error %d)",
                  job.job_id, nonce, self.hardware_errors)
        return None

    def _count_hit(self, hash_int: int, is_block: bool) -> None:
        with self._cond:
            self.best_share = max(self.best_share, DIFF1_TARGET / max(hash_int, 1))
            self.network_hits += is_block

    def _run(self, index: int) -> None:
        out = np.empty(HITS_PER_CALL, dtype=np.uint32)
        chunk, counter, hashing = FIRST_CHUNK, 0, False
        while (work := self._wait_for_work(index, hashing)) is not None:
            hashing = True
            generation, job, hit_target, prefix, pool_work = work
            en2_size = job.extranonce_size - len(prefix)
            counter = (counter + 1) % (1 << (8 * en2_size - 8))
            extranonce = prefix + bytes((index,)) + counter.to_bytes(en2_size - 1, "big")
            header76 = job.header76(extranonce)
            scan_job = kscan.prepare(header76)
            hit_words = kscan.target_words(hit_target)
            pos = 0
            while pos < kscan.NONCE_SPACE and self._still_current(generation, index):
                t0 = time.perf_counter()
                try:
                    hits, consumed = self._scan_chunk(scan_job, hit_words, pos,
                                                      min(chunk, kscan.NONCE_SPACE - pos), out)
                except Exception:  # never let one bad job kill a hashing thread silently
                    log.exception("kernel failed on job %s; waiting for the next job", job.job_id)
                    self._wait_for_next_job(generation)
                    break
                dt = time.perf_counter() - t0
                pos += consumed
                self._meter.add(consumed)
                self._metrics.hashes.labels(self.site, self.worker_group).inc(consumed)
                if not hits and dt > 0:
                    # Aim each call at chunk_seconds so a job switch is never far away.
                    scale = min(4.0, max(0.25, self._chunk_seconds / dt))
                    chunk = int(min(MAX_CHUNK, max(MIN_CHUNK, chunk * scale))) // kscan.BLOCK_LANES * kscan.BLOCK_LANES
                if self._report(job, extranonce, header76, hits, hit_target, pool_work):
                    break

    def _report(self, job: Job, extranonce: bytes, header76: bytes, hits: list[int], hit_target: int,
                pool_work: bool) -> bool:
        """Hand the chunk's hits on; True when a solo block retired the tip (stop this job)."""
        for nonce in hits:
            hash_int = self._recheck(job, header76, nonce, hit_target)
            if hash_int is None:
                continue
            is_block = hash_int <= job.target
            if not pool_work and not self._claim_block(job):
                return True  # another thread got there first: one block per tip
            self._count_hit(hash_int, is_block)
            solution = Solution(job.job_id, extranonce, job.ntime, nonce, job.version)
            self._wait_to_hand_on()
            try:
                self._on_solution(job, solution, is_block)
            except Exception:
                log.exception("solution callback failed for job %s", job.job_id)
                if self._max_unanswered is not None:
                    self.answered()
            if not pool_work:
                return True
        return False
