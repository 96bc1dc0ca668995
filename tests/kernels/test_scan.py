"""Every kernel path's nonce scan against hashlib and the oracle, on random and on real headers.

Each test runs once per path in kernels.paths.KERNELS; a path this machine's CPU cannot run
is skipped with the reason (never faked with another path).
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels import codegen, paths, scan
from miner.chain.header import BlockHeader
from miner.chain.target import bits_to_target

DATA = Path(__file__).resolve().parent.parent / "data"
PROPERTY = settings(max_examples=40, deadline=None)
RUNNABLE = paths.runnable()


@pytest.fixture(scope="module", params=paths.KERNELS)
def kernel(request):
    why = RUNNABLE[request.param]
    if why:
        pytest.skip(f"the {request.param} path cannot run here: {why}")
    return request.param


def sha256d_int(header76: bytes, nonce: int) -> int:
    h = hashlib.sha256(hashlib.sha256(header76 + nonce.to_bytes(4, "little")).digest()).digest()
    return int.from_bytes(h, "little")


def expected(header76: bytes, target: int, start: int, count: int) -> list[int]:
    return [n for n in range(start, start + count) if sha256d_int(header76, n) <= target]


def test_generated_module_is_current():
    assert codegen.TARGET.read_text() == codegen.render_module(), \
        "kernels/_sha256d_lanes.py is stale: run `python -m kernels.codegen`"


@PROPERTY
@given(header=st.binary(min_size=76, max_size=76), nonce=st.integers(0, 2**32 - 1))
def test_full_hash_words_match_hashlib(header, nonce):
    job = scan.prepare(header, "shani")  # pure Python prep: the exact check alone is under test
    words = scan.sha256d_words(job.midstate, job.tail, nonce)
    digest = hashlib.sha256(hashlib.sha256(header + nonce.to_bytes(4, "little")).digest()).digest()
    assert b"".join(int(w).to_bytes(4, "big") for w in words) == digest


@PROPERTY
@given(header=st.binary(min_size=76, max_size=76),
       start=st.integers(0, 2**32 - 1),
       count=st.integers(0, 1500),
       easiness=st.integers(0, 12))
def test_scan_matches_hashlib(kernel, header, start, count, easiness):
    count = min(count, 2**32 - start)
    # Targets from 2**256-1 (every nonce) down to about 1 hit in 4096 nonces.
    target = (1 << (256 - easiness)) - 1
    assert kernels.search(header, target, start, count, threads=1, kernel=kernel) == \
        expected(header, target, start, count)


@PROPERTY
@given(header=st.binary(min_size=76, max_size=76), offset=st.integers(0, 199), bump=st.sampled_from([-1, 0, 1]))
def test_target_exactly_at_a_hash(kernel, header, offset, bump):
    # A hash equal to the target meets it; one above it does not. Exercises every word
    # of the 256-bit comparison, not just the top one the vector filter looks at.
    target = sha256d_int(header, 1000 + offset) + bump
    got = kernels.search(header, target, 1000, 200, threads=1, kernel=kernel)
    assert got == expected(header, target, 1000, 200)
    assert ((1000 + offset) in got) == (bump >= 0)


@pytest.mark.parametrize("count", [3000, 2999, 1, 2, 3, 4097])
def test_top_of_the_nonce_space_does_not_wrap(kernel, count):
    # Counts that are not a multiple of any interleave or block size end at exactly 2**32.
    header = bytes(range(76))
    target = (1 << 252) - 1
    start = 2**32 - count
    assert kernels.search(header, target, start, count, threads=2, kernel=kernel) == \
        expected(header, target, start, count)


@pytest.mark.parametrize("start,count", [(0, 1), (0, 3), (7, 5), (2**32 - 1, 1), (2**32 - 5, 5), (1, 4095)])
def test_short_and_odd_ranges_hit_every_nonce_of_an_easy_target(kernel, start, count):
    # The maximum target: every nonce hits, so a lane hashed past the range would show up.
    assert kernels.search(bytes(76), (1 << 256) - 1, start, count, threads=1, kernel=kernel) == \
        list(range(start, start + count))


def test_full_output_stops_inside_an_interleaved_group(kernel):
    # Every nonce hits; with room for one hit per call the scan must resume at the very
    # next nonce, also when the two hits came from the same group of interleaved nonces.
    job = scan.prepare(bytes(76), kernel)
    out = np.empty(1, dtype=np.uint32)
    tw = scan.target_words((1 << 256) - 1)
    pos, got = 10, []
    while pos < 17:
        hits, consumed = scan.scan_chunk(job, tw, pos, 17 - pos, out)
        got += hits
        pos += consumed
        assert consumed >= 1
    assert got == list(range(10, 17))


def test_threads_and_chunking_do_not_change_the_result(kernel):
    header = bytes(76)
    target = (1 << 250) - 1
    one = kernels.search(header, target, 5, 50_000, threads=1, kernel=kernel)
    assert kernels.search(header, target, 5, 50_000, threads=2, kernel=kernel) == one
    assert kernels.search(header, target, 5, 50_000, threads=7, kernel=kernel) == one
    job = scan.prepare(header, kernel)
    assert scan.scan(job, target, 5, 50_000, chunk=777) == one
    # A tiny output buffer makes scan_range stop early and resume without gaps.
    assert scan.scan(job, target, 5, 50_000, out=np.empty(2, dtype=np.uint32)) == one
    assert len(one) > 20


def test_every_nonce_when_the_target_is_the_maximum(kernel):
    header = bytes(range(76))
    assert kernels.search(header, (1 << 256) - 1, 2**32 - 10, 10, kernel=kernel) == list(range(2**32 - 10, 2**32))


def test_a_longer_range_matches_hashlib(kernel):
    header = bytes(range(1, 77))
    target = (1 << 246) - 1
    assert kernels.search(header, target, 123_456, 300_000, threads=1, kernel=kernel) == \
        expected(header, target, 123_456, 300_000)


@PROPERTY
@given(start=st.integers(0, 2**32 - 1), count=st.integers(0, 2**32), parts=st.integers(1, 64))
def test_split_range_covers_without_gaps(start, count, parts):
    count = min(count, 2**32 - start)
    pieces = scan.split_range(start, count, parts)
    pos = start
    for piece_start, n in pieces:
        assert piece_start == pos
        pos += n
    assert pos == start + count
    assert len(pieces) <= parts
    if count:
        assert all(n > 0 for _, n in pieces)
        assert max(n for _, n in pieces) - min(n for _, n in pieces) <= 1


@pytest.mark.parametrize("bad", [
    dict(header76=bytes(75)), dict(start=-1), dict(start=2**32 - 5, count=6), dict(count=-1), dict(target=1 << 256),
])
def test_bad_arguments_raise(bad):
    args = dict(header76=bytes(76), target=1, start=0, count=10, **{})
    args.update(bad)
    with pytest.raises(ValueError):
        kernels.search(**args)


def test_unknown_kernel_is_an_error():
    with pytest.raises(ValueError, match="unknown kernel"):
        scan.prepare(bytes(76), "avx1024")


def test_empty_range():
    assert kernels.search(bytes(76), (1 << 256) - 1, 123, 0) == []


# --- real blocks: the kernel finds each block's real nonce among 200,000 neighbours ---

def _real_headers():
    headers = []
    for name in ("bitcoin_mainnet_951658.json", "bitcoin_testnet4_40000.json", "bitcoin_signet_31500.json",
                 "mainnet_genesis.json"):
        d = json.loads((DATA / name).read_text())
        headers.append((name, bytes.fromhex(d["block"])[:80]))
    d = json.loads((DATA / "mainnet_125552_header.json").read_text())
    headers.append(("mainnet 125552", bytes.fromhex(d["header"])))
    rows = json.loads((DATA / "testnet3_blocks_blockfilters.json").read_text())[1:]
    headers += [(f"testnet3 {row[0]}", bytes.fromhex(row[2])[:80]) for row in rows]
    return headers


@pytest.mark.parametrize("name,raw", _real_headers(), ids=lambda x: x if isinstance(x, str) else "")
def test_finds_the_real_nonce(kernel, name, raw):
    header = BlockHeader.from_bytes(raw)
    target = bits_to_target(header.bits)
    start = max(0, min(header.nonce - 100_000, 2**32 - 200_000))
    found = kernels.search(header.prefix76(), target, start, 200_000, threads=2, kernel=kernel)
    assert header.nonce in found
    # Easy (testnet min-difficulty) targets hit more than once; every hit must be real.
    assert all(sha256d_int(header.prefix76(), n) <= target for n in found)
    if target < 1 << 224:
        assert found == [header.nonce]
