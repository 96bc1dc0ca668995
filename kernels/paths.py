"""Which SHA-256d kernel this machine runs: CPU features first, then a measured calibration.

    GRIDMINER_KERNEL set ──► that path, or an error naming the missing CPU feature
    runnable paths: "shani" needs the CPU's sha_ni flag AND numba compiling for it;
                    "lanes" runs anywhere (LLVM vectorizes it to AVX-512, AVX2 or SSE)
    candidates: every runnable path that could win. Without AVX-512 the lane kernel has
                8 lanes against SHA-NI's dedicated unit and measured about 4x slower
                (AMD EPYC, Zen 3), so SHA-NI is chosen outright and nothing else compiles.
    >1 candidate (AVX-512 and SHA-NI): each is compiled and timed for a fraction of a
                second; the winner is cached per machine and numba/CPU signature in
                ~/.cache/gridminer/kernels.json (GRIDMINER_CACHE_DIR or XDG_CACHE_HOME move it)

An instruction the CPU lacks is never run: a path is measured only once it is runnable.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

KERNELS = ("shani", "lanes")
# GRIDMINER_KERNEL values: name -> (kernel, CPU flags it needs, as /proc/cpuinfo spells them)
FORCEABLE = {
    "shani": ("shani", ("sha_ni", "sse4_1")),
    "avx512": ("lanes", ("avx512f",)),
    "avx2": ("lanes", ("avx2",)),
    "lanes": ("lanes", ()),
}
ENV_VAR = "GRIDMINER_KERNEL"
# /proc/cpuinfo flag -> LLVM feature name (what numba's code generator is told to use)
_LLVM_NAME = {"sha_ni": "sha", "sse4_1": "sse4.1", "avx512f": "avx512f", "avx2": "avx2"}
# Bumped when a kernel changes enough that an old measurement says nothing.
CALIBRATION_VERSION = 1
# Per candidate: rounds x seconds of timed scanning (interleaved, median taken).
CALIBRATION_ROUNDS = 3
CALIBRATION_SECONDS = 0.2


class KernelUnavailable(RuntimeError):
    """A forced path this CPU (or numba's target) cannot run."""


@dataclass(frozen=True)
class Choice:
    kernel: str  # one of KERNELS
    reason: str
    rates_mhs: dict[str, float] | None = None  # from a calibration, when one decided


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo spells them (LLVM's host view elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return set(value.split())
    except OSError:
        pass
    import llvmlite.binding as llvm

    spelled = {v: k for k, v in _LLVM_NAME.items()}
    return {spelled.get(k, k.replace(".", "_")) for k, on in llvm.get_host_cpu_features().items() if on}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_name()


def numba_target() -> tuple[str, str]:
    """(cpu name, feature string) numba's JIT compiles for: the host unless NUMBA_CPU_* say otherwise."""
    from numba.core import codegen, config
    import llvmlite.binding as llvm

    name = config.CPU_NAME or llvm.get_host_cpu_name()
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else codegen.get_host_cpu_features()
    return name, features


def missing_features(needs: tuple[str, ...], flags: set[str], target_features: str) -> str | None:
    """Why a path needing `needs` cannot run here, or None when it can."""
    lacking = [f for f in needs if f not in flags]
    if lacking:
        return f"the CPU lacks {', '.join(lacking)}"
    enabled = {f[1:] for f in target_features.split(",") if f.startswith("+")}
    off = [f for f in needs if _LLVM_NAME.get(f, f) not in enabled]
    if off:
        return (f"numba is compiling without {', '.join(_LLVM_NAME.get(f, f) for f in off)} "
                "(NUMBA_CPU_NAME / NUMBA_CPU_FEATURES); unset them to compile for this CPU")
    return None


def lane_isa(flags: set[str]) -> str:
    """The vector extension LLVM widens the lane kernel to on this CPU."""
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "sse"


def runnable(flags: set[str] | None = None, target_features: str | None = None) -> dict[str, str | None]:
    """Each kernel -> None when this machine can run it, else the reason it cannot."""
    flags = cpu_flags() if flags is None else flags
    target_features = numba_target()[1] if target_features is None else target_features
    return {k: missing_features(FORCEABLE[k][1], flags, target_features) for k in KERNELS}


def forced(value: str, flags: set[str], target_features: str) -> Choice:
    key = value.strip().lower()
    if key not in FORCEABLE:
        raise KernelUnavailable(f"{ENV_VAR}={value!r}: expected one of {', '.join(FORCEABLE)}")
    kernel, needs = FORCEABLE[key]
    why = missing_features(needs, flags, target_features)
    if why:
        raise KernelUnavailable(f"{ENV_VAR}={value}: cannot run the {key} path here: {why}")
    return Choice(kernel, f"forced by {ENV_VAR}={value}")


def candidates(flags: set[str], able: dict[str, str | None]) -> list[str]:
    """Runnable paths that could be the fastest here (see the module docstring)."""
    ok = [k for k in KERNELS if able[k] is None]
    if "shani" in ok and "avx512f" not in flags:
        return ["shani"]
    return ok


def signature(flags: set[str]) -> str:
    """What a cached measurement is valid for: this CPU, this numba/LLVM and its target."""
    import llvmlite
    import numba

    name, features = numba_target()
    text = json.dumps([CALIBRATION_VERSION, cpu_model(), sorted(flags), numba.__version__, llvmlite.__version__,
                       name, features])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_path() -> Path:
    base = os.environ.get("GRIDMINER_CACHE_DIR")
    if base:
        return Path(base) / "kernels.json"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "gridminer" / "kernels.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, key: str, entry: dict) -> None:
    data = _read_cache(path)
    data[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs a calibration per start


def calibrate(kernels: list[str], rate: Callable[[str, float], float],
              rounds: int = CALIBRATION_ROUNDS, seconds: float = CALIBRATION_SECONDS) -> dict[str, float]:
    """Median MH/s of each kernel over interleaved rounds (a burst of noise hits one round)."""
    samples: dict[str, list[float]] = {k: [] for k in kernels}
    for _ in range(rounds):
        for k in kernels:
            samples[k].append(rate(k, seconds))
    return {k: statistics.median(v) for k, v in samples.items()}


def choose(rate: Callable[[str, float], float], env: dict | None = None, flags: set[str] | None = None,
           target_features: str | None = None, cache: Path | None = None) -> Choice:
    """The path this machine runs. `rate(kernel, seconds)` measures one (compiling it first)."""
    env = os.environ if env is None else env
    flags = cpu_flags() if flags is None else flags
    target_features = numba_target()[1] if target_features is None else target_features
    if env.get(ENV_VAR):
        return forced(env[ENV_VAR], flags, target_features)
    able = runnable(flags, target_features)
    cands = candidates(flags, able)
    if cands == ["shani"]:
        return Choice("shani", "the CPU has SHA-NI and no AVX-512: the SHA unit beats 8-lane AVX2 several times over")
    if cands == ["lanes"]:
        return Choice("lanes", f"no SHA-NI path ({able['shani']}): the lane kernel on {lane_isa(flags)}")
    path = cache if cache is not None else cache_path()
    key = signature(flags)
    entry = _read_cache(path).get(key)
    if isinstance(entry, dict) and entry.get("kernel") in cands:
        return Choice(entry["kernel"], f"calibrated on this machine at {entry.get('measured', '?')} (cached)",
                      entry.get("rates_mhs"))
    rates = calibrate(cands, rate)
    best = max(rates, key=rates.get)
    _write_cache(path, key, {"kernel": best, "rates_mhs": rates,
                             "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return Choice(best, "calibrated now: " + ", ".join(f"{k} {v:.1f} MH/s" for k, v in rates.items()), rates)


_lock = threading.Lock()
_chosen: Choice | None = None


def chosen(rate: Callable[[str, float], float]) -> Choice:
    """choose(), once per process."""
    global _chosen
    with _lock:
        if _chosen is None:
            _chosen = choose(rate)
        return _chosen
