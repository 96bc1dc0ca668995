"""The regtest node that tests and `make run` mine against: pinned bcoin, or bitcoind when asked.

Why bcoin: it installs from the npm registry in seconds with no compiler (pinned at
1.0.2 by miner/node/bcoin/package.json and package-lock.json, shipped as package data),
so a fresh clone, or an installed gridminer, can mine
real regtest blocks. bcoin_install.py puts it (`npm ci --ignore-scripts`) into a
per-user cache keyed by the lockfile's hash, never into the repo. Install scripts are
skipped on purpose: they compile native add-ons with node-gyp (bcrypto, bsip, bstring,
mrmr, secp256k1), which needs a C++ toolchain and Node's headers, and npm 11 runs them
for now but warns that it will stop. The node runs with NODE_BACKEND=js,
bcoin-org's switch to the pure JavaScript backends (mrmr has no automatic fallback:
without the switch it dies with "Cannot find module 'mrmr.node'"); leveldown loads
its prebuilt N-API binary at run time.

The same class runs Bitcoin Core instead with kind="bitcoind" (the `bitcoind` on PATH,
or the executable given as bitcoind=...): temp datadir, cookie auth, ZMQ
hashblock/sequence on a free port, a "gridminer" wallet. kind="auto" takes bitcoind
when a path is given, else $GRIDMINER_REGTEST_NODE, else bcoin when node and npm are on
PATH, else bitcoind on PATH (miner.testing.RegtestNode prefers bitcoind instead).
Everything binds to 127.0.0.1 on free ports; logs go to <datadir>/node.log.

Facts about bcoin 1.0.2 regtest, checked against the running node (the tests in
tests/node/test_regtest.py keep the important ones true):

- Start: about 0.5 s to an answering RPC, in memory or on disk. bcoin reads BCOIN_*
  environment variables (we drop them) and a config file: <prefix>/<network>/bcoin.conf
  by default, or the --config path, which we give: it carries the api key (mode 0600)
  so that the key never appears on the command line.
- The wallet plugin ignores --prefix (bcfg re-derives its prefix from ~/.bcoin), so
  --wallet-prefix must be given; the wallet and its HTTP/RPC server share the api key.
- Regtest's seed list is 127.0.0.1:48444, so a stock node dials any local regtest peer:
  --seeds=, (an empty list; "--seeds=" alone is ignored) keeps it alone.
  --max-outbound=0 is refused by an assertion.
- Persistent datadirs (--memory=false) work with leveldown 6.1.1 only with
  miner/node/bcoin/leveldown-null-range.js preloaded: bdb 0.2.3 passes unset range bounds
  as null and leveldown 6 reads them as the key "null", so every iteration is empty and
  the wallet fails to initialise ("assert(tip)"). With the preload, the chain and the
  wallet survive SIGTERM and SIGKILL restarts. SIGTERM ends bcoin without a graceful
  shutdown (no handler of its own), usually within milliseconds, seen up to ~1.5 s on
  a long-running node; LevelDB's log makes that safe.
- getblocktemplate works on a fresh node: no -9/-10 on regtest (selfConnect). bcoin
  caches the template: it is rebuilt on a new block, or when a transaction enters the
  mempool more than 10 s after the cached template was built. A transaction arriving
  sooner is left out until the next block or the next such transaction, however long
  that takes. longpollid is the tip hash (display order) followed by 8 hex digits of
  the live mempool size, so it changes even when the cached template does not; a
  long-poll returns when the template is rebuilt.
  Without {"rules": ["segwit"]} after activation it answers -8 "Client must support
  segwit.". default_witness_commitment is present even with no transactions.
- Segwit (and csv, testdummy) are BIP9 deployments with a 144-block window and a
  108-block threshold on regtest: "defined" to height 143, "started" (template version
  0x30000003, vbavailable {"csv": 0, "!segwit": 1, "testdummy": 28}) to 287,
  "locked_in" to 431, "active" from 432 (rules ["csv", "!segwit", "testdummy"],
  weightlimit 4000000, sigoplimit 80000). Before that: rules [], version 0x20000000,
  sizelimit 1000000, sigoplimit 20000. BIP34 height is 100000000 (never enforced);
  halving interval 150 blocks; coinbase maturity 100.
- submitblock returns null on acceptance and "rejected: <reason>" strings otherwise
  ("rejected: duplicate", "rejected: high-hash", "rejected: bad-prevblk"); bad hex is
  error -22. A block answered "rejected: bad-prevblk" is kept as an orphan all the same
  and connected when its parent arrives. sendrawtransaction relays without checking
  and always returns the txid.
- generatetoaddress exists (bcoin's own addresses: rb1... and R.../G...; Core's bcrt1
  addresses get -5 "Invalid address."); `generate` needs --coinbase-address.
- getblockchaininfo: chain "regtest", blocks, headers, bestblockhash, difficulty,
  mediantime, verificationprogress, chainwork, pruned, softforks (bip34/66/65 as
  {id, version, reject: {status}}), bip9_softforks {name: {status, bit, startTime,
  timeout}}, pruneheight; no initialblockdownload. getbestblockhash works.
- Wallet: its RPC getnewaddress and getrawchangeaddress encode the address for mainnet
  (1..., bc1...) on regtest, so new_address() uses the wallet HTTP API, which encodes
  for regtest (bech32 HRP "rb", P2PKH version 0x3c, P2SH 0x26: network "bcoin-regtest").
  Accounts are legacy unless created with witness: true. getnewaddress without an
  argument fails with -32603 "Account not found.". The wallet follows the chain
  asynchronously (105 blocks take it ~0.5 s), so mine_with_node waits for it. Until
  segwit activates the mempool refuses a wallet spend of P2WPKH coins
  ("no-witness-yet"), yet sendtoaddress still returns a txid ("broadcast anyway").
  The wallet hands its transactions to the mempool without waiting (NodeClient.send
  does not await relay), so sendtoaddress can answer before the mempool has the tx:
  wait_for_mempool() closes that window.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from miner.chain.address import address_to_script
from miner.metrics import Metrics
from miner.node.bcoin_install import (
    BCOIN_VERSION,
    INSTALL_MARKER,
    LEVELDOWN_SHIM,
    PIN_DIR,
    RegtestError,
    RegtestUnavailable,
    bcoin_install_dir,
    cache_root,
    find_node_tools,
    install_bcoin,
    lockfile_key,
)
from miner.node.rpc import CookieAuth, NodeRPC, RPCAuth, RPCError, read_cookie

__all__ = [
    "RegtestNode",
    "RegtestError",
    "RegtestUnavailable",
    "WalletHTTPError",
    "install_bcoin",
    "bcoin_install_dir",
    "cache_root",
    "lockfile_key",
    "find_node_tools",
    "find_bitcoind",
    "BCOIN_VERSION",
    "PIN_DIR",
    "INSTALL_MARKER",
]

log = logging.getLogger(__name__)

# Environment variable that picks the node for kind="auto" ("bcoin" or "bitcoind").
KIND_ENV = "GRIDMINER_REGTEST_NODE"
# Seconds from spawning the node to an answering RPC (and wallet) before giving up.
START_TIMEOUT_S = 60.0
# Seconds between SIGTERM and SIGKILL in stop().
STOP_TIMEOUT_S = 10.0
# Seconds between readiness probes while starting.
READY_POLL_S = 0.05
# Seconds one readiness probe may take.
PROBE_TIMEOUT_S = 2.0
# Lines of the node's log quoted in start errors.
LOG_TAIL_LINES = 40
# Fresh port sets tried when the node cannot bind (another process took a port).
PORT_ATTEMPTS = 3
# Seconds to wait for the wallet to see blocks mine_with_node just made.
WALLET_SYNC_TIMEOUT_S = 30.0
# Latest wallet transactions read to work out how far bcoin's wallet has synced.
WALLET_TX_SAMPLE = 20
# Extra RPC timeout per block generatetoaddress mines (seconds).
MINE_TIMEOUT_PER_BLOCK_S = 0.1

# bcoin's default wallet, and the account we create for bech32 (P2WPKH) addresses.
BCOIN_WALLET = "primary"
BCOIN_WITNESS_ACCOUNT = "gridminer-witness"
# The wallet bitcoind creates (or loads again after a restart).
BITCOIND_WALLET = "gridminer"
# The RPC user name for bcoin (it checks only the password, the api key).
BCOIN_RPC_USER = "gridminer"

Kind = Literal["auto", "bcoin", "bitcoind"]
AddressKind = Literal["bech32", "legacy"]


class WalletHTTPError(RegtestError):
    """bcoin's wallet HTTP API answered with an error status."""

    def __init__(self, message: str, status: int, node_message: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.node_message = node_message


# --- small helpers ----------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _basic(auth: RPCAuth) -> str:
    return "Basic " + base64.b64encode(f"{auth.user}:{auth.password}".encode()).decode()


def _http_json(port: int, method: str, path: str, auth: RPCAuth, body: Any = None,
               timeout: float = PROBE_TIMEOUT_S) -> tuple[int, Any]:
    """One HTTP request to 127.0.0.1:port with a JSON body; (status, parsed JSON or None)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body)
        conn.request(method, path, payload, {"Authorization": _basic(auth), "Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = None
        return response.status, parsed
    finally:
        conn.close()


def kill_quietly(proc: subprocess.Popen[bytes]) -> None:
    """Finalizer: never leave a child (a node, a miner) running after the interpreter exits."""
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.SubprocessError):
            proc.wait(STOP_TIMEOUT_S)


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """SIGTERM, then SIGKILL if the process has not exited after timeout seconds; True if it
    had to be killed."""
    if proc.poll() is not None:
        return False
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
        return False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        return True


def find_bitcoind(path: str | os.PathLike[str] | None = None) -> str:
    """The bitcoind executable: the path given (checked), else the one on PATH; RegtestUnavailable if none."""
    if path is not None:
        given = Path(path).expanduser()
        if not given.is_file() or not os.access(given, os.X_OK):
            raise RegtestUnavailable(f"bitcoind {str(given)!r} is not an executable file")
        return str(given.resolve())
    found = shutil.which("bitcoind")
    if found is None:
        raise RegtestUnavailable("bitcoind not found on PATH (install Bitcoin Core, or give its path)")
    return found


def _resolve_kind(kind: str, env: Mapping[str, str] = os.environ,
                  bitcoind: str | os.PathLike[str] | None = None) -> Literal["bcoin", "bitcoind"]:
    if kind == "auto":
        if bitcoind is not None:
            return "bitcoind"
        wanted = env.get(KIND_ENV, "").strip()
        if wanted:
            kind = wanted
        elif shutil.which("node") and shutil.which("npm"):
            return "bcoin"
        elif shutil.which("bitcoind"):
            return "bitcoind"
        else:
            raise RegtestUnavailable(
                "no regtest node available: install Node.js with npm (for the pinned bcoin "
                f"{BCOIN_VERSION}) or put bitcoind on PATH")
    if kind == "bcoin":
        return "bcoin"
    if kind == "bitcoind":
        return "bitcoind"
    raise ValueError(f"regtest node kind must be 'auto', 'bcoin' or 'bitcoind', got {kind!r}")


# --- the node ---------------------------------------------------------------------


class RegtestNode:
    """A throwaway regtest node on free loopback ports: start(), stop(), kill(), restart(), close().

    persistent=False keeps bcoin's chain in memory (lost on restart); bitcoind is always
    on disk. A datadir passed in is kept; one made here is removed by close().
    """

    def __init__(self, kind: Kind = "auto", *, datadir: str | os.PathLike[str] | None = None,
                 persistent: bool = True, metrics: Metrics | None = None,
                 rpc_timeout: float = 30.0, log_level: str = "info",
                 start_timeout: float = START_TIMEOUT_S, pin_dir: Path = PIN_DIR,
                 cache_dir: Path | None = None, bitcoind: str | os.PathLike[str] | None = None) -> None:
        self.kind: Literal["bcoin", "bitcoind"] = _resolve_kind(kind, bitcoind=bitcoind)
        if bitcoind is not None and self.kind != "bitcoind":
            raise ValueError(f"bitcoind={str(bitcoind)!r} given for a {self.kind} node")
        self._bitcoind_path = bitcoind
        self.persistent = persistent or self.kind == "bitcoind"
        self.metrics = metrics if metrics is not None else Metrics()
        self.rpc_timeout = rpc_timeout
        self.log_level = log_level
        self.start_timeout = start_timeout
        self._pin_dir = pin_dir
        self._cache_dir = cache_dir
        self._given_datadir = Path(datadir).expanduser().resolve() if datadir is not None else None
        self._datadir: Path | None = self._given_datadir
        self._datadir_cleanup: weakref.finalize | None = None
        self._api_key = secrets.token_hex(16)
        self._ports: dict[str, int] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._proc_finalizer: weakref.finalize | None = None
        self._log_offset = 0
        self._rpc: NodeRPC | None = None
        self._wallet_rpc: NodeRPC | None = None
        self._witness_account_ready = False

    # -- properties --

    def __repr__(self) -> str:
        state = f"pid {self._proc.pid}" if self.running and self._proc else "stopped"
        return f"RegtestNode({self.kind}, {state}, datadir={str(self._datadir)!r})"

    @property
    def running(self) -> bool:
        """True while the node process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The node's process id while it runs."""
        return self._proc.pid if self.running and self._proc else None

    @property
    def datadir(self) -> Path:
        """The node's data directory (bcoin's --prefix, bitcoind's -datadir)."""
        if self._datadir is None:
            raise RegtestError("the node has no datadir before start()")
        return self._datadir

    @property
    def log_path(self) -> Path:
        """The file the node's console output goes to."""
        return self.datadir / "node.log"

    @property
    def network_name(self) -> str:
        """miner.chain network of the node's addresses: "bcoin-regtest" (bcoin) or "regtest"."""
        return "bcoin-regtest" if self.kind == "bcoin" else "regtest"

    @property
    def ports(self) -> dict[str, int]:
        """The loopback ports in use: rpc, and wallet (bcoin) or zmq (bitcoind)."""
        if self._ports is None:
            raise RegtestError("the node has no ports before start()")
        return dict(self._ports)

    @property
    def rpc_url(self) -> str:
        """Node JSON-RPC URL (no credentials in it)."""
        return f"http://127.0.0.1:{self.ports['rpc']}/"

    @property
    def auth(self) -> RPCAuth | CookieAuth:
        """Credentials for rpc_url: bcoin's api key, or bitcoind's cookie (re-read on reconnect)."""
        if self.kind == "bcoin":
            return RPCAuth(BCOIN_RPC_USER, self._api_key)
        return CookieAuth(self.datadir / "regtest" / ".cookie")

    @property
    def zmq_url(self) -> str | None:
        """bitcoind's hashblock/sequence publisher; None for bcoin (it has no ZMQ)."""
        if self.kind == "bitcoind":
            return f"tcp://127.0.0.1:{self.ports['zmq']}"
        return None

    @property
    def rpc(self) -> NodeRPC:
        """A NodeRPC for this node (kept across restarts: same ports, same credentials)."""
        if self._rpc is None:
            self._rpc = NodeRPC(self.rpc_url, self.auth, timeout=self.rpc_timeout, metrics=self.metrics,
                                name=f"regtest {self.kind}")
        return self._rpc

    @property
    def wallet_rpc(self) -> NodeRPC:
        """A NodeRPC for the node's wallet (bcoin: its own port; bitcoind: /wallet/<name>)."""
        if self._wallet_rpc is None:
            if self.kind == "bcoin":
                url = f"http://127.0.0.1:{self.ports['wallet']}/"
            else:
                url = f"http://127.0.0.1:{self.ports['rpc']}/wallet/{BITCOIND_WALLET}"
            self._wallet_rpc = NodeRPC(url, self.auth, timeout=self.rpc_timeout, metrics=Metrics(),
                                       name=f"regtest {self.kind} wallet")
        return self._wallet_rpc

    # -- lifecycle --

    def __enter__(self) -> RegtestNode:
        try:
            return self.start()
        except BaseException:
            self.close()  # __exit__ will not run: leave no process or temp datadir behind
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> RegtestNode:
        """Start the node (installing bcoin first if needed) and wait until RPC answers."""
        if self.running:
            return self
        install = install_bcoin(self._pin_dir, self._cache_dir) if self.kind == "bcoin" else None
        bitcoind = find_bitcoind(self._bitcoind_path) if self.kind == "bitcoind" else None
        self._ensure_datadir()
        fixed_ports = self._ports is not None  # a restart keeps its ports
        attempts = 1 if fixed_ports else PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            if self._ports is None:
                self._ports = self._pick_ports()
            cmd = self._bcoin_command(install) if install is not None else self._bitcoind_command(bitcoind)
            started = time.monotonic()
            self._spawn(cmd)
            try:
                self._wait_ready()
            except RegtestError as e:
                port_clash = self._log_since_start_mentions("EADDRINUSE", "Address already in use",
                                                            "Unable to bind")
                self._reap()
                if port_clash and attempt < attempts:
                    log.warning("regtest %s could not bind its ports; trying new ones", self.kind)
                    self._ports = None
                    self._rpc = self._wallet_rpc = None
                    continue
                raise e
            break
        if self.kind == "bitcoind":
            # Clients made before a restart hold the old cookie: bitcoind writes a new one each start.
            for client in (self._rpc, self._wallet_rpc):
                if client is not None:
                    client.forget_credentials()
            self._load_bitcoind_wallet()
        log.info("regtest %s ready in %.2f s: rpc %s, datadir %s", self.kind, time.monotonic() - started,
                 self.rpc_url, self.datadir)
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL if the node has not exited after timeout seconds."""
        proc = self._proc
        if proc is None:
            return
        if terminate(proc, timeout):
            log.warning("regtest %s ignored SIGTERM for %.0f s; it was killed", self.kind, timeout)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the node at once (a crash, for tests)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        self._reap()

    def restart(self, timeout: float = STOP_TIMEOUT_S) -> RegtestNode:
        """stop() then start() on the same ports and datadir."""
        self.stop(timeout)
        return self.start()

    def close(self) -> None:
        """Stop the node, release the RPC clients, remove a datadir made here."""
        try:
            self.stop()
        finally:
            for client in (self._rpc, self._wallet_rpc):
                if client is not None:
                    client.close()
            if self._datadir_cleanup is not None:
                self._datadir_cleanup()
                self._datadir_cleanup = None
                self._datadir = None

    def tail_log(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the node's log."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 64 * 1024))
                text = f.read().decode("utf-8", "replace")
        except (OSError, RegtestError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- RPC, wallet and mining --

    def call(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        """One node RPC from synchronous code: node.call("getblockcount")."""
        return self.rpc.call_sync(method, *params, timeout=timeout)

    def owns_address(self, address: str) -> bool:
        """Whether address belongs to the node's wallet (so the wallet must see blocks paying it)."""
        if self.kind == "bcoin":
            return self._bcoin_owns(address)
        try:
            return bool(self.wallet_call("getaddressinfo", address).get("ismine"))
        except RPCError:
            return False

    def new_address(self, kind: AddressKind = "bech32") -> str:
        """A fresh address of the node's wallet: bech32 (P2WPKH) or legacy (P2PKH)."""
        if kind not in ("bech32", "legacy"):
            raise ValueError(f"address kind must be 'bech32' or 'legacy', got {kind!r}")
        if self.kind == "bcoin":
            account = "default"
            if kind == "bech32":
                self._ensure_witness_account()
                account = BCOIN_WITNESS_ACCOUNT
            info = self._bcoin_wallet_http("POST", f"/wallet/{BCOIN_WALLET}/address", {"account": account})
            address = info["address"]
        else:
            address = self.wallet_rpc.call_sync("getnewaddress", "", kind)
        # Cross-check with the chain layer: the node and our address code must agree.
        address_to_script(address, self.network_name)
        return address

    def wallet_call(self, method: str, *params: Any) -> Any:
        """A wallet RPC (sendtoaddress, getbalance, listunspent, ...)."""
        if self.kind == "bcoin" and method in ("getnewaddress", "getrawchangeaddress"):
            raise RegtestError(f"bcoin {BCOIN_VERSION}'s wallet RPC {method} encodes addresses for mainnet "
                               "on regtest; use new_address()")
        return self.wallet_rpc.call_sync(method, *params)

    def wait_for_wallet(self, height: int | None = None, timeout: float = WALLET_SYNC_TIMEOUT_S) -> None:
        """Wait until the node's wallet has processed the chain up to height (default: the node's tip).

        bcoin's wallet follows the chain asynchronously and says nothing about its own
        height, so it is read off the wallet's records: the block record at the target
        height (when that block pays the wallet), else the confirmations of its latest
        transactions. bitcoind's wallet RPCs wait for the wallet by themselves.
        """
        if self.kind == "bitcoind":
            self.wallet_call("getwalletinfo")
            return
        target = self.rpc.call_sync("getblockcount") if height is None else height
        deadline = time.monotonic() + timeout
        while not self._bcoin_wallet_reached(target):
            if time.monotonic() > deadline:
                raise RegtestError(f"bcoin's wallet did not reach height {target} within {timeout:.0f} s")
            time.sleep(READY_POLL_S)

    def wait_for_mempool(self, *txids: str, timeout: float = WALLET_SYNC_TIMEOUT_S) -> None:
        """Wait until every txid (display hex) is in the node's mempool; RegtestError after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            missing = set(txids) - set(self.rpc.call_sync("getrawmempool"))
            if not missing:
                return
            if time.monotonic() > deadline:
                raise RegtestError(f"not in the mempool after {timeout:.0f} s: {', '.join(sorted(missing))}; "
                                   f"last lines of {self.log_path}:\n{self.tail_log()}")
            time.sleep(READY_POLL_S)

    def mine_with_node(self, n: int, address: str | None = None) -> list[str]:
        """Have the node mine n blocks to address; their hashes in display hex.

        The default address is a new legacy (P2PKH) one of the node's wallet, because
        bcoin's mempool refuses witness spends until segwit activates (height 432), so
        coins mined to bech32 cannot fund wallet_call("sendtoaddress", ...) before then.
        """
        if n < 0:
            raise ValueError("n must be >= 0")
        if n == 0:
            return []
        ours = address is None
        if address is None:
            address = self.new_address("legacy")
        else:
            ours = self.owns_address(address)
        hashes = self.rpc.call_sync("generatetoaddress", n, address,
                                    timeout=self.rpc_timeout + n * MINE_TIMEOUT_PER_BLOCK_S)
        if ours:
            self.wait_for_wallet()
        return hashes

    # -- internals: processes --

    def _ensure_datadir(self) -> None:
        if self._datadir is None:
            path = Path(tempfile.mkdtemp(prefix=f"gridminer-regtest-{self.kind}-"))
            self._datadir = path
            self._datadir_cleanup = weakref.finalize(self, shutil.rmtree, str(path), True)
        self._datadir.mkdir(parents=True, exist_ok=True)

    def _pick_ports(self) -> dict[str, int]:
        names = ("rpc", "wallet") if self.kind == "bcoin" else ("rpc", "zmq")
        ports: dict[str, int] = {}
        while len(set(ports.values())) < len(names):
            ports = {name: free_port() for name in names}
        return ports

    def _bcoin_command(self, install: Path) -> list[str]:
        node, _ = find_node_tools()
        d, p = self.datadir, self.ports
        # The API key goes in a 0600 config file, not on the command line where every local
        # user can read it with ps; the wallet plugin falls back to the node's key.
        conf = d / "bcoin.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"api-key: {self._api_key}\n")
        return [
            node, "--require", str(self._pin_dir / LEVELDOWN_SHIM),
            str(install / "node_modules" / "bcoin" / "bin" / "node"),
            "--network=regtest",
            f"--config={conf}",
            f"--prefix={d}",
            f"--wallet-prefix={d / 'regtest'}",
            f"--memory={'false' if self.persistent else 'true'}",
            "--listen=false",
            "--seeds=,",
            "--host=127.0.0.1",
            "--http-host=127.0.0.1",
            f"--http-port={p['rpc']}",
            "--wallet-http-host=127.0.0.1",
            f"--wallet-http-port={p['wallet']}",
            "--workers=false",
            "--log-file=false",
            "--log-console=true",
            f"--log-level={self.log_level}",
        ]

    def _bitcoind_command(self, bitcoind: str | None) -> list[str]:
        assert bitcoind is not None
        d, p = self.datadir, self.ports
        zmq = f"tcp://127.0.0.1:{p['zmq']}"
        return [
            bitcoind, "-regtest", f"-datadir={d}", "-server=1", "-listen=0", "-dnsseed=0",
            "-fixedseeds=0", "-discover=0", "-rpcbind=127.0.0.1", "-rpcallowip=127.0.0.1",
            f"-rpcport={p['rpc']}", f"-zmqpubhashblock={zmq}", f"-zmqpubsequence={zmq}",
            "-fallbackfee=0.0002", "-printtoconsole=1", "-nodebuglogfile",
        ]

    def _spawn(self, cmd: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BCOIN_")}
        if self.kind == "bcoin":
            # bcoin-org's packages pick their JavaScript backends with this; the native
            # add-ons were never built (npm ci --ignore-scripts) and mrmr has no fallback
            # of its own.
            env["NODE_BACKEND"] = "js"
        with open(self.log_path, "ab") as logf:
            self._log_offset = logf.tell()
            logf.write(f"=== gridminer: starting {self.kind} at {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n"
                       .encode())
            logf.flush()
            # New session: a Ctrl-C in the terminal reaches us, and we stop the node ourselves.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                    cwd=self.datadir, env=env, start_new_session=True)
        self._proc = proc
        self._proc_finalizer = weakref.finalize(self, kill_quietly, proc)

    def _reap(self) -> None:
        if self._proc_finalizer is not None:
            self._proc_finalizer()
            self._proc_finalizer = None
        self._proc = None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            proc = self._proc
            assert proc is not None
            code = proc.poll()
            if code is not None:
                missing = self._missing_library()
                if missing is not None:
                    raise RegtestUnavailable(f"{self.kind} cannot start here: {missing} (install the "
                                             "package that provides it)")
                raise RegtestError(f"regtest {self.kind} exited with code {code} while starting; "
                                   f"last lines of {self.log_path}:\n{self.tail_log()}")
            if self._answers():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RegtestError(f"regtest {self.kind} did not answer RPC within {self.start_timeout:.0f} s; "
                                   f"last lines of {self.log_path}:\n{self.tail_log()}")
            time.sleep(READY_POLL_S)

    def _answers(self) -> bool:
        """True when node RPC (and bcoin's wallet server) answer successfully."""
        try:
            auth = self.auth if isinstance(self.auth, RPCAuth) else read_cookie(self.auth.path)
            status, body = _http_json(self.ports["rpc"], "POST", "/", auth,
                                      {"method": "getblockcount", "params": [], "id": 0})
            if status != 200 or not isinstance(body, dict) or body.get("error") is not None:
                return False
            if self.kind == "bcoin":
                status, _ = _http_json(self.ports["wallet"], "GET", f"/wallet/{BCOIN_WALLET}", auth)
                return status == 200
            return True
        except (OSError, http.client.HTTPException, RegtestError, ValueError):
            return False

    def _missing_library(self) -> str | None:
        """The dynamic loader's complaint in the log of this start, if that is why the node died."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return None
        for line in text.splitlines():
            if "error while loading shared libraries" in line:
                return line.strip()
        return None

    def _log_since_start_mentions(self, *needles: str) -> bool:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return False
        return any(n in text for n in needles)

    # -- internals: wallets --

    def _bcoin_wallet_http(self, method: str, path: str, body: Any = None) -> Any:
        auth = self.auth
        assert isinstance(auth, RPCAuth)
        try:
            status, parsed = _http_json(self.ports["wallet"], method, path, auth, body, timeout=self.rpc_timeout)
        except (OSError, http.client.HTTPException) as e:
            raise RegtestError(f"bcoin wallet {method} {path}: {e}") from None
        if status >= 400:
            message = parsed.get("error", {}).get("message") if isinstance(parsed, dict) else None
            raise WalletHTTPError(f"bcoin wallet {method} {path}: HTTP {status}: {message or 'no message'}",
                                  status, message)
        return parsed

    def _ensure_witness_account(self) -> None:
        if self._witness_account_ready:
            return
        try:
            self._bcoin_wallet_http("PUT", f"/wallet/{BCOIN_WALLET}/account/{BCOIN_WITNESS_ACCOUNT}",
                                    {"witness": True})
        except WalletHTTPError as e:
            # The datadir may already have it (restart); anything else is a real error.
            if e.node_message != "Account already exists.":
                raise
        self._witness_account_ready = True

    def _bcoin_owns(self, address: str) -> bool:
        auth = self.auth
        assert isinstance(auth, RPCAuth)
        try:
            status, _ = _http_json(self.ports["wallet"], "GET", f"/wallet/{BCOIN_WALLET}/key/{address}", auth,
                                   timeout=self.rpc_timeout)
        except (OSError, http.client.HTTPException):
            return False
        return status == 200

    def _bcoin_wallet_get(self, path: str) -> tuple[int, Any]:
        auth = self.auth
        assert isinstance(auth, RPCAuth)
        return _http_json(self.ports["wallet"], "GET", f"/wallet/{BCOIN_WALLET}{path}", auth,
                          timeout=self.rpc_timeout)

    def _bcoin_wallet_reached(self, height: int) -> bool:
        """Whether bcoin's wallet has processed the block at height (see wait_for_wallet)."""
        status, _ = self._bcoin_wallet_get(f"/block/{height}")
        if status == 200:
            return True  # the block pays the wallet and the wallet has recorded it
        status, txs = self._bcoin_wallet_get(f"/tx/last?limit={WALLET_TX_SAMPLE}")
        if status != 200 or not isinstance(txs, list):
            return False
        # A transaction's confirmations count up to the wallet's own height.
        seen = [tx["height"] + tx["confirmations"] - 1 for tx in txs
                if isinstance(tx, dict) and isinstance(tx.get("height"), int) and tx["height"] >= 0
                and isinstance(tx.get("confirmations"), int)]
        if seen:
            return max(seen) >= height
        # No confirmed transaction: the wallet is behind only if the block pays it.
        return not self._block_pays_wallet(height)

    def _block_pays_wallet(self, height: int) -> bool:
        block = self.rpc.call_sync("getblock", self.rpc.call_sync("getblockhash", height), True, True)
        for tx in block.get("tx", []):
            for out in tx.get("vout", []) if isinstance(tx, dict) else []:
                address = out.get("scriptPubKey", {}).get("address")
                addresses = [address] if address else out.get("scriptPubKey", {}).get("addresses", [])
                if any(self._bcoin_owns(a) for a in addresses):
                    return True
        return False

    def _load_bitcoind_wallet(self) -> None:
        try:
            self.rpc.call_sync("createwallet", BITCOIND_WALLET)
        except RPCError as e:
            if "already exists" not in e.message:
                raise
            try:
                self.rpc.call_sync("loadwallet", BITCOIND_WALLET)
            except RPCError as e2:
                if "already loaded" not in e2.message:
                    raise
