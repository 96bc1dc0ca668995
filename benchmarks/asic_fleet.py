"""Emulated ASIC fleet driven through kind = "asic" (asic-rs): identify, read, curtail, resume.

    .venv/bin/python benchmarks/asic_fleet.py [--miners 1000] [--concurrency 0] [--timeout 60] [--json]

The miners run in a second process (python -m miner.testing.asic_emulators: one asyncio
loop, each miner on its own 127.x.y.z address on ports 80/4028, needs root or
CAP_NET_BIND_SERVICE), equal shares of LuxOS, Braiins OS, VNish, Whatsminer, ePIC and stock
Antminer. This process builds one AsicLibDevice per miner and runs every device's call at
once (or --concurrency at a time), round by round:

    identify+read   the first read (asic-rs identification, then get_data)
    apply 0         curtail every miner (each firmware's pause: LuxOS curtail sleep, ...)
    read            read every miner (all should show not hashing)
    apply 1         resume every miner

For each round: wall time, this process's CPU time, per-call latency p50/p99, errors.
It prints figures and is not a pass/fail test; the emulator process is always stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from miner.devices.asiclib import AsicLibDevice

# the families that can be curtailed, with their emulators' default passwords
FAMILY_PASSWORD = {"luxos": None, "braiins": "root", "vnish": "admin", "whatsminer": "super",
                   "epic": "letmein", "antminer": "root"}


def start_fleet(miners: int) -> tuple[subprocess.Popen[str], list[tuple[str, str]]]:
    n = len(FAMILY_PASSWORD)
    per = {f: miners // n + (1 if i < miners % n else 0) for i, f in enumerate(FAMILY_PASSWORD)}
    args = [sys.executable, "-m", "miner.testing.asic_emulators"] + \
        [a for f, n in per.items() if n for a in (f"--{f}", str(n))]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    found: list[tuple[str, str]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        item = json.loads(line)
        if "ready" in item:
            return proc, found
        found.append((item["family"], item["ip"]))
    raise SystemExit(f"emulator process exited ({proc.wait()}) before it was ready")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def round_of(name: str, devices: list[AsicLibDevice], call: Callable[[AsicLibDevice], Awaitable[Any]],
                   concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    gate = asyncio.Semaphore(concurrency or len(devices))

    async def timed(d: AsicLibDevice) -> Any:
        async with gate:
            t = time.perf_counter()
            try:
                return await call(d)
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
                return None
            finally:
                latencies.append(time.perf_counter() - t)

    cpu, wall = time.process_time(), time.perf_counter()
    results = await asyncio.gather(*(timed(d) for d in devices))
    out = {"round": name, "devices": len(devices), "wall_s": time.perf_counter() - wall,
           "cpu_s": time.process_time() - cpu, "p50_s": statistics.median(latencies),
           "p99_s": percentile(latencies, 0.99), "errors": len(errors), "first_error": errors[:1]}
    readings = [r for r in results if r is not None and hasattr(r, "hashing")]
    if readings:
        out["hashing"] = sum(r.hashing for r in readings)
    return out


async def bench(fleet: list[tuple[str, str]], timeout: float, concurrency: int) -> list[dict[str, Any]]:
    devices = [AsicLibDevice(f"{family}-{i}", ip, password=FAMILY_PASSWORD[family], timeout=timeout)
               for i, (family, ip) in enumerate(fleet)]
    rounds = [("identify+read", lambda d: d.read()), ("apply 0", lambda d: d.apply(0.0)),
              ("read", lambda d: d.read()), ("apply 1", lambda d: d.apply(1.0)), ("read", lambda d: d.read())]
    return [await round_of(name, devices, call, concurrency) for name, call in rounds]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--miners", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=0, help="calls in flight at once (0: all)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-call timeout, seconds")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    t0 = time.perf_counter()
    proc, fleet = start_fleet(args.miners)
    started = time.perf_counter() - t0
    try:
        rounds = asyncio.run(bench(fleet, args.timeout, args.concurrency))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    if args.json:
        print(json.dumps({"miners": len(fleet), "concurrency": args.concurrency, "emulators_start_s": started,
                          "rounds": rounds, "cpus": os.cpu_count()}, indent=2))
        return 0
    print(f"{len(fleet)} emulated miners ({', '.join(FAMILY_PASSWORD)}) up in {started:.2f} s; "
          f"{os.cpu_count()} CPUs, emulators in a second process; concurrency {args.concurrency or 'all'}")
    print(f"{'round':<14} {'wall s':>8} {'CPU s':>7} {'p50 s':>7} {'p99 s':>7} {'errors':>6} {'hashing':>7}")
    for r in rounds:
        print(f"{r['round']:<14} {r['wall_s']:8.2f} {r['cpu_s']:7.2f} {r['p50_s']:7.3f} {r['p99_s']:7.3f} "
              f"{r['errors']:6d} {r.get('hashing', ''):>7}")
        if r["first_error"]:
            print(f"  first error: {r['first_error'][0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
