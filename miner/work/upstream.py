"""Pool work: jobs from an upstream stratum pool (through PoolFailover), shares sent back.

    PoolFailover ─► ClientJob (pool job, share target, en1, en2 size, mask, epoch)
                 ─► Job published on the JobChannel (extranonce = pool en1 + our en2)
    submit(job, solution) ─► extranonce2 = solution.extranonce minus en1,
                             version_bits = solution.version & agreed mask
                          ─► the pool's own answer (SubmitAnswer)

A share for a job issued by a connection we have since left (another pool, or the same
pool before a reconnect) is not sent: that pool forgot the job, or will never see it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import replace
from typing import Callable

from miner.metrics import Metrics
from miner.stratum.client import ClientJob, PoolFailover, SubmitAnswer
from miner.stratum.protocol import StratumError
from miner.work.gbt import JobChannel, JobSubscription
from miner.work.job import Job, Solution

__all__ = ["UpstreamWorkSource"]

log = logging.getLogger(__name__)

_U32 = 0xFFFFFFFF
# Published jobs remembered for submit (the newest; older work is stale anyway).
MAX_ISSUED = 256
# Fewest extranonce2 bytes left to the hashers after extranonce_prefix_size: the local
# worker pool needs one byte per thread index and one of counter.
MIN_FREE_EXTRANONCE2 = 2


class UpstreamWorkSource:
    def __init__(self, failover: PoolFailover, *, extranonce_prefix_size: int = 0,
                 metrics: Metrics | None = None) -> None:
        if extranonce_prefix_size < 0:
            raise ValueError(f"extranonce_prefix_size must be >= 0, got {extranonce_prefix_size}")
        self.failover = failover
        self.extranonce_prefix_size = extranonce_prefix_size  # en2 bytes a consumer puts in front
        self.metrics = metrics if metrics is not None else Metrics()
        self.channel = JobChannel()
        self.current: Job | None = None
        self.current_info: ClientJob | None = None
        self.ready = asyncio.Event()
        self.shares: Counter[str] = Counter()  # SubmitAnswer.status -> count
        self.rejects: Counter[int] = Counter()  # pool error code -> count
        self.unusable_jobs = 0  # pool jobs whose extranonce2 is too small for us
        self._issued: OrderedDict[int, tuple[Job, ClientJob]] = OrderedDict()
        self._last_epoch: int | None = None
        # Called with the current job's ClientJob when the pool's version mask changes.
        self.on_version_mask: Callable[[ClientJob], None] | None = None
        failover.on_job = self._on_job
        failover.on_version_mask = self._on_version_mask

    # -- WorkSource interface -------------------------------------------------------------

    def jobs(self) -> JobSubscription:
        return self.channel.subscribe()

    @property
    def share_target(self) -> int | None:
        """The pool's share target for the current job (from its set_difficulty)."""
        return self.current_info.share_target if self.current_info is not None else None

    @property
    def extranonce1(self) -> bytes | None:
        """The current pool connection's extranonce1: every solution's extranonce starts with it."""
        return self.current_info.extranonce1 if self.current_info is not None else None

    def info(self, job: Job) -> ClientJob | None:
        """What we know about a job we published (None for one we never did, or forgot)."""
        entry = self._issued.get(id(job))
        if entry is not None and entry[0] is job:
            return entry[1]
        # A subscriber that missed a clean job gets the next one as a copy marked clean
        # (JobChannel keeps the flag): that copy is still the job we issued.
        for issued, cj in reversed(self._issued.values()):
            if (issued.job_id == job.job_id and issued.created_monotonic == job.created_monotonic
                    and replace(issued, clean=job.clean) == job):
                return cj
        return None

    async def run(self) -> None:
        await self.failover.run()

    # -- jobs ----------------------------------------------------------------------------------

    def _on_version_mask(self, epoch: int, mask: int) -> None:
        """BIP310 mining.set_version_mask: valid at once, also for the jobs already issued on
        that connection (their shares are checked and sent with the new mask)."""
        for key, (job, cj) in self._issued.items():
            if cj.epoch == epoch:
                self._issued[key] = (job, replace(cj, version_mask=mask))
        if self.current_info is not None and self.current_info.epoch == epoch:
            self.current_info = replace(self.current_info, version_mask=mask)
            if self.on_version_mask is not None:
                self.on_version_mask(self.current_info)

    def _on_job(self, cj: ClientJob) -> None:
        if cj.extranonce2_size < self.extranonce_prefix_size + MIN_FREE_EXTRANONCE2:
            self.unusable_jobs += 1
            log.error("pool job %s leaves %d extranonce2 bytes; we need %d: not mined", cj.job.job_id,
                      cj.extranonce2_size, self.extranonce_prefix_size + MIN_FREE_EXTRANONCE2)
            return
        job = cj.job
        if cj.epoch != self._last_epoch:
            # A new connection: nothing mined for the old one can be sent any more.
            job = replace(job, clean=True)
            self._last_epoch = cj.epoch
        self._issued[id(job)] = (job, cj)
        while len(self._issued) > MAX_ISSUED:
            self._issued.popitem(last=False)
        self.current, self.current_info = job, cj
        self.metrics.jobs.labels("upstream", str(job.clean).lower()).inc()
        self.metrics.job_created.set(time.time())
        log.debug("pool job %s clean=%s difficulty %g", job.job_id, job.clean, cj.difficulty)
        self.channel.publish(job)
        self.ready.set()

    # -- shares --------------------------------------------------------------------------------

    async def submit(self, job: Job, solution: Solution) -> SubmitAnswer:
        """Send a share to the pool that issued its job; the pool's answer, never assumed."""
        answer = await self._submit(job, solution)
        self.shares[answer.status] += 1
        self.metrics.upstream_shares.labels(answer.status).inc()
        if answer.status == "rejected" and answer.error is not None:
            self.rejects[answer.error.code] += 1
        if not answer.accepted:
            log.info("share for pool job %s: %s (%s)", job.job_id, answer.status, answer.error)
        return answer

    async def _submit(self, job: Job, solution: Solution) -> SubmitAnswer:
        cj = self.info(job)
        client = self.failover.client
        if cj is None or client is None or cj.epoch != client.epoch or not client.connected:
            return SubmitAnswer(False, StratumError.job_not_found(), "stale")
        en1 = cj.extranonce1
        extranonce = bytes(solution.extranonce)
        if len(extranonce) != len(en1) + cj.extranonce2_size or not extranonce.startswith(en1):
            return SubmitAnswer(False, StratumError.other("extranonce does not extend the pool's extranonce1"),
                                "invalid")
        version = solution.version & _U32
        base = job.version & _U32
        if (version ^ base) & ~cj.version_mask & _U32:
            return SubmitAnswer(False, StratumError.other("version changed outside the agreed mask"), "invalid")
        version_bits = version & cj.version_mask if cj.version_mask else None
        return await client.submit(job.job_id, extranonce[len(en1):], solution.ntime, solution.nonce,
                                   version_bits)
