"""Wires one run from a validated Config: the only module that knows the concrete classes.

    node (given, or the pinned regtest node started here)
      └─ NodeRPC ─► GBTWorkSource ─► jobs ─► WorkerPool (CPU threads)
                        ▲                        │ solutions (worker threads)
                        └── submit ◄─────────────┘  via the event loop
    BlockSubmitter: journal (fsync) ─► submitblock, retried until the node answers
    [sched] sites (any mode): Scheduler ─► the WorkerPool (a device of sched.local_site),
                              agents and ASICs of every site, by live power price
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import TextIO

from miner.chain.address import AddressError, address_to_script
from miner.chain.networks import Network, get_network
from miner.chain.target import target_to_difficulty
from miner.config import Config, ConfigError, parse_listen
from miner.metrics import Metrics
from miner.modes.base import Run, format_rate, stratum_policy
from miner.node.rpc import AuthConfigError, CookieAuth, NodeRPC, RPCAuthError, load_auth
from miner.stratum.server import StratumServer
from miner.work.gbt import GBTSettings, GBTWorkSource
from miner.work.job import Job, Solution
from miner.work.journal import Journal
from miner.work.race import BlockRace, Verdict
from miner.work.submit import BlockSubmitter, node_chain_name

log = logging.getLogger(__name__)

# The local CPU pool's extranonce1: stratum clients get other, unique values.
LOCAL_EXTRANONCE1 = bytes(4)


def coinbase_value_sats(job: Job | None) -> int | None:
    """What a job's coinbase pays in total (the template's coinbasevalue), None without a job."""
    if job is None:
        return None
    return sum(out.value_sats for out in job.coinbase.build(bytes(job.extranonce_size)).outputs)





class SoloMiner(Run):
    """solo: templates from a node, CPU workers and stratum-connected rigs, blocks to the node."""

    def __init__(self, config: Config, *, metrics: Metrics | None = None, out: TextIO = sys.stdout) -> None:
        super().__init__(config, metrics=metrics, out=out)
        self._node = None  # the regtest node when this run started it
        self.stratum_port: int | None = None  # the bound stratum port, once serving
        self.server: StratumServer | None = None
        self.race: BlockRace[tuple[Job, Solution]] = BlockRace()
        self.network: Network | None = None  # the node's, once asked
        self._status_accepted = 0  # accepted blocks at the last status line
        self._done = False  # --blocks reached
        self.source: GBTWorkSource | None = None  # set while mining (for status and tests)

    async def _run(self) -> int:
        try:
            rpc, address, zmq_url = await self._connect()
            return await self._mine(rpc, address, zmq_url)
        finally:
            if self._node is not None:
                self._print("stopping the regtest node")
                await asyncio.to_thread(self._node.close)  # stops it and removes its temp datadir

    async def _connect(self) -> tuple[NodeRPC, str, str | None]:
        n, m = self.config.node, self.config.mining
        if n.url is None:
            from miner.node.regtest import RegtestNode

            self._print("no node given: starting the pinned regtest node")
            self._node = RegtestNode()
            await self._wait_visibly(self._node.start, "the regtest node is starting (its first start installs "
                                                      "it with npm, a minute or two)")
            address = m.address or await asyncio.to_thread(self._node.new_address, "bech32")
            self._print(f"regtest node at {self._node.rpc_url}; mining to {address}"
                        f"{'' if m.address else ' (a new address of the node wallet, for this run)'}")
            rpc = NodeRPC(self._node.rpc_url, self._node.auth, timeout=n.timeout, metrics=self.metrics)
            return rpc, address, n.zmq or self._node.zmq_url
        try:
            auth = load_auth(cookie_file=n.cookie_file, user=n.user, password=n.password)
            if n.cookie_file is not None:  # re-read after failures: bitcoind writes a new one each start
                auth = CookieAuth(n.cookie_file)
            return NodeRPC(n.url, auth, timeout=n.timeout, metrics=self.metrics), m.address, n.zmq
        except (AuthConfigError, ValueError) as e:
            raise ConfigError(f"node: {e}") from None

    async def _payout_script(self, rpc: NodeRPC, address: str) -> bytes:
        try:
            info = await rpc.call_with_retry("getblockchaininfo")
        except RPCAuthError as e:
            raise ConfigError(f"node: credentials refused ({e}); check node.cookie_file or user/password") from None
        chain = info.get("chain") if isinstance(info, dict) else None
        try:
            network = get_network(chain)  # Core's chain names ("main", "test") are aliases there
        except ValueError:
            raise ConfigError(f"node reports chain {chain!r}, which gridminer does not know") from None
        self.metrics.set_run_info(chain=network.name, mode=self.config.mining.mode)
        if network.signet_blocks:
            await self._check_signet_challenge(rpc, info, network)
        self.network = network
        try:
            return address_to_script(address, network)
        except AddressError as e:
            raise ConfigError(f"mining.address: {e}") from None

    async def _check_signet_challenge(self, rpc: NodeRPC, info: dict, network: Network) -> None:
        """Refuse, before mining, a signet whose blocks need a signature (only OP_TRUE is minable)."""
        from miner.work.gbt import gbt_params
        from miner.work.rules import SignetChallengeError, require_op_true_challenge

        # Newer Core says it in getblockchaininfo; every signet node says it in templates.
        challenge = info.get("signet_challenge")
        if challenge is None:
            template = await rpc.call_with_retry("getblocktemplate", gbt_params(network))
            challenge = template.get("signet_challenge") if isinstance(template, dict) else None
        try:
            require_op_true_challenge(challenge)
        except SignetChallengeError as e:
            raise ConfigError(f"node: {e}") from None

    async def _mine(self, rpc: NodeRPC, address: str, zmq_url: str | None) -> int:
        n, m = self.config.node, self.config.mining
        payout_script = await self._payout_script(rpc, address)
        if m.journal:
            journal_path = Path(m.journal).expanduser()
        elif self._node is not None:
            journal_path = self._node.datadir / "found-blocks.jsonl"  # a throwaway chain's blocks die with it
        else:
            journal_path = self.config.default_journal_path(await node_chain_name(rpc))
        # Off the loop: replaying tens of thousands of old entries takes seconds.
        with await asyncio.to_thread(Journal, journal_path) as journal:
            return await self._mine_with(rpc, journal, payout_script, zmq_url)

    async def _mine_with(self, rpc: NodeRPC, journal: Journal, payout_script: bytes, zmq_url: str | None) -> int:
        n, m = self.config.node, self.config.mining
        quiet = self.network is not None and self.network.pow_no_retargeting  # regtest: blocks by the hundred
        submitter = BlockSubmitter(rpc, journal, self.metrics, block_log_level=logging.DEBUG if quiet else logging.INFO)
        source = GBTWorkSource(rpc, submitter, GBTSettings(
            payout_script=payout_script, extranonce_size=len(LOCAL_EXTRANONCE1) + self.config.stratum.extranonce2_size,
            coinbase_tag=m.coinbase_tag.encode(),
            poll_interval=n.poll_interval, template_refresh=n.template_refresh, longpoll=n.longpoll,
            zmq_url=zmq_url), self.metrics)
        from miner.hashing.pool import WorkerPool
        from kernels.scan import default_threads

        threads = default_threads() if m.threads is None else m.threads
        loop = asyncio.get_running_loop()

        def on_solution(job: Job, solution: Solution, is_block: bool) -> None:
            if is_block:
                loop.call_soon_threadsafe(self._submit, source, pool, job, solution)

        pool = WorkerPool(threads, on_solution, extranonce_prefix=LOCAL_EXTRANONCE1, metrics=self.metrics,
                          site=self.pool_site)
        self.source, self.pool = source, pool
        self._prepare_scheduler(rpc=rpc, coinbase_sats=lambda: coinbase_value_sats(source.current))
        self.server = server = await self._start_stratum(lambda job, solution: self._submit(source, pool, job, solution))
        self._print(f"mining with {threads} CPU thread(s); journal {journal.path}")
        tasks = [asyncio.create_task(source.run(), name="gbt"),
                 asyncio.create_task(self._start_pool_when_warm(), name="kernel"),
                 asyncio.create_task(self._feed(source, pool, server), name="feed"),
                 asyncio.create_task(self._status(source, pool), name="status"),
                 *self._scheduler_tasks()]
        try:
            await self._until_stopped(tasks)
        finally:
            if server is not None:
                await server.stop()  # no more shares from rigs
            await self._wind_down(tasks)
            rpc.close()  # abandon held long-polls quietly: the node may be stopped next
        self._print(f"stopped: {self.stats.found} found, {self.stats.accepted} accepted, "
                    f"{self.stats.rejected} rejected")
        return 0

    def _submissions_wait_for_peer(self) -> bool:
        return self.source is not None and self.source.submitter.waiting_for_node > 0

    def _submit(self, source: GBTWorkSource, pool, job: Job, solution: Solution) -> None:
        self.stats.found += 1
        if self._done:
            return  # --blocks reached: a block found after that is not sent
        verdict = self.race.offer(job.prev_hash_internal, (job, solution))
        if verdict is Verdict.SUBMIT:
            self._track(self._submit_one(source, pool, job, solution))
            return
        if verdict is Verdict.HOLD:
            self.stats.held += 1
        else:
            self.stats.stale += 1
        self.metrics.blocks.labels(stage=verdict.value).inc()
        log.debug("block on %s for job %s not sent (%s)", job.prev_hash_hex_display, job.job_id, verdict.value)

    async def _submit_one(self, source: GBTWorkSource, pool, job: Job, solution: Solution) -> None:
        outcome = await source.submit(job, solution)  # the submitter logs the node's answer
        prev = job.prev_hash_internal
        if outcome.accepted or outcome.inconclusive:
            # The tip is finished either way: ours won it, or the node has another block
            # on it. Blocks still arriving on it are stale, never sent.
            self.race.finish(prev)
            if self.server is not None:
                self.server.retire_tip(prev)
            if outcome.inconclusive:
                self.stats.inconclusive += 1
                return
            self.stats.accepted += 1
            blocks = self.config.mining.blocks
            if blocks and self.stats.accepted >= blocks and not self._done:
                self._done = True
                pool.pause()  # not one block more than asked for
                self._print(f"{blocks} block(s) accepted: done")
                self.stop()
            return
        if outcome.rejected:
            self.stats.rejected += 1
        else:
            self.stats.stale += 1
        backup = self.race.rejected(prev)
        if backup is not None:
            self._track(self._submit_one(source, pool, *backup))  # the next block found on that tip
        else:
            pool.retry_tip(prev)  # that tip is open again: our block on it did not count

    async def _start_stratum(self, on_block) -> StratumServer | None:
        if self.config.stratum.listen == "off":
            return None
        host, port = parse_listen(self.config.stratum.listen, "stratum.listen")
        server = StratumServer(on_block, host=host, port=port, extranonce2_size=self.config.stratum.extranonce2_size,
                               metrics=self.metrics, **stratum_policy(self.config))
        try:
            await server.start()
        except OSError as e:
            raise ConfigError(f"stratum.listen: cannot listen on {self.config.stratum.listen}: {e}") from None
        self.stratum_port = server.port
        self._print(f"stratum server for ASICs and rigs at stratum+tcp://{host}:{server.port}")
        return server

    async def _feed(self, source: GBTWorkSource, pool, server: StratumServer | None) -> None:
        tip: bytes | None = None
        async for job in source.jobs():
            self.metrics.set_network_difficulty(target_to_difficulty(job.target))
            if job.prev_hash_internal != tip:
                if tip is not None:
                    self.race.finish(tip)  # the node moved off it: a block on it would only compete
                self.race.reopen(job.prev_hash_internal)  # a reorg back to a finished tip
                tip = job.prev_hash_internal
            pool.set_job(job)
            if server is not None:
                server.broadcast(job)

    async def _status(self, source: GBTWorkSource, pool) -> None:
        while True:
            await asyncio.sleep(self.config.log.status_interval)
            self._print(self._status_line(source, pool))

    def _status_line(self, source: GBTWorkSource, pool) -> str:
        """One line per interval: the CPU kernel's counted rate (on regtest it idles between a
        block and the next job, so it says little), the height, and the block counts, which
        on regtest sum up the blocks logged one by one elsewhere."""
        s = self.stats
        job = source.current
        age = f"{time.monotonic() - job.created_monotonic:.1f}s" if job else "-"
        new = s.accepted - self._status_accepted
        self._status_accepted = s.accepted
        others = "".join(f" {n} {name}" for name, n in (("inconclusive", s.inconclusive), ("held", s.held),
                                                         ("stale", s.stale)) if n)
        return (f"CPU {format_rate(pool.rate()).strip()} | height {source.height if source.height is not None else '-'}"
                f" | blocks found {s.found} accepted {s.accepted} (+{new}) rejected {s.rejected}{others}"
                f" | job age {age}")



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
