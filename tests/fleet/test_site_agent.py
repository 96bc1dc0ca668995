"""The site agent against a real nats-server: follow, refuse bad input, fail safe, resync."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest

from miner.devices.actuator import RetryPolicy
from miner.devices.model import DeviceReading
from miner.fleet import records
from miner.fleet.site import SiteAgent, SiteDevices
from miner.metrics import Metrics
from tests.fleet.nats_local import LocalNats, create_buckets, site_password
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


def make_agent(server: LocalNats, site: str, rigs, tmp_path, *, ttl: float = 300, fail_safe="curtail",
               metrics=None) -> SiteAgent:
    async def connect(**callbacks):
        return await nats.connect(server.url, user=site, password=site_password(site), inbox_prefix=f"_INBOX_{site}",
                                  max_reconnect_attempts=-1, reconnect_time_wait=0.2, connect_timeout=2,
                                  allow_reconnect=True, **callbacks)

    metrics = metrics or Metrics()
    devices = SiteDevices(site, rigs, metrics=metrics, retry=RetryPolicy(tries=1))
    return SiteAgent(site, connect=connect, decode=decoder(site), devices=devices,
                     fail_safe=fail_safe, desired_ttl_seconds=ttl, report_interval_seconds=0.5,
                     state_dir=tmp_path / "state", metrics=metrics)


async def last_report(kv, site):
    try:
        entry = await kv.get(site)
    except Exception:
        return None
    return json.loads(entry.value)


def test_follows_refuses_bad_input_and_reports(tmp_path):
    server = LocalNats(tmp_path, ["texas", "paris"])
    server.start()

    async def scenario():
        fleet, kv_desired, kv_reported = await create_buckets(server.url)
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

    try:
        report, metrics = asyncio.run(scenario())
    finally:
        server.stop()
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


def test_partition_fail_safe_then_resync(tmp_path):
    server = LocalNats(tmp_path, ["texas"])
    server.start()
    ttl = 2.0

    async def scenario():
        fleet, kv_desired, kv_reported = await create_buckets(server.url)
        await fleet.close()
        rigs = [Rig("s19-01")]
        agent = make_agent(server, "texas", rigs, tmp_path, ttl=ttl)
        task = asyncio.create_task(agent.run())
        try:
            await wait_until(lambda: agent.follower.resynced, 10, "the resync")
            fleet, kv_desired, kv_reported = await create_buckets(server.url)
            await kv_desired.put("texas", desired("texas", 1, 1, 0.7, ttl=ttl))
            await wait_until(lambda: rigs[0].level == 0.7, 10, "the level")
            await fleet.close()
            server.stop()
            stopped = asyncio.get_running_loop().time()
            await wait_until(lambda: not agent.connected, 10, "the disconnect")
            assert agent.mode == "following"
            await wait_until(lambda: rigs[0].level == 0.0 and agent.mode == "fail_safe", 10, "the fail-safe")
            to_fail_safe = asyncio.get_running_loop().time() - stopped
            await asyncio.to_thread(server.start)
            fleet, kv_desired, kv_reported = await create_buckets(server.url)
            await wait_until(lambda: agent.connected, 20, "the reconnect")
            report = await wait_for_report(kv_reported, lambda r: r["bus_connected"] and r["mode"] == "fail_safe")
            await kv_desired.put("texas", desired("texas", 1, 2, 1.0, ttl=ttl * 10))
            await wait_until(lambda: rigs[0].level == 1.0 and agent.mode == "following", 10, "following again")
            await fleet.close()
            # A stop while the bus is down ends at once.
            server.stop()
            await wait_until(lambda: not agent.connected, 10, "the disconnect")
            t = asyncio.get_running_loop().time()
            agent.stop()
            await asyncio.wait_for(task, 5)
            return to_fail_safe, report, asyncio.get_running_loop().time() - t
        finally:
            agent.stop()
            await asyncio.gather(task, return_exceptions=True)

    try:
        to_fail_safe, report, stop_s = asyncio.run(scenario())
    finally:
        server.stop()
    assert to_fail_safe < ttl + 5
    assert report["level"] == 0.0 and report["applied_revision"] == (1 << 32) | 1
    assert stop_s < 5
