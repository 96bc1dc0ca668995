"""CPU worker pool: threads that scan the current job's nonces with the kernels.

    set_job(job, share_target) ──► generation += 1; every thread sees it after its chunk
    thread i:  extranonce = prefix | i (1 byte) | its own counter   (no two threads,
               and no two headers of one thread, share a coinbase)
               header76 ─► kernels.prepare ─► scan_chunk() chunks of ~50 ms ─► hits
    hit ─► Solution ─► on_solution(job, solution, is_block)   (called on the worker thread)

A block solution retires its tip: any further block on the same previous block, from
this job or a refreshed one, would compete with our own, so the threads wait for a job
on a new tip (or for retry_tip() when the node rejected our block). Shares easier than the block
target (stratum pools) are reported and hashing goes on. Rates are counted nonces over
a sliding window, never a figure derived from a benchmark.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable

import numpy as np

from kernels import scan as kscan
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

SolutionCallback = Callable[[Job, Solution, bool], None]


class RateMeter:
    """Counted events per second over a sliding window; thread-safe."""

    def __init__(self, window: float = RATE_WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        self.window, self._clock = window, clock
        self._lock = threading.Lock()
        self._total = 0
        self._samples: deque[tuple[float, int]] = deque([(clock(), 0)])

    def add(self, n: int) -> None:
        with self._lock:
            self._total += n
            now = self._clock()
            self._samples.append((now, self._total))
            while len(self._samples) > 2 and self._samples[1][0] < now - self.window:
                self._samples.popleft()

    @property
    def total(self) -> int:
        return self._total

    def rate(self) -> float:
        with self._lock:
            now = self._clock()
            t0, n0 = self._samples[0]
            return (self._total - n0) / (now - t0) if now > t0 else 0.0


class WorkerPool:
    def __init__(self, threads: int, on_solution: SolutionCallback, *, extranonce_prefix: bytes = b"",
                 metrics: Metrics | None = None, worker_group: str = "local",
                 site: str = "local", chunk_seconds: float = CHUNK_SECONDS) -> None:
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        if threads > 256:
            raise ValueError("at most 256 threads: each gets one byte of the extranonce")
        self.threads, self.worker_group, self.site = threads, worker_group, site
        self._on_solution = on_solution
        self._prefix = bytes(extranonce_prefix)
        self._metrics = metrics if metrics is not None else Metrics()
        self._chunk_seconds = chunk_seconds
        self._cond = threading.Condition()
        self._generation = 0
        self._current: tuple[int, Job, int, bytes] | None = None  # (generation, job, share target, prefix)
        self._solved_prev: bytes | None = None  # prev hash our last block builds on
        self._paused = False
        self._active = threads  # threads with index >= _active idle (partial power levels)
        self._stopping = False
        self._meter = RateMeter()
        self._threads: list[threading.Thread] = []

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
        """Hash `job` from now on; shares are hits <= share_target (default: blocks only).

        extranonce_prefix: the part of the extranonce this job fixes (an upstream pool's
        extranonce1, which changes on failover); default: the pool's own prefix.
        """
        prefix = self._prefix if extranonce_prefix is None else bytes(extranonce_prefix)
        en2_size = job.extranonce_size - len(prefix)
        if en2_size < 2:
            raise ValueError(f"job leaves {en2_size} extranonce bytes after the prefix; need >= 2")
        with self._cond:
            self._generation += 1
            self._current = (self._generation, job, max(job.target, share_target or 0), prefix)
            self._cond.notify_all()

    def pause(self) -> None:
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused

    def set_active_threads(self, n: int) -> None:
        """Hash on threads 0..n-1 only; the others idle within a chunk (a lower power level)."""
        if not 0 <= n <= self.threads:
            raise ValueError(f"active threads must be 0..{self.threads}, got {n}")
        with self._cond:
            self._active = n
            self._cond.notify_all()
        if self._threads:
            self._metrics.workers.labels(self.site, self.worker_group).set(n)

    @property
    def active_threads(self) -> int:
        return self._active

    def rate(self) -> float:
        """Measured hashes per second over the last RATE_WINDOW seconds."""
        return self._meter.rate()

    @property
    def hashes(self) -> int:
        return self._meter.total

    # -- worker threads -----------------------------------------------------------------

    def _wait_for_next_job(self, generation: int) -> None:
        with self._cond:
            while not self._stopping and self._generation == generation:
                self._cond.wait()

    def _wait_for_work(self, index: int) -> tuple[int, Job, int, bytes] | None:
        with self._cond:
            while not self._stopping and (self._paused or index >= self._active or self._current is None
                                           or self._current[1].prev_hash_internal == self._solved_prev):
                self._cond.wait()
            return None if self._stopping else self._current

    def retry_tip(self, prev_hash_internal: bytes) -> None:
        """Mine on prev_hash_internal again: the block we found on it was rejected.

        Only that tip: a late rejection of a block on an older tip must not reopen the
        tip we have since found a block on.
        """
        with self._cond:
            if self._solved_prev == prev_hash_internal:
                self._solved_prev = None
                self._cond.notify_all()

    def _still_current(self, generation: int, index: int) -> bool:
        return not self._stopping and not self._paused and index < self._active and self._generation == generation \
            and self._current[1].prev_hash_internal != self._solved_prev

    def _run(self, index: int) -> None:
        out = np.empty(HITS_PER_CALL, dtype=np.uint32)
        chunk, counter = FIRST_CHUNK, 0
        while (work := self._wait_for_work(index)) is not None:
            generation, job, share_target, prefix = work
            en2_size = job.extranonce_size - len(prefix)
            counter = (counter + 1) % (1 << (8 * en2_size - 8))
            extranonce = prefix + bytes((index,)) + counter.to_bytes(en2_size - 1, "big")
            scan_job = kscan.prepare(job.header76(extranonce))
            share_words = kscan.target_words(share_target)
            pos = 0
            while pos < kscan.NONCE_SPACE and self._still_current(generation, index):
                t0 = time.perf_counter()
                try:
                    hits, consumed = kscan.scan_chunk(scan_job, share_words, pos,
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
                for nonce in hits:
                    solution = Solution(job.job_id, extranonce, job.ntime, nonce, job.version)
                    is_block = job.solution_header(solution).meets_target(job.target)
                    if is_block:
                        with self._cond:
                            if self._solved_prev == job.prev_hash_internal:
                                break  # another thread got there first: one block per tip
                            self._solved_prev = job.prev_hash_internal
                    try:
                        self._on_solution(job, solution, is_block)
                    except Exception:
                        log.exception("solution callback failed for job %s", job.job_id)
                    if is_block:
                        break
