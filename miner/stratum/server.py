"""The stratum v1 server that ASICs, Bitaxes and CPU rigs connect to.

    work source ─► jobs ─► broadcast: each session gets [set_difficulty] + notify
    connection ─► StratumSession (unique extranonce1, its own ShareBook and vardiff)
    every session's shares ─► one JobLedger: live jobs, duplicates across sessions
    a share that is a block ─► on_block(job, solution): journal first, then the node
    retire_tip(T): the mining core's "tip T is done" ─► shares on T stale (21), no on_block

Listens on 127.0.0.1 unless configured otherwise. extranonce1 0x00000000 belongs to the
local CPU pool, so every connection's extranonce1 differs from it and from each other.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import ipaddress
import itertools
import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from miner.chain.target import DIFF1_TARGET, difficulty_to_target
from miner.metrics import Metrics
from miner.stratum import protocol as p
from miner.stratum.session import StratumSession
from miner.stratum.shares import JobLedger, ShareBook
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
# Books of closed sessions kept for a miner that resumes its session id (its jobs and
# their difficulties); all dropped when the tip moves, as their work is stale then.
MAX_PARKED_BOOKS = 4096


def address_group(ip: str) -> str:
    """The per-address limit's key: an IPv4 address, or the /64 of an IPv6 one (what one
    subscriber is routed; an attacker holds all of it). IPv4-mapped IPv6 counts as IPv4."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


@dataclass(frozen=True)
class ServerLimits:
    """Per-connection abuse limits; every one that fires is counted by name."""

    max_line_bytes: int = 16384  # a longer line closes the connection
    messages_per_second: float = 50.0  # sustained request rate
    message_burst: float = 200.0  # requests allowed at once
    max_invalid_shares: int = 100  # consecutive rejected shares before we disconnect
    idle_timeout: float = 600.0  # s without a message from an authorized miner
    unauthorized_timeout: float = 30.0  # s a connection may stay without authorizing
    # Connections not (yet) authorized per address (IPv4) or IPv6 /64. Authorized miners
    # do not count: a farm of 1,000 rigs behind one NAT address is served.
    max_connections_per_ip: int = 256
    max_connections: int = 100_000  # connections in all; more are refused (limit "connections")
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
        self.ledger = JobLedger()  # live jobs and duplicates, over every session
        self._unauthorized_by_group: Counter[str] = Counter()
        self._parked: OrderedDict[bytes, ShareBook] = OrderedDict()  # session part -> book
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

    def spawn(self, coro) -> asyncio.Task:
        """A task the server owns: cancelled at stop()."""
        return self._spawn(coro)

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
        group = address_group(ip)
        if len(self.sessions) >= self.limits.max_connections:
            self.metrics.stratum_limit_hits.labels("connections").inc()
            writer.close()
            return
        if self._unauthorized_by_group[group] >= self.limits.max_connections_per_ip:
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
        session.address_group, session.counted_unauthorized = group, True
        self.sessions.add(session)
        self._unauthorized_by_group[group] += 1
        self.metrics.stratum_connects.inc()
        self.metrics.stratum_connections.set(len(self.sessions))
        await session.run()

    def authorized(self, session: StratumSession) -> None:
        """A session authorized a worker: it no longer counts toward its address's limit."""
        if session.counted_unauthorized:
            session.counted_unauthorized = False
            self._uncount(session.address_group)

    def _uncount(self, group: str) -> None:
        self._unauthorized_by_group[group] -= 1
        if self._unauthorized_by_group[group] <= 0:
            del self._unauthorized_by_group[group]

    def forget(self, session: StratumSession) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            if session.counted_unauthorized:
                session.counted_unauthorized = False
                self._uncount(session.address_group)
            self._en1_in_use.discard(session.session_part)
            if len(session.book):
                self._parked[session.session_part] = session.book
                self._parked.move_to_end(session.session_part)
                while len(self._parked) > MAX_PARKED_BOOKS:
                    self._parked.popitem(last=False)
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
        """Proxy mode: the upstream pool's extranonce1, space or version mask changed (a
        failover): tell the miners (set_extranonce where they subscribed to it, else
        client.reconnect; set_version_mask where they negotiated version rolling)."""
        if version_mask != self.version_mask:
            self.version_mask = version_mask
            for session in list(self.sessions):
                session.renegotiate_version_mask()
        if (extranonce1_prefix, extranonce2_size) == (self.extranonce1_prefix, self.extranonce2_size):
            return
        self.extranonce1_prefix, self.extranonce2_size = extranonce1_prefix, extranonce2_size
        self._parked.clear()  # their jobs were the old pool's
        for session in list(self.sessions):
            if not session.subscribed:
                continue
            if session.extranonce_subscribed:
                session.send(p.encode(p.set_extranonce(session.extranonce1, extranonce2_size)))
            else:
                session.send(p.encode(p.reconnect(session.local_host(self.host), self.port, 0)))
                session._close_soon("upstream_changed")

    def resume_part(self, session: StratumSession, session_id: str) -> tuple[bytes, ShareBook | None]:
        """mining.subscribe with a session id: give back that extranonce1 part if nobody holds
        it, with the book of jobs its last connection was sent (None if gone)."""
        try:
            wanted = bytes.fromhex(session_id)
        except ValueError:
            return session.session_part, None
        size = self.session_extranonce1_size
        if len(wanted) != size or wanted == bytes(size) or wanted in self._en1_in_use:
            return session.session_part, None
        self._en1_in_use.discard(session.session_part)
        self._en1_in_use.add(wanted)
        return wanted, self._parked.pop(wanted, None)

    def authorize(self, worker: str, password: str | None) -> str | None:
        return self.authorizer.site_for(worker, password)

    # -- jobs and blocks ---------------------------------------------------------------------------

    @staticmethod
    def network_difficulty(job: Job) -> float:
        return DIFF1_TARGET / job.target

    def broadcast(self, job: Job) -> None:
        """A new job for everyone: clean_jobs on a new tip, so miners drop the old work at once.
        Work on another tip, or older than a clean job, is stale from now on; a job that moves
        the tip back to a retired tip (a reorg), or a clean one on it, un-retires it."""
        if self.current_job is not None and job.prev_hash_internal != self.current_job.prev_hash_internal:
            self._parked.clear()
        self.ledger.publish(job)
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

    def retire_tip(self, prev_hash_internal: bytes) -> None:
        """The mining core's word that tip T (prev hash, internal order) is finished, e.g. our
        block on it was accepted: from now on shares on jobs built on T are answered stale
        (21) and never reach on_block. Broadcasting a job that moves the tip back to T (a
        reorg), or a clean job on T, un-retires it. Call it before broadcasting the next job."""
        dropped = self.ledger.retire_tip(bytes(prev_hash_internal))
        log.debug("tip %s retired (%d live job(s) now stale)", bytes(prev_hash_internal)[::-1].hex(), dropped)

    def found_block(self, job: Job, solution: Solution) -> None:
        """A miner's share is a block: hand it on (the work source journals it first)."""
        try:
            self.on_block(job, solution)
        except Exception:
            log.exception("block from a stratum miner could not be handed to the work source")
