"""The site agent against a real nats-server: follow, refuse bad input, fail safe, resync."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miner.devices.actuator import RetryPolicy
from miner.devices.model import DeviceReading
from miner.fleet import records
from miner.fleet.site import SiteAgent, SiteDevices
from miner.metrics import Metrics
from tests.fleet.site_helpers import fleet_buckets, site_bus
from tests.waiting import wait_until

nats = pytest.importorskip("nats")

KEY = records.new_signing_key()
OTHER_KEY = records.new_signing_key()


def desired(site: str, epoch: int, seq: int, level: float, *, ttl: float = 300, key=KEY,
            issued: datetime | None = None) -> bytes:
    state = records.make_desired(site, epoch=epoch, seq=seq, level=level,
                                 reason="price_below_breakeven" if level > 0 else "price_above_breakeven",
                                 issued_at=issued or datetime.now(timezone.utc), ttl_seconds=ttl,
                                 hashprice=0.05, leader="test")
    return records.encode_desired(state, key)


def decoder(site: str):
    public = KEY.public_key()
    return lambda data, now: records.decode_desired(data, site=site, public_key=public, now=now)


class Rig:
    """A device in this process that obeys, or not (firmware that ignores a curtail)."""

    def __init__(self, name: str, obeys: bool = True) -> None:
        self.name, self.obeys, self.level, self.applied = name, obeys, 1.0, []

    async def apply(self, level: float) -> None:
        self.applied.append(level)
        if self.obeys:
            self.level = level

    async def read(self) -> DeviceReading:
        return DeviceReading(self.level > 0, 1e6 * self.level, 100.0 * self.level, self.level)


def make_agent(server, site: str, rigs, tmp_path, *, ttl: float = 300, fail_safe="curtail",
               metrics=None) -> SiteAgent:
    metrics = metrics or Metrics()
    devices = SiteDevices(site, rigs, metrics=metrics, retry=RetryPolicy(tries=1))
    return SiteAgent(site, bus=site_bus(server, site), decode=decoder(site), devices=devices,
                     fail_safe=fail_safe, desired_ttl_seconds=ttl, report_interval_seconds=0.5,
                     state_dir=tmp_path / "state", metrics=metrics)


async def last_report(kv, site):
    try:
        entry = await kv.get(site)
    except Exception:
        return None
    return json.loads(entry.value)


def test_follows_refuses_bad_input_and_reports(tmp_path, nats_server):
    server = nats_server(["texas", "paris"])

    async def scenario():
        fleet, kv_desired, kv_reported = await fleet_buckets(server)
        rigs = [Rig("s19-01"), Rig("stubborn", obeys=False)]
        metrics = Metrics()
        agent = make_agent(server, "texas", rigs, tmp_path, metrics=metrics)
        task = asyncio.create_task(agent.run())
        try:
            await wait_until(lambda: agent.connected and agent.follower.resynced, 10, "the resync")
            await kv_desired.put("texas", desired("texas", 2, 1, 0.0))
            rev = (2 << 32) | 1
            await wait_until(lambda: agent.follower.highest_applied == rev, 10, "the curtail")
            report = await wait_for_report(kv_reported, lambda r: r["ack"] and r["ack"]["revision"] == rev)
            # Bad input: none of it applied.
            for bad in (b"{not json", desired("paris", 1, 2, 1.0), desired("texas", 2, 3, 1.0, key=OTHER_KEY),
                        desired("texas", 1, 9, 1.0)):
                await kv_desired.put("texas", bad)
            await wait_until(lambda: sum(metrics.registry.get_sample_value(
                "gridminer_bus_rejected_total", {"site": "texas", "reason": r}) for r in
                ("malformed", "wrong_site", "bad_signature", "stale_revision")) == 4, 10, "four refusals")
            assert rigs[0].level == 0.0
            await kv_desired.put("texas", desired("texas", 3, 1, 1.0))
            await wait_until(lambda: rigs[0].level == 1.0, 10, "the resume")
            return report, metrics
        finally:
            agent.stop()
            await asyncio.wait_for(task, 5)
            await fleet.close()

    report, metrics = asyncio.run(scenario())
    assert report["mode"] == "following" and report["desired_level"] == 0.0
    assert report["ack"]["outcome"] == "partial", "the stubborn rig did not curtail"
    stubborn = [d for d in report["devices"] if d["name"] == "stubborn"][0]
    assert stubborn["hashing"] is True and stubborn["applied"] is False
    assert [d["applied"] for d in report["devices"] if d["name"] == "s19-01"] == [True]
    assert report["level"] == 1.0 and report["hashing"] is True, "the site reports what really hashes"
    assert metrics.registry.get_sample_value("gridminer_bus_applied_revision", {"site": "texas"}) == (3 << 32) | 1


async def wait_for_report(kv, predicate, timeout=10.0):
    found = []

    async def check():
        r = await last_report(kv, "texas")
        if r is not None and predicate(r):
            found.append(r)
    deadline = asyncio.get_running_loop().time() + timeout
    while not found:
        await check()
        assert asyncio.get_running_loop().time() < deadline, "no such report"
        await asyncio.sleep(0.05)
    return found[0]


def test_a_put_the_subscription_missed_is_applied_within_a_report_interval(tmp_path, nats_server):
    # nats-server 2.9 sometimes routes a publish made just after a subscription is confirmed
    # without it (seen in CI). Simulated here by dropping the live subscription: the agent's
    # periodic direct get must still pick the new revision up (before: never, until expiry).
    server = nats_server(["texas"])

    async def scenario():
        fleet, kv_desired, kv_reported = await fleet_buckets(server)
        rigs = [Rig("s19-01")]
        agent = make_agent(server, "texas", rigs, tmp_path)
        task = asyncio.create_task(agent.run())
        try:
            await wait_until(lambda: agent.connected and agent.follower.resynced and agent.subscription, 10,
                             "the resync")
            await agent.subscription.unsubscribe()
            await kv_desired.put("texas", desired("texas", 2, 1, 0.0))
            await wait_until(lambda: agent.follower.highest_applied == (2 << 32) | 1, 10,
                             "the curtail, read by the agent's periodic direct get")
            return rigs[0].level
        finally:
            agent.stop()
            await asyncio.wait_for(task, 5)
            await fleet.close()

    assert asyncio.run(scenario()) == 0.0


def test_partition_fail_safe_then_resync(tmp_path, nats_server):
    server = nats_server(["texas"])
    ttl = 2.0

    async def scenario():
        fleet, kv_desired, kv_reported = await fleet_buckets(server)
        await fleet.close()
        rigs = [Rig("s19-01")]
        agent = make_agent(server, "texas", rigs, tmp_path, ttl=ttl)
        task = asyncio.create_task(agent.run())
        try:
            await wait_until(lambda: agent.follower.resynced, 10, "the resync")
            fleet, kv_desired, kv_reported = await fleet_buckets(server)
            await kv_desired.put("texas", desired("texas", 1, 1, 0.7, ttl=ttl))
            await wait_until(lambda: rigs[0].level == 0.7, 10, "the level")
            await fleet.close()
            await asyncio.to_thread(server.stop)
            stopped = asyncio.get_running_loop().time()
            await wait_until(lambda: not agent.connected, 10, "the disconnect")
            assert agent.mode == "following"
            await wait_until(lambda: rigs[0].level == 0.0 and agent.mode == "fail_safe", 10, "the fail-safe")
            to_fail_safe = asyncio.get_running_loop().time() - stopped
            await asyncio.to_thread(server.start)
            fleet, kv_desired, kv_reported = await fleet_buckets(server)
            await wait_until(lambda: agent.connected, 20, "the reconnect")
            report = await wait_for_report(kv_reported, lambda r: r["bus_connected"] and r["mode"] == "fail_safe")
            await kv_desired.put("texas", desired("texas", 1, 2, 1.0, ttl=ttl * 10))
            await wait_until(lambda: rigs[0].level == 1.0 and agent.mode == "following", 10, "following again")
            await fleet.close()
            # A stop while the bus is down ends at once.
            await asyncio.to_thread(server.stop)
            await wait_until(lambda: not agent.connected, 10, "the disconnect")
            t = asyncio.get_running_loop().time()
            agent.stop()
            await asyncio.wait_for(task, 5)
            return to_fail_safe, report, asyncio.get_running_loop().time() - t
        finally:
            agent.stop()
            await asyncio.gather(task, return_exceptions=True)

    to_fail_safe, report, stop_s = asyncio.run(scenario())
    assert to_fail_safe < ttl + 5
    assert report["level"] == 0.0 and report["applied_revision"] == (1 << 32) | 1
    assert stop_s < 5


def sites_doc(fail_safe: str, price: float | None) -> dict:
    site = {"name": "texas", "capacity_mw": 0.001, "efficiency_j_per_th": 20.0, "fail_safe": fail_safe,
            "device": []}
    if price is None:
        site["prices"] = "unused.csv"
    else:
        site["feed"] = {"kind": "static", "price": price}
    return {"economics": {"hashprice_usd_per_th_day": 0.05, "pool_fee": 0.02}, "site": [site]}


@pytest.mark.parametrize("price, fail_safe, level", [(20.0, "curtail", 1.0), (300.0, "hold", 0.0), (None, "curtail", 0.0)])
def test_without_the_bus_a_site_with_its_own_feed_runs_its_own_threshold(tmp_path, price, fail_safe, level):
    """The bus is unreachable from the start: after desired_ttl the site's fail-safe rules,
    with its own [site.feed] price against breakeven (102.08 USD/MWh) when it has one."""
    from miner.fleet.site import OwnThreshold, has_own_feed
    from miner.sched.feeds import feed_for_site
    from miner.sched.sites import parse_sites

    fleet = parse_sites(sites_doc(fail_safe, price), base_dir=tmp_path)
    site = fleet.site("texas")
    assert has_own_feed(fleet, site) is (price is not None)
    rigs = [Rig("s19-01")]
    rigs[0].level = 0.5

    from miner.config import BusConfig
    from miner.fleet.bus import Bus
    from miner.node.regtest import free_port

    unreachable = Bus(BusConfig(url=f"nats://127.0.0.1:{free_port()}", user="texas"), site="texas",
                      environ={"GRIDMINER_BUS_PASSWORD": "x"})

    async def scenario():
        metrics = Metrics()
        own = OwnThreshold(fleet, site, feed_for_site(site, tmp_path), lambda: None) if has_own_feed(fleet, site) \
            else None
        agent = SiteAgent("texas", bus=unreachable, decode=decoder("texas"),
                          devices=SiteDevices("texas", rigs, metrics=metrics), fail_safe=site.fail_safe,
                          desired_ttl_seconds=1.0, report_interval_seconds=0.2, state_dir=tmp_path, metrics=metrics,
                          own_price=own, own_price_interval=0.1)
        task = asyncio.create_task(agent.run())
        try:
            assert rigs[0].applied == []
            await wait_until(lambda: agent.mode == "fail_safe", 10, "the fail-safe")
            await wait_until(lambda: rigs[0].applied, 5, "an apply")
            return agent.mode, rigs[0].level
        finally:
            t = asyncio.get_running_loop().time()
            agent.stop()
            await asyncio.wait_for(task, 5)
            assert asyncio.get_running_loop().time() - t < 1, "a stop while the bus is unreachable is prompt"

    assert asyncio.run(scenario()) == ("fail_safe", level)


def test_a_restarted_agent_never_applies_an_older_revision(tmp_path, nats_server):
    server = nats_server(["texas"])

    async def scenario():
        fleet, kv_desired, _ = await fleet_buckets(server)
        rigs = [Rig("s19-01")]
        metrics = Metrics()
        agent = make_agent(server, "texas", rigs, tmp_path, metrics=metrics)
        task = asyncio.create_task(agent.run())
        await kv_desired.put("texas", desired("texas", 5, 2, 0.4))
        await wait_until(lambda: rigs[0].level == 0.4, 10, "the level")
        agent.stop()
        await asyncio.wait_for(task, 5)
        # Restarted: the newest record in the bucket is from a deposed leader.
        await kv_desired.put("texas", desired("texas", 4, 7, 1.0))
        again = make_agent(server, "texas", rigs, tmp_path, metrics=metrics)
        task = asyncio.create_task(again.run())
        try:
            await wait_until(lambda: metrics.registry.get_sample_value(
                "gridminer_bus_rejected_total", {"site": "texas", "reason": "stale_revision"}) == 1, 10, "the refusal")
            # It follows the persisted record (still valid) meanwhile, never the older one.
            assert again.mode == "following" and again.follower.desired.revision == (5 << 32) | 2
            assert rigs[0].level == 0.4 and 1.0 not in rigs[0].applied
        finally:
            again.stop()
            await asyncio.wait_for(task, 5)
            await fleet.close()

    asyncio.run(scenario())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode)
       | st.fixed_dictionaries({"highest_applied_revision": st.one_of(st.integers(), st.text(), st.none(),
                                                                      st.booleans()),
                                "record": st.one_of(st.text(), st.none(), st.integers())}).map(
           lambda d: json.dumps(d).encode()))
def test_a_damaged_state_file_never_stops_a_start(content):
    """Whatever a crash or a disk left in the state file, load() answers (revision, record)
    with a real int or nothing, never an exception."""
    import tempfile

    from miner.fleet.site import StateFile

    with tempfile.TemporaryDirectory() as d:
        state = StateFile(Path(d), "texas")
        state.path.write_bytes(content)
        revision, record = state.load()
        assert revision is None or (isinstance(revision, int) and not isinstance(revision, bool))
        assert record is None or isinstance(record, bytes)
        state.save(12884901889, b'{"x":1}')
        assert state.load() == (12884901889, b'{"x":1}')


def test_a_device_reporting_nonsense_figures_still_gets_a_valid_report():
    """Firmware that says infinite H/s, -5 W and level 7: the report carries 0 H/s, no watts
    and no level for it, and still encodes (the fleet reads it)."""
    from miner.devices.actuator import DeviceOutcome, site_measurement
    from miner.fleet.site import applied_of, rate_of

    reading = DeviceReading(True, float("inf"), -5.0, 7.0)
    m = site_measurement(1.0, 0.0, [DeviceOutcome("odd", True, reading, True)])
    applied = applied_of(1.0, m)
    [device] = applied.devices
    assert (device.hashrate_hs, device.power_w, device.level, device.applied) == (0.0, None, None, True)
    assert rate_of(m.hashrate_hs) == 0.0 and rate_of(float("nan")) == 0.0 and rate_of(2.5) == 2.5
    report = records.SiteReport("texas", datetime.now(timezone.utc), True, "following", 1 << 32 | 1, 1.0,
                                m.level, m.hashing, rate_of(m.hashrate_hs), None, applied.devices)
    assert records.decode_report(records.encode_report(report)).devices == applied.devices
