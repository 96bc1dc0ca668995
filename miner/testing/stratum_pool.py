"""StratumPool: a real gridminer stratum server on a regtest node, with knobs and faults, for tests.

    regtest node ──GBT──► GBTWorkSource ──jobs──► StratumServer (private port)
         ▲                                              │ a share that is a block
         └──────── submitblock ◄── BlockSubmitter ◄─────┘ (journal in a temp dir)
    miners ──► StratumTap (pool.port): records every message, injects faults

The same classes `miner run` uses, wired the same way (miner/modes/solo.py), minus the
CPU workers; everything runs on one event loop in a background thread, so plain
synchronous tests can start a pool, point a miner at pool.url, inject faults and read
pool.messages.

On regtest the network difficulty is about 4.66e-10 and a share's difficulty is never
above it (the server caps it: a share target is never harder than a block). So with a
fixed difficulty at or above it (difficulty=1, say) every share is also a block, which
the pool submits to the node; gridminer's default vardiff rounds the capped value down
to 4.65e-10, so about one share in 700 is not a block; a fixed difficulty below it
(say 2**-32) gives shares of which about half are blocks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from miner.chain.address import address_to_script
from miner.metrics import Metrics
from miner.node.regtest import RegtestNode as _BaseRegtestNode
from miner.node.rpc import NodeRPC
from miner.stratum import protocol as p
from miner.stratum.server import ServerLimits, StratumServer
from miner.stratum.vardiff import VardiffConfig
from miner.testing.loop import LoopThread
from miner.testing.node import RegtestNode
from miner.testing.tap import ConnectionInfo, Direction, MessageLog, StratumMessage, StratumTap
from miner.work.gbt import GBTSettings, GBTWorkSource
from miner.work.job import Job, Solution
from miner.work.journal import Journal
from miner.work.submit import BlockSubmitter, SubmitOutcome

__all__ = ["StratumPool"]

log = logging.getLogger(__name__)

# Seconds between the work source's tip polls (the long-poll usually answers first).
POLL_INTERVAL_S = 0.25
# Seconds start() waits for the server and the first template.
START_TIMEOUT_S = 60.0
# Seconds a fault or a read of pool state may take on the loop thread.
CALL_TIMEOUT_S = 10.0
# The server's default BIP320 version-rolling mask.
DEFAULT_VERSION_MASK = 0x1FFFE000


class StratumPool:
    """A stratum v1 pool for tests: `with StratumPool(node) as pool:` then connect to pool.url.

    node: the regtest node it mines on (default: a RegtestNode of its own, started and
    stopped with the pool). address: where coinbases pay (default: a new legacy address
    of the node's wallet). difficulty: a fixed share difficulty; or vardiff: variable
    difficulty settings (default: gridminer's vardiff). version_mask: the BIP310 mask the
    pool grants at most. extranonce1_size / extranonce2_size: bytes of the coinbase
    extranonce the pool assigns per connection / leaves to the miner. limits: the
    server's abuse limits (ServerLimits).
    """

    def __init__(self, node: _BaseRegtestNode | None = None, *, address: str | None = None,
                 difficulty: float | None = None, vardiff: VardiffConfig | None = None,
                 version_mask: int = DEFAULT_VERSION_MASK, extranonce1_size: int = 4,
                 extranonce2_size: int = 4, limits: ServerLimits | None = None,
                 host: str = "127.0.0.1", port: int = 0, start_timeout: float = START_TIMEOUT_S) -> None:
        if difficulty is not None and vardiff is not None:
            raise ValueError("give a fixed difficulty or vardiff settings, not both")
        if difficulty is not None:
            if not difficulty > 0:
                raise ValueError(f"difficulty must be > 0, got {difficulty!r}")
            vardiff = VardiffConfig(min_difficulty=difficulty, max_difficulty=difficulty,
                                    start_difficulty=difficulty)
        if not 1 <= extranonce1_size <= 8:
            raise ValueError(f"extranonce1_size must be 1..8 bytes, got {extranonce1_size!r}")
        if not 1 <= extranonce2_size <= 16:
            raise ValueError(f"extranonce2_size must be 1..16 bytes, got {extranonce2_size!r}")
        if not 0 <= version_mask <= 0xFFFFFFFF:
            raise ValueError(f"version_mask must be a u32, got {version_mask!r}")
        self.node = node
        self.address = address
        self.difficulty = difficulty
        self.vardiff = vardiff
        self.version_mask = version_mask
        self.extranonce1_size, self.extranonce2_size = extranonce1_size, extranonce2_size
        self.limits = limits
        self.host = host
        self._port = port
        self.start_timeout = start_timeout
        self.metrics = Metrics()
        self.server: StratumServer | None = None
        self.source: GBTWorkSource | None = None
        self._own_node: RegtestNode | None = None
        self._log = MessageLog()
        self._loop = LoopThread("gridminer-test-pool")
        self._tap: StratumTap | None = None
        self._rpc: NodeRPC | None = None
        self._journal: Journal | None = None
        self._workdir: Path | None = None
        self._tasks: list[asyncio.Task] = []
        self._block_tasks: set[asyncio.Task] = set()
        self._outcomes: list[SubmitOutcome] = []
        self._started = False

    def __repr__(self) -> str:
        return f"StratumPool({self.url if self._tap else 'not started'})"

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> StratumPool:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> StratumPool:
        """Start the node (if the pool owns one), the server and the relay; wait for the first job."""
        if self._started:
            return self
        self._started = True
        if self.node is None:
            self._own_node = self.node = RegtestNode()
            self.node.start()
        address = self.address or self.node.new_address("legacy")
        payout_script = address_to_script(address, self.node.network_name)
        self.address = address
        self._workdir = Path(tempfile.mkdtemp(prefix="gridminer-test-pool-"))
        self._loop.start()
        self._loop.run(self._start(payout_script), self.start_timeout)
        log.info("stratum test pool at %s (server on port %d), paying %s", self.url,
                 self.server.port if self.server else 0, address)
        return self

    async def _start(self, payout_script: bytes) -> None:
        node = self.node
        assert node is not None and self._workdir is not None
        self._rpc = NodeRPC(node.rpc_url, node.auth, metrics=self.metrics, name="stratum test pool")
        self._journal = Journal(self._workdir / "found-blocks.jsonl")
        submitter = BlockSubmitter(self._rpc, self._journal, self.metrics)
        self.source = GBTWorkSource(self._rpc, submitter, GBTSettings(
            payout_script=payout_script, extranonce_size=self.extranonce1_size + self.extranonce2_size,
            coinbase_tag=b"/gridminer-test-pool/", poll_interval=POLL_INTERVAL_S,
            zmq_url=getattr(node, "zmq_url", None)), self.metrics)
        self.server = StratumServer(self._on_block, host="127.0.0.1", port=0,
                                    extranonce2_size=self.extranonce2_size, version_mask=self.version_mask,
                                    vardiff=self.vardiff, limits=self.limits, metrics=self.metrics,
                                    session_extranonce1_size=self.extranonce1_size)
        await self.server.start()
        self._tap = StratumTap(self.server.host, self.server.port, self._log, host=self.host, port=self._port)
        await self._tap.start()
        self._tasks = [asyncio.create_task(self.source.run(), name="test-pool-gbt"),
                       asyncio.create_task(self._feed(), name="test-pool-feed")]
        ready = asyncio.create_task(self.source.ready.wait())
        done, _ = await asyncio.wait([ready, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            for task in done:
                task.result()  # the work source failed: raise its error
            raise RuntimeError("the work source ended before its first template")

    async def _feed(self) -> None:
        assert self.source is not None and self.server is not None
        async for job in self.source.jobs():
            self.server.broadcast(job)

    def _on_block(self, job: Job, solution: Solution) -> None:
        """A miner's share is a block: submit it (journal first), as `miner run` does."""
        task = asyncio.ensure_future(self._submit_block(job, solution))
        self._block_tasks.add(task)
        task.add_done_callback(self._block_tasks.discard)

    async def _submit_block(self, job: Job, solution: Solution) -> None:
        assert self.source is not None
        outcome = await self.source.submit(job, solution)
        with self._log.cond:  # the log's condition guards the outcomes too: waits wake on both
            self._outcomes.append(outcome)
            self._log.cond.notify_all()

    def close(self) -> None:
        """Stop the relay, the server and the work source (and the node, if the pool started it)."""
        try:
            if self._loop.running:
                try:
                    self._loop.run(self._stop(), CALL_TIMEOUT_S)
                except Exception:
                    log.exception("stratum test pool did not stop cleanly")
            self._loop.stop()
        finally:
            if self._journal is not None:
                self._journal.close()
                self._journal = None
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None
            if self._own_node is not None:
                self._own_node.close()
                self._own_node = None

    async def _stop(self) -> None:
        if self._tap is not None:
            await self._tap.stop()
        if self.server is not None:
            await self.server.stop(reconnect_wait=None)
        # Blocks already found get their answer while the node is still there.
        if self._block_tasks:
            await asyncio.wait(set(self._block_tasks), timeout=CALL_TIMEOUT_S / 2)
        for task in [*self._tasks, *self._block_tasks]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._block_tasks, return_exceptions=True)
        if self._rpc is not None:
            self._rpc.close()  # abandons a held long-poll

    # -- where it is ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port miners connect to (the relay's)."""
        if self._tap is None:
            raise RuntimeError("the pool has no port before start()")
        return self._tap.port

    @property
    def url(self) -> str:
        """stratum+tcp://host:port for miners."""
        return f"stratum+tcp://{self.host}:{self.port}"

    # -- what happened ----------------------------------------------------------------------------

    @property
    def messages(self) -> list[StratumMessage]:
        """Every line exchanged with miners so far, in order (a snapshot)."""
        return self._log.messages

    @property
    def connections(self) -> list[ConnectionInfo]:
        """Every miner connection so far, open or closed."""
        return self._log.connections

    @property
    def block_results(self) -> list[SubmitOutcome]:
        """The node's answer to every block miners found through the pool."""
        with self._log.cond:
            return list(self._outcomes)

    @property
    def blocks(self) -> list[str]:
        """Hashes (RPC byte order) of blocks found through the pool that the node accepted."""
        return [o.block_hash_hex_display for o in self.block_results if o.accepted]

    def find(self, method: str | None = None, *, direction: Direction | None = None,
             reply_to: str | None = None, connection: int | None = None) -> list[StratumMessage]:
        """The recorded messages matching every filter given."""
        return [m for m in self.messages if (method is None or m.method == method)
                and (direction is None or m.direction == direction)
                and (reply_to is None or m.reply_to == reply_to)
                and (connection is None or m.connection == connection)]

    # -- waiting ------------------------------------------------------------------------------

    def wait_until(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        """predicate()'s first truthy value, checked on every message, connection change and block."""
        return self._log.wait(predicate, timeout, what)

    def wait_for_message(self, method: str | None = None, *, direction: Direction | None = None,
                         reply_to: str | None = None, connection: int | None = None,
                         predicate: Callable[[StratumMessage], bool] | None = None,
                         after: int = 0, timeout: float = 10.0) -> StratumMessage:
        """The first message after seq `after` matching every filter; TimeoutError after timeout s."""
        def match() -> StratumMessage | None:
            for m in self._log.messages:
                if m.seq > after and (method is None or m.method == method) \
                        and (direction is None or m.direction == direction) \
                        and (reply_to is None or m.reply_to == reply_to) \
                        and (connection is None or m.connection == connection) \
                        and (predicate is None or predicate(m)):
                    return m
            return None

        what = f"a message (method={method}, direction={direction}, reply_to={reply_to}, after={after})"
        return self._log.wait(match, timeout, what)

    def wait_for_connections(self, n: int, timeout: float = 10.0, *, open_only: bool = False) -> list[ConnectionInfo]:
        """At least n miner connections (open ones only if asked); TimeoutError after timeout s."""
        def enough() -> list[ConnectionInfo] | None:
            conns = [c for c in self._log.connections if c.open or not open_only]
            return conns if len(conns) >= n else None

        return self._log.wait(enough, timeout, f"{n} {'open ' if open_only else ''}connection(s)")

    def wait_for_blocks(self, n: int, timeout: float = 30.0) -> list[str]:
        """At least n accepted blocks found through the pool; their hashes."""
        def enough() -> list[str] | None:
            hashes = self.blocks
            return hashes if len(hashes) >= n else None

        return self._log.wait(enough, timeout, f"{n} accepted block(s)")

    # -- faults ------------------------------------------------------------------------------------

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._loop.call(fn, *args, timeout=CALL_TIMEOUT_S)

    def drop_connections(self, connection: int | None = None) -> int:
        """Close miner connections (all, or the one numbered `connection`); how many were open."""
        return self._on_loop(self._require_tap().drop, connection)

    def delay_notify(self, seconds: float, count: int | None = 1) -> None:
        """Hold back the next `count` mining.notify (None: every one, until changed) by `seconds`."""
        self._on_loop(self._require_tap().delay_notify, seconds, count)

    def reject_next_share(self, code: int = p.StratumError.LOW_DIFFICULTY, message: str | None = None) -> None:
        """Answer the next mining.submit with error [code, message, null]; it never reaches the server.

        Each call arms one rejection. message defaults to the usual text for the code.
        """
        self._on_loop(self._require_tap().reject_next_share, code, message)

    def send_reconnect(self, host: str | None = None, port: int | None = None, wait: int = 0,
                       connection: int | None = None) -> int:
        """Send client.reconnect (default: back to this pool, at once) to every miner or one; how many."""
        line = p.encode(p.reconnect(host or self.host, port or self.port, wait))
        return self._on_loop(self._require_tap().send, line, connection)

    def send(self, message: dict[str, Any], connection: int | None = None) -> int:
        """Send any JSON message of your own to every miner or one (recorded as injected); how many."""
        line = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        return self._on_loop(self._require_tap().send, line, connection)

    def _require_tap(self) -> StratumTap:
        if self._tap is None:
            raise RuntimeError("the pool is not started")
        return self._tap
