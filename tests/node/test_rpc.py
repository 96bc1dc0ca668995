"""NodeRPC against the real pinned node: results, error classes, auth, dead ports, health logging."""

from __future__ import annotations

import asyncio
import decimal
import json
import logging
import socket
import time

import pytest

from miner.metrics import Metrics
from miner.node.regtest import free_port
from miner.node.rpc import (
    NodeInitialDownload,
    NodeNotConnected,
    NodeRPC,
    NodeUnavailable,
    NodeWarmingUp,
    RPCAuth,
    RPCAuthError,
    RPCDeserializationError,
    RPCError,
    RPCInternalError,
    RPCInvalidAddressOrKey,
    RPCInvalidParameter,
    RPCMethodNotFound,
    RPCTypeError,
    RPCVerifyAlreadyInChain,
    RPCVerifyError,
    RPCVerifyRejected,
    btc_to_sats,
    error_from_code,
    submitblock_reason,
)
from tests.fakes import FakeClock

LOGGER = "miner.node.rpc"
SEGWIT = {"rules": ["segwit"]}
# Core's regtest P2WPKH example: bcoin's regtest uses the "rb" HRP and refuses it.
CORE_REGTEST_ADDRESS = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"


def dead_url() -> str:
    """A loopback URL where nothing listens (connection refused at once)."""
    return f"http://127.0.0.1:{free_port()}/"


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def leave_initial_download(node) -> None:
    """bitcoind refuses templates (-10) until its regtest chain has a block; bcoin never does."""
    if node.kind == "bitcoind" and node.rpc.call_sync("getblockcount") == 0:
        node.mine_with_node(1)


# --- against the node ---------------------------------------------------------------


def test_getblockchaininfo_is_plain_json(regtest_node):
    metrics = Metrics()
    rpc = NodeRPC(regtest_node.rpc_url, regtest_node.auth, metrics=metrics)
    info = rpc.call_sync("getblockchaininfo")
    assert info["chain"] == "regtest"
    assert isinstance(info["blocks"], int)
    # python-bitcoinrpc made this a Decimal; we hand back what json.loads would.
    assert type(info["difficulty"]) is float and info["difficulty"] > 0
    assert json.loads(json.dumps(info)) == info
    assert info["bestblockhash"] == rpc.call_sync("getbestblockhash")
    assert sample(metrics, "gridminer_rpc_calls_total", method="getblockchaininfo") == 1
    assert sample(metrics, "gridminer_node_up") == 1
    assert sample(metrics, "gridminer_node_height") == info["blocks"]


def test_getblocktemplate_with_segwit_rules(regtest_node):
    leave_initial_download(regtest_node)
    rpc = NodeRPC(regtest_node.rpc_url, regtest_node.auth)
    best = rpc.call_sync("getbestblockhash")
    height = rpc.call_sync("getblockcount")
    template = rpc.call_sync("getblocktemplate", SEGWIT)
    assert template["previousblockhash"] == best
    assert template["height"] == height + 1
    assert template["bits"] == "207fffff"
    assert isinstance(template["coinbasevalue"], int)
    assert isinstance(template["transactions"], list)
    if regtest_node.kind == "bcoin":
        # bcoin's longpollid: the tip in display order, then 8 hex digits of mempool size.
        assert template["longpollid"][:64] == best and len(template["longpollid"]) == 72


@pytest.mark.parametrize("method, params, cls, code", [
    ("nosuchmethod", (), RPCMethodNotFound, -32601),
    ("getblockhash", (10**6,), RPCInvalidParameter, -8),
    ("getblockhash", ("x",), RPCTypeError, -3),
    ("submitblock", ("00",), RPCDeserializationError, -22),
    ("generatetoaddress", (1, CORE_REGTEST_ADDRESS), RPCInvalidAddressOrKey, -5),
])
def test_node_errors_become_named_exceptions(regtest_node, method, params, cls, code):
    if method == "generatetoaddress" and regtest_node.kind != "bcoin":
        pytest.skip("bcrt1 is a valid address on bitcoind")
    metrics = Metrics()
    rpc = NodeRPC(regtest_node.rpc_url, regtest_node.auth, metrics=metrics)
    with pytest.raises(cls) as info:
        rpc.call_sync(method, *params)
    assert info.value.code == code and info.value.method == method
    assert sample(metrics, "gridminer_rpc_errors_total", kind=f"rpc_{code}") == 1
    assert rpc.up  # the node answered: it is up


def test_bcoin_block_not_found_maps_to_cores_class(regtest_node):
    """bcoin says -1 "Block not found" where Core says -5; both land on RPCInvalidAddressOrKey."""
    rpc = NodeRPC(regtest_node.rpc_url, regtest_node.auth)
    with pytest.raises(RPCInvalidAddressOrKey) as info:
        rpc.call_sync("getblock", "00" * 32)
    assert info.value.code == (-1 if regtest_node.kind == "bcoin" else -5)


def test_submitblock_duplicate_is_an_answer_not_an_error(regtest_node):
    rpc = NodeRPC(regtest_node.rpc_url, regtest_node.auth)
    raw = rpc.call_sync("getblock", rpc.call_sync("getblockhash", 0), False)
    answer = rpc.call_sync("submitblock", raw)
    assert submitblock_reason(answer) == "duplicate"
    if regtest_node.kind == "bcoin":
        assert answer == "rejected: duplicate"


def test_wrong_api_key_is_auth_error(regtest_node, caplog):
    metrics = Metrics()
    rpc = NodeRPC(regtest_node.rpc_url, RPCAuth("gridminer", "wrong"), metrics=metrics, name="badkey")
    with caplog.at_level(logging.ERROR, logger=LOGGER), pytest.raises(RPCAuthError) as info:
        rpc.call_sync("getblockcount")
    assert info.value.http_status == 401 and info.value.code is None
    assert sample(metrics, "gridminer_rpc_errors_total", kind="auth") == 1
    assert sample(metrics, "gridminer_node_up") == 0
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert "badkey RPC failed" in caplog.text


def test_async_call_and_long_poll_do_not_block_other_calls(regtest_node):
    """A long-poll held by the node on one thread; short calls on others and the loop stay free."""
    leave_initial_download(regtest_node)
    rpc = NodeRPC(regtest_node.rpc_url, regtest_node.auth)

    async def main() -> tuple[dict, float, float]:
        template = await rpc.call("getblocktemplate", SEGWIT)
        params = dict(SEGWIT, longpollid=template["longpollid"])
        poll = asyncio.create_task(rpc.call("getblocktemplate", params, timeout=30))
        await asyncio.sleep(0.3)
        assert not poll.done(), "long-poll returned without a new block"
        started = time.monotonic()
        await rpc.call("getblockcount")
        short = time.monotonic() - started
        tick = time.monotonic()
        await asyncio.sleep(0.01)  # the loop itself is not blocked
        loop_lag = time.monotonic() - tick
        await asyncio.to_thread(regtest_node.mine_with_node, 1)
        return await asyncio.wait_for(poll, 10), short, loop_lag

    try:
        new_template, short, loop_lag = asyncio.run(main())
        height = rpc.call_sync("getblockcount")  # before close(): a closed client makes no calls
    finally:
        rpc.close()
    assert short < 2.0 and loop_lag < 0.5
    assert new_template["height"] == height + 1


# --- dead ports, backoff and health logging ---------------------------------------------


def test_dead_port_is_unavailable():
    metrics = Metrics()
    rpc = NodeRPC(dead_url(), RPCAuth("u", "p"), metrics=metrics)
    with pytest.raises(NodeUnavailable, match="connection refused") as info:
        rpc.call_sync("getblockcount")
    assert info.value.kind == "unavailable" and info.value.code is None
    assert not rpc.up
    assert sample(metrics, "gridminer_rpc_errors_total", kind="unavailable") == 1
    assert sample(metrics, "gridminer_rpc_calls_total", method="getblockcount") == 1


def test_backoff_doubles_to_the_cap_then_gives_up_at_the_deadline():
    clock = FakeClock()
    rpc = NodeRPC(dead_url(), RPCAuth("u", "p"), clock=clock, sleep=clock.sleep)

    async def main() -> None:
        await rpc.call_with_retry("getblockcount", max_delay=10.0, deadline=30.0)

    with pytest.raises(NodeUnavailable):
        asyncio.run(main())
    rpc.close()
    assert clock.sleeps == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0]


def test_retry_skips_errors_outside_the_retry_set(regtest_node):
    clock = FakeClock()
    rpc = NodeRPC(regtest_node.rpc_url, regtest_node.auth, clock=clock, sleep=clock.sleep)
    with pytest.raises(RPCMethodNotFound):
        asyncio.run(rpc.call_with_retry("nosuchmethod"))
    rpc.close()
    assert clock.sleeps == []


def test_failures_logged_once_a_minute(caplog):
    clock = FakeClock()
    metrics = Metrics()
    rpc = NodeRPC(dead_url(), RPCAuth("u", "p"), clock=clock, metrics=metrics, name="deadnode")
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for _ in range(5):  # t = 0..40 s: only the first failure is logged
            with pytest.raises(NodeUnavailable):
                rpc.call_sync("getblockcount")
            clock.now += 10
        assert len(caplog.records) == 1
        assert caplog.records[0].levelno == logging.ERROR
        assert "deadnode RPC failed" in caplog.records[0].getMessage()
        clock.now += 15  # 65 s after the first failure
        with pytest.raises(NodeUnavailable):
            rpc.call_sync("getblockcount")
        clock.now += 1
        with pytest.raises(NodeUnavailable):
            rpc.call_sync("getblockcount")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "still failing after 65 s" in messages[1] and "5 failures since the last report" in messages[1]
    assert sample(metrics, "gridminer_rpc_errors_total", kind="unavailable") == 7
    assert sample(metrics, "gridminer_node_up") == 0


def test_restored_logged_once_after_node_restart(regtest_node_factory, caplog):
    node = regtest_node_factory(persistent=False)
    metrics = Metrics()
    rpc = NodeRPC(node.rpc_url, node.auth, metrics=metrics)
    assert rpc.call_sync("getblockcount") == 0
    node.stop()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(3):
            with pytest.raises(NodeUnavailable):
                rpc.call_sync("getblockcount")
        assert not rpc.up and sample(metrics, "gridminer_node_up") == 0
        node.start()  # same ports, same api key
        rpc.call_sync("getblockcount")
        rpc.call_sync("getblockcount")
    restored = [r for r in caplog.records if "restored" in r.getMessage()]
    assert len(restored) == 1 and restored[0].levelno == logging.INFO
    assert restored[0].getMessage().startswith("connection to node restored after ")
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    assert rpc.up and sample(metrics, "gridminer_node_up") == 1


def test_call_with_retry_waits_for_a_starting_node(regtest_node_factory):
    node = regtest_node_factory(start=False, persistent=False)
    node.start()
    node.stop()  # ports are chosen and free again: the node is "down"
    rpc = NodeRPC(node.rpc_url, node.auth)

    async def main() -> int:
        waiting = asyncio.create_task(rpc.call_with_retry("getblockcount", max_delay=0.5, deadline=30))
        await asyncio.sleep(0.6)
        assert not waiting.done()
        await asyncio.to_thread(node.start)
        return await asyncio.wait_for(waiting, 30)

    try:
        assert asyncio.run(main()) == 0
    finally:
        rpc.close()


# --- pure helpers -----------------------------------------------------------------------


@pytest.mark.parametrize("code, cls", [
    (-28, NodeWarmingUp), (-9, NodeNotConnected), (-10, NodeInitialDownload),
    (-25, RPCVerifyError), (-26, RPCVerifyRejected), (-27, RPCVerifyAlreadyInChain),
    (-32601, RPCMethodNotFound), (-8, RPCInvalidParameter), (-32602, RPCInvalidParameter),
    (-3, RPCTypeError), (-5, RPCInvalidAddressOrKey), (-22, RPCDeserializationError),
    (-32603, RPCInternalError), (-1, RPCError), (-4, RPCError), (None, RPCError),
])
def test_error_from_code(code, cls):
    e = error_from_code(code, "text", "method")
    assert type(e) is cls and e.code == code and e.message == "text" and e.method == "method"


def test_error_kinds_for_metrics():
    assert NodeUnavailable(None, "x").kind == "unavailable"
    assert RPCAuthError(None, "x").kind == "auth"
    assert error_from_code(-28, "Loading block index...").kind == "warming_up"
    assert error_from_code(-26, "bad-txns").kind == "rpc_-26"
    assert str(error_from_code(-26, "bad-txns", "submitblock")) == "submitblock: bad-txns (code -26)"


def test_bcoin_misc_messages():
    assert type(error_from_code(-1, "Block not found", "getblock")) is RPCInvalidAddressOrKey
    assert type(error_from_code(-1, "Transaction not found.", "getrawtransaction")) is RPCInvalidAddressOrKey
    assert type(error_from_code(-1, "getblockhash index", "getblockhash")) is RPCError


@pytest.mark.parametrize("amount, sats", [
    (50, 5_000_000_000), (0.00001, 1_000), (1.5, 150_000_000), (20999999.97690000, 2_099_999_997_690_000),
    (decimal.Decimal("0.00000001"), 1), ("12.3456789", 1_234_567_890),
])
def test_btc_to_sats_exact(amount, sats):
    assert btc_to_sats(amount) == sats


def test_btc_to_sats_refuses_fractions_of_a_satoshi():
    with pytest.raises(ValueError):
        btc_to_sats("0.000000001")


@pytest.mark.parametrize("answer, reason", [
    (None, None), ("rejected: high-hash", "high-hash"), ("duplicate", "duplicate"),
    ("inconclusive", "inconclusive"), ("rejected: bad-prevblk", "bad-prevblk"),
])
def test_submitblock_reason(answer, reason):
    assert submitblock_reason(answer) == reason


def test_a_closed_client_makes_no_new_connection():
    # The other half of close(): a call that had not connected when close() ran used to
    # connect afterwards and wait out its timeout (a long-poll held process exit 600 s).
    accepted = []
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    srv.settimeout(0.5)
    rpc = NodeRPC(f"http://127.0.0.1:{srv.getsockname()[1]}", RPCAuth("u", "p"), timeout=30)
    rpc.close()
    started = time.monotonic()
    with pytest.raises(NodeUnavailable, match="closed"):
        rpc.call_sync("getblocktemplate")
    try:
        accepted.append(srv.accept())
    except (TimeoutError, socket.timeout):
        pass
    srv.close()
    assert time.monotonic() - started < 5 and accepted == []


# --- stopping: every wait ends at once when the caller is cancelled or the client closed ----


def test_call_with_retry_gives_up_when_the_client_is_closed():
    # close() at shutdown used to turn each attempt into "client closed", which is a
    # NodeUnavailable and so was retried for ever (a stop that never finished).
    rpc = NodeRPC(dead_url(), RPCAuth("u", "p"))

    async def main() -> float:
        task = asyncio.create_task(rpc.call_with_retry("getblockcount", max_delay=0.05))
        await asyncio.sleep(0.3)  # a few refused attempts and backoff sleeps
        rpc.close()
        started = time.monotonic()
        with pytest.raises(NodeUnavailable):
            await asyncio.wait_for(task, 10)
        return time.monotonic() - started

    assert asyncio.run(main()) < 1.0


def test_cancelling_call_with_retry_ends_the_wait_at_once():
    srv = socket.socket()  # accepts connections (kernel backlog) and never answers
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    rpc = NodeRPC(f"http://127.0.0.1:{srv.getsockname()[1]}", RPCAuth("u", "p"), timeout=60)

    async def main() -> float:
        task = asyncio.create_task(rpc.call_with_retry("getblockcount"))
        await asyncio.sleep(0.3)  # the HTTP request is now stuck waiting for an answer
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

    try:
        assert asyncio.run(main()) < 0.5
    finally:
        rpc.close()
        srv.close()


STUCK_CALL_SCRIPT = r"""
import asyncio, sys
from miner.node.rpc import NodeRPC, RPCAuth

rpc = NodeRPC(sys.argv[1], RPCAuth("u", "p"), timeout=60)

async def main():
    task = asyncio.create_task(rpc.call("getblocktemplate", {"rules": ["segwit"]}))
    await asyncio.sleep(0.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    print("cancelled", flush=True)

asyncio.run(main())
"""


def test_a_call_stuck_in_a_silent_node_does_not_hold_process_exit(tmp_path):
    # A node that accepts the connection and never answers (SIGSTOPped, wedged): the HTTP
    # request cannot be interrupted, so its thread must not be joined at exit either.
    import subprocess
    import sys

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    script = tmp_path / "stuck.py"
    script.write_text(STUCK_CALL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), f"http://127.0.0.1:{srv.getsockname()[1]}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "cancelled", proc.stderr.read()
        started = time.monotonic()
        proc.wait(30)
        exit_after = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        srv.close()
    assert proc.returncode == 0
    assert exit_after < 5.0, f"process exit waited {exit_after:.1f} s for an abandoned RPC thread"


def test_daemon_pool_reuses_idle_threads_and_runs_calls_in_parallel():
    import threading

    from miner.node.rpc import _DaemonThreadPool

    pool = _DaemonThreadPool(4, "t")
    gate = threading.Event()
    held = [pool.submit(gate.wait, 10) for _ in range(3)]
    assert len(pool._threads) == 3 and all(t.daemon for t in pool._threads)
    gate.set()
    assert [f.result(10) for f in held] == [True] * 3
    assert [pool.submit(lambda x, y=0: x + y, 2, y=3).result(10) for _ in range(5)] == [5] * 5
    assert len(pool._threads) == 3  # idle threads took the later calls
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda: 1 / 0).result(10)
    pool.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)


def test_a_restarted_bitcoind_s_new_cookie_is_used_on_the_first_call(regtest_node_factory):
    # bitcoind writes a new cookie each start: the first call after a restart was refused
    # (HTTP 401) and only the next one re-read the cookie.
    node = regtest_node_factory(kind="bitcoind", persistent=True)
    rpc = NodeRPC(node.rpc_url, node.auth)
    try:
        height = rpc.call_sync("getblockcount")
        node.stop()
        node._rpc = node._wallet_rpc = None  # the node's own clients: not what is tested here
        node.start()
        assert rpc.call_sync("getblockcount") == height
    finally:
        rpc.close()
