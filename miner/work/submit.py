"""The block submitter: journal first, then submitblock until the node answers.

    submit(job, solution)
      ├─ block = job.block(solution); problems = block.check(check_pow=True)
      │    (problems are logged loudly, but the node has the last word: still submitted)
      ├─ journal.record_found(...)            written and fsynced before the node sees it
      ├─ submitblock(hex)  ◄─┐  NodeUnavailable / NodeWarmingUp: sleep, double the delay
      │                      └─ up to retry_max_delay, and try again, for as long as it takes
      └─ answer ──► journal.record_result(final=True), metrics, SubmitOutcome

Node trouble never reaches the caller: the block stays in the journal and the submitter
keeps trying; cancelling submit() stops it cleanly and leaves the entry pending, and the
next start's resubmit_pending() sends it again if it still extends the tip. One block
hash is handled by one submission at a time; a second submit() of the same block waits
for the first and returns its answer instead of sending the block again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Protocol

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
from miner.work.journal import Journal, JournalEntry

__all__ = [
    "BlockSubmitter",
    "SubmitOutcome",
    "Clock",
    "AsyncioClock",
    "ACCEPTED_RESULTS",
    "result_from_answer",
    "result_from_error",
    "reason_label",
]

log = logging.getLogger(__name__)

# Results meaning the node has the block: "duplicate" is BIP22's "already have it",
# usually our own earlier submission that was accepted before a restart or a timeout.
ACCEPTED_RESULTS = frozenset({"accepted", "duplicate"})
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
    result: str  # "accepted", "duplicate", the node's reject reason, or "stale"
    attempts: int  # submitblock calls this time (0: answered before, or stale)
    local_problems: tuple[str, ...] = ()  # what Block.check found before submitting
    journaled: bool = True  # False only if the journal write itself failed
    height: int | None = None  # the block's height, when its job knew it

    @property
    def accepted(self) -> bool:
        """True when the node has the block ("accepted", or "duplicate": it already had it)."""
        return self.result in ACCEPTED_RESULTS

    @property
    def inconclusive(self) -> bool:
        """Valid, but not on the node's best chain (BIP22 "inconclusive"): another block won the tip."""
        return self.result in ("inconclusive", "duplicate-inconclusive")


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


def _build_and_check(job: Job, solution: Solution) -> tuple[str, bytes, tuple[str, ...]]:
    block = job.block(solution)
    return block.hash_hex_display(), block.serialize(), tuple(block.check(check_pow=True))


class BlockSubmitter:
    """Journals found blocks and submits them until the node answers; never loses one."""

    def __init__(self, rpc: Any, journal: Journal, metrics: Metrics | None = None, *,
                 retry_max_delay: float = 10.0, retry_initial_delay: float = RETRY_INITIAL_DELAY,
                 clock: Clock | None = None) -> None:
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
        self._update_pending_gauge()

    # -- public

    async def submit(self, job: Job, solution: Solution) -> SubmitOutcome:
        """Journal the block for this solution, submit it, and return the node's answer."""
        # A full block is megabytes of hashing and serializing: keep it off the event loop.
        block_hash, raw, problems = await asyncio.to_thread(_build_and_check, job, solution)
        if problems:
            log.error(
                "block %s for job %s FAILS LOCAL CHECKS (%s); journaling and submitting it "
                "anyway so the node decides", block_hash, job.job_id, "; ".join(problems),
            )
        async with self._exclusive(block_hash):
            entry = self._journal.get(block_hash)
            if entry is not None and entry.final:
                log.info("block %s was already answered: %s", block_hash, entry.final_result)
                return SubmitOutcome(block_hash, entry.final_result or "", 0, problems, True, job.height)
            if entry is None:
                self._metrics.blocks.labels(stage="found").inc()
                log.info("found block %s at height %s (job %s)", block_hash, job.height, job.job_id)
            journaled = await self._record_found(
                raw, block_hash, job.prev_hash_hex_display, job.height, job.job_id
            )
            if problems and journaled:
                await self._record_result(block_hash, "local-check-failed: " + "; ".join(problems), final=False)
            return await self._submit_until_answered(block_hash, raw, problems, journaled, job.height)

    async def resubmit_pending(self, current_tip_hex_display: str) -> list[SubmitOutcome]:
        """Resubmit unanswered journal entries that extend the tip; mark the rest stale."""
        tip = current_tip_hex_display.lower()
        outcomes = []
        for pending in self._journal.pending():
            block_hash = pending.block_hash_hex_display
            async with self._exclusive(block_hash):
                entry = self._journal.get(block_hash)
                if entry is None or entry.final:
                    continue  # answered meanwhile by a concurrent submit()
                # A block that *is* the tip was accepted before we could record it:
                # resubmitting gets "duplicate", which records exactly that.
                if tip in (entry.prev_hash_hex_display, entry.block_hash_hex_display):
                    log.info("resubmitting journaled block %s (height %s)", block_hash, entry.height)
                    outcomes.append(
                        await self._submit_until_answered(block_hash, entry.block, (), True, entry.height)
                    )
                elif await self._in_active_chain(block_hash):
                    # Accepted before the crash and built upon since: not stale, ours.
                    log.info("journaled block %s (height %s) is in the chain", block_hash, entry.height)
                    outcomes.append(await self._finish(block_hash, "accepted", 0, (), True, entry.height))
                else:
                    log.warning(
                        "journaled block %s (height %s) builds on %s, not the tip %s: stale",
                        block_hash, entry.height, entry.prev_hash_hex_display, tip,
                    )
                    await self._record_result(block_hash, "stale", final=True)
                    self._metrics.blocks.labels(stage="stale").inc()
                    outcomes.append(SubmitOutcome(block_hash, "stale", 0, height=entry.height))
        return outcomes

    async def _in_active_chain(self, block_hash: str) -> bool:
        """True when the node has the block on its best chain (confirmations >= 1)."""
        try:
            header = await self._rpc.call("getblockheader", block_hash)
        except RPCError:
            return False  # unknown to the node (or it cannot say): treat as not in the chain
        return isinstance(header, dict) and isinstance(header.get("confirmations"), int) \
            and header["confirmations"] >= 1

    # -- the retry loop

    async def _submit_until_answered(self, block_hash: str, raw: bytes, problems: tuple[str, ...],
                                     journaled: bool, height: int | None) -> SubmitOutcome:
        block_hex = raw.hex()
        delay = self._initial_delay
        attempts = 0
        failing_since: float | None = None
        last_warning = -math.inf
        self._metrics.blocks.labels(stage="submitted").inc()
        while True:
            attempts += 1
            try:
                answer = await self._rpc.call("submitblock", block_hex)
            except (NodeUnavailable, NodeWarmingUp) as e:
                failure: Exception = e
            except RPCError as e:
                # Only an error with a JSON-RPC code is the node's verdict; one without
                # (an HTTP-level failure) says nothing about the block.
                if not isinstance(getattr(e, "code", None), int):
                    failure = e
                else:
                    result = result_from_error(e)
                    break
            except Exception as e:
                # A bug in the client is not the node's verdict either: keep trying.
                failure = e
            else:
                result = result_from_answer(answer)
                break
            now = self._clock.monotonic()
            if failing_since is None:
                failing_since = now
                if journaled:
                    kind = "warming-up" if isinstance(failure, NodeWarmingUp) else "unavailable"
                    await self._record_result(block_hash, kind, final=False)
            if now - last_warning >= FAILURE_LOG_INTERVAL:
                last_warning = now
                log.warning(
                    "submitblock %s failed (attempt %d, %.0f s so far): %s: %s; retrying "
                    "every <= %.1f s, the block is kept in the journal",
                    block_hash, attempts, now - failing_since, type(failure).__name__, failure,
                    self._max_delay, exc_info=not isinstance(failure, RPCError),
                )
            await self._clock.sleep(delay)
            delay = min(delay * 2, self._max_delay)
        if failing_since is not None:
            log.info("submitblock %s answered after %d attempts", block_hash, attempts)
        return await self._finish(block_hash, result, attempts, problems, journaled, height)

    async def _finish(self, block_hash: str, result: str, attempts: int,
                      problems: tuple[str, ...], journaled: bool, height: int | None) -> SubmitOutcome:
        if journaled:
            await self._record_result(block_hash, result, final=True)
        outcome = SubmitOutcome(block_hash, result, attempts, problems, journaled, height)
        if outcome.accepted:
            self._metrics.blocks.labels(stage="accepted").inc()
            log.info("block %s at height %s accepted by the node (%s)", block_hash, height, result)
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

    def _update_pending_gauge(self) -> None:
        self._metrics.journal_pending.set(len(self._journal.pending()))

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
