"""pooler's cpuminer (`minerd`) for a share storm: its output goes to a log file, not to
memory (at regtest difficulty it prints a line per share, hundreds of thousands a minute),
unlike miner.testing.MinerdProcess, which keeps its lines for assertions. The process is
always terminated (then killed).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from miner.node.regtest import terminate


def require_minerd() -> str:
    """minerd's path, or a pytest skip saying what to install (its libraries come from apt
    where the suite may install them: tests.conftest.require_peer)."""
    from miner.testing.minerd import find_minerd
    from tests.conftest import require_peer

    require_peer("minerd")
    return find_minerd()


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
        if self.proc is not None:
            terminate(self.proc, 5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def count(self, text: str) -> int:
        """Lines of its log that contain text."""
        return sum(text in line for line in self.log().splitlines())
