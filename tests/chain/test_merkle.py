"""Merkle roots, branches (stratum's and general), witness root, CVE-2012-2459."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miner.chain.hashes import sha256d
from miner.chain.merkle import (
    coinbase_merkle_branch,
    has_duplicate_subtrees,
    merkle_branch,
    merkle_root,
    merkle_root_and_mutation,
    root_from_branch,
    witness_root,
)

from .vectors import PROPERTY

hashes32 = st.binary(min_size=32, max_size=32)
hash_lists = st.lists(hashes32, min_size=1, max_size=40)


def _h(i: int) -> bytes:
    return sha256d(i.to_bytes(4, "little"))


def test_small_trees_by_hand():
    a, b, c = _h(1), _h(2), _h(3)
    assert merkle_root([a]) == a
    assert merkle_root([a, b]) == sha256d(a + b)
    ab = sha256d(a + b)
    cc = sha256d(c + c)
    assert merkle_root([a, b, c]) == sha256d(ab + cc)


def test_empty_list_rejected():
    with pytest.raises(ValueError):
        merkle_root([])
    with pytest.raises(ValueError):
        merkle_branch([], 0)


def test_leaf_length_checked():
    with pytest.raises(ValueError):
        merkle_root([bytes(31)])


@PROPERTY
@given(hash_lists)
def test_branch_for_every_index_folds_to_root(hashes):
    root = merkle_root(hashes)
    for index, leaf in enumerate(hashes):
        branch = merkle_branch(hashes, index)
        assert root_from_branch(leaf, branch, index) == root


@PROPERTY
@given(hash_lists)
def test_branch_length_is_tree_depth(hashes):
    depth = (len(hashes) - 1).bit_length()
    assert all(len(merkle_branch(hashes, i)) == depth for i in range(len(hashes)))


@PROPERTY
@given(hash_lists, hashes32)
def test_coinbase_branch_ignores_coinbase_hash(others_and_first, coinbase_txid):
    others = others_and_first[1:]
    branch = coinbase_merkle_branch(others)
    assert branch == merkle_branch([coinbase_txid, *others], 0)
    assert root_from_branch(coinbase_txid, branch) == merkle_root([coinbase_txid, *others])


def test_coinbase_only_block_has_empty_branch():
    assert coinbase_merkle_branch([]) == []
    assert root_from_branch(_h(9), []) == _h(9)


def test_branch_index_bounds():
    hashes = [_h(i) for i in range(5)]
    with pytest.raises(IndexError):
        merkle_branch(hashes, 5)
    with pytest.raises(IndexError):
        root_from_branch(hashes[0], merkle_branch(hashes, 0), 8)


def test_witness_root_puts_zero_for_coinbase():
    wtxids = [_h(i) for i in range(1, 4)]
    assert witness_root(wtxids) == merkle_root([bytes(32), *wtxids])
    assert witness_root([]) == bytes(32)


def test_cve_2012_2459_duplicate_tail():
    a, b, c = _h(1), _h(2), _h(3)
    honest = [a, b, c]
    mutated = [a, b, c, c]
    assert merkle_root(honest) == merkle_root(mutated)
    assert not has_duplicate_subtrees(honest)
    assert has_duplicate_subtrees(mutated)


def test_cve_2012_2459_duplicate_subtree():
    leaves = [_h(i) for i in range(6)]
    mutated = leaves + leaves[4:6]
    assert merkle_root(leaves) == merkle_root(mutated)
    assert has_duplicate_subtrees(mutated)
    assert merkle_root_and_mutation(leaves) == (merkle_root(leaves), False)


@PROPERTY
@given(st.lists(hashes32, min_size=1, max_size=40, unique=True))
def test_distinct_leaves_are_never_flagged(hashes):
    assert not has_duplicate_subtrees(hashes)
