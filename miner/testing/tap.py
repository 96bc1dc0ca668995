"""A recording, fault-injecting stratum relay between miners and a real StratumServer.

    miner ──TCP──► tap (the pool's public port) ──TCP──► StratumServer (private port)
                    │ every line, both ways: parsed, recorded (StratumMessage)
                    └ faults: drop the connection, hold back mining.notify, answer the
                      next mining.submit with an error (it never reaches the server),
                      send client.reconnect

Why a relay and not hooks inside the server: the record is exactly what crossed the
wire, the server under test is untouched production code, and a fault looks to the
miner like a pool that misbehaved, because it is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from miner.stratum import protocol as p
from miner.stratum.framing import NewlineFramer, Oversized

__all__ = ["ConnectionInfo", "Direction", "MessageLog", "StratumMessage", "StratumTap", "STANDARD_MESSAGES"]

log = logging.getLogger(__name__)

Direction = Literal["in", "out"]  # "in": miner -> pool; "out": pool -> miner

# Longest line relayed (bytes): far above any real stratum message, so the server's own
# limits are what a misbehaving miner meets.
RELAY_MAX_LINE_BYTES = 1 << 20
# The usual text for each stratum error code (slush's list, as our server sends them).
STANDARD_MESSAGES = {
    p.StratumError.OTHER: "Other/Unknown",
    p.StratumError.JOB_NOT_FOUND: "Job not found",
    p.StratumError.DUPLICATE: "Duplicate share",
    p.StratumError.LOW_DIFFICULTY: "Low difficulty share",
    p.StratumError.UNAUTHORIZED: "Unauthorized worker",
    p.StratumError.NOT_SUBSCRIBED: "Not subscribed",
}


@dataclass(frozen=True)
class StratumMessage:
    """One line that crossed the pool's port, as the miner sent or received it."""

    seq: int  # order of recording, from 1
    time: float  # time.monotonic() when it crossed
    direction: Direction  # "in": miner -> pool, "out": pool -> miner
    connection: int  # the pool's connection number, from 1
    worker: str | None  # the last worker the connection asked to authorize, if any
    data: Any  # the parsed JSON (None when the line is not JSON)
    raw: str  # the line without its newline
    reply_to: str | None = None  # for a response: the method of the request it answers
    injected: bool = False  # made by a fault, not by the server
    delayed_s: float = 0.0  # held back this long by delay_notify

    @property
    def method(self) -> str | None:
        """The request or notification's method (None for responses and non-JSON lines)."""
        method = self.data.get("method") if isinstance(self.data, dict) else None
        return method if isinstance(method, str) else None

    @property
    def params(self) -> Any:
        return self.data.get("params") if isinstance(self.data, dict) else None

    @property
    def result(self) -> Any:
        return self.data.get("result") if isinstance(self.data, dict) else None

    @property
    def error(self) -> Any:
        return self.data.get("error") if isinstance(self.data, dict) else None


@dataclass(frozen=True)
class ConnectionInfo:
    """One miner connection to the pool."""

    id: int
    peer: tuple[str, int]
    opened_at: float  # time.monotonic()
    closed_at: float | None = None
    close_reason: str | None = None  # "miner_closed", "server_closed", "dropped" (a fault), "pool_stopped"
    worker: str | None = None
    extranonce1: str | None = None  # hex, from the server's subscribe answer

    @property
    def open(self) -> bool:
        return self.closed_at is None


class MessageLog:
    """Thread-safe record of messages and connections; waits wake on every change."""

    def __init__(self) -> None:
        # Guards what is stored here (and what an owner stores under it); reentrant.
        self.cond = threading.Condition(threading.RLock())
        self._messages: list[StratumMessage] = []
        self._connections: dict[int, ConnectionInfo] = {}
        self._seq = itertools.count(1)

    def add(self, direction: Direction, link: _Link, raw: bytes, *, data: Any, injected: bool = False,
            delayed_s: float = 0.0) -> StratumMessage:
        text = raw.decode("utf-8", "replace")
        reply_to = None
        if isinstance(data, dict) and "method" not in data and direction == "out":
            reply_to = link.requests.pop(_id_key(data.get("id")), None)
        with self.cond:
            message = StratumMessage(next(self._seq), time.monotonic(), direction, link.id, link.worker,
                                     data, text, reply_to, injected, delayed_s)
            self._messages.append(message)
            self.cond.notify_all()
        return message

    def connection(self, info: ConnectionInfo) -> None:
        with self.cond:
            self._connections[info.id] = info
            self.cond.notify_all()

    def update(self, conn_id: int, **changes: Any) -> None:
        with self.cond:
            self._connections[conn_id] = replace(self._connections[conn_id], **changes)
            self.cond.notify_all()

    @property
    def messages(self) -> list[StratumMessage]:
        with self.cond:
            return list(self._messages)

    @property
    def connections(self) -> list[ConnectionInfo]:
        with self.cond:
            return [self._connections[k] for k in sorted(self._connections)]

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """predicate()'s first truthy value, checked on every change; TimeoutError naming what."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
                self.cond.wait(min(left, 0.1))  # 0.1: predicates may also read state outside the log


def _id_key(msg_id: Any) -> str:
    return json.dumps(msg_id, sort_keys=True)


def _parse(line: bytes) -> Any:
    """The line's JSON value, or None when it is not JSON (it is still recorded and relayed)."""
    try:
        return json.loads(line)
    except ValueError:
        return None


@dataclass(eq=False)
class _Link:
    """One relayed connection (loop thread only)."""

    id: int
    miner_writer: asyncio.StreamWriter
    server_writer: asyncio.StreamWriter | None = None
    worker: str | None = None
    requests: dict[str, str] = field(default_factory=dict)  # request id key -> method, for reply_to
    close_reason: str | None = None


class StratumTap:
    """The relay (runs on one event loop; the fault methods must be called on it)."""

    def __init__(self, server_host: str, server_port: int, record: MessageLog, *,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.server_host, self.server_port = server_host, server_port
        self.host, self._port = host, port
        self.log = record
        self._links: dict[int, _Link] = {}
        self._ids = itertools.count(1)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._rejects: deque[tuple[int, str]] = deque()
        self._notify_delay_s = 0.0
        self._notify_delays_left: int | None = 0  # None: every notify until changed

    @property
    def port(self) -> int:
        if self._server is not None and self._server.sockets:
            return self._server.sockets[0].getsockname()[1]
        return self._port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self._port, limit=1 << 16)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links.values()):
            self._close(link, "pool_stopped")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- faults (on the loop) -------------------------------------------------------------

    def drop(self, connection: int | None = None) -> int:
        """Close miner connections (all, or one); how many were open."""
        links = [lk for lk in self._links.values() if connection in (None, lk.id)]
        for link in links:
            self._close(link, "dropped")
        return len(links)

    def delay_notify(self, seconds: float, count: int | None = 1) -> None:
        """Hold back the next count mining.notify lines (None: all, until changed) by seconds."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        if count is not None and count < 0:
            raise ValueError(f"count must be >= 0 or None, got {count!r}")
        self._notify_delay_s, self._notify_delays_left = seconds, count

    def reject_next_share(self, code: int, message: str | None = None) -> None:
        """Answer the next mining.submit (from any miner) with [code, message, null] in the server's stead."""
        if isinstance(code, bool) or not isinstance(code, int):
            raise ValueError(f"code must be an integer, got {code!r}")
        self._rejects.append((code, message if message is not None else STANDARD_MESSAGES.get(code, "Rejected")))

    def send(self, line: bytes, connection: int | None = None) -> int:
        """Send one encoded line of our own to miners (all, or one); how many got it."""
        links = [lk for lk in self._links.values() if connection in (None, lk.id)]
        for link in links:
            self._to_miner(link, line.rstrip(b"\n"), _parse(line), injected=True)
        return len(links)

    # -- relaying -------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        link = _Link(next(self._ids), writer)
        self._links[link.id] = link
        self.log.connection(ConnectionInfo(link.id, (str(peer[0]), int(peer[1])), time.monotonic()))
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            server_reader, link.server_writer = await asyncio.open_connection(
                self.server_host, self.server_port, limit=1 << 16)
        except OSError as e:
            log.warning("stratum tap: cannot reach the server at %s:%d: %s", self.server_host, self.server_port, e)
            self._close(link, "server_unreachable")
            return
        up = asyncio.create_task(self._pump(link, reader, self._from_miner, "miner_closed"))
        down = asyncio.create_task(self._pump(link, server_reader, self._from_server, "server_closed"))
        try:
            done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            reason = next(iter(done)).result()
        except asyncio.CancelledError:
            reason = "pool_stopped"
        finally:
            for t in (up, down):
                t.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            if task is not None:
                self._tasks.discard(task)
        self._close(link, link.close_reason or reason)

    async def _pump(self, link: _Link, reader: asyncio.StreamReader,
                    handle: Callable[[_Link, bytes], None], eof_reason: str) -> str:
        framer = NewlineFramer(RELAY_MAX_LINE_BYTES)
        try:
            while data := await reader.read(65536):
                for item in framer.feed(data):
                    if not isinstance(item, Oversized):
                        handle(link, item)
        except (ConnectionError, OSError):
            pass
        return eof_reason

    def _from_miner(self, link: _Link, line: bytes) -> None:
        data = _parse(line)
        if isinstance(data, dict) and data.get("method") == "mining.authorize" \
                and isinstance(data.get("params"), list) and data["params"] and isinstance(data["params"][0], str):
            link.worker = data["params"][0]
            self.log.update(link.id, worker=link.worker)
        message = self.log.add("in", link, line, data=data)
        if isinstance(message.data, dict) and message.method is not None and message.data.get("id") is not None:
            link.requests[_id_key(message.data["id"])] = message.method
        if message.method == "mining.submit" and self._rejects:
            code, text = self._rejects.popleft()
            reply = p.encode(p.Response(message.data.get("id"), None, p.StratumError(code, text)))
            self._to_miner(link, reply.rstrip(b"\n"), _parse(reply), injected=True)
            return
        if link.server_writer is not None and not link.server_writer.is_closing():
            link.server_writer.write(line + b"\n")

    def _from_server(self, link: _Link, line: bytes) -> None:
        data = _parse(line)
        is_notify = isinstance(data, dict) and data.get("method") == "mining.notify"
        if is_notify and self._notify_delay_s > 0 and self._notify_delays_left != 0:
            if self._notify_delays_left is not None:
                self._notify_delays_left -= 1
            delay = self._notify_delay_s
            asyncio.get_running_loop().call_later(delay, self._to_miner, link, line, data, False, delay)
            return
        self._to_miner(link, line, data)

    def _to_miner(self, link: _Link, line: bytes, data: Any, injected: bool = False,
                  delayed_s: float = 0.0) -> None:
        if link.miner_writer.is_closing():
            return
        message = self.log.add("out", link, line, data=data, injected=injected, delayed_s=delayed_s)
        if message.reply_to == "mining.subscribe" and isinstance(message.result, list) \
                and len(message.result) > 1 and isinstance(message.result[1], str):
            self.log.update(link.id, extranonce1=message.result[1])
        link.miner_writer.write(line + b"\n")

    def _close(self, link: _Link, reason: str) -> None:
        if self._links.pop(link.id, None) is None:
            return
        link.close_reason = reason
        for writer in (link.miner_writer, link.server_writer):
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()
        self.log.update(link.id, closed_at=time.monotonic(), close_reason=reason)
