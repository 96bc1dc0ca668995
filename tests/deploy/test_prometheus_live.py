"""Every dashboard query and alert rule against a real Prometheus scraping a real fleet.

    regtest node ◄── miner run (solo, 1 CPU thread, stratum, scheduler over two sites) ──► :metrics
                           ▲ stratum                 │ device "rig1" (cgminer API)
                     miner run --mode agent ◄────────┘                                  ──► :metrics
    nats-server ◄── miner fleet (the same sites, leader) ──► :metrics
        ▲ the site agent of "lyon" (miner run --mode site) ──► :metrics
    a raw client that misbehaves (malformed line, unknown job, oversized line) ─► stratum
    ZMQ hashblock in bitcoind's framing (bcoin has none) with one sequence gap ─► solo
    a price API that answers nonsense ─► site "lyon" (feed errors, stale, fail-safe)
    prometheus (its own port, config and storage; scrape every 1 s, alerts.yml loaded)

Each dashboard variable must have values; each panel query, with the variables filled in
as Grafana does, must be valid and return data; each alert expression must be valid and
the rule group must evaluate cleanly. Run alone: pytest -m live_prometheus.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.deploy.deployfiles import (ALERTS, load_alert_rules, load_dashboards, promql_regex_value, substitute,
                                      targets, variable_query, variables)
from miner.node.regtest import free_port
from tests.waiting import tail, wait_port

pytestmark = pytest.mark.live_prometheus

AGENT_TOKEN = "live-test-agent-token"
# Grafana's $__rate_interval is max(4 x scrape interval, interval + scrape interval): with
# 1 s scrapes a few seconds; 10 s holds several samples of every counter.
GRAFANA_VALUES = {"__rate_interval": "10s", "__range": "5m", "__interval": "1s"}
READY_TIMEOUT_S = 45.0
# Series that show the whole scenario has been scraped (what the panels need to exist).
READY = (
    'count(up{job="gridminer"} == 1) == 4',
    'gridminer_blocks_total{stage="accepted"} > 0',
    "gridminer_upstream_up == 1",
    'gridminer_stratum_worker_share_difficulty_total{worker="home.rig1"} > 0',
    'gridminer_stratum_shares_total{result="job_not_found"}',
    'gridminer_stratum_limit_hits_total{limit="line_length"}',
    'gridminer_stratum_protocol_errors_total{kind="malformed_line"}',
    "gridminer_zmq_messages_total",
    "gridminer_zmq_sequence_gaps_total > 0",
    'gridminer_sched_decisions_total{site="home"}',
    'gridminer_feed_errors_total{site="lyon"}',
    'gridminer_site_energy_cost_usd_total{site="home"}',
    'gridminer_fleet_leader == 1',
    'gridminer_fleet_reported_level{site="lyon"}',
    'gridminer_fleet_last_ack_age_seconds{site="lyon"}',
    'gridminer_bus_connected{site="lyon"} == 1',
    'gridminer_bus_applied_revision{site="lyon"} > 0',
    'gridminer_bus_desired_age_seconds{site="lyon"}',
    'gridminer_site_revenue_usd_total{site="home"}',
    "gridminer_agent_api_requests_total",
    "gridminer_device_actuations_total",
    'gridminer_fleet_desired_revision{site="home"}',
)


# --- the parts of the scenario ------------------------------------------------------------

class NonsensePriceAPI:
    """An HTTP price API whose answers lack the configured field: the feed fails every fetch."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"unexpected": "shape"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/price"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TipPublisher:
    """bitcoind's zmqpubhashblock for a node without ZMQ (bcoin): topic, block hash, 4-byte
    little-endian sequence; one sequence number is skipped, as when a message is lost."""

    def __init__(self, node) -> None:
        import zmq

        from miner.node.rpc import NodeRPC

        self._rpc = NodeRPC(node.rpc_url, node.auth, timeout=5)
        self._socket = zmq.Context.instance().socket(zmq.PUB)
        self.url = f"tcp://127.0.0.1:{self._socket.bind_to_random_port('tcp://127.0.0.1')}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last, sequence = None, 0
        while not self._stop.wait(0.2):
            try:
                tip = self._rpc.call_sync("getbestblockhash")
            except Exception:
                continue
            if tip != last:
                last = tip
                self._socket.send_multipart([b"hashblock", bytes.fromhex(tip), sequence.to_bytes(4, "little")])
                sequence += 2 if sequence == 3 else 1  # 4 never comes: a gap

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close(0)
        self._rpc.close()


def misbehave(stratum_port: int) -> None:
    """What a broken rig does: a line that is not JSON, a share for a job it never got, and
    a line longer than stratum.max_line_bytes (which gets it disconnected)."""
    with socket.create_connection(("127.0.0.1", stratum_port), 5) as s:
        lines = s.makefile("rb")
        s.sendall(b"this is not json\n")
        for i, (method, params) in enumerate([("mining.subscribe", ["broken-rig/1"]),
                                              ("mining.authorize", ["home.broken", "x"]),
                                              ("mining.submit", ["home.broken", "nope", "00000000", "00000000",
                                                                 "00000000"])], start=1):
            s.sendall(json.dumps({"id": i, "method": method, "params": params}).encode() + b"\n")
            while json.loads(lines.readline()).get("id") != i:
                pass
    with socket.create_connection(("127.0.0.1", stratum_port), 5) as s:
        s.sendall(b"x" * 20000 + b"\n")
        s.settimeout(5)
        while s.recv(65536):
            pass


class PrometheusAPI:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params) -> dict:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # 400/422 carry a JSON error body; 503 (not ready) text
            body = e.read()
            try:
                return json.loads(body)
            except ValueError:
                return {"status": "error", "error": f"HTTP {e.code}: {body[:200]!r}"}

    def wait_ready(self, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
        """/-/ready answers 200 once the storage is open and queries can be served."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert proc.poll() is None, f"prometheus exited ({proc.returncode}):\n{tail(log)}"
            assert time.monotonic() < deadline, f"prometheus not ready after {timeout} s:\n{tail(log)}"
            time.sleep(0.1)

    def query(self, expr: str) -> dict:
        return self.get("/api/v1/query", query=expr)

    def has_data(self, expr: str) -> bool:
        answer = self.query(expr)
        return answer.get("status") == "success" and bool(answer["data"]["result"])


# --- the fleet ------------------------------------------------------------------------------

def write_configs(tmp_path: Path, *, zmq_url: str, price_url: str, agent_api_port: int) -> Path:
    (tmp_path / "sites.toml").write_text(f"""
[economics]
hashprice_usd_per_th_day = 0.05
pool_fee = 0.02

[[site]]
name = "home"                 # this machine's CPU workers and the agent rig
capacity_mw = 0.001
efficiency_j_per_th = 20.0
[site.feed]
kind = "static"
price = 20.0
[[site.device]]
kind = "local"
name = "cpu"
[[site.device]]
kind = "agent"
name = "rig1"
host = "127.0.0.1"
port = {agent_api_port}
token_env = "GRIDMINER_TEST_AGENT_TOKEN"

[[site]]
name = "lyon"                 # no devices (modelled); its price API answers nonsense
capacity_mw = 0.002
efficiency_j_per_th = 20.0
fail_safe = "curtail"
[site.feed]
kind = "http_json"
url = "{price_url}"
price_path = "price"
""")
    config = tmp_path / "gridminer.toml"
    config.write_text(f"""
[node]
poll_interval = 0.2
zmq = "{zmq_url}"

[stratum.sites]
home = ""

[sched]
sites = "sites.toml"
interval_seconds = 1
local_site = "home"

[log]
status_interval = 60
""")
    return config


def prometheus_config(tmp_path: Path, metrics_ports: list[int]) -> Path:
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "gridminer",
                            "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in metrics_ports]}]}],
    }))
    return path


# --- evaluating what Grafana would ask --------------------------------------------------------

def variable_values(api: PrometheusAPI, variable: dict, filled: dict[str, str]) -> list[str]:
    """The values Grafana would offer for a label_values(...) or query_result(...) variable."""
    query = substitute(variable_query(variable), filled)
    if query.startswith("label_values("):
        selector, label = (x.strip() for x in query[len("label_values("):-1].rsplit(",", 1))
        answer = api.get(f"/api/v1/label/{label}/values", **{"match[]": selector})
        assert answer.get("status") == "success", (variable["name"], answer)
        return sorted(answer["data"])
    answer = api.query(query[len("query_result("):-1])
    assert answer.get("status") == "success", (variable["name"], answer)
    pattern = re.compile(variable["regex"].strip("/"))
    texts = ["{" + ",".join(f'{k}="{v}"' for k, v in r["metric"].items()) + "}" for r in answer["data"]["result"]]
    return sorted({m.group(1) for t in texts if (m := pattern.search(t))})


def fill_variables(api: PrometheusAPI, dashboard: dict) -> dict[str, str]:
    filled = dict(GRAFANA_VALUES)
    for variable in variables(dashboard):  # in order: later queries use earlier variables
        values = variable_values(api, variable, filled)
        assert values, f"{dashboard['title']}: variable ${variable['name']} has no values"
        filled[variable["name"]] = promql_regex_value(values)
    return filled


def write_bus_configs(tmp_path: Path, server) -> tuple[Path, Path]:
    """The fleet bus part of the fleet: `miner fleet` over the same sites file, and a site
    agent for "lyon" (no devices: a modelled site), with the leader's key."""
    from miner.fleet.records import new_signing_key, public_key_hex, signing_key_pem

    key = new_signing_key()
    (tmp_path / "fleet.key").write_bytes(signing_key_pem(key))
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[sched]\nsites = "sites.toml"\ninterval_seconds = 1\n[bus]\nuser = "fleet"\n'
                     'signing_key_file = "fleet.key"\nreport_interval_seconds = 1\n')
    site = tmp_path / "site.toml"
    site.write_text(f'[mining]\nmode = "site"\n[sched]\nsites = "sites.toml"\ninterval_seconds = 1\n[bus]\n'
                    f'site = "lyon"\nleader_public_key = "{public_key_hex(key)}"\nstate_dir = "bus-state"\n'
                    f'report_interval_seconds = 1\n')
    return fleet, site


def test_every_dashboard_query_returns_data_and_every_alert_is_valid(prometheus_tools, regtest_node, nats_server,
                                                                      tmp_path):
    node = regtest_node
    ports = {name: free_port() for name in ("stratum", "metrics", "agent_metrics", "agent_api", "prometheus",
                                            "fleet_metrics", "site_metrics")}
    bus = nats_server(["home", "lyon"])
    price_api = NonsensePriceAPI()
    publisher = TipPublisher(node) if node.zmq_url is None else None
    config = write_configs(tmp_path, zmq_url=node.zmq_url or publisher.url, price_url=price_api.url,
                           agent_api_port=ports["agent_api"])
    env = dict(os.environ, GRIDMINER_TEST_AGENT_TOKEN=AGENT_TOKEN, GRIDMINER_AGENT_TOKEN=AGENT_TOKEN)
    solo_cmd = [sys.executable, "-m", "miner", "run", "-c", str(config), "--node", node.rpc_url,
                "--address", node.new_address("bech32"), "--threads", "1", "--journal", str(tmp_path / "j.jsonl"),
                "--stratum", f"127.0.0.1:{ports['stratum']}", "--metrics", f"127.0.0.1:{ports['metrics']}"]
    if node.kind == "bcoin":
        env.update(GRIDMINER_RPC_USER=node.auth.user, GRIDMINER_RPC_PASSWORD=node.auth.password)
    else:
        solo_cmd += ["--rpc-cookie", str(node.auth.path)]
    agent_cmd = [sys.executable, "-m", "miner", "run", "--mode", "agent", "--threads", "1",
                 "--pool", f"stratum+tcp://127.0.0.1:{ports['stratum']}", "--user", "home.rig1",
                 "--api", f"127.0.0.1:{ports['agent_api']}", "--stratum", "off",
                 "--metrics", f"127.0.0.1:{ports['agent_metrics']}"]
    fleet_config, site_config = write_bus_configs(tmp_path, bus)
    fleet_cmd = [sys.executable, "-m", "miner", "fleet", "-c", str(fleet_config), "--bus", bus.url,
                 "--metrics", f"127.0.0.1:{ports['fleet_metrics']}"]
    site_cmd = [sys.executable, "-m", "miner", "run", "-c", str(site_config), "--bus", bus.url,
                "--metrics", f"127.0.0.1:{ports['site_metrics']}"]
    scraped = [ports[p] for p in ("metrics", "agent_metrics", "fleet_metrics", "site_metrics")]
    prom_cmd = [prometheus_tools.prometheus,
                f"--config.file={prometheus_config(tmp_path, scraped)}",
                f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{ports['prometheus']}", "--log.level=warn"]
    logs = {name: tmp_path / f"{name}.log" for name in ("solo", "agent", "fleet", "site", "prometheus")}
    procs: dict[str, subprocess.Popen] = {}
    bus_passwords = {"fleet": bus.fleet_user[1], "site": bus.site_user("lyon")[1]}

    def start(name: str, cmd: list[str]) -> subprocess.Popen:
        with open(logs[name], "wb") as log:
            procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                           env=dict(env, GRIDMINER_BUS_PASSWORD=bus_passwords.get(name, "")))
        return procs[name]

    try:
        wait_port(ports["stratum"], proc=start("solo", solo_cmd), log=logs["solo"])
        start("agent", agent_cmd)
        start("fleet", fleet_cmd)
        start("site", site_cmd)
        start("prometheus", prom_cmd)
        misbehave(ports["stratum"])
        api = PrometheusAPI(ports["prometheus"])
        api.wait_ready(procs["prometheus"], logs["prometheus"])

        deadline, missing = time.monotonic() + READY_TIMEOUT_S, list(READY)
        while missing and time.monotonic() < deadline:
            for name, proc in procs.items():
                assert proc.poll() is None, f"{name} exited ({proc.returncode}):\n{tail(logs[name])}"
            missing = [q for q in missing if not api.has_data(q)]
            time.sleep(0.5)
        time.sleep(3)  # a few more scrapes: every rate() window holds several samples

        problems = [f"never seen: {q}" for q in missing]
        for dashboard in load_dashboards().values():
            try:
                filled = fill_variables(api, dashboard)
            except AssertionError as e:
                problems.append(str(e))
                continue
            for t in targets({dashboard["title"]: dashboard}):
                expr = substitute(t.expr, filled)
                answer = api.query(expr)
                if answer.get("status") != "success":
                    problems.append(f"invalid: {t}: {answer.get('error')}\n    {expr}")
                elif not answer["data"]["result"]:
                    problems.append(f"no data: {t}\n    {expr}")
        for rule in load_alert_rules():
            answer = api.query(rule["expr"])
            if answer.get("status") != "success":
                problems.append(f"invalid alert {rule['alert']}: {answer.get('error')}")
        groups = api.get("/api/v1/rules")["data"]["groups"]
        loaded = {r["name"]: r for g in groups for r in g["rules"]}
        for rule in load_alert_rules():
            state = loaded.get(rule["alert"])
            if state is None or state.get("health") != "ok":
                problems.append(f"alert {rule['alert']} not evaluated cleanly by Prometheus: {state}")
        assert not problems, "\n".join(problems) + "".join(
            f"\n--- {name} log ---\n{tail(path)}" for name, path in logs.items())
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if publisher is not None:
            publisher.close()
        price_api.close()
