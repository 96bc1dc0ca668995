"""What a site agent does, as a pure function of what it knows (sans-I/O).

    verified desired records ──offer()──► accepted (newer revision, not expired)
                                         │  or refused: stale_revision | expired
    clock, own price ─────────target()───┴─► Target(level | None, mode, reason, revision)

    following  a desired record is in force: its level, until it expires
               (expires = min(valid_until, issued_at + the site's desired_ttl))
    fail_safe  no record in force: the site's own rule ("curtail": level 0; "hold": keep
               the last level; a site with its own price feed: its price vs breakeven)
    starting   just started, no record yet and the bus has not answered: devices are
               left as they are until the bus answers or desired_ttl has passed

A revision is applied at most once and never after a greater one (`mark_applied`; the
agent persists the highest). Records come from the bus verified (signature, fields,
site): this module orders them in time and never looks at bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from miner.sched.sites import FAIL_SAFES   # the sites file's fail_safe values

# Bounded reasons of a fail-safe target (log words; the following mode keeps the record's).
OWN_PRICE_BELOW = "price_below_breakeven"
OWN_PRICE_ABOVE = "price_above_breakeven"
NO_DESIRED = "price_missing"        # miner.sched.model.REASONS' word for "fail-safe applied"


class DesiredLike(Protocol):
    """The fields of a verified DesiredState record this module reads."""

    revision: int
    level: float
    reason: str
    issued_at: datetime
    valid_until: datetime


@dataclass(frozen=True)
class OwnPrice:
    """A site's own threshold input: its all-in price now and its breakeven (USD/MWh);
    price None when its feed has no fresh price."""

    price_usd_per_mwh: float | None
    breakeven_usd_per_mwh: float


@dataclass(frozen=True)
class Target:
    level: float | None        # None: leave the devices as they are
    mode: str                  # following | fail_safe | starting (miner.fleet.records.MODES)
    reason: str                # the record's reason, or a fail-safe reason
    revision: int | None       # the desired revision followed (following mode only)
    detail: str = ""


def expires_at(record: DesiredLike, desired_ttl_seconds: float) -> datetime:
    """When a site stops trusting `record`: the leader's valid_until, capped by the
    site's own desired_ttl from issue (a site need not trust a leader's long promise)."""
    return min(record.valid_until, record.issued_at + timedelta(seconds=desired_ttl_seconds))


def own_threshold(own: OwnPrice) -> tuple[float | None, str, str]:
    """(level, reason, detail) of a site's own price rule: run below breakeven, curtail
    at or above; None level when there is no fresh price."""
    p, b = own.price_usd_per_mwh, own.breakeven_usd_per_mwh
    if p is None or not math.isfinite(p):
        return None, NO_DESIRED, "no fresh local price"
    if p < b:
        return 1.0, OWN_PRICE_BELOW, f"own price {p:.2f} < {b:.2f} USD/MWh"
    return 0.0, OWN_PRICE_ABOVE, f"own price {p:.2f} >= {b:.2f} USD/MWh"


class Follower:
    """One site's following state: the newest accepted record and the highest applied
    revision. `offer` orders records, `target` says what to do now."""

    def __init__(self, *, desired_ttl_seconds: float, fail_safe: str, started_at: datetime,
                 highest_applied: int | None = None, last: DesiredLike | None = None) -> None:
        if fail_safe not in FAIL_SAFES:
            raise ValueError(f"fail_safe must be one of {FAIL_SAFES}, got {fail_safe!r}")
        if not desired_ttl_seconds > 0:
            raise ValueError(f"desired_ttl_seconds must be > 0, got {desired_ttl_seconds}")
        self.desired_ttl = desired_ttl_seconds
        self.fail_safe = fail_safe
        self.started_at = started_at
        self.highest_applied = highest_applied
        # The newest accepted record (applied or about to be); a persisted one at start.
        self.desired: DesiredLike | None = last
        self.resynced = False          # the bus has answered a resync since start
        self.held_level: float | None = last.level if last is not None else None

    def offer(self, record: DesiredLike, now: datetime) -> str:
        """'accepted', 'current' (the record in force again, e.g. a resync) or a refusal:
        'stale_revision' (not newer than one applied or accepted) or 'expired'."""
        if self.desired is not None and record.revision == self.desired.revision:
            return "current"
        if self.desired is None and record.revision == self.highest_applied:
            # Applied before a restart that lost the record: follow it again, never re-ack it.
            if expires_at(record, self.desired_ttl) <= now:
                return "expired"
            self.desired = record
            return "current"
        if record.revision <= self.newest_revision:
            return "stale_revision"
        if expires_at(record, self.desired_ttl) <= now:
            return "expired"
        self.desired = record
        return "accepted"

    @property
    def newest_revision(self) -> int:
        """The newest revision applied or accepted (-1: none yet)."""
        return max(self.highest_applied if self.highest_applied is not None else -1,
                   self.desired.revision if self.desired is not None else -1)

    def mark_resynced(self) -> None:
        """The bus answered a resync (with a record or with none): start-up is over."""
        self.resynced = True

    def mark_applied(self, revision: int | None, level: float | None) -> None:
        """`level` is in force (from `revision` when following); never goes backwards."""
        if revision is not None:
            if self.highest_applied is not None and revision < self.highest_applied:
                raise ValueError(f"revision {revision} is older than {self.highest_applied}, already applied")
            self.highest_applied = revision
        if level is not None:
            self.held_level = level

    def needs_apply(self) -> bool:
        """The accepted record is newer than the highest applied revision."""
        return self.desired is not None and (self.highest_applied is None
                                             or self.desired.revision > self.highest_applied)

    def target(self, now: datetime, own: OwnPrice | None = None) -> Target:
        d = self.desired
        if d is not None and now < expires_at(d, self.desired_ttl):
            return Target(d.level, "following", d.reason, d.revision)
        if d is None and not self.resynced and now < self.started_at + timedelta(seconds=self.desired_ttl):
            return Target(None, "starting", NO_DESIRED, None, "waiting for the bus")
        why = "desired state expired" if d is not None else "no desired state"
        if own is not None:
            level, reason, detail = own_threshold(own)
            if level is not None:
                return Target(level, "fail_safe", reason, None, f"{why}; {detail}")
            why = f"{why}; {detail}"
        if self.fail_safe == "curtail":
            return Target(0.0, "fail_safe", NO_DESIRED, None, f"{why}: curtail")
        return Target(self.held_level, "fail_safe", NO_DESIRED, None, f"{why}: hold")

    def next_change(self, now: datetime) -> datetime | None:
        """The next time `target` may change with no new input (an expiry or the end of
        start-up); None when only new input can change it."""
        times = []
        if self.desired is not None:
            times.append(expires_at(self.desired, self.desired_ttl))
        elif not self.resynced:
            times.append(self.started_at + timedelta(seconds=self.desired_ttl))
        future = [t for t in times if t > now]
        return min(future) if future else None
