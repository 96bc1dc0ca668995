"""deploy/nats/nats-server.conf: one user per site of the multi-site example, each with
exactly the fleet bus's site permissions, run by a real nats-server."""

from __future__ import annotations

import asyncio
import os
import re

import pytest

from miner.fleet import bus as busmod
from miner.config import BusConfig
from miner.fleet.bus import FLEET_PERMISSIONS, Bus, BusError, site_permissions
from miner.node.regtest import free_port
from miner.sched.sites import load_sites
from tests.deploy.deployfiles import DEPLOY
from tests.waiting import wait_until

CONF = DEPLOY / "nats" / "nats-server.conf"
SITES = load_sites(DEPLOY / "examples" / "multisite-sites.toml")
USER = re.compile(r'user: "([^"]+)"\s+password: \$([A-Z_]+)\s+permissions: \{\s+publish: \{allow: \[([^\]]*)\]\}'
                  r'\s+subscribe: \{allow: \[([^\]]*)\]\}', re.S)


def users() -> dict[str, tuple[str, dict[str, list[str]]]]:
    found = {}
    for name, variable, publish, subscribe in USER.findall(CONF.read_text()):
        found[name] = (variable, {"publish": re.findall(r'"([^"]+)"', publish),
                                  "subscribe": re.findall(r'"([^"]+)"', subscribe)})
    return found


def test_every_example_site_has_a_user_with_exactly_its_permissions():
    shipped = users()
    assert set(shipped) == {"fleet"} | {s.name for s in SITES.sites}
    assert shipped["fleet"][1] == FLEET_PERMISSIONS
    for site in SITES.sites:
        assert shipped[site.name][1] == site_permissions(site.name), site.name
    # No password in the file: each comes from the server's environment.
    assert "password:" not in re.sub(r"password: \$[A-Z_]+", "", CONF.read_text())


def test_the_shipped_config_runs_and_keeps_sites_apart(nats_server):
    nats_server()   # skips, with the reason, when nats-server is missing
    from miner.testing.nats import NatsServer

    port = free_port()
    text = CONF.read_text().replace('"0.0.0.0:4222"', f'"127.0.0.1:{port}"') \
        .replace('"/var/lib/nats/jetstream"', '"{store_dir}"')
    passwords = {variable: os.urandom(8).hex() for variable, _ in users().values()}
    password_of = {name: passwords[variable] for name, (variable, _) in users().items()}
    # nats-server parses a variable's value as a config value ("5e12..." would be a
    # number): the operator quotes it, as the config's comment says.
    quoted = {variable: f'"{password}"' for variable, password in passwords.items()}
    server = NatsServer(port=port, config_text=text, environ=dict(os.environ, **quoted))

    def bus(user, site=None):
        b = Bus(BusConfig(url=server.url, user=user), site=site, environ={busmod.PASSWORD_ENV: password_of[user]})
        b.request_timeout = 2.0
        return b

    async def scenario():
        fleet, texas = bus("fleet"), bus("texas", site="texas")
        await fleet.connect()
        desired, reported, _ = await fleet.fleet_buckets(lease_ttl_seconds=15)
        revision = await desired.put("texas", b"{}")
        await texas.connect()
        try:
            assert await texas.read_desired_raw("texas") == (revision, b"{}")
            await texas.publish_report("texas", b"{}")
            with pytest.raises(BusError):
                await texas.publish_report("paris", b"{}")
            await wait_until(lambda: any("permissions violation" in e.lower() for e in texas.errors), timeout=10,
                             what="the server refusing texas a write to paris's report")
            with pytest.raises(Exception):
                await reported.get("paris")
        finally:
            await texas.close()
            await fleet.close()

    with server:
        asyncio.run(scenario())
