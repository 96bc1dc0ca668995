"""`miner bench`: every kernel path's hash rate, with same-run references, on this machine.

References, measured in the same run so the ratios mean something on any machine:
  1. a Python loop of hashlib sha256d, one header per nonce;
  2. single-stream SHA-256: hashlib over a large buffer, divided by 128 bytes per nonce
     (two compressions): what a non-interleaved, SHA-NI-backed miner could reach;
  3. pooler's cpuminer (`minerd --benchmark -a sha256d -t 1`) when `minerd` is on PATH.
Every path this CPU can run is measured on one thread; the chosen path also on all
threads. Compile and cached-load times come from fresh processes with a throwaway numba
cache, so they are what a first and a second `miner` start pay.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from kernels import paths
from kernels import scan as kscan
from miner.stopping import run_stoppable

# CPU flags worth reporting: the vector and SHA extensions the kernels can use.
INTERESTING_FLAGS = ("sse4_1", "avx", "avx2", "avx512f", "avx512bw", "avx512vl", "sha_ni", "bmi2")
# Buffer for the single-stream reference: large, so per-call overhead vanishes.
SINGLE_STREAM_BYTES = 16 << 20
# How long minerd runs: it reports after ~1 s (warm-up, ignored), then every ~5 s.
MINERD_SECONDS = 12.0
_LOAD_PROBE = (
    "import time; t = time.perf_counter(); import kernels.scan as s; s.warm_up(); "
    "print(time.perf_counter() - t)"
)
# A child of processes_rate(): waits for a wall-clock start so all children hash at once.
_PROCESS_PROBE = (
    "import sys, time; import kernels.scan as s; k = sys.argv[1]; s.kernel_rate(k, 0.01); "
    "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); print(s.kernel_rate(k, float(sys.argv[3])))"
)
# Head start the processes_rate() children get to import and load the kernel (seconds).
PROCESS_START_DELAY = 4.0
_MINERD_THREAD_RATE = re.compile(r"thread 0: \d+ hashes, ([0-9.]+) khash/s")


@dataclass
class PathFigures:
    mhs_per_thread: float
    ratio_vs_single_stream: float
    compile_s: float | None
    cached_load_s: float | None


@dataclass
class BenchResult:
    kernel: str  # the path this machine mines with
    kernel_reason: str
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
    paths: dict[str, PathFigures] = field(default_factory=dict)  # every path this CPU runs
    paths_skipped: dict[str, str] = field(default_factory=dict)  # path -> why it cannot run here
    minerd_mhs_per_thread: float | None = None
    minerd_note: str = ""
    ratio_per_thread_vs_minerd: float | None = None
    processes_mhs_all: float | None = None  # `threads` single-thread processes at once
    ratio_processes_vs_per_thread: float | None = None


def cpu_info() -> tuple[str, list[str]]:
    """(model name, interesting feature flags)."""
    flags = paths.cpu_flags()
    return paths.cpu_model(), [f for f in INTERESTING_FLAGS if f in flags]


def kernel_rate(threads: int, seconds: float, kernel: str | None = None) -> float:
    """MH/s of `threads` threads of `kernel` (default: this machine's), each on its own part of the nonce space."""
    return kscan.kernel_rate(kernel or kscan.chosen_kernel().kernel, seconds, threads=threads)


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


def load_times(kernel: str | None = None) -> tuple[float, float]:
    """(cold compile, cached load) seconds from import to first scan, in fresh processes."""
    with tempfile.TemporaryDirectory(prefix="gridminer-numba-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, GRIDMINER_CACHE_DIR=cache)
        if kernel:
            env[paths.ENV_VAR] = kernel
        times = []
        for _ in range(2):  # first run compiles and fills the cache, second loads it
            out = subprocess.run([sys.executable, "-c", _LOAD_PROBE], env=env, check=True,
                                 capture_output=True, text=True)
            times.append(float(out.stdout.strip().splitlines()[-1]))
        return times[0], times[1]


def processes_rate(n: int, seconds: float, kernel: str) -> float:
    """MH/s of `n` single-thread processes hashing at the same time: what the cores give with
    nothing shared, the ceiling for `n` threads of one process."""
    start = time.time() + PROCESS_START_DELAY
    env = dict(os.environ, **{paths.ENV_VAR: kernel})
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", _PROCESS_PROBE, kernel, str(start), str(seconds)],
                                          env=env, stdout=subprocess.PIPE, text=True))
        return sum(float(p.communicate()[0].strip().splitlines()[-1]) for p in procs)
    finally:
        _kill_all(procs)  # stopped (or failed) before they finished: none is left hashing


def _kill_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def parse_minerd(output: str) -> list[float]:
    """MH/s of every 'thread 0: N hashes, X khash/s' report of `minerd --benchmark -t 1`."""
    return [float(x) / 1000 for x in _MINERD_THREAD_RATE.findall(output)]


def minerd_rate(seconds: float = MINERD_SECONDS) -> tuple[float | None, str]:
    """(MH/s of one minerd thread, note): the median report after its first (warm-up) one."""
    exe = shutil.which("minerd")
    if exe is None:
        return None, "minerd not on PATH (install pooler's cpuminer to compare)"
    proc = subprocess.Popen([exe, "--benchmark", "-a", "sha256d", "-t", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    finally:
        _kill_all([proc])
    rates = parse_minerd(out)
    if len(rates) < 2:
        return None, f"minerd printed {len(rates)} rate reports in {seconds:.0f} s; need 2"
    return statistics.median(rates[1:]), f"{exe} --benchmark -a sha256d -t 1, {len(rates) - 1} reports"


def run_bench(seconds: float = 10.0, threads: int | None = None, measure_compile: bool = True,
              rounds: int = 5, minerd: bool = True, progress: Callable[[str], None] | None = None) -> BenchResult:
    """Rates are medians over `rounds` interleaved rounds, so a burst of noise (turbo, a
    neighbour on the host) hits one round of one figure, not a whole ratio. progress gets a
    line as each phase starts (compiles take a minute on some paths)."""
    say = progress or (lambda _line: None)
    threads = threads or kscan.default_threads()
    model, features = cpu_info()
    choice = kscan.chosen_kernel()
    able = paths.runnable()
    kernels = [k for k in paths.KERNELS if able[k] is None]
    loads = {}
    for k in kernels:
        if measure_compile:
            say(f"path {k}: cold compile and cached load, in two fresh processes (a minute on some paths)")
        loads[k] = load_times(k) if measure_compile else (None, None)
    window = seconds / rounds
    share = 0.35 / len(kernels)
    samples: dict[str, list[float]] = {"stream": [], "all": [], "loop": [], **{k: [] for k in kernels}}
    say(f"rates: {rounds} rounds of {window:.1f} s ({', '.join(kernels)}, {threads} threads, references)")
    for _ in range(rounds):
        samples["stream"].append(single_stream_rate(0.15 * window))
        for k in kernels:
            samples[k].append(kernel_rate(1, share * window, k))
        samples["all"].append(kernel_rate(threads, 0.35 * window, choice.kernel))
        samples["loop"].append(hashlib_loop_rate(0.15 * window))
    med = {k: statistics.median(v) for k, v in samples.items()}
    stream, per_thread, all_threads, loop = med["stream"], med[choice.kernel], med["all"], med["loop"]
    if minerd:
        say("minerd --benchmark, when it is on PATH (about 12 s)")
    minerd_mhs, minerd_note = minerd_rate() if minerd else (None, "skipped")
    if threads > 1:
        say(f"{threads} single-thread processes at once")
    procs = processes_rate(threads, max(1.0, 0.35 * seconds), choice.kernel) if threads > 1 else None
    return BenchResult(
        kernel=choice.kernel, kernel_reason=choice.reason,
        kernel_mhs_per_thread=per_thread, kernel_mhs_all=all_threads, threads=threads,
        hashlib_loop_mhs=loop, single_stream_mhs=stream,
        compile_s=loads[choice.kernel][0], cached_load_s=loads[choice.kernel][1],
        cpu_features=features, cpu_model=model,
        ratio_per_thread_vs_single_stream=per_thread / stream,
        ratio_per_thread_vs_hashlib_loop=per_thread / loop,
        ratio_all_vs_per_thread=all_threads / per_thread,
        seconds=seconds,
        paths={k: PathFigures(med[k], med[k] / stream, *loads[k]) for k in kernels},
        paths_skipped={k: why for k, why in able.items() if why},
        minerd_mhs_per_thread=minerd_mhs, minerd_note=minerd_note,
        ratio_per_thread_vs_minerd=per_thread / minerd_mhs if minerd_mhs else None,
        processes_mhs_all=procs, ratio_processes_vs_per_thread=procs / per_thread if procs else None,
    )


def format_text(r: BenchResult) -> str:
    def secs(x: float | None) -> str:
        return "skipped" if x is None else f"{x:6.2f} s"

    lines = [
        f"gridminer bench: {r.cpu_model}; features: {' '.join(r.cpu_features) or 'none'}",
        f"  chosen path: {r.kernel} ({r.kernel_reason})",
    ]
    for name, p in r.paths.items():
        lines.append(f"  {f'path {name}, 1 thread':<24}{p.mhs_per_thread:9.2f} MH/s   "
                     f"{p.ratio_vs_single_stream:5.2f}x single-stream; compile {secs(p.compile_s)}, "
                     f"cached load {secs(p.cached_load_s)}")
    for name, why in r.paths_skipped.items():
        lines.append(f"  {f'path {name}':<24}not run: {why}")
    lines += [
        f"  {f'{r.kernel}, 1 thread':<24}{r.kernel_mhs_per_thread:9.2f} MH/s   "
        f"{r.ratio_per_thread_vs_single_stream:5.2f}x single-stream, "
        f"{r.ratio_per_thread_vs_hashlib_loop:.0f}x hashlib loop"
        + (f", {r.ratio_per_thread_vs_minerd:.2f}x minerd" if r.ratio_per_thread_vs_minerd else ""),
        f"  {f'{r.kernel}, {r.threads} threads':<24}{r.kernel_mhs_all:9.2f} MH/s   "
        f"{r.ratio_all_vs_per_thread:5.2f}x one thread",
    ]
    if r.processes_mhs_all:
        lines.append(f"  {f'{r.threads} processes x 1 thread':<24}{r.processes_mhs_all:9.2f} MH/s   "
                     f"{r.ratio_processes_vs_per_thread:5.2f}x one thread (what the cores give, nothing shared)")
    lines += [
        f"  ref 1: hashlib loop     {r.hashlib_loop_mhs:9.2f} MH/s   (Python loop, sha256d per nonce)",
        f"  ref 2: single stream    {r.single_stream_mhs:9.2f} MH/s   "
        f"(hashlib SHA-256 over {SINGLE_STREAM_BYTES >> 20} MiB / 128 bytes per nonce)",
        "  ref 3: minerd, 1 thread " + (f"{r.minerd_mhs_per_thread:9.2f} MH/s   ({r.minerd_note})"
                                         if r.minerd_mhs_per_thread else f"  not measured: {r.minerd_note}"),
        f"  JIT compile             {secs(r.compile_s)}   ({r.kernel}; fresh process, empty numba cache)",
        f"  cached load             {secs(r.cached_load_s)}   ({r.kernel}; fresh process, warm numba cache)",
    ]
    return "\n".join(lines)


def format_asm_stats(stats: dict) -> str:
    lines = [f"  hot loop: {stats['instructions']} instructions, {stats['vector_instructions']} vector, "
             f"{stats['scalar_instructions']} scalar; widest register {stats['vector_width_bits']} bits; "
             f"{stats['stack_accesses']} stack accesses (spills)",
             "  registers: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["register_uses"].items())),
             "  top: " + ", ".join(f"{k} {v}" for k, v in stats["top"].items())]
    if "shani_instructions" in stats:
        lines.append("  SHA-NI scan holds: " + ", ".join(f"{k} {v}" for k, v in stats["shani_instructions"].items()))
    return "\n".join(lines)


def main(args) -> int:
    """`miner bench`; SIGINT or SIGTERM stops it and every process it started (128 + signal)."""
    return run_stoppable("miner bench", lambda: _main(args))


def _main(args) -> int:
    try:
        kscan.chosen_kernel()
    except paths.KernelUnavailable as e:
        print(f"miner bench: {e}", file=sys.stderr)
        return 2
    t0 = time.monotonic()

    def progress(line: str) -> None:  # stderr: --json keeps stdout to the JSON alone
        print(f"[{time.monotonic() - t0:5.1f} s] {line}", file=sys.stderr, flush=True)

    result = run_bench(seconds=args.seconds, threads=args.threads, measure_compile=not args.no_compile,
                       minerd=not args.no_minerd, progress=progress)
    stats = None
    if args.asm_stats:
        from kernels.asm import hot_loop_stats, lane_loop_asm, sha_instruction_counts, shani_asm

        stats = hot_loop_stats(lane_loop_asm())
        if "shani" in result.paths:
            stats["shani_instructions"] = sha_instruction_counts(shani_asm())
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
