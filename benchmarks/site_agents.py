"""Site agents at scale: N sites x D emulated devices on a real nats-server.

    .venv/bin/python benchmarks/site_agents.py [--sites 1000] [--devices 50] [--procs 4] [--rounds 4]

K worker processes each run N/K real SiteAgents (miner.fleet.site), each with its own
NATS connection and credentials (a user per site, as deploy/nats/nats-server.conf has
them) and D in-memory devices behind the real actuator (retry, read-back). This process
plays the leader: per round it signs and writes every site's desired state (the level
flips 1 -> 0 -> 1 ..., as a price crossing breakeven everywhere would make it) and
watches gridminer_reported for each site's ack with every device applied. It prints, per
round, from the first write to each site's ack: p50, p99, max; bus messages and bytes in
and out of the server (nats-server /varz), and the worker processes' CPU seconds. The
fleet scheduler's own step (prices, policy, writes) is benchmarks/fleet_rounds.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from miner.config import BusConfig  # noqa: E402
from miner.devices.model import DeviceReading  # noqa: E402
from miner.fleet import bus as busmod  # noqa: E402
from miner.fleet import records  # noqa: E402
from miner.fleet.bus import Bus  # noqa: E402
from miner.node.regtest import free_port  # noqa: E402


def site_name(i: int) -> str:
    return f"site-{i:05d}"


class EmulatedDevice:
    """A rig that obeys after `latency` seconds (its control API's round trip)."""

    def __init__(self, name: str, latency: float) -> None:
        self.name, self.latency, self.level = name, latency, 1.0

    async def apply(self, level: float) -> None:
        await asyncio.sleep(self.latency)
        self.level = level

    async def read(self) -> DeviceReading:
        await asyncio.sleep(self.latency)
        return DeviceReading(self.level > 0, 1.0e14 * self.level, 3250.0 * self.level, self.level)


# -- a worker process: many site agents -------------------------------------------------------

async def run_worker(args) -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)
    from miner.fleet.site import SiteAgent, SiteDevices
    from miner.devices.actuator import RetryPolicy
    from miner.metrics import Metrics

    secrets = json.loads(Path(args.secrets).read_text())
    public = records.load_public_key(secrets["public_key"])
    agents = []
    for i in range(args.first, args.first + args.count):
        site = site_name(i)
        bus = Bus(BusConfig(url=args.url, user=site, name=f"bench-{site}"), site=site,
                  environ={busmod.PASSWORD_ENV: secrets["passwords"][site]})
        metrics = Metrics()
        devices = SiteDevices(site, [EmulatedDevice(f"d{j:02d}", args.latency) for j in range(args.devices)],
                              metrics=metrics, retry=RetryPolicy(tries=1))
        agents.append(SiteAgent(site, bus=bus, devices=devices, fail_safe="hold", desired_ttl_seconds=600,
                                report_interval_seconds=600, state_dir=Path(args.state) / site, metrics=metrics,
                                decode=lambda data, now, s=site: records.decode_desired(data, site=s, public_key=public,
                                                                                         now=now)))
    tasks = [asyncio.create_task(a.run()) for a in agents]
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)   # until the parent closes stdin
    for a in agents:
        a.stop()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- the leader and the measurement -----------------------------------------------------------

def varz(port: int) -> dict:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/varz", timeout=10).read())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def lead(args, server, key, workers) -> list[dict]:
    fleet = Bus(BusConfig(url=server.url, user="fleet", name="bench-leader"),
                environ={busmod.PASSWORD_ENV: server.fleet_user[1]})
    await fleet.connect()
    desired, reported, _ = await fleet.fleet_buckets(15.0)
    sites = [site_name(i) for i in range(args.sites)]
    acked: dict[str, tuple[int, float]] = {}
    seen_report: set[str] = set()

    async def on_report(msg) -> None:
        try:
            report = records.decode_report(msg.data)
        except records.RecordError:
            return
        seen_report.add(report.site)
        ack = report.ack
        if ack is not None and ack.outcome == "applied" and len(report.devices) == args.devices:
            acked[report.site] = (ack.revision, time.monotonic())

    await fleet.nc.subscribe("$KV.gridminer_reported.>", cb=on_report)
    deadline = time.monotonic() + 600
    while len(seen_report) < len(sites):
        assert time.monotonic() < deadline, f"only {len(seen_report)} of {len(sites)} sites reported"
        await asyncio.sleep(0.2)
    results = []
    level = 1.0
    for n in range(args.rounds):
        level = 0.0 if level > 0 else 1.0
        v0, cpu0 = varz(server.monitor_port), sum(cpu_seconds(w.pid) for w in workers)
        t0 = time.monotonic()
        revisions = {}
        issued = datetime.now(timezone.utc)
        for site in sites:
            state = records.make_desired(site, epoch=1, seq=n + 1, level=level,
                                         reason="price_below_breakeven" if level > 0 else "price_above_breakeven",
                                         issued_at=issued, ttl_seconds=600, hashprice=0.05, leader="bench")
            revisions[site] = state.revision
            await desired.put(site, records.encode_desired(state, key))
        written = time.monotonic() - t0
        while sum(1 for s in sites if acked.get(s, (0, 0))[0] == revisions[s]) < len(sites):
            assert time.monotonic() - t0 < 600, "not every site acknowledged"
            await asyncio.sleep(0.05)
        latencies = [acked[s][1] - t0 for s in sites]
        v1, cpu1 = varz(server.monitor_port), sum(cpu_seconds(w.pid) for w in workers)
        span = max(latencies)
        results.append({"round": n + 1, "level": level, "sites": len(sites), "devices": len(sites) * args.devices,
                        "writes_s": written, "p50_s": percentile(latencies, 0.5), "p99_s": percentile(latencies, 0.99),
                        "max_s": span, "msgs_in": v1["in_msgs"] - v0["in_msgs"],
                        "msgs_out": v1["out_msgs"] - v0["out_msgs"],
                        "bytes_in": v1["in_bytes"] - v0["in_bytes"], "bytes_out": v1["out_bytes"] - v0["out_bytes"],
                        "msgs_per_s": (v1["in_msgs"] - v0["in_msgs"] + v1["out_msgs"] - v0["out_msgs"]) / span,
                        "agents_cpu_s": cpu1 - cpu0})
        await asyncio.sleep(1.0)   # let the round's last reports drain before the next one
    await fleet.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--procs", type=int, default=4, help="site-agent worker processes")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.005, help="each device command's round trip, s")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("url", "secrets", "state"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(run_worker(args))
        return 0

    from miner.testing.nats import NatsServer

    key = records.new_signing_key()
    sites = [site_name(i) for i in range(args.sites)]
    with tempfile.TemporaryDirectory(prefix="gridminer-site-bench-") as tmp, \
            NatsServer(sites, monitor_port=free_port()) as server:
        secrets = Path(tmp) / "secrets.json"
        secrets.write_text(json.dumps({"public_key": records.public_key_hex(key),
                                       "passwords": {s: server.site_user(s)[1] for s in sites}}))
        os.chmod(secrets, 0o600)
        per = -(-args.sites // args.procs)
        workers = []
        t_start = time.monotonic()
        try:
            for first in range(0, args.sites, per):
                workers.append(subprocess.Popen(
                    [sys.executable, __file__, "--worker", "--url", server.url, "--secrets", str(secrets),
                     "--state", str(Path(tmp) / "state"), "--first", str(first),
                     "--count", str(min(per, args.sites - first)), "--devices", str(args.devices),
                     "--latency", str(args.latency)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            for w in workers:
                assert w.stdout.readline().strip() == "ready", "a worker did not start"
            results = asyncio.run(lead(args, server, key, workers))
            setup = time.monotonic() - t_start
        finally:
            for w in workers:
                if w.stdin:
                    w.stdin.close()
            for w in workers:
                try:
                    w.wait(30)
                except subprocess.TimeoutExpired:
                    w.kill()
    if args.json:
        print(json.dumps({"setup_s": setup, "rounds": results}))
        return 0
    print(f"{args.sites} sites x {args.devices} emulated devices ({args.latency * 1000:g} ms per command), "
          f"{len(workers)} site-agent processes, one NATS connection per site")
    print(f"{'round':>5} {'level':>5} {'writes s':>8} {'p50 s':>7} {'p99 s':>7} {'max s':>7} "
          f"{'msgs in':>8} {'msgs out':>8} {'msgs/s':>8} {'agents CPU s':>12}")
    for r in results:
        print(f"{r['round']:>5} {r['level']:>5.1f} {r['writes_s']:>8.2f} {r['p50_s']:>7.2f} {r['p99_s']:>7.2f} "
              f"{r['max_s']:>7.2f} {r['msgs_in']:>8} {r['msgs_out']:>8} {r['msgs_per_s']:>8.0f} "
              f"{r['agents_cpu_s']:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
