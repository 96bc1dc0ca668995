"""Stratum server under load: N simulated miners on loopback, new-tip fan-out, share checks.

    .venv/bin/python benchmarks/stratum_load.py [--connections 10000] [--tips 10] [--seconds 5]
                                                [--rate 5000] [--quick] [--json] [--profile]

The server (StratumServer, one asyncio loop, as in `miner run`) runs in this process
with a synthetic work source: jobs on regtest bits (0x207fffff), so that about every
other nonce is a share, and every valid share is also a block (on_block is a counter).
Vardiff is pinned to the network difficulty (min_difficulty above it; the network cap
wins), so a nonce's verdict is known to the generator in advance.

The miners live in a second process (benchmarks/stratum_loadgen.py, stdlib asyncio):
each connects from a 127.1.x.y source address (<= 200 per address, under the server's
per-IP limit), subscribes, authorizes and waits for its job. Then:

    tips     K clean jobs, one at a time: server.broadcast(job) stamped with time.time()
             here, each clean notify stamped with time.time() on arrival there; reported:
             the broadcast call itself and, per tip, the time to the median and to the
             LAST miner's notify (p50/p99 over the K tips)
    shares   on a fresh tip, two windows of S seconds each:
               max    every miner keeps one submit outstanding (throughput at saturation)
               paced  --rate submits/s in aggregate, round-robin (reply latency at that load)
             submits cycle valid / duplicate / low-difficulty / stale (PATTERN in the
             generator); "shares checked/s" = replies received in the window / window,
             cross-checked against gridminer_stratum_shares_total here

The server's per-connection message throttle is raised (it still runs on every message)
so that the max window measures the server, not the limiter; every other limit is the
default. It prints figures and is not a pass/fail test; it stops by itself (--timeout)
and always takes the generator process down with it.

--core: the same load against `miner run --threads 0` (the real solo controller, its
stratum server at the configured defaults) on a Bitcoin Core regtest node (bitcoind on
PATH). Tips are real blocks (generatetoaddress); every valid share is a block the
controller may hand to Core (it sends one per tip at a time and retires the tip once
one is in: StratumServer.retire_tip), so the report adds the node's figures: submitblock
calls, blocks accepted, chain tips that are not on the best chain.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import math
import os
import pstats
import resource
import statistics
import sys
import time
from pathlib import Path

from miner.chain import bits_to_target, build_coinbase
from miner.metrics import Metrics
from miner.stratum import protocol as p
from miner.stratum.server import ServerLimits, StratumServer
from miner.stratum.vardiff import VardiffConfig
from miner.work.job import Job

REGTEST_BITS = 0x207FFFFF
HERE = Path(__file__).resolve().parent
LOADGEN = HERE / "stratum_loadgen.py"
# Submits prebuilt per miner for the max window assume at most this many per second in
# all (a miner that runs out builds more on the fly, counted as built_late).
MAX_RATE_GUESS = 25000


def make_job(height: int) -> Job:
    coinbase = build_coinbase(height, 50 * 10**8, bytes.fromhex("0014" + "11" * 20), extranonce_size=8)
    return Job(job_id=f"bench-{height}", prev_hash_internal=height.to_bytes(4, "little") + bytes(28),
               version=0x20000000, bits=REGTEST_BITS, ntime=1_700_000_000, target=bits_to_target(REGTEST_BITS),
               coinbase=coinbase, merkle_branch=(), clean=True, height=height)


def raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def shares_by_result(metrics: Metrics) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in metrics.registry.collect():
        if family.name == "gridminer_stratum_shares":
            for s in family.samples:
                if s.name.endswith("_total"):
                    out[s.labels["result"]] = out.get(s.labels["result"], 0) + s.value
    return out


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.blocks = 0
        self.metrics = Metrics()
        self.node = self.solo = self.solo_task = None
        if args.core:
            self.server = None  # the controller's, once it runs
        else:
            self.server = StratumServer(
                self.on_block, host="127.0.0.1", port=0,
                vardiff=VardiffConfig(min_difficulty=1.0, start_difficulty=1.0),
                limits=ServerLimits(messages_per_second=1e6, message_burst=1e6),
                metrics=self.metrics)
        self.proc: asyncio.subprocess.Process | None = None
        self.height = 1
        self.report: dict = {}
        # separate profiles: the broadcast calls (synchronous), and the loop during the max window
        self.profile = cProfile.Profile() if args.profile else None
        self.profile_shares = cProfile.Profile() if args.profile else None

    def on_block(self, job, solution) -> None:
        self.blocks += 1

    def blocks_so_far(self) -> float:
        """Shares that were blocks, handed to on_block (ours, or the controller's)."""
        return self.solo.stats.found if self.args.core else self.blocks

    def next_job(self) -> Job:
        self.height += 1
        return make_job(self.height)

    async def send(self, **cmd) -> None:
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()

    async def expect(self, event: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), max(0.01, deadline - time.monotonic()))
            if not line:
                raise RuntimeError(f"the load generator exited while we waited for {event!r}")
            msg = json.loads(line)
            if msg.get("event") == event:
                return msg

    def log(self, text: str) -> None:
        if not self.args.json:
            print(text, file=sys.stderr, flush=True)

    async def run(self) -> dict:
        a = self.args
        soft, hard = raise_nofile()
        r = self.report
        r["config"] = {"connections": a.connections, "tips": a.tips, "seconds": a.seconds, "rate": a.rate,
                       "nofile_server": [soft, hard], "python": sys.version.split()[0],
                       "cpus": os.cpu_count()}
        rss_idle = rss_bytes()
        if a.core:
            await self.start_core()
        else:
            await self.server.start()
            self.server.broadcast(self.next_job())  # every miner gets this job right after subscribing
        env = dict(os.environ)
        env["PYTHONPATH"] = str(HERE.parent) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(LOADGEN), "--port", str(self.server.port), "--connections", str(a.connections),
            "--per-ip", str(a.per_ip), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=env, limit=1 << 20)
        hello = await self.expect("hello", 30)
        r["config"]["nofile_generator"] = [hello["nofile_soft"], hello["nofile_hard"]]

        # -- ramp ---------------------------------------------------------------------------
        self.log(f"ramping {a.connections} connections ...")
        rss0, c0 = rss_bytes(), cpu_seconds()
        await self.send(cmd="ramp")
        ramp = await self.expect("ramped", 60 + a.connections / 50)
        held = len(self.server.sessions)
        rss1 = rss_bytes()
        r["connections"] = {"held_by_generator": ramp["connected"], "held_by_server": held,
                            "failed": ramp["failed"], "without_job": ramp["without_job"],
                            "ramp_seconds": ramp["seconds"], "server_cpu": cpu_seconds() - c0,
                            "generator_cpu": ramp["cpu"]}
        r["memory"] = {"server_rss_idle": rss_idle, "server_rss_before": rss0, "server_rss_after": rss1,
                       "per_connection": (rss1 - rss0) / held if held else None}
        self.log(f"  held {held}, failed {sum(ramp['failed'].values())} in {ramp['seconds']:.1f} s")

        # -- idle: what holding the connections costs (vardiff ticker) --------------------
        c0, t0 = cpu_seconds(), time.perf_counter()
        await asyncio.sleep(a.idle)
        r["idle"] = {"seconds": time.perf_counter() - t0, "server_cpu": cpu_seconds() - c0}

        # -- tips -------------------------------------------------------------------------------
        self.log(f"{a.tips} new tips ...")
        tips = []
        for _ in range(a.tips):
            tips.append(await self.tip())
            await asyncio.sleep(0.3)
        last = [t["to_last"] for t in tips]
        median = [t["to_median"] for t in tips]
        r["tips"] = {
            "count": len(tips),
            "to_last_p50": quantile(last, 0.5), "to_last_p99": quantile(last, 0.99), "to_last_max": max(last),
            "to_median_p50": quantile(median, 0.5),
            "broadcast_call_p50": quantile([t["broadcast_call"] for t in tips], 0.5),
            "broadcast_call_max": max(t["broadcast_call"] for t in tips),
            "server_cpu_per_tip": statistics.mean(t["server_cpu"] for t in tips),
            "missed": sum(t["live"] - t["received"] for t in tips),
            "each": tips,
        }

        # -- shares -------------------------------------------------------------------------
        r["shares"] = {}
        for mode in ("max", "paced"):
            self.log(f"shares, {mode} {'(one outstanding per miner)' if mode == 'max' else f'at {a.rate:g}/s'}"
                     f" for {a.seconds:g} s ...")
            r["shares"][mode] = await self.share_window(mode)

        # -- done -----------------------------------------------------------------------------
        await self.send(cmd="quit")
        bye = await self.expect("bye", 60)
        r["generator_cpu_total"] = bye["cpu"]
        r["server_cpu_total"] = cpu_seconds()
        r["blocks_found"] = self.blocks_so_far()
        r["server_rss_end"] = rss_bytes()
        if a.core:
            r["core"] = await self.core_figures()
        return r

    # -- Core mode ------------------------------------------------------------------------------

    def metric(self, name: str, **labels) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    async def start_core(self) -> None:
        from miner.config import Config, LogConfig, MetricsConfig, MiningConfig, NodeConfig, StratumConfig
        from miner.modes.solo import SoloMiner
        from miner.node.regtest import RegtestNode

        self.node = node = RegtestNode("bitcoind")
        await asyncio.to_thread(node.start)
        self.address = await asyncio.to_thread(node.new_address)
        config = Config(node=NodeConfig(url=node.rpc_url, cookie_file=str(node.auth.path), zmq=node.zmq_url,
                                        poll_interval=0.1),
                        mining=MiningConfig(address=self.address, threads=0,
                                            journal=str(node.datadir / "bench-journal.jsonl")),
                        stratum=StratumConfig(listen="127.0.0.1:0"), metrics=MetricsConfig(listen="off"),
                        log=LogConfig(status_interval=3600))
        self.solo = SoloMiner(config, metrics=self.metrics, out=open(os.devnull, "w"))
        self.solo_task = asyncio.create_task(self.solo.run())
        deadline = time.monotonic() + 300
        while self.solo.server is None or self.solo.source is None or self.solo.source.current is None:
            if self.solo_task.done() or time.monotonic() > deadline:
                raise RuntimeError("the solo controller did not start")
            await asyncio.sleep(0.05)
        self.server = self.solo.server
        self.start_height = await asyncio.to_thread(node.call, "getblockcount")

    async def core_figures(self) -> dict:
        node = self.node
        tips = await asyncio.to_thread(node.call, "getchaintips")
        height = await asyncio.to_thread(node.call, "getblockcount")
        return {"submitblock_calls": self.metric("gridminer_blocks_total", stage="submitted"),
                "accepted_by_controller": self.metric("gridminer_blocks_total", stage="accepted"),
                "rejected_by_node": self.metric("gridminer_blocks_total", stage="rejected"),
                "inconclusive": self.metric("gridminer_blocks_total", stage="inconclusive"),
                "height_gain": height - self.start_height, "tips_generated": self.args.tips + 2,
                "competing_tips": sum(1 for t in tips if t["status"] in ("valid-headers", "valid-fork"))}

    async def tip(self) -> dict:
        live = len(self.server.sessions)
        c0 = cpu_seconds()
        t0 = time.time()
        pc = time.perf_counter()
        if self.args.core:  # a real block by the node: the controller's clean job follows
            block_hash = (await asyncio.to_thread(self.node.call, "generatetoaddress", 1, self.address))[0]
            prevhash = p.stratum_prevhash_from_internal(bytes.fromhex(block_hash)[::-1])
            height = await asyncio.to_thread(self.node.call, "getblockcount")
        else:
            job = self.next_job()
            height = job.height
            prevhash = p.stratum_prevhash_from_internal(job.prev_hash_internal)
            if self.profile:
                self.profile.enable()
            self.server.broadcast(job)
            if self.profile:
                self.profile.disable()
        call = time.perf_counter() - pc
        cpu = cpu_seconds() - c0
        while True:
            ev = await self.expect("tip", 30)
            if ev["prevhash"] == prevhash:
                break
        return {"height": height, "sessions": live, "broadcast_call": call, "server_cpu": cpu,
                "received": ev["received"], "live": ev["live"], "to_first": ev["first"] - t0,
                "to_median": ev["p50"] - t0, "to_last": ev["last"] - t0}

    async def share_window(self, mode: str) -> dict:
        a = self.args
        tip = await self.tip()  # a fresh job per window: duplicate memory per job stays small
        n = max(1, tip["received"])
        total = MAX_RATE_GUESS * a.seconds if mode == "max" else a.rate * a.seconds * 1.1
        await self.send(cmd="prepare", per_miner=math.ceil(total / n) + 1)
        prep = await self.expect("prepared", 300)
        before, blocks0 = shares_by_result(self.metrics), self.blocks_so_far()
        c0, t0 = cpu_seconds(), time.perf_counter()
        if self.profile_shares and mode == "max":
            self.profile_shares.enable()
        await self.send(cmd="run", mode=mode, seconds=a.seconds, rate=a.rate, inflight=1)
        ran = await self.expect("ran", a.seconds + 60)
        if self.profile_shares and mode == "max":
            self.profile_shares.disable()
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        after = shares_by_result(self.metrics)
        server_counts = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
        return {
            "window_seconds": ran["seconds"], "sent": ran["sent"], "replies_in_window": ran["replies_in_window"],
            "checked_per_second": ran["replies_in_window"] / ran["seconds"],
            "replies_total": ran["replies_total"], "unanswered": ran["unanswered"],
            "server_checked": sum(server_counts.values()), "server_by_result": server_counts,
            "generator_by_kind": ran["by_kind"], "blocks": self.blocks_so_far() - blocks0,
            "latency_p50": ran["latency_p50"], "latency_p99": ran["latency_p99"], "latency_max": ran["latency_max"],
            "server_cpu": cpu, "server_busy": cpu / elapsed, "generator_cpu": ran["cpu"],
            "generator_busy": ran["cpu"] / ran["seconds"], "prepared_lines": prep["lines"],
            "prepare_seconds": prep["seconds"], "built_late": ran["built_late"], "lost": ran["lost"],
        }

    async def close(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            try:
                proc.stdin.close()
            except Exception:  # noqa: BLE001
                pass
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        deadline = time.monotonic() + 10
        while self.server is not None and self.server.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.solo is not None:
            self.solo.stop()
            try:
                await asyncio.wait_for(self.solo_task, 60)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - reported by the figures missing
                pass
        elif self.server is not None:
            try:
                await asyncio.wait_for(self.server.stop(), 30)
            except asyncio.TimeoutError:
                pass
        if self.node is not None:
            await asyncio.to_thread(self.node.close)


def mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1000:.1f} ms"


def print_report(r: dict) -> None:
    c, conn, mem, tips, idle = r["config"], r["connections"], r["memory"], r["tips"], r["idle"]
    rows = [
        ("open-files limit (soft/hard)", f"server {c['nofile_server'][0]}/{c['nofile_server'][1]}, "
                                         f"generator {c['nofile_generator'][0]}/{c['nofile_generator'][1]}"),
        ("connections held", f"{conn['held_by_server']} of {c['connections']} "
                             f"(failed {sum(conn['failed'].values())}{' ' + str(conn['failed']) if conn['failed'] else ''})"),
        ("ramp-up", f"{conn['ramp_seconds']:.1f} s; server CPU {conn['server_cpu']:.2f} s, "
                    f"generator CPU {conn['generator_cpu']:.2f} s"),
        ("server RSS", f"{mb(mem['server_rss_before'])} -> {mb(mem['server_rss_after'])} "
                       f"({mem['per_connection'] / 1024:.1f} KiB per connection)" if mem["per_connection"] else "-"),
        ("server CPU idle (held conns)", f"{idle['server_cpu'] / idle['seconds'] * 100:.1f} % of a core"),
        ("tip -> last notify p50/p99", f"{ms(tips['to_last_p50'])} / {ms(tips['to_last_p99'])} "
                                      f"(max {ms(tips['to_last_max'])}, {tips['count']} tips, "
                                      f"{tips['missed']} notifies missing)"),
        ("tip -> median notify p50", ms(tips["to_median_p50"])),
        ("broadcast() call p50/max", f"{ms(tips['broadcast_call_p50'])} / {ms(tips['broadcast_call_max'])}"),
    ]
    for mode, s in r["shares"].items():
        label = "max (1 outstanding/miner)" if mode == "max" else f"paced at {c['rate']:g}/s"
        rows += [
            (f"shares {label}", f"{s['checked_per_second']:.0f} checked/s "
                                f"(server counted {s['server_checked']:.0f}, generator {s['replies_total']}, "
                                f"unanswered {s['unanswered']})"),
            ("  reply latency p50/p99", f"{ms(s['latency_p50'])} / {ms(s['latency_p99'])} (max {ms(s['latency_max'])})"),
            ("  CPU busy", f"server {s['server_busy'] * 100:.0f} %, generator {s['generator_busy'] * 100:.0f} %"),
            ("  verdicts (kind|reply)", ", ".join(f"{k}: {v}" for k, v in s["generator_by_kind"].items())),
            ("  server metric by result", ", ".join(f"{k}: {v:.0f}" for k, v in sorted(s["server_by_result"].items()))),
        ]
    rows += [
        ("CPU total", f"server {r['server_cpu_total']:.1f} s, generator {r['generator_cpu_total']:.1f} s"),
        ("blocks (valid shares)", f"{r['blocks_found']:.0f}"),
    ]
    if "core" in r:
        k = r["core"]
        rows += [("Core: submitblock calls", f"{k['submitblock_calls']:.0f} (accepted {k['accepted_by_controller']:.0f}, "
                                             f"refused {k['rejected_by_node']:.0f}, inconclusive {k['inconclusive']:.0f})"),
                 ("Core: height gain / competing tips", f"{k['height_gain']} ({k['tips_generated']} by the node) / "
                                                        f"{k['competing_tips']}")]
    width = max(len(k) for k, _ in rows)
    print(f"stratum load: {c['connections']} miners on loopback, {c['cpus']} CPUs, Python {c['python']}")
    for k, v in rows:
        print(f"  {k.ljust(width)}  {v}")
    print("  targets: 10,000 connections, >= 5,000 shares/s checked, p99 tip -> last notify < 500 ms")


async def amain(args) -> dict:
    bench = Bench(args)
    try:
        return await asyncio.wait_for(bench.run(), args.timeout)
    finally:
        await bench.close()
        if bench.profile:
            for title, prof in (("server.broadcast() calls", bench.profile),
                                ("server loop during the max share window", bench.profile_shares)):
                out = io.StringIO()
                print(f"== profile: {title}", file=out)
                try:
                    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.profile_lines)
                except TypeError:  # nothing was recorded
                    print("(empty)", file=out)
                print(out.getvalue(), file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=None, help="simulated miners (default 10000)")
    ap.add_argument("--tips", type=int, default=None, help="new tips to time (default 10)")
    ap.add_argument("--seconds", type=float, default=None, help="length of each share window (default 5)")
    ap.add_argument("--rate", type=float, default=5000.0, help="aggregate submits/s in the paced window")
    ap.add_argument("--idle", type=float, default=3.0, help="seconds to measure the idle cost of held connections")
    ap.add_argument("--per-ip", type=int, default=200, help="miners per 127.1.x.y source address (0: one address)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 500 miners, 5 tips, 3 s windows")
    ap.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the server during broadcasts and the max share window (slows both)")
    ap.add_argument("--profile-lines", type=int, default=20, help="functions to print per profile")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--core", action="store_true",
                    help="against the real solo controller on a Bitcoin Core regtest node (bitcoind on PATH)")
    args = ap.parse_args(argv)
    args.connections = args.connections or (500 if args.quick else 10000)
    args.tips = args.tips or (5 if args.quick else 10)
    args.seconds = args.seconds or (3.0 if args.quick else 5.0)
    report = asyncio.run(amain(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
