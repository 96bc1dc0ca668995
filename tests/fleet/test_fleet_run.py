"""`miner fleet` as an operator runs it: real processes on a real nats-server.

Two fleet schedulers share a sites file whose price comes from an HTTP API served here; a
site's view of the bus is taken with the site's own credentials (direct get of its key,
verified with the fleet's public key). The leader writes each change; kill -9 the leader
and the standby leads after the lease TTL and writes the next change under a higher
epoch; a leader frozen (SIGSTOP) past its TTL comes back deposed and writes nothing.
SIGTERM ends a fleet within 5 s, also while nats-server is down.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from miner.config import BusConfig
from miner.fleet import bus as busmod
from miner.fleet.bus import Bus, BusError
from miner.fleet.records import decode_desired, load_public_key, load_signing_key, public_key_hex
from miner.node.regtest import free_port
from tests.test_sched_run import PriceAPI, Process, scrape

LEASE_TTL = 3.0
BREAKEVEN = "102.08"   # USD/MWh at 0.05 USD/TH/day, 2 % pool fee, 20 J/TH


def write_files(tmp_path: Path, price_url: str) -> tuple[Path, Path]:
    sites = tmp_path / "sites.toml"
    sites.write_text(f"""
[economics]
hashprice_usd_per_th_day = 0.05
pool_fee = 0.02

[[site]]
name = "texas"
capacity_mw = 0.001
efficiency_j_per_th = 20.0
price_ttl_seconds = 600

[site.feed]
kind = "http_json"
url = "{price_url}"
price_path = "price"
resolution_minutes = 5

[[site]]
name = "paris"
capacity_mw = 0.001
efficiency_j_per_th = 20.0
[site.feed]
kind = "static"
price = 500.0
""")
    key = tmp_path / "fleet.key"
    done = __import__("subprocess").run([sys.executable, "-m", "miner", "fleet", "keygen", "--out", str(key)],
                                        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    return sites, key


def fleet_config(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
[sched]
interval_seconds = 0.5
[bus]
user = "fleet"
name = "{name}"
lease_ttl_seconds = {LEASE_TTL}
desired_ttl_seconds = 60
signing_key_file = "fleet.key"
[metrics]
listen = "127.0.0.1:{free_port()}"
""")
    return path


def start_fleet(server, config: Path, sites: Path) -> Process:
    env = dict(os.environ, GRIDMINER_BUS_PASSWORD=server.fleet_user[1], PYTHONUNBUFFERED="1")
    return Process([sys.executable, "-m", "miner", "fleet", "-c", str(config), "--sites", str(sites),
                    "--bus", server.url], env=env)


class SiteView:
    """What site texas sees of the bus, with its own credentials only."""

    def __init__(self, server, public_key_text: str) -> None:
        name, password = server.site_user("texas")
        self.settings = BusConfig(url=server.url, user=name)
        self.password = password
        self.public_key = load_public_key(public_key_text)

    def desired(self):
        async def read():
            bus = Bus(self.settings, site="texas", environ={busmod.PASSWORD_ENV: self.password})
            await asyncio.wait_for(bus.connect(), 10)
            bus.request_timeout = 1.0
            try:
                got = await bus.read_desired_raw("texas")
            except BusError:   # the fleet has not made the bucket yet
                return None
            finally:
                await bus.close()
            return None if got is None else decode_desired(got[1], site="texas", public_key=self.public_key)

        return asyncio.run(read())


def wait_desired(view: SiteView, predicate, timeout: float, what: str, *procs: Process):
    deadline = time.monotonic() + timeout
    while True:
        state = view.desired()
        if state is not None and predicate(state):
            return state
        tails = "\n---\n".join(p.tail() for p in procs)
        assert time.monotonic() < deadline, f"timed out waiting for {what}; last {state}:\n{tails}"
        time.sleep(0.1)


def metric_url(config: Path) -> str:
    listen = [line.split('"')[1] for line in config.read_text().splitlines() if line.startswith("listen")][0]
    return f"http://{listen}/metrics"


def test_two_fleets_one_leads_kill_9_hands_over_and_a_frozen_leader_comes_back_deposed(nats_server, tmp_path):
    server = nats_server(sites=["texas", "paris"])
    with PriceAPI(20.0) as prices:
        sites, key_path = write_files(tmp_path, prices.url)
        public = public_key_hex(load_signing_key(key_path.read_bytes()))
        view = SiteView(server, public)
        config_a, config_b, config_c = (fleet_config(tmp_path, n) for n in ("fleet-a", "fleet-b", "fleet-c"))
        a = start_fleet(server, config_a, sites)
        b = c = None
        try:
            first = wait_desired(view, lambda s: s.leader == "fleet-a" and s.level == 1.0, 120,
                                 "fleet-a writing texas at full power", a)
            assert first.reason == "price_below_breakeven" and first.hashprice_usd_per_th_day == 0.05
            b = start_fleet(server, config_b, sites)
            b.wait_for_line(r"standby; fleet-a leads", 60)
            metrics_a = scrape(metric_url(config_a))
            assert metrics_a["gridminer_fleet_leader"] == 1
            assert metrics_a['gridminer_fleet_desired_level{site="texas"}'] == 1.0
            assert metrics_a['gridminer_fleet_site_reporting{site="texas"}'] == 0   # no site agent yet
            assert scrape(metric_url(config_b))["gridminer_fleet_leader"] == 0

            # kill -9 the leader; the price crosses breakeven meanwhile.
            a.proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            prices.price = 300.0
            b.wait_for_line(r"fleet-b: leader \(lease epoch", LEASE_TTL * 10)
            led = time.monotonic()
            second = wait_desired(view, lambda s: s.leader == "fleet-b", 30, "fleet-b writing texas", b)
            written = time.monotonic()
            assert second.level == 0.0 and second.reason == "price_above_breakeven"
            assert second.epoch > first.epoch and second.revision > first.revision
            print(f"\nkill -9 -> standby leads in {led - killed:.2f} s, writes the next change in "
                  f"{written - killed:.2f} s (lease ttl {LEASE_TTL:g} s, retry every {LEASE_TTL / 3:g} s)")

            # Freeze the new leader past its TTL: fleet-c takes over; fleet-b, thawed, is deposed.
            c = start_fleet(server, config_c, sites)
            c.wait_for_line(r"standby; fleet-b leads", 60)
            b.proc.send_signal(signal.SIGSTOP)
            try:
                c.wait_for_line(r"fleet-c: leader \(lease epoch", LEASE_TTL * 10)
                prices.price = 20.0
                third = wait_desired(view, lambda s: s.leader == "fleet-c" and s.level == 1.0, 30,
                                     "fleet-c writing the next change", c)
            finally:
                b.proc.send_signal(signal.SIGCONT)
            b.wait_for_line(r"fleet-b: leadership lost", 30)
            assert third.epoch > second.epoch
            # Whatever fleet-b had in flight: nothing of its epoch came after fleet-c's first write.
            history = desired_history(server, "texas")
            epochs = [json.loads(v)["epoch"] for v in history]
            first_c = epochs.index(third.epoch)
            assert all(e == third.epoch for e in epochs[first_c:]), epochs
            assert scrape(metric_url(config_b))["gridminer_fleet_leader"] == 0
            assert scrape(metric_url(config_c))["gridminer_fleet_leader"] == 1

            # SIGTERM stops a fleet within 5 s, with the bus up, and with the bus down.
            started = time.monotonic()
            assert c.stop(timeout=5) == 0, c.tail()
            assert time.monotonic() - started < 5
            server.stop()
            time.sleep(0.5)
            started = time.monotonic()
            assert b.stop(timeout=5) == 0, b.tail()
            assert time.monotonic() - started < 5
            assert "fleet-b: stopped" in b.log()
        finally:
            for p in (a, b, c):
                if p is not None:
                    p.stop(timeout=10)
    for p in (a, b, c):
        assert server.fleet_user[1] not in p.log(), "the bus password showed in a log"


def desired_history(server, site: str) -> list[bytes]:
    async def read():
        name, password = server.fleet_user
        bus = Bus(BusConfig(url=server.url, user=name), environ={busmod.PASSWORD_ENV: password})
        await bus.connect()
        try:
            desired, _, _ = await bus.fleet_buckets(LEASE_TTL)
            return [e.value for e in await desired.history(site)]
        finally:
            await bus.close()

    return asyncio.run(read())


def test_a_site_name_that_cannot_be_a_key_is_refused(tmp_path):
    import subprocess

    (tmp_path / "sites.toml").write_text('[economics]\nhashprice_usd_per_th_day = 0.05\n[[site]]\n'
                                         'name = "new york"\ncapacity_mw = 1\nefficiency_j_per_th = 20\n'
                                         '[site.feed]\nkind = "static"\nprice = 10\n')
    key = tmp_path / "k"
    subprocess.run([sys.executable, "-m", "miner", "fleet", "keygen", "--out", str(key)], check=True,
                   capture_output=True, timeout=120)
    (tmp_path / "f.toml").write_text('[bus]\nsigning_key_file = "k"\n[metrics]\nlisten = "off"\n')
    done = subprocess.run([sys.executable, "-m", "miner", "fleet", "-c", str(tmp_path / "f.toml"), "--sites",
                           str(tmp_path / "sites.toml")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "'new york'" in done.stderr and "cannot be used on the bus" in done.stderr


def test_without_a_signing_key_the_fleet_refuses_to_start(tmp_path):
    import subprocess

    (tmp_path / "sites.toml").write_text('[economics]\nhashprice_usd_per_th_day = 0.05\n[[site]]\n'
                                         'name = "texas"\ncapacity_mw = 1\nefficiency_j_per_th = 20\n'
                                         '[site.feed]\nkind = "static"\nprice = 10\n')
    done = subprocess.run([sys.executable, "-m", "miner", "fleet", "--sites", str(tmp_path / "sites.toml"),
                           "--metrics", "off"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "miner fleet keygen" in done.stderr


def test_sigterm_stops_a_fleet_that_never_reached_its_bus_within_5_s(tmp_path):
    sites, _ = write_files(tmp_path, "http://127.0.0.1:9/price")
    config = fleet_config(tmp_path, "fleet-a")
    port = free_port()   # nothing listens there
    env = dict(os.environ, GRIDMINER_BUS_PASSWORD="never-shown-4711", PYTHONUNBUFFERED="1")
    fleet = Process([sys.executable, "-m", "miner", "fleet", "-c", str(config), "--sites", str(sites),
                     "--bus", f"nats://127.0.0.1:{port}"], env=env)
    try:
        fleet.wait_for_line(rf"(?i)bus nats://127\.0\.0\.1:{port}: .*(refused|connect)", 120)
        started = time.monotonic()
        assert fleet.stop(timeout=5) == 0, fleet.tail()
        assert time.monotonic() - started < 5
    finally:
        fleet.stop(timeout=10)
    assert "never-shown-4711" not in fleet.log()


def test_a_fleet_survives_a_bus_outage_longer_than_its_lease_and_leads_again(nats_server, tmp_path):
    server = nats_server(sites=["texas", "paris"])
    with PriceAPI(20.0) as prices:
        sites, key_path = write_files(tmp_path, prices.url)
        view = SiteView(server, public_key_hex(load_signing_key(key_path.read_bytes())))
        config = fleet_config(tmp_path, "fleet-a")
        a = start_fleet(server, config, sites)
        try:
            first = wait_desired(view, lambda s: s.level == 1.0, 120, "the first write", a)
            server.stop()
            a.wait_for_line(r"fleet-a: leadership lost", LEASE_TTL * 10)
            assert scrape(metric_url(config))["gridminer_fleet_leader"] == 0
            prices.price = 300.0
            # The fleet decides while the bus is away; nothing can be written until it is back.
            a.wait_for_line(r"site texas: curtail \(price_above_breakeven", 30)
            server.start()
            second = wait_desired(view, lambda s: s.level == 0.0, 60, "the change written after the outage", a)
            assert second.epoch > first.epoch
            assert scrape(metric_url(config))["gridminer_fleet_leader"] == 1
        finally:
            a.stop(timeout=10)
    assert a.proc.returncode == 0, a.tail()
