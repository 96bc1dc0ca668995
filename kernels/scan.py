"""Nonce scan: a fast filter on the hash's top word, an exact 256-bit check, and threads.

    [start, start+count)  split into one contiguous part per thread (results stay in order)
      └─ the job's kernel path (kernels.paths picks one per machine):
           "lanes": scan_range(): blocks of BLOCK_LANES nonces
                      └─ scan_lanes(): every lane -> hits[i] = top 32 bits of the hash <= target's
           "shani": shani.scan_range(): SHA-NI, INTERLEAVE nonces per step -> a bit mask
           └─ each hit: the full sha256d recomputed (kernels.exact), compared as a 256-bit integer

Nonces are u32, positions are int64: start + count may be exactly 2**32 and nothing wraps.
All numba functions release the GIL, so N threads scale to N cores.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
from numba import njit

from kernels import paths
from kernels import sha256 as ref
from kernels._sha256d_lanes import JOB_WORDS, job_constants, scan_lanes
from kernels.exact import meets_target, sha256d_words

__all__ = ["BLOCK_LANES", "NONCE_SPACE", "ScanJob", "chosen_kernel", "default_threads", "kernel_rate",
           "meets_target", "prepare", "scan", "scan_chunk", "search", "sha256d_words", "split_range",
           "target_words", "warm_up"]

NONCE_SPACE = 1 << 32
# Nonces one scan_lanes() call covers: small enough that its hit flags (1 byte each) stay in
# L1, large enough that the per-call cost vanishes. Callers size their chunks in multiples.
BLOCK_LANES = 4096
# Nonces one scan_range() call covers in search(): the unit between Python callbacks.
SEARCH_CHUNK = 1 << 22
# Hits one scan_range() call can return before it stops early (and is called again).
OUT_CAPACITY = 1 << 16


@dataclass(frozen=True)
class ScanJob:
    """What a kernel needs of one 76-byte header prefix; build with prepare()."""

    header76: bytes
    kernel: str  # the path that scans it, one of paths.KERNELS
    midstate: np.ndarray  # uint32[8], state after the header's first 64 bytes
    tail: np.ndarray  # uint32[3], header bytes 64..75 as big-endian words
    words: np.ndarray  # uint32[], the kernel's nonce-independent values


def prepare(header76: bytes, kernel: str | None = None) -> ScanJob:
    """Midstate and every nonce-independent value the kernel (default: this machine's) needs, once per job."""
    if len(header76) != 76:
        raise ValueError(f"header76 must be 76 bytes (an 80-byte header without its nonce), got {len(header76)}")
    kernel = kernel or chosen_kernel().kernel
    mid_words = ref.midstate(header76[:64])
    tail_words = struct.unpack(">3I", header76[64:76])
    mid = np.array(mid_words, dtype=np.uint32)
    tail = np.array(tail_words, dtype=np.uint32)
    if kernel == "shani":
        from kernels import shani

        words = shani.job_words(mid_words, tail_words)
    elif kernel == "lanes":
        words = np.zeros(JOB_WORDS, dtype=np.uint32)
        job_constants(mid, tail, words)
    else:
        raise ValueError(f"unknown kernel {kernel!r}: expected one of {', '.join(paths.KERNELS)}")
    return ScanJob(bytes(header76), kernel, mid, tail, words)


def target_words(target: int) -> np.ndarray:
    """A 256-bit target as 8 u32 words, most significant first (the order hashes compare in)."""
    if not 0 <= target < 1 << 256:
        raise ValueError("target must be in [0, 2**256)")
    return np.array([(target >> (224 - 32 * i)) & 0xFFFFFFFF for i in range(8)], dtype=np.uint32)


@njit(cache=True, nogil=True, error_model="numpy")
def _any_set(words):
    for i in range(words.shape[0]):
        if words[i]:
            return True
    return False


@njit(cache=True, nogil=True, error_model="numpy")
def scan_range(job_words, midstate, tail, start, count, target_be, out):
    """The lane kernel's scan of nonces [start, start+count); writes hits to `out` in order.

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
    n_out, consumed = scan_range_of(job.kernel)(job.words, job.midstate, job.tail, np.int64(start),
                                                np.int64(count), target_be, out)
    return out[:n_out].tolist(), int(consumed)


def scan_range_of(kernel: str):
    """The numba scan_range of a kernel path (imported only when that path is used)."""
    if kernel == "lanes":
        return scan_range
    if kernel == "shani":
        from kernels import shani

        return shani.scan_range
    raise ValueError(f"unknown kernel {kernel!r}: expected one of {', '.join(paths.KERNELS)}")


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
           threads: int | None = None, kernel: str | None = None) -> list[int]:
    """Nonces in [start, start+count) whose sha256d(header76 + nonce LE), read little-endian, is <= target."""
    _check_range(start, count)
    job = prepare(header76, kernel)
    target_words(target)  # validate before starting threads
    pieces = split_range(start, count, threads or default_threads())
    if len(pieces) == 1:
        return scan(job, target, start, count)
    with ThreadPoolExecutor(max_workers=len(pieces), thread_name_prefix="gridminer-scan") as pool:
        results = pool.map(lambda p: scan(job, target, p[0], p[1]), pieces)
        return [nonce for part in results for nonce in part]


def kernel_rate(kernel: str, seconds: float, threads: int = 1, chunk: int = 1 << 20) -> float:
    """MH/s of `kernel` on `threads` threads, each scanning its own part of the nonce space
    until the deadline (compiled or loaded before the clock starts)."""
    job = prepare(os.urandom(76), kernel)
    scan(job, 0, 0, BLOCK_LANES)
    tw = target_words(0)  # target 0: no hits to collect
    run_range = scan_range_of(kernel)
    pieces = split_range(0, NONCE_SPACE, threads)

    def run(piece: tuple[int, int]) -> int:
        start, count = piece
        out = np.empty(1, dtype=np.uint32)  # each thread its own: nothing shared is written
        done, deadline = 0, time.perf_counter() + seconds
        while done == 0 or time.perf_counter() < deadline:
            run_range(job.words, job.midstate, job.tail, np.int64(start + done % (count - chunk)),
                      np.int64(chunk), tw, out)
            done += chunk
        return done

    t0 = time.perf_counter()
    if threads == 1:
        total = run(pieces[0])
    else:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gridminer-rate") as pool:
            total = sum(pool.map(run, pieces))
    return total / (time.perf_counter() - t0) / 1e6


def chosen_kernel() -> paths.Choice:
    """This machine's kernel path and why (decided once per process; see kernels.paths)."""
    return paths.chosen(lambda kernel, seconds: kernel_rate(kernel, seconds))


# While warm_up() compiles, progress() hears about it this often (seconds).
PROGRESS_EVERY = 5.0


def is_compiled_in_cache(kernel: str) -> bool | None:
    """Whether numba's on-disk cache holds the kernel's scan for this CPU (None: cannot tell)."""
    try:
        fn = scan_range_of(kernel)
        index = fn._cache._cache_file._load_index()  # {} when missing or stale (source changed)
        magic = fn.targetctx.codegen().magic_tuple()
        return any(key[1] == magic for key in index)
    except Exception:  # numba internals moved: report "unknown" rather than fail a start
        return None


def warm_up(progress: Callable[[str], None] | None = None, kernel: str | None = None) -> str:
    """Choose (first start: calibrate where needed), compile or load the kernel; returns its name.

    progress, when given, gets one-line messages: what is compiled, every PROGRESS_EVERY
    seconds while it runs, and the elapsed time at the end. Run it on a daemon thread (as
    the run modes do) so that a Ctrl-C during a compile need not wait for it.
    """
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    if kernel is None:
        choice = chosen_kernel()
        kernel = choice.kernel
        say(f"SHA-256d kernel: {kernel} ({choice.reason})")
    cached = is_compiled_in_cache(kernel)
    if cached is False:
        what = f"compiling the SHA-256d kernel for this CPU ({kernel}), first start only"
    else:
        what = f"loading the SHA-256d kernel ({kernel}) from numba's cache" if cached else \
            f"loading or compiling the SHA-256d kernel ({kernel})"
    say(what)
    done = threading.Event()

    def tick() -> None:
        while not done.wait(PROGRESS_EVERY):
            say(f"{what}: {time.perf_counter() - t0:.0f} s")

    ticker = threading.Thread(target=tick, name="gridminer-warm-up", daemon=True) if progress else None
    if ticker:
        ticker.start()
    try:
        scan(prepare(bytes(76), kernel), (1 << 256) - 1, 0, 8)
    finally:
        done.set()
    say(f"SHA-256d kernel {kernel} ready after {time.perf_counter() - t0:.1f} s")
    return kernel

