"""The fleet scheduler's side of the bus at scale: N sites on a real nats-server.

    .venv/bin/python benchmarks/fleet_rounds.py [--sites 1000] [--rounds 5] [--json]

One process holds the lease and runs the real Scheduler (policy "gridminer", a static
price per site) with the BusActuator, as `miner fleet` does; every site has a fresh
report in gridminer_reported (written beforehand, as site agents would). Per round it
prints wall and CPU seconds of the step, bus messages in and out of the server (from
nats-server's /varz) and per second, and, for rounds where the price crosses breakeven
at every site, when each site's desired state was stored after the step began
(p50/p99/max). Rounds alternate: every site's price crosses (N writes + N report reads)
and no change (N report reads only). Site agents and devices are not part of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from miner.config import BusConfig  # noqa: E402
from miner.fleet import bus as busmod  # noqa: E402
from miner.fleet.bus import Bus  # noqa: E402
from miner.fleet.lease import Lease  # noqa: E402
from miner.fleet.records import SiteReport, encode_report, new_signing_key  # noqa: E402
from miner.fleet.scheduler import BusActuator  # noqa: E402
from miner.metrics import Metrics  # noqa: E402
from miner.node.regtest import free_port  # noqa: E402
from miner.sched.feeds import StaticFeed  # noqa: E402
from miner.sched.policy import make_policy  # noqa: E402
from miner.sched.scheduler import Scheduler, StaticHashprice  # noqa: E402
from miner.sched.sites import parse_sites  # noqa: E402
from miner.testing.nats import NatsServer  # noqa: E402

CHEAP, DEAR = 20.0, 300.0    # USD/MWh either side of the 102 USD/MWh breakeven


def fleet_of(n: int):
    doc = {"economics": {"hashprice_usd_per_th_day": 0.05, "pool_fee": 0.02},
           "site": [{"name": f"site-{i:05d}", "capacity_mw": 0.2, "efficiency_j_per_th": 20.0,
                     "feed": {"kind": "static", "price": CHEAP}} for i in range(n)]}
    return parse_sites(doc, base_dir=Path("."))


def varz(port: int) -> dict:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/varz", timeout=10).read())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def bench(server: NatsServer, n: int, rounds: int) -> list[dict]:
    name, password = server.fleet_user
    bus = Bus(BusConfig(url=server.url, user=name), environ={busmod.PASSWORD_ENV: password})
    bus.request_timeout = 30.0
    await bus.connect()
    desired, reported, lease_kv = await bus.fleet_buckets(lease_ttl_seconds=60)
    fleet = fleet_of(n)
    now = datetime.now(timezone.utc)
    await asyncio.gather(*(reported.put(s.name, encode_report(SiteReport(
        s.name, now, True, "following", None, 1.0, 1.0, True, 1e13, 200_000.0))) for s in fleet.sites))
    lease = Lease(lease_kv, "bench", 60)
    assert await lease.step()
    metrics = Metrics()
    actuator = BusActuator([s.name for s in fleet.sites], desired_kv=desired, reported_kv=reported, lease=lease,
                           signing_key=new_signing_key(), metrics=metrics, desired_ttl_seconds=300,
                           report_interval_seconds=3600, leader_name="bench")
    stored: dict[str, float] = {}
    put = desired.put

    async def timed_put(key, value):
        revision = await put(key, value)
        stored[key] = time.perf_counter()
        return revision

    desired.put = timed_put
    feeds = {s.name: StaticFeed(CHEAP) for s in fleet.sites}
    scheduler = Scheduler(fleet, make_policy(fleet, "gridminer"), feeds, actuator=actuator, metrics=metrics,
                          hashprice_source=StaticHashprice(0.05))
    actuator.hashprice_of = lambda: scheduler.hashprice
    results = []
    price = CHEAP
    for r in range(rounds + 1):
        change = r % 2 == 0          # round 0: the first write of every site
        if change and r > 0:
            price = DEAR if price == CHEAP else CHEAP
            for feed in feeds.values():
                feed.price = price
        stored.clear()
        before = varz(server.monitor_port)
        cpu, wall = time.process_time(), time.perf_counter()
        await scheduler.step(datetime.now(timezone.utc))
        wall_s, cpu_s = time.perf_counter() - wall, time.process_time() - cpu
        after = varz(server.monitor_port)
        msgs = (after["in_msgs"] - before["in_msgs"]) + (after["out_msgs"] - before["out_msgs"])
        row = {"round": r, "kind": "first" if r == 0 else "price crosses" if change else "no change",
               "wall_s": wall_s, "cpu_s": cpu_s, "writes": len(stored), "bus_msgs": msgs,
               "bus_msgs_per_s": msgs / wall_s}
        if stored:
            delays = [t - wall for t in stored.values()]
            row.update(stored_p50_s=percentile(delays, 0.5), stored_p99_s=percentile(delays, 0.99),
                       stored_max_s=max(delays))
        results.append(row)
    await bus.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with NatsServer(monitor_port=free_port()) as server:
        results = asyncio.run(bench(server, args.sites, args.rounds))
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(f"fleet scheduler, {args.sites} sites, one nats-server {server.binary} on loopback, cpus {os.cpu_count()}")
    for row in results:
        line = (f"round {row['round']} ({row['kind']}): step {row['wall_s']:.3f} s wall, {row['cpu_s']:.3f} s CPU; "
                f"{row['writes']} desired writes; {row['bus_msgs']} bus messages ({row['bus_msgs_per_s']:.0f}/s)")
        if "stored_p50_s" in row:
            line += (f"; stored after step start p50 {row['stored_p50_s']:.3f} s, p99 {row['stored_p99_s']:.3f} s, "
                     f"max {row['stored_max_s']:.3f} s")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
