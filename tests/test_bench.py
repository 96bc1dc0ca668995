"""`miner bench` end to end, minerd's output parsed, and what LLVM made of each path."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kernels import paths
from kernels.asm import hot_loop_stats, lane_loop_asm, sha_instruction_counts, shani_asm
from miner.bench import cpu_info, parse_minerd
from tests.processes import child_pids, running

KEYS = {"kernel", "kernel_reason", "kernel_mhs_per_thread", "kernel_mhs_all", "threads", "hashlib_loop_mhs",
        "single_stream_mhs", "compile_s", "cached_load_s", "cpu_features", "paths", "paths_skipped",
        "minerd_mhs_per_thread", "minerd_note", "ratio_per_thread_vs_minerd", "processes_mhs_all",
        "ratio_processes_vs_per_thread"}
RUNNABLE = paths.runnable()

# Real output of pooler's cpuminer 2.5.1, `minerd --benchmark -a sha256d -t 1`.
MINERD_OUTPUT = """\
[2026-12-07 06:11:09] 1 miner threads started, using 'sha256d' algorithm.
[2026-12-07 06:11:10] thread 0: 2097152 hashes, 9306 khash/s
[2026-12-07 06:11:10] Total: 9306 khash/s
[2026-12-07 06:11:14] thread 0: 37223976 hashes, 7915 khash/s
[2026-12-07 06:11:14] Total: 7915 khash/s
"""


def test_bench_json_reports_every_figure():
    out = subprocess.run([sys.executable, "-m", "miner", "bench", "--json", "--seconds", "1.5", "--no-minerd"],
                         capture_output=True, text=True, check=True, timeout=1200)
    result = json.loads(out.stdout)
    assert KEYS <= result.keys()
    for key in ("kernel_mhs_per_thread", "kernel_mhs_all", "hashlib_loop_mhs", "single_stream_mhs", "compile_s",
                "cached_load_s"):
        assert result[key] > 0, key
    assert result["threads"] >= 1
    assert isinstance(result["cpu_features"], list)
    assert result["ratio_all_vs_per_thread"] == pytest.approx(result["kernel_mhs_all"] / result["kernel_mhs_per_thread"])
    # Every path this CPU can run is measured; the others say why not.
    assert set(result["paths"]) == {k for k, why in RUNNABLE.items() if why is None}
    assert set(result["paths_skipped"]) == {k for k, why in RUNNABLE.items() if why}
    assert result["kernel"] in result["paths"] and result["kernel_reason"]
    for figures in result["paths"].values():
        assert figures["mhs_per_thread"] > 0 and figures["compile_s"] > 0 and figures["cached_load_s"] > 0
    assert result["paths"][result["kernel"]]["mhs_per_thread"] == result["kernel_mhs_per_thread"]
    assert result["minerd_mhs_per_thread"] is None and result["minerd_note"] == "skipped"
    # Each long phase is announced on stderr as it starts (stdout stays the JSON alone).
    assert "cold compile and cached load" in out.stderr and "rates:" in out.stderr, out.stderr


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to see the child processes")
def test_sigterm_stops_bench_and_the_processes_it_started():
    # Seen: SIGTERM killed `miner bench` and left its probe processes hashing (or compiling,
    # up to a minute) on their own.
    proc = subprocess.Popen([sys.executable, "-m", "miner", "bench", "--seconds", "4", "--no-compile", "--no-minerd"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    children: list[int] = []
    deadline = time.monotonic() + 600
    while not children:      # the phase of two hashing processes at once
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"never reached the processes phase: {lines[-5:]}")
        if any("single-thread processes" in line for line in lines):
            children = child_pids(proc.pid)
        time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    took = time.monotonic() - sent
    reader.join(5)
    still = [pid for pid in children if running(pid)]
    for pid in still:
        os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM and took < 5, (proc.returncode, took)
    assert still == []
    assert "miner bench: stopped by SIGTERM" in "".join(lines) and "Traceback" not in "".join(lines)


def test_minerd_reports_are_parsed():
    assert parse_minerd(MINERD_OUTPUT) == [9.306, 7.915]
    assert parse_minerd("minerd: unrecognized option\n") == []


def test_bench_rejects_bad_options():
    out = subprocess.run([sys.executable, "-m", "miner", "bench", "--seconds", "-1"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "--seconds" in out.stderr


@pytest.mark.parametrize("value,message", [("gpu", "expected one of shani, avx512, avx2, lanes"),
                                           *([("avx512", "lacks avx512f")] if RUNNABLE["lanes"] is None
                                             and "avx512f" not in paths.cpu_flags() else []),
                                           *([("shani", "sha")] if RUNNABLE["shani"] else [])])
def test_a_forced_kernel_this_machine_cannot_run_is_a_clear_error(value, message):
    out = subprocess.run([sys.executable, "-m", "miner", "bench", "--no-compile", "--no-minerd", "--seconds", "0.5"],
                         capture_output=True, text=True, env={**os.environ, "GRIDMINER_KERNEL": value}, timeout=600)
    assert out.returncode == 2
    assert "GRIDMINER_KERNEL" in out.stderr and message in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.skipif("avx2" not in cpu_info()[1], reason="the CPU has no AVX2: nothing wide to check for")
def test_lane_loop_is_vectorized():
    stats = hot_loop_stats(lane_loop_asm())
    assert stats["vector_width_bits"] >= 256
    # The rounds themselves, not just loads and stores, must be vector instructions.
    assert stats["vector_instructions"] > 0.9 * stats["instructions"]
    assert stats["top"].get("vpaddd", 0) > 1000


@pytest.mark.skipif(RUNNABLE["shani"] is not None, reason=f"no SHA-NI path here: {RUNNABLE['shani']}")
def test_shani_scan_is_made_of_sha_instructions():
    from kernels.shani import INTERLEAVE

    counts = sha_instruction_counts(shani_asm())
    # Hash 1 from round 2 and hash 2 up to round 61: 31 + 31 two-round steps per nonce.
    assert counts["sha256rnds2"] == 62 * INTERLEAVE
    assert counts["sha256msg1"] > 0 and counts["sha256msg2"] > 0
