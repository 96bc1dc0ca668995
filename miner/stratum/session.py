"""One miner's connection: framing -> protocol -> share checks, with limits.

    bytes ─► NewlineFramer (line cap) ─► parse_message ─► handler ─► one Response per Request
    server.broadcast(job) ─► send_job(): [set_difficulty] + notify (issued in the ShareBook)
    mining.submit ─► check_share (at the difficulty the job was issued with) ─► reply
                     └─ a block ─► server.found_block(job, solution): journal, submitblock

Every refusal is a definite reply with its stratum code and a metric; limits close the
connection (counted) and never touch other sessions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from miner.stratum import protocol as p
from miner.stratum.framing import NewlineFramer, Oversized
from miner.stratum.shares import Reject, ShareBook, check_share
from miner.stratum.vardiff import VardiffState
from miner.work.job import Job

if TYPE_CHECKING:
    from miner.stratum.server import StratumServer

log = logging.getLogger(__name__)

_REJECT_ERRORS = {
    21: p.StratumError.job_not_found,
    22: p.StratumError.duplicate,
    23: p.StratumError.low_difficulty,
    24: p.StratumError.unauthorized,
    25: p.StratumError.not_subscribed,
}


class Disconnect(Exception):
    """Close this session; the reason is a bounded metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def reject_error(reject: Reject) -> p.StratumError:
    factory = _REJECT_ERRORS.get(reject.code)
    return factory() if factory is not None else p.StratumError.other(reject.message)


class StratumSession:
    def __init__(self, server: StratumServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 session_part: bytes, peer_ip: str) -> None:
        self.server, self.reader, self.writer = server, reader, writer
        self.session_part, self.peer_ip = session_part, peer_ip
        self.limits = server.limits
        self.framer = NewlineFramer(self.limits.max_line_bytes)
        self.book = ShareBook()
        self.subscribed = False
        self.extranonce_subscribed = False
        self.workers: dict[str, str] = {}  # authorized worker name -> site label
        self.version_mask = 0  # 0 until mining.configure agrees on version rolling
        self.vardiff: VardiffState | None = None
        self.difficulty_sent: float | None = None
        self.invalid_shares = 0
        self._pending_suggestion: Any = None  # a suggest_difficulty that came before any job
        self._tokens = float(self.limits.message_burst)
        self._tokens_at = time.monotonic()
        self._connected_at = time.monotonic()
        self.closed = False

    def local_host(self, listen_host: str) -> str:
        """The address this miner reached us on: a wildcard listen address is no place to send it."""
        if listen_host not in ("0.0.0.0", "::", ""):
            return listen_host
        sockname = self.writer.get_extra_info("sockname")
        return sockname[0] if sockname else listen_host

    @property
    def extranonce1(self) -> bytes:
        """What this miner's coinbase starts with: the upstream's prefix (proxy) + our part."""
        return self.server.extranonce1_prefix + self.session_part

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        reason = "client_closed"
        try:
            while True:
                async with asyncio.timeout(self._read_timeout()):  # no Task per read, unlike wait_for
                    data = await self.reader.read(65536)
                if not data:
                    break
                self.server.bytes_in.inc(len(data))
                for item in self.framer.feed(data):
                    if isinstance(item, Oversized):
                        self._limit("line_length")
                        raise Disconnect("line_too_long")
                    await self._handle_line(item)
        except asyncio.TimeoutError:
            reason = "unauthorized_timeout" if not self.workers else "idle_timeout"
            self._limit(reason)
        except Disconnect as d:
            reason = d.reason
        except (ConnectionError, OSError):
            reason = "connection_error"
        finally:
            await self.close(reason)

    def _read_timeout(self) -> float:
        if not self.workers:
            left = self.limits.unauthorized_timeout - (time.monotonic() - self._connected_at)
            return max(0.0, min(left, self.limits.idle_timeout))
        return self.limits.idle_timeout

    async def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.metrics.stratum_disconnects.labels(reason).inc()
        self.server.forget(self)
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass

    def _limit(self, name: str) -> None:
        self.server.metrics.stratum_limit_hits.labels(name).inc()

    # -- writing -----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue bytes; a client that stops reading is dropped, not allowed to grow our memory."""
        if self.closed:
            return
        transport = self.writer.transport
        if transport.get_write_buffer_size() > self.limits.max_write_buffer:
            self._limit("write_buffer")
            self._close_soon("slow_reader")
            return
        self.writer.write(data)
        self.server.bytes_out.inc(len(data))

    def reply(self, msg_id: Any, result: Any = None, error: p.StratumError | None = None) -> None:
        self.send(p.encode(p.Response(msg_id, result, error)))

    # -- jobs ----------------------------------------------------------------------------------

    def send_job(self, job: Job, clean: bool) -> None:
        """Issue job to this miner at its current difficulty: [set_difficulty] then notify.

        The lines are encoded once per (job, difficulty) for all sessions; the job id is
        per difficulty, so shares are always judged at the difficulty they were issued with.
        """
        if not self.subscribed or self.closed:
            return
        difficulty = self.current_difficulty(job)
        lines = self.server.issue_lines(job, difficulty)
        if difficulty != self.difficulty_sent:
            self.send(lines.set_difficulty)
            self.difficulty_sent = difficulty
        self.book.issue(job, job_id=lines.job_id, share_target=lines.share_target, now=time.time())
        self.send(lines.notify_clean if clean else lines.notify)

    def current_difficulty(self, job: Job) -> float:
        if self.vardiff is None:
            self.vardiff = self.server.vardiff.start(time.time(), self.server.network_difficulty(job),
                                                     self._pending_suggestion)
        # Proxy mode: never below the pool's difficulty, so every accepted share can go upstream.
        return min(max(self.vardiff.difficulty, self.server.difficulty_floor), self.server.network_difficulty(job))

    # -- requests --------------------------------------------------------------------------------

    def _rate_ok(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.limits.message_burst,
                           self._tokens + (now - self._tokens_at) * self.limits.messages_per_second)
        self._tokens_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    async def _handle_line(self, line: bytes) -> None:
        if not self._rate_ok():
            self._limit("message_rate")
            raise Disconnect("message_rate")
        try:
            msg = p.parse_message(line)
        except p.ProtocolError as e:
            self.server.metrics.stratum_protocol_errors.labels("malformed_line").inc()
            if e.id is not None:
                self.reply(e.id, None, p.StratumError.other(str(e)))
            return
        if isinstance(msg, p.Response):
            return  # an answer to our ping or get_version: nothing to do
        handler = self.HANDLERS.get(msg.method)
        msg_id = msg.id if isinstance(msg, p.Request) else None
        if handler is None:
            self.server.metrics.stratum_protocol_errors.labels("unknown_method").inc()
            if msg_id is not None:
                self.reply(msg_id, None, p.StratumError.other(f"unknown method {msg.method[:40]!r}"))
            return
        try:
            result = await handler(self, msg.params)
        except p.StratumError as e:
            self.server.metrics.stratum_protocol_errors.labels("bad_params").inc()
            if msg_id is not None:
                self.reply(msg_id, None, e)
            return
        except Exception:
            # Our bug, not the miner's: answer, count and log it; the connection lives on.
            log.exception("stratum handler %s failed", msg.method)
            self.server.metrics.stratum_protocol_errors.labels("internal").inc()
            if msg_id is not None:
                self.reply(msg_id, None, p.StratumError.other("internal error"))
            return
        if msg_id is not None:
            self.reply(msg_id, result)

    async def _subscribe(self, params: list) -> Any:
        sub = p.parse_subscribe(params)
        if sub.session_id:
            self.session_part = self.server.resume_part(self, sub.session_id)
        self.subscribed = True
        self._msg_after(self.server.resend_current_job, self)
        return p.subscribe_result(self.extranonce1, self.server.extranonce2_size, self.session_part.hex())

    async def _authorize(self, params: list) -> Any:
        auth = p.parse_authorize(params)
        site = self.server.authorize(auth.worker, auth.password)
        if site is None:
            return False  # the miner sees false; shares from this worker get code 24
        self.workers[auth.worker] = site
        return True

    async def _configure(self, params: list) -> Any:
        configure = p.parse_configure(params)
        mask = None
        if "version-rolling" in configure.extensions:
            self.version_mask = p.negotiate_version_rolling(configure, self.server.version_mask)
            mask = self.version_mask
        min_diff = None
        if "minimum-difficulty" in configure.extensions:
            value = configure.options.get("minimum-difficulty.value")
            min_diff = self._suggest(value) if value is not None else False
        unknown = [e for e in configure.extensions if e not in ("version-rolling", "minimum-difficulty")]
        return p.configure_result(mask, min_diff, unknown)

    def _suggest(self, value: Any) -> bool:
        now = time.time()
        job = self.server.current_job
        if job is None:
            # No job yet, so no network difficulty to clamp against: remember the
            # suggestion; the first job starts vardiff from it.
            self._pending_suggestion = value
            return True
        network = self.server.network_difficulty(job)
        state = self.vardiff or self.server.vardiff.start(now, network)
        new, self.vardiff = self.server.vardiff.suggest(state, value, now, network)
        if new is not None and job is not None:
            self._msg_after(self.server.resend_current_job, self)
        return new is not None or self.vardiff.floor > 0

    async def _suggest_difficulty(self, params: list) -> Any:
        self._suggest(p.parse_suggest_difficulty(params))
        return True

    async def _extranonce_subscribe(self, params: list) -> Any:
        p.parse_extranonce_subscribe(params)
        self.extranonce_subscribed = True
        return True

    async def _ping(self, params: list) -> Any:
        return "pong"

    async def _submit(self, params: list) -> Any:
        try:
            submit = p.parse_submit(params)
        except p.StratumError:
            self._count_share("other", Reject.MALFORMED.label)
            raise
        site = self.workers.get(submit.worker, "other")
        result = check_share(self.book, job_id=submit.job_id, extranonce1=self.extranonce1,
                             extranonce2=submit.extranonce2, ntime=submit.ntime, nonce=submit.nonce,
                             version_bits=submit.version_bits, version_mask=self.version_mask,
                             now=time.time(), subscribed=self.subscribed,
                             authorized=submit.worker in self.workers)
        if not result.accepted:
            self._count_share(site, result.reject.label)
            self.invalid_shares += 1
            if self.invalid_shares > self.limits.max_invalid_shares:
                self._limit("invalid_shares")
                self._close_soon("invalid_shares")  # after this reply goes out
            raise reject_error(result.reject)
        if result.is_block:
            self.server.found_block(result.issued.job, result.solution)
        if self.server.on_share is not None:
            # Proxy mode: the pool's answer is the miner's answer, never "accepted" before it.
            error = await self.server.on_share(result.issued.job, result.solution)
            if error is not None:
                self._count_share(site, "upstream_rejected")
                raise error
        self.invalid_shares = 0
        self._count_share(site, "accepted")
        self.server.metrics.stratum_share_work.labels(site).inc(result.issued.difficulty)
        self.server.count_worker_work(submit.worker, result.issued.difficulty)
        self._retarget(result.issued.difficulty)
        return True

    def _close_soon(self, reason: str) -> None:
        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.close(reason)))

    def _count_share(self, site: str, result: str) -> None:
        self.server.count_share(site, result)

    def _retarget(self, issued_difficulty: float) -> None:
        job = self.server.current_job
        if job is None or self.vardiff is None:
            return
        now = time.time()
        vd = self.server.vardiff
        self.vardiff = vd.on_share(self.vardiff, issued_difficulty, now)
        new, self.vardiff = vd.next_difficulty(self.vardiff, now, self.server.network_difficulty(job))
        if new is not None:
            # set_difficulty applies from the next job: re-issue the current one at once.
            self._msg_after(self.server.resend_current_job, self)

    def tick(self) -> None:
        """Called about once a second: vardiff steps down for a miner that went quiet."""
        job = self.server.current_job
        if job is None or self.vardiff is None or self.closed:
            return
        new, self.vardiff = self.server.vardiff.next_difficulty(self.vardiff, time.time(),
                                                                self.server.network_difficulty(job))
        if new is not None:
            self.server.resend_current_job(self)

    @staticmethod
    def _msg_after(fn, *args) -> None:
        """Run fn after the current reply is written (notify follows the subscribe result)."""
        asyncio.get_running_loop().call_soon(fn, *args)

    HANDLERS = {
        "mining.subscribe": _subscribe,
        "mining.authorize": _authorize,
        "mining.configure": _configure,
        "mining.suggest_difficulty": _suggest_difficulty,
        "mining.extranonce.subscribe": _extranonce_subscribe,
        "mining.submit": _submit,
        "mining.ping": _ping,
    }

