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


# One numba function per concept and no small helpers: each njit helper is a compile of
# its own (per signature), and the first start pays for every one of them.
@njit(cache=True, nogil=True, error_model="numpy")
def _compress(state, w):
    """Plain loop SHA-256 compression (scalar): used only for candidates, so clarity wins."""
    u = np.uint32
    for t in range(16, 64):
        x, y = w[t - 15], w[t - 2]
        s0 = ((x >> u(7)) | (x << u(25))) ^ ((x >> u(18)) | (x << u(14))) ^ (x >> u(3))
        s1 = ((y >> u(17)) | (y << u(15))) ^ ((y >> u(19)) | (y << u(13))) ^ (y >> u(10))
        w[t] = u(w[t - 16] + s0 + w[t - 7] + s1)
    a, b, c, d, e, f, g, h = state[0], state[1], state[2], state[3], state[4], state[5], state[6], state[7]
    for t in range(64):
        big_s1 = ((e >> u(6)) | (e << u(26))) ^ ((e >> u(11)) | (e << u(21))) ^ ((e >> u(25)) | (e << u(7)))
        ch = g ^ (e & (f ^ g))
        t1 = u(h + big_s1 + ch + _K[t] + w[t])
        big_s0 = ((a >> u(2)) | (a << u(30))) ^ ((a >> u(13)) | (a << u(19))) ^ ((a >> u(22)) | (a << u(10)))
        maj = (a & b) | (c & (a | b))
        t2 = u(big_s0 + maj)
        h, g, f, e, d, c, b, a = g, f, e, u(d + t1), c, b, a, u(t1 + t2)
    out = np.empty(8, dtype=np.uint32)
    out[0], out[1], out[2], out[3] = state[0] + a, state[1] + b, state[2] + c, state[3] + d
    out[4], out[5], out[6], out[7] = state[4] + e, state[5] + f, state[6] + g, state[7] + h
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def sha256d_words(midstate, tail, nonce):
    """Final state words H0..H7 of sha256d(header76 + nonce as little-endian u32)."""
    w = np.zeros(64, dtype=np.uint32)
    w[0], w[1], w[2] = tail[0], tail[1], tail[2]
    n = np.uint32(nonce)
    w[3] = np.uint32((n << np.uint32(24)) | ((n << np.uint32(8)) & np.uint32(0x00FF0000))
                     | ((n >> np.uint32(8)) & np.uint32(0x0000FF00)) | (n >> np.uint32(24)))
    w[4] = np.uint32(0x80000000)
    w[15] = np.uint32(640)
    first = _compress(midstate, w)
    w2 = np.zeros(64, dtype=np.uint32)
    for i in range(8):  # a loop, not w2[:8] = first: numba's slice assignment takes seconds to compile
        w2[i] = first[i]
    w2[8] = np.uint32(0x80000000)
    w2[15] = np.uint32(256)
    return _compress(_IV, w2)


@njit(cache=True, nogil=True, error_model="numpy")
def meets_target(state, target_be):
    """The hash (state words as bytes) read little-endian, <= target (words most significant first)."""
    u = np.uint32
    for i in range(8):
        x = state[7 - i]
        # u(...): numba widens uint32 shifts, and bits past 32 would break the comparison.
        word = u((x << u(24)) | ((x << u(8)) & u(0x00FF0000)) | ((x >> u(8)) & u(0x0000FF00)) | (x >> u(24)))
        if word != target_be[i]:
            return word < target_be[i]
    return True
