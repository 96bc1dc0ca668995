"""Site agents end to end: real processes, a real nats-server, real rigs.

    regtest node ◄── miner run (solo, our stratum server, no CPU threads)
                         ▲ stratum
      rig1, rig3 (texas), rig2 (paris): miner run --mode agent, each with a cgminer API
                         ▲ cgminer API (pause/resume with the token)
      miner run --mode site --site texas / --site paris  ◄── nats-server (JetStream) ◄── the leader

The leader here is a fleet-credentialed client of this test that signs desired states
as `miner fleet` does (records.encode_desired). rig3's entry in the sites file carries a
wrong token: it never obeys, and its site must say so.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from miner.fleet import records
from miner.node.regtest import free_port
from tests.fleet.site_helpers import fleet_buckets
from tests.miner_run import node_credentials
from tests.test_sched_run import Process, agent_devs, scrape

nats = pytest.importorskip("nats")

TOKEN = "rig-token-for-tests"
TTL = 6.0        # desired_ttl_seconds of the sites (the partition part waits this long)


def write_sites(tmp: Path, apis: dict[str, int]) -> Path:
    sites = tmp / "sites.toml"
    sites.write_text(f"""
[economics]
hashprice_usd_per_th_day = 0.05
pool_fee = 0.02

[[site]]
name = "texas"
capacity_mw = 0.001
efficiency_j_per_th = 20.0
prices = "unused.csv"
fail_safe = "curtail"

[[site.device]]
kind = "agent"
name = "rig1"
host = "127.0.0.1"
port = {apis['rig1']}
token_env = "RIG_TOKEN"

[[site.device]]
kind = "agent"
name = "rig3"
host = "127.0.0.1"
port = {apis['rig3']}
token_env = "WRONG_TOKEN"

[[site]]
name = "paris"
capacity_mw = 0.001
efficiency_j_per_th = 20.0
prices = "unused.csv"
fail_safe = "hold"

[[site.device]]
kind = "agent"
name = "rig2"
host = "127.0.0.1"
port = {apis['rig2']}
token_env = "RIG_TOKEN"
""")
    return sites


def site_config(tmp: Path, site: str, public_key: str) -> Path:
    path = tmp / f"{site}.toml"
    path.write_text(f'[bus]\nleader_public_key = "{public_key}"\nstate_dir = "{tmp / "state"}"\n'
                    f"desired_ttl_seconds = {TTL}\nreport_interval_seconds = 0.5\n")
    return path


class Leader:
    """The fleet leader as the sites see it: every REFRESH_S it writes each site's level
    afresh (a new revision, a new valid_until), signed; `put` changes a level at once.
    Runs its own event loop on a thread, with one fleet connection that reconnects."""

    REFRESH_S = 1.0

    def __init__(self, server, key) -> None:
        self.server, self.key, self.epoch, self.seq = server, key, 1, 0
        self.levels: dict[str, float] = {}
        self.refreshing = True
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.fleet, self.desired, self.reported = self._call(fleet_buckets(server))
        self._refresher = asyncio.run_coroutine_threadsafe(self._refresh(), self.loop)

    def _call(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self._refresher.cancel()

        async def shutdown():
            await self.fleet.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)
        try:
            self._call(shutdown())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def record(self, site: str, level: float) -> tuple[bytes, int]:
        self.seq += 1
        state = records.make_desired(
            site, epoch=self.epoch, seq=self.seq, level=level,
            reason="price_below_breakeven" if level > 0 else "price_above_breakeven",
            issued_at=datetime.now(timezone.utc), ttl_seconds=TTL, hashprice=0.05, leader="test")
        return records.encode_desired(state, self.key), state.revision

    async def _write(self, site: str, level: float) -> int:
        raw, revision = self.record(site, level)
        await self.desired.put(site, raw)
        return revision

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.REFRESH_S)
            if self.refreshing:
                for site, level in list(self.levels.items()):
                    try:
                        await self._write(site, level)
                    except Exception:   # the bus is down: the next round tries again
                        pass

    def put(self, site: str, level: float) -> int:
        self.levels[site] = level
        return self._call(self._write(site, level))

    def put_raw(self, site: str, raw: bytes) -> None:
        self._call(self.desired.put(site, raw))

    def signed(self, site: str, level: float, *, epoch: int, seq: int, key=None) -> bytes:
        state = records.make_desired(site, epoch=epoch, seq=seq, level=level, reason="price_below_breakeven",
                                     issued_at=datetime.now(timezone.utc), ttl_seconds=TTL, hashprice=0.05,
                                     leader="test")
        return records.encode_desired(state, key or self.key)

    def report(self, site: str) -> dict | None:
        async def get():
            try:
                return json.loads((await self.reported.get(site)).value)
            except Exception:   # no report yet
                return None
        return self._call(get())


def status(api: int) -> str | None:
    try:
        return agent_devs(api)["Status"]
    except (OSError, ValueError, KeyError, asyncio.TimeoutError):
        return None


def wait(predicate, timeout: float, what: str, *procs: Process):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for p in procs:
            assert p.proc.poll() is None, f"a process exited:\n{p.tail()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n" + \
            "\n----\n".join(p.tail(2500) for p in procs)
        time.sleep(0.05)


def test_site_agents_follow_refuse_fail_safe_and_resync(regtest_node, nats_server, tmp_path):
    node = regtest_node
    server = nats_server(["texas", "paris"])
    key = records.new_signing_key()
    leader = Leader(server, key)   # creates the buckets, as the fleet does before any site starts
    apis = {name: free_port() for name in ("rig1", "rig2", "rig3")}
    env = dict(os.environ, RIG_TOKEN=TOKEN, WRONG_TOKEN="not-the-token", GRIDMINER_AGENT_TOKEN=TOKEN)
    credentials, node_auth = node_credentials(node)
    env.update(credentials)
    sites = write_sites(tmp_path, apis)
    procs: list[Process] = []
    figures = {}
    try:
        pool = Process([sys.executable, "-m", "miner", "run", "--node", node.rpc_url, "--address",
                        node.new_address("bech32"), "--threads", "0", "--journal", str(tmp_path / "journal.jsonl"),
                        "--stratum", "127.0.0.1:0", "--metrics", "off", "--log-level", "warning", *node_auth], env)
        procs.append(pool)
        stratum = pool.wait_for_line(r"stratum server for ASICs and rigs at (stratum\+tcp://\S+)", 120).group(1)
        for name, site in (("rig1", "texas"), ("rig2", "paris"), ("rig3", "texas")):
            rig = Process([sys.executable, "-m", "miner", "run", "--mode", "agent", "--pool", stratum, "--user",
                           f"{site}.{name}", "--api", f"127.0.0.1:{apis[name]}", "--threads", "1",
                           "--metrics", "off", "--log-level", "warning"], env)
            procs.append(rig)
            rig.wait_for_line(r"cgminer-compatible API at", 120)
        agents = {}
        for site in ("texas", "paris"):
            leader.put(site, 1.0)
            site_env = dict(env, GRIDMINER_BUS_PASSWORD=server.site_user(site)[1])
            agents[site] = Process([sys.executable, "-m", "miner", "run", "--mode", "site", "--site", site,
                                    "--sites", str(sites), "--bus", server.url,
                                    "-c", str(site_config(tmp_path, site, records.public_key_hex(key))),
                                    "--metrics", "127.0.0.1:0", "--log-level", "info"], site_env)
            procs.append(agents[site])
        metrics = {s: p.wait_for_line(r"metrics at (http://\S+/metrics)", 60).group(1) for s, p in agents.items()}
        everyone = tuple(procs)
        wait(lambda: all(status(apis[r]) == "Alive" for r in apis), 120, "every rig hashing", *everyone)

        # Dear power at texas: its rigs pause (rig3 refuses: wrong token), paris runs on.
        t0 = time.monotonic()
        rev = leader.put("texas", 0.0)
        wait(lambda: status(apis["rig1"]) == "Idle", 30, "rig1 paused", *everyone)
        figures["desired_to_paused_s"] = time.monotonic() - t0
        # The ack of that revision, or of a refresh after it (same level, newer revision).
        report = wait(lambda: (r := leader.report("texas")) and r["ack"] and r["ack"]["revision"] >= rev
                      and r["desired_level"] == 0.0 and r, 30, "texas's ack", *everyone)
        assert report["ack"]["outcome"] == "partial" and "rig3" in report["ack"]["detail"], report
        by_name = {d["name"]: d for d in report["devices"]}
        # Levels as each agent reports them (0 paused, 1 not): a regtest rig idles between
        # a found block and the next job, so "hashing" at one instant proves nothing.
        assert by_name["rig1"]["applied"] and by_name["rig1"]["level"] == 0.0, report
        assert not by_name["rig3"]["applied"] and by_name["rig3"]["level"] == 1.0, ("rig3 is reported as it is", report)
        assert report["mode"] == "following" and report["desired_level"] == 0.0
        assert status(apis["rig2"]) == "Alive" and status(apis["rig3"]) == "Alive"

        # Cheap again: rig1 resumes.
        leader.put("texas", 1.0)
        wait(lambda: status(apis["rig1"]) == "Alive", 30, "rig1 resumed", *everyone)

        # Bad input on texas's key: logged, counted, never applied.
        leader.put_raw("texas", b'{"v":1,"site":"texas","level":0.0')
        leader.put_raw("texas", leader.signed("texas", 0.0, epoch=1, seq=99, key=records.new_signing_key()))
        leader.put_raw("texas", leader.signed("paris", 0.0, epoch=1, seq=100))
        leader.put_raw("texas", leader.signed("texas", 0.0, epoch=1, seq=1))   # from the past
        rejected = 'gridminer_bus_rejected_total{{reason="{}",site="texas"}}'
        wait(lambda: all(scrape(metrics["texas"]).get(rejected.format(r), 0) >= 1 for r in
                         ("malformed", "bad_signature", "wrong_site", "stale_revision")), 30, "four refusals",
             *everyone)
        assert status(apis["rig1"]) == "Alive", "no bad record was applied"
        agents["texas"].wait_for_line(r"desired record refused, never applied \(bad_signature\)", 5)

        # Partition: the bus (and the leader with it) goes away. texas (curtail) pauses
        # after its desired state expires; paris (hold) keeps hashing.
        leader.refreshing = False
        server.stop()
        t0 = time.monotonic()
        wait(lambda: status(apis["rig1"]) == "Idle", TTL + 30, "texas's fail-safe", *everyone)
        figures["nats_stop_to_fail_safe_s"] = time.monotonic() - t0
        for site in ("texas", "paris"):
            m = scrape(metrics[site])
            assert m[f'gridminer_bus_connected{{site="{site}"}}'] == 0
            if site == "paris":
                wait(lambda: scrape(metrics["paris"]).get('gridminer_bus_mode{mode="fail_safe",site="paris"}') == 1,
                     TTL + 30, "paris's fail-safe", *everyone)
        assert status(apis["rig2"]) == "Alive", "paris holds its level"

        # The bus is back: both sites resync and report, still in fail-safe (no new state).
        server.start()
        for site in ("texas", "paris"):
            wait(lambda s=site: scrape(metrics[s]).get(f'gridminer_bus_connected{{site="{s}"}}') == 1, 60,
                 f"{site} reconnected", *everyone)
            wait(lambda s=site: (r := leader.report(s)) and r["bus_connected"] and r["mode"] == "fail_safe"
                 and time.time() - datetime.fromisoformat(r["at"][:-1]).replace(tzinfo=timezone.utc).timestamp() < 5,
                 60, f"{site}'s fresh report", *everyone)
        leader.epoch, leader.refreshing = 2, True   # a new leader after the outage
        leader.put("texas", 1.0)
        wait(lambda: status(apis["rig1"]) == "Alive", 30, "texas following again", *everyone)

        # A stop is prompt, bus or no bus.
        server.stop()
        for p in agents.values():
            t0 = time.monotonic()
            assert p.stop() == 0, p.tail()
            assert time.monotonic() - t0 < 5
    finally:
        for p in reversed(procs):
            p.stop()
        leader.close()
    print(f"\nfigures: {figures}")
    logs = "".join(p.log() for p in procs)
    assert "Traceback" not in logs
    assert not any(server.site_user(s)[1] in logs for s in ("texas", "paris")), "a bus password showed in a log"


# --- the whole chain: price feed -> miner fleet (leader + standby) -> site agents -> rigs ----

LEASE_TTL = 3.0


def write_fleet_sites(tmp: Path, price_url: str, apis: dict[str, int]) -> Path:
    sites = tmp / "fleet-sites.toml"
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
[[site.device]]
kind = "agent"
name = "rig1"
host = "127.0.0.1"
port = {apis['rig1']}
token_env = "RIG_TOKEN"

[[site]]
name = "paris"
capacity_mw = 0.001
efficiency_j_per_th = 20.0
[site.feed]
kind = "static"
price = 20.0
[[site.device]]
kind = "agent"
name = "rig2"
host = "127.0.0.1"
port = {apis['rig2']}
token_env = "RIG_TOKEN"
""")
    return sites


def test_miner_fleet_drives_site_agents_by_price_and_a_standby_takes_over(regtest_node, nats_server, tmp_path):
    from tests.test_sched_run import PriceAPI

    node = regtest_node
    server = nats_server(["texas", "paris"])
    key_path = tmp_path / "fleet.key"
    done = __import__("subprocess").run([sys.executable, "-m", "miner", "fleet", "keygen", "--out", str(key_path)],
                                        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    public = done.stdout.split('leader_public_key = "')[1].split('"')[0]
    apis = {name: free_port() for name in ("rig1", "rig2")}
    env = dict(os.environ, RIG_TOKEN=TOKEN, GRIDMINER_AGENT_TOKEN=TOKEN, PYTHONUNBUFFERED="1")
    credentials, node_auth = node_credentials(node)
    env.update(credentials)
    procs: list[Process] = []
    figures = {}
    with PriceAPI(20.0) as prices:
        sites = write_fleet_sites(tmp_path, prices.url, apis)
        try:
            pool = Process([sys.executable, "-m", "miner", "run", "--node", node.rpc_url, "--address",
                            node.new_address("bech32"), "--threads", "0", "--journal", str(tmp_path / "j.jsonl"),
                            "--stratum", "127.0.0.1:0", "--metrics", "off", "--log-level", "warning", *node_auth],
                           env)
            procs.append(pool)
            stratum = pool.wait_for_line(r"stratum server for ASICs and rigs at (stratum\+tcp://\S+)", 120).group(1)
            for name, site in (("rig1", "texas"), ("rig2", "paris")):
                rig = Process([sys.executable, "-m", "miner", "run", "--mode", "agent", "--pool", stratum, "--user",
                               f"{site}.{name}", "--api", f"127.0.0.1:{apis[name]}", "--threads", "1",
                               "--metrics", "off", "--log-level", "warning"], env)
                procs.append(rig)
                rig.wait_for_line(r"cgminer-compatible API at", 120)
            fleets = {}
            for name in ("fleet-a", "fleet-b"):
                config = tmp_path / f"{name}.toml"
                config.write_text(f'[sched]\ninterval_seconds = 0.5\n[bus]\nuser = "fleet"\nname = "{name}"\n'
                                  f'lease_ttl_seconds = {LEASE_TTL}\ndesired_ttl_seconds = 60\n'
                                  f'report_interval_seconds = 0.5\nsigning_key_file = "fleet.key"\n'
                                  f'[metrics]\nlisten = "off"\n')
                fleets[name] = Process([sys.executable, "-m", "miner", "fleet", "-c", str(config), "--sites",
                                        str(sites), "--bus", server.url, "--log-level", "info"],
                                       dict(env, GRIDMINER_BUS_PASSWORD=server.fleet_user[1]))
                procs.append(fleets[name])
                if name == "fleet-a":
                    fleets[name].wait_for_line(r"fleet-a: leader \(lease epoch", 120)
            for site in ("texas", "paris"):
                cfg = tmp_path / f"{site}.toml"
                cfg.write_text(f'[bus]\nleader_public_key = "{public}"\nstate_dir = "{tmp_path / "state"}"\n'
                               f"desired_ttl_seconds = 60\nreport_interval_seconds = 0.5\n")
                procs.append(Process([sys.executable, "-m", "miner", "run", "--mode", "site", "--site", site,
                                      "--sites", str(sites), "--bus", server.url, "-c", str(cfg), "--metrics", "off",
                                      "--log-level", "info"],
                                     dict(env, GRIDMINER_BUS_PASSWORD=server.site_user(site)[1])))
            everyone = tuple(procs)
            wait(lambda: status(apis["rig1"]) == "Alive" and status(apis["rig2"]) == "Alive", 120,
                 "both rigs hashing", *everyone)

            # Dear power in Texas: the leader curtails texas, its rig pauses; paris runs on.
            t0 = time.monotonic()
            prices.price = 300.0
            wait(lambda: status(apis["rig1"]) == "Idle", 60, "rig1 paused by price", *everyone)
            figures["price_to_paused_s"] = time.monotonic() - t0
            assert status(apis["rig2"]) == "Alive"

            # The leader dies; the standby leads and drives the next change.
            fleets["fleet-a"].proc.kill()
            t0 = time.monotonic()
            everyone = tuple(p for p in procs if p is not fleets["fleet-a"])
            prices.price = 20.0
            fleets["fleet-b"].wait_for_line(r"fleet-b: leader \(lease epoch", LEASE_TTL * 10)
            wait(lambda: status(apis["rig1"]) == "Alive", 60, "rig1 resumed by the standby", *everyone)
            figures["leader_kill_to_resumed_s"] = time.monotonic() - t0
            assert status(apis["rig2"]) == "Alive"
        finally:
            for p in reversed(procs):
                p.stop()
    print(f"\nfigures: {figures}")
    assert "Traceback" not in "".join(p.log() for p in procs)
    assert server.fleet_user[1] not in "".join(p.log() for p in procs), "a bus password showed in a log"


@pytest.mark.parametrize("site, env, expected", [
    ("new york", {"GRIDMINER_BUS_PASSWORD": "x"}, "'new york' cannot be used on the bus"),
    ("denver", {"GRIDMINER_BUS_PASSWORD": "x"}, "'denver' is not in the sites file"),
    ("texas", {}, "GRIDMINER_BUS_PASSWORD"),
    ("texas", {"GRIDMINER_BUS_PASSWORD": "x"}, "token_env 'RIG_TOKEN': that environment variable is not set"),
])
def test_site_mode_refuses_a_bad_setting_before_starting(tmp_path, site, env, expected):
    """A wrong site, a missing password or a device token: exit 2 naming it, nothing started."""
    import subprocess

    sites = write_sites(tmp_path, {"rig1": 1, "rig2": 2, "rig3": 3})
    config = site_config(tmp_path, "texas", records.public_key_hex(records.new_signing_key()))
    clean = {k: v for k, v in os.environ.items() if k not in ("GRIDMINER_BUS_PASSWORD", "RIG_TOKEN", "WRONG_TOKEN")}
    if not expected.startswith("token_env"):
        clean.update(RIG_TOKEN="t", WRONG_TOKEN="w")
    done = subprocess.run([sys.executable, "-m", "miner", "run", "--mode", "site", "--site", site, "--sites",
                           str(sites), "-c", str(config), "--bus", "nats://127.0.0.1:1", "--metrics", "off"],
                          capture_output=True, text=True, env=dict(clean, **env), timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in done.stderr, done.stderr
    assert not (tmp_path / "state").exists(), "nothing was started"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_site_mode_stops_within_5_s_with_the_bus_down_and_a_device_that_hangs(tmp_path, sig):
    """The bus never answers, the fail-safe is applying to a rig whose API accepts the
    connection and says nothing: a stop still ends the run within 5 s, exit 0."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)   # accepts, never answers
    try:
        port = silent.getsockname()[1]
        sites = write_sites(tmp_path, {"rig1": port, "rig2": port, "rig3": port})
        config = site_config(tmp_path, "texas", records.public_key_hex(records.new_signing_key()))
        config.write_text(config.read_text().replace(f"desired_ttl_seconds = {TTL}", "desired_ttl_seconds = 0.5"))
        env = dict(os.environ, GRIDMINER_BUS_PASSWORD="x", RIG_TOKEN="t", WRONG_TOKEN="w")
        proc = Process([sys.executable, "-m", "miner", "run", "--mode", "site", "--site", "texas", "--sites",
                        str(sites), "-c", str(config), "--bus", f"nats://127.0.0.1:{free_port()}", "--metrics",
                        "off", "--log-level", "info"], env)
        try:
            proc.wait_for_line(r"fail_safe, level 0\.00", 60)   # the apply to the silent rig is under way
            t0 = time.monotonic()
            proc.proc.send_signal(sig)
            code = proc.proc.wait(30)
            took = time.monotonic() - t0
        finally:
            proc.stop()
    finally:
        silent.close()
    assert code == 0, proc.tail()
    assert took < 5, f"took {took:.1f} s:\n{proc.tail()}"


def test_a_site_agent_that_mines_curtails_its_own_workers(regtest_node, nats_server, tmp_path):
    """`miner run --mode site --pool ...`: the run's CPU workers mine our regtest pool and
    are the site's implicit "local" device; the leader's level 0 stops their hashing."""
    node = regtest_node
    server = nats_server(["texas"])
    key = records.new_signing_key()
    leader = Leader(server, key)
    sites = tmp_path / "sites.toml"
    sites.write_text('[economics]\nhashprice_usd_per_th_day = 0.05\n[[site]]\nname = "texas"\ncapacity_mw = 0.001\n'
                     'efficiency_j_per_th = 20.0\nprices = "unused.csv"\n')
    env = dict(os.environ)
    credentials, node_auth = node_credentials(node)
    env.update(credentials)
    procs: list[Process] = []
    try:
        pool = Process([sys.executable, "-m", "miner", "run", "--node", node.rpc_url, "--address",
                        node.new_address("bech32"), "--threads", "0", "--journal", str(tmp_path / "j.jsonl"),
                        "--stratum", "127.0.0.1:0", "--metrics", "off", "--log-level", "warning", *node_auth], env)
        procs.append(pool)
        stratum = pool.wait_for_line(r"stratum server for ASICs and rigs at (stratum\+tcp://\S+)", 120).group(1)
        leader.put("texas", 1.0)
        site = Process([sys.executable, "-m", "miner", "run", "--mode", "site", "--site", "texas", "--sites",
                        str(sites), "--bus", server.url, "-c", str(site_config(tmp_path, "texas", records.public_key_hex(key))),
                        "--pool", stratum, "--user", "texas.site", "--threads", "1", "--metrics", "127.0.0.1:0",
                        "--log-level", "info"], dict(env, GRIDMINER_BUS_PASSWORD=server.site_user("texas")[1]))
        procs.append(site)
        metrics = site.wait_for_line(r"metrics at (http://\S+/metrics)", 60).group(1)
        site.wait_for_line(r"site agent texas: 1 device\(s\)", 60)
        hashes = 'gridminer_hashes_total{site="texas",worker_group="agent"}'
        wait(lambda: scrape(metrics).get(hashes, 0) > 0, 120, "the site's workers hashing", *procs)
        leader.put("texas", 0.0)
        report = wait(lambda: (r := leader.report("texas")) and r["desired_level"] == 0.0 and r["ack"]
                      and r["ack"]["outcome"] == "applied" and r, 60, "the curtail acknowledged", *procs)
        assert [(d["name"], d["hashing"]) for d in report["devices"]] == [("local", False)], report
        before = scrape(metrics)[hashes]
        time.sleep(1.5)   # running kernel chunks end; then nothing more may be counted
        settled = scrape(metrics)[hashes]
        time.sleep(1.5)
        assert scrape(metrics)[hashes] == settled >= before, "curtailed workers must not hash"
        leader.put("texas", 1.0)
        wait(lambda: scrape(metrics)[hashes] > settled, 60, "hashing again", *procs)
    finally:
        for p in reversed(procs):
            p.stop()
        leader.close()
    assert "Traceback" not in "".join(p.log() for p in procs)
