"""solo: templates from a node, CPU workers and stratum-connected rigs, blocks to the node.

    node (given, or the pinned regtest node started here)
      └─ NodeRPC ─► GBTWorkSource ─► jobs ─► WorkerPool (CPU threads)
                        ▲                        │ solutions (worker threads)
                        └── submit ◄─────────────┘  via the event loop
    BlockSubmitter: journal (fsync) ─► submitblock, retried until the node answers
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
        m = self.config.mining
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
        await self._listen(server)
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
