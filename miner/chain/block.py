"""Blocks: strict parsing, serialization, and the structural checks a miner must pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .coinbase import find_witness_commitment, witness_commitment
from .encoding import ByteReader, WitnessSized, compact_size
from .header import BlockHeader
from .hashes import ZERO_HASH, hex_display_from_internal
from .merkle import merkle_root, merkle_root_and_mutation, witness_root
from .tx import Transaction

__all__ = ["Block", "BlockError", "block_from_parts", "MAX_BLOCK_WEIGHT"]

MAX_BLOCK_WEIGHT = 4_000_000


class BlockError(ValueError):
    """A block that fails Block.check(); the message lists every problem."""


@dataclass(frozen=True)
class Block(WitnessSized):
    """A header and its transactions (the coinbase first)."""

    header: BlockHeader
    transactions: tuple[Transaction, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "transactions", tuple(self.transactions))

    @classmethod
    def read(cls, reader: ByteReader) -> Block:
        """Read a header, a transaction count and that many transactions."""
        header = BlockHeader.read(reader)
        count = reader.read_count()
        return cls(header, tuple(Transaction.read(reader) for _ in range(count)))

    @classmethod
    def from_bytes(cls, data: bytes) -> Block:
        """Parse exactly one serialized block; trailing bytes are an error."""
        reader = ByteReader(data)
        block = cls.read(reader)
        reader.expect_end()
        return block

    def serialize(self, with_witness: bool = True) -> bytes:
        """Wire form, as submitblock expects (with witness by default)."""
        parts = [self.header.to_bytes(), compact_size(len(self.transactions))]
        parts.extend(tx.serialize(with_witness) for tx in self.transactions)
        return b"".join(parts)

    def hash_internal(self) -> bytes:
        """Block hash (header sha256d), internal order."""
        return self.header.hash_internal()

    def hash_hex_display(self) -> str:
        """Block hash as RPC shows it."""
        return self.header.hash_hex_display()

    def txids_internal(self) -> list[bytes]:
        """txid of every transaction, in block order."""
        return [tx.txid_internal() for tx in self.transactions]

    def compute_merkle_root(self) -> bytes:
        """Merkle root over the txids."""
        return merkle_root(self.txids_internal())

    def compute_witness_commitment(self) -> bytes | None:
        """Commitment the coinbase should carry, or None if no transaction has witness data."""
        if not any(tx.has_witness for tx in self.transactions):
            return None
        return witness_commitment(self._witness_root(), self._reserved_value())

    def _witness_root(self) -> bytes:
        return witness_root([tx.wtxid_internal() for tx in self.transactions[1:]])

    def _reserved_value(self) -> bytes:
        # The coinbase's single witness item is the reserved value the commitment
        # hashes in; a block without it is checked against the all-zero default.
        stack = self.transactions[0].witnesses[0] if self.transactions[0].witnesses else ()
        if len(stack) == 1 and len(stack[0]) == 32:
            return stack[0]
        return ZERO_HASH

    def check(self, check_pow: bool = False) -> list[str]:
        """Structural problems, named like Core's reject reasons; an empty list means none."""
        txs = self.transactions
        if not txs:
            return ["bad-blk-length: block has no transactions"]
        problems = []
        if not txs[0].is_coinbase():
            problems.append("bad-cb-missing: first transaction is not a coinbase")
        if any(tx.is_coinbase() for tx in txs[1:]):
            problems.append("bad-cb-multiple: more than one coinbase")
        root, mutated = merkle_root_and_mutation(self.txids_internal())
        if root != self.header.merkle_root_internal:
            problems.append(
                "bad-txnmrklroot: header merkle root "
                f"{hex_display_from_internal(self.header.merkle_root_internal)} != computed "
                f"{hex_display_from_internal(root)}"
            )
        if mutated:
            problems.append("bad-txns-duplicate: duplicate merkle subtree (CVE-2012-2459)")
        problems.extend(self._witness_problems())
        if self.weight() > MAX_BLOCK_WEIGHT:
            problems.append(f"bad-blk-weight: weight {self.weight()} > {MAX_BLOCK_WEIGHT}")
        if check_pow and not self.header.meets_target():
            problems.append("high-hash: block hash does not meet its bits")
        return problems

    def _witness_problems(self) -> list[str]:
        coinbase = self.transactions[0]
        committed = find_witness_commitment(coinbase)
        if committed is None:
            if any(tx.has_witness for tx in self.transactions):
                return ["unexpected-witness: witness data without a coinbase commitment"]
            return []
        stack = coinbase.witnesses[0] if coinbase.witnesses else ()
        if len(stack) != 1 or len(stack[0]) != 32:
            return ["bad-witness-nonce-size: coinbase witness must be one 32-byte item"]
        expected = witness_commitment(self._witness_root(), stack[0])
        if committed != expected:
            return [
                f"bad-witness-merkle-match: coinbase commits to {committed.hex()}, "
                f"transactions give {expected.hex()}"
            ]
        return []

    def validate(self, check_pow: bool = False) -> None:
        """Raise BlockError listing every problem check() finds."""
        problems = self.check(check_pow)
        if problems:
            raise BlockError("; ".join(problems))


def block_from_parts(
    header: BlockHeader, coinbase_tx: Transaction, txs: Iterable[Transaction]
) -> Block:
    """Block of header, coinbase and the template's other transactions (not checked)."""
    return Block(header, (coinbase_tx, *txs))

