"""The stratum v1 server that ASICs, Bitaxes and CPU rigs connect to.

    work source ─► jobs ─► broadcast: each session gets [set_difficulty] + notify
    connection ─► StratumSession (unique extranonce1, its own ShareBook and vardiff)
    a share that is a block ─► on_block(job, solution): journal first, then the node

Listens on 127.0.0.1 unless configured otherwise. extranonce1 0x00000000 belongs to the
local CPU pool, so every connection's extranonce1 differs from it and from each other.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import itertools
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from miner.chain.target import DIFF1_TARGET, difficulty_to_target
from miner.metrics import Metrics
from miner.stratum import protocol as p
from miner.stratum.session import StratumSession
from miner.stratum.vardiff import Vardiff, VardiffConfig
from miner.work.job import Job, Solution

log = logging.getLogger(__name__)

# Bytes of extranonce1 the server assigns per connection in solo mode (proxy mode takes
# fewer: they come out of the upstream pool's extranonce2).
SESSION_EXTRANONCE1_SIZE = 4
# Seconds between vardiff ticks (a quiet miner's difficulty steps down on these).
TICK_SECONDS = 1.0
# On a graceful stop, miners are told to reconnect after this many seconds.
RECONNECT_WAIT_S = 5


@dataclass(frozen=True)
class ServerLimits:
    """Per-connection abuse limits; every one that fires is counted by name."""

    max_line_bytes: int = 16384  # a longer line closes the connection
    messages_per_second: float = 50.0  # sustained request rate
    message_burst: float = 200.0  # requests allowed at once
    max_invalid_shares: int = 100  # consecutive rejected shares before we disconnect
    idle_timeout: float = 600.0  # s without a message from an authorized miner
    unauthorized_timeout: float = 30.0  # s a connection may stay without authorizing
    max_connections_per_ip: int = 256
    max_write_buffer: int = 1 << 20  # bytes queued to a miner that does not read
    max_worker_labels: int = 200  # worker names with their own metric label; later names count as "other"


@dataclass(frozen=True)
class Authorizer:
    """Worker names `site.rig`: a site listed in `sites` (with its password, if set);
    or any worker when `sites` is empty and `allow_any` is set."""

    sites: dict[str, str | None] = field(default_factory=dict)  # site -> password (None: no password)
    allow_any: bool = True

    def site_for(self, worker: str, password: str | None) -> str | None:
        site = worker.split(".", 1)[0]
        if site in self.sites:
            expected = self.sites[site]
            if expected is None or hmac.compare_digest(expected.encode(), (password or "").encode()):
                return site
            return None
        return "other" if self.allow_any else None


@dataclass(frozen=True)
class IssueLines:
    """One job at one difficulty, encoded once for every session at that difficulty."""

    job: Job  # held so the id() key of the cache cannot be reused while cached
    job_id: str  # unique per (job, difficulty): shares for it are judged at this difficulty
    share_target: int
    set_difficulty: bytes
    notify_clean: bytes
    notify: bytes


class StratumServer:
    def __init__(self, on_block: Callable[[Job, Solution], None], *, host: str = "127.0.0.1", port: int = 3333,
                 extranonce2_size: int = 4, version_mask: int = 0x1FFFE000,
                 vardiff: VardiffConfig | None = None, limits: ServerLimits | None = None,
                 authorizer: Authorizer | None = None, metrics: Metrics | None = None,
                 session_extranonce1_size: int = SESSION_EXTRANONCE1_SIZE,
                 on_share: Callable[[Job, Solution], Awaitable[p.StratumError | None]] | None = None) -> None:
        self.on_block, self.host, self._port = on_block, host, port
        self.extranonce2_size, self.version_mask = extranonce2_size, version_mask
        # Proxy mode: every extranonce1 starts with the upstream pool's, and accepted shares
        # go to on_share, whose answer (the pool's) is the miner's reply.
        self.extranonce1_prefix = b""
        self.session_extranonce1_size = session_extranonce1_size
        self.on_share = on_share
        self.difficulty_floor = 0.0  # proxy mode: the pool's difficulty, so every share can go upstream
        self.vardiff = Vardiff(vardiff)
        self.limits = limits or ServerLimits()
        self.authorizer = authorizer or Authorizer()
        self.metrics = metrics if metrics is not None else Metrics()
        self.current_job: Job | None = None
        self.sessions: set[StratumSession] = set()
        self._by_ip: Counter[str] = Counter()
        self._en1_in_use: set[bytes] = set()
        self._next_en1 = 1  # 0 is the local CPU pool's
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._issue_cache: dict[tuple[int, float], IssueLines] = {}
        self._issue_ids = itertools.count(1)
        # Prometheus children looked up once: labels() per message showed up in profiles.
        self.bytes_in = self.metrics.stratum_bytes.labels("in")
        self.bytes_out = self.metrics.stratum_bytes.labels("out")
        self._share_counters: dict[tuple[str, str], object] = {}
        self._worker_counters: dict[str, object] = {}  # at most limits.max_worker_labels names

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self._port, limit=1 << 16)
        self._spawn(self._ticker())
        log.info("stratum server listening on %s:%d", self.host, self.port)

    @property
    def port(self) -> int:
        if self._server is not None and self._server.sockets:
            return self._server.sockets[0].getsockname()[1]
        return self._port

    async def stop(self, reconnect_wait: int | None = RECONNECT_WAIT_S) -> None:
        """Stop accepting; tell connected miners to come back after reconnect_wait seconds
        (client.reconnect, so a restart costs them seconds, not their own backoff)."""
        port = self.port  # read before closing: a closed server has no socket to ask
        if self._server is not None:
            self._server.close()
        sessions = list(self.sessions)
        for session in sessions:
            if reconnect_wait is not None and session.subscribed:
                session.send(p.encode(p.reconnect(session.local_host(self.host), port, reconnect_wait)))
        # Concurrently: one rig that stopped reading must not hold up the others.
        await asyncio.gather(*(session.close("server_stopping") for session in sessions))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            for session in list(self.sessions):
                session.tick()

    # -- connections -------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        ip = peer[0]
        if self._by_ip[ip] >= self.limits.max_connections_per_ip:
            self.metrics.stratum_limit_hits.labels("connections_per_ip").inc()
            writer.close()
            return
        try:
            part = self._allocate_en1()
        except RuntimeError:
            self.metrics.stratum_limit_hits.labels("extranonce_space").inc()
            writer.close()
            return
        session = StratumSession(self, reader, writer, part, ip)
        self.sessions.add(session)
        self._by_ip[ip] += 1
        self.metrics.stratum_connects.inc()
        self.metrics.stratum_connections.set(len(self.sessions))
        await session.run()

    def forget(self, session: StratumSession) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self._by_ip[session.peer_ip] -= 1
            if self._by_ip[session.peer_ip] <= 0:
                del self._by_ip[session.peer_ip]
            self._en1_in_use.discard(session.session_part)
            self.metrics.stratum_connections.set(len(self.sessions))

    def _allocate_en1(self) -> bytes:
        """A per-connection extranonce1 part, never all zeros (the local CPU pool's)."""
        size = self.session_extranonce1_size
        space = (1 << (8 * size)) - 1
        for _ in range(min(space, 1 << 20)):
            part = self._next_en1.to_bytes(size, "big")
            self._next_en1 = self._next_en1 % space + 1
            if part not in self._en1_in_use:
                self._en1_in_use.add(part)
                return part
        raise RuntimeError("no free extranonce1: too many connections for the extranonce space")

    def set_upstream(self, extranonce1_prefix: bytes, extranonce2_size: int, version_mask: int) -> None:
        """Proxy mode: the upstream pool's extranonce1 or space changed (a failover): tell the
        miners (set_extranonce where they subscribed to it, else client.reconnect)."""
        if (extranonce1_prefix, extranonce2_size) == (self.extranonce1_prefix, self.extranonce2_size):
            self.version_mask = version_mask
            return
        self.extranonce1_prefix, self.extranonce2_size, self.version_mask = \
            extranonce1_prefix, extranonce2_size, version_mask
        for session in list(self.sessions):
            if not session.subscribed:
                continue
            if session.extranonce_subscribed:
                session.send(p.encode(p.set_extranonce(session.extranonce1, extranonce2_size)))
            else:
                session.send(p.encode(p.reconnect(session.local_host(self.host), self.port, 0)))
                session._close_soon("upstream_changed")

    def resume_part(self, session: StratumSession, session_id: str) -> bytes:
        """mining.subscribe with a session id: give back that extranonce1 part if nobody holds it."""
        try:
            wanted = bytes.fromhex(session_id)
        except ValueError:
            return session.session_part
        size = self.session_extranonce1_size
        if len(wanted) != size or wanted == bytes(size) or wanted in self._en1_in_use:
            return session.session_part
        self._en1_in_use.discard(session.session_part)
        self._en1_in_use.add(wanted)
        return wanted

    def authorize(self, worker: str, password: str | None) -> str | None:
        return self.authorizer.site_for(worker, password)

    # -- jobs and blocks ---------------------------------------------------------------------------

    @staticmethod
    def network_difficulty(job: Job) -> float:
        return DIFF1_TARGET / job.target

    def broadcast(self, job: Job) -> None:
        """A new job for everyone: clean_jobs on a new tip, so miners drop the old work at once."""
        self.current_job = job
        self._issue_cache.clear()  # only the current job is ever issued again
        # A cyclic-GC pass over every session's objects, landing inside the fan-out, doubled
        # the slowest tip at 10,000 miners: collect after the loop instead of during it.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for session in list(self.sessions):
                session.send_job(job, job.clean)
        finally:
            if gc_was_enabled:
                gc.enable()

    def issue_lines(self, job: Job, difficulty: float) -> IssueLines:
        """The encoded set_difficulty and notify lines for job at difficulty (cached)."""
        key = (id(job), difficulty)
        lines = self._issue_cache.get(key)
        if lines is None:
            job_id = f"{next(self._issue_ids):x}"
            lines = IssueLines(job, job_id, difficulty_to_target(difficulty),
                               p.encode(p.set_difficulty(difficulty)),
                               p.encode(p.notify(job, job_id, True)), p.encode(p.notify(job, job_id, False)))
            self._issue_cache[key] = lines
        return lines

    def count_share(self, site: str, result: str) -> None:
        counter = self._share_counters.get((site, result))
        if counter is None:
            counter = self._share_counters[(site, result)] = self.metrics.stratum_shares.labels(site, result)
        counter.inc()

    def count_worker_work(self, worker: str, difficulty: float) -> None:
        """Accepted work per worker name. Names are the miners' own choice: past the first
        limits.max_worker_labels they all count as "other", so made-up names cannot grow
        the metric (or this cache) without bound."""
        counter = self._worker_counters.get(worker)
        if counter is None:
            if len(self._worker_counters) < self.limits.max_worker_labels:
                counter = self._worker_counters[worker] = self.metrics.stratum_worker_share_work.labels(worker)
            else:
                counter = self.metrics.stratum_worker_share_work.labels("other")
        counter.inc(difficulty)

    def resend_current_job(self, session: StratumSession) -> None:
        if self.current_job is not None:
            session.send_job(self.current_job, clean=False)

    def found_block(self, job: Job, solution: Solution) -> None:
        """A miner's share is a block: hand it on (the work source journals it first)."""
        try:
            self.on_block(job, solution)
        except Exception:
            log.exception("block from a stratum miner could not be handed to the work source")
