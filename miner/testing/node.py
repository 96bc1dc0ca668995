"""The regtest node for other projects' tests: Bitcoin Core when there is one, else pinned bcoin.

A thin layer over miner.node.regtest.RegtestNode (the node gridminer's own tests and
`miner run` use); only the defaults differ, for people testing their own software:

- kind="auto" picks bitcoind first (the reference implementation, when given by path or
  found on PATH), then the pinned bcoin 1.0.2 (installed with npm into a per-user cache
  on first use, from the lockfile shipped inside the package); $GRIDMINER_REGTEST_NODE
  (bcoin or bitcoind) overrides the choice.
- bcoin keeps its chain in memory (a throwaway node does not need a disk).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from miner.node.regtest import KIND_ENV, Kind, RegtestUnavailable
from miner.node.regtest import RegtestNode as _RegtestNode

__all__ = ["RegtestNode", "preferred_kind"]


def preferred_kind(kind: Kind = "auto", bitcoind: str | os.PathLike[str] | None = None,
                   env: Mapping[str, str] = os.environ) -> Literal["bcoin", "bitcoind"]:
    """The node kind a test gets: bitcoind when given or on PATH, else bcoin (see the module doc)."""
    if kind not in ("auto", "bcoin", "bitcoind"):
        raise ValueError(f"regtest node kind must be 'auto', 'bcoin' or 'bitcoind', got {kind!r}")
    if kind != "auto":
        return kind
    if bitcoind is not None:
        return "bitcoind"
    wanted = env.get(KIND_ENV, "").strip()
    if wanted in ("bcoin", "bitcoind"):
        return wanted  # type: ignore[return-value]
    if wanted:
        raise ValueError(f"${KIND_ENV} must be 'bcoin' or 'bitcoind', got {wanted!r}")
    return "bitcoind" if shutil.which("bitcoind") else "bcoin"


class RegtestNode(_RegtestNode):
    """A throwaway regtest node on free loopback ports, for `with RegtestNode() as node:`.

    node.call("getblockcount") and node.rpc.call_sync(...) for RPC, node.new_address()
    for a wallet address, node.wallet_call("sendtoaddress", ...) for the wallet; see
    miner.node.regtest.RegtestNode for the rest. Leaving the `with` block stops the node
    and removes its temporary datadir, also when the test failed.
    """

    def __init__(self, kind: Kind = "auto", *, bitcoind: str | os.PathLike[str] | None = None,
                 persistent: bool = False, datadir: str | os.PathLike[str] | None = None,
                 cache_dir: Path | None = None, **kwargs: Any) -> None:
        chosen = preferred_kind(kind, bitcoind)
        if bitcoind is not None and chosen != "bitcoind":
            raise ValueError(f"bitcoind={str(bitcoind)!r} given with kind={kind!r}")
        super().__init__(chosen, bitcoind=bitcoind, persistent=persistent, datadir=datadir,
                         cache_dir=cache_dir, **kwargs)
        self._chosen_automatically = kind == "auto"

    def start(self) -> RegtestNode:
        """Start the node (installing the pinned bcoin on first use); RegtestUnavailable says what to install."""
        try:
            super().start()
        except RegtestUnavailable as e:
            if self._chosen_automatically and self.kind == "bcoin":
                raise RegtestUnavailable(
                    f"{e}; or install Bitcoin Core and put bitcoind on PATH (or pass RegtestNode(bitcoind=PATH), "
                    "pytest --gridminer-bitcoind=PATH)") from None
            raise
        return self
