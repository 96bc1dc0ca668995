"""Shared helpers for the work tests: vectors, solving on easy targets, a fake node, a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import json
import sys
import types
from pathlib import Path

from hypothesis import HealthCheck, settings

from miner.chain.hashes import sha256d
from miner.chain.tx import Transaction
from miner.work.job import Job, Solution
from tests.fakes import FakeClock

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# P2WPKH to a fixed key hash: any valid scriptPubKey will do for a payout.
PAYOUT_SCRIPT = bytes.fromhex("0014") + bytes(range(20))
REGTEST_BITS = "207fffff"


def _install_rpc_stand_in() -> types.ModuleType:
    """miner.node.rpc is written in parallel; until it lands, a stand-in with its agreed shape."""
    try:
        import miner.node.rpc as rpc  # noqa: PLC0415

        return rpc
    except ImportError:
        pass

    class RPCError(Exception):
        def __init__(self, code, message, method=None):
            super().__init__(f"{method}: {message} (code {code})")
            self.code, self.message, self.method = code, message, method

    module = types.ModuleType("miner.node.rpc")
    module.RPCError = RPCError
    for name in ("NodeUnavailable", "NodeWarmingUp", "RPCVerifyRejected", "RPCVerifyError",
                 "RPCVerifyAlreadyInChain"):
        setattr(module, name, type(name, (RPCError,), {"__module__": "miner.node.rpc"}))
    try:
        import miner.node as package  # noqa: PLC0415
    except ImportError:
        package = types.ModuleType("miner.node")
        package.__path__ = []
        sys.modules["miner.node"] = package
        import miner  # noqa: PLC0415

        miner.node = package
    sys.modules["miner.node.rpc"] = module
    package.rpc = module
    return module


rpc = _install_rpc_stand_in()


@functools.cache
def _load_json_text(name: str) -> str:
    return (DATA_DIR / name).read_text(encoding="utf-8")


def load_json(name: str):
    """A fresh parsed copy of a JSON vector (tests mutate templates)."""
    return json.loads(_load_json_text(name))


def bcoin_template() -> dict:
    return load_json("gbt_bcoin_regtest_height1.json")


def tx_entry(tx: Transaction, data: bytes | None = None) -> dict:
    """A getblocktemplate transactions[] entry, Core-shaped."""
    return {
        "data": (tx.serialize() if data is None else data).hex(),
        "txid": tx.txid_hex_display(),
        "hash": tx.wtxid_hex_display(),
        "fee": 0,
        "sigops": 0,
        "weight": tx.weight(),
        "depends": [],
    }


def solve(job: Job, extranonce: bytes | None = None, *, want_valid: bool = True) -> Solution:
    """A solution whose header meets (or, want_valid=False, misses) the job's target, by plain Python."""
    extranonce = bytes(job.extranonce_size) if extranonce is None else extranonce
    header = job.header(extranonce)
    for nonce in range(1 << 16):
        if header.with_nonce(nonce).meets_target(job.target) == want_valid:
            return Solution(job.job_id, extranonce, job.ntime, nonce, job.version)
    raise AssertionError("no nonce found: is the target easy?")


def job_for(template: dict, *, job_id: str = "j1", **kwargs) -> Job:
    from miner.work.template import job_from_template  # noqa: PLC0415

    return job_from_template(template, payout_script=PAYOUT_SCRIPT, job_id=job_id, clean=True, **kwargs)


def template_on(prev_hash_hex_display: str, height: int = 1) -> dict:
    t = copy.deepcopy(bcoin_template())
    t["previousblockhash"] = prev_hash_hex_display
    t["height"] = height
    return t


def fake_hash(label: str) -> str:
    return sha256d(label.encode()).hex()



class FakeNode:
    """`async call(method, *params)` answering from a script: exceptions are raised, values returned.

    When the script runs out, `default` is returned (None: accepted). `on_call` runs at the
    start of every call (tests use it to look at the journal file at that moment); `gate`,
    when set, is awaited before answering so tests can hold submissions in flight.
    """

    def __init__(self, script=(), default=None, on_call=None) -> None:
        self.script = list(script)
        self.default = default
        self.on_call = on_call
        self.calls: list[tuple[str, tuple]] = []
        self.gate: asyncio.Event | None = None
        self.in_flight = 0
        self.max_in_flight = 0

    async def call(self, method, *params, timeout=None):
        self.calls.append((method, params))
        if self.on_call is not None:
            self.on_call(method, params)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            item = self.script.pop(0) if self.script else self.default
        finally:
            self.in_flight -= 1
        if isinstance(item, BaseException):
            raise item
        return item

    def submitted_hex(self) -> list[str]:
        return [params[0] for method, params in self.calls if method == "submitblock"]


@contextlib.asynccontextmanager
async def running_gbt_source(node, journal_path: Path, settings, ready_timeout: float = 30.0):
    """A GBTWorkSource running on a real node: (source, its job subscription) once it has a job."""
    from miner.node.rpc import NodeRPC
    from miner.work.gbt import GBTWorkSource
    from miner.work.journal import Journal
    from miner.work.submit import BlockSubmitter

    rpc = NodeRPC(node.rpc_url, node.auth, timeout=10)
    with Journal(journal_path) as journal:
        source = GBTWorkSource(rpc, BlockSubmitter(rpc, journal), settings)
        jobs = source.jobs()
        task = asyncio.create_task(source.run())
        try:
            await asyncio.wait_for(source.ready.wait(), ready_timeout)
            yield source, jobs
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await jobs.aclose()
            rpc.close()
