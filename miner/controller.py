"""Wires one run from a validated Config: the only module that knows the concrete classes.

    [sched] sites (any mode): Scheduler ─► the WorkerPool (a device of sched.local_site),
                              agents and ASICs of every site, by live power price
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

from miner.config import Config, ConfigError, parse_listen
from miner.metrics import Metrics
from miner.modes.base import Run, format_rate, stratum_policy
from miner.stratum.server import StratumServer
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


# Pool modes: local shares sent upstream and not yet answered before the CPU workers wait
# for an answer (an easy share target, as on regtest, makes every other nonce a share).
MAX_UNANSWERED_SHARES = 64


class _UpstreamRun(Run):
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


class AgentMiner(_UpstreamRun):
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
        tasks = [asyncio.create_task(source.run(), name="upstream"),
                 asyncio.create_task(self._start_pool_when_warm(), name="kernel"),
                 asyncio.create_task(self._feed(), name="feed"),
                 asyncio.create_task(self._status(), name="status"),
                 *self._scheduler_tasks()]
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


# Proxy mode: bytes of the pool's extranonce2 that name a downstream connection (65,535
# connections; part 0 is the local CPU workers').
PROXY_SESSION_EXTRANONCE1_SIZE = 2


class ProxyMiner(_UpstreamRun):
    """proxy: rigs connect to our stratum server and mine the upstream pool's jobs, each in
    its own slice of the pool's extranonce2; their shares go upstream and the pool's answer
    is theirs. Local CPU workers (--threads) mine the slice of part 0."""

    def __init__(self, config: Config, *, metrics: Metrics | None = None, out: TextIO = sys.stdout) -> None:
        super().__init__(config, metrics=metrics, out=out)
        self.server: StratumServer | None = None
        self.stratum_port: int | None = None

    async def _run(self) -> int:
        from miner.hashing.pool import WorkerPool
        from miner.work.upstream import UpstreamWorkSource

        up, m = self.config.upstream, self.config.mining
        if self.config.stratum.listen == "off":
            raise ConfigError("stratum.listen: proxy mode needs the stratum server (it is what rigs connect to)")
        self.failover = self._failover()
        self.source = source = UpstreamWorkSource(self.failover, extranonce_prefix_size=PROXY_SESSION_EXTRANONCE1_SIZE,
                                                  metrics=self.metrics)
        threads = 0 if m.threads is None else m.threads  # a proxy hashes locally only when asked
        loop = asyncio.get_running_loop()

        def on_solution(job: Job, solution: Solution, is_block: bool) -> None:
            loop.call_soon_threadsafe(self._submit_local, job, solution)

        self.pool = WorkerPool(threads, on_solution, metrics=self.metrics, worker_group="local",
                               site=self.pool_site, max_unanswered=MAX_UNANSWERED_SHARES)
        self._prepare_scheduler()
        host, port = parse_listen(self.config.stratum.listen, "stratum.listen")
        self.server = server = StratumServer(lambda job, solution: None, host=host, port=port, metrics=self.metrics,
                                             session_extranonce1_size=PROXY_SESSION_EXTRANONCE1_SIZE,
                                             on_share=self._forward, **stratum_policy(self.config))
        try:
            await server.start()
        except OSError as e:
            raise ConfigError(f"stratum.listen: cannot listen on {self.config.stratum.listen}: {e}") from None
        self.stratum_port = server.port
        self._print(f"proxy: rigs at stratum+tcp://{host}:{server.port} -> {', '.join(up.pools)} as {up.user}")
        tasks = [asyncio.create_task(source.run(), name="upstream"),
                 asyncio.create_task(self._start_pool_when_warm(), name="kernel"),
                 asyncio.create_task(self._feed(), name="feed"),
                 asyncio.create_task(self._status(), name="status"),
                 *self._scheduler_tasks()]
        try:
            await self._until_stopped(tasks)
        finally:
            await server.stop()
            await self._wind_down(tasks)
        self._print(f"stopped: {self.stats.accepted} shares accepted upstream, {self.stats.rejected} rejected, "
                    f"{self.stats.stale} stale")
        return 0

    async def _feed(self) -> None:
        async for job in self.source.jobs():
            info = self.source.info(job)
            if info is None:
                continue
            self.server.set_upstream(info.extranonce1,
                                     info.extranonce2_size - PROXY_SESSION_EXTRANONCE1_SIZE, info.version_mask)
            self.server.difficulty_floor = info.difficulty
            self.server.broadcast(job)
            local_prefix = info.extranonce1 + bytes(PROXY_SESSION_EXTRANONCE1_SIZE)
            self.pool.set_job(job, share_target=info.share_target, extranonce_prefix=local_prefix)

    async def _forward(self, job: Job, solution: Solution):
        """A rig's share, accepted by our checks: the pool's answer becomes the rig's."""
        from miner.stratum.protocol import StratumError

        answer = await self.source.submit(job, solution)
        self._count_answer(job, answer)
        if answer.accepted:
            return None
        if answer.status == "stale":
            return StratumError.job_not_found()
        return answer.error or StratumError.other(f"upstream: {answer.status}")

    def _submit_local(self, job: Job, solution: Solution) -> None:
        self._track(self._forward_local(job, solution))

    async def _forward_local(self, job: Job, solution: Solution) -> None:
        try:
            await self._forward(job, solution)
        finally:
            self.pool.answered()  # whatever the pool said, the workers go on

    async def _status(self) -> None:
        while True:
            await asyncio.sleep(self.config.log.status_interval)
            state = self.failover.state
            self._print(f"{len(self.server.sessions)} rig(s), local {format_rate(self.pool.rate())} | pool "
                        f"{state.url or '-'} {'up' if state.up else 'down'} | shares accepted {self.stats.accepted}"
                        f" rejected {self.stats.rejected} stale {self.stats.stale}")
