"""miner.testing.reorg on Bitcoin Core and on bcoin: the best chain really changes, to a lower,
the same or a higher height, and the new branch shares nothing with the old above the fork."""

from __future__ import annotations

import pytest

from miner.node.rpc import RPCError
from miner.testing import Reorg, reorg


def best_chain(node, up_to: int) -> list[str]:
    return [node.call("getblockhash", h) for h in range(up_to + 1)]


def assert_on_new_branch(node, r: Reorg, before: list[str]) -> None:
    """The node's best chain is the old one up to the fork, then exactly the mined branch."""
    assert node.call("getbestblockhash") == r.new_tip
    assert node.call("getblockcount") == r.new_height == r.fork_height + len(r.mined)
    assert best_chain(node, r.new_height) == before[:r.fork_height + 1] + list(r.mined)
    assert not set(r.mined) & set(r.invalidated)
    if r.mined:
        assert node.call("getblockheader", r.mined[0])["previousblockhash"] == before[r.fork_height]
    if r.new_height < r.old_height:
        with pytest.raises(RPCError):
            node.call("getblockhash", r.old_height)  # that height no longer exists on the best chain


def test_reorg_to_a_lower_height(regtest_node_factory, node_kind):
    node = regtest_node_factory(kind=node_kind, persistent=False)
    node.mine_with_node(6)
    before = best_chain(node, 6)
    r = reorg(node, depth=3, blocks=1)
    assert (r.old_tip, r.old_height, r.fork_height, r.new_height) == (before[6], 6, 3, 4)
    assert r.invalidated == tuple(before[4:7]) and len(r.mined) == 1
    assert_on_new_branch(node, r, before)
    # The invalidated branch stays dead: mining on continues from the new tip.
    [after] = node.mine_with_node(1)
    assert node.call("getblockheader", after)["previousblockhash"] == r.new_tip


def test_reorg_to_the_same_then_a_higher_height(regtest_node_factory, node_kind):
    node = regtest_node_factory(kind=node_kind, persistent=False)
    node.mine_with_node(4)
    before = best_chain(node, 4)
    same = reorg(node, depth=2)
    assert (same.fork_height, same.new_height, len(same.mined)) == (2, 4, 2)
    assert_on_new_branch(node, same, before)
    middle = best_chain(node, 4)
    higher = reorg(node, depth=1, blocks=3)
    assert (higher.fork_height, higher.new_height) == (3, 6)
    assert higher.invalidated == (same.new_tip,)
    assert_on_new_branch(node, higher, middle)


def test_reorg_without_new_blocks_leaves_the_fork_point_as_tip(regtest_node_factory, node_kind):
    node = regtest_node_factory(kind=node_kind, persistent=False)
    node.mine_with_node(3)
    before = best_chain(node, 3)
    r = reorg(node, depth=2, blocks=0)
    assert r.mined == () and r.new_tip == before[1] and r.new_height == 1
    assert_on_new_branch(node, r, before)


def test_competing_blocks_pay_the_address_given(regtest_node_factory, node_kind):
    node = regtest_node_factory(kind=node_kind, persistent=False)
    address = node.new_address("legacy")
    node.mine_with_node(2, address)  # the old branch pays the same address
    r = reorg(node, depth=2, address=address)
    for block_hash in r.mined:
        coinbase = node.call("getblock", block_hash, True, True)["tx"][0] if node.kind == "bcoin" else \
            node.call("getblock", block_hash, 2)["tx"][0]
        script = coinbase["vout"][0]["scriptPubKey"]
        assert address in ([script["address"]] if "address" in script else script.get("addresses", []))
    assert not set(r.mined) & set(r.invalidated)


@pytest.mark.parametrize("depth, blocks, error", [
    (0, None, "depth must be an integer >= 1"), (True, None, "depth must be"), (1, -1, "blocks must be"),
    (5, None, "cannot invalidate 5 blocks of a chain of height 2"),
])
def test_bad_arguments_are_refused_before_touching_the_chain(regtest_node, depth, blocks, error):
    if regtest_node.call("getblockcount") < 2:
        regtest_node.mine_with_node(2)
    tip = regtest_node.call("getbestblockhash")
    height = regtest_node.call("getblockcount")
    error = error.replace("height 2", f"height {height}")
    if depth == 5:
        depth = height + 1
        error = f"cannot invalidate {depth} blocks of a chain of height {height}"
    with pytest.raises(ValueError, match=error):
        reorg(regtest_node, depth, blocks)
    assert regtest_node.call("getbestblockhash") == tip


# -- the solo miner across a reorg (what the helper is for) --------------------------------------


def test_the_solo_miner_follows_a_reorg_to_a_lower_height(regtest_node_factory, node_kind, tmp_path):
    """Mining continues on the node's new best tip after it drops two blocks for one."""
    import asyncio

    from tests.test_solo import miner_for
    from tests.waiting import wait_until

    node = regtest_node_factory(kind=node_kind, persistent=False)
    address = node.new_address("bech32")
    miner = miner_for(node, tmp_path, address, threads=1)

    async def scenario() -> Reorg:
        task = asyncio.create_task(miner.run())
        try:
            await wait_until(lambda: miner.stats.accepted >= 3, 60, "first blocks")
            miner.pool.pause()  # the node alone decides the chain while it reorganises
            r = await asyncio.to_thread(reorg, node, 2, 1)
            accepted = miner.stats.accepted
            miner.pool.resume()
            await wait_until(lambda: miner.stats.accepted >= accepted + 2, 30, "our blocks on the new tip")
            return r
        finally:
            miner.stop()
            await asyncio.wait_for(task, 30)

    r = asyncio.run(scenario())
    after = node.call("getblockhash", r.new_height + 1)
    assert node.call("getblockheader", after)["previousblockhash"] == r.new_tip
