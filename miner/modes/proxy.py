"""proxy: rigs connect to our stratum server and mine the upstream pool's jobs, each in its
own slice of the pool's extranonce2; their shares go upstream and the pool's answer is theirs."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, TextIO

from miner.config import Config, ConfigError, parse_listen
from miner.metrics import Metrics
from miner.modes.base import format_rate, stratum_policy
from miner.modes.upstream import MAX_UNANSWERED_SHARES, UpstreamRun
from miner.stratum.server import StratumServer
from miner.work.job import Job, Solution

if TYPE_CHECKING:
    from miner.stratum.client import ClientJob

# Proxy mode: bytes of the pool's extranonce2 that name a downstream connection (65,535
# connections; part 0 is the local CPU workers').
PROXY_SESSION_EXTRANONCE1_SIZE = 2


class ProxyMiner(UpstreamRun):
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
        source.on_version_mask = self._tell_rigs
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
        await self._listen(server)
        self._print(f"proxy: rigs at stratum+tcp://{host}:{server.port} -> {', '.join(up.pools)} as {up.user}")
        tasks = self._upstream_tasks(source)
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
            self._tell_rigs(info)
            self.server.difficulty_floor = info.difficulty
            self.server.broadcast(job)
            local_prefix = info.extranonce1 + bytes(PROXY_SESSION_EXTRANONCE1_SIZE)
            self.pool.set_job(job, share_target=info.share_target, extranonce_prefix=local_prefix)

    def _tell_rigs(self, info: ClientJob) -> None:
        """The rigs' extranonce space and version mask follow the pool's (set_extranonce,
        set_version_mask or client.reconnect, as each rig negotiated)."""
        if self.server is None:
            return  # not listening yet: the first job tells them
        self.server.set_upstream(info.extranonce1, info.extranonce2_size - PROXY_SESSION_EXTRANONCE1_SIZE,
                                 info.version_mask)

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
