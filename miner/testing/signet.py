"""A private OP_TRUE signet on Bitcoin Core: nodes that accept blocks without a signature, for tests.

    with SignetNode() as a, SignetNode() as b:
        a.connect(b)                              # getblocktemplate answers only with a peer
        a.call("getblocktemplate", {"rules": ["segwit", "signet"]})   # height 1, bits 1e0377ae

Each node is `bitcoind -signet -signetchallenge=51` (the block challenge OP_TRUE, so a
block needs no signet solution) on free loopback ports: RPC with a cookie in
<datadir>/signet/.cookie, ZMQ hashblock/sequence, and a P2P port bound to 127.0.0.1
that other SignetNodes connect to. -maxtipage is about 63 years, so a node whose tip is
old (a recorded chain, a genesis of 2020) is out of initial block download at once: Core
refuses getblocktemplate during IBD (-10) and without a peer (-9), on every chain but
regtest. A "gridminer" descriptor wallet is loaded, as on regtest.

What a signet costs: the proof of work is real, at the signet's minimum difficulty
(bits 1e0377ae, difficulty ~0.00113: about 4.8 million hashes a block, a second or more of
one CPU core), so tests keep the blocks they mine few; coinbases mature after 100 blocks
as everywhere. Core's generatetoaddress works on a signet too, given maxtries well above
its default of 1,000,000 (a block takes ~4.8 million on average): several seconds a block
on one thread, so a mature coinbase costs minutes; gridminer's own tests load a recorded
101-block chain instead (tests/data/signet_op_true_101.json). Only bitcoind: bcoin has
no custom signets.
"""

from __future__ import annotations

import os
import time
from typing import Any

from miner.node.regtest import READY_POLL_S, RegtestError, free_port
from miner.node.regtest import RegtestNode as _RegtestNode
from miner.node.rpc import CookieAuth

__all__ = ["OP_TRUE_CHALLENGE_HEX", "SignetNode"]

# The block challenge script OP_TRUE: any block satisfies it without a signature.
OP_TRUE_CHALLENGE_HEX = "51"
# -maxtipage in seconds: about 63 years, so any tip counts as recent (no IBD).
MAX_TIP_AGE_S = 2_000_000_000
# Seconds connect() waits for both nodes to see the connection.
CONNECT_TIMEOUT_S = 30.0


class SignetNode(_RegtestNode):
    """bitcoind on a private signet with challenge OP_TRUE (see the module doc); start(), connect(other), close()."""

    def __init__(self, *, bitcoind: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
        super().__init__("bitcoind", bitcoind=bitcoind, **kwargs)

    @property
    def network_name(self) -> str:
        return "signet"

    @property
    def auth(self) -> CookieAuth:
        return CookieAuth(self.datadir / "signet" / ".cookie")

    @property
    def p2p_address(self) -> str:
        """host:port other nodes connect to."""
        return f"127.0.0.1:{self.ports['p2p']}"

    def connect(self, other: SignetNode, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Connect to other (and keep reconnecting: addnode add); returns once both see the connection."""
        self.call("addnode", other.p2p_address, "add")
        deadline = time.monotonic() + timeout
        while not (self.call("getconnectioncount") and other.call("getconnectioncount")):
            if time.monotonic() > deadline:
                raise RegtestError(f"signet nodes {self.p2p_address} and {other.p2p_address} did not connect "
                                   f"within {timeout:.0f} s; last lines of {self.log_path}:\n{self.tail_log()}")
            time.sleep(READY_POLL_S)

    def wait_for_tip(self, block_hash: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Wait until block_hash (display hex) is this node's best block (relayed by a peer, say)."""
        deadline = time.monotonic() + timeout
        while self.call("getbestblockhash") != block_hash:
            if time.monotonic() > deadline:
                raise RegtestError(f"signet node {self.p2p_address} is at {self.call('getbestblockhash')}, not "
                                   f"{block_hash}, after {timeout:.0f} s")
            time.sleep(READY_POLL_S)

    def _pick_ports(self) -> dict[str, int]:
        names = ("rpc", "zmq", "p2p")
        ports: dict[str, int] = {}
        while len(set(ports.values())) < len(names):
            ports = {name: free_port() for name in names}
        return ports

    def _bitcoind_command(self, bitcoind: str | None) -> list[str]:
        assert bitcoind is not None
        d, p = self.datadir, self.ports
        zmq = f"tcp://127.0.0.1:{p['zmq']}"
        return [
            bitcoind, "-signet", f"-signetchallenge={OP_TRUE_CHALLENGE_HEX}", f"-datadir={d}", "-server=1",
            "-listen=1", f"-bind=127.0.0.1:{p['p2p']}", f"-port={p['p2p']}", "-dnsseed=0", "-fixedseeds=0",
            "-discover=0", "-rpcbind=127.0.0.1", "-rpcallowip=127.0.0.1",
            f"-rpcport={p['rpc']}", f"-zmqpubhashblock={zmq}", f"-zmqpubsequence={zmq}",
            f"-maxtipage={MAX_TIP_AGE_S}", "-fallbackfee=0.0002", "-printtoconsole=1", "-nodebuglogfile",
        ]
