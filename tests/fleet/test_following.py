"""The site agent's pure core: ordering of desired records, expiry, fail-safes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miner.fleet.following import Follower, OwnPrice, expires_at, own_threshold

T0 = datetime(2026, 12, 7, 8, 0, tzinfo=timezone.utc)
TTL = 300.0


@dataclass(frozen=True)
class Rec:
    revision: int
    level: float
    reason: str = "price_below_breakeven"
    issued_at: datetime = T0
    valid_until: datetime = T0 + timedelta(seconds=TTL)


def rec(epoch: int, seq: int, level: float = 1.0, *, issued: float = 0.0, valid: float = TTL) -> Rec:
    at = T0 + timedelta(seconds=issued)
    return Rec((epoch << 32) | seq, level, issued_at=at, valid_until=at + timedelta(seconds=valid))


def follower(**kw) -> Follower:
    return Follower(desired_ttl_seconds=kw.pop("ttl", TTL), fail_safe=kw.pop("fail_safe", "curtail"),
                    started_at=kw.pop("started_at", T0), **kw)


def test_follows_a_record_until_it_expires_then_curtails():
    f = follower()
    assert f.offer(rec(1, 1, 0.5), T0) == "accepted"
    assert f.target(T0).level == 0.5 and f.target(T0).mode == "following"
    assert f.next_change(T0) == T0 + timedelta(seconds=TTL)
    late = T0 + timedelta(seconds=TTL)
    t = f.target(late)
    assert (t.level, t.mode, t.reason) == (0.0, "fail_safe", "price_missing")


def test_hold_keeps_the_last_level_in_force():
    f = follower(fail_safe="hold")
    f.offer(rec(1, 1, 0.6), T0)
    f.mark_applied(rec(1, 1).revision, 0.6)
    t = f.target(T0 + timedelta(seconds=TTL + 1))
    assert (t.level, t.mode) == (0.6, "fail_safe")


def test_the_sites_own_ttl_caps_the_leaders_promise():
    f = follower(ttl=60.0)
    f.offer(rec(1, 1, valid=3600), T0)
    assert f.target(T0 + timedelta(seconds=59)).mode == "following"
    assert f.target(T0 + timedelta(seconds=60)).mode == "fail_safe"
    assert expires_at(rec(1, 1, valid=30), 60.0) == T0 + timedelta(seconds=30)


def test_own_price_rules_the_fail_safe():
    f = follower(fail_safe="curtail")
    f.mark_resynced()
    cheap, dear = OwnPrice(20.0, 102.08), OwnPrice(300.0, 102.08)
    assert (f.target(T0, cheap).level, f.target(T0, cheap).reason) == (1.0, "price_below_breakeven")
    assert (f.target(T0, dear).level, f.target(T0, dear).reason) == (0.0, "price_above_breakeven")
    # No fresh local price: the configured fail-safe.
    assert f.target(T0, OwnPrice(None, 102.08)).level == 0.0
    assert own_threshold(OwnPrice(102.08, 102.08))[0] == 0.0


def test_starting_leaves_devices_alone_until_the_bus_answers_or_the_ttl_passes():
    f = follower()
    t = f.target(T0 + timedelta(seconds=1))
    assert (t.level, t.mode) == (None, "starting")
    assert f.target(T0 + timedelta(seconds=TTL)).mode == "fail_safe"
    f2 = follower()
    f2.mark_resynced()  # the bus answered: no key for us
    assert f2.target(T0 + timedelta(seconds=1)).mode == "fail_safe"


def test_old_equal_and_expired_revisions_are_refused():
    f = follower(highest_applied=rec(2, 5).revision)
    assert f.offer(rec(2, 4), T0) == "stale_revision"
    assert f.offer(rec(1, 99), T0) == "stale_revision"     # a deposed leader's late write
    assert f.offer(rec(2, 6, issued=-TTL - 1), T0) == "expired"
    assert f.offer(rec(2, 5), T0) == "current"             # applied before a restart
    assert f.needs_apply() is False
    assert f.offer(rec(2, 5), T0) == "current"
    assert f.offer(rec(3, 1), T0) == "accepted" and f.needs_apply()
    with pytest.raises(ValueError):
        f.mark_applied(rec(2, 1).revision, 0.0)


revisions = st.tuples(st.integers(1, 4), st.integers(1, 6)).map(lambda es: (es[0] << 32) | es[1])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(revisions, st.booleans(), st.floats(0, 1)), max_size=30),
       st.one_of(st.none(), revisions))
def test_applied_revisions_only_ever_increase(deliveries, persisted):
    """Whatever order records come in (resyncs repeat them, a deposed leader writes late),
    the revisions applied strictly increase and start above the persisted one."""
    f = follower(highest_applied=persisted)
    applied = []
    for revision, apply_now, level in deliveries:
        f.offer(Rec(revision, level), T0)
        if apply_now and f.needs_apply():
            applied.append(f.desired.revision)
            f.mark_applied(f.desired.revision, f.desired.level)
    if f.needs_apply():
        applied.append(f.desired.revision)
    assert applied == sorted(set(applied))
    if persisted is not None:
        assert all(r > persisted for r in applied)
    newer = [r for r, _, _ in deliveries if persisted is None or r > persisted]
    if newer:
        assert f.desired.revision == max(newer)
