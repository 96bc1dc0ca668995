"""JSON-RPC to the node (bitcoind or bcoin) through python-bitcoinrpc's AuthServiceProxy.

Why it looks like this (electrumx's server/daemon.py is the model):

- Failures are named exceptions, so callers decide by class: a transport failure
  (`NodeUnavailable`) or a node still starting (`NodeWarmingUp`) is worth retrying, a
  rejected block (`RPCVerifyRejected`) is an answer. `error_from_code` is the one table.
- Health is tracked in one place: the first failure logs an ERROR, a node that stays
  down logs at most once a minute, and healing logs one INFO line
  "connection to <name> restored after N s". `metrics.node_up` follows.
- AuthServiceProxy is not thread-safe and keeps one HTTP connection, so every call gets
  a fresh proxy (one TCP connection per call; on loopback that costs well under a
  millisecond). A long-poll on one thread therefore never blocks a short call on
  another, and a connection the node closed while idle can never be reused.
- `call()` runs the blocking call on this client's own small pool of daemon threads, so
  nothing blocks the event loop and long-polls cannot starve asyncio's default executor.
  http.client cannot be interrupted, so cancelling the awaiting task returns at once and
  abandons the thread to its timeout; daemon threads mean process exit never waits for
  one (a ThreadPoolExecutor's threads are joined at exit: a stop would wait out a
  long-poll or a node that accepts connections but never answers).
- Credentials never come from argv. A cookie file is re-read after any transport or
  auth failure, because bitcoind writes a new cookie each time it starts.

Decimal handling: python-bitcoinrpc parses every JSON number with a fraction or an
exponent as `decimal.Decimal`. Results are returned as plain JSON values: each Decimal
becomes the float `json.loads` would have produced, so results compare equal to JSON
vectors and can be serialised again. Integers (heights, satoshi values such as
`coinbasevalue`, `fee`) are never touched. For BTC amounts use `btc_to_sats()`, which is
exact for any amount a node sends (eight decimals survive the float round trip).

How bcoin 1.0.2 answers differently from Bitcoin Core (checked against the real node;
tests/node/test_rpc.py keeps these true):

- unknown block hash: bcoin -1 "Block not found" (Core -5); mapped to
  `RPCInvalidAddressOrKey`, the class of Core's code.
- wrong parameter type: bcoin -3 "Param #0 must be a int." -> `RPCTypeError`, a subclass
  of `RPCInvalidParameter` (so is Core's -3).
- any other exception inside a bcoin handler: -32603 with the JavaScript message
  (`RPCInternalError`).
- bad hex to submitblock/sendrawtransaction: -22 (both; bcoin's text is
  "Out of bounds read (offset=0).").
- submitblock rejections are results, not errors, in both; bcoin prefixes the BIP22
  reason with "rejected: " ("rejected: duplicate", "rejected: high-hash",
  "rejected: bad-prevblk"). `submitblock_reason()` strips it.
- bcoin never answers -28: its HTTP server only listens once the node is loaded, so a
  starting bcoin looks like `NodeUnavailable`.
- wrong credentials: HTTP 401 with an empty body (both) -> `RPCAuthError`.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import decimal
import http.client
import logging
import os
import queue
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitcoinrpc.authproxy import AuthServiceProxy, JSONRPCException

from miner.metrics import Metrics

__all__ = [
    "RPCAuth",
    "AuthConfigError",
    "CookieAuth",
    "load_auth",
    "read_cookie",
    "RPCError",
    "NodeUnavailable",
    "RPCAuthError",
    "NodeWarmingUp",
    "NodeNotConnected",
    "NodeInitialDownload",
    "RPCVerifyError",
    "RPCVerifyRejected",
    "RPCVerifyAlreadyInChain",
    "RPCMethodNotFound",
    "RPCInvalidParameter",
    "RPCTypeError",
    "RPCInvalidAddressOrKey",
    "RPCDeserializationError",
    "RPCInternalError",
    "error_from_code",
    "NodeRPC",
    "RETRYABLE",
    "btc_to_sats",
    "submitblock_reason",
]

log = logging.getLogger(__name__)

# Environment variables holding RPC credentials when no cookie or config values are given.
ENV_USER = "GRIDMINER_RPC_USER"
ENV_PASSWORD = "GRIDMINER_RPC_PASSWORD"

# Seconds a single call may take unless the caller says otherwise.
DEFAULT_TIMEOUT_S = 30.0
# First retry delay (seconds) in call_with_retry; doubles up to max_delay.
RETRY_INITIAL_S = 0.25
# Default cap (seconds) for the retry delay.
RETRY_MAX_S = 10.0
# While the node stays down, log at most once per this many seconds.
ERROR_LOG_INTERVAL_S = 60.0
# Threads per client for blocking calls: long-polls hold one each. bitcoind serves
# -rpcthreads (default 4, 16 in recent releases) at once and queues the rest.
MAX_CONCURRENT_CALLS = 8
# Satoshis per BTC.
COIN = 100_000_000


# --- credentials -----------------------------------------------------------------


class AuthConfigError(ValueError):
    """RPC credentials are missing or unreadable; the message names what to provide."""


@dataclass(frozen=True)
class RPCAuth:
    """HTTP Basic credentials for the node's RPC."""

    user: str
    password: str = field(repr=False)

    def header(self) -> bytes:
        """The Authorization header value."""
        pair = f"{self.user}:{self.password}".encode()
        return b"Basic " + base64.b64encode(pair)


def read_cookie(path: str | os.PathLike[str]) -> RPCAuth:
    """Credentials from a bitcoind cookie file (`__cookie__:<hex secret>`)."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise AuthConfigError(
            f"RPC cookie file {p} does not exist: is the node running, and is this its datadir "
            "(regtest/testnet keep it in a subdirectory)?") from None
    except OSError as e:
        raise AuthConfigError(f"RPC cookie file {p} is not readable: {e.strerror}") from None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise AuthConfigError(f"RPC cookie file {p} is not in the form user:password")
    return RPCAuth(user, password)


class CookieAuth:
    """A callable that reads a cookie file each time it is called (NodeRPC calls it on reconnect)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()

    def __call__(self) -> RPCAuth:
        return read_cookie(self.path)

    def __repr__(self) -> str:
        return f"CookieAuth({str(self.path)!r})"


def load_auth(cookie_file: str | os.PathLike[str] | None = None, user: str | None = None,
              password: str | None = None, env: Mapping[str, str] = os.environ) -> RPCAuth:
    """Credentials from a cookie file, else user/password from the config file, else the environment.

    Never from argv: command lines are visible to every user of the machine.
    """
    if cookie_file is not None:
        if user is not None or password is not None:
            raise AuthConfigError("give either an RPC cookie file or an RPC user and password, not both")
        return read_cookie(cookie_file)
    if user is not None or password is not None:
        if not user:
            raise AuthConfigError("RPC password given without an RPC user")
        if password is None:
            raise AuthConfigError(f"RPC user {user!r} given without an RPC password")
        return RPCAuth(user, password)
    env_user, env_password = env.get(ENV_USER), env.get(ENV_PASSWORD)
    if env_user or env_password:
        if not env_user:
            raise AuthConfigError(f"{ENV_PASSWORD} is set but {ENV_USER} is not")
        if not env_password:
            raise AuthConfigError(f"{ENV_USER} is set but {ENV_PASSWORD} is not")
        return RPCAuth(env_user, env_password)
    raise AuthConfigError(
        "no RPC credentials: give the node's cookie file, or a user and password in the config "
        f"file, or set {ENV_USER} and {ENV_PASSWORD} (never on the command line)")


# --- errors ----------------------------------------------------------------------


class RPCError(Exception):
    """A failed RPC call: `code` is the node's error code (None for transport and HTTP failures)."""

    code: int | None
    message: str
    method: str | None
    http_status: int | None

    def __init__(self, code: int | None, message: str, method: str | None = None,
                 http_status: int | None = None) -> None:
        super().__init__(code, message, method)
        self.code = code
        self.message = message
        self.method = method
        self.http_status = http_status

    @property
    def kind(self) -> str:
        """Label for metrics.rpc_errors: rpc_<code>, or a word for failures without a code."""
        return "rpc_unknown" if self.code is None else f"rpc_{self.code}"

    def __str__(self) -> str:
        where = f"{self.method}: " if self.method else ""
        code = "" if self.code is None else f" (code {self.code})"
        return f"{where}{self.message}{code}"


class NodeUnavailable(RPCError):
    """Transport failure: refused, reset, timed out, or an HTTP error without a JSON body."""

    @property
    def kind(self) -> str:
        return "unavailable"


class RPCAuthError(RPCError):
    """The node refused our credentials (HTTP 401 or 403)."""

    @property
    def kind(self) -> str:
        return "auth"


class NodeWarmingUp(RPCError):
    """-28: the node is loading (block index, wallet) and will answer soon."""

    @property
    def kind(self) -> str:
        return "warming_up"


class NodeNotConnected(RPCError):
    """-9: the node has no peers (getblocktemplate refuses off regtest)."""


class NodeInitialDownload(RPCError):
    """-10: the node is in initial block download."""


class RPCVerifyError(RPCError):
    """-25: general verification error (e.g. missing inputs)."""


class RPCVerifyRejected(RPCError):
    """-26: transaction or block rejected by consensus or policy."""


class RPCVerifyAlreadyInChain(RPCError):
    """-27: already in the chain."""


class RPCMethodNotFound(RPCError):
    """-32601: the node does not have this method."""


class RPCInvalidParameter(RPCError):
    """-8 or -32602: a parameter is out of range or malformed."""


class RPCTypeError(RPCInvalidParameter):
    """-3: a parameter has the wrong JSON type."""


class RPCInvalidAddressOrKey(RPCError):
    """-5: unknown address, key, block or transaction (bcoin: -1 "Block not found")."""


class RPCDeserializationError(RPCError):
    """-22: the node could not decode the hex we sent."""


class RPCInternalError(RPCError):
    """-32603: the node failed internally (bcoin reports any uncaught exception this way)."""


_CLASS_BY_CODE: dict[int, type[RPCError]] = {
    -28: NodeWarmingUp,
    -9: NodeNotConnected,
    -10: NodeInitialDownload,
    -25: RPCVerifyError,
    -26: RPCVerifyRejected,
    -27: RPCVerifyAlreadyInChain,
    -32601: RPCMethodNotFound,
    -8: RPCInvalidParameter,
    -32602: RPCInvalidParameter,
    -3: RPCTypeError,
    -5: RPCInvalidAddressOrKey,
    -22: RPCDeserializationError,
    -32603: RPCInternalError,
}

# bcoin answers some conditions with -1 (misc) where Core has a specific code; the
# message is the only thing that tells them apart.
_BCOIN_MISC_MESSAGES: dict[str, type[RPCError]] = {
    "Block not found": RPCInvalidAddressOrKey,
    "Block not found.": RPCInvalidAddressOrKey,
    "Transaction not found.": RPCInvalidAddressOrKey,
}

# Retried by call_with_retry unless the caller says otherwise.
RETRYABLE: tuple[type[RPCError], ...] = (NodeUnavailable, NodeWarmingUp, NodeNotConnected, NodeInitialDownload)


def error_from_code(code: int | None, message: str, method: str | None = None) -> RPCError:
    """The named exception for a node error code (RPCError when the code has no name)."""
    cls = _CLASS_BY_CODE.get(code, RPCError) if code is not None else RPCError
    if code == -1:
        cls = _BCOIN_MISC_MESSAGES.get(message.strip(), RPCError)
    return cls(code, message, method)


# bitcoinrpc reports an HTTP answer without a JSON body as code -342 with this text.
_NON_JSON_HTTP = re.compile(r"non-JSON HTTP response with '(\d{3}) ?([^']*)'")
_PROXY_NO_HTTP_RESPONSE = -342
_PROXY_MISSING_RESULT = -343


def _from_proxy_error(error: Any, method: str) -> RPCError:
    """Turn a JSONRPCException's error object into our exception."""
    if not isinstance(error, dict):
        return RPCError(None, f"malformed error object from node: {error!r:.200}", method)
    code, message = error.get("code"), str(error.get("message") or "")
    if code == _PROXY_NO_HTTP_RESPONSE:
        match = _NON_JSON_HTTP.search(message)
        status = int(match.group(1)) if match else None
        if status in (401, 403):
            return RPCAuthError(None, f"HTTP {status}: the node refused the RPC credentials", method, status)
        text = f"HTTP {status} {match.group(2)} without a JSON body" if match else message
        return NodeUnavailable(None, text, method, status)
    if code == _PROXY_MISSING_RESULT:
        return RPCError(None, "response without a result", method)
    if not isinstance(code, int):
        # bcoin answers a request it cannot parse with {"error": {"message": ...}} and no code.
        return RPCError(None, message or "error without a code", method)
    return error_from_code(code, message, method)


# --- values ----------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Replace the Decimals python-bitcoinrpc makes with the floats json.loads would give."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def btc_to_sats(amount: float | int | str | decimal.Decimal) -> int:
    """A BTC amount as the node writes it (float, Decimal or text) in satoshis, exactly."""
    if isinstance(amount, bool):
        raise TypeError("amount must be a number, not bool")
    value = decimal.Decimal(str(amount)) * COIN
    if value != value.to_integral_value():
        raise ValueError(f"{amount!r} BTC is not a whole number of satoshis")
    return int(value)


def submitblock_reason(answer: Any) -> str | None:
    """submitblock's answer as a BIP22 reason: None when accepted, bcoin's "rejected: " prefix removed."""
    if answer is None:
        return None
    text = str(answer).strip()
    prefix = "rejected: "
    return text[len(prefix):] if text.startswith(prefix) else text


# --- client ----------------------------------------------------------------------


class _DaemonThreadPool(concurrent.futures.Executor):
    """Up to max_workers daemon threads, started as calls need them.

    Unlike ThreadPoolExecutor, nothing joins these threads at interpreter exit: a call
    stuck in the node's socket ends with its timeout or with the process, never delays it.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self._max_workers = max_workers
        self._name = name
        self._work: queue.SimpleQueue[tuple[concurrent.futures.Future, Callable, tuple, dict] | None] = \
            queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # released by a thread each time it waits for work
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._work.put((future, fn, args, kwargs))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._max_workers:
                thread = threading.Thread(target=self._worker, daemon=True,
                                          name=f"{self._name}-{len(self._threads)}")
                self._threads.append(thread)
                thread.start()
        return future

    def _worker(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                self._work.put(None)  # wake the next thread too
                return
            future, fn, args, kwargs = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as e:  # noqa: BLE001 (handed to the awaiting caller)
                    future.set_exception(e)
            del item, future, fn, args, kwargs  # keep no answer alive while idle
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
        if cancel_futures:
            while True:
                try:
                    item = self._work.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        self._work.put(None)
        if wait:
            for thread in list(self._threads):
                thread.join()


AuthSource = RPCAuth | Callable[[], RPCAuth]


def _redact_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path}"


class NodeRPC:
    """Blocking and async JSON-RPC to one node URL, with named errors, health tracking and metrics."""

    def __init__(self, url: str, auth: AuthSource, timeout: float = DEFAULT_TIMEOUT_S,
                 metrics: Metrics | None = None, name: str = "node",
                 clock: Callable[[], float] = time.monotonic, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"node RPC URL must be http://host:port[/path], got {url!r}")
        if parts.username or parts.password:
            raise ValueError("put RPC credentials in the cookie file, config or environment, not in the URL")
        # AuthServiceProxy takes credentials only inside the URL (and does not unquote
        # them), so it gets a placeholder and the real header is set on the proxy.
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self._proxy_url = f"{parts.scheme}://x:x@{parts.hostname}:{port}{parts.path}"
        self.url = url
        self.name = name
        self.timeout = timeout
        self.metrics = metrics if metrics is not None else Metrics()
        self._auth_source = auth
        self._auth: RPCAuth | None = auth if isinstance(auth, RPCAuth) else None
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._up = True
        self._down_since: float | None = None
        self._last_error_log: float | None = None
        self._failures_since_log = 0
        self._executor: _DaemonThreadPool | None = None
        self._closed = False
        self._active: set[http.client.HTTPConnection] = set()  # connections of calls in flight

    def __repr__(self) -> str:
        return f"NodeRPC({_redact_url(self._proxy_url)!r}, name={self.name!r})"

    @property
    def up(self) -> bool:
        """False from a failed call (transport, auth, warming up) until the next call succeeds."""
        return self._up

    # -- calls --

    def call_sync(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        """Call method with positional params and return its result; raises an RPCError subclass."""
        self.metrics.rpc_calls.labels(method=method).inc()
        try:
            result = self._call_rereading_cookie(method, params, self.timeout if timeout is None else timeout)
        except RPCError as e:
            self.metrics.rpc_errors.labels(kind=e.kind).inc()
            if self._closed:
                raise  # a call abandoned by close(), e.g. a long-poll cut by a node shutdown
            if isinstance(e, (NodeUnavailable, RPCAuthError, NodeWarmingUp)):
                if not isinstance(self._auth_source, RPCAuth):
                    self._auth = None  # re-read the cookie: the node may have restarted
                self._record_failure(e)
            else:
                self._record_success()  # it answered, so it is up
            raise
        self._record_success()
        self._observe(method, result)
        return result

    async def call(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        """call_sync on this client's worker threads, so the event loop never blocks.

        Cancelling the awaiting task returns at once and abandons the answer; the HTTP
        request itself runs on in its daemon thread until the node answers or the timeout
        passes, and never holds up process exit.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._get_executor(), self._call_sync_kw, method, params, timeout)

    async def call_with_retry(self, method: str, *params: Any,
                              retry: tuple[type[BaseException], ...] = RETRYABLE,
                              max_delay: float = RETRY_MAX_S, deadline: float | None = None,
                              timeout: float | None = None) -> Any:
        """call(), retrying errors of the retry classes after 0.25 s, doubling to max_delay.

        deadline: give up (re-raising the last error) once this many seconds have passed
        on the client's clock; None retries until the node answers, the client is closed,
        or the awaiting task is cancelled (which ends the wait at once, mid-call or mid-sleep).
        """
        give_up_at = None if deadline is None else self._clock() + deadline
        delay = RETRY_INITIAL_S
        while True:
            try:
                return await self.call(method, *params, timeout=timeout)
            except retry:
                if self._closed or (give_up_at is not None and self._clock() + delay > give_up_at):
                    raise
            await self._sleep(delay)
            delay = min(delay * 2, max_delay)

    def forget_credentials(self) -> None:
        """Read a cookie file again on the next call (the node restarted and wrote a new one)."""
        if not isinstance(self._auth_source, RPCAuth):
            self._auth = None

    def close(self) -> None:
        """Cut calls in flight (a long-poll may otherwise hold its thread, and process exit,
        for its whole timeout) and release the worker threads; their errors go unlogged."""
        with self._lock:  # together with the snapshot: see the ordering in _call_once
            self._closed = True
            active = list(self._active)
        for conn in active:
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked reading the answer
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    # -- internals --

    def _call_rereading_cookie(self, method: str, params: tuple[Any, ...], timeout: float) -> Any:
        """_call_once; refused credentials from a cookie file are re-read, and the call made
        again once if the cookie changed (a restarted bitcoind writes a new one)."""
        used = self._auth
        try:
            return self._call_once(method, params, timeout)
        except RPCAuthError:
            if isinstance(self._auth_source, RPCAuth) or self._closed:
                raise
            self._auth = None
            try:
                fresh = self._current_auth(method)
            except NodeUnavailable:
                fresh = None
            if fresh is None or fresh == used:
                raise
        return self._call_once(method, params, timeout)

    def _call_sync_kw(self, method: str, params: tuple[Any, ...], timeout: float | None) -> Any:
        return self.call_sync(method, *params, timeout=timeout)

    def _get_executor(self) -> _DaemonThreadPool:
        with self._lock:
            if self._executor is None:
                self._executor = _DaemonThreadPool(MAX_CONCURRENT_CALLS, f"rpc-{self.name}")
            return self._executor

    def _current_auth(self, method: str) -> RPCAuth:
        auth = self._auth
        if auth is None:
            source = self._auth_source
            try:
                auth = source() if callable(source) else source
            except AuthConfigError as e:
                # A missing cookie usually means the node is (re)starting.
                raise NodeUnavailable(None, str(e), method) from None
            self._auth = auth
        return auth

    def _call_once(self, method: str, params: tuple[Any, ...], timeout: float) -> Any:
        auth = self._current_auth(method)
        proxy = AuthServiceProxy(self._proxy_url, method, timeout=timeout)
        proxy._AuthServiceProxy__auth_header = auth.header()  # see __init__
        conn = proxy._AuthServiceProxy__conn
        with self._lock:
            if self._closed:
                raise NodeUnavailable(None, "client closed", method)
            self._active.add(conn)
        try:
            # Connect first, then look at _closed again: close() shuts down the sockets it
            # sees, and a call it saw before its socket existed must not go on to wait for
            # its whole timeout (a long-poll: 600 s, holding the process open at exit).
            conn.connect()
            with self._lock:
                if self._closed:
                    raise NodeUnavailable(None, "client closed", method)
            return _plain(proxy(*params))
        except JSONRPCException as e:
            raise _from_proxy_error(e.error, method) from None
        except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:
            raise NodeUnavailable(None, _describe_transport_error(e), method) from None
        except ValueError as e:  # a body that is not JSON
            raise NodeUnavailable(None, f"unreadable answer from node: {e}", method) from None
        finally:
            with self._lock:
                self._active.discard(conn)
            conn.close()

    def _record_failure(self, error: RPCError) -> None:
        now = self._clock()
        with self._lock:
            first = self._up
            self._up = False
            self.metrics.node_up.set(0)
            if first:
                self._down_since = now
                self._last_error_log = now
                self._failures_since_log = 0
                line = f"{self.name} RPC failed: {error}; retrying occasionally"
            elif self._last_error_log is None or now - self._last_error_log >= ERROR_LOG_INTERVAL_S:
                down_for = now - (self._down_since if self._down_since is not None else now)
                line = (f"{self.name} RPC still failing after {down_for:.0f} s "
                        f"({self._failures_since_log + 1} failures since the last report): {error}")
                self._last_error_log = now
                self._failures_since_log = 0
            else:
                self._failures_since_log += 1
                return
        log.error(line)

    def _record_success(self) -> None:
        with self._lock:
            if self._up:
                self.metrics.node_up.set(1)
                return
            now = self._clock()
            down_for = now - (self._down_since if self._down_since is not None else now)
            self._up = True
            self._down_since = None
            self._last_error_log = None
            self.metrics.node_up.set(1)
        log.info("connection to %s restored after %.1f s", self.name, down_for)

    def _observe(self, method: str, result: Any) -> None:
        """Keep metrics.node_height current from answers that carry the tip height."""
        height = None
        if method == "getblockcount" and isinstance(result, int):
            height = result
        elif method == "getblockchaininfo" and isinstance(result, dict):
            height = result.get("blocks")
        elif method == "getblocktemplate" and isinstance(result, dict) and isinstance(result.get("height"), int):
            height = result["height"] - 1
        if isinstance(height, int):
            self.metrics.node_height.set(height)


def _describe_transport_error(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (is the node running?)"
    if isinstance(e, ConnectionResetError):
        return "connection reset by the node"
    if isinstance(e, http.client.RemoteDisconnected):
        return "the node closed the connection without answering"
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}" if text != type(e).__name__ else text

