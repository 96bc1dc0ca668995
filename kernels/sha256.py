"""Readable pure-Python SHA-256 (FIPS 180-4): the oracle every fast kernel is tested against.

Words are Python ints in 0..2**32-1; a 64-byte block is read as sixteen big-endian words,
as the standard says. Nothing here is fast, and nothing here should be.
"""

from __future__ import annotations

import struct

MASK32 = 0xFFFFFFFF

# First 32 bits of the fractional parts of the cube roots of the first 64 primes.
K = (
    0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4, 0xAB1C5ED5,
    0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE, 0x9BDC06A7, 0xC19BF174,
    0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F, 0x4A7484AA, 0x5CB0A9DC, 0x76F988DA,
    0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7, 0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967,
    0x27B70A85, 0x2E1B2138, 0x4D2C6DFC, 0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85,
    0xA2BFE8A1, 0xA81A664B, 0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070,
    0x19A4C116, 0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
    0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7, 0xC67178F2,
)

# First 32 bits of the fractional parts of the square roots of the first 8 primes.
IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)


def rotr(x: int, n: int) -> int:
    return ((x >> n) | (x << (32 - n))) & MASK32


def big_sigma0(x: int) -> int:
    return rotr(x, 2) ^ rotr(x, 13) ^ rotr(x, 22)


def big_sigma1(x: int) -> int:
    return rotr(x, 6) ^ rotr(x, 11) ^ rotr(x, 25)


def small_sigma0(x: int) -> int:
    return rotr(x, 7) ^ rotr(x, 18) ^ (x >> 3)


def small_sigma1(x: int) -> int:
    return rotr(x, 17) ^ rotr(x, 19) ^ (x >> 10)


def ch(e: int, f: int, g: int) -> int:
    return (e & f) ^ (~e & g & MASK32)


def maj(a: int, b: int, c: int) -> int:
    return (a & b) ^ (a & c) ^ (b & c)


def expand(block_words: tuple[int, ...] | list[int]) -> list[int]:
    """The 64-word message schedule of one block."""
    w = list(block_words)
    for t in range(16, 64):
        w.append((small_sigma1(w[t - 2]) + w[t - 7] + small_sigma0(w[t - 15]) + w[t - 16]) & MASK32)
    return w


def round_step(state: tuple[int, ...], k_plus_w: int) -> tuple[int, ...]:
    """One compression round; `k_plus_w` is K[t] + W[t] (mod 2**32)."""
    a, b, c, d, e, f, g, h = state
    t1 = (h + big_sigma1(e) + ch(e, f, g) + k_plus_w) & MASK32
    t2 = (big_sigma0(a) + maj(a, b, c)) & MASK32
    return ((t1 + t2) & MASK32, a, b, c, (d + t1) & MASK32, e, f, g)


def compress(state: tuple[int, ...], block: bytes) -> tuple[int, ...]:
    """SHA-256 compression of one 64-byte block into an 8-word state."""
    if len(block) != 64:
        raise ValueError(f"a SHA-256 block is 64 bytes, got {len(block)}")
    w = expand(struct.unpack(">16I", block))
    s = tuple(state)
    for t in range(64):
        s = round_step(s, (K[t] + w[t]) & MASK32)
    return tuple((x + y) & MASK32 for x, y in zip(state, s))


def pad(message: bytes) -> bytes:
    """Message + 0x80 + zeros + 64-bit big-endian bit length, to a multiple of 64 bytes."""
    zeros = (55 - len(message)) % 64
    return message + b"\x80" + b"\x00" * zeros + struct.pack(">Q", 8 * len(message))


def state_to_bytes(state: tuple[int, ...]) -> bytes:
    return struct.pack(">8I", *state)


def sha256(message: bytes) -> bytes:
    padded = pad(message)
    state = IV
    for i in range(0, len(padded), 64):
        state = compress(state, padded[i:i + 64])
    return state_to_bytes(state)


def sha256d(message: bytes) -> bytes:
    return sha256(sha256(message))


def midstate(first_block: bytes) -> tuple[int, ...]:
    """State after compressing the header's first 64 bytes: the same for every nonce of a job."""
    return compress(IV, first_block)
