"""The exact check every path's candidates go through: a scalar sha256d and the 256-bit compare.

Fast paths filter on the hash's top word only; each nonce they flag is recomputed here in
full and compared as a 256-bit integer, so no path can report a nonce that misses the target.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kernels import sha256 as ref

_K = np.array(ref.K, dtype=np.uint32)
_IV = np.array(ref.IV, dtype=np.uint32)


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
