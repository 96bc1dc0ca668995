"""Writes kernels/_sha256d_lanes.py: the SHA-256d nonce scan as straight-line numba code.

Run `python -m kernels.codegen` after changing this file; a test fails when the committed
module differs from what this generator writes. The module is generated into a real file
(not exec'd) so numba's on-disk cache can hold it.

Every 32-bit value of the two compressions is one of three kinds:

    lit   known now, while generating (round constants, padding words, the IV)
    job   fixed for one job: midstate, the header tail, every value computed only from
          those; emitted into `job_constants()`, which runs once per job
    lane  depends on the nonce; emitted into the body of `scan_lanes()`'s loop

Operations fold literals, hoist job-only work out of the lane loop, and merge all the
constant terms of a sum into one precomputed addend. A final liveness pass drops every
line the tested output does not need: that is what cuts the last rounds of the second
hash short (its rounds 58-60 need no `a`, and nothing after the `e` of round 60 is
computed), and what drops message-schedule words that are never read.

    header bytes 0..63  ──► midstate (job)
    header 64..75 (3 words, job) + nonce (lane) + padding (lit) ──► hash 1, block 2
    hash 1 (8 lane words) + padding (lit) ──► hash 2, rounds 0..60 only
    H7 = IV[7] + e after round 60 ──► bswap(H7) <= target's top word ──► hits[i]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from kernels import sha256 as ref

MASK32 = 0xFFFFFFFF
TARGET = Path(__file__).with_name("_sha256d_lanes.py")


@dataclass(frozen=True)
class Val:
    kind: str  # "lit" | "job" | "lane"
    ref: int | str

    def render(self) -> str:
        return f"U(0x{self.ref:08x})" if self.kind == "lit" else str(self.ref)


def lit(x: int) -> Val:
    return Val("lit", x & MASK32)


def _rotr(x: str, n: int) -> str:
    return f"(({x} >> U({n})) | ({x} << U({32 - n})))"


@dataclass
class Line:
    name: str
    expr: str
    deps: tuple[str, ...]


@dataclass
class Emitter:
    job_lines: list[Line] = field(default_factory=list)
    lane_lines: list[Line] = field(default_factory=list)
    _names: set[str] = field(default_factory=set)

    def _emit(self, kind: str, hint: str, expr: str, args: tuple[Val, ...]) -> Val:
        name = hint
        n = 1
        while name in self._names:
            n += 1
            name = f"{hint}_{n}"
        self._names.add(name)
        deps = tuple(a.ref for a in args if a.kind != "lit")
        (self.lane_lines if kind == "lane" else self.job_lines).append(Line(name, f"U({expr})", deps))
        return Val(kind, name)

    def bind(self, kind: str, name: str) -> Val:
        self._names.add(name)
        return Val(kind, name)

    def op(self, hint: str, py, render, *args: Val) -> Val:
        """A non-additive operation: folded when all inputs are literals."""
        if all(a.kind == "lit" for a in args):
            return lit(py(*(a.ref for a in args)))
        kind = "lane" if any(a.kind == "lane" for a in args) else "job"
        return self._emit(kind, hint, render(*(a.render() for a in args)), args)

    def add(self, hint: str, *args: Val) -> Val:
        """Sum mod 2**32; all constant terms are merged into one (hoisted) addend."""
        literal = sum(a.ref for a in args if a.kind == "lit") & MASK32
        jobs = [a for a in args if a.kind == "job"]
        lanes = [a for a in args if a.kind == "lane"]
        consts = jobs + ([lit(literal)] if literal else [])
        if not jobs and not lanes:
            return lit(literal)
        if not lanes:
            if len(consts) == 1:
                return consts[0]
            return self._emit("job", hint, " + ".join(c.render() for c in consts), tuple(consts))
        if len(consts) > 1:
            consts = [self._emit("job", hint + "_k", " + ".join(c.render() for c in consts), tuple(consts))]
        terms = tuple(lanes + consts)
        if len(terms) == 1:
            return terms[0]
        return self._emit("lane", hint, " + ".join(t.render() for t in terms), terms)

    # SHA-256 functions (FIPS 180-4 §4.1.2), each one line of generated code.
    def big_sigma0(self, hint: str, x: Val) -> Val:
        return self.op(hint, ref.big_sigma0, lambda v: " ^ ".join(_rotr(v, n) for n in (2, 13, 22)), x)

    def big_sigma1(self, hint: str, x: Val) -> Val:
        return self.op(hint, ref.big_sigma1, lambda v: " ^ ".join(_rotr(v, n) for n in (6, 11, 25)), x)

    def small_sigma0(self, hint: str, x: Val) -> Val:
        return self.op(hint, ref.small_sigma0, lambda v: f"{_rotr(v, 7)} ^ {_rotr(v, 18)} ^ ({v} >> U(3))", x)

    def small_sigma1(self, hint: str, x: Val) -> Val:
        return self.op(hint, ref.small_sigma1, lambda v: f"{_rotr(v, 17)} ^ {_rotr(v, 19)} ^ ({v} >> U(10))", x)

    def ch(self, hint: str, e: Val, f: Val, g: Val) -> Val:
        # g ^ (e & (f ^ g)) needs no NOT, which numba would widen; AVX-512 makes it one vpternlogd.
        return self.op(hint, ref.ch, lambda e_, f_, g_: f"{g_} ^ ({e_} & ({f_} ^ {g_}))", e, f, g)

    def maj(self, hint: str, a: Val, b: Val, c: Val) -> Val:
        return self.op(hint, ref.maj, lambda a_, b_, c_: f"({a_} & {b_}) | ({c_} & ({a_} | {b_}))", a, b, c)

    def bswap(self, hint: str, x: Val) -> Val:
        def render(v: str) -> str:
            return (f"({v} << U(24)) | (({v} << U(8)) & U(0x00ff0000)) | "
                    f"(({v} >> U(8)) & U(0x0000ff00)) | ({v} >> U(24))")
        return self.op(hint, lambda v: int.from_bytes(v.to_bytes(4, "little"), "big"), render, x)

    def compress(self, prefix: str, state: list[Val], block: list[Val], rounds: int) -> list[Val]:
        """`rounds` rounds of one compression; returns the working state (before the feed-forward)."""
        w = list(block)

        def word(t: int) -> Val:
            while len(w) <= t:
                i = len(w)
                w.append(self.add(f"{prefix}w{i}",
                                  self.small_sigma1(f"{prefix}s1w{i}", w[i - 2]), w[i - 7],
                                  self.small_sigma0(f"{prefix}s0w{i}", w[i - 15]), w[i - 16]))
            return w[t]

        a, b, c, d, e, f, g, h = state
        for t in range(rounds):
            r = t + 1  # names give the round after which the value holds
            t1 = self.add(f"{prefix}t1_{r}", h, self.big_sigma1(f"{prefix}S1_{r}", e),
                          self.ch(f"{prefix}ch{r}", e, f, g), lit(ref.K[t]), word(t))
            t2 = self.add(f"{prefix}t2_{r}", self.big_sigma0(f"{prefix}S0_{r}", a),
                          self.maj(f"{prefix}maj{r}", a, b, c))
            a, b, c, d, e, f, g, h = (self.add(f"{prefix}a{r}", t1, t2), a, b, c,
                                      self.add(f"{prefix}e{r}", d, t1), e, f, g)
        return [a, b, c, d, e, f, g, h]


def build() -> tuple[Emitter, list[str], Val]:
    """Symbolically run sha256d over one header; returns the emitter, job inputs and H7."""
    em = Emitter()
    mid = [em.bind("job", f"mid{i}") for i in range(8)]
    tail = [em.bind("job", f"tail{i}") for i in range(3)]
    nonce_le = em.bind("lane", "nonce")
    # Block 2 of the 80-byte header: 3 tail words, the nonce (its little-endian bytes read
    # as a big-endian word), then padding for a 640-bit message.
    block2 = tail + [em.bswap("h1w3", nonce_le), lit(0x80000000)] + [lit(0)] * 10 + [lit(640)]
    s = em.compress("h1", mid, block2, 64)
    hash1 = [em.add(f"h1out{i}", mid[i], s[i]) for i in range(8)]
    # The second hash is of the 32-byte first hash: one block, IV state, fixed padding.
    block3 = hash1 + [lit(0x80000000)] + [lit(0)] * 6 + [lit(256)]
    s2 = em.compress("h2", [lit(x) for x in ref.IV], block3, 61)
    # After round 63, h holds the e of round 60 (three shifts along e, f, g, h).
    h7 = em.add("h7", lit(ref.IV[7]), s2[4])
    inputs = [v.ref for v in mid + tail]
    return em, inputs, h7


def _live(lines: list[Line], wanted: set[str]) -> list[Line]:
    keep = []
    for line in reversed(lines):
        if line.name in wanted:
            keep.append(line)
            wanted.update(line.deps)
    return keep[::-1]


def render_module() -> str:
    em, inputs, h7 = build()
    lane = _live(em.lane_lines, {h7.ref})
    lane_names = {line.name for line in lane} | {"nonce"}
    job_needed = sorted({d for line in lane for d in line.deps if d not in lane_names},
                        key=lambda n: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", n)])
    job = _live(em.job_lines, set(job_needed))
    ind = " " * 8
    out = [
        '"""GENERATED by `python -m kernels.codegen` from kernels/codegen.py: do not edit."""',
        "",
        "import numpy as np",
        "from numba import njit",
        "",
        "U = np.uint32",
        f"JOB_WORDS = {len(job_needed)}  # length of the array job_constants() fills",
        f"LANE_OPS = {len(lane)}  # generated lines per nonce (each one to a few vector ops)",
        "",
        "",
        "@njit(cache=True, nogil=True, error_model='numpy')",
        "def job_constants(mid, tail, jc):",
        '    """Everything nonce-independent, once per job: mid = midstate words, tail = header words 16..18."""',
    ]
    out += [f"    {name} = mid[{i}]" for i, name in enumerate(inputs[:8])]
    out += [f"    {name} = tail[{i}]" for i, name in enumerate(inputs[8:])]
    out += [f"    {line.name} = {line.expr}" for line in job]
    out += [f"    jc[{i}] = {name}" for i, name in enumerate(job_needed)]
    out += [
        "",
        "",
        "@njit(cache=True, nogil=True, error_model='numpy')",
        "def scan_lanes(jc, nonce_base, count, target_hi, hits):",
        '    """hits[i] = 1 where the top word of sha256d(header, nonce_base + i) <= target_hi.',
        "",
        "    One straight-line body with no branch, so LLVM vectorizes the loop across nonces.",
        "    Nothing 64-bit lives in the loop (no counter, no reduction): LLVM sizes its vectors",
        "    by the widest type it sees, and one i64 would halve the lanes.",
        '    """',
    ]
    out += [f"    {name} = jc[{i}]" for i, name in enumerate(job_needed)]
    out += [
        "    for i in range(count):",
        f"{ind}nonce = U(nonce_base + i)",
    ]
    out += [f"{ind}{line.name} = {line.expr}" for line in lane]
    out += [
        f"{ind}ok = U((h7 << U(24)) | ((h7 << U(8)) & U(0x00ff0000)) | ((h7 >> U(8)) & U(0x0000ff00)) | (h7 >> U(24))) <= target_hi",
        f"{ind}hits[i] = ok",
        "",
    ]
    return "\n".join(out)


def main() -> None:
    TARGET.write_text(render_module())
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
