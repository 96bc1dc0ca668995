"""Choosing the kernel path: CPU features first, forced paths checked, calibration cached."""

import json
import os
import subprocess
import sys

import pytest

from kernels import paths, scan

ZEN3 = {"sse4_1", "avx2", "sha_ni", "bmi2"}
ICELAKE = {"sse4_1", "avx2", "avx512f", "sha_ni"}
HASWELL = {"sse4_1", "avx2"}
OLD = {"sse2"}
HOST_TARGET = "+sse4.1,+avx2,+sha,+avx512f"


def no_rate(kernel, seconds):
    raise AssertionError(f"nothing should be measured here (asked for {kernel})")


def choose(flags, env=None, target=HOST_TARGET, rate=no_rate, cache=None, tmp_path=None):
    return paths.choose(rate, env=env or {}, flags=flags, target_features=target,
                        cache=cache or (tmp_path / "kernels.json"))


def test_sha_ni_without_avx512_is_chosen_without_compiling_anything_else(tmp_path):
    c = choose(ZEN3, tmp_path=tmp_path)
    assert c.kernel == "shani" and "SHA-NI" in c.reason


@pytest.mark.parametrize("flags", [HASWELL, OLD, set()])
def test_without_sha_ni_the_lane_kernel_runs(flags, tmp_path):
    c = choose(flags, tmp_path=tmp_path)
    assert c.kernel == "lanes" and "sha_ni" in c.reason


def test_sha_ni_unusable_when_numba_compiles_for_a_generic_cpu(tmp_path):
    # NUMBA_CPU_NAME=generic: LLVM may not emit the SHA instructions, so the path is out.
    c = choose(ZEN3, target="+sse2,+avx2", tmp_path=tmp_path)
    assert c.kernel == "lanes" and "NUMBA_CPU" in c.reason


def test_avx512_with_sha_ni_calibrates_once_and_caches(tmp_path):
    asked = []

    def rate(kernel, seconds):
        asked.append(kernel)
        return {"shani": 30.0, "lanes": 34.0}[kernel]

    first = choose(ICELAKE, rate=rate, tmp_path=tmp_path)
    assert first.kernel == "lanes" and first.rates_mhs == {"shani": 30.0, "lanes": 34.0}
    assert sorted(set(asked)) == ["lanes", "shani"] and len(asked) == 2 * paths.CALIBRATION_ROUNDS
    again = choose(ICELAKE, rate=no_rate, tmp_path=tmp_path)
    assert again.kernel == "lanes" and "cached" in again.reason
    stored = json.loads((tmp_path / "kernels.json").read_text())
    assert [e["kernel"] for e in stored.values()] == ["lanes"]


def test_a_cache_for_another_cpu_is_not_used(tmp_path):
    cache = tmp_path / "kernels.json"
    cache.write_text(json.dumps({"someothermachine": {"kernel": "lanes"}}))
    c = choose(ICELAKE, rate=lambda k, s: {"shani": 40.0, "lanes": 34.0}[k], cache=cache)
    assert c.kernel == "shani" and "calibrated now" in c.reason


def test_a_corrupt_cache_is_ignored(tmp_path):
    cache = tmp_path / "kernels.json"
    cache.write_text("{not json")
    assert choose(ICELAKE, rate=lambda k, s: {"shani": 40.0, "lanes": 34.0}[k], cache=cache).kernel == "shani"


@pytest.mark.parametrize("value,kernel", [("shani", "shani"), ("avx2", "lanes"), ("lanes", "lanes"),
                                          ("AVX512", "lanes")])
def test_forced_path(value, kernel, tmp_path):
    c = choose(ICELAKE, env={"GRIDMINER_KERNEL": value}, tmp_path=tmp_path)
    assert c.kernel == kernel and "forced" in c.reason


@pytest.mark.parametrize("flags,value,missing", [(HASWELL, "shani", "sha_ni"), (ZEN3, "avx512", "avx512f"),
                                                 (OLD, "avx2", "avx2")])
def test_forcing_a_path_the_cpu_lacks_is_a_clear_error(flags, value, missing, tmp_path):
    with pytest.raises(paths.KernelUnavailable, match=f"lacks {missing}"):
        choose(flags, env={"GRIDMINER_KERNEL": value}, tmp_path=tmp_path)


def test_forcing_an_unknown_path_names_the_choices(tmp_path):
    with pytest.raises(paths.KernelUnavailable, match="shani, avx512, avx2, lanes"):
        choose(ZEN3, env={"GRIDMINER_KERNEL": "gpu"}, tmp_path=tmp_path)


def test_this_machine_has_a_runnable_path():
    able = paths.runnable()
    assert able["lanes"] is None
    flags = paths.cpu_flags()
    assert (able["shani"] is None) == ({"sha_ni", "sse4_1"} <= flags and "+sha" in paths.numba_target()[1])


def test_first_start_says_it_compiles_and_then_loads_from_cache(tmp_path):
    # Fresh processes with an empty numba cache: what a first and a second start print.
    probe = ("import kernels.scan as s; k = s.warm_up(progress=lambda m: print('P:', m, flush=True)); "
             "print('KERNEL', k)")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), GRIDMINER_CACHE_DIR=str(tmp_path))
    first = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr
    kernel = first.stdout.split("KERNEL ")[-1].strip()
    assert kernel == scan.chosen_kernel().kernel
    assert f"compiling the SHA-256d kernel for this CPU ({kernel}), first start only" in first.stdout
    assert f"SHA-256d kernel {kernel} ready after" in first.stdout
    second = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr
    assert "from numba's cache" in second.stdout and "first start only" not in second.stdout
