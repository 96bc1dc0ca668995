"""Stratum v1 client to an upstream pool, and failover across an ordered list of pools.

    connect(): open ─► [mining.configure] ─► mining.subscribe ─► [suggest_difficulty]
               ─► mining.authorize (false or an error: PoolAuthError)
    reader:    bytes ─► NewlineFramer (line cap) ─► parse_message ─► dispatch on the method
               (a pool may send notify with "id": 0, so the id never decides)
               set_difficulty ─► applies from the next notify
               notify ─► ClientJob(job, share_target, extranonce1, ...) ─► on_job
    submit():  mining.submit ─► the pool's own answer (a timeout or a lost connection is
               "unknown": never reported as accepted)

PoolFailover keeps one StratumClient on the best pool that works: it leaves a pool that
disconnects, refuses us or goes silent, backs off (doubling to a cap) after a round in
which none worked, and while on a lower-priority pool probes the higher ones, returning
when one does the whole handshake and sends a job.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any, Callable
from urllib.parse import urlsplit

from miner.chain.target import difficulty_to_target
from miner.metrics import Metrics
from miner.stratum import protocol as p
from miner.stratum.framing import DEFAULT_MAX_LINE_BYTES, NewlineFramer, Oversized
from miner.work.job import Job

__all__ = [
    "PoolURL", "PoolAuthError", "PoolProtocolError", "PoolDisconnected", "SubmitAnswer", "ClientJob",
    "StratumClient", "PoolFailover", "FailoverState",
]

log = logging.getLogger(__name__)

# Seconds to wait for the pool's answer to a handshake request (configure, subscribe, authorize).
REQUEST_TIMEOUT = 10.0
# Seconds to wait for the pool's answer to a share; after that the share's fate is unknown.
SUBMIT_TIMEOUT = 30.0
# Seconds to wait for the TCP connection itself.
CONNECT_TIMEOUT = 10.0
# Difficulty before the pool's first set_difficulty (stratum's implied default).
DEFAULT_DIFFICULTY = 1.0
# Jobs remembered per connection, for set_extranonce and for submit's lookups.
MAX_JOBS = 64
# Malformed pool lines are logged at most this often (seconds); all are counted.
MALFORMED_LOG_INTERVAL = 60.0

# One number per handshake, process wide: a job's epoch tells which connection issued it,
# so work for a connection we have left (or that reconnected) is never sent to the pool.
_epochs = itertools.count(1)


# Where client.reconnect may take us: the configured host (any port), anywhere, or nowhere.
FOLLOW_RECONNECT = ("same-host", "any", "never")


def reconnect_allowed(policy: str, configured_host: str, requested_host: str) -> bool:
    """Whether a client.reconnect to requested_host may be followed from a pool configured as
    configured_host. Hosts are compared as written (case-insensitively): a name and its
    address count as different hosts."""
    if policy == "any":
        return True
    if policy == "never":
        return False
    return requested_host.strip().strip("[]").lower() == configured_host.strip().strip("[]").lower()


class PoolAuthError(Exception):
    """The pool refused mining.authorize."""


class PoolProtocolError(Exception):
    """The pool's answer to a handshake request was unusable."""


class PoolDisconnected(ConnectionError):
    """The connection to the pool ended while a request was waiting."""


@dataclass(frozen=True)
class PoolURL:
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> PoolURL:
        """`stratum+tcp://host:port`; ValueError naming what is wrong otherwise."""
        if not isinstance(url, str) or "://" not in url:
            raise ValueError(f"pool URL must look like stratum+tcp://host:port, got {url!r}")
        parts = urlsplit(url.strip())
        if parts.scheme.lower() != "stratum+tcp":
            raise ValueError(f"pool URL scheme must be stratum+tcp (no TLS or v2 support), got {parts.scheme!r}"
                             f" in {url!r}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"pool URL port must be 1..65535 in {url!r}") from None
        if not parts.hostname or port is None or port == 0:
            raise ValueError(f"pool URL needs a host and a port: stratum+tcp://host:port, got {url!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError(f"pool URL must be only stratum+tcp://host:port, got {url!r}")
        return cls(parts.hostname, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"stratum+tcp://{host}:{self.port}"


@dataclass(frozen=True)
class SubmitAnswer:
    """The pool's verdict on a share. status: accepted | rejected | unknown | stale | invalid."""

    accepted: bool
    error: p.StratumError | None
    status: str = ""

    def __post_init__(self) -> None:
        if not self.status:
            object.__setattr__(self, "status", "accepted" if self.accepted else "rejected")

    @classmethod
    def unknown(cls, why: str) -> SubmitAnswer:
        return cls(False, p.StratumError.other(why), "unknown")


@dataclass(frozen=True)
class ClientJob:
    """A pool job as we hash it: extranonce = extranonce1 + extranonce2 (extranonce2_size bytes)."""

    job: Job
    share_target: int
    difficulty: float
    extranonce1: bytes
    extranonce2_size: int
    version_mask: int  # agreed BIP310 mask; 0 when the pool does not roll versions
    epoch: int  # the connection (handshake) that issued it


OnJob = Callable[[ClientJob], None]
OnVersionMask = Callable[[int, int], None]  # (connection epoch, new agreed mask)


class StratumClient:
    """One connection to one pool (following client.reconnect by itself, where the
    follow_reconnect policy allows: by default to the configured host only)."""

    request_timeout = REQUEST_TIMEOUT
    submit_timeout = SUBMIT_TIMEOUT
    connect_timeout = CONNECT_TIMEOUT

    def __init__(self, url: PoolURL | str, user: str, password: str = "x", *, version_rolling: bool = True,
                 suggest_difficulty: float | None = None, metrics: Metrics | None = None,
                 user_agent: str = "gridminer/0.1", on_job: OnJob | None = None,
                 max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, follow_reconnect: str = "same-host") -> None:
        if follow_reconnect not in FOLLOW_RECONNECT:
            raise ValueError(f"follow_reconnect must be one of {', '.join(FOLLOW_RECONNECT)}, got {follow_reconnect!r}")
        self.follow_reconnect = follow_reconnect
        self.url = url if isinstance(url, PoolURL) else PoolURL.parse(url)
        self.user, self.password = user, password
        self.version_rolling, self.suggest_difficulty = version_rolling, suggest_difficulty
        self.user_agent = user_agent
        self.metrics = metrics if metrics is not None else Metrics()
        self.on_job = on_job
        self.on_version_mask: OnVersionMask | None = None
        self.max_line_bytes = max_line_bytes
        # Where we are connected now (client.reconnect may move us off self.url).
        self.host, self.port = self.url.host, self.url.port
        self.extranonce1 = b""
        self.extranonce2_size = 0
        self.version_mask = 0
        self.difficulty = DEFAULT_DIFFICULTY  # the one the next notify will carry
        self.epoch = 0
        self.jobs: dict[str, ClientJob] = {}
        self._early: list[tuple[p.PoolJob, float]] = []  # notifies before the handshake ended
        self.latest: ClientJob | None = None
        self.last_notify: float | None = None  # monotonic
        self.connected_at: float | None = None  # monotonic, end of the last handshake
        self.malformed = 0  # unusable lines from the pool, since creation
        self.reconnects = 0  # client.reconnect requests followed
        self.reconnects_refused = 0  # client.reconnect requests the follow_reconnect policy declined
        self.down_since: float | None = None  # monotonic: off the pool while following client.reconnect
        self.close_reason: str | None = None
        self.done = asyncio.Event()  # the connection is over for good (no reconnect under way)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._closing = False
        self._tasks: set[asyncio.Task] = set()
        self._last_malformed_log = -math.inf

    def __repr__(self) -> str:
        return f"StratumClient({self.host}:{self.port}, user={self.user!r})"

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing() and self.epoch > 0 \
            and not self.done.is_set()

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and do the whole handshake; PoolAuthError, PoolProtocolError, OSError, TimeoutError."""
        try:
            await self._open(self.host, self.port)
            await self._handshake()
        except BaseException:
            await self._drop("handshake_failed")
            self._finish("handshake_failed")
            raise

    async def close(self, reason: str = "closed") -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await self._drop(reason)
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        self.done.set()

    async def _open(self, host: str, port: int) -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=1 << 16),
                                                self.connect_timeout)
        self._reader, self._writer = reader, writer
        self.host, self.port = host, port
        self._framer = NewlineFramer(self.max_line_bytes)
        self._read_task = asyncio.create_task(self._read_loop(reader))

    async def _drop(self, reason: str) -> None:
        """Close the socket and fail every waiting request (their answers can no longer come)."""
        writer, task = self._writer, self._read_task
        self._writer, self._read_task = None, None
        self._fail_pending(reason)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if writer is not None:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 2.0)
            except (asyncio.TimeoutError, OSError):
                pass

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(PoolDisconnected(f"connection to {self.host}:{self.port} lost ({reason})"))

    async def _handshake(self) -> None:
        self.version_mask = 0
        if self.version_rolling:
            await self._configure()
        result = await self._call("mining.subscribe", [self.user_agent])
        try:
            self.extranonce1, self.extranonce2_size = p.parse_subscribe_result(result)
        except p.ProtocolError as e:
            raise PoolProtocolError(f"subscribe: {e}") from None
        if self.suggest_difficulty is not None:
            self._fire_and_forget("mining.suggest_difficulty", [self.suggest_difficulty])
        try:
            ok = await self._call("mining.authorize", [self.user, self.password])
        except p.StratumError as e:
            raise PoolAuthError(f"{self.host}:{self.port} refused worker {self.user!r}: {e}") from None
        if ok is not True:
            raise PoolAuthError(f"{self.host}:{self.port} refused worker {self.user!r}")
        self.epoch = next(_epochs)
        self.connected_at = time.monotonic()
        log.info("pool %s:%d: authorized as %s (extranonce1 %s, extranonce2 %d bytes, version mask %08x)",
                 self.host, self.port, self.user, self.extranonce1.hex(), self.extranonce2_size,
                 self.version_mask)
        # Jobs that came during the handshake (our server sends one right after subscribe,
        # often in the same packet as the answer): made now that extranonce1 is known.
        early, self._early = self._early, []
        for pool_job, difficulty in early:
            self._add_job(pool_job, difficulty)

    async def _configure(self) -> None:
        """BIP310 version rolling: ask for the BIP320 bits, use what the pool grants of them
        (none on error); bits outside BIP320 would be consensus-visible version signals."""
        try:
            result = await self._call("mining.configure", [["version-rolling"], {
                "version-rolling.mask": p.hex8(p.BIP320_VERSION_MASK), "version-rolling.min-bit-count": 2}])
        except (p.StratumError, asyncio.TimeoutError) as e:
            log.info("pool %s:%d: no version rolling (%s)", self.host, self.port, e)
            return
        if isinstance(result, dict) and result.get("version-rolling") is True:
            try:
                self.version_mask = p.u32_from_hex8(result.get("version-rolling.mask")) & p.BIP320_VERSION_MASK
            except ValueError:
                log.warning("pool %s:%d: bad version-rolling.mask %r: no rolling", self.host, self.port,
                            result.get("version-rolling.mask"))

    # -- requests -----------------------------------------------------------------------------

    def _send(self, msg: p.Message) -> None:
        if self._writer is None or self._writer.is_closing():
            raise PoolDisconnected(f"not connected to {self.host}:{self.port}")
        self._writer.write(p.encode(msg))

    def _request(self, method: str, params: list) -> asyncio.Future:
        msg_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._send(p.Request(msg_id, method, params))
        self._pending[msg_id] = fut
        fut.add_done_callback(lambda _f: self._pending.pop(msg_id, None))
        return fut

    async def _call(self, method: str, params: list, timeout: float | None = None) -> Any:
        """The result of one request; StratumError for an error answer."""
        fut = self._request(method, params)
        result, error = await asyncio.wait_for(fut, timeout or self.request_timeout)
        if error is not None:
            raise error
        return result

    def _fire_and_forget(self, method: str, params: list) -> None:
        fut = self._request(method, params)
        # Some pools never answer: nobody waits, and a lost connection is not an error here.
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._spawn(self._expire(fut))

    async def _expire(self, fut: asyncio.Future) -> None:
        await asyncio.sleep(self.request_timeout)
        fut.cancel()

    async def submit(self, job_id: str, extranonce2: bytes, ntime: int, nonce: int,
                     version_bits: int | None = None) -> SubmitAnswer:
        """Send a share and return the pool's answer; no answer in time (or a lost connection) is unknown."""
        params = p.submit_params(self.user, job_id, extranonce2, ntime, nonce, version_bits)
        try:
            result, error = await asyncio.wait_for(self._request("mining.submit", params), self.submit_timeout)
        except asyncio.TimeoutError:
            log.warning("pool %s:%d: no answer to share for job %s within %.0f s", self.host, self.port,
                        job_id, self.submit_timeout)
            return SubmitAnswer.unknown("no answer from the pool")
        except PoolDisconnected as e:
            return SubmitAnswer.unknown(str(e))
        if error is not None:
            return SubmitAnswer(False, error)
        if result is True:
            return SubmitAnswer(True, None)
        return SubmitAnswer(False, p.StratumError.other(f"pool answered {result!r}"))

    # -- reading ------------------------------------------------------------------------------

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        reason = "pool_closed"
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for item in self._framer.feed(data):
                    if isinstance(item, Oversized):
                        self._malformed(f"line over {self.max_line_bytes} bytes dropped")
                        continue
                    self._handle_line(item)
        except asyncio.CancelledError:
            raise
        except (ConnectionError, OSError) as e:
            reason = f"connection_error: {e}"
        except Exception:
            # A bug of ours on some pool line: never a silently dead reader that still looks
            # connected. Drop the connection; the failover reconnects.
            log.exception("pool %s:%d: reader failed", self.host, self.port)
            reason = "internal_error"
        # The pool hung up (or the network did): this connection is over.
        if self._read_task is asyncio.current_task():
            self._read_task = None
            self._spawn(self._lost(reason))

    async def _lost(self, reason: str) -> None:
        log.info("pool %s:%d: disconnected (%s)", self.host, self.port, reason)
        self.metrics.upstream_up.set(0)
        await self._drop(reason)
        self._finish(reason)

    def _malformed(self, what: str) -> None:
        self.malformed += 1
        self.metrics.upstream_malformed.inc()
        now = time.monotonic()
        if now - self._last_malformed_log >= MALFORMED_LOG_INTERVAL:
            self._last_malformed_log = now
            log.warning("pool %s:%d: %s (%d unusable lines so far)", self.host, self.port, what, self.malformed)

    def _handle_line(self, line: bytes) -> None:
        try:
            msg = p.parse_message(line)
        except p.ProtocolError as e:
            self._malformed(f"malformed line: {e}")
            return
        if isinstance(msg, p.Response):
            fut = self._pending.get(msg.id) if isinstance(msg.id, int) else None
            if fut is None or fut.done():
                self._malformed(f"answer to no request we sent (id {msg.id!r})")
                return
            try:
                error = p.StratumError.from_json(msg.error)
            except p.ProtocolError as e:
                error = p.StratumError.other(str(e))
            fut.set_result((msg.result, error))
            return
        handler = self.HANDLERS.get(msg.method)
        msg_id = msg.id if isinstance(msg, p.Request) else None
        if handler is None:
            self._malformed(f"unknown method {msg.method[:40]!r}")
            if msg_id is not None:
                self._reply(msg_id, None, p.StratumError.other("unknown method"))
            return
        try:
            result = handler(self, msg.params)
        except (p.ProtocolError, p.StratumError, ValueError, TypeError, OverflowError) as e:
            # OverflowError: e.g. a port of 1e400 parses as inf and int(inf) overflows.
            self._malformed(f"bad {msg.method}: {e}")
            return
        # mining.notify and friends may carry an id (often 0): only real requests get answers.
        if msg_id is not None and msg.method in self.ANSWERED:
            self._reply(msg_id, result, None)

    def _reply(self, msg_id: Any, result: Any, error: p.StratumError | None) -> None:
        try:
            self._send(p.Response(msg_id, result, error))
        except PoolDisconnected:
            pass

    def _on_notify(self, params: list) -> None:
        pool_job = p.parse_notify(params)
        self.last_notify = time.monotonic()
        if not self.epoch:
            self._early = self._early[-(MAX_JOBS - 1):] + [(pool_job, self.difficulty)]
            return
        self._add_job(pool_job, self.difficulty)

    def _add_job(self, pool_job: p.PoolJob, difficulty: float) -> None:
        job = p.pool_job_to_job(pool_job, self.extranonce1, self.extranonce2_size)
        cj = ClientJob(job, difficulty_to_target(difficulty), difficulty, self.extranonce1,
                       self.extranonce2_size, self.version_mask, self.epoch)
        if pool_job.clean:
            self.jobs.clear()
        self.jobs[job.job_id] = cj
        while len(self.jobs) > MAX_JOBS:
            del self.jobs[next(iter(self.jobs))]
        self.latest = cj
        self._deliver(cj)

    def _deliver(self, cj: ClientJob) -> None:
        if self.on_job is not None:
            try:
                self.on_job(cj)
            except Exception:
                log.exception("job callback failed for pool job %s", cj.job.job_id)

    def _on_set_difficulty(self, params: list) -> None:
        # Same shape as suggest_difficulty: [d], a number or a numeric string, finite and > 0.
        self.difficulty = p.parse_suggest_difficulty(params)  # from the next notify on

    def _on_set_extranonce(self, params: list) -> None:
        self.extranonce1, self.extranonce2_size = p.parse_subscribe_result([None, *params[:2]])

    def _on_set_version_mask(self, params: list) -> None:
        """BIP310: the pool changed the version-rolling mask, valid at once: every job we
        hold is rolled (and its shares checked and sent) with the new mask from now on."""
        mask = p.parse_set_version_mask(params)
        if not self.version_rolling:
            raise ValueError("we did not offer version rolling")
        mask &= p.BIP320_VERSION_MASK  # never bits beyond those we asked for in mining.configure
        if mask == self.version_mask:
            return
        log.info("pool %s:%d: version mask %08x -> %08x", self.host, self.port, self.version_mask, mask)
        self.version_mask = mask
        self.jobs = {job_id: replace(cj, version_mask=mask) for job_id, cj in self.jobs.items()}
        if self.latest is not None:
            self.latest = replace(self.latest, version_mask=mask)
        if self.on_version_mask is not None:
            try:
                self.on_version_mask(self.epoch, mask)
            except Exception:
                log.exception("version mask callback failed")

    def _on_reconnect(self, params: list) -> None:
        host = params[0] if params and isinstance(params[0], str) and params[0] else self.host
        port = params[1] if len(params) > 1 and params[1] not in (None, "") else self.port
        wait = params[2] if len(params) > 2 and params[2] not in (None, "") else 0
        port, wait = int(port), float(wait)
        if not (0 < port < 65536 and 0 <= wait <= 3600):
            raise ValueError(f"bad port {port} or wait {wait}")
        if not reconnect_allowed(self.follow_reconnect, self.url.host, host):
            # Following would hand our worker name and password to a host the config does
            # not name: stay on this connection (the failover handles it if it ends).
            self.reconnects_refused += 1
            log.warning("pool %s:%d asks us to reconnect to %s:%d: not followed (upstream.follow_reconnect = %s)",
                        self.host, self.port, str(host)[:255], port, self.follow_reconnect)
            return
        self._spawn(self._reconnect(host, port, wait))

    async def _reconnect(self, host: str, port: int, wait: float) -> None:
        log.info("pool %s:%d asks us to reconnect to %s:%d in %.0f s", self.host, self.port, host, port, wait)
        self.reconnects += 1
        self.down_since = time.monotonic()
        reader_task, self._read_task = self._read_task, None  # it must not declare the connection lost
        if reader_task is not None:
            reader_task.cancel()  # it is not us: handlers run _reconnect as a task of its own
        await self._drop("reconnect")
        self.epoch = 0
        self.jobs.clear()
        self._early = []
        self.latest = None
        try:
            await asyncio.sleep(wait)
            await self._open(host, port)
            await self._handshake()
            self.down_since = None
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("reconnect to %s:%d failed: %s", host, port, e)
            await self._drop("reconnect_failed")
            self._finish("reconnect_failed")

    def _on_ping(self, params: list) -> str:
        return "pong"

    def _on_get_version(self, params: list) -> str:
        return self.user_agent

    def _on_show_message(self, params: list) -> None:
        text = params[0] if params else ""
        log.info("message from pool %s:%d: %s", self.host, self.port, str(text)[:500])

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    HANDLERS = {
        "mining.notify": _on_notify,
        "mining.set_difficulty": _on_set_difficulty,
        "mining.set_extranonce": _on_set_extranonce,
        "mining.set_version_mask": _on_set_version_mask,
        "client.reconnect": _on_reconnect,
        "mining.ping": _on_ping,
        "client.get_version": _on_get_version,
        "client.show_message": _on_show_message,
    }
    # Methods that are requests: answered when they carry an id.
    ANSWERED = frozenset({"mining.ping", "client.get_version"})


# --- failover --------------------------------------------------------------------------------

@dataclass(frozen=True)
class FailoverState:
    index: int | None  # which pool of the list we are on (None: none yet)
    url: str | None
    up: bool
    failovers: int


class PoolFailover:
    """An ordered list of pools: mine on the first that works; come back to a better one when it heals."""

    def __init__(self, urls: list[str | PoolURL], user: str, password: str = "x", *,
                 silent_after: float = 120.0, backoff_min: float = 1.0, backoff_max: float = 60.0,
                 probe_interval: float = 30.0, probe_timeout: float = 15.0, check_interval: float = 1.0,
                 reconnect_grace: float = 30.0,
                 version_rolling: bool = True, suggest_difficulty: float | None = None,
                 user_agent: str = "gridminer/0.1", metrics: Metrics | None = None,
                 on_job: OnJob | None = None, follow_reconnect: str = "same-host") -> None:
        if not urls:
            raise ValueError("at least one pool URL is needed")
        self.urls = [u if isinstance(u, PoolURL) else PoolURL.parse(u) for u in urls]
        self.user, self.password = user, password
        self.silent_after = silent_after  # s without a notify before we leave a pool
        self.backoff_min, self.backoff_max = backoff_min, backoff_max  # s between rounds of failures
        self.probe_interval = probe_interval  # s between probes of better pools
        self.probe_timeout = probe_timeout  # s a probe may take, handshake to first job
        self.check_interval = check_interval  # s between health checks of the current pool
        # s we wait for a pool that sent client.reconnect to take us back before moving on
        # (a restart takes seconds; a pool must not park us for the hour it asked for).
        self.reconnect_grace = reconnect_grace
        self.client_options = dict(version_rolling=version_rolling, suggest_difficulty=suggest_difficulty,
                                   user_agent=user_agent, follow_reconnect=follow_reconnect)
        self.metrics = metrics if metrics is not None else Metrics()
        self.on_job = on_job
        self.on_version_mask: OnVersionMask | None = None  # the active pool's mining.set_version_mask
        self.client: StratumClient | None = None
        self.index: int | None = None
        self.failovers = 0
        self.last_failure: str | None = None

    @property
    def up(self) -> bool:
        return self.client is not None and self.client.connected

    @property
    def state(self) -> FailoverState:
        return FailoverState(self.index, str(self.urls[self.index]) if self.index is not None else None,
                             self.up, self.failovers)

    def _new_client(self, index: int) -> StratumClient:
        return StratumClient(self.urls[index], self.user, self.password, metrics=self.metrics,
                             **self.client_options)

    async def _healthy(self, index: int, job_timeout: float) -> StratumClient | None:
        """A client to pool `index` that did the handshake, then sent a job within job_timeout; else None."""
        client = self._new_client(index)
        try:
            await client.connect()  # bounded by the client's connect and request timeouts
            await asyncio.wait_for(self._first_job(client), job_timeout)
            return client
        except asyncio.CancelledError:
            await client.close("cancelled")
            raise
        except Exception as e:
            if isinstance(e, asyncio.TimeoutError) and client.epoch:
                e = TimeoutError(f"silent: no job within {job_timeout:g} s")
            self.last_failure = f"{self.urls[index]}: {type(e).__name__}: {e}"
            log.info("pool %s not usable: %s", self.urls[index], e or type(e).__name__)
            await client.close("unusable")
            return None

    @staticmethod
    async def _first_job(client: StratumClient) -> None:
        while client.latest is None:
            if client.done.is_set():
                raise PoolDisconnected(f"closed before its first job ({client.close_reason})")
            await asyncio.sleep(0.02)

    def _adopt(self, index: int, client: StratumClient) -> None:
        if self.index is not None and self.index != index:
            self.failovers += 1
            self.metrics.upstream_failovers.inc()
            log.warning("pool failover: %s -> %s", self.urls[self.index], self.urls[index])
        self.client, self.index = client, index
        self.metrics.upstream_pool_index.set(index)
        self.metrics.upstream_up.set(1)
        client.on_job = self._forward
        client.on_version_mask = self._forward_version_mask
        if client.latest is not None:
            self._forward(client.latest)

    def _forward(self, cj: ClientJob) -> None:
        if self.on_job is not None:
            self.on_job(cj)

    def _forward_version_mask(self, epoch: int, mask: int) -> None:
        if self.on_version_mask is not None:
            self.on_version_mask(epoch, mask)

    async def run(self) -> None:
        """Forever: find a working pool, mine on it until it fails, move on."""
        index, delay, tried = 0, self.backoff_min, 0
        try:
            while True:
                if self.client is None:
                    client = await self._healthy(index, self.silent_after)
                    if client is None:
                        tried += 1
                        index = (index + 1) % len(self.urls)
                        if tried >= len(self.urls):
                            log.warning("no pool usable (last: %s); retrying in %.1f s", self.last_failure, delay)
                            await asyncio.sleep(delay)
                            delay = min(2 * delay, self.backoff_max)
                            tried = 0
                        continue
                    delay, tried = self.backoff_min, 0
                    self._adopt(index, client)
                reason = await self._watch()
                if reason == "promoted":
                    continue  # _watch adopted a better pool already
                self.last_failure = f"{self.urls[self.index]}: {reason}"
                await self.client.close(reason)
                self.client = None
                # The failed pool is tried last in the next round, not first.
                index = (self.index + 1) % len(self.urls)
        finally:
            if self.client is not None:
                await self.client.close("stopped")

    async def _watch(self) -> str:
        """Until the current pool fails: its reason. "promoted" when a better pool took over."""
        client = self.client
        next_probe = time.monotonic() + self.probe_interval
        while True:
            try:
                await asyncio.wait_for(client.done.wait(), self.check_interval)
            except asyncio.TimeoutError:
                pass
            if client.done.is_set():
                log.warning("pool %s lost: %s", self.urls[self.index], client.close_reason)
                return "disconnected"
            if client.down_since is not None and time.monotonic() - client.down_since > self.reconnect_grace:
                log.warning("pool %s did not take us back within %.0f s", self.urls[self.index],
                            self.reconnect_grace)
                return "reconnect_timeout"
            last = client.last_notify or client.connected_at or time.monotonic()
            if time.monotonic() - last > self.silent_after:
                log.warning("pool %s sent no job for %.0f s: leaving it", self.urls[self.index], self.silent_after)
                return "silent"
            if self.index and time.monotonic() >= next_probe:
                for better in range(self.index):
                    probe = await self._healthy(better, min(self.probe_timeout, self.silent_after))
                    if probe is not None:
                        log.info("pool %s healthy again: returning to it", self.urls[better])
                        old = self.client
                        self._adopt(better, probe)
                        await old.close("failback")
                        return "promoted"
                next_probe = time.monotonic() + self.probe_interval
