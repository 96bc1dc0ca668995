"""What the agent and proxy runs share: the [upstream] pool list with failover, and shares
counted by the pool's answer."""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from miner.config import Config
from miner.metrics import Metrics
from miner.modes.base import Run
from miner.work.job import Job

# Pool modes: local shares sent upstream and not yet answered before the CPU workers wait
# for an answer (an easy share target, as on regtest, makes every other nonce a share).
MAX_UNANSWERED_SHARES = 64


class UpstreamRun(Run):
    """What the agent and proxy runs share: the [upstream] pool list, and shares counted
    by the pool's answer."""

    def __init__(self, config: Config, *, metrics: Metrics | None = None, out: TextIO = sys.stdout) -> None:
        super().__init__(config, metrics=metrics, out=out)
        self.failover = None
        self.source = None

    def _failover(self):
        """The ordered upstream pool list of the [upstream] config."""
        from miner.stratum.client import PoolFailover

        up = self.config.upstream
        return PoolFailover(up.pools, up.user, up.password or "x", silent_after=up.silent_after,
                            probe_interval=up.probe_interval, follow_reconnect=up.follow_reconnect,
                            metrics=self.metrics)

    def _upstream_tasks(self, source) -> list[asyncio.Task]:
        """What an upstream run runs until stopped: the pool connection, the kernel's
        warm-up, jobs to the workers, the status line and the scheduler."""
        return [asyncio.create_task(source.run(), name="upstream"),
                asyncio.create_task(self._start_pool_when_warm(), name="kernel"),
                asyncio.create_task(self._feed(), name="feed"),
                asyncio.create_task(self._status(), name="status"),
                *self._scheduler_tasks()]

    def _count_answer(self, job: Job, answer) -> None:
        """Count a share by the pool's real answer, never by what we hoped it would say."""
        if answer.accepted:
            self.stats.accepted += 1
            info = self.source.info(job)
            self.stats.difficulty_accepted += info.difficulty if info is not None else 0.0
        elif answer.status == "stale":
            self.stats.stale += 1
        else:
            self.stats.rejected += 1
