"""Regtest blocks and stratum test peers for other projects' test suites.

    from miner.testing import RegtestNode, mine

    with RegtestNode() as node:                   # bitcoind if installed, else pinned bcoin
        blocks = mine(node, 101)                  # gridminer's kernel, via getblocktemplate
        ...

- RegtestNode: a throwaway regtest node on free loopback ports (context manager).
- mine(node, n, address=None), mine_until(node, predicate, timeout): blocks from
  getblocktemplate, solved by gridminer's kernel, sent with submitblock; mempool
  transactions included.
- StratumPool: gridminer's stratum server on a regtest node, with difficulty, version
  rolling and extranonce knobs, injected faults, and a record of every message.
- StratumMiner: gridminer's stratum client and kernel, to test someone else's pool.
- reorg(node, depth, blocks=None): invalidate the top blocks and mine a competing branch
  (Bitcoin Core and bcoin); returns a Reorg with the old and new tips.
- SignetNode: Bitcoin Core on a private OP_TRUE signet (-signetchallenge=51), for
  mining tests on a chain with real signet rules; connect two of them.
- NatsServer: a throwaway nats-server with JetStream, a fleet user and a user per site
  with the fleet bus's permissions (stop/start keep its port and store); NatsUnavailable
  says what to install.
- MinerdProcess, find_minerd: pooler's minerd (a stock C stratum miner) mining into a
  pool, its accepted/rejected answers counted; MinerdUnavailable says what to install.

The pytest plugin (miner.testing.pytest_plugin, registered as `gridminer`) wraps these in
fixtures: regtest_node, mine_blocks, stratum_pool, stratum_miner.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from miner.node.regtest import RegtestError, RegtestUnavailable
    from miner.testing.minerd import MinerdError, MinerdProcess, MinerdUnavailable, find_minerd
    from miner.testing.mining import MiningError, MiningTimeout, mine, mine_until
    from miner.testing.nats import NatsError, NatsServer, NatsUnavailable
    from miner.testing.node import RegtestNode
    from miner.testing.reorgs import Reorg, reorg
    from miner.testing.signet import SignetNode
    from miner.testing.stratum_miner import (
        MinerSession,
        ReceivedJob,
        ShareResult,
        StratumMiner,
        StratumMinerError,
    )
    from miner.testing.stratum_pool import StratumPool
    from miner.testing.tap import ConnectionInfo, StratumMessage

# Public name -> the module that defines it. Loaded on first use (PEP 562), so that the
# pytest plugin, which every pytest run in an environment with gridminer loads, does not
# import numba and the stratum stack until a fixture needs them.
_EXPORTS = {
    "ConnectionInfo": "miner.testing.tap",
    "MinerSession": "miner.testing.stratum_miner",
    "MinerdError": "miner.testing.minerd",
    "MinerdProcess": "miner.testing.minerd",
    "MinerdUnavailable": "miner.testing.minerd",
    "MiningError": "miner.testing.mining",
    "MiningTimeout": "miner.testing.mining",
    "NatsError": "miner.testing.nats",
    "NatsServer": "miner.testing.nats",
    "NatsUnavailable": "miner.testing.nats",
    "ReceivedJob": "miner.testing.stratum_miner",
    "RegtestError": "miner.node.regtest",
    "RegtestNode": "miner.testing.node",
    "RegtestUnavailable": "miner.node.regtest",
    "Reorg": "miner.testing.reorgs",
    "ShareResult": "miner.testing.stratum_miner",
    "SignetNode": "miner.testing.signet",
    "StratumMessage": "miner.testing.tap",
    "StratumMiner": "miner.testing.stratum_miner",
    "StratumMinerError": "miner.testing.stratum_miner",
    "StratumPool": "miner.testing.stratum_pool",
    "find_minerd": "miner.testing.minerd",
    "mine": "miner.testing.mining",
    "mine_until": "miner.testing.mining",
    "reorg": "miner.testing.reorgs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'miner.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
