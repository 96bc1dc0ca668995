"""The fleet leader lease: one key in a JetStream bucket whose max age is the lease TTL.

    standby: every ttl/3  kv.create("leader")  ── wins when the key is absent ──► leader,
                                                  epoch = the revision it created
    leader:  every ttl/3  kv.update("leader", last=revision)  (compare-and-set)
             a failed CAS, or no successful renewal for ttl  ──► not leader, at once

A dead leader's entry is removed by the bucket's max age ttl after its last renewal, so a
standby wins within ttl + ttl/3. The leader counts its lease from the moment it *sent* a
renewal, and the server keeps the entry at least ttl from when it *stored* it, so the old
leader's lease ends no later than the server lets a new one begin. A write made by a
deposed leader all the same (delayed in flight) carries the old epoch: every site already
holds a higher revision from the new leader and ignores it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timezone
from typing import Any, Callable

from miner.devices.actuator import error_text
from miner.fleet.bus import LEASE_KEY
from miner.fleet.records import format_time

log = logging.getLogger(__name__)


class Lease:
    def __init__(self, kv: Any, holder: str, ttl_seconds: float, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[bool], None] | None = None) -> None:
        if not ttl_seconds > 0:
            raise ValueError(f"lease ttl must be > 0, got {ttl_seconds}")
        self.kv, self.holder, self.ttl = kv, holder, ttl_seconds
        self.clock, self.on_change = clock, on_change
        self.epoch: int | None = None        # the revision this process won the lease with
        self.revision: int | None = None     # its entry's current revision (for the CAS)
        self._valid_until = -1.0             # clock() time the lease ends without a renewal
        self.renewed_at: float | None = None
        self.other_holder: str | None = None  # who holds it, as last seen by a standby
        self.other_at: datetime | None = None
        self._told = False

    @property
    def interval(self) -> float:
        return self.ttl / 3

    @property
    def leading(self) -> bool:
        """True while this process holds a lease that has not run out (checked before every write)."""
        return self.epoch is not None and self.clock() < self._valid_until

    def age_seconds(self, now: datetime | None = None) -> float | None:
        """Seconds since the lease was last renewed: our own renewal while leading, else the
        holder's as it wrote it (its clock); None when unknown."""
        if self.leading and self.renewed_at is not None:
            return self.clock() - self.renewed_at
        if self.other_at is not None:
            return max(0.0, ((now or datetime.now(timezone.utc)) - self.other_at).total_seconds())
        return None

    def _value(self) -> bytes:
        return json.dumps({"holder": self.holder, "at": format_time(datetime.now(timezone.utc))},
                          sort_keys=True).encode()

    async def step(self) -> bool:
        """One attempt: renew when leading, else try to win. Returns leading afterwards."""
        import nats.js.errors

        sent = self.clock()
        try:
            if self.epoch is not None:
                if not self.leading:
                    self._lose("no renewal succeeded within the lease ttl")
                    return self._tell(False)
                self.revision = await self.kv.update(LEASE_KEY, self._value(), last=self.revision)
                self._valid_until, self.renewed_at = sent + self.ttl, sent
            else:
                revision = await self.kv.create(LEASE_KEY, self._value())
                self.epoch = self.revision = revision
                self._valid_until, self.renewed_at = sent + self.ttl, sent
                self.other_holder = self.other_at = None
                log.info("fleet %s: leader (lease epoch %d, ttl %.3g s)", self.holder, revision, self.ttl)
        except nats.js.errors.KeyWrongLastSequenceError:
            if self.epoch is not None:
                self._lose("another process holds the lease (compare-and-set failed)")
            else:
                await self._look_at_holder()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the bus is away or slow: a leader keeps its lease until it runs out
            log.debug("fleet %s: lease %s failed: %s", self.holder,
                      "renewal" if self.epoch is not None else "attempt", error_text(e))
            if self.epoch is not None and not self.leading:
                self._lose(f"no renewal succeeded within the lease ttl ({error_text(e)})")
        return self._tell(self.leading)

    def _tell(self, leading: bool) -> bool:
        """on_change on every change of leadership as this process has seen it (a lease
        that ran out between two steps is told at the next one)."""
        if leading != self._told and self.on_change is not None:
            self.on_change(leading)
        self._told = leading
        return leading

    def _lose(self, why: str) -> None:
        log.warning("fleet %s: leadership lost (epoch %s): %s", self.holder, self.epoch, why)
        self.epoch = self.revision = None
        self._valid_until = -1.0

    async def _look_at_holder(self) -> None:
        try:
            entry = await self.kv.get(LEASE_KEY)
            value = json.loads(entry.value)
            holder, at = str(value.get("holder")), value.get("at")
            from miner.fleet.records import parse_time

            when = parse_time(at, "at")
        except asyncio.CancelledError:
            raise
        except Exception:  # gone meanwhile, or not ours to read: it is looked at again next time
            return
        if holder != self.other_holder:
            log.info("fleet %s: standby; %s leads", self.holder, holder)
        self.other_holder, self.other_at = holder, when

    async def release(self) -> None:
        """Give the lease up (a clean stop): a standby wins at its next attempt, not after
        the ttl. Best effort: a dead bus lets the ttl do it."""
        if self.epoch is None:
            return
        revision, self.epoch, self._valid_until = self.revision, None, -1.0
        self._tell(False)
        try:
            await asyncio.wait_for(self.kv.delete(LEASE_KEY, last=revision), 2.0)
            log.info("fleet %s: lease released", self.holder)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.info("fleet %s: lease not released (%s); it ends by its ttl", self.holder, error_text(e))
