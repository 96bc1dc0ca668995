"""Generated journals: many found-block records, written straight to a file, for start-up tests.

The blocks are headers with a one-byte body (no transactions): the journal checks only
that the bytes hash to the record's hash and build on its prev hash, and such an entry
is never sent to a node (it is judged stale or found in the chain without submitting).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from miner.chain.hashes import hex_display_from_internal, internal_from_hex_display, sha256d
from miner.work.journal import FORMAT_VERSION


def synthetic_block(prev_hash_hex_display: str, salt: int) -> tuple[str, bytes]:
    """(hash display, bytes) of a header-only block on prev; salt makes it unique."""
    header = (struct.pack("<I", 0x20000000) + internal_from_hex_display(prev_hash_hex_display)
              + sha256d(salt.to_bytes(8, "little")) + struct.pack("<III", 1_700_000_000, 0x207FFFFF, salt & 0xFFFFFFFF))
    return hex_display_from_internal(sha256d(header)), header + b"\x00"


def found_record(block_hash: str, prev_hash: str, height: int | None, raw: bytes, job_id: str = "old") -> dict:
    return {"v": FORMAT_VERSION, "type": "found", "hash": block_hash, "prev": prev_hash, "height": height,
            "job_id": job_id, "block": raw.hex(), "time": 1_700_000_000.0}


def write_journal(path: Path, records: list[dict]) -> None:
    """Append records as the journal writes them (one fsync at the end)."""
    with open(path, "ab") as f:
        for r in records:
            f.write(json.dumps(r, separators=(",", ":"), sort_keys=True).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o600)


def stale_entries(n: int, heights: list[int], salt0: int = 0) -> list[tuple[str, str, int, bytes]]:
    """n (hash, prev, height, bytes) blocks on made-up parents, cycling through heights."""
    out = []
    for i in range(n):
        prev = hex_display_from_internal(sha256d(b"made-up parent %d" % (salt0 + i)))
        block_hash, raw = synthetic_block(prev, salt0 + i)
        out.append((block_hash, prev, heights[i % len(heights)], raw))
    return out
