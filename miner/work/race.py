"""One block per tip at a time: the rule that keeps a fast miner from racing itself.

At regtest difficulty every hash is a block, so a rig sends blocks on the same tip T
faster than the node can answer the first. Each extra one the node would take as a
competing block (Core answers "inconclusive"): work thrown away, and a storm of
submitblock calls. So:

    offer(T, block) ──► SUBMIT  nothing on T is with the node: send this one
                    ──► HOLD    a block on T is with the node: keep this one as a backup
                    ──► STALE   a block of ours on T was accepted, or T is no longer the tip
    settle(T, outcome)   accepted / not on the best chain ──► T is finished (STALE from now)
                         rejected ──► the next backup, if any, is the one to send

Pure bookkeeping: the caller submits, and remembers only a bounded number of tips.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

__all__ = ["BlockRace", "Verdict"]

Candidate = TypeVar("Candidate")

# Backups kept per tip while its first block is with the node: one rejection (a bug, a
# local-check failure) must not cost the tip; a storm must not cost memory.
MAX_BACKUPS = 4
# Tips remembered: enough for any reorg we would see, bounded for a long run.
MAX_TIPS = 64


class Verdict(Enum):
    SUBMIT = "submit"
    HOLD = "hold"
    STALE = "stale"


@dataclass
class _Tip(Generic[Candidate]):
    in_flight: bool = False
    finished: bool = False
    backups: deque = field(default_factory=lambda: deque(maxlen=MAX_BACKUPS))


class BlockRace(Generic[Candidate]):
    """Which found block on a tip goes to the node (see the module docstring)."""

    def __init__(self, max_backups: int = MAX_BACKUPS, max_tips: int = MAX_TIPS) -> None:
        self._max_backups, self._max_tips = max_backups, max_tips
        self._tips: OrderedDict[bytes, _Tip[Candidate]] = OrderedDict()

    def _tip(self, prev_hash_internal: bytes) -> _Tip[Candidate]:
        tip = self._tips.get(prev_hash_internal)
        if tip is None:
            tip = self._tips[prev_hash_internal] = _Tip(backups=deque(maxlen=self._max_backups))
            while len(self._tips) > self._max_tips:
                self._tips.popitem(last=False)
        return tip

    def offer(self, prev_hash_internal: bytes, candidate: Candidate) -> Verdict:
        tip = self._tip(prev_hash_internal)
        if tip.finished:
            return Verdict.STALE
        if tip.in_flight:
            tip.backups.append(candidate)
            return Verdict.HOLD
        tip.in_flight = True
        return Verdict.SUBMIT

    def finish(self, prev_hash_internal: bytes) -> None:
        """T is done: our block on it was accepted, the node has another block on it, or
        the node's tip moved off it. Backups are dropped (they would only compete)."""
        tip = self._tip(prev_hash_internal)
        tip.finished, tip.in_flight = True, False
        tip.backups.clear()

    def reopen(self, prev_hash_internal: bytes) -> None:
        """T is the tip again (a reorg back to it): blocks on it count again."""
        self._tips.pop(prev_hash_internal, None)

    def rejected(self, prev_hash_internal: bytes) -> Candidate | None:
        """The block in flight on T was rejected: the next backup to send, or None (T is open again)."""
        tip = self._tip(prev_hash_internal)
        if tip.finished:
            return None
        if tip.backups:
            return tip.backups.popleft()  # stays in flight
        tip.in_flight = False
        return None
