"""Solo work from a node: getblocktemplate -> Jobs, solutions -> journal -> submitblock.

New tips are noticed by three tiers, whichever is first:
  1. ZMQ `hashblock` (when configured): pushed by the node, milliseconds;
  2. GBT long-poll (when the template offers `longpollid`): the node answers the held
     call when its template changes;
  3. polling `getbestblockhash` every `poll_interval` (default 0.5 s): always on, the
     fallback that needs nothing from the node.
A new tip makes a clean job at once; otherwise the template is refreshed every
`template_refresh` seconds (default 30) to pick up new fees.

The node's chain (getblockchaininfo, unless GBTSettings.network says it) decides the
getblocktemplate rules (signet needs "signet") and the header-time rules of
work/rules.py. On testnet3/testnet4 the previous block's time (getblockheader) bounds a
job's ntime, and a normal-difficulty job gets a timer: once the node's clock passes
prev_time + 20 minutes its templates carry the minimum difficulty, so a refresh is
scheduled for that second (measured on the node's clock, from the template's curtime)
and its job goes out clean, as nothing else is worth hashing then.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass, replace

from miner.chain.networks import Network, get_network
from miner.metrics import Metrics
from miner.node.rpc import NodeRPC, RPCError
from miner.work.job import Job, Solution
from miner.work.rules import header_time_bounds, needs_prev_time
from miner.work.submit import AsyncioClock, BlockSubmitter, Clock, SubmitOutcome
from miner.work.template import TemplateError, UnsupportedSignetChallenge, job_from_template

log = logging.getLogger(__name__)

# The request on chains other than signet (kept for callers that know they are on one).
GBT_PARAMS = {"rules": ["segwit"]}
# Repeat an error that keeps happening (a refused template) at most this often (seconds).
ERROR_LOG_INTERVAL = 60.0
# Upper bound on one long-poll call (seconds): the node should answer well before.
LONGPOLL_TIMEOUT = 600.0
# Pause after a failed long-poll (seconds), doubling up to the cap while failures last.
LONGPOLL_RETRY_MIN = 0.25
LONGPOLL_RETRY_MAX = 10.0


@dataclass(frozen=True)
class GBTSettings:
    payout_script: bytes
    extranonce_size: int = 8
    coinbase_tag: bytes = b"/gridminer/"
    poll_interval: float = 0.5
    template_refresh: float = 30.0
    longpoll: bool = True
    zmq_url: str | None = None
    network: Network | None = None  # None: asked from the node (getblockchaininfo "chain")


class UnknownChain(ValueError):
    """The node reports a chain gridminer has no parameters for."""


def gbt_params(network: Network | None) -> dict:
    """getblocktemplate's request for this network.

    Core requires "segwit" everywhere and also "signet" on a signet (rpc/mining.cpp:
    "getblocktemplate must be called with the signet rule set").
    """
    return {"rules": ["segwit", "signet"]} if network is not None and network.signet_blocks else GBT_PARAMS


class JobChannel:
    """Latest-value fan-out: each subscriber gets the newest job; a job it never saw
    folds its `clean` flag into the next one, so nobody misses a new tip."""

    def __init__(self) -> None:
        self._queues: list[asyncio.Queue[Job]] = []
        self.latest: Job | None = None

    def publish(self, job: Job) -> None:
        self.latest = job
        for q in self._queues:
            _offer(q, job)

    def subscribe(self) -> JobSubscription:
        """Registered now (not at the first read), starting with the current job."""
        q: asyncio.Queue[Job] = asyncio.Queue(maxsize=1)
        if self.latest is not None:
            q.put_nowait(self.latest)
        self._queues.append(q)
        return JobSubscription(q, lambda: self._queues.remove(q))


def _offer(q: asyncio.Queue[Job], job: Job) -> None:
    if not q.empty():
        missed = q.get_nowait()
        if missed.clean and not job.clean:
            job = replace(job, clean=True)
    q.put_nowait(job)


class JobSubscription:
    """`async for job in subscription`; aclose() (or leaving the loop by break) unsubscribes."""

    def __init__(self, queue: asyncio.Queue[Job], unsubscribe) -> None:
        self._queue, self._unsubscribe = queue, unsubscribe

    def __aiter__(self) -> JobSubscription:
        return self

    async def __anext__(self) -> Job:
        return await self._queue.get()

    async def aclose(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


class GBTWorkSource:
    def __init__(self, rpc: NodeRPC, submitter: BlockSubmitter, settings: GBTSettings,
                 metrics: Metrics | None = None, clock: Clock | None = None) -> None:
        self.rpc, self.submitter, self.settings = rpc, submitter, settings
        self.metrics = metrics if metrics is not None else Metrics()
        self.network: Network | None = settings.network
        self._clock = clock if clock is not None else AsyncioClock()
        self._prev_time: tuple[str, int] | None = None  # (prev hash display, its header time)
        self._min_difficulty_timer: asyncio.Task | None = None
        # Seconds from the last template until the scheduled min-difficulty refresh (None: none).
        self.min_difficulty_refresh_in: float | None = None
        self.channel = JobChannel()
        self.current: Job | None = None
        self.tip_hex_display: str | None = None
        self.height: int | None = None
        self._ids = itertools.count(1)
        self._refresh_lock = asyncio.Lock()
        self._tip_seen_at: float | None = None
        self._longpoll_id: str | None = None
        self._tasks: list[asyncio.Task] = []
        self._last_error_log: dict[str, float] = {}
        self.ready = asyncio.Event()

    # -- WorkSource interface -------------------------------------------------------------

    def jobs(self) -> JobSubscription:
        return self.channel.subscribe()

    async def submit(self, job: Job, solution: Solution) -> SubmitOutcome:
        """Journal and submit the block; the job travels with the solution, so no job is
        ever too old to turn into a block."""
        outcome = await self.submitter.submit(job, solution)
        # Our own block moved the tip: fetch the next template now, not at the next poll.
        self._spawn(self.refresh(clean_if_new_tip=True, via="submit"))
        return outcome

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Resubmit journaled blocks on the tip, fetch the first template, then watch for tips.

        Journaled blocks on the tip go first: mining the tip they build on would race them
        with a competing block of our own.
        """
        tip = await self.rpc.call_with_retry("getbestblockhash")
        await self.submitter.resubmit_on_tip(tip)
        # Earlier entries on other tips cannot race our work: judged in bulk meanwhile.
        self._spawn(self.submitter.judge_earlier_entries())
        await self.refresh(clean_if_new_tip=True, via="start")
        loops = [self._poll_loop(), self._refresh_loop()]
        if self.settings.longpoll:
            loops.append(self._longpoll_loop())
        if self.settings.zmq_url:
            loops.append(self._zmq_loop())
        loop_tasks = [asyncio.create_task(c) for c in loops]
        self._tasks += loop_tasks
        try:
            # Only the loops: a refresh timer in _tasks is cancelled whenever a new job
            # re-arms it, and gathering a cancelled task would cancel this whole source.
            await asyncio.gather(*loop_tasks)
        finally:
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)
        return task

    async def node_network(self) -> Network:
        """The network the node is on (asked once; UnknownChain if we have no table entry)."""
        if self.network is None:
            info = await self.rpc.call_with_retry("getblockchaininfo")
            chain = info.get("chain") if isinstance(info, dict) else None
            try:
                self.network = get_network(chain)  # Core's "main"/"test" are aliases there
            except ValueError:
                raise UnknownChain(f"node reports chain {chain!r}, which gridminer does not know") from None
        return self.network

    async def _previous_block_time(self, template: dict) -> int | None:
        """The header time of the template's previousblockhash (cached per tip); None if unknown."""
        prev = template.get("previousblockhash") if isinstance(template, dict) else None
        if not isinstance(prev, str):
            return None  # job_from_template refuses the template with the reason
        if self._prev_time is not None and self._prev_time[0] == prev:
            return self._prev_time[1]
        header = await self.rpc.call_with_retry("getblockheader", prev)
        prev_time = header.get("time") if isinstance(header, dict) else None
        if isinstance(prev_time, bool) or not isinstance(prev_time, int):
            raise RPCError(None, f"getblockheader {prev} has no integer 'time': {header!r:.120}", "getblockheader")
        self._prev_time = (prev, prev_time)
        return prev_time

    async def refresh(self, *, clean_if_new_tip: bool, via: str, template: dict | None = None) -> None:
        """Fetch a template (or use the one given) and publish its job.

        Raises UnsupportedSignetChallenge (nothing on this chain can be mined) and
        UnknownChain; every other failure is logged, counted and left to the next refresh.
        """
        async with self._refresh_lock:
            prev_time = None
            try:
                network = await self.node_network()
                fetched_at = self._clock.monotonic()  # the template's curtime is about now
                if template is None:
                    template = await self.rpc.call_with_retry("getblocktemplate", gbt_params(network))
                if needs_prev_time(network):
                    prev_time = await self._previous_block_time(template)
            except RPCError as e:
                self._log_rate_limited("rpc", "getblocktemplate failed: %s", e)
                self.metrics.template_errors.labels("rpc").inc()
                return
            try:
                # Parsing a full mainnet template takes ~0.5 s: keep it off the event loop.
                job = await asyncio.to_thread(
                    job_from_template, template, payout_script=self.settings.payout_script,
                    job_id=f"{next(self._ids):x}", extranonce_size=self.settings.extranonce_size,
                    tag=self.settings.coinbase_tag, clean=False, network=network, prev_time=prev_time)
            except UnsupportedSignetChallenge as e:
                log.error("%s", e)
                self.metrics.template_errors.labels(e.reason).inc()
                raise
            except TemplateError as e:
                self._log_rate_limited(e.reason, "template refused (%s): %s", e.reason, e)
                self.metrics.template_errors.labels(e.reason).inc()
                return
            if self.height is not None and job.height is not None and job.height < self.height:
                # A long-poll answer that waited for the lock while the tip moved on.
                log.debug("dropping a template for height %s: already at %s", job.height, self.height)
                return
            if isinstance(template.get("longpollid"), str):
                self._longpoll_id = template["longpollid"]
            new_tip = job.prev_hash_internal != (self.current.prev_hash_internal if self.current else None)
            # Same tip, other bits: the 20-minute rule switched the difficulty, and the new
            # job is the only one worth hashing.
            bits_changed = not new_tip and self.current is not None and job.bits != self.current.bits
            if bits_changed:
                log.info("height %s: difficulty bits %08x -> %08x on the same tip (minimum-difficulty rule)",
                         job.height, self.current.bits, job.bits)
            self._publish(replace(job, clean=(new_tip and clean_if_new_tip) or bits_changed),
                          via if new_tip else None)
            self._schedule_min_difficulty_refresh(network, job, prev_time, template["curtime"], fetched_at)

    def _schedule_min_difficulty_refresh(self, network: Network, job: Job, prev_time: int | None,
                                         curtime: int, fetched_at: float) -> None:
        """(Re)arm the timer for the second the node's templates switch to the minimum difficulty."""
        if self._min_difficulty_timer is not None and self._min_difficulty_timer is not asyncio.current_task():
            self._min_difficulty_timer.cancel()
        self._min_difficulty_timer = None
        self.min_difficulty_refresh_in = None
        if job.height is None or not needs_prev_time(network):
            return
        bounds = header_time_bounds(network, height=job.height, bits=job.bits, prev_time=prev_time, curtime=curtime)
        if bounds.min_difficulty_from is None:
            return
        # curtime is the node's clock when it made the template: wait out the rest on ours.
        wait = max(0.0, bounds.min_difficulty_from - curtime - (self._clock.monotonic() - fetched_at))
        self.min_difficulty_refresh_in = wait
        self._min_difficulty_timer = self._spawn(self._refresh_at_min_difficulty(wait))
        log.debug("height %s: minimum difficulty from ntime %s, refreshing in %.1f s",
                  job.height, bounds.min_difficulty_from, wait)

    async def _refresh_at_min_difficulty(self, wait: float) -> None:
        await self._clock.sleep(wait)
        await self.refresh(clean_if_new_tip=True, via="min-difficulty")

    def _log_rate_limited(self, key: str, message: str, *args) -> None:
        """Log an error at most once a minute per key: a node can refuse every template."""
        now = time.monotonic()
        if now - self._last_error_log.get(key, -ERROR_LOG_INTERVAL) >= ERROR_LOG_INTERVAL:
            self._last_error_log[key] = now
            log.error(message, *args)

    def _publish(self, job: Job, new_tip_via: str | None) -> None:
        self.current = job
        self.tip_hex_display = job.prev_hash_hex_display
        self.height = job.height
        self.metrics.jobs.labels("gbt", str(job.clean).lower()).inc()
        self.metrics.job_created.set(time.time())
        if job.height is not None:
            self.metrics.node_height.set(job.height - 1)
        if new_tip_via is not None:
            self.metrics.tip_changes.labels(new_tip_via).inc()
            if self._tip_seen_at is not None:
                self.metrics.tip_to_job.observe(time.monotonic() - self._tip_seen_at)
            self._tip_seen_at = None
        log.debug("job %s height %s clean=%s (%d txs)", job.job_id, job.height, job.clean, len(job.transactions))
        self.channel.publish(job)
        self.ready.set()

    async def on_tip_hint(self, tip_hex_display: str | None, via: str) -> None:
        """A tier says the tip may have moved; refresh when it did (or when we can't tell)."""
        if tip_hex_display is not None and tip_hex_display == self.tip_hex_display:
            return
        if self._tip_seen_at is None:
            self._tip_seen_at = time.monotonic()
        await self.refresh(clean_if_new_tip=True, via=via)

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval)
            try:
                best = await self.rpc.call("getbestblockhash")
            except RPCError:
                continue  # the RPC client logs and counts; the next poll tries again
            await self.on_tip_hint(best, "poll")

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.template_refresh)
            await self.refresh(clean_if_new_tip=True, via="refresh")

    async def _longpoll_loop(self) -> None:
        delay = LONGPOLL_RETRY_MIN
        while True:
            if not self._longpoll_id:
                await asyncio.sleep(LONGPOLL_RETRY_MIN)
                continue
            params = dict(gbt_params(self.network), longpollid=self._longpoll_id)
            try:
                template = await self.rpc.call("getblocktemplate", params, timeout=LONGPOLL_TIMEOUT)
            except RPCError:
                # The client logs and counts it; polling covers the gap meanwhile.
                await asyncio.sleep(delay)
                delay = min(2 * delay, LONGPOLL_RETRY_MAX)
                continue
            delay = LONGPOLL_RETRY_MIN
            if self._tip_seen_at is None:
                self._tip_seen_at = time.monotonic()
            await self.refresh(clean_if_new_tip=True, via="longpoll", template=template)

    async def _zmq_loop(self) -> None:
        from miner.node.zmq import ZMQSubscriber

        async def on_block(topic: str, hash_hex_display: str, sequence: int) -> None:
            await self.on_tip_hint(hash_hex_display, "zmq")

        async def on_gap(topic: str, expected: int, got: int) -> None:
            await self.on_tip_hint(None, "zmq-gap")

        sub = ZMQSubscriber(self.settings.zmq_url, on_message=on_block, on_gap=on_gap, metrics=self.metrics)
        with contextlib.suppress(asyncio.CancelledError):
            await sub.run()
