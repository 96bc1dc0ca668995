"""A stand-in for bitcoind on chains that cannot run here (no bitcoind binary): testnet4, signet.

A real JSON-RPC server (stdlib HTTP, a free loopback port) answering the calls gridminer
makes, shaped as Bitcoin Core's answers, with Core's own logic where the answer depends
on time or chain:

  getblocktemplate  rules checked as rpc/mining.cpp ("segwit" always, "signet" on signet,
                    error -8 otherwise); mintime = GetMinimumTime (MTP + 1, and at a period's
                    first block at least prev_time - 600, as Core >= 29); curtime and bits
                    as node/miner.cpp UpdateTime + pow.cpp GetNextWorkRequired: bits are
                    the pow limit when curtime > prev_time + 1200 (not at a period's first
                    block), else the chain's normal bits; "!signet" and signet_challenge on
                    signet; default_witness_commitment as given
  getblockheader    time/height/bits/mediantime of the tip
  getblockchaininfo chain (Core's names), blocks, bestblockhash, signet_challenge optional
  getbestblockhash, submitblock (recorded, answered null)

The node's clock is a callable, so a test's fake clock drives both the miner and the node.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from miner.chain.networks import Network, get_network
from miner.chain.target import bits_to_target
from miner.node.rpc import RPCAuth

# Core's names in getblockchaininfo "chain".
CORE_CHAIN_NAMES = {"mainnet": "main", "testnet": "test", "testnet4": "testnet4", "signet": "signet",
                    "regtest": "regtest"}
RPC_INVALID_PARAMETER = -8
RPC_METHOD_NOT_FOUND = -32601


@dataclass
class ChainTip:
    """What the node knows of its tip, and the bits the next block has at normal difficulty."""

    hash_hex_display: str
    height: int
    time: int
    median_time_past: int
    normal_bits: int  # GetNextWorkRequired's answer when the 20-minute rule does not apply


@dataclass
class TemplateContent:
    transactions: list[dict] = field(default_factory=list)  # getblocktemplate entries
    coinbasevalue: int = 50 * 100_000_000
    default_witness_commitment: str | None = None
    version: int = 0x20000000


class FakeCoreNode:
    """Core-shaped JSON-RPC for one chain; `calls` records (method, params) as received."""

    def __init__(self, network: Network | str, tip: ChainTip, content: TemplateContent,
                 clock: Callable[[], int], *, signet_challenge_hex: str | None = None,
                 challenge_in_blockchaininfo: bool = True) -> None:
        self.network = get_network(network) if isinstance(network, str) else network
        self.tip = tip
        self.content = content
        self.clock = clock
        self.signet_challenge_hex = signet_challenge_hex
        self.challenge_in_blockchaininfo = challenge_in_blockchaininfo
        self.calls: list[tuple[str, list]] = []
        self.auth = RPCAuth("gridminer", "test-only-password")
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    def __enter__(self) -> FakeCoreNode:
        node = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, answer = node._answer(body, self.headers.get("Authorization", ""))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-core", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def methods(self) -> list[str]:
        return [m for m, _ in self.calls]

    # -- JSON-RPC --

    def _answer(self, body: dict, authorization: str) -> tuple[int, dict]:
        method, params, rid = body.get("method"), body.get("params") or [], body.get("id")
        if authorization.encode() != self.auth.header():
            return 401, {"result": None, "error": {"code": -1, "message": "unauthorized"}, "id": rid}
        self.calls.append((method, params))
        handler = getattr(self, f"_rpc_{method}", None)
        if handler is None:
            return 500, {"result": None, "error": {"code": RPC_METHOD_NOT_FOUND, "message": "Method not found"},
                         "id": rid}
        try:
            return 200, {"result": handler(*params), "error": None, "id": rid}
        except _RPCFailure as e:
            return 500, {"result": None, "error": {"code": e.code, "message": e.message}, "id": rid}

    def _rpc_getblockchaininfo(self) -> dict:
        info = {"chain": CORE_CHAIN_NAMES[self.network.name], "blocks": self.tip.height,
                "headers": self.tip.height, "bestblockhash": self.tip.hash_hex_display,
                "mediantime": self.tip.median_time_past, "time": self.tip.time}
        if self.network.signet_blocks and self.challenge_in_blockchaininfo:
            info["signet_challenge"] = self.signet_challenge_hex
        return info

    def _rpc_getbestblockhash(self) -> str:
        return self.tip.hash_hex_display

    def _rpc_getblockheader(self, block_hash: str, verbose: bool = True) -> dict:
        if block_hash != self.tip.hash_hex_display:
            raise _RPCFailure(-5, "Block not found")
        return {"hash": block_hash, "height": self.tip.height, "time": self.tip.time,
                "mediantime": self.tip.median_time_past, "bits": f"{self.tip.normal_bits:08x}"}

    def _rpc_submitblock(self, block_hex: str, dummy: Any = None) -> None:
        return None

    def _rpc_getblocktemplate(self, request: dict | None = None) -> dict:
        rules = set((request or {}).get("rules", []))
        if self.network.signet_blocks and "signet" not in rules:
            raise _RPCFailure(RPC_INVALID_PARAMETER, "getblocktemplate must be called with the signet rule set "
                                                     "(call with {\"rules\": [\"segwit\", \"signet\"]})")
        if "segwit" not in rules:
            raise _RPCFailure(RPC_INVALID_PARAMETER, "getblocktemplate must be called with the segwit rule set "
                                                     "(call with {\"rules\": [\"segwit\"]})")
        net, tip, content = self.network, self.tip, self.content
        height = tip.height + 1
        first_of_period = height % net.difficulty_adjustment_interval == 0
        mintime = tip.median_time_past + 1
        if first_of_period:
            mintime = max(mintime, tip.time - 600)  # GetMinimumTime, Core >= 29
        curtime = max(mintime, int(self.clock()))
        bits = tip.normal_bits
        if net.pow_allow_min_difficulty and not first_of_period and curtime > tip.time + 2 * net.target_spacing_s:
            bits = net.pow_limit_bits
        result = {
            "capabilities": ["proposal"],
            "version": content.version,
            "rules": ["csv", "!segwit", "taproot"] + (["!signet"] if net.signet_blocks else []),
            "vbavailable": {},
            "vbrequired": 0,
            "previousblockhash": tip.hash_hex_display,
            "transactions": content.transactions,
            "coinbaseaux": {},
            "coinbasevalue": content.coinbasevalue,
            "longpollid": f"{tip.hash_hex_display}{len(self.calls)}",
            "target": f"{bits_to_target(bits):064x}",
            "mintime": mintime,
            "mutable": ["time", "transactions", "prevblock"],
            "noncerange": "00000000ffffffff",
            "sigoplimit": 80000,
            "sizelimit": 4000000,
            "weightlimit": 4000000,
            "curtime": curtime,
            "bits": f"{bits:08x}",
            "height": height,
        }
        if net.signet_blocks:
            result["signet_challenge"] = self.signet_challenge_hex
        if content.default_witness_commitment is not None:
            result["default_witness_commitment"] = content.default_witness_commitment
        return result


class _RPCFailure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message
