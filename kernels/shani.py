"""SHA-256d nonce scan on the x86 SHA extensions (SHA-NI), from numba.

numba has no SHA-NI, so `_top_words_le` is a numba intrinsic whose body is LLVM IR built
here with llvmlite: it calls `llvm.x86.sha256rnds2` (two rounds), `llvm.x86.sha256msg1`
and `llvm.x86.sha256msg2` (message schedule) on `<4 x i32>` vectors. The state lives in
two registers in the instructions' layout (element 3 first):

    abef = [F, E, B, A]   cdgh = [H, G, D, C]      (element 0 .. element 3)
    rnds2(cdgh, abef, wk) -> the new abef after two rounds (wk elements 0, 1 = W+K);
                             the new cdgh is the old abef

One call hashes INTERLEAVE nonces, their instructions interleaved, so that the SHA
unit's latency (one rnds2 waits for the previous one) is hidden by independent work:

    header 0..63 ──► midstate (job, pure Python)
    block 2 = tail0 tail1 tail2 nonce | padding      rounds 0, 1 need no nonce: done
                                                      once per job (job words 0..7)
    hash 1: rounds 2..63  = 31 rnds2 per nonce, schedule words that do not involve
            the nonce are folded to constants while the IR is built
    hash 2: IV (constant) over hash 1 + padding, rounds 0..61 only = 31 rnds2: after
            round 61, the F of abef is the E of round 60, and H7 = IV[7] + that E
    bswap(H7) <= target's top word ──► bit k of the returned mask

Every hit of the mask is rechecked exactly (the full 256-bit comparison) by the caller,
as with the lane kernel. Only a CPU with the `sha_ni` flag may call this: paths.py checks.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from kernels import sha256 as ref
from kernels.exact import meets_target, sha256d_words

# Nonces one intrinsic call hashes side by side. Measured on a Zen 3 EPYC: 2 streams hide
# the rnds2 latency (4 cycles, one issued every 2); 3 or 4 run out of the 16 xmm registers
# the legacy-encoded SHA instructions can use, and spill.
INTERLEAVE = 2
# Layout of the per-job words (u32): four 4-word vectors and the scalars after them.
W_ABEF2, W_CDGH2, W_MID_ABEF, W_MID_CDGH, W_MSG0, W_WK23 = 0, 4, 8, 12, 16, 20
JOB_WORDS = 24

MASK32 = 0xFFFFFFFF
_I32 = ir.IntType(32)
_V4 = ir.VectorType(_I32, 4)


def abef_cdgh(state: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """An 8-word state (A..H) in the SHA instructions' two-register layout."""
    a, b, c, d, e, f, g, h = state
    return [f, e, b, a], [h, g, d, c]


def job_words(midstate: tuple[int, ...], tail: tuple[int, ...]) -> np.ndarray:
    """Everything nonce-independent this kernel reads, once per job (pure Python)."""
    s = tuple(midstate)
    for t in range(2):  # rounds 0 and 1 of hash 1 read only tail0, tail1
        s = ref.round_step(s, (ref.K[t] + tail[t]) & MASK32)
    abef2, cdgh2 = abef_cdgh(s)
    mid_abef, mid_cdgh = abef_cdgh(tuple(midstate))
    msg0 = [tail[0], tail[1], tail[2], 0]  # element 3 is the nonce's, inserted per call
    wk23 = [(tail[2] + ref.K[2]) & MASK32, ref.K[3], 0, 0]  # element 1 gets + the nonce
    words = abef2 + cdgh2 + mid_abef + mid_cdgh + msg0 + wk23
    assert len(words) == JOB_WORDS
    return np.array(words, dtype=np.uint32)


# --- SHA-256 message-schedule instructions, for folding constant vectors while building --

def _py_msg1(x: tuple, y: tuple) -> tuple:
    w = list(x) + [y[0]]
    return tuple((w[i] + ref.small_sigma0(w[i + 1])) & MASK32 for i in range(4))


def _py_msg2(x: tuple, y: tuple) -> tuple:
    w16 = (x[0] + ref.small_sigma1(y[2])) & MASK32
    w17 = (x[1] + ref.small_sigma1(y[3])) & MASK32
    w18 = (x[2] + ref.small_sigma1(w16)) & MASK32
    w19 = (x[3] + ref.small_sigma1(w17)) & MASK32
    return (w16, w17, w18, w19)


class _Builder:
    """Vector ops over N independent streams; a value is a tuple of 4 ints (a constant,
    folded here) or an LLVM value. Each op is emitted once per stream, side by side."""

    def __init__(self, builder: ir.IRBuilder) -> None:
        self.b = builder
        mod = builder.module
        v3 = ir.FunctionType(_V4, [_V4, _V4, _V4])
        v2 = ir.FunctionType(_V4, [_V4, _V4])
        self._rnds2 = cgutils.get_or_insert_function(mod, v3, "llvm.x86.sha256rnds2")
        self._msg1 = cgutils.get_or_insert_function(mod, v2, "llvm.x86.sha256msg1")
        self._msg2 = cgutils.get_or_insert_function(mod, v2, "llvm.x86.sha256msg2")
        self._bswap = cgutils.get_or_insert_function(mod, ir.FunctionType(_I32, [_I32]), "llvm.bswap.i32")

    @staticmethod
    def const(v) -> ir.Value:
        return ir.Constant(_V4, [ir.Constant(_I32, x & MASK32) for x in v]) if isinstance(v, tuple) else v

    def add(self, x, y):
        if isinstance(x, tuple) and isinstance(y, tuple):
            return tuple((p + q) & MASK32 for p, q in zip(x, y))
        for lit_, other in ((x, y), (y, x)):
            if lit_ == (0, 0, 0, 0):
                return other
        return self.b.add(self.const(x), self.const(y))

    def shuffle(self, x, y, mask: list[int]):
        if isinstance(x, tuple) and isinstance(y, tuple):
            both = x + y
            return tuple(both[i] for i in mask)
        return self.b.shuffle_vector(self.const(x), self.const(y), ir.Constant(ir.VectorType(_I32, len(mask)), mask))

    def msg1(self, x, y):
        if isinstance(x, tuple) and isinstance(y, tuple):
            return _py_msg1(x, y)
        return self.b.call(self._msg1, [self.const(x), self.const(y)])

    def msg2(self, x, y):
        if isinstance(x, tuple) and isinstance(y, tuple):
            return _py_msg2(x, y)
        return self.b.call(self._msg2, [self.const(x), self.const(y)])

    def rnds2(self, abef, cdgh, wk):
        """Two rounds: (abef, cdgh) -> (new abef, old abef)."""
        return self.b.call(self._rnds2, [self.const(cdgh), self.const(abef), self.const(wk)]), abef

    def bswap(self, x: ir.Value) -> ir.Value:
        return self.b.call(self._bswap, [x])


def _k(g: int) -> tuple:
    return tuple(ref.K[4 * g:4 * g + 4])


def _schedule(vb: _Builder, msgs: list, g: int):
    """Message words 4g..4g+3 from the four groups before them."""
    x = vb.msg1(msgs[g - 4], msgs[g - 3])
    x = vb.add(x, vb.shuffle(msgs[g - 2], msgs[g - 1], [1, 2, 3, 4]))  # W[t-7]
    return vb.msg2(x, msgs[g - 1])


def _rounds(vbs: _Builder, states: list, msgs_per_stream: list, first_group: int, last_round: int) -> list:
    """Run groups first_group.. until `last_round` (inclusive, odd) on every stream, in lockstep."""
    n = len(states)
    for g in range(first_group, (last_round + 1 + 3) // 4):
        for s in range(n):
            if g >= 4 and len(msgs_per_stream[s]) <= g:
                msgs_per_stream[s].append(_schedule(vbs, msgs_per_stream[s], g))
        wks = [vbs.add(msgs_per_stream[s][g], _k(g)) for s in range(n)]
        states = [vbs.rnds2(*states[s], wks[s]) for s in range(n)]
        if 4 * g + 3 <= last_round:
            his = [vbs.shuffle(wk, wk, [2, 3, 2, 3]) for wk in wks]
            states = [vbs.rnds2(*states[s], his[s]) for s in range(n)]
    return states


def _emit_top_words_le(builder: ir.IRBuilder, words_ptr: ir.Value, nonce: ir.Value, target_hi: ir.Value,
                       streams: int) -> ir.Value:
    """IR for the mask of streams whose bswap(H7) <= target_hi; nonces nonce, nonce+1, ..."""
    vb = _Builder(builder)
    b = builder

    def job_vec(offset: int) -> ir.Value:
        p = b.bitcast(b.gep(words_ptr, [ir.Constant(ir.IntType(64), offset)]), _V4.as_pointer())
        return b.load(p, align=4)

    abef2, cdgh2 = job_vec(W_ABEF2), job_vec(W_CDGH2)
    mid_abef, mid_cdgh = job_vec(W_MID_ABEF), job_vec(W_MID_CDGH)
    msg0_job, wk23_job = job_vec(W_MSG0), job_vec(W_WK23)

    # Hash 1, block 2: rounds 2, 3 from the job's wk23 with the nonce's W3 + K3 added in.
    nonces_be = [vb.bswap(b.add(nonce, ir.Constant(_I32, s))) for s in range(streams)]
    msgs = [[b.insert_element(msg0_job, w3, ir.Constant(_I32, 3)), (0x80000000, 0, 0, 0), (0, 0, 0, 0),
             (0, 0, 0, 640)] for w3 in nonces_be]
    states = []
    for s in range(streams):
        k3 = b.extract_element(wk23_job, ir.Constant(_I32, 1))
        wk23 = b.insert_element(wk23_job, b.add(k3, nonces_be[s]), ir.Constant(_I32, 1))
        states.append(vb.rnds2(abef2, cdgh2, wk23))
    states = _rounds(vb, states, msgs, 1, 63)
    hash1 = [(vb.add(abef, mid_abef), vb.add(cdgh, mid_cdgh)) for abef, cdgh in states]

    # Hash 2: one block, the IV, hash 1 then constant padding for 256 bits.
    iv_abef, iv_cdgh = (tuple(v) for v in abef_cdgh(ref.IV))
    msgs2 = [[vb.shuffle(abef, cdgh, [3, 2, 7, 6]), vb.shuffle(abef, cdgh, [1, 0, 5, 4]),
              (0x80000000, 0, 0, 0), (0, 0, 0, 256)] for abef, cdgh in hash1]
    states2 = _rounds(vb, [(iv_abef, iv_cdgh)] * streams, msgs2, 0, 61)
    h7s = [b.add(b.extract_element(vb.const(abef), ir.Constant(_I32, 0)), ir.Constant(_I32, ref.IV[7]))
           for abef, _ in states2]

    mask = ir.Constant(_I32, 0)
    for s, h7 in enumerate(h7s):
        ok = b.icmp_unsigned("<=", vb.bswap(h7), target_hi)
        mask = b.or_(mask, b.shl(b.zext(ok, _I32), ir.Constant(_I32, s)))
    return mask


def _make_top_words_le(streams: int):
    @intrinsic
    def top_words_le(typingctx, words, nonce, target_hi):
        """Bit s set where bswap(H7) of sha256d(header, nonce + s) <= target_hi, s < streams."""
        if not (isinstance(words, types.Array) and words.dtype == types.uint32 and words.layout == "C"):
            return None
        sig = types.uint32(words, types.uint32, types.uint32)

        def codegen(context, builder, signature, args):
            arr = context.make_array(signature.args[0])(context, builder, args[0])
            return _emit_top_words_le(builder, arr.data, args[1], args[2], streams)

        return sig, codegen

    return top_words_le


_top_words_le = _make_top_words_le(INTERLEAVE)


@njit(cache=True, nogil=True, error_model="numpy")
def scan_range(words, midstate, tail, start, count, target_be, out):
    """Scan nonces [start, start+count) on SHA-NI; same contract as the lane kernel's scan_range.

    Returns (hits written, nonces consumed); stops early, before a hit that does not fit,
    when `out` is full. A final group shorter than INTERLEAVE hashes past the range
    (wrapping at 2**32) and ignores those lanes.
    """
    n_out = 0
    pos = np.int64(0)
    target_hi = target_be[0]
    while pos < count:
        base = start + pos
        mask = _top_words_le(words, np.uint32(base & 0xFFFFFFFF), target_hi)
        if mask:
            for k in range(min(np.int64(INTERLEAVE), count - pos)):
                if (mask >> np.uint32(k)) & np.uint32(1) and meets_target(sha256d_words(midstate, tail, base + k),
                                                                          target_be):
                    if n_out == out.shape[0]:
                        return n_out, pos + k
                    out[n_out] = base + k
                    n_out += 1
        pos += INTERLEAVE
    return n_out, min(pos, count)
