"""What LLVM made of the lane loop: how a reviewer checks that the scan is vectorized."""

from __future__ import annotations

import re
from collections import Counter

_LABEL = re.compile(r"\n(?=\.LBB\d+_\d+:)")
_INSTR = re.compile(r"^\s+([a-z][a-z0-9]*)\b", re.M)
_REG = re.compile(r"%([xyz]mm)\d+")
_WIDTH_BITS = {"zmm": 512, "ymm": 256, "xmm": 128}


def hot_loop_stats(asm: str) -> dict:
    """Counts for the largest basic block of `asm` (the unrolled lane loop body)."""
    block = max(_LABEL.split(asm), key=lambda b: len(_INSTR.findall(b)))
    instrs = Counter(_INSTR.findall(block))
    regs = Counter(_REG.findall(block))
    vector = sum(n for op, n in instrs.items() if op.startswith("v"))
    widest = max((_WIDTH_BITS[r] for r in regs), default=0)
    return {
        "instructions": sum(instrs.values()),
        "vector_instructions": vector,
        "scalar_instructions": sum(instrs.values()) - vector,
        "vector_width_bits": widest,
        "register_uses": dict(regs),
        "stack_accesses": len(re.findall(r"\(%rsp\)", block)),
        "top": dict(instrs.most_common(10)),
    }


def lane_loop_asm() -> str:
    """Assembly of scan_lanes, compiled afresh (numba does not keep asm for cached code)."""
    import numba
    import numpy as np

    from kernels import _sha256d_lanes as lanes
    from kernels.scan import BLOCK_LANES, prepare

    fresh = numba.njit(nogil=True, error_model="numpy")(lanes.scan_lanes.py_func)
    job = prepare(bytes(76), "lanes")
    hits = np.zeros(BLOCK_LANES, dtype=np.uint8)
    fresh(job.words, np.uint32(0), np.int64(BLOCK_LANES), np.uint32(0), hits)
    return fresh.inspect_asm(fresh.signatures[0])


def shani_asm() -> str:
    """Assembly of the SHA-NI scan (one compiled afresh, as above)."""
    import numba
    import numpy as np

    from kernels import shani
    from kernels.scan import prepare, target_words

    fresh = numba.njit(nogil=True, error_model="numpy")(shani.scan_range.py_func)
    job = prepare(bytes(76), "shani")
    fresh(job.words, job.midstate, job.tail, np.int64(0), np.int64(8), target_words(0), np.empty(1, dtype=np.uint32))
    return fresh.inspect_asm(fresh.signatures[0])


def sha_instruction_counts(asm: str) -> dict[str, int]:
    """How many of each x86 SHA instruction the code holds (all unrolled: per INTERLEAVE nonces)."""
    return {op: len(re.findall(rf"\b{op}\b", asm)) for op in ("sha256rnds2", "sha256msg1", "sha256msg2")}
