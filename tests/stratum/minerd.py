"""A small launcher for pooler's cpuminer (`minerd`), a stock stratum v1 CPU miner in C.

Tests find minerd on PATH and skip, saying what to install, when it is missing or cannot
run. Its output goes to a log file; the process is always terminated (then killed).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

INSTALL_HINT = ("minerd (pooler's cpuminer 2.5.1, https://github.com/pooler/cpuminer) on PATH, "
                "with its runtime libraries (libcurl4, libjansson4)")


def require_minerd() -> str:
    """minerd's path, or a pytest skip saying what to install."""
    path = shutil.which("minerd")
    if path is None:
        pytest.skip(f"needs {INSTALL_HINT}")
    try:
        probe = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"minerd cannot run here ({e}); needs {INSTALL_HINT}")
    if "cpuminer" not in (probe.stdout + probe.stderr):
        pytest.skip(f"minerd --version did not name cpuminer ({probe.returncode}); needs {INSTALL_HINT}")
    return path


class Minerd:
    """`minerd -a sha256d -t THREADS -o stratum+tcp://HOST:PORT -u USER -p PASSWORD`, logged to log_path."""

    def __init__(self, port: int, log_path: Path, *, user: str = "site1.rig1", password: str = "x",
                 threads: int = 1, host: str = "127.0.0.1") -> None:
        self.argv = [require_minerd(), "-a", "sha256d", "-t", str(threads), "-o", f"stratum+tcp://{host}:{port}",
                     "-u", user, "-p", password]
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Minerd:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def count(self, text: str) -> int:
        """Lines of its log that contain text."""
        return sum(text in line for line in self.log().splitlines())
