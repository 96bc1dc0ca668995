"""Pure Bitcoin data: headers, targets, merkle trees, coinbases, addresses, blocks.

Synchronous and deterministic; every hash-valued name says its byte order
(`_internal` as hashed and serialized, `_hex_display` as RPC and explorers show it).
"""

from .address import AddressError, address_to_script, script_to_address
from .block import Block, BlockError, block_from_parts
from .coinbase import (
    CoinbaseTemplate,
    build_coinbase,
    encode_bip34_height,
    find_witness_commitment,
    witness_commitment,
)
from .encoding import ByteReader, DecodeError, compact_size
from .hashes import hex_display_from_internal, internal_from_hex_display, sha256, sha256d
from .header import BlockHeader
from .merkle import (
    coinbase_merkle_branch,
    merkle_branch,
    merkle_root,
    root_from_branch,
    witness_root,
)
from .networks import NETWORKS, Network, get_network
from .target import (
    DIFF1_TARGET,
    bits_to_target,
    difficulty_to_target,
    hash_meets_target,
    target_to_bits,
    target_to_difficulty,
)
from .tx import Transaction, TxIn, TxOut

__all__ = [
    "AddressError",
    "address_to_script",
    "script_to_address",
    "Block",
    "BlockError",
    "block_from_parts",
    "CoinbaseTemplate",
    "build_coinbase",
    "encode_bip34_height",
    "find_witness_commitment",
    "witness_commitment",
    "ByteReader",
    "DecodeError",
    "compact_size",
    "hex_display_from_internal",
    "internal_from_hex_display",
    "sha256",
    "sha256d",
    "BlockHeader",
    "coinbase_merkle_branch",
    "merkle_branch",
    "merkle_root",
    "root_from_branch",
    "witness_root",
    "NETWORKS",
    "Network",
    "get_network",
    "DIFF1_TARGET",
    "bits_to_target",
    "difficulty_to_target",
    "hash_meets_target",
    "target_to_bits",
    "target_to_difficulty",
    "Transaction",
    "TxIn",
    "TxOut",
]
