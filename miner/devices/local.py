"""Our own CPU worker pool as a scheduler device: pause, resume, and partial power levels
by the number of hashing threads.

    apply(0.0)   ─► pool.pause()
    apply(level) ─► pool.set_active_threads(ceil(level x threads)); pool.resume()
    read()       ─► hashing only when the pool's nonce counter moved since the last read
                    (or it was resumed within WAKE_GRACE_SECONDS): a pool that is not
                    paused but has no job, or retired its tip, is not hashing.
"""

from __future__ import annotations

import math
import time
from typing import Callable

from miner.hashing.pool import WorkerPool
from miner.devices.model import DeviceError, DeviceReading

# After a resume, how long the pool counts as hashing before its nonce counter has to
# show it (seconds): the first kernel chunk of a thread takes up to ~50 ms, a job switch
# a little more.
WAKE_GRACE_SECONDS = 5.0


def active_threads_for(level: float, threads: int) -> int:
    """Threads to run at power `level` (0..1): ceil(level x threads), at least 1 while on."""
    if level <= 0.0:
        return 0
    # round() first: 0.3 x 10 is 3.0000000000000004 in floats, which is 3 threads, not 4.
    return min(threads, max(1, math.ceil(round(level * threads, 9))))


class LocalWorkers:
    """The Device protocol (miner.devices.model.Device) over a WorkerPool."""

    def __init__(self, name: str, pool: WorkerPool, *, power_w: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wake_grace_seconds: float = WAKE_GRACE_SECONDS) -> None:
        if power_w is not None and not (math.isfinite(power_w) and power_w >= 0):
            raise ValueError(f"power_w must be a finite number >= 0, got {power_w!r}")
        self.name = name
        self.pool = pool
        self.power_w = power_w           # the pool's draw with every thread hashing, if known
        self._clock = clock
        self._wake_grace = wake_grace_seconds
        self._resumed_at: float | None = None
        self._level: float | None = None      # the last level applied (None: never told)
        self._hashes_seen = pool.hashes

    def __repr__(self) -> str:
        return f"LocalWorkers({self.name!r}, threads={self.pool.threads})"

    async def apply(self, level: float) -> None:
        if not (isinstance(level, (int, float)) and math.isfinite(level) and 0.0 <= level <= 1.0):
            raise DeviceError(f"{self.name}: level must be within 0..1, got {level!r}")
        if level == 0.0:
            self.pool.pause()
            self._resumed_at, self._level = None, 0.0
            return
        if self.pool.threads == 0:
            raise DeviceError(f"{self.name}: the local pool has no CPU threads (mining.threads = 0)")
        self.pool.set_active_threads(active_threads_for(level, self.pool.threads))
        if self.pool.paused or not self._level:
            # Woken now (or taken over at start, before its first job): the grace period runs.
            self.pool.resume()
            self._resumed_at = self._clock()
        self._level = level

    async def read(self) -> DeviceReading:
        hashes = self.pool.hashes
        advanced, self._hashes_seen = hashes > self._hashes_seen, hashes
        just_resumed = self._resumed_at is not None and self._clock() - self._resumed_at < self._wake_grace
        active, threads = self.pool.active_threads, self.pool.threads
        hashing = not self.pool.paused and active > 0 and (advanced or just_resumed)
        fraction = active / threads if hashing and threads else 0.0
        return DeviceReading(
            hashing=hashing,
            hashrate_hs=self.pool.rate() if hashing else 0.0,
            power_w=None if self.power_w is None else self.power_w * fraction,
            level=fraction,
        )
