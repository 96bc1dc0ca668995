"""ZMQSubscriber against a real PUB socket speaking bitcoind's three-frame format."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
import zmq
import zmq.asyncio

from miner.metrics import Metrics
from miner.node.zmq import ZMQMessageError, ZMQSubscriber, parse_message

# Mainnet block 125552 (display order), a hash everyone can look up.
BLOCK_HASH_HEX_DISPLAY = "00000000000000001e8d6829a8a21adc5d38d0a473b144b6765798e61f98bd1d"
RECEIVE_TIMEOUT_S = 5.0


class BitcoindLikePublisher:
    """An XPUB socket on a free loopback port that frames messages like bitcoind.

    XPUB (not PUB) so the test can wait for the subscription to arrive before it
    publishes: ZMQ drops what a publisher sends before a subscriber has joined.
    """

    def __init__(self, context: zmq.asyncio.Context) -> None:
        self.sock = context.socket(zmq.XPUB)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.next_seq: dict[str, int] = {}

    async def wait_for_subscriber(self, topic: str = "hashblock") -> None:
        while True:
            frame = await asyncio.wait_for(self.sock.recv(), RECEIVE_TIMEOUT_S)
            if frame == b"\x01" + topic.encode():
                return

    async def publish(self, topic: str, body: bytes, seq: int | None = None) -> None:
        """Send topic | body | LE uint32 sequence (the topic's next number unless given)."""
        if seq is None:
            seq = self.next_seq.get(topic, 0)
        self.next_seq[topic] = (seq + 1) % 2**32
        await self.sock.send_multipart([topic.encode(), body, seq.to_bytes(4, "little")])

    async def send_raw(self, frames: list[bytes]) -> None:
        await self.sock.send_multipart(frames)

    def close(self) -> None:
        self.sock.close(linger=0)


class Recorder:
    """Callbacks that record what they were given and signal each arrival."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, object, int]] = []
        self.gaps: list[tuple[str, int, int]] = []
        self.arrived = asyncio.Event()

    async def on_message(self, topic: str, body: object, seq: int) -> None:
        self.messages.append((topic, body, seq))
        self.arrived.set()

    async def on_gap(self, topic: str, expected: int, got: int) -> None:
        self.gaps.append((topic, expected, got))

    async def wait_for(self, count: int) -> None:
        async def until() -> None:
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(until(), RECEIVE_TIMEOUT_S)


async def _session(topics=("hashblock",)):
    context = zmq.asyncio.Context()
    pub = BitcoindLikePublisher(context)
    rec = Recorder()
    metrics = Metrics()
    sub = ZMQSubscriber(pub.url, topics=topics, on_message=rec.on_message, on_gap=rec.on_gap,
                        metrics=metrics, context=context)
    sub.start()
    for topic in topics:
        await pub.wait_for_subscriber(topic)
    return context, pub, rec, metrics, sub


async def _close(context, pub, sub) -> None:
    await sub.stop()
    pub.close()
    context.term()


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_hashblock_reaches_the_callback_in_display_order():
    async def main():
        context, pub, rec, metrics, sub = await _session()
        try:
            await pub.publish("hashblock", bytes.fromhex(BLOCK_HASH_HEX_DISPLAY))
            await pub.publish("hashblock", bytes(32))
            await rec.wait_for(2)
        finally:
            await _close(context, pub, sub)
        return rec, metrics, sub

    rec, metrics, sub = asyncio.run(main())
    assert rec.messages == [("hashblock", BLOCK_HASH_HEX_DISPLAY, 0), ("hashblock", "00" * 32, 1)]
    assert rec.gaps == []
    assert sample(metrics, "gridminer_zmq_messages_total", topic="hashblock") == 2
    assert sample(metrics, "gridminer_zmq_sequence_gaps_total") == 0
    assert sub.received == 2


def test_sequence_gap_is_reported_and_counted():
    async def main():
        context, pub, rec, metrics, sub = await _session()
        try:
            await pub.publish("hashblock", bytes(32), seq=7)
            await pub.publish("hashblock", bytes(32), seq=8)
            await pub.publish("hashblock", bytes(32), seq=11)  # 9 and 10 were lost
            await pub.publish("hashblock", bytes(32), seq=0)  # the node restarted
            await rec.wait_for(4)
        finally:
            await _close(context, pub, sub)
        return rec, metrics

    rec, metrics = asyncio.run(main())
    assert rec.gaps == [("hashblock", 9, 11), ("hashblock", 12, 0)]
    assert [seq for _, _, seq in rec.messages] == [7, 8, 11, 0]  # gaps do not swallow the message
    assert sample(metrics, "gridminer_zmq_sequence_gaps_total") == 2


def test_sequence_wraps_without_a_gap():
    async def main():
        context, pub, rec, metrics, sub = await _session()
        try:
            await pub.publish("hashblock", bytes(32), seq=2**32 - 1)
            await pub.publish("hashblock", bytes(32), seq=0)
            await rec.wait_for(2)
        finally:
            await _close(context, pub, sub)
        return rec

    assert asyncio.run(main()).gaps == []


def test_sequences_are_per_topic():
    async def main():
        context, pub, rec, metrics, sub = await _session(topics=("hashblock", "hashtx"))
        try:
            await pub.publish("hashblock", bytes(32), seq=5)
            await pub.publish("hashtx", bytes(32), seq=100)
            await pub.publish("hashblock", bytes(32), seq=6)
            await pub.publish("hashtx", bytes(32), seq=101)
            await rec.wait_for(4)
        finally:
            await _close(context, pub, sub)
        return rec, metrics

    rec, metrics = asyncio.run(main())
    assert rec.gaps == []
    assert sample(metrics, "gridminer_zmq_messages_total", topic="hashtx") == 2


def test_malformed_messages_are_counted_and_survived(caplog):
    async def main():
        context, pub, rec, metrics, sub = await _session()
        try:
            await pub.send_raw([b"hashblock", bytes(32)])  # two frames
            await pub.send_raw([b"hashblock", bytes(32), b"\x00\x00\x00\x00", b"extra"])  # four
            await pub.send_raw([b"hashblock", bytes(32), b"\x01\x00\x00"])  # 3-byte sequence
            await pub.send_raw([b"hashblock", bytes(31), b"\x02\x00\x00\x00"])  # short hash
            await pub.publish("hashblock", bytes.fromhex(BLOCK_HASH_HEX_DISPLAY), seq=3)
            await rec.wait_for(1)
        finally:
            await _close(context, pub, sub)
        return rec, metrics, sub

    with caplog.at_level(logging.WARNING, logger="miner.node.zmq"):
        rec, metrics, sub = asyncio.run(main())
    assert rec.messages == [("hashblock", BLOCK_HASH_HEX_DISPLAY, 3)]
    assert sub.malformed == 4
    assert sample(metrics, "gridminer_zmq_malformed_total") == 4
    # Logged, but at most once a minute.
    assert len([r for r in caplog.records if "malformed" in r.getMessage()]) == 1


def test_a_failing_callback_does_not_stop_the_subscriber():
    async def main():
        context = zmq.asyncio.Context()
        pub = BitcoindLikePublisher(context)
        seen: list[int] = []
        arrived = asyncio.Event()

        async def flaky(topic: str, body: object, seq: int) -> None:
            seen.append(seq)
            arrived.set()
            if seq == 0:
                raise RuntimeError("callback bug")

        sub = ZMQSubscriber(pub.url, on_message=flaky, context=context)
        task = sub.start()
        try:
            await pub.wait_for_subscriber()
            await pub.publish("hashblock", bytes(32))
            await pub.publish("hashblock", bytes(32))
            while len(seen) < 2:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), RECEIVE_TIMEOUT_S)
            assert not task.done()
        finally:
            await _close(context, pub, sub)
        return seen, task

    seen, task = asyncio.run(main())
    assert seen == [0, 1]
    assert task.cancelled()


def test_run_is_cancellable():
    async def main():
        context = zmq.asyncio.Context()
        pub = BitcoindLikePublisher(context)
        sub = ZMQSubscriber(pub.url, context=context)
        task = asyncio.create_task(sub.run())
        await pub.wait_for_subscriber()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        pub.close()
        context.term()  # would hang if the subscriber's socket were left open

    asyncio.run(asyncio.wait_for(main(), 10))


@pytest.mark.parametrize("frames, error", [
    ([b"hashblock", bytes(32)], "expected 3 frames"),
    ([b"hash\x00block", bytes(32), bytes(4)], "NUL"),
    ([b"hashblock", bytes(32), bytes(5)], "sequence frame is 5 bytes"),
    ([b"hashtx", bytes(33), bytes(4)], "body is 33 bytes"),
])
def test_parse_message_rejects(frames, error):
    with pytest.raises(ZMQMessageError, match=error):
        parse_message(frames)


def test_parse_message_raw_topics_keep_bytes():
    assert parse_message([b"rawblock", b"\x01\x02", (9).to_bytes(4, "little")]) == ("rawblock", b"\x01\x02", 9)


def test_real_node_hashblock(regtest_node_factory):
    """Against Bitcoin Core's own publisher (bcoin has no ZMQ): its hashblock messages, in order,
    without gaps; skipped, saying what to install, when bitcoind is not on PATH or cannot start."""
    node = regtest_node_factory(kind="bitcoind")
    assert node.zmq_url is not None

    async def main():
        rec = Recorder()
        sub = ZMQSubscriber(node.zmq_url, on_message=rec.on_message, on_gap=rec.on_gap)
        sub.start()
        try:
            # ZMQ drops what is published before the subscription arrives (the slow joiner),
            # and Core offers no way to see it: mine until a block is heard, then two more.
            deadline = asyncio.get_running_loop().time() + 30
            while not rec.messages:
                assert asyncio.get_running_loop().time() < deadline, "no hashblock from bitcoind in 30 s"
                await asyncio.to_thread(node.mine_with_node, 1)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(rec.arrived.wait(), 0.5)
            seen = len(rec.messages)
            hashes = await asyncio.to_thread(node.mine_with_node, 2)
            await rec.wait_for(seen + 2)
        finally:
            await sub.stop()
        return rec, hashes

    rec, hashes = asyncio.run(main())
    assert [(topic, body) for topic, body, _ in rec.messages[-2:]] == [("hashblock", h) for h in hashes]
    assert [seq for _, _, seq in rec.messages] == list(range(rec.messages[0][2], rec.messages[0][2] + len(rec.messages)))
    assert rec.gaps == []
