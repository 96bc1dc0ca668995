"""The load generator process of benchmarks/stratum_load.py: N simulated stratum miners.

Started by stratum_load.py (never on its own in practice); talks to it by JSON lines:
commands on stdin, events on stdout. Every miner is a bare asyncio.Protocol (no
StreamReader, no JSON on the hot path for replies we only count), so that this process
stays cheaper per message than the server it measures.

    ramp      connect in batches (each from its own 127.x.y.z source address, at most
              --per-ip per address), mining.subscribe + mining.authorize, wait for the job
    tips      every clean mining.notify is stamped with time.time() on arrival; once every
              live miner has a tip (or 10 s passed) its arrival quantiles are reported
    prepare   after a new tip: prebuild each miner's submits for it (valid nonces found
              with hashlib on regtest bits, duplicates, stale job ids, low-difficulty nonces)
    run       send them for S seconds: "max" keeps --inflight submits per miner
              outstanding; "paced" sends at an aggregate rate, round-robin over miners
    quit      close everything and exit

Clocks: arrival and send stamps are time.time() (the server process stamps broadcasts
with the same clock); reply latency uses this process's own perf_counter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from collections import Counter
from hashlib import sha256

from miner.stratum import protocol as p

WORKER = "bench.rig"
# One cycle of what each miner submits: V valid, D duplicate of the last valid one,
# L low difficulty, S stale (a job id from before the last clean job). Rejects are never
# more than one in a row, far from the server's max_invalid_shares.
PATTERN = "VVDVLVVSVV"
TIP_TIMEOUT_S = 10.0
BATCH = 100  # concurrent connects: asyncio.start_server's listen backlog is 100


def raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        want = hard if hard != resource.RLIM_INFINITY else 1 << 20
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


class Miner(asyncio.Protocol):
    def __init__(self, gen: Generator, index: int) -> None:
        self.gen, self.index = gen, index
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.lost = False
        self.registered = False  # handshake done: counted among the live miners
        self.extranonce1 = b""
        self.extranonce2_size = 0
        self.waiters: dict[int, asyncio.Future] = {}
        self.next_id = 1
        self.notifies: list[tuple[str, list]] = []  # (session job id, params), oldest first, last 4 kept
        self.lines: list[tuple[int, str, bytes]] = []  # prebuilt (id, kind, line), consumed from the end
        self.pending: dict[int, tuple[str, float]] = {}  # id -> (kind, perf_counter at send)
        self.en2 = 0
        # miners start at different points of the cycle, so that any window sees the whole mix
        self.pattern_pos = index % len(PATTERN)
        self.last_valid: tuple | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self.registered:
            self.gen.lost += 1
        for fut in self.waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionError("closed"))

    def data_received(self, data: bytes) -> None:
        now_wall = time.time()
        now = time.perf_counter()
        buf = self.buf + data
        *lines, self.buf = buf.split(b"\n")
        gen = self.gen
        for line in lines:
            if line.startswith(b'{"id":null'):  # a notification
                msg = json.loads(line)
                if msg.get("method") == "mining.notify":
                    params = msg["params"]
                    self.notifies.append((params[0], params))
                    del self.notifies[:-4]
                    if params[8]:
                        gen.on_clean(params[1], now_wall)
                continue
            # a reply: {"id":N,"result":...}; the id is all we need to find it
            end = line.index(b",", 6)
            msg_id = int(line[6:end])
            entry = self.pending.pop(msg_id, None)
            if entry is not None:
                gen.on_reply(self, entry[0], line, now - entry[1])
            elif msg_id in self.waiters:
                fut = self.waiters.pop(msg_id)
                if not fut.done():
                    fut.set_result(json.loads(line))

    # -- handshake ----------------------------------------------------------------------
    def request(self, method: str, params: list) -> asyncio.Future:
        msg_id = self.next_id
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.waiters[msg_id] = fut
        self.transport.write(json.dumps({"id": msg_id, "method": method, "params": params}).encode() + b"\n")
        return fut

    async def handshake(self) -> None:
        sub = self.request("mining.subscribe", ["gridminer-loadgen/1.0"])
        auth = self.request("mining.authorize", [WORKER, "x"])
        self.extranonce1, self.extranonce2_size = p.parse_subscribe_result((await sub)["result"])
        if (await auth)["result"] is not True:
            raise RuntimeError("authorize refused")

    # -- shares -------------------------------------------------------------------------
    def build(self, count: int) -> int:
        """Prebuild `count` submits on the latest job; returns how many hashes it took."""
        job_id, params = self.notifies[-1]
        stale_id = next((jid for jid, prm in reversed(self.notifies) if prm[1] != params[1]), None)
        if self.last_valid is not None and self.last_valid[0] != job_id:
            self.last_valid = None  # a duplicate repeats a share of this job, never an older one's
        job = p.pool_job_to_job(p.parse_notify(params), self.extranonce1, self.extranonce2_size)
        target = job.target
        ntime_hex = params[7]
        hashes = 0
        out = []
        for _ in range(count):
            kind = PATTERN[self.pattern_pos % len(PATTERN)]
            self.pattern_pos += 1
            if kind == "S" and stale_id is None:
                kind = "V"
            if kind == "D" and self.last_valid is None:
                kind = "V"
            if kind in "VL":
                en2 = self.en2.to_bytes(self.extranonce2_size, "big")
                self.en2 += 1
                h76 = job.header76(self.extranonce1 + en2)
                want_valid = kind == "V"
                nonce = 0
                while True:
                    hashes += 1
                    h = int.from_bytes(sha256(sha256(h76 + nonce.to_bytes(4, "little")).digest()).digest(), "little")
                    if (h <= target) if want_valid else (h >= 1 << 255):
                        break
                    nonce += 1
                fields = (job_id, en2.hex(), ntime_hex, f"{nonce:08x}")
                if want_valid:
                    self.last_valid = fields
            elif kind == "D":
                fields = self.last_valid
            else:  # stale: an old job id, any nonce
                fields = (stale_id, "00" * self.extranonce2_size, ntime_hex, "00000000")
            msg_id = self.next_id
            self.next_id += 1
            line = (f'{{"id":{msg_id},"method":"mining.submit","params":["{WORKER}","{fields[0]}",'
                    f'"{fields[1]}","{fields[2]}","{fields[3]}"]}}\n').encode()
            out.append((msg_id, kind, line))
        out.reverse()
        self.lines = out + self.lines
        return hashes

    def send_one(self) -> bool:
        if self.lost:
            return False
        if not self.lines:
            self.gen.built_late += 1
            self.gen.hashes += self.build(len(PATTERN))
        msg_id, kind, line = self.lines.pop()
        self.pending[msg_id] = (kind, time.perf_counter())
        self.transport.write(line)
        self.gen.sent += 1
        return True


class Generator:
    def __init__(self, args) -> None:
        self.args = args
        self.miners: list[Miner] = []
        self.failed: Counter[str] = Counter()
        self.lost = 0
        self.tips: dict[str, list[float]] = {}
        self.tip_done: set[str] = set()
        self.tip_timers: dict[str, asyncio.TimerHandle] = {}
        self.sent = 0
        self.replies: Counter[tuple[str, str]] = Counter()
        self.latencies: list[float] = []
        self.running = False
        self.mode = "max"
        self.window_replies = 0
        self.built_late = 0
        self.hashes = 0

    def emit(self, **event) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    def live(self) -> list[Miner]:
        return [m for m in self.miners if not m.lost]

    # -- ramp ---------------------------------------------------------------------------
    async def connect_one(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        block = index // self.args.per_ip
        source = f"127.1.{block // 250}.{block % 250 + 1}" if self.args.per_ip > 0 else None
        miner = None
        try:
            _, miner = await asyncio.wait_for(loop.create_connection(
                lambda: Miner(self, index), self.args.host, self.args.port,
                local_addr=(source, 0) if source else None), 10)
            await asyncio.wait_for(miner.handshake(), 20)
            if miner.lost:
                raise ConnectionError("closed after the handshake")
            miner.registered = True
            self.miners.append(miner)
        except Exception as e:  # noqa: BLE001 - counted by kind and reported
            self.failed[type(e).__name__ + (f":{e.errno}" if isinstance(e, OSError) and e.errno else "")] += 1
            if miner is not None and miner.transport is not None:
                miner.transport.close()

    async def ramp(self) -> None:
        t0, c0 = time.perf_counter(), cpu_seconds()
        n = self.args.connections
        for start in range(0, n, BATCH):
            await asyncio.gather(*(self.connect_one(i) for i in range(start, min(n, start + BATCH))))
        # every miner has had its first job (resent after subscribe) before we call it held
        deadline = time.perf_counter() + 10
        while any(not m.notifies for m in self.live()) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        self.emit(event="ramped", connected=len(self.live()), failed=dict(self.failed),
                  without_job=sum(1 for m in self.live() if not m.notifies),
                  seconds=time.perf_counter() - t0, cpu=cpu_seconds() - c0)

    # -- tips ---------------------------------------------------------------------------
    def on_clean(self, prevhash: str, when: float) -> None:
        if prevhash in self.tip_done:
            return
        times = self.tips.setdefault(prevhash, [])
        times.append(when)
        if len(times) == 1:
            self.tip_timers[prevhash] = asyncio.get_running_loop().call_later(TIP_TIMEOUT_S, self.finish_tip,
                                                                              prevhash)
        if len(times) >= len(self.miners) - self.lost:
            self.finish_tip(prevhash)

    def finish_tip(self, prevhash: str) -> None:
        if prevhash in self.tip_done:
            return
        self.tip_done.add(prevhash)
        timer = self.tip_timers.pop(prevhash, None)
        if timer is not None:
            timer.cancel()
        times = sorted(self.tips.pop(prevhash, []))
        self.emit(event="tip", prevhash=prevhash, received=len(times), live=len(self.miners) - self.lost,
                  first=times[0], p50=quantile(times, 0.5), p99=quantile(times, 0.99), last=times[-1])

    # -- shares -------------------------------------------------------------------------
    async def prepare(self, per_miner: int) -> None:
        t0, c0 = time.perf_counter(), cpu_seconds()
        hashes = 0
        for i, m in enumerate(self.live()):
            m.lines = []
            hashes += m.build(per_miner)
            if i % 200 == 0:
                await asyncio.sleep(0)
        self.emit(event="prepared", lines=per_miner * len(self.live()), hashes=hashes,
                  seconds=time.perf_counter() - t0)

    def on_reply(self, miner: Miner, kind: str, line: bytes, latency: float) -> None:
        if b'"error":null' in line:
            result = "accepted"
        else:
            err = json.loads(line)["error"]
            result = f"{err[0]} {err[1]}" if isinstance(err, list) and len(err) > 1 else repr(err)
        self.replies[(kind, result)] += 1
        if self.running:
            self.window_replies += 1
            self.latencies.append(latency)
            if self.mode == "max":
                miner.send_one()
        else:
            self.latencies.append(latency)

    async def run(self, mode: str, seconds: float, rate: float, inflight: int) -> None:
        self.replies.clear()
        self.latencies = []
        self.sent = self.window_replies = self.built_late = self.hashes = 0
        self.mode = mode
        miners = self.live()
        c0 = cpu_seconds()
        wall0 = time.time()
        t0 = time.perf_counter()
        self.running = True
        if mode == "max":
            for _ in range(inflight):
                for m in miners:
                    m.send_one()
            await asyncio.sleep(seconds)
        else:
            idx = 0
            while (elapsed := time.perf_counter() - t0) < seconds:
                due = int(rate * elapsed) - self.sent
                for _ in range(due):
                    m = miners[idx % len(miners)]
                    idx += 1
                    m.send_one()
                await asyncio.sleep(0.002)
        self.running = False
        window = time.perf_counter() - t0
        window_replies = self.window_replies
        cpu_window = cpu_seconds() - c0
        wall1 = time.time()
        # drain: replies to what was sent still count (by result and latency), not toward the rate
        deadline = time.perf_counter() + 10
        while any(m.pending for m in miners if not m.lost) and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
        lat = sorted(self.latencies)
        self.emit(event="ran", mode=mode, seconds=window, wall_start=wall0, wall_end=wall1, sent=self.sent,
                  replies_in_window=window_replies, replies_total=sum(self.replies.values()),
                  unanswered=sum(len(m.pending) for m in miners if not m.lost),
                  by_kind={f"{k}|{r}": n for (k, r), n in sorted(self.replies.items())},
                  latency_p50=quantile(lat, 0.5), latency_p99=quantile(lat, 0.99),
                  latency_max=lat[-1] if lat else None, cpu=cpu_window, built_late=self.built_late,
                  lost=self.lost)

    # -- control ------------------------------------------------------------------------
    async def main(self) -> None:
        soft, hard = raise_nofile()
        self.emit(event="hello", nofile_soft=soft, nofile_hard=hard, pid=os.getpid())
        loop = asyncio.get_running_loop()
        stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        try:
            while True:
                line = await stdin.readline()
                if not line:
                    break
                cmd = json.loads(line)
                op = cmd["cmd"]
                if op == "ramp":
                    await self.ramp()
                elif op == "prepare":
                    await self.prepare(cmd["per_miner"])
                elif op == "run":
                    await self.run(cmd["mode"], cmd["seconds"], cmd.get("rate", 0.0), cmd.get("inflight", 1))
                elif op == "cpu":
                    self.emit(event="cpu", cpu=cpu_seconds())
                elif op == "quit":
                    break
        finally:
            for m in self.miners:
                if m.transport is not None:
                    m.transport.close()
            await asyncio.sleep(0.1)
            self.emit(event="bye", cpu=cpu_seconds())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--per-ip", type=int, default=200,
                    help="miners per 127.1.x.y source address (0: all from the default address)")
    args = ap.parse_args(argv)
    asyncio.run(Generator(args).main())


if __name__ == "__main__":
    main()
