"""`miner bench` end to end, and the vectorization of the lane loop it reports."""

import json
import subprocess
import sys

import pytest

from kernels.asm import hot_loop_stats, lane_loop_asm
from miner.bench import cpu_info

KEYS = {"kernel_mhs_per_thread", "kernel_mhs_all", "threads", "hashlib_loop_mhs", "single_stream_mhs",
        "compile_s", "cached_load_s", "cpu_features"}


def test_bench_json_reports_every_figure():
    out = subprocess.run([sys.executable, "-m", "miner", "bench", "--json", "--seconds", "1.5"],
                         capture_output=True, text=True, check=True, timeout=600)
    result = json.loads(out.stdout)
    assert KEYS <= result.keys()
    for key in KEYS - {"cpu_features", "threads"}:
        assert result[key] > 0, key
    assert result["threads"] >= 1
    assert isinstance(result["cpu_features"], list)
    assert result["ratio_all_vs_per_thread"] == pytest.approx(result["kernel_mhs_all"] / result["kernel_mhs_per_thread"])


def test_bench_rejects_bad_options():
    out = subprocess.run([sys.executable, "-m", "miner", "bench", "--seconds", "-1"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "--seconds" in out.stderr


@pytest.mark.skipif("avx2" not in cpu_info()[1], reason="the CPU has no AVX2: nothing wide to check for")
def test_lane_loop_is_vectorized():
    stats = hot_loop_stats(lane_loop_asm())
    assert stats["vector_width_bits"] >= 256
    # The rounds themselves, not just loads and stores, must be vector instructions.
    assert stats["vector_instructions"] > 0.9 * stats["instructions"]
    assert stats["top"].get("vpaddd", 0) > 1000
