"""Session features against an in-process server fed synthetic jobs (no node needed)."""

from __future__ import annotations

import asyncio
import json
from hashlib import sha256

from miner.chain import bits_to_target, build_coinbase
from miner.metrics import Metrics
from miner.stratum import protocol as p
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


# -- issue 11: what honest fast miners and reconnects need ---------------------------------------

REGTEST_BITS = 0x207FFFFF


def regtest_job(job_id: str, height: int = 1, clean: bool = True) -> Job:
    coinbase = build_coinbase(height, 50 * 10**8, bytes.fromhex("0014" + "22" * 20), extranonce_size=8)
    return Job(job_id=job_id, prev_hash_internal=bytes(31) + bytes((height,)), version=0x20000000,
               bits=REGTEST_BITS, ntime=1_700_000_000, target=bits_to_target(REGTEST_BITS), coinbase=coinbase,
               merkle_branch=(), clean=clean, height=height)


def block_nonces(job: Job, extranonce1: bytes, extranonce2: bytes, count: int) -> list[int]:
    """Nonces whose header meets the (regtest) network target: every one is a block."""
    header76 = job.header76(extranonce1 + extranonce2)
    out, nonce = [], 0
    while len(out) < count:
        if int.from_bytes(sha256(sha256(header76 + nonce.to_bytes(4, "little")).digest()).digest(),
                          "little") <= job.target:
            out.append(nonce)
        nonce += 1
    return out


async def regtest_miner(server, worker: str = "site.rig", session_id: str | None = None):
    line = await Line.open(server.port)
    sub = await line.call("mining.subscribe", ["m/1"] + ([session_id] if session_id else []))
    await line.call("mining.authorize", [worker, "x"])
    notify = await line.until(lambda m: m.get("method") == "mining.notify")
    return line, bytes.fromhex(sub["result"][1]), sub["result"][2], notify["params"][0]


def submit_line(msg_id: int, job_id: str, en2: bytes, nonce: int, worker: str = "site.rig") -> bytes:
    return json.dumps({"id": msg_id, "method": "mining.submit",
                       "params": [worker, job_id, en2.hex(), "6553f100", f"{nonce:08x}"]}).encode() + b"\n"


def serve_regtest(test, limits: ServerLimits | None = None):
    blocks = []

    async def main():
        server = StratumServer(lambda job, solution: blocks.append((job, solution)), port=0, limits=limits,
                               metrics=Metrics())
        await server.start()
        server.broadcast(regtest_job("a"))
        try:
            return await test(server, blocks)
        finally:
            await server.stop()

    return asyncio.run(main())


def test_a_burst_of_valid_shares_is_never_throttled():
    # minerd at regtest difficulty sends ~200 valid shares in its first second: the old
    # token bucket (burst 200, 50/s) closed the connection for them.
    async def test(server, blocks):
        line, en1, en2_size, job_id = await regtest_miner(server)
        en2 = bytes(en2_size)
        nonces = block_nonces(server.current_job, en1, en2, 60)
        line.writer.write(b"".join(submit_line(100 + i, job_id, en2, n) for i, n in enumerate(nonces)))
        await line.writer.drain()
        answers = [await line.until(lambda m, i=i: m.get("id") == 100 + i) for i in range(len(nonces))]
        pong = await line.call("mining.ping", [])
        return answers, pong, len(blocks), server.metrics.registry.get_sample_value(
            "gridminer_stratum_limit_hits_total", {"limit": "message_rate"})

    answers, pong, blocks, hits = serve_regtest(test, limits=ServerLimits(message_burst=10, messages_per_second=1))
    assert all(a["result"] is True for a in answers), answers[-1]
    assert pong["result"] == "pong" and blocks == 60 and hits is None


def test_invalid_traffic_still_meets_the_rate_limit():
    async def test(server, blocks):
        line, en1, en2_size, job_id = await regtest_miner(server)
        line.writer.write(b"".join(submit_line(100 + i, "nope", bytes(en2_size), i) for i in range(40)))
        await line.writer.drain()
        return await _closed(line)

    assert serve_regtest(test, limits=ServerLimits(message_burst=10, messages_per_second=1))


async def _closed(line: Line) -> bool:
    try:
        while await asyncio.wait_for(line.reader.readline(), 5):
            pass
    except ConnectionError:
        pass
    return True


def test_submits_before_the_authorize_answer_wait_for_it():
    # minerd reconnecting sends shares of its last job before mining.authorize is answered,
    # and takes the first reply it reads for the authorize answer: an error there was
    # "Stratum authentication failed", and a 30 s back-off.
    async def test(server, blocks):
        line = await Line.open(server.port)
        await line.call("mining.subscribe", ["m/1"])
        line.writer.write(submit_line(4, "old-job", bytes(4), 1)
                          + json.dumps({"id": 2, "method": "mining.authorize", "params": ["site.rig", "x"]}).encode()
                          + b"\n")
        await line.writer.drain()
        first = await line.until(lambda m: "result" in m or "error" in m)
        second = await line.until(lambda m: "result" in m or "error" in m)
        return first, second

    first, second = serve_regtest(test)
    assert first["id"] == 2 and first["result"] is True and first["error"] is None
    assert second["id"] == 4 and second["error"][0] == 21  # judged after: the job is not this session's


def test_retired_tip_shares_are_stale_and_never_blocks_but_a_pending_tip_still_accepts():
    async def test(server, blocks):
        line, en1, en2_size, job_id = await regtest_miner(server)
        en2 = bytes(en2_size)
        first, second, third = block_nonces(server.current_job, en1, en2, 3)
        a = await line.call("mining.submit", json.loads(submit_line(0, job_id, en2, first))["params"])
        # a second block on the same tip while ours is pending: a valid share, and on_block decides
        b = await line.call("mining.submit", json.loads(submit_line(0, job_id, en2, second))["params"])
        server.retire_tip(server.current_job.prev_hash_internal)
        c = await line.call("mining.submit", json.loads(submit_line(0, job_id, en2, third))["params"])
        handed = len(blocks)
        server.broadcast(regtest_job("a2", height=1, clean=False))  # a late refresh on the retired tip
        late = await line.until(lambda m: m.get("method") == "mining.notify")
        nonce = block_nonces(server.current_job, en1, b"\x01" * en2_size, 1)[0]
        d = await line.call("mining.submit", json.loads(submit_line(0, late["params"][0], b"\x01" * en2_size,
                                                                    nonce))["params"])
        return a, b, c, d, handed, len(blocks)

    a, b, c, d, handed, total = serve_regtest(test)
    assert a["result"] is True and b["result"] is True
    assert c["error"][0] == 21 and d["error"][0] == 21
    assert handed == 2 and total == 2


def test_a_resumed_session_replaying_an_accepted_share_gets_a_duplicate():
    async def test(server, blocks):
        line, en1, en2_size, job_id = await regtest_miner(server)
        en2 = bytes(en2_size)
        nonce = block_nonces(server.current_job, en1, en2, 1)[0]
        first = await line.call("mining.submit", json.loads(submit_line(0, job_id, en2, nonce))["params"])
        line.writer.close()
        await asyncio.sleep(0.2)
        again, en1_again, _, _ = await regtest_miner(server, session_id=en1.hex())
        replay = await again.call("mining.submit", json.loads(submit_line(0, job_id, en2, nonce))["params"])
        return first, en1_again == en1, replay, len(blocks)

    first, same_en1, replay, blocks = serve_regtest(test)
    assert first["result"] is True and same_en1
    assert replay["error"][0] == 22 and blocks == 1


def test_a_clean_job_on_the_same_tip_makes_older_jobs_stale():
    async def test(server, blocks):
        line, en1, en2_size, job_id = await regtest_miner(server)
        server.broadcast(regtest_job("a-clean", height=1, clean=True))
        await line.until(lambda m: m.get("method") == "mining.notify" and m["params"][8] is True)
        nonce = block_nonces(regtest_job("a"), en1, bytes(en2_size), 1)[0]
        return await line.call("mining.submit", json.loads(submit_line(0, job_id, bytes(en2_size), nonce))["params"])

    assert serve_regtest(test)["error"][0] == 21


def test_authorized_miners_behind_one_address_are_not_capped_but_unauthorized_ones_are():
    async def test(server):
        rigs = []
        for _ in range(6):  # a farm behind one NAT address
            line = await Line.open(server.port)
            await line.call("mining.subscribe", [])
            assert (await line.call("mining.authorize", ["site.rig", "x"]))["result"] is True
            rigs.append(line)
        idle = [await Line.open(server.port) for _ in range(2)]
        for line in idle:
            await line.call("mining.subscribe", [])
        refused = await Line.open(server.port)
        closed = await asyncio.wait_for(refused.reader.read(), 5)
        pong = await rigs[0].call("mining.ping", [])
        return closed, pong["result"], len(server.sessions)

    closed, pong, held = serve(test, limits=ServerLimits(max_connections_per_ip=2))
    assert closed == b"" and pong == "pong" and held == 8


def test_a_global_connection_cap_is_kept_and_counted():
    async def test(server):
        lines = [await Line.open(server.port) for _ in range(3)]
        for line in lines:
            await line.call("mining.subscribe", [])
        extra = await Line.open(server.port)
        closed = await asyncio.wait_for(extra.reader.read(), 5)
        return closed, server.metrics.registry.get_sample_value("gridminer_stratum_limit_hits_total",
                                                                {"limit": "connections"})

    closed, hits = serve(test, limits=ServerLimits(max_connections=3))
    assert closed == b"" and hits == 1


def test_address_groups_take_ipv6_by_64():
    from miner.stratum.server import address_group

    assert address_group("2001:db8:1:2:aaaa::1") == address_group("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address_group("2001:db8:1:3::1") != address_group("2001:db8:1:2::1")
    assert address_group("::ffff:192.0.2.7") == "192.0.2.7" == address_group("192.0.2.7")
    assert address_group("fe80::1%eth0") == "fe80::/64"
    assert address_group("not an address") == "not an address"


def test_an_upstream_mask_change_reaches_rolling_miners_as_set_version_mask():
    async def test(server):
        rolling, plain, needy = [await Line.open(server.port) for _ in range(3)]
        await rolling.call("mining.configure", [["version-rolling"], {"version-rolling.mask": "ffffffff"}])
        await needy.call("mining.configure", [["version-rolling"], {"version-rolling.mask": "10006000",
                                                                    "version-rolling.min-bit-count": 3}])
        for line in (rolling, plain, needy):
            await line.call("mining.subscribe", [])
        server.set_upstream(b"", 4, 0x00FFE000)  # the new pool grants fewer bits
        told = await rolling.until(lambda m: m.get("method") == "mining.set_version_mask")
        bye = await needy.until(lambda m: m.get("method") == "client.reconnect")
        pong = await plain.call("mining.ping", [])
        return told["params"], bye["params"][2], pong["result"], [m.get("method") for m in plain.inbox]

    told, wait, pong, plain_saw = serve(test)
    assert told == ["00ffe000"] and wait == 0 and pong == "pong"
    assert "mining.set_version_mask" not in plain_saw and "client.reconnect" not in plain_saw


def test_a_session_keeps_reading_while_the_pool_thinks():
    # Proxy mode: the pool's answer to a share may take seconds; pings and other shares of
    # the same miner are answered meanwhile, each under its own id.
    async def main():
        release = asyncio.Event()
        calls = []

        async def on_share(job, solution):
            calls.append(solution.nonce)
            if len(calls) == 1:
                await release.wait()
                return None
            return p.StratumError.low_difficulty()

        server = StratumServer(lambda job, solution: None, port=0, metrics=Metrics(), on_share=on_share)
        await server.start()
        server.broadcast(regtest_job("a"))
        try:
            line, en1, en2_size, job_id = await regtest_miner(server)
            en2 = bytes(en2_size)
            n1, n2 = block_nonces(server.current_job, en1, en2, 2)
            line.writer.write(submit_line(50, job_id, en2, n1) + submit_line(51, job_id, en2, n2)
                              + b'{"id": 52, "method": "mining.ping", "params": []}\n')
            await line.writer.drain()
            pong = await line.until(lambda m: m.get("id") == 52)
            second = await line.until(lambda m: m.get("id") == 51)
            release.set()
            first = await line.until(lambda m: m.get("id") == 50)
            return pong, second, first
        finally:
            await server.stop()

    pong, second, first = asyncio.run(main())
    assert pong["result"] == "pong"
    assert second["error"][0] == 23 and first["result"] is True, first


def test_after_a_failover_shares_for_the_old_pools_jobs_are_stale():
    # set_extranonce moved the miner to the new pool's extranonce1: a share on a job sent
    # before was judged with the new one (a low-difficulty 23 or, worse, a wrong block).
    async def test(server, blocks):
        line = await Line.open(server.port)
        await line.call("mining.extranonce.subscribe", [])
        sub = await line.call("mining.subscribe", ["m/1"])
        await line.call("mining.authorize", ["site.rig", "x"])
        old = await line.until(lambda m: m.get("method") == "mining.notify")
        en1, en2 = bytes.fromhex(sub["result"][1]), bytes(sub["result"][2])
        nonce = block_nonces(server.current_job, en1, en2, 1)[0]  # found before the failover
        server.set_upstream(bytes.fromhex("aa"), 3, server.version_mask)
        await line.until(lambda m: m.get("method") == "mining.set_extranonce")
        answer = await line.call("mining.submit", json.loads(submit_line(0, old["params"][0], en2[:3], nonce))["params"])
        return answer, len(blocks)

    answer, blocks = serve_regtest(test)
    assert answer["error"][0] == 21 and blocks == 0
