"""StratumMiner: gridminer's stratum client with the kernel behind it, to test someone's pool.

    PoolFailover (one URL: reconnects after a drop, follows client.reconnect)
      └─ UpstreamWorkSource ─► every job ─► hashing thread (kernels.scan, one core)
                         ▲                      │ shares: nonces meeting the pool's target
                         └──── submit ◄─────────┘ (answers recorded: ShareResult)

The client and work source are the ones `miner run --mode agent` uses; only the hashing
loop is this module's, because a test peer needs what the worker pool does not offer:
a hash-rate cap, a share count to stop at, and version rolling over the mask the pool
granted (BIP310), so a pool's version-rolling path is exercised.

Like the solo miner, after a share that is also a block the miner waits for the pool's
job on the new tip (a second block on the same parent would only compete with the
first); if the pool rejects that share, or sends no job on a new tip within
new_tip_timeout seconds (its node refused the block, say), it mines the tip again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kernels import scan as kscan
from miner.metrics import Metrics
from miner.stratum.client import ClientJob, PoolFailover, StratumClient
from miner.testing.loop import LoopThread
from miner.work.job import Job, Solution
from miner.work.upstream import UpstreamWorkSource

__all__ = ["MinerSession", "ReceivedJob", "ShareResult", "StratumMiner", "StratumMinerError", "roll_version"]

log = logging.getLogger(__name__)

# Seconds start() waits for the handshake and the pool's first job.
CONNECT_TIMEOUT_S = 15.0
# Seconds close() or a state read may take on the loop thread.
CALL_TIMEOUT_S = 10.0
# Nonces per kernel call without a rate cap (~50 ms on one core).
UNCAPPED_CHUNK = 1 << 18
# With a cap: a kernel call covers at most this many seconds' worth of the rate.
CAPPED_CHUNK_S = 0.05
# Longest sleep of the hashing thread between checks for a stop or a new job (seconds).
MAX_SLEEP_S = 0.05
# Seconds to wait for the pool's job on a new tip after finding a block, before mining
# the old tip again.
RETIRED_TIP_TIMEOUT_S = 5.0

_U32 = 0xFFFFFFFF


class StratumMinerError(RuntimeError):
    """The miner could not connect, or got no job in time (the message says what the pool did)."""


@dataclass(frozen=True)
class ShareResult:
    """The fate of one share the miner sent (or would have sent)."""

    job_id: str
    status: str  # accepted | rejected (the pool said no) | stale | unknown | invalid (never answered)
    code: int | None  # the stratum error code, when there is an error
    message: str | None
    difficulty: float  # the share difficulty the job was issued at
    is_block: bool  # the share also met the network target
    time: float  # time.monotonic() of the answer

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"


@dataclass(frozen=True)
class MinerSession:
    """One handshake with the pool: what it assigned."""

    number: int  # from 1
    extranonce1: str  # hex
    extranonce2_size: int
    version_mask: int  # the BIP310 mask granted (0: no version rolling)
    started_at: float  # time.monotonic() of its first job


@dataclass(frozen=True)
class ReceivedJob:
    """A mining.notify as the miner took it."""

    time: float  # time.monotonic() of arrival
    job_id: str
    clean: bool
    prev_hash: str  # display hex
    difficulty: float
    session: int  # MinerSession.number


def roll_version(base: int, mask: int, n: int) -> int:
    """base with the bits under mask replaced by the bits of n, spread over the mask's positions.

    n = 0 gives base's own bits outside the mask and zeros under it; successive n walk
    every combination the mask allows (BIP310: only masked bits may change).
    """
    version = base & ~mask & _U32
    bit = 0
    for position in range(32):
        if mask >> position & 1:
            if n >> bit & 1:
                version |= 1 << position
            bit += 1
    return version


class _TokenBucket:
    """Hashes allowed at `rate` per second with a burst of one chunk; take() sleeps until allowed."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.at = time.monotonic()

    def wait_time(self, want: float) -> float:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return 0.0 if self.tokens >= want else (want - self.tokens) / self.rate

    def spend(self, n: int) -> None:
        self.tokens -= n


class _RecordingFailover(PoolFailover):
    """PoolFailover that keeps every client it made, to count client.reconnect requests followed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clients: list[StratumClient] = []

    def _new_client(self, index: int) -> StratumClient:
        client = super()._new_client(index)
        self.clients.append(client)
        return client


class StratumMiner:
    """A CPU stratum miner for tests: `with StratumMiner(pool_url, hashrate=1000) as miner:`.

    hashrate: hashes per second at most (None: as fast as one core goes). shares: stop
    hashing after sending this many shares (None: never). version_rolling: ask the pool
    for BIP310 version rolling and roll the granted bits. suggest_difficulty: sent as
    mining.suggest_difficulty after subscribing. new_tip_timeout: seconds to wait for a
    job on a new tip after a block before mining the old tip again.
    """

    def __init__(self, url: str, user: str = "gridminer-test.miner", password: str = "x", *,
                 hashrate: float | None = None, shares: int | None = None, version_rolling: bool = True,
                 suggest_difficulty: float | None = None, connect_timeout: float = CONNECT_TIMEOUT_S,
                 new_tip_timeout: float = RETIRED_TIP_TIMEOUT_S) -> None:
        if hashrate is not None and not hashrate > 0:
            raise ValueError(f"hashrate must be > 0 hashes per second (or None), got {hashrate!r}")
        if shares is not None and (isinstance(shares, bool) or not isinstance(shares, int) or shares < 0):
            raise ValueError(f"shares must be an integer >= 0 (or None), got {shares!r}")
        self.url, self.user, self.password = url, user, password
        self.hashrate, self.share_limit = hashrate, shares
        self.version_rolling, self.suggest_difficulty = version_rolling, suggest_difficulty
        self.connect_timeout = connect_timeout
        self.new_tip_timeout = new_tip_timeout
        self.metrics = Metrics()
        self._loop = LoopThread("gridminer-test-miner")
        self._cond = threading.Condition(threading.RLock())
        self._failover: _RecordingFailover | None = None
        self._source: UpstreamWorkSource | None = None
        self._tasks: list[asyncio.Task] = []
        self._work: tuple[int, Job, ClientJob] | None = None
        self._generation = 0
        self._solved_prev: bytes | None = None
        self._solved_at = 0.0  # time.monotonic() when _solved_prev was set
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._results: list[ShareResult] = []
        self._jobs: list[ReceivedJob] = []
        self._sessions: list[MinerSession] = []
        self._epochs: dict[int, int] = {}  # client epoch -> session number
        self._submitted = 0
        self._hashes = 0
        self._hashing_since: float | None = None

    def __repr__(self) -> str:
        return f"StratumMiner({self.url}, accepted={self.accepted}, rejected={len(self.rejected)})"

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> StratumMiner:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> StratumMiner:
        """Connect (handshake and first job within connect_timeout, else StratumMinerError) and start hashing."""
        if self._thread is not None:
            return self
        kscan.warm_up()  # compile, or load from numba's cache, before the clock matters
        self._loop.start()
        self._loop.run(self._start(), self.connect_timeout + CALL_TIMEOUT_S)
        self._thread = threading.Thread(target=self._hash_main, name="gridminer-test-miner-hash", daemon=True)
        self._thread.start()
        return self

    async def _start(self) -> None:
        self._failover = _RecordingFailover(
            [self.url], self.user, self.password, version_rolling=self.version_rolling,
            suggest_difficulty=self.suggest_difficulty, backoff_min=0.25, backoff_max=2.0,
            metrics=self.metrics)
        self._source = UpstreamWorkSource(self._failover, metrics=self.metrics)
        source = self._source
        source_on_job = self._failover.on_job
        assert source_on_job is not None

        def on_job(cj: ClientJob) -> None:
            # Every job, straight from the client: the source's job channel folds a missed
            # clean flag into a copy of the next job, which its submit() would not know.
            self._record_job(cj)
            source_on_job(cj)
            if source.current_info is cj and source.current is not None:
                self._set_work(source.current, cj)

        self._failover.on_job = on_job
        self._tasks = [asyncio.create_task(self._source.run(), name="test-miner-upstream")]
        try:
            await asyncio.wait_for(self._source.ready.wait(), self.connect_timeout)
        except asyncio.TimeoutError:
            why = self._failover.last_failure or "connected, but no mining.notify came"
            raise StratumMinerError(f"no job from {self.url} within {self.connect_timeout:g} s: {why}") from None

    def _set_work(self, job: Job, info: ClientJob) -> None:
        """Hash job from now on (the source's own object: its submit() knows it)."""
        with self._cond:
            self._generation += 1
            self._work = (self._generation, job, info)
            self._cond.notify_all()

    def close(self) -> None:
        """Stop hashing and disconnect (answers still in flight are abandoned)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(CALL_TIMEOUT_S)
        if self._loop.running:
            try:
                self._loop.run(self._stop(), CALL_TIMEOUT_S)
            except Exception:
                log.exception("stratum test miner did not stop cleanly")
        self._loop.stop()

    async def _stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- what happened ---------------------------------------------------------------------------

    @property
    def results(self) -> list[ShareResult]:
        """Every share answered so far, in order of answer."""
        with self._cond:
            return list(self._results)

    @property
    def accepted(self) -> int:
        """Shares the pool accepted."""
        return sum(1 for r in self.results if r.accepted)

    @property
    def rejected(self) -> list[tuple[int, str]]:
        """(code, message) of every share the pool rejected, in order."""
        return [(r.code if r.code is not None else 0, r.message or "") for r in self.results
                if r.status == "rejected"]

    @property
    def submitted(self) -> int:
        """Shares found and handed to the client (answered or not)."""
        return self._submitted

    @property
    def hashes(self) -> int:
        """Nonces hashed so far."""
        return self._hashes

    def rate(self) -> float:
        """Average hashes per second since hashing began."""
        since = self._hashing_since
        return self._hashes / (time.monotonic() - since) if since is not None and time.monotonic() > since else 0.0

    @property
    def jobs(self) -> list[ReceivedJob]:
        """Every job the pool sent, in order of arrival."""
        with self._cond:
            return list(self._jobs)

    @property
    def sessions(self) -> list[MinerSession]:
        """Every handshake so far (a reconnect, after a drop or client.reconnect, adds one)."""
        with self._cond:
            return list(self._sessions)

    @property
    def reconnect_requests(self) -> int:
        """client.reconnect requests the miner followed."""
        clients = self._failover.clients if self._failover is not None else []
        return sum(c.reconnects for c in list(clients))

    @property
    def connected(self) -> bool:
        return self._failover is not None and self._failover.up

    # -- waiting --------------------------------------------------------------------------------

    def wait_until(self, predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
        """predicate()'s first truthy value (checked on every change, and every 0.1 s); TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what} "
                                       f"(answered {len(self._results)}: accepted {self.accepted}, "
                                       f"rejected {self.rejected}; sessions {len(self._sessions)})")
                self._cond.wait(min(left, 0.1))

    def wait_for_shares(self, n: int, timeout: float = 30.0) -> list[ShareResult]:
        """At least n answered shares (accepted or not); all answered so far."""
        return self.wait_until(lambda: self.results if len(self._results) >= n else None, timeout,
                               f"{n} answered share(s)")

    def wait_for_sessions(self, n: int, timeout: float = 30.0) -> list[MinerSession]:
        """At least n handshakes (the first connection counts)."""
        return self.wait_until(lambda: self.sessions if len(self._sessions) >= n else None, timeout,
                               f"{n} session(s)")

    # -- the loop thread's side ------------------------------------------------------------------

    def _record_job(self, cj: ClientJob) -> None:
        now = time.monotonic()
        with self._cond:
            number = self._epochs.get(cj.epoch)
            if number is None:
                number = self._epochs[cj.epoch] = len(self._sessions) + 1
                self._sessions.append(MinerSession(number, cj.extranonce1.hex(), cj.extranonce2_size,
                                                   cj.version_mask, now))
            self._jobs.append(ReceivedJob(now, cj.job.job_id, cj.job.clean, cj.job.prev_hash_hex_display,
                                          cj.difficulty, number))
            self._cond.notify_all()

    async def _submit(self, job: Job, info: ClientJob, solution: Solution, is_block: bool) -> None:
        assert self._source is not None
        answer = await self._source.submit(job, solution)
        error = answer.error
        result = ShareResult(job.job_id, answer.status, error.code if error else None,
                             error.message if error else None, info.difficulty, is_block, time.monotonic())
        with self._cond:
            self._results.append(result)
            if is_block and not answer.accepted and self._solved_prev == job.prev_hash_internal:
                self._solved_prev = None  # that block did not count: mine the tip again
            self._cond.notify_all()

    # -- the hashing thread ----------------------------------------------------------------------------

    def _wait_for_work(self) -> tuple[int, Job, ClientJob] | None:
        with self._cond:
            while not self._stopping:
                if self.share_limit is not None and self._submitted >= self.share_limit:
                    self._cond.wait()
                elif self._work is None:
                    self._cond.wait()
                elif self._work[1].prev_hash_internal == self._solved_prev:
                    left = self._solved_at + self.new_tip_timeout - time.monotonic()
                    if left <= 0:
                        log.info("no job on a new tip %g s after our block: mining the old tip again",
                                 self.new_tip_timeout)
                        self._solved_prev = None
                    else:
                        self._cond.wait(left)
                else:
                    return self._work
            return None

    def _current(self, generation: int) -> bool:
        work = self._work
        return not self._stopping and work is not None and work[0] == generation \
            and work[1].prev_hash_internal != self._solved_prev

    def _throttle(self, bucket: _TokenBucket | None, want: int, generation: int) -> bool:
        """Sleep until `want` hashes are allowed; False when the work changed (a new job, a stop)."""
        if bucket is None:
            return self._current(generation)
        while (delay := bucket.wait_time(want)) > 0:
            with self._cond:
                if not self._current(generation):
                    return False
                self._cond.wait(min(delay, MAX_SLEEP_S))
        return self._current(generation)

    def _hash_main(self) -> None:
        out = np.empty(1, dtype=np.uint32)  # one hit per kernel call: each is a share to send
        if self.hashrate is None:
            bucket, chunk = None, UNCAPPED_CHUNK
        else:
            chunk = max(1, min(UNCAPPED_CHUNK, int(self.hashrate * CAPPED_CHUNK_S)))
            bucket = _TokenBucket(self.hashrate, chunk)
        counter = 0
        while (work := self._wait_for_work()) is not None:
            generation, job, info = work
            if self._hashing_since is None:
                self._hashing_since = time.monotonic()
            counter += 1
            en2_size = info.extranonce2_size
            extranonce = info.extranonce1 + (counter % (1 << 8 * en2_size)).to_bytes(en2_size, "big")
            version = roll_version(job.version, info.version_mask, counter) if info.version_mask else job.version
            try:
                prepared = kscan.prepare(job.header76(extranonce, version=version))
                share_words = kscan.target_words(info.share_target)
            except ValueError:
                log.exception("cannot hash pool job %s; waiting for the next one", job.job_id)
                with self._cond:
                    while self._current(generation):
                        self._cond.wait()
                continue
            pos = 0
            while pos < kscan.NONCE_SPACE and self._throttle(bucket, chunk, generation):
                hits, consumed = kscan.scan_chunk(prepared, share_words, pos,
                                                  min(chunk, kscan.NONCE_SPACE - pos), out)
                pos += consumed
                self._hashes += consumed
                if bucket is not None:
                    bucket.spend(consumed)
                if hits and self._found(job, info, Solution(job.job_id, extranonce, job.ntime, hits[0], version)):
                    break

    def _found(self, job: Job, info: ClientJob, solution: Solution) -> bool:
        """Send a share; True when this extranonce is done (a block, or the share limit reached)."""
        is_block = job.solution_header(solution).meets_target(job.target)
        with self._cond:
            self._submitted += 1
            if is_block:
                self._solved_prev, self._solved_at = job.prev_hash_internal, time.monotonic()
            limit_reached = self.share_limit is not None and self._submitted >= self.share_limit
        self._loop.submit(self._submit(job, info, solution, is_block))
        return is_block or limit_reached
