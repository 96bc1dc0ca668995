"""`miner bench`: the kernel's hash rate, with same-run references, on this machine.

References, measured in the same run so the ratios mean something on any machine:
  1. a Python loop of hashlib sha256d, one header per nonce;
  2. single-stream SHA-256: hashlib over a large buffer, divided by 128 bytes per nonce
     (two compressions): what a non-vectorized, SHA-NI-backed miner could reach.
Compile and cached-load times come from fresh processes with a throwaway numba cache,
so they are what a first and a second `miner` start pay.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from kernels import scan as kscan

# CPU flags worth reporting: the vector and SHA extensions the kernels can use.
INTERESTING_FLAGS = ("sse4_1", "avx", "avx2", "avx512f", "avx512bw", "avx512vl", "sha_ni", "bmi2")
# Buffer for the single-stream reference: large, so per-call overhead vanishes.
SINGLE_STREAM_BYTES = 16 << 20
# Nonces per kernel call while measuring (~0.1 s per call on one core).
BENCH_CHUNK = 1 << 22
_LOAD_PROBE = (
    "import time; t = time.perf_counter(); import kernels.scan as s; s.warm_up(); "
    "print(time.perf_counter() - t)"
)


@dataclass
class BenchResult:
    kernel_mhs_per_thread: float
    kernel_mhs_all: float
    threads: int
    hashlib_loop_mhs: float
    single_stream_mhs: float
    compile_s: float | None
    cached_load_s: float | None
    cpu_features: list[str]
    cpu_model: str
    ratio_per_thread_vs_single_stream: float
    ratio_per_thread_vs_hashlib_loop: float
    ratio_all_vs_per_thread: float
    seconds: float


def cpu_info() -> tuple[str, list[str]]:
    """(model name, interesting feature flags) from /proc/cpuinfo, or LLVM's view elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        import llvmlite.binding as llvm

        feats = {f[1:] for f in llvm.get_host_cpu_features().flatten().split(",") if f.startswith("+")}
        return llvm.get_host_cpu_name(), sorted(f for f in feats if f.replace(".", "_") in INTERESTING_FLAGS)
    model, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, [f for f in INTERESTING_FLAGS if f in flags]


def kernel_rate(threads: int, seconds: float) -> float:
    """MH/s of `threads` threads, each scanning its own part of the nonce space until the deadline."""
    job = kscan.prepare(os.urandom(76))
    kscan.scan(job, 0, 0, kscan.BLOCK_LANES)  # load or compile before the clock starts
    pieces = kscan.split_range(0, kscan.NONCE_SPACE, threads)

    def run(piece: tuple[int, int]) -> int:
        start, count = piece
        done, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            n = min(BENCH_CHUNK, count)
            kscan.scan(job, 0, start + done % (count - n + 1), n)  # target 0: no hits to collect
            done += n
        return done

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        total = sum(pool.map(run, pieces))
    return total / (time.perf_counter() - t0) / 1e6


def hashlib_loop_rate(seconds: float) -> float:
    """MH/s of the naive reference: sha256d of the whole header, per nonce, in Python."""
    prefix, sha = os.urandom(76), hashlib.sha256
    n, deadline = 0, time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < deadline:
        for nonce in range(n, n + 20_000):
            sha(sha(prefix + nonce.to_bytes(4, "little")).digest()).digest()
        n += 20_000
    return n / (time.perf_counter() - t0) / 1e6


def single_stream_rate(seconds: float) -> float:
    """MH/s-equivalent of one SHA-256 stream: bytes/s over a large buffer / 128 bytes per nonce."""
    buf = bytes(SINGLE_STREAM_BYTES)
    hashed, deadline = 0, time.perf_counter() + seconds
    t0 = time.perf_counter()
    while hashed == 0 or time.perf_counter() < deadline:
        hashlib.sha256(buf).digest()
        hashed += len(buf)
    return hashed / (time.perf_counter() - t0) / 128 / 1e6


def load_times() -> tuple[float, float]:
    """(cold compile, cached load) seconds from import to first scan, in fresh processes."""
    with tempfile.TemporaryDirectory(prefix="gridminer-numba-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        times = []
        for _ in range(2):  # first run compiles and fills the cache, second loads it
            out = subprocess.run([sys.executable, "-c", _LOAD_PROBE], env=env, check=True,
                                 capture_output=True, text=True)
            times.append(float(out.stdout.strip().splitlines()[-1]))
        return times[0], times[1]


def run_bench(seconds: float = 10.0, threads: int | None = None, measure_compile: bool = True,
              rounds: int = 5) -> BenchResult:
    """Rates are medians over `rounds` interleaved rounds, so a burst of noise (turbo, a
    neighbour on the host) hits one round of one figure, not a whole ratio."""
    threads = threads or kscan.default_threads()
    model, features = cpu_info()
    compile_s, cached_s = load_times() if measure_compile else (None, None)
    window = seconds / rounds
    samples: dict[str, list[float]] = {"stream": [], "one": [], "all": [], "loop": []}
    for _ in range(rounds):
        samples["stream"].append(single_stream_rate(0.15 * window))
        samples["one"].append(kernel_rate(1, 0.35 * window))
        samples["all"].append(kernel_rate(threads, 0.35 * window))
        samples["loop"].append(hashlib_loop_rate(0.15 * window))
    stream, per_thread, all_threads, loop = (statistics.median(samples[k]) for k in ("stream", "one", "all", "loop"))
    return BenchResult(
        kernel_mhs_per_thread=per_thread, kernel_mhs_all=all_threads, threads=threads,
        hashlib_loop_mhs=loop, single_stream_mhs=stream, compile_s=compile_s, cached_load_s=cached_s,
        cpu_features=features, cpu_model=model,
        ratio_per_thread_vs_single_stream=per_thread / stream,
        ratio_per_thread_vs_hashlib_loop=per_thread / loop,
        ratio_all_vs_per_thread=all_threads / per_thread,
        seconds=seconds,
    )


def format_text(r: BenchResult) -> str:
    def secs(x: float | None) -> str:
        return "skipped" if x is None else f"{x:6.2f} s"

    return "\n".join([
        f"gridminer bench: {r.cpu_model}; features: {' '.join(r.cpu_features) or 'none'}",
        f"  kernel, 1 thread        {r.kernel_mhs_per_thread:9.2f} MH/s   "
        f"{r.ratio_per_thread_vs_single_stream:5.2f}x single-stream, "
        f"{r.ratio_per_thread_vs_hashlib_loop:.0f}x hashlib loop",
        f"  {f'kernel, {r.threads} threads':<22}  {r.kernel_mhs_all:9.2f} MH/s   "
        f"{r.ratio_all_vs_per_thread:5.2f}x one thread",
        f"  ref 1: hashlib loop     {r.hashlib_loop_mhs:9.2f} MH/s   (Python loop, sha256d per nonce)",
        f"  ref 2: single stream    {r.single_stream_mhs:9.2f} MH/s   "
        f"(hashlib SHA-256 over {SINGLE_STREAM_BYTES >> 20} MiB / 128 bytes per nonce)",
        f"  JIT compile             {secs(r.compile_s)}   (fresh process, empty numba cache)",
        f"  cached load             {secs(r.cached_load_s)}   (fresh process, warm numba cache)",
    ])


def format_asm_stats(stats: dict) -> str:
    lines = [f"  hot loop: {stats['instructions']} instructions, {stats['vector_instructions']} vector, "
             f"{stats['scalar_instructions']} scalar; widest register {stats['vector_width_bits']} bits; "
             f"{stats['stack_accesses']} stack accesses (spills)",
             "  registers: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["register_uses"].items())),
             "  top: " + ", ".join(f"{k} {v}" for k, v in stats["top"].items())]
    return "\n".join(lines)


def main(args) -> int:
    result = run_bench(seconds=args.seconds, threads=args.threads, measure_compile=not args.no_compile)
    stats = None
    if args.asm_stats:
        from kernels.asm import hot_loop_stats, lane_loop_asm

        stats = hot_loop_stats(lane_loop_asm())
    if args.json:
        out = asdict(result)
        if stats is not None:
            out["asm_stats"] = stats
        print(json.dumps(out, indent=2))
    else:
        print(format_text(result))
        if stats is not None:
            print(format_asm_stats(stats))
    return 0
