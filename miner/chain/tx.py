"""Transactions: legacy and BIP144 (segwit) serialization, txid and wtxid."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .encoding import ByteReader, DecodeError, WitnessSized, compact_size
from .hashes import ZERO_HASH, hex_display_from_internal, sha256d

__all__ = ["TxIn", "TxOut", "Transaction", "MAX_MONEY_SATS", "COINBASE_PREV_INDEX"]

MAX_MONEY_SATS = 21_000_000 * 100_000_000
# A coinbase input spends the null outpoint: 32 zero bytes and index 0xffffffff.
COINBASE_PREV_INDEX = 0xFFFFFFFF


def _u32(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{name} out of uint32 range: {value}")


def _as_bytes(name: str, value: object) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes, got {type(value).__name__}")
    return bytes(value)


@dataclass(frozen=True)
class TxIn:
    """One input: the outpoint it spends, its scriptSig and nSequence."""

    prev_txid_internal: bytes
    prev_index: int
    script_sig: bytes
    sequence: int = 0xFFFFFFFF

    def __post_init__(self) -> None:
        prev = _as_bytes("prev_txid_internal", self.prev_txid_internal)
        if len(prev) != 32:
            raise ValueError(f"prev_txid_internal must be 32 bytes, got {len(prev)}")
        object.__setattr__(self, "prev_txid_internal", prev)
        object.__setattr__(self, "script_sig", _as_bytes("script_sig", self.script_sig))
        _u32("prev_index", self.prev_index)
        _u32("sequence", self.sequence)

    def serialize(self) -> bytes:
        """Wire form of the input."""
        return (
            self.prev_txid_internal
            + self.prev_index.to_bytes(4, "little")
            + compact_size(len(self.script_sig))
            + self.script_sig
            + self.sequence.to_bytes(4, "little")
        )

    @classmethod
    def read(cls, reader: ByteReader) -> TxIn:
        """Read one input."""
        prev = reader.read(32)
        index = reader.read_u32_le()
        script = reader.read_var_bytes()
        return cls(prev, index, script, reader.read_u32_le())


@dataclass(frozen=True)
class TxOut:
    """One output: amount in satoshis and its scriptPubKey."""

    value_sats: int
    script_pubkey: bytes

    def __post_init__(self) -> None:
        # The wire field is int64; values outside 0..MAX_MONEY are consensus-invalid,
        # so refusing them here catches unit mix-ups (BTC vs sats) early.
        if not 0 <= self.value_sats <= MAX_MONEY_SATS:
            raise ValueError(f"output value out of range: {self.value_sats} sats")
        object.__setattr__(self, "script_pubkey", _as_bytes("script_pubkey", self.script_pubkey))

    def serialize(self) -> bytes:
        """Wire form of the output."""
        return (
            struct.pack("<q", self.value_sats)
            + compact_size(len(self.script_pubkey))
            + self.script_pubkey
        )

    @classmethod
    def read(cls, reader: ByteReader) -> TxOut:
        """Read one output."""
        value = reader.read_i64_le()
        if not 0 <= value <= MAX_MONEY_SATS:
            raise DecodeError(f"output value out of range: {value}")
        return cls(value, reader.read_var_bytes())


@dataclass(frozen=True)
class Transaction(WitnessSized):
    """A transaction; witnesses is () or one stack (tuple of items) per input."""

    version: int
    inputs: tuple[TxIn, ...]
    outputs: tuple[TxOut, ...]
    locktime: int = 0
    witnesses: tuple[tuple[bytes, ...], ...] = ()

    def __post_init__(self) -> None:
        _u32("version", self.version)
        _u32("locktime", self.locktime)
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        stacks = tuple(
            tuple(_as_bytes("witness item", item) for item in stack) for stack in self.witnesses
        )
        if stacks and len(stacks) != len(self.inputs):
            raise ValueError(
                f"{len(stacks)} witness stacks for {len(self.inputs)} inputs"
            )
        # All-empty stacks serialize exactly like no witness; keep one spelling so that
        # equality follows the bytes.
        if not any(stacks):
            stacks = ()
        object.__setattr__(self, "witnesses", stacks)

    @property
    def has_witness(self) -> bool:
        """True when any input carries witness data."""
        return bool(self.witnesses)

    def is_coinbase(self) -> bool:
        """True for a single input spending the null outpoint."""
        return (
            len(self.inputs) == 1
            and self.inputs[0].prev_txid_internal == ZERO_HASH
            and self.inputs[0].prev_index == COINBASE_PREV_INDEX
        )

    def serialize(self, with_witness: bool = True) -> bytes:
        """Wire form; BIP144 extended form only when with_witness and has_witness."""
        segwit = with_witness and self.has_witness
        parts = [self.version.to_bytes(4, "little")]
        if segwit:
            parts.append(b"\x00\x01")  # marker, flag
        parts.append(compact_size(len(self.inputs)))
        parts.extend(txin.serialize() for txin in self.inputs)
        parts.append(compact_size(len(self.outputs)))
        parts.extend(txout.serialize() for txout in self.outputs)
        if segwit:
            for stack in self.witnesses:
                parts.append(compact_size(len(stack)))
                for item in stack:
                    parts.append(compact_size(len(item)))
                    parts.append(item)
        parts.append(self.locktime.to_bytes(4, "little"))
        return b"".join(parts)

    @classmethod
    def read(cls, reader: ByteReader) -> Transaction:
        """Read one transaction (legacy or BIP144) from reader."""
        version = reader.read_u32_le()
        segwit = False
        # BIP144: a zero input count is the marker, and the next byte is the flag. Core
        # treats any flag other than 1 as unknown optional data and refuses the tx.
        if reader.peek(1) == b"\x00":
            reader.read(1)
            flag = reader.read_u8()
            if flag != 0x01:
                raise DecodeError(f"unknown transaction optional data (flag {flag:#04x})")
            segwit = True
        inputs = tuple(TxIn.read(reader) for _ in range(reader.read_count()))
        if segwit and not inputs:
            raise DecodeError("segwit transaction with no inputs")
        outputs = tuple(TxOut.read(reader) for _ in range(reader.read_count()))
        witnesses: tuple[tuple[bytes, ...], ...] = ()
        if segwit:
            witnesses = tuple(
                tuple(reader.read_var_bytes() for _ in range(reader.read_count()))
                for _ in inputs
            )
            if not any(witnesses):
                # Core: "Superfluous witness record" - the extended form must not be
                # used when it carries nothing, or the tx would have two encodings.
                raise DecodeError("superfluous witness record (all witness stacks empty)")
        locktime = reader.read_u32_le()
        return cls(version, inputs, outputs, locktime, witnesses)

    @classmethod
    def from_bytes(cls, data: bytes) -> Transaction:
        """Parse exactly one transaction; trailing bytes are an error."""
        reader = ByteReader(data)
        tx = cls.read(reader)
        reader.expect_end()
        return tx

    def txid_internal(self) -> bytes:
        """sha256d of the legacy (non-witness) serialization."""
        return sha256d(self.serialize(with_witness=False))

    def wtxid_internal(self) -> bytes:
        """sha256d of the witness serialization (equals txid without witness)."""
        return sha256d(self.serialize(with_witness=True))

    def txid_hex_display(self) -> str:
        """txid as RPC shows it."""
        return hex_display_from_internal(self.txid_internal())

    def wtxid_hex_display(self) -> str:
        """wtxid as RPC shows it (the "hash" field)."""
        return hex_display_from_internal(self.wtxid_internal())

