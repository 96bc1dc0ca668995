"""The leader lease on a real nats-server: one leader at a time, a standby takes over
after the TTL when the leader stops renewing, a deposed leader knows it at once."""

from __future__ import annotations

import asyncio
import time

from miner.config import BusConfig
from miner.fleet import bus as busmod
from miner.fleet.bus import Bus
from miner.fleet.lease import Lease

TTL = 1.5


async def fleet_bus(server):
    name, password = server.fleet_user
    bus = Bus(BusConfig(url=server.url, user=name), environ={busmod.PASSWORD_ENV: password})
    await bus.connect()
    _, _, lease_kv = await bus.fleet_buckets(lease_ttl_seconds=TTL)
    return bus, lease_kv


def test_one_leader_a_standby_takes_over_after_the_ttl_and_the_old_one_is_deposed(nats_server):
    server = nats_server()

    async def scenario():
        bus_a, kv_a = await fleet_bus(server)
        bus_b, kv_b = await fleet_bus(server)
        changes: list[bool] = []
        a = Lease(kv_a, "fleet-a", TTL, on_change=changes.append)
        b = Lease(kv_b, "fleet-b", TTL)
        assert await a.step() and a.epoch is not None
        assert not await b.step(), "the key exists: the standby does not lead"
        assert b.other_holder == "fleet-a"
        for _ in range(4):   # renewals keep it past the ttl
            await asyncio.sleep(a.interval)
            assert await a.step()
            assert not await b.step()
        epoch_a = a.epoch
        # a stops renewing (as if it died): b retries every ttl/3 until the entry expires.
        stopped = time.monotonic()
        while not await b.step():
            assert time.monotonic() - stopped < TTL * 10, "the standby never took over"
            await asyncio.sleep(b.interval)
        took = time.monotonic() - stopped
        assert not a.leading, "a's own clock ended its lease no later than b won"
        assert b.epoch > epoch_a
        # a comes back: its compare-and-set fails, it stays deposed.
        assert not await a.step()
        assert a.epoch is None and changes == [True, False]
        await bus_a.close()
        await bus_b.close()
        return took

    took = asyncio.run(scenario())
    print(f"standby took over {took:.2f} s after the leader's last renewal (ttl {TTL} s)")


def test_a_released_lease_goes_to_the_standby_at_its_next_try(nats_server):
    server = nats_server()

    async def scenario():
        bus_a, kv_a = await fleet_bus(server)
        bus_b, kv_b = await fleet_bus(server)
        a, b = Lease(kv_a, "fleet-a", 30.0), Lease(kv_b, "fleet-b", 30.0)
        assert await a.step()
        assert not await b.step()
        await a.release()
        assert not a.leading
        assert await b.step(), "released: the standby wins at once, not 30 s later"
        assert b.epoch > 0
        await bus_a.close()
        await bus_b.close()

    asyncio.run(scenario())


def test_a_fleet_with_another_lease_ttl_sets_the_buckets_max_age_to_its_own(nats_server):
    server = nats_server()

    async def scenario():
        bus, _ = await fleet_bus(server)          # made with TTL
        await bus.fleet_buckets(lease_ttl_seconds=7.0)
        info = await bus.js.stream_info("KV_gridminer_lease")
        await bus.close()
        return info.config.max_age

    assert asyncio.run(scenario()) == 7.0
