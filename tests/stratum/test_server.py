"""The stratum server for real: a miner on a loopback socket, our kernel finding its
shares, blocks accepted by the regtest node, every rejection answered with its code."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

import kernels
from miner.chain.target import difficulty_to_target, hash_to_int
from miner.config import Config, LogConfig, MetricsConfig, MiningConfig, NodeConfig, StratumConfig
from miner.modes.solo import SoloMiner
from miner.metrics import Metrics
from miner.stratum import protocol as p


class Miner:
    """A stratum client as a test drives it: raw lines out, every message in kept."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.inbox: list[dict] = []
        self.next_id = 1
        self.extranonce1 = b""
        self.extranonce2_size = 0
        self.difficulty: float | None = None
        self.jobs: list[tuple[str, object]] = []  # (session job id, Job)

    @classmethod
    async def connect(cls, port: int) -> Miner:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send_raw(self, line: bytes) -> None:
        self.writer.write(line)
        await self.writer.drain()

    async def request(self, method: str, params: list) -> dict:
        msg_id = self.next_id
        self.next_id += 1
        await self.send_raw(json.dumps({"id": msg_id, "method": method, "params": params}).encode() + b"\n")
        return await self.wait(lambda m: m.get("id") == msg_id and "result" in m)

    async def wait(self, predicate, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for m in self.inbox:
                if predicate(m):
                    self.inbox.remove(m)
                    return m
            line = await asyncio.wait_for(self.reader.readline(), max(0.01, deadline - time.monotonic()))
            if not line:
                raise ConnectionError("server closed the connection")
            msg = json.loads(line)
            if msg.get("method") == "mining.set_difficulty":
                self.difficulty = float(msg["params"][0])
            elif msg.get("method") == "mining.set_extranonce":  # applies to the jobs that follow
                self.extranonce1 = bytes.fromhex(msg["params"][0])
                self.extranonce2_size = int(msg["params"][1])
            elif msg.get("method") == "mining.notify":
                pool_job = p.parse_notify(msg["params"])
                self.jobs.append((pool_job.job_id, p.pool_job_to_job(pool_job, self.extranonce1,
                                                                    self.extranonce2_size)))
            self.inbox.append(msg)

    async def handshake(self, worker: str = "site1.rig1") -> None:
        configure = await self.request("mining.configure", [["version-rolling"], {
            "version-rolling.mask": "ffffffff", "version-rolling.min-bit-count": 2}])
        assert configure["result"]["version-rolling"] is True
        assert configure["result"]["version-rolling.mask"] == "1fffe000"
        sub = await self.request("mining.subscribe", ["test-miner/1.0"])
        self.extranonce1, self.extranonce2_size = p.parse_subscribe_result(sub["result"])
        assert (await self.request("mining.authorize", [worker, "x"]))["result"] is True
        await self.wait(lambda m: m.get("method") == "mining.notify")

    def find_share(self, job_id: str, job, extranonce2: bytes, version_bits: int = 0x2000) -> tuple[int, int]:
        """(nonce, version): a nonce meeting the current share target, found by our kernel."""
        mask = 0x1FFFE000
        version = (job.version & ~mask) | (version_bits & mask)
        header76 = job.header76(self.extranonce1 + extranonce2, version=version)
        target = difficulty_to_target(self.difficulty)
        nonce = kernels.search(header76, target, 0, 1 << 20, threads=1)[0]
        return nonce, version

    async def submit(self, job_id: str, extranonce2: bytes, ntime: int, nonce: int,
                     version_bits: int | None = 0x2000) -> dict:
        return await self.request("mining.submit", p.submit_params("site1.rig1", job_id, extranonce2, ntime,
                                                                   nonce, version_bits))


def error_code(reply: dict) -> int | None:
    return reply["error"][0] if reply.get("error") else None


@pytest.fixture
def solo_with_stratum(regtest_node_factory, tmp_path):
    """A regtest node and `miner run` with no CPU threads, only our stratum server."""
    node = regtest_node_factory(persistent=False)
    config = Config(node=NodeConfig(url=node.rpc_url, user=node.auth.user, password=node.auth.password,
                                    poll_interval=0.1),
                    mining=MiningConfig(address=node.new_address("bech32"), threads=0,
                                        journal=str(tmp_path / "journal.jsonl")),
                    stratum=StratumConfig(listen="127.0.0.1:0"), metrics=MetricsConfig(listen="off"),
                    log=LogConfig(status_interval=60))
    miner = SoloMiner(config, metrics=Metrics(), out=open(os.devnull, "w"))
    return node, miner


async def _running(miner: SoloMiner):
    task = asyncio.create_task(miner.run())
    deadline = time.monotonic() + 30
    while miner.stratum_port is None or miner.source is None or miner.source.current is None:
        assert time.monotonic() < deadline and not task.done(), "the miner did not start"
        await asyncio.sleep(0.05)
    return task


def test_a_miner_mines_blocks_through_our_server_onto_the_node(solo_with_stratum):
    node, solo = solo_with_stratum

    async def scenario():
        task = await _running(solo)
        try:
            miner = await Miner.connect(solo.stratum_port)
            await miner.handshake()
            start_height = node.rpc.call_sync("getblockcount")
            for i in range(3):
                job_id, job = miner.jobs[-1]
                en2 = i.to_bytes(miner.extranonce2_size, "big")
                nonce, _ = miner.find_share(job_id, job, en2)
                reply = await miner.submit(job_id, en2, job.ntime, nonce, 0x2000)
                assert reply["result"] is True and reply.get("error") is None, reply
                # On regtest every share is a block: wait for the clean job on the new tip.
                await miner.wait(lambda m: m.get("method") == "mining.notify" and m["params"][8] is True)
            return start_height, node.rpc.call_sync("getblockcount")
        finally:
            solo.stop()
            await asyncio.wait_for(task, 30)

    before, after = asyncio.run(scenario())
    assert after >= before + 3
    assert solo.stats.accepted >= 3 and solo.stats.rejected == 0
    # The rolled version bit is in the blocks the node accepted.
    tip = node.rpc.call_sync("getblock", node.rpc.call_sync("getbestblockhash"))
    assert int(tip["versionHex"], 16) & 0x2000


def test_every_rejection_is_answered_with_its_code(solo_with_stratum):
    node, solo = solo_with_stratum

    async def scenario():
        task = await _running(solo)
        try:
            codes = {}
            # 25: a submit before mining.subscribe.
            fresh = await Miner.connect(solo.stratum_port)
            codes["not_subscribed"] = error_code(await fresh.request(
                "mining.submit", ["site1.rig1", "1", "00000000", "00000000", "00000000"]))
            # 24: subscribed but never authorized.
            await fresh.request("mining.subscribe", [])
            codes["unauthorized"] = error_code(await fresh.request(
                "mining.submit", ["site1.rig1", "1", "00000000", "00000000", "00000000"]))

            miner = await Miner.connect(solo.stratum_port)
            await miner.handshake()
            job_id, job = miner.jobs[-1]
            en2 = bytes(miner.extranonce2_size)
            codes["job_not_found"] = error_code(await miner.submit("nope", en2, job.ntime, 0))
            codes["bad_extranonce2_size"] = error_code(await miner.submit(job_id, en2 + b"\x00", job.ntime, 0))
            codes["version_outside_mask"] = error_code(await miner.submit(job_id, en2, job.ntime, 0, 0x1))
            codes["ntime_in_the_future"] = error_code(await miner.submit(job_id, en2, int(time.time()) + 10_000, 0))
            # 23: a nonce whose hash misses the share target.
            target = difficulty_to_target(miner.difficulty)
            version = (job.version & ~0x1FFFE000) | 0x2000
            header = job.header(miner.extranonce1 + en2, 0, job.ntime, version)
            low = next(n for n in range(1000) if hash_to_int(header.with_nonce(n).hash_internal()) > target)
            codes["low_difficulty"] = error_code(await miner.submit(job_id, en2, job.ntime, low))
            codes["duplicate"] = error_code(await miner.submit(job_id, en2, job.ntime, low))
            # 21: a job from before the node's own new block.
            await asyncio.to_thread(node.mine_with_node, 1)
            await miner.wait(lambda m: m.get("method") == "mining.notify" and m["params"][8] is True)
            en2b = (1).to_bytes(miner.extranonce2_size, "big")
            nonce, _ = miner.find_share(job_id, job, en2b)
            codes["stale"] = error_code(await miner.submit(job_id, en2b, job.ntime, nonce))
            # Garbage and bad params: answered when there is an id, never fatal.
            await miner.send_raw(b"this is not json\n")
            await miner.send_raw(b'{"id": 77, "method": "mining.submit", "params": "x"}\n')
            codes["bad_params"] = error_code(await miner.wait(lambda m: m.get("id") == 77))
            codes["unknown_method"] = error_code(await miner.request("mining.nonsense", []))
            assert (await miner.request("mining.ping", []))["result"] == "pong"
            return codes
        finally:
            solo.stop()
            await asyncio.wait_for(task, 30)

    codes = asyncio.run(scenario())
    assert codes == {"not_subscribed": 25, "unauthorized": 24, "job_not_found": 21, "bad_extranonce2_size": 20,
                     "version_outside_mask": 20, "ntime_in_the_future": 20, "low_difficulty": 23,
                     "duplicate": 22, "stale": 21, "bad_params": 20, "unknown_method": 20}
    registry = solo.metrics.registry
    assert registry.get_sample_value("gridminer_stratum_shares_total", {"site": "other", "result": "duplicate"}) == 1


def test_oversized_lines_and_floods_close_only_the_offender(solo_with_stratum):
    node, solo = solo_with_stratum

    async def scenario():
        task = await _running(solo)
        try:
            good = await Miner.connect(solo.stratum_port)
            await good.handshake()
            bad = await Miner.connect(solo.stratum_port)
            await bad.send_raw(b"x" * 20_000)  # no newline, past the 16 KiB cap
            assert await asyncio.wait_for(bad.reader.read(), 5) == b""  # closed
            flood = await Miner.connect(solo.stratum_port)
            await flood.send_raw(b'{"id":1,"method":"mining.ping","params":[]}\n' * 1000)
            await asyncio.wait_for(flood.reader.read(), 5)  # drained to EOF: closed after the burst
            assert (await good.request("mining.ping", []))["result"] == "pong"  # unaffected
            hits = solo.metrics.registry.get_sample_value
            return hits("gridminer_stratum_limit_hits_total", {"limit": "line_length"}), \
                hits("gridminer_stratum_limit_hits_total", {"limit": "message_rate"})
        finally:
            solo.stop()
            await asyncio.wait_for(task, 30)

    line_length, message_rate = asyncio.run(scenario())
    assert line_length == 1 and message_rate == 1
