"""Jobs and solutions: what every work source hands out and gets back.

A Job is immutable and complete: anything that hashes (local CPU workers, stratum
clients) derives headers from it, and the source that made it can turn a Solution back
into a block (GBT) or an upstream submit (pool). The extranonce is one byte string of
`coinbase.extranonce_size` bytes, placed between coinb1 and coinb2; who owns which part
of it (stratum's extranonce1 | extranonce2) is the consumer's business.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from miner.chain.block import Block, block_from_parts
from miner.chain.coinbase import CoinbaseTemplate
from miner.chain.hashes import hex_display_from_internal, sha256d
from miner.chain.header import BlockHeader
from miner.chain.merkle import root_from_branch
from miner.chain.tx import Transaction


@dataclass(frozen=True)
class Solution:
    """A header found for a job: enough to rebuild the block or the stratum submit."""

    job_id: str
    extranonce: bytes
    ntime: int
    nonce: int
    version: int  # u32, as hashed (after any version rolling)


@dataclass(frozen=True)
class Job:
    job_id: str
    prev_hash_internal: bytes
    version: int  # u32, as the template or the pool gave it
    bits: int
    ntime: int
    target: int  # the network (block) target from bits
    coinbase: CoinbaseTemplate
    merkle_branch: tuple[bytes, ...]  # coinbase's siblings, internal order, leaf to root
    clean: bool  # a new tip: work on older jobs is stale
    height: int | None = None
    transactions: tuple[Transaction, ...] = ()  # the template's, without the coinbase (GBT only)
    min_time: int | None = None  # the earliest ntime the node accepts, when known
    # The latest ntime a block of this job stays valid at, when a rule caps it (testnet
    # min-difficulty: normal bits only up to 20 minutes after the parent; see work/rules.py).
    max_time: int | None = None
    created_monotonic: float = field(default_factory=time.monotonic, compare=False)

    @property
    def extranonce_size(self) -> int:
        return self.coinbase.extranonce_size

    @property
    def prev_hash_hex_display(self) -> str:
        return hex_display_from_internal(self.prev_hash_internal)

    def merkle_root_internal(self, extranonce: bytes) -> bytes:
        return root_from_branch(sha256d(self.coinbase.legacy_bytes(extranonce)), self.merkle_branch)

    def header(self, extranonce: bytes, nonce: int = 0, ntime: int | None = None,
               version: int | None = None) -> BlockHeader:
        return BlockHeader(
            version=self.version if version is None else version,
            prev_hash_internal=self.prev_hash_internal,
            merkle_root_internal=self.merkle_root_internal(extranonce),
            time=self.ntime if ntime is None else ntime,
            bits=self.bits,
            nonce=nonce,
        )

    def header76(self, extranonce: bytes, ntime: int | None = None, version: int | None = None) -> bytes:
        """The 76 bytes the kernels hash with each nonce."""
        return self.header(extranonce, 0, ntime, version).prefix76()

    def solution_header(self, solution: Solution) -> BlockHeader:
        return self.header(solution.extranonce, solution.nonce, solution.ntime, solution.version)

    def block(self, solution: Solution) -> Block:
        """The full block for a solution (jobs from a template only: they carry its transactions)."""
        coinbase = self.coinbase.build(solution.extranonce)
        return block_from_parts(self.solution_header(solution), coinbase, self.transactions)
