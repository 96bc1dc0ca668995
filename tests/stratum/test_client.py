"""The upstream stratum client for real: our own server (in-process, loopback) as the pool,
raw-line fake pools only for messages our server never sends (reconnect, ping, silence)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

import kernels
from kernels.scan import warm_up
from miner.chain import bits_to_target, build_coinbase
from miner.hashing.pool import WorkerPool
from miner.metrics import Metrics
from miner.stratum import protocol as p
from miner.stratum.client import PoolAuthError, PoolFailover, PoolURL, StratumClient, SubmitAnswer
from miner.stratum.server import Authorizer, StratumServer
from miner.stratum.vardiff import VardiffConfig
from miner.work.job import Job, Solution
from miner.work.upstream import UpstreamWorkSource
from tests.waiting import wait_until

REGTEST_BITS = 0x207FFFFF
HARD_BITS = 0x1702068F  # mainnet 951658: no block in any test's lifetime
USER = "site1.rig1"


def make_job(job_id: str, bits: int = REGTEST_BITS, height: int = 1) -> Job:
    coinbase = build_coinbase(height, 50 * 10**8, bytes.fromhex("0014" + "11" * 20), extranonce_size=8)
    return Job(job_id=job_id, prev_hash_internal=bytes(31) + bytes((height,)), version=0x20000000, bits=bits,
               ntime=1_700_000_000, target=bits_to_target(bits), coinbase=coinbase,
               merkle_branch=(bytes(range(32)),), clean=True, height=height)


@pytest.fixture(scope="module", autouse=True)
def compiled_kernel():
    warm_up()




class Blocks:
    """The server's on_block: records what it was handed."""

    def __init__(self) -> None:
        self.items: list = []

    def __call__(self, job, solution) -> None:
        self.items.append((job, solution))


async def start_server(job: Job | None = None, port: int = 0, **kw) -> tuple[StratumServer, Blocks]:
    blocks = Blocks()
    server = StratumServer(blocks, host="127.0.0.1", port=port, metrics=Metrics(), **kw)
    if job is not None:
        server.broadcast(job)  # current job: every new session gets it right after subscribe
    await server.start()
    return server, blocks


def pool_accepted(server: StratumServer) -> float:
    """Shares the pool itself counted as accepted (every worker site)."""
    return sum(sample.value for family in server.metrics.stratum_shares.collect() for sample in family.samples
               if sample.name.endswith("_total") and sample.labels.get("result") == "accepted")


def url(port: int) -> str:
    return f"stratum+tcp://127.0.0.1:{port}"


class FakePool:
    """A pool speaking raw lines: answers the handshake as told, records everything it got."""

    def __init__(self, *, configure=None, authorize=True, answer_submit=True) -> None:
        self.configure, self.authorize, self.answer_submit = configure, authorize, answer_submit
        self.received: list[dict] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> FakePool:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()
        for w in self.writers:
            w.close()

    def send(self, obj: dict | bytes) -> None:
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode() + b"\n"
        for w in self.writers:
            if not w.is_closing():
                w.write(data)

    def got(self, method: str) -> list[dict]:
        return [m for m in self.received if m.get("method") == method]

    async def _serve(self, reader, writer) -> None:
        self.writers.append(writer)
        while line := await reader.readline():
            msg = json.loads(line)
            self.received.append(msg)
            method, msg_id = msg.get("method"), msg.get("id")
            answer = None
            if method == "mining.configure":
                answer = ({"id": msg_id, "result": None, "error": [20, "unknown method", None]}
                          if self.configure is None else {"id": msg_id, "result": self.configure, "error": None})
            elif method == "mining.subscribe":
                answer = {"id": msg_id, "result": [[["mining.notify", "ab"]], "f000000f", 4], "error": None}
            elif method == "mining.authorize":
                answer = {"id": msg_id, "result": self.authorize, "error": None}
            elif method == "mining.submit" and self.answer_submit:
                answer = {"id": msg_id, "result": True, "error": None}
            if answer is not None:
                writer.write(json.dumps(answer).encode() + b"\n")


def notify_msg(job: Job, job_id: str, clean: bool = False, msg_id=None) -> dict:
    return {"id": msg_id, "method": "mining.notify", "params": p.notify_params(job, job_id, clean)}


# --- URL ---------------------------------------------------------------------------------------

def test_pool_url_accepts_only_stratum_tcp_with_host_and_port():
    assert PoolURL.parse("stratum+tcp://pool.example.com:3333") == PoolURL("pool.example.com", 3333)
    assert str(PoolURL.parse("stratum+tcp://[::1]:3334")) == "stratum+tcp://[::1]:3334"
    for bad, words in [("stratum+ssl://pool:3333", "scheme"), ("http://pool:3333", "scheme"),
                       ("stratum+tcp://pool", "port"), ("pool:3333", "must look like"),
                       ("stratum+tcp://pool:99999", "port"), ("stratum+tcp://:3333", "host"),
                       ("stratum+tcp://pool:3333/x", "only")]:
        with pytest.raises(ValueError, match=words):
            PoolURL.parse(bad)


# --- mining through our server --------------------------------------------------------------

def test_client_mines_through_our_server_and_gets_the_pools_real_answers():
    async def scenario():
        job = make_job("tpl1")
        server, blocks = await start_server(job)
        got = []
        client = StratumClient(url(server.port), USER, metrics=Metrics(), on_job=got.append)
        try:
            await client.connect()
            await wait_until(lambda: got, what="the first job")
            cj = got[-1]
            session = next(iter(server.sessions))
            assert client.version_mask == 0x1FFFE000
            # We ask the pool for the BIP320 bits only, never ffffffff.
            assert session.miner_version_mask == p.BIP320_VERSION_MASK
            assert cj.extranonce1 == session.extranonce1 and cj.extranonce2_size == 4
            en2 = bytes.fromhex("00000007")
            extranonce = cj.extranonce1 + en2
            assert cj.job.header76(extranonce) == job.header76(extranonce)
            # A share with rolled version bits, found by our kernel at the pool's target.
            version = (cj.job.version & ~cj.version_mask) | 0x2000
            nonce = kernels.search(cj.job.header76(extranonce, version=version), cj.share_target, 0, 1 << 20,
                                   threads=1)[0]
            answer = await client.submit(cj.job.job_id, en2, cj.job.ntime, nonce, 0x2000)
            assert answer == SubmitAnswer(True, None, "accepted")
            assert len(blocks.items) == 1  # regtest difficulty: the share is a block
            assert blocks.items[0][1].version == version and blocks.items[0][1].nonce == nonce
            duplicate = await client.submit(cj.job.job_id, en2, cj.job.ntime, nonce, 0x2000)
            assert not duplicate.accepted and duplicate.status == "rejected"
            assert duplicate.error.code == p.StratumError.DUPLICATE
            unknown_job = await client.submit("nope", en2, cj.job.ntime, nonce, 0x2000)
            assert unknown_job.error.code == p.StratumError.JOB_NOT_FOUND
            assert client.malformed == 0
        finally:
            await client.close()
            await server.stop()
        # After close nothing can be answered: unknown, never accepted.
        late = await client.submit("tpl1", en2, cj.job.ntime, nonce)
        assert late.status == "unknown" and not late.accepted

    asyncio.run(scenario())


def test_no_version_rolling_when_the_pool_refuses_it():
    async def scenario():
        job = make_job("tpl1")
        server, blocks = await start_server(job, version_mask=0)
        fake = await FakePool().start()  # answers configure with an error
        clients = [StratumClient(url(server.port), USER), StratumClient(url(fake.port), USER)]
        try:
            for c in clients:
                await c.connect()
                assert c.version_mask == 0
            # Without rolling the share goes out with 5 params and the pool accepts it.
            await wait_until(lambda: clients[0].latest is not None)
            cj = clients[0].latest
            extranonce = cj.extranonce1 + bytes(4)
            nonce = kernels.search(cj.job.header76(extranonce), cj.share_target, 0, 1 << 20, threads=1)[0]
            assert (await clients[0].submit(cj.job.job_id, bytes(4), cj.job.ntime, nonce)).accepted
            assert fake.got("mining.configure") and fake.got("mining.authorize")
        finally:
            for c in clients:
                await c.close()
            await server.stop()
            await fake.stop()

    asyncio.run(scenario())


# --- the pool's messages -------------------------------------------------------------------------

def test_difficulty_applies_from_the_next_notify_and_the_pools_other_messages():
    async def scenario():
        fake = await FakePool(configure={"version-rolling": True, "version-rolling.mask": "1fffe000"},
                              answer_submit=False).start()
        got = []
        client = StratumClient(url(fake.port), USER, on_job=got.append, suggest_difficulty=64)
        client.submit_timeout = 0.3
        try:
            await client.connect()
            assert client.version_mask == 0x1FFFE000 and client.extranonce1 == bytes.fromhex("f000000f")
            job = make_job("x")
            fake.send({"id": None, "method": "mining.set_difficulty", "params": [2]})
            fake.send(notify_msg(job, "a", clean=True, msg_id=0))  # "id": 0 as some pools send it
            fake.send({"id": None, "method": "mining.set_difficulty", "params": ["4"]})
            fake.send(b"{not json\n")
            fake.send(b"[1, 2]\n")
            fake.send({"id": None, "method": "mining.notify", "params": ["bad"]})
            fake.send({"id": 77, "method": "mining.ping", "params": []})
            fake.send({"id": 78, "method": "client.get_version", "params": []})
            fake.send({"id": None, "method": "client.show_message", "params": ["hello miner"]})
            fake.send({"id": None, "method": "mining.set_extranonce", "params": ["abcd", 6]})
            fake.send(notify_msg(job, "b"))
            await wait_until(lambda: len(got) == 2, what="two jobs")
            a, b = got
            assert (a.job.job_id, a.difficulty, a.extranonce1, a.extranonce2_size) == ("a", 2.0, bytes.fromhex("f000000f"), 4)
            assert (b.job.job_id, b.difficulty, b.extranonce1, b.extranonce2_size) == ("b", 4.0, bytes.fromhex("abcd"), 6)
            assert a.share_target == 2 * b.share_target
            assert b.job.extranonce_size == 8 and a.job.extranonce_size == 8
            assert client.malformed == 3
            await wait_until(lambda: any(m.get("id") == 78 for m in fake.received), what="the answers")
            answers = {m["id"]: m["result"] for m in fake.received if m.get("id") in (77, 78)}
            assert answers == {77: "pong", 78: "gridminer/0.1"}
            assert not any(m.get("id") == 0 for m in fake.received), "a notify is not answered"
            assert fake.got("mining.suggest_difficulty")[0]["params"] == [64]
            # The pool never answers this share: its fate is unknown, not accepted.
            answer = await client.submit("b", bytes(6), job.ntime, 1, 0x2000)
            assert answer.status == "unknown" and not answer.accepted
            submit = fake.got("mining.submit")[0]["params"]
            assert submit == [USER, "b", "000000000000", hex(job.ntime)[2:], "00000001", "00002000"]
            # A share waiting when the connection drops: unknown as well, at once.
            client.submit_timeout = 30
            pending = asyncio.create_task(client.submit("b", bytes(6), job.ntime, 2))
            await wait_until(lambda: len(fake.got("mining.submit")) == 2)
            for w in fake.writers:
                w.close()
            answer = await asyncio.wait_for(pending, 5)
            assert answer.status == "unknown"
            await asyncio.wait_for(client.done.wait(), 5)
        finally:
            await client.close()
            await fake.stop()

    asyncio.run(scenario())


def test_set_version_mask_from_the_pool_applies_at_once():
    # BIP310: the pool may change the version-rolling mask at any time, valid at once (also
    # for jobs already sent). We keep only bits we asked for; garbage is counted, not applied.
    async def scenario():
        fake = await FakePool(configure={"version-rolling": True, "version-rolling.mask": "1fffe000"}).start()
        got, told = [], []
        client = StratumClient(url(fake.port), USER, on_job=got.append)
        client.on_version_mask = lambda epoch, mask: told.append((epoch, mask))
        plain_fake = await FakePool().start()
        plain = StratumClient(url(plain_fake.port), USER, version_rolling=False)
        try:
            await client.connect()
            await plain.connect()
            fake.send(notify_msg(make_job("x"), "a", clean=True))
            await wait_until(lambda: got, what="a job")
            fake.send({"id": None, "method": "mining.set_version_mask", "params": ["00ffe000"]})
            await wait_until(lambda: told, what="the new mask")
            assert told == [(client.epoch, 0x00FFE000)] and client.version_mask == 0x00FFE000
            assert client.latest.version_mask == 0x00FFE000 and client.jobs["a"].version_mask == 0x00FFE000
            fake.send({"id": None, "method": "mining.set_version_mask", "params": ["ffffffff"]})
            await wait_until(lambda: len(told) == 2)
            assert client.version_mask == p.BIP320_VERSION_MASK  # not the consensus bits outside BIP320
            fake.send({"id": None, "method": "mining.set_version_mask", "params": ["xyz"]})
            fake.send({"id": None, "method": "mining.set_version_mask", "params": []})
            await wait_until(lambda: client.malformed == 2, what="two malformed masks")
            assert client.version_mask == p.BIP320_VERSION_MASK and len(told) == 2
            # A share goes out with the bits of the mask in force when it is sent.
            answer = await client.submit("a", bytes(4), 1_700_000_000, 7, 0x4000)
            assert answer.accepted and fake.got("mining.submit")[0]["params"][-1] == "00004000"
            # A client that did not offer version rolling refuses a mask (counted).
            plain_fake.send({"id": None, "method": "mining.set_version_mask", "params": ["00ffe000"]})
            await wait_until(lambda: plain.malformed == 1, what="the refused mask")
            assert plain.version_mask == 0
        finally:
            for c in (client, plain):
                await c.close()
            await fake.stop()
            await plain_fake.stop()

    asyncio.run(scenario())


def test_client_reconnect_moves_the_client_to_the_given_pool():
    async def scenario():
        first, second = await FakePool().start(), await FakePool().start()
        got = []
        client = StratumClient(url(first.port), USER, on_job=got.append)
        try:
            await client.connect()
            epoch = client.epoch
            first.send({"id": None, "method": "client.reconnect", "params": ["127.0.0.1", second.port, 0]})
            await wait_until(lambda: second.got("mining.authorize"), what="the reconnect")
            await wait_until(lambda: client.connected and client.epoch != epoch)
            assert (client.host, client.port) == ("127.0.0.1", second.port)
            assert client.reconnects == 1 and not client.done.is_set()
            second.send(notify_msg(make_job("y"), "n1", clean=True))
            await wait_until(lambda: got and got[-1].job.job_id == "n1")
            assert got[-1].epoch == client.epoch
            # Reconnect with no host or port: the same pool again.
            second.send({"id": None, "method": "client.reconnect", "params": []})
            await wait_until(lambda: len(second.got("mining.authorize")) == 2, what="the second reconnect")
        finally:
            await client.close()
            await first.stop()
            await second.stop()

    asyncio.run(scenario())


def test_refused_authorization_raises():
    async def scenario():
        server, _ = await start_server(make_job("t"), authorizer=Authorizer(sites={"only": "pw"}, allow_any=False))
        client = StratumClient(url(server.port), USER)
        try:
            with pytest.raises(PoolAuthError):
                await client.connect()
            assert client.done.is_set() and not client.connected
        finally:
            await client.close()
            await server.stop()

    asyncio.run(scenario())


# --- failover ------------------------------------------------------------------------------

def failover(urls, **kw) -> PoolFailover:
    kw = dict(silent_after=5.0, backoff_min=0.05, backoff_max=0.2, probe_interval=0.2, probe_timeout=2.0,
              check_interval=0.05, reconnect_grace=0.3) | kw
    return PoolFailover(urls, USER, "x", **kw)


def test_failover_to_the_second_pool_and_back_to_the_first():
    async def scenario():
        job = make_job("t")
        first, _ = await start_server(job)
        second, _ = await start_server(job)
        first_port = first.port
        fo = failover([url(first_port), url(second.port)])
        jobs = []
        fo.on_job = jobs.append
        task = asyncio.create_task(fo.run())
        try:
            await wait_until(lambda: fo.up and fo.index == 0, what="the first pool")
            assert fo.state.index == 0 and fo.state.up and fo.failovers == 0
            await first.stop()
            t0 = time.monotonic()
            await wait_until(lambda: fo.up and fo.index == 1, timeout=5, what="failover to the second pool")
            assert time.monotonic() - t0 < 3
            assert fo.failovers == 1 and jobs[-1].epoch == fo.client.epoch
            first, _ = await start_server(job, port=first_port)
            await wait_until(lambda: fo.up and fo.index == 0, timeout=5, what="the return to the first pool")
            assert fo.failovers == 2 and fo.state.url == url(first_port)
            await wait_until(lambda: jobs[-1].epoch == fo.client.epoch)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await first.stop()
            await second.stop()

    asyncio.run(scenario())


def test_failover_past_a_pool_that_refuses_us_and_one_that_stays_silent():
    async def scenario():
        job = make_job("t")
        refusing, _ = await start_server(job, authorizer=Authorizer(sites={"only": "pw"}, allow_any=False))
        silent = await FakePool().start()  # handshake fine, never a job
        good, _ = await start_server(job)
        fo = failover([url(refusing.port), url(silent.port), url(good.port)], silent_after=0.5,
                      probe_interval=60)
        task = asyncio.create_task(fo.run())
        try:
            t0 = time.monotonic()
            await wait_until(lambda: fo.up and fo.index == 2, timeout=5, what="the good pool")
            assert time.monotonic() - t0 < 3
            assert silent.got("mining.authorize"), "the silent pool was tried"
            assert "silent" in fo.last_failure or "Timeout" in fo.last_failure
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await refusing.stop()
            await silent.stop()
            await good.stop()

    asyncio.run(scenario())


def test_a_pool_that_goes_silent_after_a_job_is_left():
    async def scenario():
        fake = await FakePool().start()
        good, _ = await start_server(make_job("t"))
        fo = failover([url(fake.port), url(good.port)], silent_after=0.6, probe_interval=60)
        task = asyncio.create_task(fo.run())
        try:
            await wait_until(lambda: fake.got("mining.authorize"))
            fake.send(notify_msg(make_job("y"), "1", clean=True))
            await wait_until(lambda: fo.up and fo.index == 0, what="the first pool")
            t0 = time.monotonic()
            await wait_until(lambda: fo.up and fo.index == 1, timeout=5, what="leaving the silent pool")
            assert 0.3 < time.monotonic() - t0 < 3
            assert fo.last_failure.endswith("silent")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await fake.stop()
            await good.stop()

    asyncio.run(scenario())


# --- the work source ----------------------------------------------------------------------

def test_upstream_source_with_a_worker_pool_mines_shares_the_pool_accepts():
    async def scenario():
        job = make_job("hard", HARD_BITS)
        server, blocks = await start_server(job, vardiff=VardiffConfig(start_difficulty=2e-5))
        fo = failover([url(server.port)])
        source = UpstreamWorkSource(fo, metrics=Metrics())
        run = asyncio.create_task(source.run())
        loop = asyncio.get_running_loop()
        answers: list[SubmitAnswer] = []
        submits: set[asyncio.Task] = set()

        def on_solution(job, solution, is_block):  # a worker thread
            def go():
                t = loop.create_task(source.submit(job, solution))
                submits.add(t)
                t.add_done_callback(lambda t: answers.append(t.result()))
            loop.call_soon_threadsafe(go)

        pool = None
        try:
            await asyncio.wait_for(source.ready.wait(), 5)
            assert source.current.clean and source.share_target == fo.client.latest.share_target
            pool = WorkerPool(1, on_solution, metrics=Metrics())
            pool.start()
            sub = source.jobs()
            # The pool's extranonce1 travels with each job: it changes when we fail over.
            pool.set_job(await sub.__anext__(), share_target=source.share_target,
                         extranonce_prefix=source.extranonce1)
            await wait_until(lambda: sum(a.accepted for a in answers) >= 3, timeout=15, what="three accepted shares")
            pool.stop()  # joins the thread: every solution is queued on the loop by now
            await asyncio.sleep(0.05)
            await wait_until(lambda: all(t.done() for t in submits))
            accepted = sum(a.accepted for a in answers)
            assert source.shares["accepted"] == accepted
            # Honest: what we count as accepted is what the pool counted as accepted.
            assert pool_accepted(server) == accepted
            assert not blocks.items
            # A share mined on a job from a connection we have left is not sent.
            old_job = source.current
            old_info = source.info(old_job)
            extranonce = old_info.extranonce1 + bytes(4)
            # Vardiff may have raised the share difficulty by now: search until a share turns up.
            header76, found, start = old_job.header76(extranonce), [], 0
            while not found and start < 1 << 32:
                found = kernels.search(header76, old_info.share_target, start, 1 << 24, threads=1)
                start += 1 << 24
            nonce = found[0]
            solution = Solution(old_job.job_id, extranonce, old_job.ntime, nonce, old_job.version)
            await fo.client.close("test")  # the failover reconnects: a new epoch
            await wait_until(lambda: fo.up and source.info(source.current).epoch != old_info.epoch, what="reconnect")
            sent_before, stale_before = pool_accepted(server), source.shares["stale"]
            stale = await source.submit(old_job, solution)
            assert stale.status == "stale" and source.shares["stale"] == 1 + stale_before
            # Bad extranonce (not our en1) and version outside the mask are refused locally.
            bad = Solution(old_job.job_id, bytes(8), old_job.ntime, nonce, old_job.version)
            assert (await source.submit(source.current, bad)).status == "invalid"
            rolled = Solution(source.current.job_id, source.extranonce1 + bytes(4), source.current.ntime, nonce, 1)
            assert (await source.submit(source.current, rolled)).status == "invalid"
            assert pool_accepted(server) == sent_before
        finally:
            if pool is not None:
                pool.stop()
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            await server.stop()

    asyncio.run(scenario())
