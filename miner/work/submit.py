"""The block submitter: journal first, then submitblock until the node answers.

    submit(job, solution)
      ├─ raw = job.block(solution).serialize()   cheap: the bytes the journal needs
      ├─ journal.record_found(raw, ...)          written and fsynced before anything else
      ├─ problems = block.check(check_pow=True)  (0.14 s for 1 MB) logged loudly, but the
      │                                          node has the last word: still submitted
      ├─ submitblock(hex) ──── answered ──► journal.record_result(final=True), metrics, SubmitOutcome
      └─ node unreachable: the block joins the outage queue, and its submit() waits there
             one retry loop for every queued block: sleep (doubling from 0.25 s up to
             retry_max_delay), send the oldest; once the node answers, send the rest
             at once; while the queue is not empty, new blocks queue behind it

Node trouble never reaches the caller: the block stays in the journal and the queue
keeps trying. While the node is down, retrying costs one submitblock per backoff
interval however many blocks wait, and a waiting block holds no copy of its bytes (the
journal has them). Cancelling submit() (shutdown) returns at once and leaves the entry
pending; the next start sends it again if it still extends the tip (resubmit_on_tip)
and judges every other earlier entry in bulk, in the background (judge_earlier_entries).
One block hash is handled by one submission at a time; a second submit() of the same
block waits for the first and returns its answer instead of sending the block again.

Results: "accepted" and "duplicate" (the node has the block); "inconclusive" and
"duplicate-inconclusive" (valid, but not on the node's best chain: another block took
the height; recorded as their own result, never counted as a rejection); "stale" (never
sent: built on a tip the chain has left); anything else is a rejection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, AsyncIterator, Protocol

from miner.chain.block import Block
from miner.chain.networks import get_network
from miner.metrics import Metrics
from miner.node.rpc import (
    NodeUnavailable,
    NodeWarmingUp,
    RPCError,
    RPCVerifyAlreadyInChain,
    RPCVerifyError,
    RPCVerifyRejected,
    submitblock_reason,
)
from miner.work.job import Job, Solution
from miner.work.journal import Journal, JournalEntry, journal_chain_id

__all__ = [
    "BlockSubmitter",
    "SubmitOutcome",
    "Clock",
    "AsyncioClock",
    "ACCEPTED_RESULTS",
    "INCONCLUSIVE_RESULTS",
    "STALE",
    "result_from_answer",
    "result_from_error",
    "reason_label",
    "node_chain_name",
]

log = logging.getLogger(__name__)

# Results meaning the node has the block: "duplicate" is BIP22's "already have it",
# usually our own earlier submission that was accepted before a restart or a timeout.
ACCEPTED_RESULTS = frozenset({"accepted", "duplicate"})
# BIP22: the block is valid but not (yet) on the node's best chain: another block of
# the same work took the height first. Not a rejection, and the tip is taken.
INCONCLUSIVE_RESULTS = frozenset({"inconclusive", "duplicate-inconclusive"})
# Never sent: it builds on a tip the chain has left.
STALE = "stale"
# First retry delay after a transport failure (seconds); doubles up to retry_max_delay.
RETRY_INITIAL_DELAY = 0.25
# While the node stays unreachable, repeat the warning at most this often (seconds).
FAILURE_LOG_INTERVAL = 60.0
# Longest result string kept in the journal (a node's message could be anything).
MAX_RESULT_CHARS = 200
_LABEL_TOKEN = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")


class Clock(Protocol):
    """Time as the submitter sees it; tests pass one that does not really wait."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class AsyncioClock:
    """The real clock: time.monotonic and asyncio.sleep."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class SubmitOutcome:
    """The node's final word on one block."""

    block_hash_hex_display: str
    result: str  # "accepted", "duplicate", "inconclusive", the node's reject reason, or "stale"
    attempts: int  # submitblock calls this time (0: answered before, or judged without sending)
    local_problems: tuple[str, ...] = ()  # what Block.check found before submitting
    journaled: bool = True  # False only if the journal write itself failed
    height: int | None = None  # the block's height, when its job knew it

    @property
    def accepted(self) -> bool:
        """True when the node has the block ("accepted", or "duplicate": it already had it)."""
        return self.result in ACCEPTED_RESULTS

    @property
    def inconclusive(self) -> bool:
        """True for "inconclusive"/"duplicate-inconclusive": valid, not on the best chain.

        Not a rejection: another block took this height, so the tip it built on is gone
        for us too (do not reopen it).
        """
        return self.result in INCONCLUSIVE_RESULTS

    @property
    def rejected(self) -> bool:
        """True when the node refused the block (neither accepted, inconclusive nor stale)."""
        return not (self.accepted or self.inconclusive or self.result == STALE)


def result_from_answer(answer: Any) -> str:
    """submitblock's return value as a journal result: null is acceptance (BIP22)."""
    if not (answer is None or isinstance(answer, str)):
        return f"unexpected-answer {answer!r:.100}"
    reason = submitblock_reason(answer)  # bcoin says "rejected: duplicate" for Core's "duplicate"
    if reason is None:
        return "accepted"
    return reason[:MAX_RESULT_CHARS] or "rejected"


def result_from_error(error: RPCError) -> str:
    """An RPC error that is the node's answer (not a transport failure) as a journal result."""
    message = str(getattr(error, "message", "") or "").strip()
    if isinstance(error, RPCVerifyAlreadyInChain):
        return "duplicate"
    if isinstance(error, RPCVerifyRejected):
        return message[:MAX_RESULT_CHARS] or "rejected"
    if isinstance(error, RPCVerifyError):
        return message[:MAX_RESULT_CHARS] or "verify-error"
    # Core's other submitblock errors (-22 "Block decode failed", -1 "Block does not
    # start with a coinbase") are deterministic: sending the same bytes again is futile.
    code = getattr(error, "code", None)
    return f"rpc-error {code}: {message}"[:MAX_RESULT_CHARS]


def reason_label(result: str) -> str:
    """A bounded metric label for a result: its leading code word ("bad-txnmrklroot")."""
    match = _LABEL_TOKEN.match(result.strip().lower())
    return match.group(0) if match else "other"


async def node_chain_name(rpc: Any) -> str:
    """The node's network and chain as a default journal is named: "regtest-<block 1 prefix>".

    Regtest chains (and every signet) share a genesis, so block 1 tells them apart.
    """
    info = await rpc.call_with_retry("getblockchaininfo")
    network = get_network(info.get("chain") if isinstance(info, dict) else None).name
    height = info.get("blocks") if isinstance(info, dict) else None
    block1 = await rpc.call_with_retry("getblockhash", 1) if isinstance(height, int) and height >= 1 else None
    return f"{network}-{journal_chain_id(block1)}"


def _build_and_serialize(job: Job, solution: Solution) -> tuple[str, bytes, Block]:
    block = job.block(solution)
    return block.hash_hex_display(), block.serialize(), block


def _local_problems(block: Block) -> tuple[str, ...]:
    return tuple(block.check(check_pow=True))


class _NoAnswer(Exception):
    """submitblock got no verdict from the node (unreachable, warming up, a client bug)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class _Queued:
    """A block waiting in the outage queue for the node to come back."""

    __slots__ = ("future", "raw", "attempts")

    def __init__(self, future: asyncio.Future, raw: bytes | None) -> None:
        self.future = future
        self.raw = raw  # only for a block the journal could not hold; else read from the journal
        self.attempts = 0


class BlockSubmitter:
    """Journals found blocks and submits them until the node answers; never loses one."""

    def __init__(self, rpc: Any, journal: Journal, metrics: Metrics | None = None, *,
                 retry_max_delay: float = 10.0, retry_initial_delay: float = RETRY_INITIAL_DELAY,
                 clock: Clock | None = None, block_log_level: int = logging.INFO) -> None:
        # "found" and "accepted" lines: a loud line per block on mainnet, debug on regtest
        # (blocks every few milliseconds; the status line sums them up).
        self.block_log_level = block_log_level
        if not 0 < retry_initial_delay <= retry_max_delay or not math.isfinite(retry_max_delay):
            raise ValueError(
                f"need 0 < retry_initial_delay ({retry_initial_delay}) <= retry_max_delay ({retry_max_delay})"
            )
        self._rpc = rpc
        self._journal = journal
        self._metrics = metrics if metrics is not None else Metrics()
        self._initial_delay = retry_initial_delay
        self._max_delay = retry_max_delay
        self._clock = clock if clock is not None else AsyncioClock()
        # block hash -> (lock, number of holders and waiters): one submission per block.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # The outage queue, oldest first, and the one task that retries it.
        self._queue: dict[str, _Queued] = {}
        self._retry_task: asyncio.Task | None = None
        # From a submitblock without an answer until the retry loop gets one: new blocks
        # queue at once instead of each trying the unreachable node first.
        self._node_down = False
        # Earlier runs' pending entries not yet judged (set by resubmit_on_tip).
        self._earlier: list[JournalEntry] | None = None
        self._update_pending_gauge()

    @property
    def waiting_for_node(self) -> int:
        """Blocks queued until the node answers again (0 while it answers)."""
        return len(self._queue)

    # -- public

    async def submit(self, job: Job, solution: Solution) -> SubmitOutcome:
        """Journal the block for this solution, submit it, and return the node's answer."""
        # Serializing a full block is megabytes of copying: keep it off the event loop.
        block_hash, raw, block = await asyncio.to_thread(_build_and_serialize, job, solution)
        async with self._exclusive(block_hash):
            entry = self._journal.get(block_hash)
            if entry is not None and entry.final:
                log.info("block %s was already answered: %s", block_hash, entry.final_result)
                return SubmitOutcome(block_hash, entry.final_result or "", 0, (), True, job.height)
            if entry is None:
                self._metrics.blocks.labels(stage="found").inc()
                log.log(self.block_log_level, "found block %s at height %s (job %s)", block_hash, job.height,
                        job.job_id)
            # On disk first; only then the checks (a merkle tree over every transaction).
            journaled = await self._record_found(
                raw, block_hash, job.prev_hash_hex_display, job.height, job.job_id
            )
            problems = await asyncio.to_thread(_local_problems, block)
            del block
            if problems:
                log.error(
                    "block %s for job %s FAILS LOCAL CHECKS (%s); submitting it anyway so the node decides",
                    block_hash, job.job_id, "; ".join(problems),
                )
                if journaled:
                    await self._record_result(block_hash, "local-check-failed: " + "; ".join(problems), final=False)
            return await self._submit_until_answered(block_hash, raw, problems, journaled, job.height)

    async def resubmit_pending(self, current_tip_hex_display: str) -> list[SubmitOutcome]:
        """resubmit_on_tip, then judge_earlier_entries: every pending entry answered."""
        outcomes = await self.resubmit_on_tip(current_tip_hex_display)
        return outcomes + await self.judge_earlier_entries()

    async def resubmit_on_tip(self, current_tip_hex_display: str) -> list[SubmitOutcome]:
        """Resubmit earlier runs' pending blocks that extend the tip, before any work on it.

        Oldest first, until the node accepts one: that moves the tip, and the others on
        the old tip are left to judge_earlier_entries (stale). Every pending entry that
        does not extend the tip is kept for judge_earlier_entries.
        """
        tip = current_tip_hex_display.lower()
        pending = self._journal.pending()
        on_tip = [e for e in pending if e.prev_hash_hex_display == tip]
        self._earlier = [e for e in pending if e.prev_hash_hex_display != tip]
        outcomes = []
        for i, pending_entry in enumerate(on_tip):
            block_hash = pending_entry.block_hash_hex_display
            async with self._exclusive(block_hash):
                entry = self._journal.get(block_hash)
                if entry is None or entry.final:
                    continue  # answered meanwhile by a concurrent submit()
                log.info("resubmitting journaled block %s (height %s)", block_hash, entry.height)
                outcome = await self._submit_until_answered(block_hash, entry.block, (), True, entry.height)
            outcomes.append(outcome)
            if outcome.accepted:
                self._earlier += on_tip[i + 1:]  # siblings on a tip the chain has now left
                break
        return outcomes

    async def judge_earlier_entries(self) -> list[SubmitOutcome]:
        """Mark every other pending entry of an earlier run accepted (it is on the node's
        active chain) or stale, in bulk: one getblockhash per height, one journal write.

        Meant to run in the background while mining goes on. Entries of this run and
        blocks being submitted right now are never touched.
        """
        earlier = self._earlier if self._earlier is not None else self._journal.pending()
        self._earlier = []
        entries = [e for e in earlier if e.block_hash_hex_display not in self._locks]
        if not entries:
            return []
        started = self._clock.monotonic()
        try:
            tip_height = await self._ask("getblockcount")
        except RPCError as e:
            log.error("cannot judge %d earlier journal entries (getblockcount: %s); they stay pending for "
                      "the next start", len(entries), e)
            return []
        tip_height = tip_height if isinstance(tip_height, int) else -1
        by_height: dict[int, list[JournalEntry]] = defaultdict(list)
        unknown_height: list[JournalEntry] = []
        for e in entries:
            if e.height is None:
                unknown_height.append(e)
            elif e.height <= tip_height:
                by_height[e.height].append(e)
            # higher than the tip: not in the chain, so stale without asking
        in_chain: set[str] = set()
        for height in sorted(by_height):
            try:
                hash_at = await self._ask("getblockhash", height)
            except RPCError as e:
                log.debug("getblockhash %s: %s", height, e)  # a shorter chain meanwhile: not in it
                continue
            if isinstance(hash_at, str):
                in_chain.add(hash_at.lower())
        for e in unknown_height:
            if await self._in_active_chain(e.block_hash_hex_display):
                in_chain.add(e.block_hash_hex_display)
        judged = [(e.block_hash_hex_display, "accepted" if e.block_hash_hex_display in in_chain else STALE)
                  for e in entries if e.block_hash_hex_display not in self._locks]
        written = await self._record_results(judged)
        outcomes = [SubmitOutcome(e.block_hash_hex_display, e.final_result or "", 0, height=e.height)
                    for e in written]
        accepted = [o for o in outcomes if o.accepted]
        for o in accepted:
            log.info("journaled block %s (height %s) is in the chain", o.block_hash_hex_display, o.height)
        if accepted:
            self._metrics.blocks.labels(stage="accepted").inc(len(accepted))
        stale = len(outcomes) - len(accepted)
        if stale:
            self._metrics.blocks.labels(stage="stale").inc(stale)
        log.warning("judged %d earlier journal entries in %.1f s: %d in the chain, %d stale (built on a tip "
                    "the chain has left)", len(outcomes), self._clock.monotonic() - started, len(accepted), stale)
        return outcomes

    async def _in_active_chain(self, block_hash: str) -> bool:
        """True when the node has the block on its best chain (confirmations >= 1)."""
        try:
            header = await self._ask("getblockheader", block_hash)
        except RPCError:
            return False  # unknown to the node (or it cannot say): treat as not in the chain
        return isinstance(header, dict) and isinstance(header.get("confirmations"), int) \
            and header["confirmations"] >= 1

    async def _ask(self, method: str, *params: Any) -> Any:
        """A query that waits (cancellably) for an unreachable node; the node's errors are raised."""
        delay = self._initial_delay
        while True:
            try:
                return await self._rpc.call(method, *params)
            except (NodeUnavailable, NodeWarmingUp):
                pass
            await self._clock.sleep(delay)
            delay = min(delay * 2, self._max_delay)

    # -- sending, and the outage queue

    async def _send(self, raw: bytes) -> str:
        """One submitblock: the node's verdict as a result, or _NoAnswer."""
        try:
            answer = await self._rpc.call("submitblock", raw.hex())
        except (NodeUnavailable, NodeWarmingUp) as e:
            raise _NoAnswer(e) from None
        except RPCError as e:
            # Only an error with a JSON-RPC code is the node's verdict; one without
            # (an HTTP-level failure) says nothing about the block.
            if not isinstance(getattr(e, "code", None), int):
                raise _NoAnswer(e) from None
            return result_from_error(e)
        except Exception as e:
            # A bug in the client is not the node's verdict either: keep trying.
            raise _NoAnswer(e) from None
        return result_from_answer(answer)

    async def _submit_until_answered(self, block_hash: str, raw: bytes, problems: tuple[str, ...],
                                     journaled: bool, height: int | None) -> SubmitOutcome:
        self._metrics.blocks.labels(stage="submitted").inc()
        attempts = 0
        failure: BaseException | None = None
        first_failure = False
        if not self._node_down:  # the node answers (as far as we know): straight to it
            attempts = 1
            try:
                result = await self._send(raw)
            except _NoAnswer as e:
                failure = e.error
                first_failure, self._node_down = not self._node_down, True
            else:
                return await self._finish(block_hash, result, attempts, problems, journaled, height)
        if journaled:
            kind = "warming-up" if isinstance(failure, NodeWarmingUp) else "unavailable"
            await self._record_result(block_hash, kind, final=False)
        if failure is not None and first_failure:
            self._warn_outage(failure, started=True)
        result, queued_attempts = await self._wait_in_queue(block_hash, None if journaled else raw)
        return await self._finish(block_hash, result, attempts + queued_attempts, problems, journaled, height)

    async def _wait_in_queue(self, block_hash: str, raw: bytes | None) -> tuple[str, int]:
        item = _Queued(asyncio.get_running_loop().create_future(), raw)
        self._queue[block_hash] = item
        if self._retry_task is None or self._retry_task.done():
            self._retry_task = asyncio.create_task(self._retry_queue(), name="submitblock-retry")
        try:
            return await item.future
        finally:
            if self._queue.get(block_hash) is item:
                del self._queue[block_hash]  # cancelled: the entry stays pending in the journal
            if not self._queue and self._retry_task is not None and not self._retry_task.done():
                self._retry_task.cancel()  # nobody waits any more

    async def _retry_queue(self) -> None:
        """The one retry loop for every queued block (see the module docstring)."""
        delay = self._initial_delay
        failed = True  # a block only queues after a failure (its own or the queue's)
        outage_started = self._clock.monotonic()
        try:
            while self._queue:
                if failed:
                    await self._clock.sleep(delay)
                    delay = min(delay * 2, self._max_delay)
                    if not self._queue:
                        break
                block_hash, item = next(iter(self._queue.items()))
                raw = item.raw
                if raw is None:
                    entry = self._journal.get(block_hash)
                    raw = entry.block if entry is not None else None
                if raw is None:  # cannot happen: a journaled block stays in the journal
                    item.future.set_exception(RuntimeError(f"block {block_hash} vanished from the journal"))
                    del self._queue[block_hash]
                    continue
                item.attempts += 1
                try:
                    result = await self._send(raw)
                except _NoAnswer as e:
                    failed = True
                    self._warn_outage(e.error, started=False, since=outage_started)
                    continue
                finally:
                    del raw
                if failed:
                    log.info("the node answers submitblock again after %.0f s; sending %d queued block(s)",
                             self._clock.monotonic() - outage_started, len(self._queue))
                failed, delay, self._node_down = False, self._initial_delay, False
                if self._queue.get(block_hash) is item:
                    del self._queue[block_hash]
                if not item.future.done():
                    item.future.set_result((result, item.attempts))
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # a bug here must not leave submissions waiting for ever
            for item in self._queue.values():
                if not item.future.done():
                    item.future.set_exception(e)
            raise

    _last_outage_warning = -math.inf

    def _warn_outage(self, failure: BaseException, *, started: bool, since: float | None = None) -> None:
        now = self._clock.monotonic()
        if not started and now - self._last_outage_warning < FAILURE_LOG_INTERVAL:
            return
        self._last_outage_warning = now
        so_far = "" if since is None else f", {now - since:.0f} s so far"
        log.warning(
            "submitblock failed (%d block(s) waiting%s): %s: %s; retrying every <= %g s, the blocks are "
            "kept in the journal", max(1, len(self._queue)), so_far, type(failure).__name__, failure,
            self._max_delay, exc_info=None if isinstance(failure, RPCError) else failure,
        )

    async def _finish(self, block_hash: str, result: str, attempts: int,
                      problems: tuple[str, ...], journaled: bool, height: int | None) -> SubmitOutcome:
        if journaled:
            await self._record_result(block_hash, result, final=True)
        outcome = SubmitOutcome(block_hash, result, attempts, problems, journaled, height)
        if outcome.accepted:
            self._metrics.blocks.labels(stage="accepted").inc()
            log.log(self.block_log_level, "block %s at height %s accepted by the node (%s)", block_hash, height, result)
        elif outcome.inconclusive:
            self._metrics.blocks.labels(stage="inconclusive").inc()
            log.warning("block %s at height %s is valid but not on the node's best chain (%s): another block "
                        "took this height first", block_hash, height, result)
        else:
            self._metrics.blocks.labels(stage="rejected").inc()
            self._metrics.block_rejects.labels(reason=reason_label(result)).inc()
            log.error("block %s at height %s REJECTED by the node: %s", block_hash, height, result)
        return outcome

    # -- journal, off the event loop; its failures are logged, never raised

    async def _record_found(self, raw: bytes, block_hash: str, prev_hash: str,
                            height: int | None, job_id: str) -> bool:
        try:
            await asyncio.to_thread(
                self._journal.record_found, raw, block_hash_hex_display=block_hash,
                prev_hash_hex_display=prev_hash, height=height, job_id=job_id,
            )
        except Exception:
            # Submitting unjournaled beats not submitting: the node is the other copy.
            log.critical("could not journal block %s; submitting it anyway (hex follows): %s",
                         block_hash, raw.hex(), exc_info=True)
            return False
        finally:
            self._update_pending_gauge()
        return True

    async def _record_result(self, block_hash: str, result: str, *, final: bool) -> JournalEntry | None:
        try:
            return await asyncio.to_thread(self._journal.record_result, block_hash, result, final=final)
        except Exception:
            log.error("could not journal result %r for block %s", result, block_hash, exc_info=True)
            return None
        finally:
            self._update_pending_gauge()

    async def _record_results(self, results: list[tuple[str, str]]) -> list[JournalEntry]:
        try:
            return await asyncio.to_thread(self._journal.record_results, results, final=True)
        except Exception:
            log.error("could not journal the judgement of %d earlier entries", len(results), exc_info=True)
            return []
        finally:
            self._update_pending_gauge()

    def _update_pending_gauge(self) -> None:
        self._metrics.journal_pending.set(self._journal.pending_count())

    @contextlib.asynccontextmanager
    async def _exclusive(self, block_hash: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(block_hash, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[block_hash] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[block_hash]
            if users <= 1:
                del self._locks[block_hash]
            else:
                self._locks[block_hash] = (lock, users - 1)
