"""bitcoind ZMQ notifications (hashblock, ...) on pyzmq's asyncio support.

Why: a new tip should reach the miners in milliseconds, not at the next poll. ZMQ is a
hint, never the truth: PUB/SUB drops messages when a queue fills or the connection
drops, so bitcoind numbers every message per topic. A gap in that number is reported
through `on_gap(topic, expected, got)` and the caller then asks the node for its tip
by RPC. A restarted node starts again at 0, which is reported as a gap too (right:
notifications were lost while it was down).

Each message is three frames (bitcoind's src/zmq/zmqpublishnotifier.cpp):

    frame 0  topic   b"hashblock" | b"hashtx" | b"rawblock" | b"rawtx" | b"sequence" (no NUL)
    frame 1  body    hashblock/hashtx: 32-byte hash in RPC display order
    frame 2  seq     uint32 little-endian, per topic, wrapping at 2**32

Malformed messages (wrong frame count, a sequence frame that is not 4 bytes, a hash
body that is not 32 bytes) are logged (at most once a minute) and counted in
`metrics.zmq_malformed`; they never stop the subscriber. An exception
raised by a callback is logged and the subscriber carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import zmq
import zmq.asyncio

from miner.metrics import Metrics

__all__ = ["ZMQSubscriber", "HASH_TOPICS", "parse_message", "parse_sequence_body", "SequenceEvent",
           "ZMQMessageError"]

log = logging.getLogger(__name__)

# Topics whose body is a 32-byte hash: handed to on_message as display-order hex.
HASH_TOPICS = frozenset({"hashblock", "hashtx"})
# Frames per bitcoind notification: topic, body, sequence number.
FRAMES_PER_MESSAGE = 3
# Bytes in the sequence frame (uint32 little-endian).
SEQUENCE_BYTES = 4
# Sequence numbers wrap at this value.
SEQUENCE_MODULUS = 2**32
# Bytes in a hashblock/hashtx body.
HASH_BYTES = 32
# Queue at most this many messages in the socket before ZMQ drops (bitcoind's default too).
RECEIVE_HWM = 1000
# Seconds of silence before TCP keepalive probes start: a half-open connection behind a
# NAT or firewall would otherwise look like a quiet chain for ever.
TCP_KEEPALIVE_IDLE_S = 60
# Seconds between reconnect attempts when the node's socket goes away.
RECONNECT_INTERVAL_MS = 1000
# Log malformed messages or failing callbacks at most once per this many seconds.
WARNING_LOG_INTERVAL_S = 60.0

# The `sequence` topic's labels: a block connected or disconnected, a transaction added
# to or removed from the mempool (the last two carry an 8-byte mempool sequence number).
SEQUENCE_LABELS = frozenset("CDAR")

OnMessage = Callable[[str, "str | bytes", int], Awaitable[None]]
OnGap = Callable[[str, int, int], Awaitable[None]]


class ZMQMessageError(ValueError):
    """A multipart message that is not a bitcoind notification."""


@dataclass(frozen=True)
class SequenceEvent:
    """One `sequence` notification: label C/D (block connected/disconnected), A/R (mempool)."""

    hash_hex_display: str
    label: str
    mempool_sequence: int | None = None


def parse_sequence_body(body: bytes) -> SequenceEvent | None:
    """A `sequence` body: 32-byte hash in display order | label | [8-byte LE mempool sequence].

    None for anything else (counted by the caller as it sees fit): zmqpublishnotifier.cpp
    SendSequenceMsg is the format.
    """
    if not isinstance(body, (bytes, bytearray)) or len(body) not in (HASH_BYTES + 1, HASH_BYTES + 9):
        return None
    label = chr(body[HASH_BYTES])
    if label not in SEQUENCE_LABELS or (label in "CD") != (len(body) == HASH_BYTES + 1):
        return None
    mempool_sequence = int.from_bytes(body[HASH_BYTES + 1:], "little") if label in "AR" else None
    return SequenceEvent(bytes(body[:HASH_BYTES]).hex(), label, mempool_sequence)


def parse_message(frames: list[bytes]) -> tuple[str, str | bytes, int]:
    """(topic, body, sequence) of one notification; hash bodies come back as display-order hex."""
    if len(frames) != FRAMES_PER_MESSAGE:
        raise ZMQMessageError(f"expected {FRAMES_PER_MESSAGE} frames, got {len(frames)}")
    raw_topic, body, raw_seq = frames
    try:
        topic = raw_topic.decode("ascii")
    except UnicodeDecodeError:
        raise ZMQMessageError(f"topic is not ASCII: {raw_topic[:40]!r}") from None
    if "\x00" in topic:
        raise ZMQMessageError(f"topic contains NUL: {raw_topic[:40]!r}")
    if len(raw_seq) != SEQUENCE_BYTES:
        raise ZMQMessageError(f"{topic}: sequence frame is {len(raw_seq)} bytes, expected {SEQUENCE_BYTES}")
    sequence = int.from_bytes(raw_seq, "little")
    if topic in HASH_TOPICS:
        if len(body) != HASH_BYTES:
            raise ZMQMessageError(f"{topic}: body is {len(body)} bytes, expected {HASH_BYTES}")
        # bitcoind publishes the hash already reversed into RPC display order.
        return topic, body.hex(), sequence
    return topic, bytes(body), sequence


class ZMQSubscriber:
    """Subscribe to a node's ZMQ topics; call on_message per notification and on_gap per lost run.

    on_message(topic, body, sequence): body is the display-order hex hash for hashblock
    and hashtx (`hash_hex_display`), the raw bytes for other topics.
    on_gap(topic, expected, got): sequence numbers were skipped; check the tip by RPC.
    """

    def __init__(self, url: str, topics: Iterable[str] = ("hashblock",),
                 on_message: OnMessage | None = None, on_gap: OnGap | None = None,
                 metrics: Metrics | None = None, *, context: zmq.asyncio.Context | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.topics = tuple(topics)
        if not self.topics:
            raise ValueError("subscribe to at least one topic")
        self.on_message = on_message
        self.on_gap = on_gap
        self.metrics = metrics if metrics is not None else Metrics()
        self._context = context
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._next_sequence: dict[str, int] = {}
        self._last_warning: float | None = None
        self._suppressed = 0
        self.received = 0  # notifications handed to on_message
        self.gaps = 0
        self.malformed = 0
        self.connected = asyncio.Event()  # set once the socket has been connected

    # -- lifecycle --

    def start(self) -> asyncio.Task[None]:
        """Run in a background task on the running loop; stop() ends it."""
        if self._task is not None and not self._task.done():
            raise RuntimeError("subscriber already running")
        self._task = asyncio.get_running_loop().create_task(self.run(), name=f"zmq {self.url}")
        return self._task

    async def stop(self) -> None:
        """Cancel the background task and wait for the socket to close."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def run(self) -> None:
        """Receive until cancelled."""
        context = self._context or zmq.asyncio.Context.instance()
        sock = context.socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
            sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
            sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, TCP_KEEPALIVE_IDLE_S)
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_INTERVAL_MS)
            for topic in self.topics:
                sock.setsockopt(zmq.SUBSCRIBE, topic.encode("ascii"))
            sock.connect(self.url)
            self.connected.set()
            log.info("subscribed to %s at %s", ", ".join(self.topics), self.url)
            while True:
                frames = await sock.recv_multipart()
                await self.handle(frames)
        finally:
            self.connected.clear()
            sock.close(linger=0)

    # -- one message --

    async def handle(self, frames: list[bytes]) -> None:
        """Parse one multipart message, check its sequence number, run the callbacks."""
        try:
            topic, body, sequence = parse_message(frames)
        except ZMQMessageError as e:
            self.malformed += 1
            self.metrics.zmq_malformed.inc()
            self._warn("ignoring malformed ZMQ message from %s: %s", self.url, e)
            return
        if topic not in self.topics:
            return  # a prefix match of another topic (ZMQ subscribes by prefix)
        self.metrics.zmq_messages.labels(topic=topic).inc()
        expected = self._next_sequence.get(topic)
        self._next_sequence[topic] = (sequence + 1) % SEQUENCE_MODULUS
        if expected is not None and sequence != expected:
            self.gaps += 1
            self.metrics.zmq_gaps.inc()
            log.warning("ZMQ %s sequence gap: expected %d, got %d", topic, expected, sequence)
            if self.on_gap is not None:
                await self._guard("on_gap", self.on_gap(topic, expected, sequence))
        self.received += 1
        if self.on_message is not None:
            await self._guard("on_message", self.on_message(topic, body, sequence))

    async def _guard(self, what: str, coro: Awaitable[None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            self._warn("ZMQ %s callback failed", what, exc_info=True)

    def _warn(self, msg: str, *args: object, exc_info: bool = False) -> None:
        now = self._clock()
        if self._last_warning is not None and now - self._last_warning < WARNING_LOG_INTERVAL_S:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += f" ({self._suppressed} similar warnings suppressed)"
        self._last_warning, self._suppressed = now, 0
        log.warning(msg, *args, exc_info=exc_info)
