"""One miner's connection: framing -> protocol -> share checks, with limits.

    bytes ─► NewlineFramer (line cap) ─► parse_message ─► handler ─► one Response per Request
    server.broadcast(job) ─► send_job(): [set_difficulty] + notify (issued in the ShareBook)
    mining.submit ─► check_share (at the difficulty the job was issued with) ─► reply
                     └─ a block ─► server.found_block(job, solution): journal, submitblock

Every refusal is a definite reply with its stratum code and a metric; limits close the
connection (counted) and never touch other sessions.

What the abuse limits count: every message costs one token of the message-rate bucket
except an accepted share (a fast honest miner is never throttled for being fast) and a
share on a job it was sent that went stale with the tip (refused before any hashing; a
fast miner has a backlog of them on every tip, longer the busier we are); only
shares refused as invalid (codes 20, 22-25) count toward max_invalid_shares: a stale
share (21) is a race with the chain, not misbehaviour. Submits that arrive before the handshake
is answered (a miner reconnecting with shares of its last job in flight) wait, and are
judged right after the authorize reply, so that reply is the first answer the miner reads.
In proxy mode the pool's answer to a share comes back while the session keeps reading.
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

# Submits held per connection until its handshake is answered (at most this many, for at
# most SUBMIT_HOLD_S seconds); the rest are judged at once.
MAX_HELD_SUBMITS = 256
SUBMIT_HOLD_S = 2.0
# Shares of one connection waiting for the upstream pool's answer (proxy mode); at this
# many the session waits for the oldest answer before reading on.
MAX_PENDING_UPSTREAM = 64

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
    if reject is Reject.STALE:
        return p.StratumError(p.StratumError.JOB_NOT_FOUND, reject.message)
    factory = _REJECT_ERRORS.get(reject.code)
    return factory() if factory is not None else p.StratumError.other(reject.message)


class StratumSession:
    def __init__(self, server: StratumServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 session_part: bytes, peer_ip: str) -> None:
        self.server, self.reader, self.writer = server, reader, writer
        self.session_part, self.peer_ip = session_part, peer_ip
        self.limits = server.limits
        self.framer = NewlineFramer(self.limits.max_line_bytes)
        self.book = ShareBook(ledger=server.ledger)
        self.subscribed = False
        self.extranonce_subscribed = False
        self.workers: dict[str, str] = {}  # authorized worker name -> site label
        self.version_mask = 0  # 0 until mining.configure agrees on version rolling
        self.miner_version_mask: int | None = None  # what the miner asked for, once it negotiated rolling
        self.version_rolling_min_bits = 0
        self.address_group = ""  # the per-address limit's key (server sets it)
        self.counted_unauthorized = False  # counted toward the per-address limit until authorized
        self.vardiff: VardiffState | None = None
        self.difficulty_sent: float | None = None
        self.invalid_shares = 0
        self._authorize_answered = False
        self._held: list[tuple[Any, list]] = []  # (request id, params) of submits before the handshake
        self._hold_timer: asyncio.TimerHandle | None = None
        self._upstream: set[asyncio.Task] = set()  # proxy: shares waiting for the pool's answer
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
                    if len(self._upstream) >= MAX_PENDING_UPSTREAM:
                        await asyncio.wait(self._upstream, return_when=asyncio.FIRST_COMPLETED)
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
        if self._hold_timer is not None:
            self._hold_timer.cancel()
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
        self.book.issue(job, job_id=lines.job_id, share_target=lines.share_target, now=time.time(),
                        extranonce1=self.extranonce1)
        self.send(lines.notify_clean if clean else lines.notify)

    def current_difficulty(self, job: Job) -> float:
        if self.vardiff is None:
            self.vardiff = self.server.vardiff.start(time.time(), self.server.network_difficulty(job),
                                                     self._pending_suggestion)
        # Proxy mode: never below the pool's difficulty, so every accepted share can go upstream.
        return min(max(self.vardiff.difficulty, self.server.difficulty_floor), self.server.network_difficulty(job))

    # -- requests --------------------------------------------------------------------------------

    def _charge(self) -> None:
        """One message's token from the rate bucket; Disconnect when there is none left."""
        now = time.monotonic()
        self._tokens = min(self.limits.message_burst,
                           self._tokens + (now - self._tokens_at) * self.limits.messages_per_second)
        self._tokens_at = now
        if self._tokens < 1:
            self._limit("message_rate")
            raise Disconnect("message_rate")
        self._tokens -= 1

    async def _handle_line(self, line: bytes) -> None:
        """Answer one line, then charge it to the rate bucket unless it was an accepted share."""
        try:
            msg = p.parse_message(line)
        except p.ProtocolError as e:
            self.server.metrics.stratum_protocol_errors.labels("malformed_line").inc()
            if e.id is not None:
                self.reply(e.id, None, p.StratumError.other(str(e)))
            self._charge()
            return
        if isinstance(msg, p.Response):
            self._charge()
            return  # an answer to our ping or get_version: nothing to do
        msg_id = msg.id if isinstance(msg, p.Request) else None
        if msg.method == "mining.submit":
            if not self._submit_request(msg_id, msg.params):
                self._charge()
            return
        handler = self.HANDLERS.get(msg.method)
        if handler is None:
            self.server.metrics.stratum_protocol_errors.labels("unknown_method").inc()
            if msg_id is not None:
                self.reply(msg_id, None, p.StratumError.other(f"unknown method {msg.method[:40]!r}"))
            self._charge()
            return
        try:
            result = await handler(self, msg.params)
        except p.StratumError as e:
            self.server.metrics.stratum_protocol_errors.labels("bad_params").inc()
            if msg_id is not None:
                self.reply(msg_id, None, e)
        except Exception:
            # Our bug, not the miner's: answer, count and log it; the connection lives on.
            log.exception("stratum handler %s failed", msg.method)
            self.server.metrics.stratum_protocol_errors.labels("internal").inc()
            if msg_id is not None:
                self.reply(msg_id, None, p.StratumError.other("internal error"))
        else:
            if msg_id is not None:
                self.reply(msg_id, result)
        if msg.method == "mining.authorize":
            self._authorize_answered = True
        self._charge()
        if self._held and self._handshake_answered():
            self._release_held()

    def _handshake_answered(self) -> bool:
        return self.subscribed and self._authorize_answered

    def _release_held(self) -> None:
        """Judge the submits held for the handshake, in the order they came."""
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        held, self._held = self._held, []
        for held_id, params in held:
            if not self._submit_request(held_id, params, hold=False):
                self._charge()

    def _release_held_late(self) -> None:
        """No handshake within SUBMIT_HOLD_S: answer what was held (25/24 as it stands)."""
        self._hold_timer = None
        if self.closed:
            return
        try:
            self._release_held()
        except Disconnect as d:
            self._close_soon(d.reason)

    async def _subscribe(self, params: list) -> Any:
        sub = p.parse_subscribe(params)
        if sub.session_id and not self.subscribed:
            self.session_part, parked = self.server.resume_part(self, sub.session_id)
            if parked is not None:
                self.book = parked  # the jobs the miner's last connection was sent
        self.subscribed = True
        self._msg_after(self.server.resend_current_job, self)
        return p.subscribe_result(self.extranonce1, self.server.extranonce2_size, self.session_part.hex())

    async def _authorize(self, params: list) -> Any:
        auth = p.parse_authorize(params)
        site = self.server.authorize(auth.worker, auth.password)
        if site is None:
            return False  # the miner sees false; shares from this worker get code 24
        self.workers[auth.worker] = site
        self.server.authorized(self)
        return True

    async def _configure(self, params: list) -> Any:
        configure = p.parse_configure(params)
        mask = None
        if "version-rolling" in configure.extensions:
            self.version_mask = p.negotiate_version_rolling(configure, self.server.version_mask)
            self.miner_version_mask = p.negotiate_version_rolling(configure, 0xFFFFFFFF)
            self.version_rolling_min_bits = _min_bit_count(configure.options.get("version-rolling.min-bit-count"))
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

    def _submit_request(self, msg_id: Any, params: list, hold: bool = True) -> bool:
        """Judge and answer one mining.submit. True when it costs nothing against the rate
        limit: an accepted share (or one held until the handshake is answered)."""
        if hold and not self._handshake_answered() and len(self._held) < MAX_HELD_SUBMITS:
            self._held.append((msg_id, params))
            if self._hold_timer is None:
                self._hold_timer = asyncio.get_running_loop().call_later(SUBMIT_HOLD_S, self._release_held_late)
            return True
        try:
            submit = p.parse_submit(params)
        except p.StratumError as e:
            self._count_share("other", Reject.MALFORMED.label)
            self.server.metrics.stratum_protocol_errors.labels("bad_params").inc()
            self._invalid_share()
            if msg_id is not None:
                self.reply(msg_id, None, e)
            return False
        site = self.workers.get(submit.worker, "other")
        result = check_share(self.book, job_id=submit.job_id, extranonce1=self.extranonce1,
                             extranonce2=submit.extranonce2, ntime=submit.ntime, nonce=submit.nonce,
                             version_bits=submit.version_bits, version_mask=self.version_mask,
                             now=time.time(), subscribed=self.subscribed,
                             authorized=submit.worker in self.workers)
        if not result.accepted:
            self._count_share(site, result.reject.label)
            if result.reject.code != p.StratumError.JOB_NOT_FOUND:
                self._invalid_share()  # stale work is a race with the chain, not abuse
            if msg_id is not None:
                self.reply(msg_id, None, reject_error(result.reject))
            return result.reject is Reject.STALE
        if result.is_block:
            self.server.found_block(result.issued.job, result.solution)
        if self.server.on_share is None:
            self._accepted(site, submit.worker, result)
            if msg_id is not None:
                self.reply(msg_id, True)
        else:
            # Proxy mode: the pool's answer is the miner's answer, never "accepted" before it;
            # the session reads on (pings, other shares) while the pool thinks.
            task = self.server.spawn(self._forward(msg_id, site, submit.worker, result))
            self._upstream.add(task)
            task.add_done_callback(self._upstream.discard)
        return True

    async def _forward(self, msg_id: Any, site: str, worker: str, result) -> None:
        try:
            error = await self.server.on_share(result.issued.job, result.solution)
        except Exception:
            log.exception("a share could not be forwarded upstream")
            error = p.StratumError.other("internal error")
        if error is not None:
            self._count_share(site, "upstream_rejected")
            if msg_id is not None:
                self.reply(msg_id, None, error)
            return
        self._accepted(site, worker, result)
        if msg_id is not None:
            self.reply(msg_id, True)

    def _accepted(self, site: str, worker: str, result) -> None:
        self.invalid_shares = 0
        if not result.remembered:
            self._limit("duplicate_memory")
        self._count_share(site, "accepted")
        self.server.metrics.stratum_share_work.labels(site).inc(result.issued.difficulty)
        self.server.count_worker_work(worker, result.issued.difficulty)
        self._retarget(result.issued.difficulty)

    def _invalid_share(self) -> None:
        self.invalid_shares += 1
        if self.invalid_shares > self.limits.max_invalid_shares:
            self._limit("invalid_shares")
            self._close_soon("invalid_shares")  # after this reply goes out

    def renegotiate_version_mask(self) -> None:
        """Proxy: the upstream's mask changed. A miner that negotiated rolling gets the new
        agreed mask (mining.set_version_mask), or, when it leaves fewer bits than the miner
        needs, a client.reconnect (it negotiates again)."""
        if self.miner_version_mask is None or not self.subscribed or self.closed:
            return
        mask = self.server.version_mask & self.miner_version_mask
        if mask == self.version_mask:
            return
        if bin(mask).count("1") < self.version_rolling_min_bits:
            self.send(p.encode(p.reconnect(self.local_host(self.server.host), self.server.port, 0)))
            self._close_soon("version_mask_changed")
            return
        self.version_mask = mask
        self.send(p.encode(p.set_version_mask(mask)))

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
        "mining.ping": _ping,
    }



def _min_bit_count(value: Any) -> int:
    """BIP310 version-rolling.min-bit-count (0 when absent or not a small non-negative int)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 32:
        return 0
    return value
