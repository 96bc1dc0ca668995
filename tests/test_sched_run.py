"""`miner run --sites`: the live scheduler curtails and resumes real hashing by live price.

Everything is real: `miner run` (solo, on the regtest node) in a subprocess with a sites
file whose site reads its price from an HTTP JSON API served here by the stdlib; the
site's devices are the run's own CPU workers and an agent (`miner run --mode agent`, a
second process mining our stratum server) driven through its cgminer-compatible API.
The served price crosses the breakeven (102.08 USD/MWh at 0.05 USD/TH/day, 2 % pool
fee, 20 J/TH) both ways; hashing stops and restarts, with the reason in the log.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from miner import config as cfg
from tests.miner_run import node_credentials
from tests.test_agent import api_call
from miner.node.regtest import free_port

TOKEN = "rig7-s3cret"


class PriceAPI:
    """A market's price endpoint: GET /price -> {"price": <USD/MWh>}; the test sets it."""

    def __init__(self, price: float) -> None:
        self.price = price
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/price":
                    self.send_error(404)
                    return
                body = json.dumps({"price": api.price, "unit": "USD/MWh"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # keep the test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/price"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> PriceAPI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class Process:
    """A `miner run` subprocess whose output lines are collected as they come."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, k=sink: k.extend(iter(s.readline, "")), daemon=True).start()

    def log(self) -> str:
        return "".join(self.out) + "".join(self.err)

    def tail(self, chars: int = 4000) -> str:
        """The end of the log without the regtest block-by-block lines (blocks come by the hundred)."""
        return "".join(line for line in [*self.out, *self.err] if "miner.work.submit" not in line)[-chars:]

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.out) + list(self.err):
                if (m := re.search(pattern, line)) is not None:
                    return m
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.tail()}"
            assert time.monotonic() < deadline, f"no line matching {pattern!r}:\n{self.tail()}"
            time.sleep(0.05)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def scrape(url: str) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def wait_for(predicate, timeout: float, what: str, proc: Process):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert proc.proc.poll() is None, f"miner exited:\n{proc.tail()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{proc.tail()}"
        time.sleep(0.1)


def agent_devs(port: int) -> dict:
    return asyncio.run(api_call(port, "devs"))["DEVS"][0]


def write_files(tmp_path: Path, price_url: str, agent_port: int) -> tuple[Path, Path]:
    sites = tmp_path / "sites.toml"
    sites.write_text(f"""
[economics]
hashprice_usd_per_th_day = 0.05
pool_fee = 0.02

[[site]]
name = "texas"
capacity_mw = 0.001
efficiency_j_per_th = 20.0
price_ttl_seconds = 30

[site.feed]
kind = "http_json"
url = "{price_url}"
price_path = "price"
resolution_minutes = 5

[[site.device]]
kind = "local"
name = "cpu"

[[site.device]]
kind = "agent"
name = "rig7"
host = "127.0.0.1"
port = {agent_port}
token_env = "RIG7_TOKEN"
""")
    config = tmp_path / "miner.toml"
    config.write_text('[sched]\ninterval_seconds = 0.5\nlocal_site = "texas"\n')
    return sites, config


def test_price_across_breakeven_stops_and_restarts_local_workers_and_an_agent(regtest_node, tmp_path):
    node = regtest_node
    agent_api = free_port()
    env = dict(os.environ, RIG7_TOKEN=TOKEN, GRIDMINER_AGENT_TOKEN=TOKEN)
    credentials, node_auth = node_credentials(node)  # bcoin's from the environment, as an operator would
    env.update(credentials)
    with PriceAPI(20.0) as prices:
        sites, config = write_files(tmp_path, prices.url, agent_api)
        miner = Process([sys.executable, "-m", "miner", "run", "-c", str(config), "--sites", str(sites),
                         "--node", node.rpc_url, "--address", node.new_address("bech32"), "--threads", "1",
                         "--journal", str(tmp_path / "journal.jsonl"), "--stratum", "127.0.0.1:0",
                         "--metrics", "127.0.0.1:0", "--log-level", "info", *node_auth], env)
        agent = None
        try:
            metrics_url = miner.wait_for_line(r"metrics at (http://\S+/metrics)", 60).group(1)
            stratum = miner.wait_for_line(r"stratum server for ASICs and rigs at (stratum\+tcp://\S+)", 60).group(1)
            agent = Process([sys.executable, "-m", "miner", "run", "--mode", "agent", "--pool", stratum,
                             "--user", "texas.rig7", "--api", f"127.0.0.1:{agent_api}", "--threads", "1",
                             "--metrics", "off", "--log-level", "warning"], env)
            agent.wait_for_line(r"cgminer-compatible API at", 60)

            hashes = 'gridminer_hashes_total{site="texas",worker_group="local"}'
            rig_up = 'gridminer_device_up{device="rig7",site="texas"}'
            curtailed = 'gridminer_site_curtailed{site="texas"}'
            hashing = 'gridminer_site_hashing{site="texas"}'

            # Cheap power: both devices hash.
            wait_for(lambda: (m := scrape(metrics_url)).get(rig_up) == 1 and m.get(curtailed) == 0
                     and m.get(hashing) == 1 and m.get(hashes, 0) > 0, 60, "the site running", miner)
            wait_for(lambda: agent_devs(agent_api)["Status"] == "Alive" and agent_devs(agent_api)["MHS 5s"] > 0,
                     30, "the agent hashing", miner)

            # Dear power: curtailed, and the hash counters stand still.
            prices.price = 300.0
            wait_for(lambda: (m := scrape(metrics_url)).get(curtailed) == 1 and m.get(hashing) == 0, 20,
                     "the site curtailed", miner)
            time.sleep(0.5)  # running kernel chunks end
            before = scrape(metrics_url)[hashes]
            time.sleep(1.5)
            after = scrape(metrics_url)[hashes]
            assert after == before, "the local workers must not hash while curtailed"
            devs = agent_devs(agent_api)
            assert devs["Status"] == "Idle", devs
            miner.wait_for_line(r"site texas: curtail \(price_above_breakeven: 300\.00 > 102\.08 USD/MWh\)", 5)

            # Cheap again: both restart.
            prices.price = 20.0
            wait_for(lambda: (m := scrape(metrics_url)).get(curtailed) == 0 and m.get(hashing) == 1
                     and m.get(hashes, 0) > after, 20, "the site running again", miner)
            wait_for(lambda: agent_devs(agent_api)["Status"] == "Alive", 20, "the agent hashing again", miner)
            miner.wait_for_line(r"site texas: run at 100% \(price_below_breakeven: 20\.00 < 102\.08 USD/MWh\)", 5)
            final = scrape(metrics_url)
        finally:
            codes = [p.stop() for p in (agent, miner) if p is not None]
    assert codes == [0, 0], miner.tail()
    assert final['gridminer_site_starts_total{site="texas"}'] >= 2
    assert final['gridminer_sched_decisions_total{reason="price_above_breakeven",site="texas"}'] >= 1
    assert final['gridminer_device_actuations_total{device="rig7",result="ok",site="texas"}'] >= 3
    assert final['gridminer_site_breakeven_usd_per_mwh{site="texas"}'] == pytest.approx(102.0833, abs=1e-3)
    assert final['gridminer_site_energy_joules_total{site="texas"}'] > 0
    assert "Traceback" not in miner.log()


def test_a_bad_sites_file_is_a_configuration_error(tmp_path):
    sites = tmp_path / "sites.toml"
    sites.write_text('[[site]]\nname = "texas"\n')
    done = subprocess.run([sys.executable, "-m", "miner", "run", "--sites", str(sites), "--node",
                           "http://127.0.0.1:9", "--address", "bcrt1qxyz", "--metrics", "off"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "configuration error: sched.sites:" in done.stderr


def test_sched_config_resolves_the_sites_file_next_to_the_config(tmp_path):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "miner.toml"
    path.write_text('[sched]\nsites = "sites.toml"\ninterval_seconds = 2\nlocal_site = "texas"\n')
    loaded = cfg.load(path)
    assert loaded.sched.sites == str(tmp_path / "conf" / "sites.toml")
    assert loaded.sched.interval_seconds == 2.0 and loaded.sched.local_site == "texas"
    assert cfg.load(path, {"sched": {"sites": "other.toml"}}).sched.sites == "other.toml"  # --sites: cwd
    path.write_text("[sched]\ninterval_seconds = 0\n")
    with pytest.raises(cfg.ConfigError, match="sched.interval_seconds"):
        cfg.load(path)
    path.write_text('[sched]\nlocal_site = "texas"\n')
    with pytest.raises(cfg.ConfigError, match="sched.local_site: needs sched.sites"):
        cfg.load(path)


def test_agent_mode_schedules_its_own_workers(tmp_path):
    """`miner run --mode agent --sites`: the rig's CPU workers are a device of its site."""
    from miner.config import (AgentConfig, Config, LogConfig, MetricsConfig, MiningConfig, SchedConfig,
                              StratumConfig, UpstreamConfig)
    from miner.modes.agent import AgentMiner
    from miner.metrics import Metrics
    from miner.stratum.server import StratumServer
    from tests.stratum.test_session import make_job
    from tests.waiting import wait_until

    sites = tmp_path / "sites.toml"
    sites.write_text("""
[economics]
hashprice_usd_per_th_day = 0.05
pool_fee = 0.02
[[site]]
name = "paris"
capacity_mw = 0.001
efficiency_j_per_th = 20.0
feed = { kind = "static", price = 500.0 }
""")

    async def scenario():
        pool_server = StratumServer(lambda job, solution: None, port=0, metrics=Metrics())
        await pool_server.start()
        pool_server.broadcast(make_job("a"))
        metrics = Metrics()
        config = Config(mining=MiningConfig(mode="agent", threads=1),
                        upstream=UpstreamConfig(pools=[f"stratum+tcp://127.0.0.1:{pool_server.port}"],
                                                user="paris.rig1"),
                        agent=AgentConfig(api="off"), stratum=StratumConfig(listen="off"),
                        metrics=MetricsConfig(listen="off"), log=LogConfig(status_interval=60),
                        sched=SchedConfig(sites=str(sites), interval_seconds=0.2, local_site="paris"))
        agent = AgentMiner(config, metrics=metrics, out=open(os.devnull, "w"))
        task = asyncio.create_task(agent.run())
        try:
            await wait_until(lambda: agent.pool is not None and agent.pool.paused, 30, "the scheduler's curtail")
            await asyncio.sleep(0.3)  # the running chunk ends
            hashes = agent.pool.hashes
            await asyncio.sleep(0.5)
            assert agent.pool.hashes == hashes
            return agent.scheduler, metrics
        finally:
            agent.stop()
            await asyncio.wait_for(task, 30)
            await pool_server.stop(reconnect_wait=None)

    scheduler, metrics = asyncio.run(scenario())
    assert [d.name for d in scheduler.devices["paris"]] == ["local"]  # implicit: local_site names it
    assert metrics.registry.get_sample_value("gridminer_site_curtailed", {"site": "paris"}) == 1
    assert metrics.registry.get_sample_value("gridminer_sched_decisions_total",
                                             {"site": "paris", "reason": "price_above_breakeven"}) >= 1
    # The workers are labelled by their site (0 threads after the stop).
    assert metrics.registry.get_sample_value("gridminer_workers", {"site": "paris", "worker_group": "agent"}) == 0
