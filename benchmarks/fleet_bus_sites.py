"""Many site agents in one process, for benchmarks/fleet_bus.py: each site a real
miner.fleet.site.SiteAgent with its own NATS connection and its own site user, its
devices emulated in this process.

    python benchmarks/fleet_bus_sites.py SPEC.json

SPEC.json (written 0600 by fleet_bus.py; the site passwords are in it, never in argv):
    {"url": "nats://127.0.0.1:PORT", "public_key": "<hex>", "state_dir": "...",
     "sites": [["site-0000", "<password>"], ...], "devices": 50,
     "apply_latency_s": 0.05, "read_latency_s": 0.02, "jitter": 0.5, "seed": 1,
     "desired_ttl_seconds": 300, "report_interval_seconds": 15}

Emulated device: the miner.devices.model.Device protocol in memory; apply(level) and
read() each sleep their latency (uniform within +-jitter of it, as a LAN round trip to
a rig's control API varies) and apply records time.time() when the level took. The
sleeps of all of a process's devices end on a shared millisecond grid (LatencyWheel:
one loop timer per millisecond, not one per command), so the emulators cost this
process little beside the site agents they stand in for.

stdout, one JSON object a line:
    {"event": "ready", "sites": N, "seconds": S}          every agent connected and resynced
    {"event": "applied", "site": S, "revision": R, "level": L, "received": T,
     "started": T, "done": T, "devices": [T, ...]}         a site applied a new revision
                                                           (devices: each one's apply time;
                                                           null for a device already at L)
    {"event": "cpu", "user": S, "system": S}                on "cpu" from stdin
stdin: "cpu" asks for the process CPU time; "stop" or end of file stops every agent (so
does SIGTERM or SIGINT) and the process exits within a few seconds.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import os
import random
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from miner.config import BusConfig
from miner.devices.model import DeviceReading
from miner.fleet.bus import PASSWORD_ENV, Bus
from miner.fleet.records import decode_desired, load_public_key
from miner.fleet.site import SiteAgent, SiteDevices
from miner.metrics import Metrics

# Emulated rig: 110 TH/s at 3250 W at level 1 (an S19-class ASIC).
HASHRATE_HS = 110e12
POWER_W = 3250.0
# How long the agents may take to connect and resync (seconds; 1,000 connections on a
# loaded machine).
READY_TIMEOUT_S = 600.0


class LatencyWheel:
    """Waits for many emulated round trips, rounded up to the next `resolution` seconds
    and woken together: one loop timer per slot instead of one per command (thousands of
    timers in the loop's heap would cost this process more than the agents it measures)."""

    def __init__(self, resolution: float = 0.001) -> None:
        self.resolution = resolution
        self._slots: dict[int, list[asyncio.Future]] = {}

    def sleep(self, seconds: float) -> asyncio.Future:
        """A future done `seconds` from now (up to one resolution later); cancel it to stop waiting."""
        loop = asyncio.get_running_loop()
        slot = math.ceil((loop.time() + seconds) / self.resolution)
        future = loop.create_future()
        waiting = self._slots.get(slot)
        if waiting is None:
            waiting = self._slots[slot] = []
            loop.call_at(slot * self.resolution, self._wake, slot)
        waiting.append(future)
        return future

    def _wake(self, slot: int) -> None:
        for future in self._slots.pop(slot, ()):
            if not future.done():
                future.set_result(None)


class EmulatedDevice:
    """A rig behind its control API: a level, and a round trip per command."""

    def __init__(self, name: str, *, apply_latency: float, read_latency: float, jitter: float,
                 rng: random.Random, wheel: LatencyWheel | None = None) -> None:
        self.name = name
        self.apply_latency, self.read_latency, self.jitter, self.rng = apply_latency, read_latency, jitter, rng
        self.wheel = wheel if wheel is not None else LatencyWheel()
        self.level = 0.0
        self.applied_at: float | None = None

    def _delay(self, base: float) -> float:
        return base * (1.0 + self.jitter * (2.0 * self.rng.random() - 1.0)) if base > 0 else 0.0

    async def _round_trip(self, base: float) -> None:
        delay = self._delay(base)
        await (self.wheel.sleep(delay) if delay > 0 else asyncio.sleep(0))

    async def apply(self, level: float) -> None:
        await self._round_trip(self.apply_latency)
        self.level = level
        self.applied_at = time.time()

    async def read(self) -> DeviceReading:
        await self._round_trip(self.read_latency)
        return DeviceReading(self.level > 0, HASHRATE_HS * self.level, POWER_W * self.level if self.level > 0 else 15.0,
                             self.level)


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class BenchSite:
    """One site: its agent, its emulated devices, and what it saw when."""

    def __init__(self, site: str, password: str, spec: dict[str, Any], public_key: Any, metrics: Metrics,
                 state_dir: Path, rng: random.Random, wheel: LatencyWheel) -> None:
        self.site = site
        self.emulators = [EmulatedDevice(f"rig-{i:03d}", apply_latency=spec["apply_latency_s"],
                                         read_latency=spec["read_latency_s"], jitter=spec["jitter"], rng=rng,
                                         wheel=wheel)
                          for i in range(spec["devices"])]
        self.received: dict[int, float] = {}     # revision -> when its record first arrived
        self.last_emitted: int | None = None
        settings = BusConfig(url=spec["url"], user=site, name=f"bench-{site}")
        bus = Bus(settings, site=site, environ={PASSWORD_ENV: password})
        bench = self

        class Devices(SiteDevices):
            async def apply(self, level: float):
                started = time.time()
                applied = await super().apply(level)
                bench.applied(level, started)
                return applied

        def decode(data: bytes, now: datetime):
            record = decode_desired(data, site=site, public_key=public_key, now=now)
            self.received.setdefault(record.revision, time.time())
            return record

        self.agent = SiteAgent(site, bus=bus, decode=decode, devices=Devices(site, self.emulators, metrics=metrics),
                               fail_safe="hold", desired_ttl_seconds=spec["desired_ttl_seconds"],
                               report_interval_seconds=spec["report_interval_seconds"], state_dir=state_dir,
                               metrics=metrics)

    def applied(self, level: float, started: float) -> None:
        """After an apply: one event per new revision followed (periodic re-applies of the
        level in force are not events)."""
        d = self.agent.follower.desired
        if d is None or d.revision == self.last_emitted or d.level != level:
            return
        self.last_emitted = d.revision
        emit({"event": "applied", "site": self.site, "revision": d.revision, "level": level,
              "received": self.received.get(d.revision), "started": started, "done": time.time(),
              "devices": [e.applied_at if e.level == level else None for e in self.emulators]})
        self.received = {r: t for r, t in self.received.items() if r > d.revision}


async def run(spec: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    public_key = load_public_key(spec["public_key"])
    metrics = Metrics()
    state_dir = Path(spec["state_dir"])
    rng = random.Random(spec.get("seed", 1))
    wheel = LatencyWheel()
    sites = [BenchSite(name, password, spec, public_key, metrics, state_dir, rng, wheel)
             for name, password in spec["sites"]]
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    tasks = [asyncio.create_task(s.agent.run(), name=f"agent:{s.site}") for s in sites]
    reader = asyncio.create_task(read_commands(stopping))
    started = time.monotonic()

    async def ready() -> None:
        while not all(s.agent.follower.resynced and s.agent.reports > 0 for s in sites):
            if time.monotonic() - started > READY_TIMEOUT_S:
                missing = [s.site for s in sites if not s.agent.follower.resynced]
                raise SystemExit(f"fleet_bus_sites: {len(missing)} agents not resynced after "
                                 f"{READY_TIMEOUT_S:.0f} s (first: {missing[:3]})")
            await asyncio.sleep(0.1)
        if spec.get("gc_freeze", True):
            # One real site agent's heap is one site's: here SITES agents share one, and every
            # full collection would walk all of their devices, tasks and metrics.
            gc.freeze()
        emit({"event": "ready", "sites": len(sites), "seconds": round(time.monotonic() - started, 3)})

    waiter = asyncio.create_task(ready())
    try:
        await stopping.wait()
    finally:
        waiter.cancel()
        reader.cancel()
        for s in sites:
            s.agent.stop()
        await asyncio.gather(*tasks, waiter, reader, return_exceptions=True)


async def read_commands(stopping: asyncio.Event) -> None:
    """Commands from stdin (a pipe's end of file is a stop)."""
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        command = line.decode(errors="replace").strip()
        if not line or command == "stop":
            stopping.set()
            return
        if command == "cpu":
            t = os.times()
            emit({"event": "cpu", "user": t.user, "system": t.system})


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    spec = json.loads(Path(sys.argv[1]).read_text())
    logging.basicConfig(level=os.environ.get("FLEET_BUS_SITES_LOG", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    profile_path = os.environ.get("FLEET_BUS_SITES_PROFILE")
    if profile_path:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            asyncio.run(run(spec))
        finally:
            profiler.disable()
            profiler.dump_stats(f"{profile_path}.{os.getpid()}")
        return 0
    asyncio.run(run(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
