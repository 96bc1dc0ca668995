"""Session features against an in-process server fed synthetic jobs (no node needed)."""

from __future__ import annotations

import asyncio
import json

from miner.chain import bits_to_target, build_coinbase
from miner.metrics import Metrics
from miner.stratum.server import ServerLimits, StratumServer
from miner.stratum.vardiff import VardiffConfig
from miner.work.job import Job

HARD_BITS = 0x1702068F  # mainnet-like: no share ever meets it by accident


def make_job(job_id: str, height: int = 1, clean: bool = True) -> Job:
    coinbase = build_coinbase(height, 50 * 10**8, bytes.fromhex("0014" + "22" * 20), extranonce_size=8)
    return Job(job_id=job_id, prev_hash_internal=bytes(31) + bytes((height,)), version=0x20000000,
               bits=HARD_BITS, ntime=1_700_000_000, target=bits_to_target(HARD_BITS), coinbase=coinbase,
               merkle_branch=(), clean=clean, height=height)


class Line:
    """A raw stratum connection; messages not yet asked for wait in the inbox, in order."""

    def __init__(self, reader, writer):
        self.reader, self.writer, self.next_id = reader, writer, 1
        self.inbox: list[dict] = []

    @classmethod
    async def open(cls, port):
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def call(self, method, params):
        msg_id = self.next_id
        self.next_id += 1
        self.writer.write(json.dumps({"id": msg_id, "method": method, "params": params}).encode() + b"\n")
        await self.writer.drain()
        return await self.until(lambda m: m.get("id") == msg_id and "result" in m)

    async def until(self, predicate, timeout=5.0):
        for msg in self.inbox:
            if predicate(msg):
                self.inbox.remove(msg)
                return msg
        while True:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
            if not line:
                raise ConnectionError("closed")
            msg = json.loads(line)
            if predicate(msg):
                return msg
            self.inbox.append(msg)


def serve(test, limits: ServerLimits | None = None, vardiff: VardiffConfig | None = None):
    """Run test(server) against a started server holding one job."""
    blocks = []

    async def main():
        server = StratumServer(lambda job, solution: blocks.append(solution), port=0, limits=limits,
                               vardiff=vardiff, metrics=Metrics())
        await server.start()
        server.broadcast(make_job("a"))
        try:
            return await test(server)
        finally:
            await server.stop()

    return asyncio.run(main())


def test_subscribe_gets_a_unique_extranonce1_and_can_resume_it():
    async def test(server):
        a, b = await Line.open(server.port), await Line.open(server.port)
        en1_a = (await a.call("mining.subscribe", ["m/1"]))["result"][1]
        en1_b = (await b.call("mining.subscribe", ["m/1"]))["result"][1]
        a.writer.close()
        await asyncio.sleep(0.1)
        c = await Line.open(server.port)
        resumed = (await c.call("mining.subscribe", ["m/1", en1_a]))["result"][1]
        d = await Line.open(server.port)
        taken = (await d.call("mining.subscribe", ["m/1", en1_b]))["result"][1]  # b still holds it
        return en1_a, en1_b, resumed, taken

    en1_a, en1_b, resumed, taken = serve(test)
    assert en1_a != en1_b and "00000000" not in (en1_a, en1_b)  # 0 is the local CPU pool's
    assert resumed == en1_a
    assert taken not in (en1_a, en1_b)


def test_suggest_difficulty_as_number_or_string_sets_the_next_difficulty():
    async def test(server):
        results = []
        for value in (0.5, "0.25"):
            line = await Line.open(server.port)
            await line.call("mining.subscribe", [])
            await line.call("mining.authorize", ["site.rig", "x"])
            ok = await line.call("mining.suggest_difficulty", [value])
            msg = await line.until(lambda m: m.get("method") == "mining.set_difficulty"
                                   and float(m["params"][0]) == float(value))
            results.append((ok["result"], float(msg["params"][0])))
        bad = await Line.open(server.port)
        error = (await bad.call("mining.suggest_difficulty", ["lots"]))["error"]
        return results, error

    results, error = serve(test, vardiff=VardiffConfig(start_difficulty=1e-3))
    assert results == [(True, 0.5), (True, 0.25)]
    assert error[0] == 20


def test_extranonce_subscribe_and_configure_extensions():
    async def test(server):
        line = await Line.open(server.port)
        sub = await line.call("mining.extranonce.subscribe", [])
        conf = await line.call("mining.configure", [["minimum-difficulty", "subscribe-extranonce", "x-unknown"],
                                                    {"minimum-difficulty.value": 0.125}])
        return sub["result"], conf["result"]

    sub, conf = serve(test)
    assert sub is True
    assert conf["minimum-difficulty"] is True
    assert conf["x-unknown"] is False and conf["subscribe-extranonce"] is False


def test_a_silent_connection_is_dropped_without_disturbing_others():
    async def test(server):
        good = await Line.open(server.port)
        await good.call("mining.subscribe", [])
        await good.call("mining.authorize", ["site.rig", "x"])
        silent = await Line.open(server.port)  # slowloris: connects, never authorizes
        closed = await asyncio.wait_for(silent.reader.read(), 5)
        pong = await good.call("mining.ping", [])
        return closed, pong["result"], server.metrics.registry.get_sample_value(
            "gridminer_stratum_disconnects_total", {"reason": "unauthorized_timeout"})

    closed, pong, count = serve(test, limits=ServerLimits(unauthorized_timeout=0.5))
    assert closed == b"" and pong == "pong" and count == 1


def test_connections_per_ip_are_capped():
    async def test(server):
        held = [await Line.open(server.port) for _ in range(3)]
        for line in held:
            await line.call("mining.subscribe", [])
        extra = await Line.open(server.port)
        refused = await asyncio.wait_for(extra.reader.read(), 5)
        return refused, server.metrics.registry.get_sample_value(
            "gridminer_stratum_limit_hits_total", {"limit": "connections_per_ip"})

    refused, hits = serve(test, limits=ServerLimits(max_connections_per_ip=3))
    assert refused == b"" and hits == 1


def test_a_difficulty_change_reissues_the_job_under_a_new_id():
    async def test(server):
        line = await Line.open(server.port)
        await line.call("mining.subscribe", [])
        await line.call("mining.authorize", ["site.rig", "x"])
        first = await line.until(lambda m: m.get("method") == "mining.notify")
        await line.call("mining.suggest_difficulty", [2.0])
        await line.until(lambda m: m.get("method") == "mining.set_difficulty" and m["params"][0] == 2)
        second = await line.until(lambda m: m.get("method") == "mining.notify")
        return first["params"], second["params"]

    first, second = serve(test)
    assert first[0] != second[0], "shares for the first id are still judged at the old difficulty"
    assert first[1:8] == second[1:8] and second[8] is False


def test_a_graceful_stop_tells_miners_to_reconnect():
    async def main():
        server = StratumServer(lambda job, solution: None, port=0, metrics=Metrics())
        await server.start()
        server.broadcast(make_job("a"))
        line = await Line.open(server.port)
        await line.call("mining.subscribe", [])
        port = server.port
        await server.stop()
        return await line.until(lambda m: m.get("method") == "client.reconnect"), port

    msg, port = asyncio.run(main())
    assert msg["params"][:2] == ["127.0.0.1", port] and msg["params"][2] == 5


def test_an_upstream_change_reaches_miners_as_set_extranonce_or_reconnect():
    # Proxy mode: a failover to a pool with another extranonce1 changes every miner's
    # extranonce1; those subscribed to extranonce changes are told, the others reconnect.
    async def test(server):
        told, other = await Line.open(server.port), await Line.open(server.port)
        await told.call("mining.extranonce.subscribe", [])
        sub = await told.call("mining.subscribe", [])
        await other.call("mining.subscribe", [])
        part = bytes.fromhex(sub["result"][1])
        server.set_upstream(bytes.fromhex("aabbccdd"), 2, 0x1FFFE000)
        msg = await told.until(lambda m: m.get("method") == "mining.set_extranonce")
        bye = await other.until(lambda m: m.get("method") == "client.reconnect")
        closed = await asyncio.wait_for(other.reader.read(), 5)
        return part, msg["params"], bye["params"], closed

    part, params, bye, closed = serve(test)
    assert params == ["aabbccdd" + part.hex(), 2]
    assert bye[2] == 0 and closed == b""


def test_authorize_maps_workers_to_sites_with_passwords_or_refuses_them():
    from miner.stratum.server import Authorizer

    async def main():
        server = StratumServer(lambda job, solution: None, port=0, metrics=Metrics(),
                               authorizer=Authorizer(sites={"paris": "pw", "lyon": None}, allow_any=False))
        await server.start()
        server.broadcast(make_job("a"))
        try:
            line = await Line.open(server.port)
            await line.call("mining.subscribe", [])
            answers = [(await line.call("mining.authorize", [worker, password]))["result"]
                       for worker, password in (("paris.rig1", "pw"), ("paris.rig2", "wrong"),
                                                ("lyon.rig1", "anything"), ("nice.rig1", "x"))]
            refused = await line.call("mining.submit", ["nice.rig1", "1", "00000000", "00000000", "00000000"])
            return answers, refused["error"][0], server.metrics.registry.get_sample_value(
                "gridminer_stratum_shares_total", {"site": "other", "result": "unauthorized"})
        finally:
            await server.stop()

    answers, code, counted = asyncio.run(main())
    assert answers == [True, False, True, False]
    assert code == 24 and counted == 1


def test_suggest_difficulty_before_the_first_job_is_kept_not_fatal():
    # Found in review: with no job yet there was no network difficulty to clamp against,
    # and the ValueError closed the connection without a reply.
    async def main():
        server = StratumServer(lambda job, solution: None, port=0, metrics=Metrics())
        await server.start()
        try:
            line = await Line.open(server.port)
            await line.call("mining.subscribe", [])
            answer = await line.call("mining.suggest_difficulty", [0.5])
            configure = await line.call("mining.configure", [["minimum-difficulty"], {"minimum-difficulty.value": 0.5}])
            server.broadcast(make_job("a"))
            first = await line.until(lambda m: m.get("method") == "mining.set_difficulty")
            return answer, configure, first["params"][0]
        finally:
            await server.stop()

    answer, configure, difficulty = asyncio.run(main())
    assert answer["result"] is True and configure["error"] is None
    assert float(difficulty) == 0.5
