"""The site agent against a real nats-server: follow, refuse bad input, fail safe, resync."""

from __future__ import annotations

import asyncio
import base64
import json
import math
from datetime import datetime, timedelta, timezone

import pytest

from miner.fleet.site import Applied, RecordRejected, SiteAgent
from miner.metrics import Metrics
from tests.fleet.nats_local import LocalNats, create_buckets, site_password
from tests.waiting import wait_until

nats = pytest.importorskip("nats")
ed = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ed25519")

KEY = ed.Ed25519PrivateKey.generate()
OTHER_KEY = ed.Ed25519PrivateKey.generate()


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def desired(site: str, epoch: int, seq: int, level: float, *, ttl: float = 300, key=KEY,
            issued: datetime | None = None) -> bytes:
    issued = issued or datetime.now(timezone.utc)
    fields = {"v": 1, "site": site, "revision": (epoch << 32) | seq, "epoch": epoch, "seq": seq,
              "level": level, "reason": "price_below_breakeven" if level > 0 else "price_above_breakeven",
              "issued_at": issued.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
              "valid_until": (issued + timedelta(seconds=ttl)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
              "hashprice_usd_per_th_day": 0.05, "leader": "test"}
    return canonical({**fields, "sig": base64.b64encode(key.sign(canonical(fields))).decode()})


class Rec:
    def __init__(self, doc):
        self.__dict__.update(doc)
        self.issued_at = datetime.fromisoformat(doc["issued_at"].replace("Z", "+00:00"))
        self.valid_until = datetime.fromisoformat(doc["valid_until"].replace("Z", "+00:00"))


def decoder(site: str):
    public = KEY.public_key()

    def decode(data: bytes):
        try:
            doc = json.loads(data)
            assert isinstance(doc, dict) and doc.get("v") == 1
            sig = base64.b64decode(doc.pop("sig"))
        except Exception as e:
            raise RecordRejected("malformed", str(e)) from None
        try:
            public.verify(sig, canonical(doc))
        except Exception:
            raise RecordRejected("bad_signature", "signature") from None
        if doc["site"] != site:
            raise RecordRejected("wrong_site", doc["site"])
        return Rec(doc)
    return decode


class Rig:
    def __init__(self, name: str, obeys: bool = True) -> None:
        self.name, self.obeys, self.level, self.applied = name, obeys, 1.0, []


def device_io(rigs):
    async def apply(level: float) -> Applied:
        for r in rigs:
            r.applied.append(level)
            if r.obeys:
                r.level = level
        return await read(level)

    async def read(asked: float | None = None) -> Applied:
        devices = tuple({"name": r.name, "up": True, "hashing": r.level > 0, "applied": asked is None or r.level == asked,
                         "hashrate_hs": 1e6 * r.level, "power_w": 100.0 * r.level, "level": r.level} for r in rigs)
        ok = sum(d["applied"] for d in devices)
        outcome = "applied" if ok == len(devices) else "partial" if ok else "failed"
        hashing = any(d["hashing"] for d in devices)
        return Applied(outcome, max(r.level for r in rigs), hashing, sum(d["hashrate_hs"] for d in devices),
                       sum(d["power_w"] for d in devices), devices)
    return apply, read


def make_agent(server: LocalNats, site: str, rigs, tmp_path, *, ttl: float = 300, fail_safe="curtail",
               metrics=None) -> SiteAgent:
    apply, read = device_io(rigs)

    async def connect(**callbacks):
        return await nats.connect(server.url, user=site, password=site_password(site), inbox_prefix=f"_INBOX_{site}",
                                  max_reconnect_attempts=-1, reconnect_time_wait=0.2, connect_timeout=2,
                                  allow_reconnect=True, **callbacks)

    return SiteAgent(site, connect=connect, decode=decoder(site), apply=apply, read=lambda: read(None),
                     fail_safe=fail_safe, desired_ttl_seconds=ttl, report_interval_seconds=0.5,
                     state_dir=tmp_path / "state", metrics=metrics or Metrics())


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
            await kv_desired.put("texas", desired("texas", 1, 1, 0.0))
            await wait_until(lambda: rigs[0].level == 0.0, 10, "the curtail")
            rev = (1 << 32) | 1
            report = await wait_for_report(kv_reported, lambda r: r["ack"] and r["ack"]["revision"] == rev)
            # Bad input: none of it applied.
            for bad in (b"{not json", desired("paris", 1, 2, 1.0), desired("texas", 1, 3, 1.0, key=OTHER_KEY),
                        desired("texas", 0, 9, 1.0)):
                await kv_desired.put("texas", bad)
            await wait_until(lambda: sum(metrics.registry.get_sample_value(
                "gridminer_bus_rejected_total", {"site": "texas", "reason": r}) for r in
                ("malformed", "wrong_site", "bad_signature", "stale_revision")) == 4, 10, "four refusals")
            await kv_desired.put("texas", desired("texas", 2, 1, 1.0))
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
    assert stubborn["hashing"] is True and report["level"] == 1.0 and report["hashing"] is True
    assert metrics.registry.get_sample_value("gridminer_bus_applied_revision", {"site": "texas"}) == (2 << 32) | 1


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
