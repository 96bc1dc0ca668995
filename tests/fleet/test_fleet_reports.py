"""The fleet reads each site's report every step: an unchanged KV entry is not decoded
again (a 50-device report costs about a millisecond, times every site, every step)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from miner.config import BusConfig
from miner.fleet.bus import PASSWORD_ENV, Bus
from miner.fleet.lease import Lease
from miner.fleet.records import DeviceReport, SiteReport, encode_report, new_signing_key
from miner.fleet.scheduler import BusActuator
from miner.metrics import Metrics


def report(level: float) -> bytes:
    devices = tuple(DeviceReport(f"rig-{i:02d}", True, level > 0, True, 1.1e14 * level, 3250.0 * level, level)
                    for i in range(50))
    return encode_report(SiteReport(site="texas", at=datetime.now(timezone.utc), bus_connected=True,
                                    mode="following", applied_revision=None, desired_level=level, level=level,
                                    hashing=level > 0, hashrate_hs=5.5e15 * level, power_w=162_500.0 * level,
                                    devices=devices))


def test_an_unchanged_report_is_not_decoded_again_and_a_new_one_is(nats_server):
    server = nats_server(sites=["texas"])
    user, password = server.fleet_user

    async def scenario():
        bus = Bus(BusConfig(url=server.url, user=user), environ={PASSWORD_ENV: password})
        await asyncio.wait_for(bus.connect(), 30)
        try:
            desired, reported, lease_kv = await bus.fleet_buckets(15.0)
            actuator = BusActuator(["texas"], desired_kv=desired, reported_kv=reported,
                                   lease=Lease(lease_kv, "bench", 15.0), signing_key=new_signing_key(),
                                   metrics=Metrics(), desired_ttl_seconds=300, report_interval_seconds=15,
                                   leader_name="bench")
            assert await actuator.read_report("texas") is None
            await reported.put("texas", report(1.0))
            first = await actuator.read_report("texas")
            again = await actuator.read_report("texas")
            measured = await actuator.measure("texas")
            assert await actuator.measure("texas") is measured    # nor turned into a measurement again
            assert measured.level == 1.0 and measured.hashing and len(measured.devices) == 50
            await reported.put("texas", report(0.0))
            newer = await actuator.read_report("texas")
            remeasured = await actuator.measure("texas")
            assert remeasured is not measured and remeasured.level == 0.0 and not remeasured.hashing
            return first, again, newer
        finally:
            await bus.close()

    first, again, newer = asyncio.run(scenario())
    assert first.level == 1.0 and len(first.devices) == 50
    assert again is first            # same entry revision: the decoded report is reused
    assert newer is not first and newer.level == 0.0 and not newer.hashing
