"""What the site-agent tests share: a fleet-side client of the test's nats-server (the
buckets as `miner fleet` makes them), and a site's Bus."""

from __future__ import annotations

from miner.config import BusConfig
from miner.fleet import bus as busmod
from miner.fleet.bus import Bus


def bus_as(server, user: tuple[str, str], *, site: str | None = None) -> Bus:
    name, password = user
    return Bus(BusConfig(url=server.url, user=name, name=f"test-{name}"), site=site,
               environ={busmod.PASSWORD_ENV: password})


def site_bus(server, site: str) -> Bus:
    return bus_as(server, server.site_user(site), site=site)


async def fleet_buckets(server):
    """(fleet bus, desired kv, reported kv), the buckets created as the fleet creates them."""
    fleet = bus_as(server, server.fleet_user)
    await fleet.connect()
    desired, reported, _ = await fleet.fleet_buckets(lease_ttl_seconds=15.0)
    return fleet, desired, reported
