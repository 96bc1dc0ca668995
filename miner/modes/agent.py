"""agent: CPU workers mine a stratum pool's jobs; a cgminer-compatible API (RigState)
shows the rig and lets the scheduler or any fleet tool pause, resume and curtail it."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

from miner.config import Config, ConfigError, parse_listen
from miner.metrics import Metrics
from miner.modes.base import format_rate
from miner.modes.upstream import MAX_UNANSWERED_SHARES, UpstreamRun
from miner.work.job import Job, Solution

# Who paused the local workers when the agent API did (WorkerPool.pause(by=...)); a pause
# by anyone else (the scheduler) is a curtailment.
PAUSED_BY_API = "api"


def hashing_state(pool) -> str:
    """"paused" (by the API), "curtailed" (by the scheduler: paused or threads taken away),
    "curtailed to a/b threads" (a partial power level), or "" while every thread may hash."""
    if pool.paused:
        return "paused" if pool.paused_by == PAUSED_BY_API else "curtailed"
    if pool.active_threads == 0 and pool.threads:
        return "curtailed"
    if pool.active_threads < pool.threads:
        return f"curtailed to {pool.active_threads}/{pool.threads} threads"
    return ""


class RigState:
    """The agent API's view of this rig (miner.devices.agent_api.AgentState)."""

    def __init__(self, run: AgentMiner) -> None:
        self._run = run
        self._started = time.monotonic()

    @property
    def paused(self) -> bool:
        return self._run.pool is not None and self._run.pool.paused

    def stats(self) -> dict:
        pool, s = self._run.pool, self._run.stats
        rate = pool.rate() if pool is not None else 0.0
        # cgminer's meanings: a found block is a share whose hash met the network target (the
        # pool decides what becomes of it), the best share the highest difficulty hashed, a
        # hardware error a kernel result that failed verification.
        return {"elapsed_s": time.monotonic() - self._started, "hashes_total": pool.hashes if pool else 0,
                "rate_5s": rate, "rate_avg": rate, "accepted": s.accepted, "rejected": s.rejected,
                "stale": s.stale, "found_blocks": pool.network_hits if pool else 0,
                "difficulty_accepted": s.difficulty_accepted,
                "best_share": pool.best_share if pool else 0.0,
                "hardware_errors": pool.hardware_errors if pool else 0}

    def devices(self) -> list[dict]:
        pool = self._run.pool
        rate = pool.rate() if pool is not None else 0.0
        idle = pool is None or pool.paused or pool.active_threads == 0  # paused or curtailed to nothing
        return [{"index": 0, "enabled": not self.paused, "status": "Idle" if idle else "Alive",
                 "rate_5s": rate, "rate_avg": rate, "accepted": self._run.stats.accepted,
                 "rejected": self._run.stats.rejected,
                 "hardware_errors": pool.hardware_errors if pool else 0,
                 "hashes_total": pool.hashes if pool else 0,
                 "threads": pool.threads if pool else 0}]

    def pools(self) -> list[dict]:
        failover = self._run.failover
        state = failover.state if failover is not None else None
        return [{"url": url, "user": self._run.config.upstream.user,
                 "status": "Alive" if state and state.index == i and state.up else "Dead", "priority": i,
                 "accepted": self._run.stats.accepted if state and state.index == i else 0,
                 "rejected": self._run.stats.rejected if state and state.index == i else 0,
                 "stratum_active": bool(state and state.index == i and state.up)}
                for i, url in enumerate(self._run.config.upstream.pools)]

    def config(self) -> dict:
        return {"mode": "agent", "threads": self._run.pool.threads if self._run.pool else 0,
                "pools": len(self._run.config.upstream.pools)}

    def pause(self) -> None:
        if self._run.pool is not None:
            self._run.pool.pause(by=PAUSED_BY_API)

    def resume(self) -> None:
        if self._run.pool is not None:
            self._run.pool.resume()


class AgentMiner(UpstreamRun):
    """agent: CPU workers mine a stratum pool's jobs; a cgminer-compatible API shows and
    curtails the rig like an ASIC."""

    def __init__(self, config: Config, *, metrics: Metrics | None = None, out: TextIO = sys.stdout) -> None:
        super().__init__(config, metrics=metrics, out=out)
        self.api_port: int | None = None

    async def _run(self) -> int:
        from kernels.scan import default_threads
        from miner.devices.agent_api import AgentAPIServer
        from miner.hashing.pool import WorkerPool
        from miner.work.upstream import UpstreamWorkSource

        up, m = self.config.upstream, self.config.mining
        self.failover = self._failover()
        self.source = source = UpstreamWorkSource(self.failover, metrics=self.metrics)
        threads = default_threads() if m.threads is None else m.threads
        loop = asyncio.get_running_loop()

        def on_solution(job: Job, solution: Solution, is_block: bool) -> None:
            loop.call_soon_threadsafe(self._submit, job, solution)

        self.pool = WorkerPool(threads, on_solution, metrics=self.metrics, worker_group="agent",
                               site=self.pool_site, max_unanswered=MAX_UNANSWERED_SHARES)
        self._prepare_scheduler()
        api = None
        if self.config.agent.api != "off":
            host, port = parse_listen(self.config.agent.api, "agent.api")
            api = AgentAPIServer(RigState(self), host=host, port=port, token=self.config.agent.token,
                                 metrics=self.metrics)
            try:
                await api.start()
            except (OSError, ValueError) as e:
                raise ConfigError(f"agent.api: {e}") from None
            self.api_port = api.port
            self._print(f"cgminer-compatible API at {host}:{api.port}"
                        f"{'' if self.config.agent.token else ' (read-only: no agent.token)'}")
        self._print(f"agent: {threads} CPU thread(s) on {', '.join(up.pools)} as {up.user}")
        tasks = self._upstream_tasks(source)
        try:
            await self._until_stopped(tasks)
        finally:
            if api is not None:
                await api.stop()
            await self._wind_down(tasks)
        self._print(f"stopped: {self.stats.accepted} shares accepted, {self.stats.rejected} rejected, "
                    f"{self.stats.stale} stale")
        return 0

    async def _feed(self) -> None:
        async for job in self.source.jobs():
            info = self.source.info(job)
            if info is not None:
                # The pool's extranonce1 travels with the job: it changes when we fail over.
                self.pool.set_job(job, share_target=info.share_target, extranonce_prefix=info.extranonce1)

    def _submit(self, job: Job, solution: Solution) -> None:
        self._track(self._submit_one(job, solution))

    async def _submit_one(self, job: Job, solution: Solution) -> None:
        try:
            self._count_answer(job, await self.source.submit(job, solution))
        finally:
            self.pool.answered()  # whatever the pool said, the workers go on

    async def _status(self) -> None:
        while True:
            await asyncio.sleep(self.config.log.status_interval)
            self._print(self.status_line())

    def status_line(self) -> str:
        if self.pool is None or self.failover is None:
            return "starting"
        state, hashing = self.failover.state, hashing_state(self.pool)
        return (f"{format_rate(self.pool.rate())} | pool {state.url or '-'} "
                f"{'up' if state.up else 'down'} | shares accepted {self.stats.accepted} "
                f"rejected {self.stats.rejected} stale {self.stats.stale}"
                f"{f' | {hashing}' if hashing else ''}")
