"""Bitcoin merkle trees over internal-order hashes: roots, branches, witness root.

An odd level is padded by repeating its last hash. That makes [a, b, c] and
[a, b, c, c] share a root (CVE-2012-2459), which matters when *validating* a block
received from elsewhere, not when building one: see has_duplicate_subtrees.
"""

from __future__ import annotations

from typing import Sequence

from .hashes import ZERO_HASH, sha256d

__all__ = [
    "merkle_root",
    "merkle_root_and_mutation",
    "merkle_branch",
    "coinbase_merkle_branch",
    "root_from_branch",
    "witness_root",
    "has_duplicate_subtrees",
]


def _check_hashes(hashes: Sequence[bytes]) -> list[bytes]:
    if not hashes:
        raise ValueError("merkle tree of an empty list")
    level = [bytes(h) for h in hashes]
    for h in level:
        if len(h) != 32:
            raise ValueError(f"merkle leaf must be 32 bytes, got {len(h)}")
    return level


def _parent_level(level: list[bytes]) -> list[bytes]:
    if len(level) % 2:
        level = level + [level[-1]]
    return [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]


def merkle_root_and_mutation(hashes_internal: Sequence[bytes]) -> tuple[bytes, bool]:
    """(root, mutated) as Core's ComputeMerkleRoot: mutated when a level has an equal pair."""
    level = _check_hashes(hashes_internal)
    mutated = False
    while len(level) > 1:
        # Checked before padding: an equal adjacent pair is exactly what a duplicated
        # odd tail (or subtree) looks like one level down.
        if any(level[i] == level[i + 1] for i in range(0, len(level) - 1, 2)):
            mutated = True
        level = _parent_level(level)
    return level[0], mutated


def merkle_root(hashes_internal: Sequence[bytes]) -> bytes:
    """Merkle root of a non-empty list of 32-byte hashes."""
    return merkle_root_and_mutation(hashes_internal)[0]


def has_duplicate_subtrees(hashes_internal: Sequence[bytes]) -> bool:
    """True when the list could be a CVE-2012-2459 mutation of a shorter one."""
    return merkle_root_and_mutation(hashes_internal)[1]


def merkle_branch(hashes_internal: Sequence[bytes], index: int = 0) -> list[bytes]:
    """Sibling hashes from leaf `index` up to the root (empty for a single leaf)."""
    level = _check_hashes(hashes_internal)
    if not 0 <= index < len(level):
        raise IndexError(f"leaf index {index} out of range for {len(level)} leaves")
    branch = []
    while len(level) > 1:
        sibling = index ^ 1
        # The last leaf of an odd level is paired with itself.
        branch.append(level[sibling] if sibling < len(level) else level[index])
        level = _parent_level(level)
        index >>= 1
    return branch


def coinbase_merkle_branch(other_txids_internal: Sequence[bytes]) -> list[bytes]:
    """Stratum's merkle_branch: the coinbase's siblings, from the non-coinbase txids."""
    # The coinbase's own hash never enters its branch, so any placeholder will do.
    return merkle_branch([ZERO_HASH, *other_txids_internal], 0)


def root_from_branch(leaf_internal: bytes, branch: Sequence[bytes], index: int = 0) -> bytes:
    """Fold a leaf with its branch back up to the root."""
    if len(leaf_internal) != 32:
        raise ValueError(f"leaf must be 32 bytes, got {len(leaf_internal)}")
    if not 0 <= index < (1 << len(branch)):
        raise IndexError(f"leaf index {index} does not fit a branch of length {len(branch)}")
    h = bytes(leaf_internal)
    for sibling in branch:
        if len(sibling) != 32:
            raise ValueError(f"branch hash must be 32 bytes, got {len(sibling)}")
        h = sha256d(sibling + h) if index & 1 else sha256d(h + sibling)
        index >>= 1
    return h


def witness_root(wtxids_internal_without_coinbase: Sequence[bytes]) -> bytes:
    """BIP141 witness merkle root: the coinbase's wtxid counts as 32 zero bytes."""
    return merkle_root([ZERO_HASH, *wtxids_internal_without_coinbase])
