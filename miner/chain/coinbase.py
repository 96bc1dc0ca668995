"""The coinbase transaction: BIP34 height, BIP141 witness commitment, stratum split.

build_coinbase lays the scriptSig out as

    <BIP34 height push> <push of tag> <push opcode for N bytes> <N extranonce bytes>

and cuts the legacy serialization just before the extranonce, so that
coinb1 + extranonce + coinb2 is the exact byte string whose sha256d is the txid.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from .encoding import ByteReader, DecodeError, compact_size
from .hashes import ZERO_HASH, sha256d
from .tx import COINBASE_PREV_INDEX, Transaction, TxIn, TxOut

__all__ = [
    "encode_bip34_height",
    "decode_bip34_height",
    "encode_script_num",
    "decode_script_num",
    "push_data",
    "WITNESS_COMMITMENT_HEADER",
    "WITNESS_RESERVED_VALUE",
    "witness_commitment",
    "witness_commitment_script",
    "find_witness_commitment",
    "CoinbaseTemplate",
    "build_coinbase",
]

_OP_0 = 0x00
_OP_PUSHDATA1 = 0x4C
_OP_PUSHDATA2 = 0x4D
_OP_1NEGATE = 0x4F
_OP_1 = 0x51
_OP_16 = 0x60

# Consensus: a coinbase scriptSig must be 2..100 bytes ("bad-cb-length").
MIN_COINBASE_SCRIPT_SIG = 2
MAX_COINBASE_SCRIPT_SIG = 100
# Heights are int32 in Core; nothing larger can ever be a block height.
MAX_HEIGHT = (1 << 31) - 1

# OP_RETURN, push 36 bytes, then the 4-byte BIP141 tag 0xaa21a9ed.
WITNESS_COMMITMENT_HEADER = bytes.fromhex("6a24aa21a9ed")
WITNESS_RESERVED_VALUE = bytes(32)


def encode_script_num(n: int) -> bytes:
    """Minimal CScriptNum encoding: little-endian magnitude, sign in the top bit."""
    if n == 0:
        return b""
    magnitude = abs(n)
    out = bytearray()
    while magnitude:
        out.append(magnitude & 0xFF)
        magnitude >>= 8
    # The top bit of the last byte is the sign, so a magnitude that sets it needs one
    # more byte (0x00 for positive, 0x80 for negative) to stay unambiguous.
    if out[-1] & 0x80:
        out.append(0x80 if n < 0 else 0x00)
    elif n < 0:
        out[-1] |= 0x80
    return bytes(out)


def decode_script_num(data: bytes) -> int:
    """Inverse of encode_script_num (accepts non-minimal input too)."""
    if not data:
        return 0
    value = int.from_bytes(data, "little")
    if data[-1] & 0x80:
        return -(value & ~(0x80 << (8 * (len(data) - 1))))
    return value


def push_data(data: bytes) -> bytes:
    """Smallest push of data as a script element (direct push, PUSHDATA1 or PUSHDATA2)."""
    n = len(data)
    if n < _OP_PUSHDATA1:
        return bytes((n,)) + data
    if n <= 0xFF:
        return bytes((_OP_PUSHDATA1, n)) + data
    if n <= 0xFFFF:
        return bytes((_OP_PUSHDATA2,)) + n.to_bytes(2, "little") + data
    raise ValueError(f"push of {n} bytes is too large")


def encode_bip34_height(height: int) -> bytes:
    """The BIP34 height push that must begin the coinbase scriptSig."""
    if not 1 <= height <= MAX_HEIGHT:
        raise ValueError(f"BIP34 height out of range 1..{MAX_HEIGHT}: {height}")
    # Core checks the scriptSig starts with `CScript() << height` (see also
    # test_framework/blocktools.py, script_BIP34_coinbase_height). CScript's operator<<
    # turns 1..16 into the single opcodes OP_1..OP_16, not a one-byte push, so a
    # miner that pushes 0x01 0x05 at height 5 gets "bad-cb-height". Larger heights are
    # a push of the minimal script number, which gains a 0x00 sign byte when the top
    # bit of its last byte is set: 128 -> 02 8000, 32768 -> 03 008000.
    if height <= 16:
        return bytes((_OP_1 + height - 1,))
    return push_data(encode_script_num(height))


def decode_bip34_height(script_sig: bytes) -> int:
    """Height from the first element of a coinbase scriptSig (OP_0..OP_16 or a number push)."""
    if not script_sig:
        raise DecodeError("empty coinbase scriptSig has no BIP34 height")
    op = script_sig[0]
    if op == _OP_0:
        return 0
    if _OP_1 <= op <= _OP_16:
        return op - _OP_1 + 1
    if op == _OP_1NEGATE:
        return -1
    # An int32 height needs at most 4 bytes (5 with a sign byte); allow up to 8 like
    # CScriptNum's int64 so that odd-but-valid pushes still decode.
    if 1 <= op <= 8:
        reader = ByteReader(script_sig[1:])
        return decode_script_num(reader.read(op))
    raise DecodeError(f"coinbase scriptSig does not start with a height push (opcode {op:#04x})")


def witness_commitment(
    witness_root_internal: bytes, reserved_value: bytes = WITNESS_RESERVED_VALUE
) -> bytes:
    """BIP141 commitment: sha256d(witness root || witness reserved value)."""
    if len(witness_root_internal) != 32 or len(reserved_value) != 32:
        raise ValueError("witness root and reserved value must be 32 bytes each")
    return sha256d(bytes(witness_root_internal) + bytes(reserved_value))


def witness_commitment_script(commitment: bytes) -> bytes:
    """scriptPubKey of the commitment output: 6a24aa21a9ed followed by the 32-byte commitment."""
    if len(commitment) != 32:
        raise ValueError(f"witness commitment must be 32 bytes, got {len(commitment)}")
    return WITNESS_COMMITMENT_HEADER + bytes(commitment)


def find_witness_commitment(tx: Transaction) -> bytes | None:
    """The 32-byte commitment in the last output matching BIP141's pattern, or None."""
    # BIP141: scripts of 38 bytes or more starting with the header qualify, and if
    # several do, the one with the highest output index is the commitment.
    for out in reversed(tx.outputs):
        script = out.script_pubkey
        if len(script) >= 38 and script.startswith(WITNESS_COMMITMENT_HEADER):
            return script[6:38]
    return None


@dataclass(frozen=True)
class CoinbaseTemplate:
    """A coinbase cut around its extranonce, as stratum's coinb1/coinb2."""

    coinb1: bytes
    coinb2: bytes
    extranonce_size: int
    witness_commitment: bytes | None = None

    def legacy_bytes(self, extranonce: bytes) -> bytes:
        """coinb1 + extranonce + coinb2: the non-witness serialization."""
        if len(extranonce) != self.extranonce_size:
            raise ValueError(
                f"extranonce must be {self.extranonce_size} bytes, got {len(extranonce)}"
            )
        return self.coinb1 + bytes(extranonce) + self.coinb2

    def txid_internal(self, extranonce: bytes) -> bytes:
        """txid of the coinbase with this extranonce."""
        return sha256d(self.legacy_bytes(extranonce))

    def build(self, extranonce: bytes) -> Transaction:
        """The full coinbase; with a commitment it carries the 32-byte zero reserved value."""
        tx = Transaction.from_bytes(self.legacy_bytes(extranonce))
        if self.witness_commitment is not None:
            tx = replace(tx, witnesses=((WITNESS_RESERVED_VALUE,),))
        return tx


def build_coinbase(
    height: int,
    value_sats: int,
    payout_script: bytes,
    extranonce_size: int,
    tag: bytes = b"/gridminer/",
    witness_commitment: bytes | None = None,
    extra_outputs: Sequence[TxOut] = (),
    version: int = 2,
) -> CoinbaseTemplate:
    """Coinbase paying value_sats to payout_script, cut around extranonce_size bytes."""
    # A direct push holds at most 75 bytes; stratum extranonces are ~4-16 bytes.
    if not 0 <= extranonce_size < _OP_PUSHDATA1:
        raise ValueError(
            f"extranonce_size must be 0..{_OP_PUSHDATA1 - 1}, got {extranonce_size}"
        )
    # Tag and extranonce go in as pushes, not raw bytes, so the scriptSig stays a
    # well-formed script that explorers and decode_bip34_height can walk.
    head = encode_bip34_height(height) + (push_data(bytes(tag)) if tag else b"")
    if extranonce_size:
        head += bytes((extranonce_size,))
    script_len = len(head) + extranonce_size
    if not MIN_COINBASE_SCRIPT_SIG <= script_len <= MAX_COINBASE_SCRIPT_SIG:
        raise ValueError(
            f"coinbase scriptSig would be {script_len} bytes; consensus allows "
            f"{MIN_COINBASE_SCRIPT_SIG}..{MAX_COINBASE_SCRIPT_SIG} (shorten the tag?)"
        )
    outputs = [TxOut(value_sats, bytes(payout_script)), *extra_outputs]
    if witness_commitment is not None:
        # Core appends the commitment as the last output, which is also where
        # find_witness_commitment looks first.
        outputs.append(TxOut(0, witness_commitment_script(witness_commitment)))
    placeholder = bytes(extranonce_size)
    tx = Transaction(
        version=version,
        inputs=(TxIn(ZERO_HASH, COINBASE_PREV_INDEX, head + placeholder, 0xFFFFFFFF),),
        outputs=tuple(outputs),
        locktime=0,
    )
    raw = tx.serialize(with_witness=False)
    # Layout: version(4) | input count(1) | outpoint(36) | scriptSig length | scriptSig...
    script_start = 4 + 1 + 36 + len(compact_size(script_len))
    cut = script_start + len(head)
    return CoinbaseTemplate(
        coinb1=raw[:cut],
        coinb2=raw[cut + extranonce_size:],
        extranonce_size=extranonce_size,
        witness_commitment=witness_commitment,
    )
