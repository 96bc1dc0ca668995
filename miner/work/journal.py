"""The found-block journal: every block we find is on disk, fsynced, before the node sees it.

An append-only file of JSON lines, one record per line:

    {"v":1,"type":"found","hash":…,"prev":…,"height":…,"job_id":…,"block":<hex>,"time":…}
    {"v":1,"type":"result","hash":…,"result":"accepted"|<reject reason>|"stale"|…,"final":true,"time":…}

A found block without a final result is *pending*: the submitter sends it again on the
next start (or marks it stale when the tip has moved on). A crash mid-append leaves a
torn last line without its newline; opening the journal logs it and cuts it off, since
a record is only durable once its whole line and the fsync are done.

Synchronous on purpose (found blocks are rare; callers in asyncio wrap calls in
asyncio.to_thread). One process at a time: the file is flock()ed while open.

One journal per network and chain (`journal_chain_id`): regtest chains all share one
genesis, so a chain is told apart by its block 1. Answers for many blocks at once (the
start-up judgement of thousands of old entries) go in with one write and one fsync
(`record_results`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from miner.chain.hashes import hex_display_from_internal, internal_from_hex_display, sha256d

__all__ = ["Journal", "JournalEntry", "JournalError", "FORMAT_VERSION", "journal_chain_id"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Found blocks hold a payout; nobody else on the machine needs to read or alter them.
FILE_MODE = 0o600
DIR_MODE = 0o700
_HEADER_SIZE = 80


def journal_chain_id(block1_hash_hex_display: str | None) -> str:
    """The chain part of a journal's file name: block 1's hash (display order, first 16
    digits), or "genesis" for a chain that has no block 1 yet (all such chains of a
    network are the same chain: a block found there extends the same genesis)."""
    if block1_hash_hex_display is None:
        return "genesis"
    return _check_display_hash("block1_hash_hex_display", block1_hash_hex_display)[:16]


class JournalError(Exception):
    """The journal cannot be opened (locked by another process, or not a journal)."""


@dataclass(frozen=True)
class JournalEntry:
    """A found block and every answer recorded for it, oldest first."""

    block_hash_hex_display: str
    prev_hash_hex_display: str
    height: int | None
    job_id: str
    block: bytes  # the serialized block, exactly as submitted
    found_at: float  # unix seconds
    results: tuple[str, ...] = ()
    final_result: str | None = None  # the latest final answer, if any

    @property
    def final(self) -> bool:
        """True once the node (or the stale rule) gave an answer that will not change."""
        return self.final_result is not None

    @property
    def last_result(self) -> str | None:
        """The most recent result recorded, final or not."""
        return self.results[-1] if self.results else None


def _check_display_hash(name: str, value: str) -> str:
    try:
        internal_from_hex_display(value)  # the one hash parser: 64 hex digits, nothing else
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    return value.lower()


def _fsync_dir(path: Path) -> None:
    # A new file's directory entry is only durable once the directory is fsynced too.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """Append-only, fsynced journal of found blocks and the node's answers."""

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, JournalEntry] = {}  # by block hash; dicts keep found order
        self._pending = 0  # entries without a final result: asked after every record
        self._fd = self._open()
        try:
            self._size = self._replay()
        except BaseException:
            self._pending = 0  # nothing was opened: nothing is left pending by this close
            self.close()
            raise

    # -- opening and replay

    def _open(self) -> int:
        directory = self.path.parent
        if not directory.is_dir():
            directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            _fsync_dir(directory.parent)
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
            created = True
        except FileExistsError:
            fd = os.open(self.path, flags)
            created = False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise JournalError(f"journal {self.path} is in use by another process") from None
                raise
            if created:
                os.fchmod(fd, FILE_MODE)  # exact, whatever the umask
                os.fsync(fd)
                _fsync_dir(directory)
                log.info("created block journal %s", self.path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _replay(self) -> int:
        size = os.fstat(self._fd).st_size
        data = os.pread(self._fd, size, 0) if size else b""
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline, as it should
        good_size = len(data) - len(torn)
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                self._apply(json.loads(line))
            except (ValueError, TypeError, KeyError) as e:
                # Never fatal: one bad line must not stop the miner (or hide the others).
                log.error("block journal %s line %d unreadable, skipped: %s", self.path, number, e)
        if torn:
            good_size = self._repair_torn_tail(torn, good_size)
        pending = sum(1 for e in self._entries.values() if not e.final)
        if self._entries:
            log.info("block journal %s: %d blocks, %d pending", self.path, len(self._entries), pending)
        return good_size

    def _repair_torn_tail(self, torn: bytes, good_size: int) -> int:
        """Keep a last line that lacks only its newline; cut off anything less."""
        try:
            self._apply(json.loads(torn))
        except (ValueError, TypeError, KeyError):
            log.warning(
                "block journal %s ends in a torn line (%d bytes, a crash mid-write): dropped",
                self.path, len(torn),
            )
            os.ftruncate(self._fd, good_size)
            os.fsync(self._fd)
            return good_size
        log.warning("block journal %s: last record had no newline (a crash mid-write): kept", self.path)
        os.write(self._fd, b"\n")
        os.fsync(self._fd)
        return good_size + len(torn) + 1

    def _apply(self, record: dict) -> None:
        if not isinstance(record, dict) or record.get("v") != FORMAT_VERSION:
            raise ValueError(f"not a version-{FORMAT_VERSION} record")
        kind = record["type"]
        if kind == "found":
            block = bytes.fromhex(record["block"])
            entry = self._found_entry(
                block, record["hash"], record["prev"], record["height"], record["job_id"], record["time"]
            )
            if entry.block_hash_hex_display not in self._entries:
                self._entries[entry.block_hash_hex_display] = entry
                self._pending += 1
        elif kind == "result":
            self._result_entry(record["hash"], record["result"], record["final"])
        else:
            raise ValueError(f"unknown record type {kind!r}")

    # -- records

    @staticmethod
    def _found_entry(block: bytes, block_hash: str, prev_hash: str, height: int | None,
                     job_id: str, found_at: float) -> JournalEntry:
        if len(block) <= _HEADER_SIZE:
            raise ValueError(f"a block is more than a header; got {len(block)} bytes")
        # The hash and prev hash are read back from the bytes, so a record can never
        # name one block and hold another. A value equal to the one read back is
        # well-formed; only a mismatch is parsed, for the clearer error (replaying tens of
        # thousands of entries stays fast).
        read_hash = hex_display_from_internal(sha256d(block[:_HEADER_SIZE]))
        if not isinstance(block_hash, str) or block_hash.lower() != read_hash:
            block_hash = _check_display_hash("block_hash_hex_display", block_hash)
            raise ValueError(f"block bytes do not hash to {block_hash}")
        read_prev = hex_display_from_internal(block[4:36])
        if not isinstance(prev_hash, str) or prev_hash.lower() != read_prev:
            prev_hash = _check_display_hash("prev_hash_hex_display", prev_hash)
            raise ValueError(f"block {read_hash} does not build on {prev_hash}")
        block_hash, prev_hash = read_hash, read_prev
        if height is not None and (isinstance(height, bool) or not isinstance(height, int)):
            raise ValueError(f"height must be an integer or None, got {height!r}")
        if not isinstance(job_id, str):
            raise ValueError(f"job_id must be a string, got {job_id!r}")
        return JournalEntry(block_hash, prev_hash, height, job_id, bytes(block), float(found_at))

    def _known_hash(self, block_hash: str) -> str:
        """block_hash in the journal's form (the key of an entry, if there is one)."""
        key = block_hash.lower() if isinstance(block_hash, str) else block_hash
        if key in self._entries:
            return key  # keys were checked when their entries went in
        return _check_display_hash("block_hash_hex_display", block_hash)

    def _result_entry(self, block_hash: str, result: str, final: bool) -> JournalEntry:
        block_hash = self._known_hash(block_hash)
        if not isinstance(result, str) or not result:
            raise ValueError(f"result must be a non-empty string, got {result!r}")
        if not isinstance(final, bool):
            raise ValueError(f"final must be a bool, got {final!r}")
        entry = self._entries.get(block_hash)
        if entry is None:
            raise KeyError(f"no found block {block_hash} in the journal")
        if final and not entry.final:
            self._pending -= 1
        entry = replace(
            entry,
            results=entry.results + (result,),
            final_result=result if final else entry.final_result,
        )
        self._entries[block_hash] = entry
        return entry

    def _append(self, record: dict) -> None:
        self._append_lines([record])

    def _append_lines(self, records: list[dict]) -> None:
        line = b"".join(json.dumps(r, separators=(",", ":"), sort_keys=True).encode() + b"\n" for r in records)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except BaseException:
            # Cut a partial line off so that the next record starts on its own line.
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            raise
        self._size += len(line)

    def record_found(self, block_bytes: bytes, *, block_hash_hex_display: str,
                     prev_hash_hex_display: str, height: int | None, job_id: str) -> JournalEntry:
        """Write and fsync a found block; returns the existing entry if it is already there."""
        with self._lock:
            self._check_open()
            found_at = self._clock()
            entry = self._found_entry(bytes(block_bytes), block_hash_hex_display,
                                      prev_hash_hex_display, height, job_id, found_at)
            existing = self._entries.get(entry.block_hash_hex_display)
            if existing is not None:
                return existing
            self._append({
                "v": FORMAT_VERSION, "type": "found", "hash": entry.block_hash_hex_display,
                "prev": entry.prev_hash_hex_display, "height": height, "job_id": job_id,
                "block": entry.block.hex(), "time": found_at,
            })
            self._entries[entry.block_hash_hex_display] = entry
            self._pending += 1
            return entry

    def record_result(self, block_hash_hex_display: str, result: str, *, final: bool) -> JournalEntry:
        """Append the node's answer (or "stale"); final=False for attempts that may change."""
        with self._lock:
            self._check_open()
            block_hash = self._known_hash(block_hash_hex_display)
            if block_hash not in self._entries:
                raise KeyError(f"no found block {block_hash} in the journal")
            if not isinstance(result, str) or not result:
                raise ValueError(f"result must be a non-empty string, got {result!r}")
            self._append({
                "v": FORMAT_VERSION, "type": "result", "hash": block_hash, "result": result,
                "final": bool(final), "time": self._clock(),
            })
            return self._result_entry(block_hash, result, bool(final))

    def record_results(self, results: list[tuple[str, str]], *, final: bool) -> list[JournalEntry]:
        """Append many (block hash, result) answers with one write and one fsync.

        With final=True, blocks that already have a final answer are left alone (a
        concurrent submission answered them first); returns the entries written.
        """
        with self._lock:
            self._check_open()
            now = self._clock()
            records: list[dict] = []
            hashes: set[str] = set()
            for block_hash_hex_display, result in results:
                block_hash = self._known_hash(block_hash_hex_display)
                entry = self._entries.get(block_hash)
                if entry is None:
                    raise KeyError(f"no found block {block_hash} in the journal")
                if not isinstance(result, str) or not result:
                    raise ValueError(f"result must be a non-empty string, got {result!r}")
                if final and (entry.final or block_hash in hashes):
                    continue
                records.append({"v": FORMAT_VERSION, "type": "result", "hash": block_hash, "result": result,
                                "final": bool(final), "time": now})
                hashes.add(block_hash)
            if records:
                self._append_lines(records)
            return [self._result_entry(r["hash"], r["result"], bool(final)) for r in records]

    # -- queries

    def get(self, block_hash_hex_display: str) -> JournalEntry | None:
        """The entry for a block hash, or None."""
        with self._lock:
            return self._entries.get(block_hash_hex_display.lower())

    def entries(self) -> list[JournalEntry]:
        """Every found block, in the order found."""
        with self._lock:
            return list(self._entries.values())

    def pending(self) -> list[JournalEntry]:
        """Found blocks with no final result yet, in the order found."""
        with self._lock:
            return [e for e in self._entries.values() if not e.final]

    def pending_count(self) -> int:
        """How many found blocks have no final result yet (kept as records go in: O(1))."""
        return self._pending

    # -- lifetime

    def _check_open(self) -> None:
        if self._fd < 0:
            raise ValueError(f"journal {self.path} is closed")

    def close(self) -> None:
        """Release the file (and its lock), saying how many blocks are left pending; idempotent."""
        with self._lock:
            if self._fd < 0:
                return
            os.close(self._fd)  # also drops the flock
            self._fd = -1
        if self._pending:
            log.warning("%d block(s) left pending in the journal %s; they are resubmitted on the next start",
                        self._pending, self.path)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            os.close(fd)
