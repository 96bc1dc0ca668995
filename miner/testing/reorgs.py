"""A chain reorganisation on demand, like pyln-testing's simple_reorg, on Bitcoin Core and on bcoin.

    from miner.testing import reorg

    r = reorg(node, depth=2, blocks=1)   # drop the top 2 blocks, mine 1 in their place
    assert r.new_height == r.old_height - 1 and r.new_tip != r.old_tip

How: `invalidateblock` of the block at height (tip - depth + 1), which makes the node
disconnect it and every block above it and mark it invalid, so the old branch can never
come back whatever its length; then `generatetoaddress` of `blocks` blocks on the
new tip. blocks < depth leaves the node on a LOWER height than before (the reorg a
miner that chooses work by height gets wrong), blocks > depth on a higher one.

The competing blocks always differ from the invalidated ones. Only the first needs care
(the others have a different parent): both nodes build their blocks deterministically
from the tip, the payout address, the mempool and the clock's second, and they refuse an
invalidated block, so the first would fail whenever it came out identical (same
address, same second: Core answers "ProcessNewBlock, block not accepted"). The node's
clock is set (setmocktime) one second past the first invalidated block's time while that
block is mined, then given back. Transactions of the disconnected blocks go back to the
mempool and may be mined again.

Why the node's own miner and not gridminer's `mine()`: bcoin 1.0.2 keeps its cached
getblocktemplate across invalidateblock (the cache is refreshed only when a block is
connected), so a template asked right after the invalidation still builds on the
invalidated tip; generatetoaddress always builds on the chain's real tip. A
competing miner is also what a reorg is in the field.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from miner.node.regtest import RegtestError, RegtestNode

__all__ = ["Reorg", "reorg"]


@dataclass(frozen=True)
class Reorg:
    """What reorg() did; hashes in RPC display order, oldest first."""

    old_tip: str
    old_height: int
    fork_height: int  # the last block both branches share
    invalidated: tuple[str, ...]  # the old branch: heights fork_height+1 .. old_height
    mined: tuple[str, ...]  # the new branch: heights fork_height+1 .. new_height
    new_tip: str
    new_height: int


def reorg(node: RegtestNode, depth: int, blocks: int | None = None, *, address: str | None = None) -> Reorg:
    """Invalidate the top `depth` blocks of node's best chain and mine `blocks` (default: depth) in their place.

    address: where the new coinbases pay (default a fresh legacy address of the node's
    wallet; the wallet is waited for when it owns the address). RegtestError when the
    node does not end on the new branch.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    if blocks is None:
        blocks = depth
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0:
        raise ValueError(f"blocks must be an integer >= 0, got {blocks!r}")
    old_height = node.call("getblockcount")
    if depth > old_height:
        raise ValueError(f"cannot invalidate {depth} blocks of a chain of height {old_height} (genesis stays)")
    fork_height = old_height - depth
    invalidated = tuple(node.call("getblockhash", h) for h in range(fork_height + 1, old_height + 1))
    fork_hash = node.call("getblockhash", fork_height)
    # Read before the invalidation: bcoin deletes the disconnected blocks.
    first_time = node.call("getblockheader", invalidated[0])["time"]
    node.call("invalidateblock", invalidated[0])
    tip = node.call("getbestblockhash")
    if tip != fork_hash:
        raise RegtestError(f"after invalidateblock {invalidated[0]} the {node.kind} node's tip is {tip}, "
                           f"not the fork point {fork_hash} at height {fork_height}")
    if address is None:
        address = node.new_address("legacy")
    mined = tuple(_mine_first_after(node, first_time, blocks, address))
    reused = set(mined) & set(invalidated)
    if reused:
        raise RegtestError(f"the {node.kind} node mined invalidated blocks again: {sorted(reused)}")
    new_tip, new_height = node.call("getbestblockhash"), node.call("getblockcount")
    expected = mined[-1] if mined else fork_hash
    if new_tip != expected or new_height != fork_height + blocks:
        raise RegtestError(f"the {node.kind} node is at {new_tip} (height {new_height}) after the reorg, "
                           f"expected {expected} at height {fork_height + blocks}")
    return Reorg(old_tip=invalidated[-1], old_height=old_height, fork_height=fork_height,
                 invalidated=invalidated, mined=mined, new_tip=new_tip, new_height=new_height)


def _mine_first_after(node: RegtestNode, not_at: int, blocks: int, address: str) -> list[str]:
    """Mine blocks to address, the first dated after not_at (unix time) so it cannot repeat a dead block."""
    if blocks == 0:
        return []
    node.call("setmocktime", max(int(time.time()), not_at + 1))
    try:
        first = node.mine_with_node(1, address)
    finally:
        # Core: 0 gives the node its own clock back. bcoin keeps an offset to the clock
        # (0 would set it to 1970): setting it to now makes the offset ~0 again.
        node.call("setmocktime", 0 if node.kind == "bitcoind" else int(time.time()))
    return first + node.mine_with_node(blocks - 1, address)
