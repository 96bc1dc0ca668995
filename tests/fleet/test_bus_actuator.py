"""The fleet's actuator on a real nats-server: what the leader writes and when, and how a
site's report (fresh, stale, malformed, absent) becomes the scheduler's measurement."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from prometheus_client import CollectorRegistry

from miner.config import BusConfig
from miner.fleet import bus as busmod
from miner.fleet.bus import Bus
from miner.fleet.lease import Lease
from miner.fleet.records import (Ack, DeviceReport, SiteReport, decode_desired, encode_report, load_public_key,
                                 new_signing_key, public_key_hex)
from miner.fleet.scheduler import BusActuator
from miner.metrics import Metrics
from miner.sched.model import SiteDecision

T0 = datetime(2026, 12, 7, 8, 0, tzinfo=timezone.utc)
KEY = new_signing_key()
PUBLIC = load_public_key(public_key_hex(KEY))


def decision(level: float, reason: str = "price_below_breakeven") -> SiteDecision:
    return SiteDecision("texas", level, reason, 20.0, 102.08)


def report(at: datetime, level: float = 1.0, **kw) -> SiteReport:
    args = dict(site="texas", at=at, bus_connected=True, mode="following", applied_revision=None,
                desired_level=level, level=level, hashing=level > 0, hashrate_hs=5e6, power_w=30.0,
                devices=(DeviceReport("rig1", True, level > 0, True, 5e6, 30.0, level),), ack=None)
    args.update(kw)
    return SiteReport(**args)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def sample(metrics: Metrics, name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_the_leader_writes_changes_and_refreshes_and_reports_become_measurements(nats_server):
    server = nats_server(sites=["texas"])

    async def scenario():
        name, password = server.fleet_user
        bus = Bus(BusConfig(url=server.url, user=name), environ={busmod.PASSWORD_ENV: password})
        await bus.connect()
        desired, reported, lease_kv = await bus.fleet_buckets(lease_ttl_seconds=30)
        lease = Lease(lease_kv, "fleet-a", 30)
        clock, metrics = Clock(), Metrics(CollectorRegistry())
        act = BusActuator(["texas"], desired_kv=desired, reported_kv=reported, lease=lease, signing_key=KEY,
                          metrics=metrics, desired_ttl_seconds=300, report_interval_seconds=15,
                          leader_name="fleet-a", clock=clock)
        act.hashprice_of = lambda: 0.05

        async def current():
            return decode_desired((await desired.get("texas")).value, site="texas", public_key=PUBLIC)

        # A standby writes nothing, and with no report the site is measured off.
        measured = await act.actuate("texas", decision(1.0))
        assert (measured.level, measured.hashing, measured.modelled) == (0.0, False, False)
        assert sample(metrics, "gridminer_fleet_site_reporting", site="texas") == 0
        assert act.written == {}

        assert await lease.step()
        await act.actuate("texas", decision(1.0))
        first = await current()
        assert (first.epoch, first.seq, first.level, first.hashprice_usd_per_th_day) == (lease.epoch, 1, 1.0, 0.05)
        assert first.valid_until == T0 + timedelta(seconds=300)
        assert sample(metrics, "gridminer_fleet_desired_revision", site="texas") == first.revision
        # Unchanged: no new write, until a third of the desired TTL has passed.
        clock.now = T0 + timedelta(seconds=99)
        await act.actuate("texas", decision(1.0))
        assert (await current()).seq == 1
        clock.now = T0 + timedelta(seconds=100)
        await act.actuate("texas", decision(1.0))
        assert (await current()).seq == 2
        await act.actuate("texas", decision(0.0, "price_above_breakeven"))
        third = await current()
        assert (third.seq, third.level, third.reason) == (3, 0.0, "price_above_breakeven")

        # A fresh report is what the site does; its ack's age is exported.
        await reported.put("texas", encode_report(report(clock.now - timedelta(seconds=5), level=0.0,
                                                         ack=Ack(third.revision, "applied", "1 of 1",
                                                                 clock.now - timedelta(seconds=2)))))
        measured = await act.actuate("texas", decision(0.0, "price_above_breakeven"))
        assert (measured.level, measured.hashing, measured.power_w) == (0.0, False, 30.0)
        assert sample(metrics, "gridminer_fleet_site_reporting", site="texas") == 1
        assert sample(metrics, "gridminer_fleet_last_ack_age_seconds", site="texas") == 2.0
        await reported.put("texas", encode_report(report(clock.now, level=1.0)))
        measured = await act.measure("texas")
        assert (measured.level, measured.hashing, measured.hashrate_hs) == (1.0, True, 5e6)
        assert measured.devices[0].reading.hashrate_hs == 5e6
        assert sample(metrics, "gridminer_fleet_reported_level", site="texas") == 1.0
        # Three report intervals without a new one: not reporting, measured off.
        clock.now += timedelta(seconds=45)
        measured = await act.measure("texas")
        assert (measured.level, measured.hashing) == (0.0, False)
        assert sample(metrics, "gridminer_fleet_site_reporting", site="texas") == 0
        # A site whose clock runs an hour behind is judged by when its reports arrive.
        await reported.put("texas", encode_report(report(clock.now - timedelta(hours=1), level=1.0)))
        measured = await act.measure("texas")
        assert measured.hashing and sample(metrics, "gridminer_fleet_site_reporting", site="texas") == 1
        clock.now += timedelta(seconds=45)
        assert not (await act.measure("texas")).hashing
        # A malformed report is counted and does not replace the last good one.
        await reported.put("texas", b'{"v":1,"site":"texas"}')
        await act.measure("texas")
        assert sample(metrics, "gridminer_fleet_bus_errors_total", kind="report_malformed") == 1
        assert act.reports["texas"].level == 1.0

        # Leadership lost: no more writes.
        await lease.release()
        await act.actuate("texas", decision(1.0))
        assert (await current()).seq == 3
        await bus.close()

    asyncio.run(scenario())


def test_a_coupled_fleet_writes_the_budgeted_plan_to_each_site(nats_server):
    """The fleet power budget binds across sites: the desired states carry the coupled plan."""
    from pathlib import Path

    from miner.sched.feeds import StaticFeed
    from miner.sched.policy import make_policy
    from miner.sched.scheduler import Scheduler, StaticHashprice
    from miner.sched.sites import parse_sites

    server = nats_server()
    fleet = parse_sites({"economics": {"hashprice_usd_per_th_day": 0.05}, "fleet": {"power_budget_mw": 1.0},
                         "site": [{"name": n, "capacity_mw": 1.0, "efficiency_j_per_th": 20.0,
                                   "feed": {"kind": "static", "price": p}}
                                  for n, p in (("cheap", 10.0), ("dearer", 40.0))]}, base_dir=Path("."))

    async def scenario():
        name, password = server.fleet_user
        bus = Bus(BusConfig(url=server.url, user=name), environ={busmod.PASSWORD_ENV: password})
        await bus.connect()
        desired, reported, lease_kv = await bus.fleet_buckets(lease_ttl_seconds=30)
        lease = Lease(lease_kv, "fleet-a", 30)
        assert await lease.step()
        metrics = Metrics(CollectorRegistry())
        act = BusActuator(["cheap", "dearer"], desired_kv=desired, reported_kv=reported, lease=lease,
                          signing_key=KEY, metrics=metrics, desired_ttl_seconds=300, report_interval_seconds=15,
                          leader_name="fleet-a")
        feeds = {s.name: StaticFeed(s.feed["price"]) for s in fleet.sites}
        sched = Scheduler(fleet, make_policy(fleet, "gridminer"), feeds, actuator=act, metrics=metrics,
                          hashprice_source=StaticHashprice(0.05))
        plan = await sched.step(T0)
        states = {site: decode_desired((await desired.get(site)).value, site=site, public_key=PUBLIC)
                  for site in ("cheap", "dearer")}
        await bus.close()
        return plan, states

    plan, states = asyncio.run(scenario())
    assert {s: (d.level, d.reason) for s, d in states.items()} == \
        {s: (d.level, d.reason) for s, d in plan.decisions.items()}
    assert states["cheap"].level == 1.0 and states["dearer"].level == 0.0
    assert states["dearer"].reason == "fleet_budget"
