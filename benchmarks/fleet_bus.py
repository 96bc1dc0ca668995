"""Fleet bus at scale: a price change -> every device of every site applied, end to end.

    .venv/bin/python benchmarks/fleet_bus.py [--sites 1000] [--devices 50] [--processes 4]
        [--markets 25] [--rounds 2] [--policy threshold] [--interval 1] [--apply-latency 0.05]
        [--read-latency 0.02] [--json] [--profile DIR]

Everything is real except the devices:

    price API (here, http_json on loopback, one URL per market) ──poll──► miner fleet (a process)
        the benchmark flips every site's price across breakeven          │ signed desired state,
                                                                         ▼ one KV put per site
    nats-server -js (miner.testing.nats, a user per site, /varz on loopback)
        │ $KV.gridminer_desired.<site> (push)          ▲ $KV.gridminer_reported.<site> (ack)
        ▼                                              │
    site-agent processes (benchmarks/fleet_bus_sites.py): SITES / PROCESSES SiteAgents each,
        each with its own NATS connection and site user; DEVICES emulated devices per site
        (the Device protocol in memory, a configurable apply and read latency)

Clocks: every timestamp is time.time() on this machine (one clock for every process).
    flip        the benchmark changes the price the API serves
    fetched     the API serves the new price of the site's market to the fleet (its poll;
                sites in one market share one feed, so one fetch per market and step)
    published   this process sees the site's new desired state on the bus (a fleet-user
                subscription to $KV.gridminer_desired.>: the moment the bus delivers it)
    received    the site agent decoded it
    applied     an emulated device took the level (one per device)
    acked       this process sees the site's report whose ack names that revision

Per round it prints device and site latencies (p50/p99/max), where the time goes
(poll delay, fleet, delivery, apply, ack), the fleet round (feeds, policy decision from
the fleet's gridminer_sched_step_seconds, publication), bus messages per second from
nats-server's /varz, and CPU seconds of the fleet (per decision round, idle and with a
change), the site processes and nats-server, from /proc, and how busy the whole machine
was. Not a pass/fail test. Ctrl-C (or SIGTERM) stops every process it started. The
agents' state files go to tmpfs when there is one (--state-dir to choose): here many
agents share one disk and one event loop for their fsyncs, where real sites each have
their own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from miner.fleet.records import new_signing_key, public_key_hex, signing_key_pem
from miner.node.regtest import free_port
from miner.sched.economics import breakeven_usd_per_mwh

HERE = Path(__file__).resolve().parent
SITES_WORKER = HERE / "fleet_bus_sites.py"
ROOT = HERE.parent

HASHPRICE = 0.05            # USD per TH/s per day
POOL_FEE = 0.02
EFFICIENCY_J_PER_TH = 3250.0 / 110.0   # the emulated rig (fleet_bus_sites.py)
RIG_W = 3250.0
TARGET_P99_S = 5.0
STOP_TIMEOUT_S = 10.0


# -- small helpers --------------------------------------------------------------------------

def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """p50/p99/max by nearest rank (n: how many)."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    s = sorted(values)

    def rank(q: float) -> float:
        return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]

    return {"n": len(s), "p50": rank(0.50), "p99": rank(0.99), "max": s[-1]}


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process, from /proc (None when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, every process of every user (/proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return float(sum(fields) - idle), float(sum(fields))


def busy_share(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    total = after[1] - before[1]
    return round((after[0] - before[0]) / total, 3) if total > 0 else None


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": model, "cores": os.cpu_count(), "load_before": list(os.getloadavg())}


def progress(message: str) -> None:
    """A phase starting, on stderr (stdout stays the figures)."""
    print(f"{time.strftime('%H:%M:%S')} fleet_bus: {message}", file=sys.stderr, flush=True)


def site_names(n: int) -> list[str]:
    return [f"site-{i:04d}" for i in range(n)]


def monitor_url(server: Any) -> str:
    """nats-server's HTTP monitoring endpoint (the server must have been made with monitor_port)."""
    if server.monitor_port is None:
        raise RuntimeError("the nats-server needs its monitoring port (NatsServer(monitor_port=...))")
    return f"http://127.0.0.1:{server.monitor_port}"


def http_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def scrape(url: str, timeout: float = 10.0) -> dict[tuple[str, tuple], float]:
    """A Prometheus endpoint's samples: (name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


# -- the price API ----------------------------------------------------------------------------

class PriceAPI:
    """GET /price/<market> -> {"price": p}; remembers when each market was first served each price."""

    def __init__(self, markets: list[str], price: float) -> None:
        self.sites = set(markets)
        self.first_site = markets[0]
        self.price, self.version = price, 0
        self.lock = threading.Lock()
        self.served: dict[int, dict[str, float]] = {0: {}}   # version -> market -> first served at
        self.polls = 0                                      # polls of the first market (= fleet rounds)
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                site = self.path.rsplit("/", 1)[-1]
                if not self.path.startswith("/price/") or site not in api.sites:
                    self.send_error(404)
                    return
                now = time.time()
                with api.lock:
                    price, version = api.price, api.version
                    api.served[version].setdefault(site, now)
                    if site == api.first_site:
                        api.polls += 1
                body = json.dumps({"price": price}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/price"
        self.thread = threading.Thread(target=self.server.serve_forever, name="price-api", daemon=True)
        self.thread.start()

    def flip(self, price: float) -> tuple[int, float]:
        with self.lock:
            self.version += 1
            self.price = price
            self.served[self.version] = {}
            return self.version, time.time()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- what the bus shows (a fleet-user subscription) ------------------------------------------------

class BusWatch:
    """Desired states and reports as they cross the bus, stamped on arrival."""

    def __init__(self) -> None:
        self.desired: dict[str, list[tuple[float, int, float]]] = {}   # site -> [(t, revision, level)]
        self.acks: dict[str, dict[int, float]] = {}                    # site -> revision -> first ack seen
        self.nc: Any = None

    async def start(self, url: str, user: str, password: str) -> None:
        import nats

        async def quiet(error: Exception) -> None:
            pass    # a stopping nats-server (Ctrl-C reaches it too) is not this benchmark's news

        self.nc = await nats.connect(url, user=user, password=password, name="fleet-bus-bench-watch",
                                     max_reconnect_attempts=-1, pending_size=256 * 1024 * 1024, error_cb=quiet)
        await self.nc.subscribe("$KV.gridminer_desired.*", cb=self._desired, pending_msgs_limit=1_000_000,
                                pending_bytes_limit=1 << 30)
        await self.nc.subscribe("$KV.gridminer_reported.*", cb=self._reported, pending_msgs_limit=1_000_000,
                                pending_bytes_limit=1 << 30)

    async def _desired(self, msg: Any) -> None:
        t = time.time()
        try:
            d = json.loads(msg.data)
            self.desired.setdefault(d["site"], []).append((t, int(d["revision"]), float(d["level"])))
        except (ValueError, KeyError, TypeError):
            pass

    async def _reported(self, msg: Any) -> None:
        t = time.time()
        try:
            r = json.loads(msg.data)
            ack = r.get("ack")
            if ack:
                self.acks.setdefault(r["site"], {}).setdefault(int(ack["revision"]), t)
        except (ValueError, KeyError, TypeError, AttributeError):
            pass

    def published(self, site: str, level: float, since: float) -> tuple[float, int] | None:
        """The first desired state of `site` at `level` seen after `since`: (when, revision)."""
        for t, revision, lv in self.desired.get(site, ()):
            if t >= since and lv == level:
                return t, revision
        return None

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 5.0)


# -- processes ----------------------------------------------------------------------------------

class SitesProcess:
    """One fleet_bus_sites.py process: its JSON events, read as they come."""

    def __init__(self, index: int, spec_path: Path, env: dict[str, str]) -> None:
        self.index, self.spec_path, self.env = index, spec_path, env
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.ready_seconds: float | None = None
        self.applied: dict[str, dict[int, dict]] = {}   # site -> revision -> event
        self.cpu_reply: asyncio.Future | None = None
        self.reader: asyncio.Task | None = None
        self.stderr_tail: list[str] = []

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(SITES_WORKER), str(self.spec_path), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.env, cwd=str(ROOT),
            limit=16 * 1024 * 1024)
        self.reader = asyncio.create_task(self._read())
        self.err_reader = asyncio.create_task(self._read_stderr())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                return
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event")
            if kind == "applied":
                self.applied.setdefault(event["site"], {})[event["revision"]] = event
            elif kind == "ready":
                self.ready_seconds = event["seconds"]
                self.ready.set()

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            self.stderr_tail = (self.stderr_tail + [line.decode(errors="replace").rstrip()])[-20:]

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def cpu(self) -> float | None:
        return proc_cpu_seconds(self.proc.pid) if self.proc is not None else None

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                self.proc.stdin.write(b"stop\n")
                await asyncio.wait_for(self.proc.stdin.drain(), 2.0)
                self.proc.stdin.close()
            await stop_process(self.proc)
        for task in (self.reader, self.err_reader):
            if task is not None:
                task.cancel()


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL when it has not exited within `timeout`."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


# -- the benchmark ------------------------------------------------------------------------------

@dataclass
class Options:
    sites: int = 1000
    markets: int = 25
    devices: int = 50
    processes: int = 4
    rounds: int = 2
    policy: str = "threshold"
    interval: float = 1.0
    apply_latency: float = 0.05
    read_latency: float = 0.02
    jitter: float = 0.5
    report_interval: float = 15.0
    idle_seconds: float = 10.0
    timeout: float = 300.0
    state_dir: str | None = None
    profile_dir: str | None = None


@dataclass
class Run:
    opts: Options
    sites: list[str]
    workdir: Path
    api: PriceAPI | None = None
    server: Any = None
    watch: BusWatch = field(default_factory=BusWatch)
    workers: list[SitesProcess] = field(default_factory=list)
    fleet: asyncio.subprocess.Process | None = None
    fleet_metrics_url: str = ""
    fleet_log: Path | None = None
    state_root: Path | None = None
    market: dict[str, str] = field(default_factory=dict)
    worker_by_site: dict[str, SitesProcess] = field(default_factory=dict)

    def worker_of(self, site: str) -> SitesProcess:
        return self.worker_by_site[site]

    def applied_event(self, site: str, revision: int) -> dict | None:
        return self.worker_of(site).applied.get(site, {}).get(revision)

    def varz(self) -> dict[str, Any]:
        return http_json(monitor_url(self.server) + "/varz")

    def fleet_cpu(self) -> float | None:
        return proc_cpu_seconds(self.fleet.pid) if self.fleet is not None else None

    def sites_cpu(self) -> float:
        return sum(w.cpu() or 0.0 for w in self.workers)

    def nats_cpu(self) -> float | None:
        return proc_cpu_seconds(self.server.proc.pid) if self.server.proc is not None else None

    def check_alive(self) -> None:
        if self.fleet is not None and self.fleet.returncode is not None:
            raise RuntimeError(f"miner fleet exited with {self.fleet.returncode}:\n{self.fleet_tail()}")
        for w in self.workers:
            if not w.alive:
                raise RuntimeError(f"site process {w.index} exited:\n" + "\n".join(w.stderr_tail))

    def fleet_tail(self) -> str:
        try:
            return "\n".join(self.fleet_log.read_text(errors="replace").splitlines()[-20:])
        except (OSError, AttributeError):
            return ""


def market_names(n: int) -> list[str]:
    return [f"market-{i:04d}" for i in range(n)]


def market_of(sites: list[str], markets: int) -> dict[str, str]:
    """Site i trades in market i mod markets."""
    names = market_names(markets)
    return {site: names[i % markets] for i, site in enumerate(sites)}


def write_sites_file(path: Path, sites: list[str], devices: int, price_url: str, markets: dict[str, str]) -> None:
    lines = [f"[economics]\nhashprice_usd_per_th_day = {HASHPRICE}\npool_fee = {POOL_FEE}\n"]
    capacity_mw = devices * RIG_W / 1e6
    for name in sites:
        lines.append(f"""[[site]]
name = "{name}"
capacity_mw = {capacity_mw}
efficiency_j_per_th = {EFFICIENCY_J_PER_TH!r}
fail_safe = "hold"
price_ttl_seconds = 600
[site.feed]
kind = "http_json"
url = "{price_url}/{markets[name]}"
price_path = "price"
resolution_minutes = 5
timeout_s = 30
""")
    path.write_text("\n".join(lines))


def write_fleet_config(path: Path, opts: Options, metrics_port: int) -> None:
    path.write_text(f"""[sched]
interval_seconds = {opts.interval}
policy = "{opts.policy}"
[bus]
user = "fleet"
name = "bench-fleet"
signing_key_file = "fleet.key"
report_interval_seconds = {opts.report_interval}
[metrics]
listen = "127.0.0.1:{metrics_port}"
[log]
level = "warning"
""")


async def wait_for(predicate, timeout: float, what: str, run: Run, poll: float = 0.1) -> float:
    """Seconds until predicate() held; RuntimeError naming `what` after `timeout`."""
    started = time.monotonic()
    while not predicate():
        run.check_alive()
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(poll)
    return time.monotonic() - started


async def start_everything(run: Run, low_price: float) -> dict[str, Any]:
    opts, sites = run.opts, run.sites
    setup: dict[str, Any] = {}
    run.market = market_of(sites, opts.markets)
    run.api = PriceAPI(market_names(opts.markets), low_price)
    fleet_user, fleet_password = run.server.fleet_user
    await run.watch.start(run.server.url, fleet_user, fleet_password)

    key = new_signing_key()
    key_path = run.workdir / "fleet.key"
    key_path.write_bytes(signing_key_pem(key))
    os.chmod(key_path, 0o600)
    write_sites_file(run.workdir / "sites.toml", sites, opts.devices, run.api.url, run.market)
    metrics_port = free_port()
    write_fleet_config(run.workdir / "fleet.toml", opts, metrics_port)
    run.fleet_metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"

    progress(f"starting miner fleet ({len(sites)} sites, interval {opts.interval:g} s, policy {opts.policy})")
    env = dict(os.environ, PYTHONUNBUFFERED="1", GRIDMINER_BUS_PASSWORD=fleet_password)
    run.fleet_log = run.workdir / "fleet.log"
    with open(run.fleet_log, "wb") as log_file:
        profile = ["-m", "cProfile", "-o", str(Path(opts.profile_dir).resolve() / "fleet.prof")] \
            if opts.profile_dir else []
        run.fleet = await asyncio.create_subprocess_exec(
            sys.executable, *profile, "-m", "miner", "fleet", "-c", str(run.workdir / "fleet.toml"),
            "--sites", str(run.workdir / "sites.toml"), "--bus", run.server.url,
            stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=asyncio.subprocess.STDOUT, env=env, cwd=str(run.workdir))
    t0 = time.monotonic()
    # The fleet makes the buckets and writes every site's first desired state (run: the price is low).
    await wait_for(lambda: len(run.watch.desired) == len(sites), opts.timeout, "the fleet's first desired states", run)
    setup["fleet_first_writes_s"] = round(time.monotonic() - t0, 3)

    state_root = Path(tempfile.mkdtemp(prefix="fleet-bus-state-", dir=opts.state_dir or default_state_parent()))
    setup["state_dir_fs"] = filesystem_of(state_root)
    run.state_root = state_root
    n = opts.processes
    chunks = [sites[i * len(sites) // n:(i + 1) * len(sites) // n] for i in range(n)]
    progress(f"starting {n} site-agent process(es), {len(sites) * opts.devices} emulated devices")
    worker_env = dict(os.environ, PYTHONUNBUFFERED="1")
    worker_env.pop("GRIDMINER_BUS_PASSWORD", None)
    if opts.profile_dir:
        worker_env["FLEET_BUS_SITES_PROFILE"] = str(Path(opts.profile_dir).resolve() / "sites.prof")
    for i, chunk in enumerate(chunks):
        spec = {"url": run.server.url, "public_key": public_key_hex(key), "state_dir": str(state_root / f"p{i}"),
                "sites": [[s, run.server.site_user(s)[1]] for s in chunk], "devices": opts.devices,
                "apply_latency_s": opts.apply_latency, "read_latency_s": opts.read_latency, "jitter": opts.jitter,
                "seed": i + 1, "desired_ttl_seconds": 300.0, "report_interval_seconds": opts.report_interval}
        spec_path = run.workdir / f"sites-{i}.json"
        fd = os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(spec, f)
        worker = SitesProcess(i, spec_path, worker_env)
        run.workers.append(worker)
        run.worker_by_site.update((s, worker) for s in chunk)
        await worker.start()
    t0 = time.monotonic()
    await wait_for(lambda: all(w.ready.is_set() for w in run.workers), opts.timeout, "site agents connected", run)
    setup["agents_ready_s"] = round(time.monotonic() - t0, 3)
    progress(f"agents ready in {setup['agents_ready_s']:.1f} s; warm-up")
    # Warm-up: every site follows its first desired state (level 1) and acknowledged it.
    first = {s: run.watch.published(s, 1.0, 0.0) for s in sites}

    def warmed() -> bool:
        return all(first[s] is not None and run.applied_event(s, first[s][1]) is not None
                   and first[s][1] in run.watch.acks.get(s, {}) for s in sites)

    await wait_for(warmed, opts.timeout, "warm-up (every site applied its first desired state)", run)
    setup["warm_up_s"] = round(time.monotonic() - t0, 3)
    return setup


def default_state_parent() -> str | None:
    """tmpfs when there is one: the agents here share one disk and one event loop per
    process for their state files' fsync, where real sites each have their own."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def filesystem_of(path: Path) -> str:
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and str(path).startswith(parts[1].rstrip("/") + "/") and len(parts[1]) >= len(best):
                best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def step_seconds(samples: dict, phase: str) -> tuple[float, float]:
    """(sum, count) of the fleet's gridminer_sched_step_seconds{phase}."""
    labels = (("phase", phase),)
    return (samples.get(("gridminer_sched_step_seconds_sum", labels), 0.0),
            samples.get(("gridminer_sched_step_seconds_count", labels), 0.0))


async def fleet_samples(run: Run) -> dict:
    try:
        return await asyncio.to_thread(scrape, run.fleet_metrics_url)
    except OSError:
        return {}


async def idle_window(run: Run) -> dict[str, Any]:
    """Fleet CPU and bus traffic while no price changes (the fleet still polls and decides)."""
    seconds = run.opts.idle_seconds
    progress(f"idle window, {seconds:g} s")
    v0, cpu0, polls0, t0 = await asyncio.to_thread(run.varz), run.fleet_cpu(), run.api.polls, time.time()
    sites0, nats0 = run.sites_cpu(), run.nats_cpu()
    await asyncio.sleep(seconds)
    run.check_alive()
    v1, cpu1, polls1, t1 = await asyncio.to_thread(run.varz), run.fleet_cpu(), run.api.polls, time.time()
    sites1, nats1 = run.sites_cpu(), run.nats_cpu()
    rounds = polls1 - polls0
    dt = t1 - t0
    return {"seconds": round(dt, 3), "rounds": rounds,
            "fleet_cpu_s": round(cpu1 - cpu0, 3),
            "fleet_cpu_per_round_ms": round(1000 * (cpu1 - cpu0) / rounds, 1) if rounds else None,
            "site_processes_cpu_share": round((sites1 - sites0) / dt, 3),
            "nats_server_cpu_share": round((nats1 - nats0) / dt, 3) if nats0 is not None and nats1 is not None
            else None,
            "bus_in_msgs_per_s": round((v1["in_msgs"] - v0["in_msgs"]) / dt, 1),
            "bus_out_msgs_per_s": round((v1["out_msgs"] - v0["out_msgs"]) / dt, 1)}


def r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def stats(values: list[float]) -> dict[str, Any]:
    return {k: (r3(v) if k != "n" else v) for k, v in percentiles(values).items()}


async def one_round(run: Run, number: int, level: float, price: float) -> dict[str, Any]:
    opts, sites = run.opts, run.sites
    v0, fleet0, sites0, nats0 = await asyncio.to_thread(run.varz), run.fleet_cpu(), run.sites_cpu(), run.nats_cpu()
    m0 = await fleet_samples(run)
    polls0 = run.api.polls
    machine0 = cpu_times()
    progress(f"round {number}: price {price:.2f} USD/MWh, every site to level {level:g}")
    version, t_flip = run.api.flip(price)

    def done() -> bool:
        for s in sites:
            p = run.watch.published(s, level, t_flip)
            if p is None or run.applied_event(s, p[1]) is None or p[1] not in run.watch.acks.get(s, {}):
                return False
        return True

    timed_out = False
    try:
        await wait_for(done, opts.timeout, f"round {number}", run, poll=0.05)
    except RuntimeError:
        if not all(w.alive for w in run.workers) or run.fleet.returncode is not None:
            raise
        timed_out = True
    t_end = time.time()
    v1, fleet1, sites1, nats1 = await asyncio.to_thread(run.varz), run.fleet_cpu(), run.sites_cpu(), run.nats_cpu()
    m1 = await fleet_samples(run)
    polls1 = run.api.polls
    machine1 = cpu_times()
    served = run.api.served[version]

    device_from_flip, device_from_fetch, site_ack = [], [], []
    poll_delay, fleet_part, delivery, apply_part, ack_part = [], [], [], [], []
    published_times, devices_applied, sites_done = [], 0, 0
    for s in sites:
        p = run.watch.published(s, level, t_flip)
        if p is None:
            continue
        t_pub, revision = p
        published_times.append(t_pub)
        fetched = served.get(run.market[s])
        if fetched is not None:
            poll_delay.append(fetched - t_flip)
            fleet_part.append(t_pub - fetched)
        event = run.applied_event(s, revision)
        if event is None:
            continue
        times = [t for t in event["devices"] if t is not None and t >= t_flip]
        devices_applied += len(times)
        device_from_flip += [t - t_flip for t in times]
        if fetched is not None:
            device_from_fetch += [t - fetched for t in times]
        if event.get("received") is not None:
            delivery.append(event["received"] - t_pub)
            if times:
                apply_part.append(max(times) - event["received"])
        t_ack = run.watch.acks.get(s, {}).get(revision)
        if t_ack is not None:
            site_ack.append(t_ack - t_flip)
            if times:
                ack_part.append(t_ack - max(times))
            sites_done += 1
    fetch_times = sorted(served.values())
    window = max(1e-9, t_end - t_flip)
    phases = {}
    for phase in ("prices", "hashprice", "decide", "actuate"):
        s0, n0 = step_seconds(m0, phase)
        s1, n1 = step_seconds(m1, phase)
        phases[phase] = r3((s1 - s0) / (n1 - n0)) if n1 > n0 else None
    rounds = polls1 - polls0
    return {
        "round": number, "level": level, "price_usd_per_mwh": round(price, 2), "timed_out": timed_out,
        "devices_applied": devices_applied, "devices": len(sites) * opts.devices,
        "sites_acked": sites_done, "sites": len(sites),
        "device_applied_from_flip_s": stats(device_from_flip),
        "device_applied_from_fetch_s": stats(device_from_fetch),
        "site_ack_from_flip_s": stats(site_ack),
        "breakdown_s": {"poll_delay": stats(poll_delay), "fleet": stats(fleet_part), "delivery": stats(delivery),
                        "apply": stats(apply_part), "ack": stats(ack_part)},
        "fleet_round": {
            "feeds_fetched_first_to_last_s": r3(fetch_times[-1] - fetch_times[0]) if fetch_times else None,
            "publication_first_to_last_s": r3(max(published_times) - min(published_times)) if published_times else None,
            "step_phase_mean_s": phases, "rounds_in_window": rounds},
        "window_s": r3(window),
        "bus_in_msgs_per_s": round((v1["in_msgs"] - v0["in_msgs"]) / window, 1),
        "bus_out_msgs_per_s": round((v1["out_msgs"] - v0["out_msgs"]) / window, 1),
        "bus_in_msgs": v1["in_msgs"] - v0["in_msgs"], "bus_out_msgs": v1["out_msgs"] - v0["out_msgs"],
        "cpu_s": {"fleet": r3(fleet1 - fleet0), "site_processes": r3(sites1 - sites0),
                  "nats_server": r3(nats1 - nats0) if nats0 is not None and nats1 is not None else None},
        "fleet_cpu_per_round_ms": round(1000 * (fleet1 - fleet0) / rounds, 1) if rounds else None,
        "machine_busy_share": busy_share(machine0, machine1),
        "site_cpu_per_site_ms": round(1000 * (sites1 - sites0) / len(sites), 2),
    }


async def benchmark(opts: Options, server: Any) -> dict[str, Any]:
    """Run against a started miner.testing.nats.NatsServer made with a user for every site
    and a monitor_port; everything else is started here and stopped before returning."""
    opts.markets = max(1, min(opts.markets, opts.sites))
    sites = site_names(opts.sites)
    result: dict[str, Any] = {"options": asdict(opts), "machine": machine()}
    breakeven = breakeven_usd_per_mwh(HASHPRICE, POOL_FEE, EFFICIENCY_J_PER_TH)
    low, high = breakeven * 0.5, breakeven * 2.0
    result["breakeven_usd_per_mwh"] = round(breakeven, 2)
    result["devices_kind"] = ("in-process Device-protocol emulators (fleet_bus_sites.EmulatedDevice): "
                              f"apply {opts.apply_latency * 1000:g} ms, read {opts.read_latency * 1000:g} ms, "
                              f"+-{opts.jitter * 100:g} %")
    result["nats_server"] = (await asyncio.to_thread(http_json, monitor_url(server) + "/varz")).get("version")
    with tempfile.TemporaryDirectory(prefix="fleet-bus-bench-") as tmp:
        run = Run(opts, sites, Path(tmp), server=server)
        try:
            result["setup"] = await start_everything(run, low)
            result["idle"] = await idle_window(run)
            rounds = []
            level = 1.0
            for number in range(1, opts.rounds + 1):
                level = 0.0 if level > 0 else 1.0
                rounds.append(await one_round(run, number, level, high if level == 0.0 else low))
                # Calm before the next flip: the fleet has polled again and the bus is quiet.
                polls = run.api.polls
                await wait_for(lambda: run.api.polls >= polls + 2, opts.timeout, "the fleet's next rounds", run)
            result["rounds"] = rounds
            result["idle_after"] = await idle_window(run) if opts.rounds else None
        finally:
            await shutdown(run)
    result["machine"]["load_after"] = list(os.getloadavg())
    result["summary"] = summary(result)
    return result


async def shutdown(run: Run) -> None:
    """Every process this run started, stopped (SIGTERM, then SIGKILL), the API closed."""
    progress("stopping")
    stops = [w.stop() for w in run.workers]
    if run.fleet is not None:
        stops.append(stop_process(run.fleet))
    await asyncio.gather(*stops, return_exceptions=True)
    await run.watch.close()
    if run.api is not None:
        run.api.close()
    if run.state_root is not None:
        import shutil

        shutil.rmtree(run.state_root, ignore_errors=True)


def summary(result: dict[str, Any]) -> dict[str, Any]:
    rounds = result.get("rounds") or []
    worst = max((r["device_applied_from_flip_s"]["p99"] or math.inf for r in rounds), default=None)
    return {"device_p99_from_flip_s_worst_round": worst,
            "target_p99_s": TARGET_P99_S,
            "met": worst is not None and worst < TARGET_P99_S and all(not r["timed_out"] for r in rounds)}


# -- output ---------------------------------------------------------------------------------

def fmt(s: dict[str, Any]) -> str:
    if not s["n"]:
        return "(none)"
    return f"p50 {s['p50']:.3f}  p99 {s['p99']:.3f}  max {s['max']:.3f} s"


def render(result: dict[str, Any]) -> str:
    o, m = result["options"], result["machine"]
    lines = [
        f"fleet bus: {o['sites']:,} sites x {o['devices']} devices = {o['sites'] * o['devices']:,} devices "
        f"in {o['markets']} market(s), "
        f"{o['processes']} site-agent process(es), policy {o['policy']}, fleet interval {o['interval']:g} s",
        f"machine: {m['cpu_model']}, {m['cores']} cores; load average before "
        f"{' '.join(f'{x:.2f}' for x in m['load_before'])}, after "
        f"{' '.join(f'{x:.2f}' for x in m.get('load_after', []))} (a shared machine: other work ran too)",
        f"devices: {result['devices_kind']}",
        f"bus: nats-server {result['nats_server']}, a user per site; breakeven {result['breakeven_usd_per_mwh']} USD/MWh",
    ]
    s = result.get("setup", {})
    if s:
        lines.append(f"setup: fleet's first desired states {s['fleet_first_writes_s']} s; agents connected and "
                     f"resynced {s['agents_ready_s']} s; warm-up (all applied level 1) {s['warm_up_s']} s; "
                     f"state files on {s['state_dir_fs']}")
    for key, title in (("idle", "idle before"), ("idle_after", "idle after")):
        i = result.get(key)
        if i:
            lines.append(f"{title} ({i['seconds']:.0f} s, no price change): fleet {i['rounds']} rounds, "
                         f"{i['fleet_cpu_per_round_ms']} ms CPU per round; site processes "
                         f"{i['site_processes_cpu_share']:.2f} cores (reports every {o['report_interval']:g} s), "
                         f"nats-server {i['nats_server_cpu_share']} cores; bus in {i['bus_in_msgs_per_s']} msg/s, "
                         f"out {i['bus_out_msgs_per_s']} msg/s")
    for r in result.get("rounds", []):
        b, f = r["breakdown_s"], r["fleet_round"]
        ph = f["step_phase_mean_s"]
        lines += [
            "",
            f"round {r['round']}: price -> {r['price_usd_per_mwh']} USD/MWh, every site to level {r['level']:.0f}"
            + ("  (TIMED OUT)" if r["timed_out"] else ""),
            f"  devices applied {r['devices_applied']:,} of {r['devices']:,}; sites acked {r['sites_acked']:,} of {r['sites']:,}",
            f"  price change -> device applied   {fmt(r['device_applied_from_flip_s'])}",
            f"  fleet fetched -> device applied  {fmt(r['device_applied_from_fetch_s'])}",
            f"  price change -> site ack         {fmt(r['site_ack_from_flip_s'])}",
            "  where the time goes, per site:",
            f"    feed poll delay (change -> fleet fetched it)   {fmt(b['poll_delay'])}",
            f"    fleet (fetched -> desired state on the bus)     {fmt(b['fleet'])}",
            f"    delivery (on the bus -> agent decoded it)       {fmt(b['delivery'])}",
            f"    apply (decoded -> last device applied)          {fmt(b['apply'])}",
            f"    ack (last device -> read back, report on bus)   {fmt(b['ack'])}",
            f"  fleet round: the new price fetched from every market over {f['feeds_fetched_first_to_last_s']} s "
            f"(first->last); desired states published over {f['publication_first_to_last_s']} s (first->last)",
            f"  fleet step phases (mean over {f['rounds_in_window']} rounds, fleet's gridminer_sched_step_seconds): "
            + ", ".join(f"{k} {v} s" for k, v in ph.items()),
            f"  bus (nats-server /varz over {r['window_s']} s): in {r['bus_in_msgs_per_s']:,} msg/s, "
            f"out {r['bus_out_msgs_per_s']:,} msg/s ({r['bus_in_msgs']:,} in, {r['bus_out_msgs']:,} out)",
            f"  CPU: fleet {r['cpu_s']['fleet']} s ({r['fleet_cpu_per_round_ms']} ms per round), site processes "
            f"{r['cpu_s']['site_processes']} s ({r['site_cpu_per_site_ms']} ms per site), nats-server "
            f"{r['cpu_s']['nats_server']} s; the machine's cores were {100 * (r['machine_busy_share'] or 0):.0f} % "
            f"busy over the window (every process, other users' too)",
        ]
    sm = result.get("summary")
    if sm and sm["device_p99_from_flip_s_worst_round"] is not None:
        lines += ["", f"p99 price change -> device applied (worst round): "
                      f"{sm['device_p99_from_flip_s_worst_round']:.3f} s; target < {sm['target_p99_s']:g} s: "
                      f"{'met' if sm['met'] else 'NOT met'}"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[Options, bool]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = Options()
    p.add_argument("--sites", type=int, default=d.sites)
    p.add_argument("--markets", type=int, default=d.markets,
                   help="price APIs the sites are spread over (sites in one market share its feed; "
                        "--markets = --sites gives every site its own)")
    p.add_argument("--devices", type=int, default=d.devices, help="emulated devices per site")
    p.add_argument("--processes", type=int, default=d.processes, help="site-agent processes")
    p.add_argument("--rounds", type=int, default=d.rounds, help="price changes measured (alternating off/on)")
    p.add_argument("--policy", default=d.policy, choices=("always_on", "threshold", "hysteresis", "gridminer"))
    p.add_argument("--interval", type=float, default=d.interval, help="the fleet's [sched] interval_seconds")
    p.add_argument("--apply-latency", type=float, default=d.apply_latency, help="seconds per device apply")
    p.add_argument("--read-latency", type=float, default=d.read_latency, help="seconds per device read")
    p.add_argument("--jitter", type=float, default=d.jitter, help="latency varies uniformly by +- this fraction")
    p.add_argument("--report-interval", type=float, default=d.report_interval, help="sites' report_interval_seconds")
    p.add_argument("--idle-seconds", type=float, default=d.idle_seconds, help="idle window for the fleet's per-round CPU")
    p.add_argument("--timeout", type=float, default=d.timeout, help="seconds any phase may take")
    p.add_argument("--state-dir", default=None, help="parent of the agents' state files (default tmpfs when present)")
    p.add_argument("--profile", metavar="DIR", help="cProfile the fleet (DIR/fleet.prof) and the site processes "
                                                 "(DIR/sites.prof.PID); read them with python -m pstats")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    a = p.parse_args(argv)
    if a.sites < 1 or a.devices < 1 or a.processes < 1 or a.markets < 1 or a.rounds < 0 or a.interval <= 0:
        p.error("--sites, --markets, --devices, --processes must be >= 1, --rounds >= 0, --interval > 0")
    opts = Options(sites=a.sites, markets=min(a.markets, a.sites), devices=a.devices, processes=min(a.processes, a.sites), rounds=a.rounds,
                   policy=a.policy, interval=a.interval, apply_latency=a.apply_latency, read_latency=a.read_latency,
                   jitter=a.jitter, report_interval=a.report_interval, idle_seconds=a.idle_seconds,
                   timeout=a.timeout, state_dir=a.state_dir, profile_dir=a.profile)
    return opts, a.json


# Set by SIGINT/SIGTERM: a child that stopped on the same Ctrl-C is not the failure to report.
INTERRUPTED: list[bool] = []


async def amain(opts: Options) -> dict[str, Any]:
    from miner.testing.nats import NatsServer

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def interrupt() -> None:
        INTERRUPTED.append(True)
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    server = NatsServer(site_names(opts.sites), monitor_port=free_port())
    progress(f"starting nats-server with {opts.sites} site users")
    try:
        await asyncio.to_thread(server.start)
        return await benchmark(opts, server)
    finally:
        await asyncio.to_thread(server.close)


def main(argv: list[str] | None = None) -> int:
    opts, as_json = parse_args(argv)
    if opts.profile_dir:
        Path(opts.profile_dir).mkdir(parents=True, exist_ok=True)
    try:
        result = asyncio.run(amain(opts))
    except (asyncio.CancelledError, RuntimeError) as e:
        if INTERRUPTED or isinstance(e, asyncio.CancelledError):
            print("fleet_bus: interrupted; every process it started is stopped", file=sys.stderr)
            return 130
        print(f"fleet_bus: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1) if as_json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
