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
from miner.work.template import TemplateError, UnsupportedSignetChallenge, job_from_template, template_on_tip

log = logging.getLogger(__name__)

# The request on chains other than signet (kept for callers that know they are on one).
GBT_PARAMS = {"rules": ["segwit"]}
# Repeat an error that keeps happening (a refused template) at most this often (seconds).
ERROR_LOG_INTERVAL = 60.0
# Upper bound on one long-poll call (seconds): the node should answer well before.
LONGPOLL_TIMEOUT = 600.0
# Regtest: Core rebuilds a template for mempool changes only 5 s after the last one; how
# long the first template may wait for that, and how often it asks meanwhile (seconds).
REGTEST_TEMPLATE_CACHE_WAIT = 6.0
REGTEST_TEMPLATE_RETRY = 0.5
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


def _same_work(job: Job, current: Job | None) -> bool:
    """Nothing a miner would do differently: the same tip, version, bits, coinbase and
    transactions (a later curtime alone is not new work: miners roll ntime themselves)."""
    return current is not None and (job.prev_hash_internal, job.version, job.bits, job.coinbase,
                                    job.merkle_branch) == \
        (current.prev_hash_internal, current.version, current.bits, current.coinbase, current.merkle_branch)


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
        # Templates are ordered by when they came back, never by height: a reorg can make
        # the newest template lower than the last. The published job's stamp is the newest.
        self._answer_stamps = itertools.count(1)
        self._published_stamp = 0
        # The node's best block as last seen (a tip hint, or getbestblockhash): a template
        # on another block is checked against the node before it is mined.
        self._best_tip_hex_display: str | None = None
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
        await self.refresh(clean_if_new_tip=True, via="start", template=await self._first_template())
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

    async def _first_template(self) -> dict | None:
        """On regtest, a first template that holds what the mempool holds (None: refresh fetches one).

        Core keeps serving a cached template for 5 s after it built one, however the
        mempool changed meanwhile; on regtest the first job is solved at once, so a run
        started right after `sendtoaddress` would mine an empty block. Wait out the cache
        (bounded); other networks take their first template as it comes.
        """
        network = await self.node_network()
        if not network.pow_no_retargeting:
            return None
        try:
            info = await self.rpc.call_with_retry("getmempoolinfo")
            in_mempool = info.get("size", 0) if isinstance(info, dict) else 0
            if not isinstance(in_mempool, int) or in_mempool == 0:
                return None
            deadline = self._clock.monotonic() + REGTEST_TEMPLATE_CACHE_WAIT
            while True:
                template = await self.rpc.call_with_retry("getblocktemplate", gbt_params(network))
                txs = template.get("transactions") if isinstance(template, dict) else None
                if not isinstance(txs, list) or len(txs) >= in_mempool or self._clock.monotonic() >= deadline:
                    return template
                log.info("the node's template leaves out %d of the %d mempool transactions (its template "
                         "cache); asking again", in_mempool - len(txs), in_mempool)
                await self._clock.sleep(REGTEST_TEMPLATE_RETRY)
        except RPCError as e:
            log.warning("could not compare the first template with the mempool: %s", e)
            return None

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

    async def refresh(self, *, clean_if_new_tip: bool, via: str, template: dict | None = None,
                      stamp: int | None = None) -> None:
        """Fetch a template (or use the one given, with the stamp taken when it came back)
        and publish its job.

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
                    stamp = next(self._answer_stamps)
                if stamp is not None and stamp < self._published_stamp:
                    # A long-poll answer that waited for the lock while a newer one was published.
                    log.debug("dropping a template older than the published job")
                    return
                template = await self._on_best_tip(template, network)
                if template is None:
                    return
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
            if isinstance(template.get("longpollid"), str):
                self._longpoll_id = template["longpollid"]
            new_tip = job.prev_hash_internal != (self.current.prev_hash_internal if self.current else None)
            # Same tip, other bits: the 20-minute rule switched the difficulty, and the new
            # job is the only one worth hashing.
            bits_changed = not new_tip and self.current is not None and job.bits != self.current.bits
            if bits_changed:
                log.info("height %s: difficulty bits %08x -> %08x on the same tip (minimum-difficulty rule)",
                         job.height, self.current.bits, job.bits)
            if not new_tip and not bits_changed and _same_work(job, self.current):
                # Long-poll, ZMQ, the poll and our own submit all ask after a new block: one
                # job per change, or every rig would restart its work for nothing.
                log.debug("template unchanged on height %s (%s): no new job", job.height, via)
            else:
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

    async def _on_best_tip(self, template: dict, network: Network) -> dict | None:
        """The template if it builds on the node's best block; else one for an empty block
        on that block where the network allows (template_on_tip), else None (logged).

        bcoin keeps serving its cached template after invalidateblock: mining it would only
        make blocks the node refuses (bad-prevblk).
        """
        prev = template.get("previousblockhash") if isinstance(template, dict) else None
        if not isinstance(prev, str) or prev == self._best_tip_hex_display:
            return template  # job_from_template refuses a template without a valid one
        best = await self.rpc.call_with_retry("getbestblockhash")
        self._best_tip_hex_display = best
        if best == prev:
            return template
        header = await self.rpc.call_with_retry("getblockheader", best)
        made = None
        if isinstance(header, dict) and isinstance(header.get("height"), int) and isinstance(header.get("time"), int):
            made = template_on_tip(template, tip_hex_display=best, tip_height=header["height"],
                                   tip_time=header["time"], network=network, now=int(time.time()))
        self._log_rate_limited("stale_template", "the node's template builds on %s, not its best block %s: %s",
                               prev, best, "waiting for a template on the best block" if made is None else
                               "mining an empty block on the best block until the node has a template for it")
        if made is None:
            self.metrics.template_errors.labels("stale_template").inc()
        return made

    def _publish(self, job: Job, new_tip_via: str | None) -> None:
        self._published_stamp = next(self._answer_stamps)
        self._best_tip_hex_display = job.prev_hash_hex_display
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
        if tip_hex_display is not None:
            self._best_tip_hex_display = tip_hex_display
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
            stamp = next(self._answer_stamps)
            if self._tip_seen_at is None:
                self._tip_seen_at = time.monotonic()
            await self.refresh(clean_if_new_tip=True, via="longpoll", template=template, stamp=stamp)

    async def _zmq_loop(self) -> None:
        from miner.node.zmq import ZMQSubscriber, parse_sequence_body

        async def on_message(topic: str, body: str | bytes, sequence: int) -> None:
            if topic == "hashblock":
                await self.on_tip_hint(body, "zmq")
                return
            event = parse_sequence_body(body)
            if event is not None and event.label == "C":
                await self.on_tip_hint(event.hash_hex_display, "zmq")
            elif event is not None and event.label == "D":
                # A block left the best chain (invalidateblock, a reorg): there is no
                # hashblock when no block is connected, and the new tip is its parent.
                await self.on_tip_hint(None, "zmq")

        async def on_gap(topic: str, expected: int, got: int) -> None:
            await self.on_tip_hint(None, "zmq-gap")

        sub = ZMQSubscriber(self.settings.zmq_url, topics=("hashblock", "sequence"), on_message=on_message,
                            on_gap=on_gap, metrics=self.metrics)
        with contextlib.suppress(asyncio.CancelledError):
            await sub.run()
