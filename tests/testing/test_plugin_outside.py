"""The pytest plugin as an outside project meets it: gridminer's wheel, installed, in a subprocess.

    source ─copy─► build dir ─pip wheel─► gridminer-*.whl ─pip install --target─► site/
    tests/plugin_project ─copy─► project/ ;  cd project && PYTHONPATH=site python -m pytest

So what is tested is the installed package: its package data (the pinned regtest node's
lockfile), its typing marker and its `pytest11` entry point, with the source tree off
sys.path (the subprocess runs from the copied project; a probe checks where `miner`
and `kernels` are imported from). The npm cache environment passes through, so the
pinned bcoin installed once per lockfile is reused, not downloaded again.

One shortcut, for time only: numba's on-disk cache for the installed kernels is seeded
from this tree's (numba 0.68 keys it by the source file's SHA-256, so it is used only
for identical code); compiling them cold takes about 35 s here and would measure numba.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

import kernels
from kernels import scan

SOURCE_ROOT = Path(__file__).resolve().parents[2]
PROJECT = SOURCE_ROOT / "tests" / "plugin_project"
# What the build needs (pyproject.toml's readme and license, the packages it finds).
BUILD_FILES = ("pyproject.toml", "README.md", "LICENSE")
BUILD_PACKAGES = ("miner", "kernels")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc", "node_modules")
# The build backend pyproject.toml asks for (license = "MIT" needs PEP 639 support).
MIN_SETUPTOOLS = 77
BUILD_TIMEOUT_S = 300
OUTSIDE_RUN_TIMEOUT_S = 240
# Environment that would change how the outside pytest runs.
DROPPED_ENV = ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTHONSTARTUP")
# The outside project's tests, as it defines them.
OUTSIDE_TESTS = 3


def _setuptools_major() -> int:
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return 0


def _run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """gridminer's wheel, built from a copy of the source (the tree itself stays untouched)."""
    if _setuptools_major() < MIN_SETUPTOOLS:
        pytest.skip(f"building the wheel offline needs setuptools >= {MIN_SETUPTOOLS} in this environment "
                    f"(pip install 'setuptools>={MIN_SETUPTOOLS}')")
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in BUILD_FILES:
        shutil.copy2(SOURCE_ROOT / name, src / name)
    for package in BUILD_PACKAGES:
        shutil.copytree(SOURCE_ROOT / package, src / package, ignore=IGNORED)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
          "-q", "-w", str(base / "dist"), str(src)], BUILD_TIMEOUT_S)
    [built] = (base / "dist").glob("gridminer-*.whl")
    return built


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    """The wheel installed with pip into a directory of its own (no dependencies: the venv has them)."""
    target = tmp_path_factory.mktemp("site")
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-cache-dir", "-q", "--target", str(target),
          str(wheel)], BUILD_TIMEOUT_S)
    _seed_numba_cache(target / "kernels")
    return target


def _seed_numba_cache(installed_kernels: Path) -> None:
    scan.warm_up()  # make sure this tree's cache exists
    cache = Path(kernels.__file__).resolve().parent / "__pycache__"
    seeded = installed_kernels / "__pycache__"
    seeded.mkdir(exist_ok=True)
    for path in [*cache.glob("*.nbi"), *cache.glob("*.nbc")]:
        shutil.copy2(path, seeded / path.name)


def test_the_wheel_ships_the_pinned_node_the_typing_marker_and_the_plugin(wheel):
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points_text = whl.read(entry_points).decode()
        for pinned in ("package.json", "package-lock.json", "leveldown-null-range.js"):
            assert whl.read(f"miner/node/bcoin/{pinned}") == (SOURCE_ROOT / "miner/node/bcoin" / pinned).read_bytes()
    assert "miner/testing/py.typed" in names and "miner/testing/pytest_plugin.py" in names
    assert "[pytest11]\ngridminer = miner.testing.pytest_plugin" in entry_points_text
    assert not any("node_modules" in n or n.startswith(("tests/", "deploy/")) for n in names)


def test_an_outside_project_passes_with_the_installed_plugin(site, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(PROJECT, project, ignore=IGNORED)
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env.update(PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1")

    probe = _run([sys.executable, "-c", "import kernels, miner.testing; print(miner.testing.__file__); "
                  "print(kernels.__file__)"], 60, cwd=project, env=env)
    for imported in probe.stdout.split():
        assert Path(imported).resolve().is_relative_to(site.resolve()), f"imported from {imported}, not the wheel"

    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA"],
                         cwd=project, env=env, capture_output=True, text=True, timeout=OUTSIDE_RUN_TIMEOUT_S)
    elapsed = time.monotonic() - started
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert f"{OUTSIDE_TESTS} passed" in output, output
    # The project's own configuration, not this repository's, and the plugin from the wheel.
    assert f"rootdir: {project}" in output and "configfile: pyproject.toml" in output, output
    assert "gridminer-0.1.0" in next(line for line in output.splitlines() if line.startswith("plugins:"))
    print(f"outside project: {OUTSIDE_TESTS} tests in {elapsed:.1f} s")


def test_loading_the_plugin_imports_no_mining_code(tmp_path):
    """Every pytest run in an environment with gridminer loads the plugin: it must cost nothing."""
    probe = _run([sys.executable, "-c", "import sys, miner.testing.pytest_plugin; "
                  "print(sorted(m for m in ('numba', 'numpy', 'kernels', 'miner.stratum', 'miner.work') "
                  "if m in sys.modules))"], 60, cwd=tmp_path)
    assert probe.stdout.strip() == "[]"
