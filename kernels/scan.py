"""Nonce scan: the vectorized filter from _sha256d_lanes, an exact 256-bit check, and threads.

    [start, start+count)  split into one contiguous part per thread (results stay in order)
      └─ scan_range(): blocks of BLOCK_LANES nonces
           └─ scan_lanes(): every lane -> hits[i] = top 32 bits of the hash <= target's
                └─ each hit: the full sha256d recomputed, compared as a 256-bit integer

Nonces are u32, positions are int64: start + count may be exactly 2**32 and nothing wraps.
All numba functions release the GIL, so N threads scale to N cores.
"""

from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numba import njit

from kernels import sha256 as ref
from kernels._sha256d_lanes import JOB_WORDS, job_constants, scan_lanes

NONCE_SPACE = 1 << 32
# Nonces one scan_lanes() call covers: small enough that its hit flags (1 byte each) stay in
# L1, large enough that the per-call cost vanishes.
BLOCK_LANES = 4096
# Nonces one scan_range() call covers in search(): the unit between Python callbacks.
SEARCH_CHUNK = 1 << 22
# Hits one scan_range() call can return before it stops early (and is called again).
OUT_CAPACITY = 1 << 16

_K = np.array(ref.K, dtype=np.uint32)
_IV = np.array(ref.IV, dtype=np.uint32)


@dataclass(frozen=True)
class ScanJob:
    """What the kernel needs of one 76-byte header prefix; build with prepare()."""

    header76: bytes
    midstate: np.ndarray  # uint32[8], state after the header's first 64 bytes
    tail: np.ndarray  # uint32[3], header bytes 64..75 as big-endian words
    job_words: np.ndarray  # uint32[JOB_WORDS], from job_constants()


def prepare(header76: bytes) -> ScanJob:
    """Midstate and every nonce-independent value, once per job."""
    if len(header76) != 76:
        raise ValueError(f"header76 must be 76 bytes (an 80-byte header without its nonce), got {len(header76)}")
    mid = np.array(ref.midstate(header76[:64]), dtype=np.uint32)
    tail = np.array(struct.unpack(">3I", header76[64:76]), dtype=np.uint32)
    jc = np.zeros(JOB_WORDS, dtype=np.uint32)
    job_constants(mid, tail, jc)
    return ScanJob(bytes(header76), mid, tail, jc)


def target_words(target: int) -> np.ndarray:
    """A 256-bit target as 8 u32 words, most significant first (the order hashes compare in)."""
    if not 0 <= target < 1 << 256:
        raise ValueError("target must be in [0, 2**256)")
    return np.array([(target >> (224 - 32 * i)) & 0xFFFFFFFF for i in range(8)], dtype=np.uint32)


@njit(cache=True, nogil=True, error_model="numpy")
def _rotr(x, n):
    return np.uint32((x >> np.uint32(n)) | (x << np.uint32(32 - n)))


@njit(cache=True, nogil=True, error_model="numpy")
def _bswap(x):
    return np.uint32((x << np.uint32(24)) | ((x << np.uint32(8)) & np.uint32(0x00FF0000))
                     | ((x >> np.uint32(8)) & np.uint32(0x0000FF00)) | (x >> np.uint32(24)))


@njit(cache=True, nogil=True, error_model="numpy")
def _compress(state, w):
    """Plain loop SHA-256 compression (scalar): used only for candidates, so clarity wins."""
    for t in range(16, 64):
        s0 = _rotr(w[t - 15], 7) ^ _rotr(w[t - 15], 18) ^ (w[t - 15] >> np.uint32(3))
        s1 = _rotr(w[t - 2], 17) ^ _rotr(w[t - 2], 19) ^ (w[t - 2] >> np.uint32(10))
        w[t] = np.uint32(w[t - 16] + s0 + w[t - 7] + s1)
    a, b, c, d, e, f, g, h = state[0], state[1], state[2], state[3], state[4], state[5], state[6], state[7]
    for t in range(64):
        big_s1 = _rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25)
        ch = g ^ (e & (f ^ g))
        t1 = np.uint32(h + big_s1 + ch + _K[t] + w[t])
        big_s0 = _rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)
        maj = (a & b) | (c & (a | b))
        t2 = np.uint32(big_s0 + maj)
        h, g, f, e, d, c, b, a = g, f, e, np.uint32(d + t1), c, b, a, np.uint32(t1 + t2)
    out = np.empty(8, dtype=np.uint32)
    for i, v in enumerate((a, b, c, d, e, f, g, h)):
        out[i] = np.uint32(state[i] + v)
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def sha256d_words(midstate, tail, nonce):
    """Final state words H0..H7 of sha256d(header76 + nonce as little-endian u32)."""
    w = np.zeros(64, dtype=np.uint32)
    w[0], w[1], w[2] = tail[0], tail[1], tail[2]
    w[3] = _bswap(np.uint32(nonce))
    w[4] = np.uint32(0x80000000)
    w[15] = np.uint32(640)
    first = _compress(midstate, w)
    w2 = np.zeros(64, dtype=np.uint32)
    w2[:8] = first
    w2[8] = np.uint32(0x80000000)
    w2[15] = np.uint32(256)
    return _compress(_IV, w2)


@njit(cache=True, nogil=True, error_model="numpy")
def meets_target(state, target_be):
    """The hash (state words as bytes) read little-endian, <= target (words most significant first)."""
    for i in range(8):
        word = _bswap(state[7 - i])
        if word != target_be[i]:
            return word < target_be[i]
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def _any_set(words):
    for i in range(words.shape[0]):
        if words[i]:
            return True
    return False


@njit(cache=True, nogil=True, error_model="numpy")
def scan_range(job_words, midstate, tail, start, count, target_be, out):
    """Scan nonces [start, start+count); writes hits to `out` in order.

    Returns (hits written, nonces consumed). It stops early, before a hit that does not
    fit, when `out` is full: call again from start + consumed.
    """
    hits = np.zeros(BLOCK_LANES, dtype=np.uint8)
    hit_words = hits.view(np.uint64)  # a short final block leaves stale flags past n: checked per i below
    n_out = 0
    pos = np.int64(0)
    while pos < count:
        n = min(np.int64(BLOCK_LANES), count - pos)
        base = start + pos
        scan_lanes(job_words, np.uint32(base), n, target_be[0], hits)
        if _any_set(hit_words):
            for i in range(n):
                if hits[i] and meets_target(sha256d_words(midstate, tail, base + i), target_be):
                    if n_out == out.shape[0]:
                        return n_out, pos + i
                    out[n_out] = base + i
                    n_out += 1
        pos += n
    return n_out, pos


def _check_range(start: int, count: int) -> None:
    if not (0 <= start < NONCE_SPACE and 0 <= count and start + count <= NONCE_SPACE):
        raise ValueError(f"nonce range [{start}, {start}+{count}) is not inside [0, 2**32)")


def scan(job: ScanJob, target: int, start: int, count: int, out: np.ndarray | None = None,
         chunk: int = SEARCH_CHUNK) -> list[int]:
    """Every nonce in [start, start+count) meeting `target`, in order, on this thread."""
    _check_range(start, count)
    tw = target_words(target)
    if out is None:
        out = np.empty(OUT_CAPACITY, dtype=np.uint32)
    found: list[int] = []
    pos, end = start, start + count
    while pos < end:
        hits, consumed = scan_chunk(job, tw, pos, min(chunk, end - pos), out)
        found.extend(hits)
        pos += consumed
    return found


def scan_chunk(job: ScanJob, target_be: np.ndarray, start: int, count: int, out: np.ndarray) -> tuple[list[int], int]:
    """(hits, nonces consumed) from [start, start+count): stops early once `out` is full.

    For callers that want the first few hits of an easy target (a regtest block, a
    low-difficulty share) without hashing a whole chunk's worth of them.
    """
    _check_range(start, count)
    n_out, consumed = scan_range(job.job_words, job.midstate, job.tail, np.int64(start), np.int64(count),
                                 target_be, out)
    return out[:n_out].tolist(), int(consumed)


def split_range(start: int, count: int, parts: int) -> list[tuple[int, int]]:
    """[start, start+count) as `parts` contiguous (start, count) pieces, none empty unless count is 0."""
    parts = max(1, min(parts, count)) if count else 1
    size, extra = divmod(count, parts)
    pieces, pos = [], start
    for i in range(parts):
        n = size + (1 if i < extra else 0)
        pieces.append((pos, n))
        pos += n
    return pieces


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def search(header76: bytes, target: int, start: int = 0, count: int = NONCE_SPACE,
           threads: int | None = None) -> list[int]:
    """Nonces in [start, start+count) whose sha256d(header76 + nonce LE), read little-endian, is <= target."""
    _check_range(start, count)
    job = prepare(header76)
    target_words(target)  # validate before starting threads
    pieces = split_range(start, count, threads or default_threads())
    if len(pieces) == 1:
        return scan(job, target, start, count)
    with ThreadPoolExecutor(max_workers=len(pieces), thread_name_prefix="gridminer-scan") as pool:
        results = pool.map(lambda p: scan(job, target, p[0], p[1]), pieces)
        return [nonce for part in results for nonce in part]


def warm_up() -> None:
    """Compile (or load from numba's cache) everything a scan runs."""
    scan(prepare(bytes(76)), (1 << 256) - 1, 0, 8)
