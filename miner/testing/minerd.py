"""minerd (pooler's cpuminer 2.5, a stock stratum v1 CPU miner in C) mining into a pool, for tests.

    from miner.testing.minerd import MinerdProcess, MinerdUnavailable, find_minerd

    with MinerdProcess("stratum+tcp://127.0.0.1:3333", user="site1.rig1", threads=1) as minerd:
        minerd.wait_for_accepted(10, timeout=60)     # MinerdError if it exits or times out
        print(minerd.accepted, minerd.rejected)      # minerd's own running totals
        print(minerd.results)                        # True/False per answered share, in order
        print(minerd.count("Stratum authentication failed"), minerd.output)

It runs `minerd -a sha256d -t THREADS -o URL -u USER -p PASSWORD` (plus extra_args),
reads its log (minerd writes it to stderr) on a thread, and keeps every line. Each answer
from the pool makes minerd print "accepted: A/T (P%), R khash/s (yay!!!)" or "(booooo)":
A is its count of accepted shares and T - A of rejected ones. With debug=True minerd
also prints "DEBUG: reject reason: ..." lines, gathered in reject_reasons.

Options: threads (-t), retry_pause (-R: seconds minerd waits before it reconnects after a
failed connect or authorize; its own default is 30), debug (-D), extra_args (anything
else, e.g. ["--retries", "0"] to exit after one failed connection). Useful log lines to
count: "Stratum requested work restart" (a clean job), "Stratum connection interrupted"
(the pool closed the connection), "Stratum authentication failed".

Leaving the `with` block (or stop()) sends SIGTERM, then SIGKILL after a few seconds;
a finalizer kills a forgotten process when the object is collected.
find_minerd() raises MinerdUnavailable with a reason that says what to install when
minerd is not on PATH or cannot start (a missing shared library, say): tests skip on it.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Sequence

from miner.node.regtest import kill_quietly, terminate
from miner.testing.peers import peer_problem

__all__ = ["MinerdError", "MinerdProcess", "MinerdUnavailable", "find_minerd"]

# Seconds between SIGTERM and SIGKILL in stop().
STOP_TIMEOUT_S = 5.0
# Lines of minerd's log quoted in errors.
TAIL_LINES = 30

# "[2026-12-07 06:00:00] accepted: 3/4 (75.00%), 1234.56 khash/s (booooo)"
_RESULT = re.compile(r"accepted: (\d+)/(\d+) \([^)]*\), \S+ khash/s \((yay!!!|booooo)\)")
_REJECT_REASON = re.compile(r"DEBUG: reject reason: (.*)$")


class MinerdUnavailable(RuntimeError):
    """minerd is not on PATH or cannot run here (the message says what to install)."""


class MinerdError(RuntimeError):
    """minerd exited, or did not get where a test waited for it in time (with its log's tail)."""


def find_minerd() -> str:
    """The minerd on PATH, checked to start; MinerdUnavailable with the reason otherwise."""
    import shutil

    problem = peer_problem("minerd")
    if problem is not None:
        raise MinerdUnavailable(problem)
    found = shutil.which("minerd")
    assert found is not None  # peer_problem found it
    return found


class MinerdProcess:
    """One minerd process mining into a stratum pool; its log parsed as it comes (see the module doc)."""

    def __init__(self, url: str, user: str = "gridminer.minerd", password: str = "x", *, threads: int = 1,
                 executable: str | None = None, retry_pause: int | None = None, debug: bool = False,
                 extra_args: Sequence[str] = ()) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads!r}")
        self.url = url if "://" in url else f"stratum+tcp://{url}"
        self.user = user
        self.threads = threads
        self._password = password
        self._executable = executable
        self._args = [*(["-R", str(retry_pause)] if retry_pause is not None else []), *(["-D"] if debug else []),
                      *extra_args]
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._reader: threading.Thread | None = None
        self._changed = threading.Condition()
        self._lines: list[str] = []
        self._results: list[bool] = []
        self._reasons: list[str] = []
        self._accepted = 0
        self._rejected = 0

    def __repr__(self) -> str:
        state = f"pid {self._proc.pid}" if self.running and self._proc else "stopped"
        return f"MinerdProcess({self.url}, {self.user}, {state}, accepted {self.accepted}, rejected {self.rejected})"

    # -- lifecycle --

    @property
    def command(self) -> list[str]:
        """The command line (the password shown as given: tests use throwaway ones)."""
        executable = self._executable or find_minerd()
        return [executable, "-a", "sha256d", "-t", str(self.threads), "-o", self.url, "-u", self.user,
                "-p", self._password, *self._args]

    def start(self) -> MinerdProcess:
        """Start minerd (MinerdUnavailable when it cannot run here)."""
        if self.running:
            return self
        proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self._proc = proc
        self._finalizer = weakref.finalize(self, kill_quietly, proc)
        self._reader = threading.Thread(target=self._read, args=(proc,), name=f"minerd-{proc.pid}", daemon=True)
        self._reader.start()
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL after timeout seconds; returns once the log is read to its end."""
        proc = self._proc
        if proc is None:
            return
        terminate(proc, timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    close = stop

    def __enter__(self) -> MinerdProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    # -- what minerd said --

    @property
    def accepted(self) -> int:
        """Shares the pool accepted, by minerd's own count."""
        with self._changed:
            return self._accepted

    @property
    def rejected(self) -> int:
        """Shares the pool rejected, by minerd's own count."""
        with self._changed:
            return self._rejected

    @property
    def results(self) -> list[bool]:
        """True (accepted) or False (rejected) for each answered share, in order."""
        with self._changed:
            return list(self._results)

    @property
    def reject_reasons(self) -> list[str]:
        """The pool's reasons for rejected shares (debug=True only)."""
        with self._changed:
            return list(self._reasons)

    @property
    def lines(self) -> list[str]:
        """Every log line so far."""
        with self._changed:
            return list(self._lines)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def count(self, text: str) -> int:
        """How many log lines contain text (e.g. "Stratum connection interrupted")."""
        return sum(text in line for line in self.lines)

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.lines[-lines:]) or "(no output)"

    # -- waiting --

    def wait_for(self, predicate: Callable[[MinerdProcess], object], timeout: float, what: str = "the condition") -> None:
        """Wait until predicate(self) is true; MinerdError if minerd exits or timeout seconds pass first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                # The lock is reentrant for the properties the predicate reads.
                if predicate(self):
                    return
                if self._proc is None:
                    raise MinerdError("minerd was never started")
                if self._proc.poll() is not None and (self._reader is None or not self._reader.is_alive()):
                    raise MinerdError(f"minerd exited with code {self._proc.returncode} before {what}; "
                                      f"its log:\n{self._tail_locked()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MinerdError(f"{what} did not happen within {timeout:g} s (accepted {self._accepted}, "
                                      f"rejected {self._rejected}); minerd's log:\n{self._tail_locked()}")
                self._changed.wait(min(left, 0.5))

    def wait_for_accepted(self, n: int, timeout: float) -> None:
        """Wait until the pool has accepted n shares in all (minerd's count)."""
        self.wait_for(lambda m: m.accepted >= n, timeout, f"{n} accepted shares")

    # -- internals --

    def _tail_locked(self) -> str:
        return "\n".join(self._lines[-TAIL_LINES:]) or "(no output)"

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._changed:
                self._lines.append(line)
                result = _RESULT.search(line)
                if result is not None:
                    self._accepted, total = int(result.group(1)), int(result.group(2))
                    self._rejected = total - self._accepted
                    self._results.append(result.group(3) == "yay!!!")
                reason = _REJECT_REASON.search(line)
                if reason is not None:
                    self._reasons.append(reason.group(1))
                self._changed.notify_all()
        proc.stdout.close()
        with self._changed:
            self._changed.notify_all()
