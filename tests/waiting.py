"""Waiting in tests: poll a condition against a deadline instead of sleeping blindly."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from pathlib import Path


async def wait_until(predicate, timeout: float = 5.0, what: str = "condition", interval: float = 0.02):
    """predicate()'s first truthy value; an AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(interval)


def tail(path: Path, chars: int = 3000) -> str:
    """The end of a log file, for assertion messages."""
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def wait_port(port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None,
              log: Path | None = None) -> None:
    """Block until something accepts connections on 127.0.0.1:port; with `proc`, fail at
    once when it exits (showing the end of `log`)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            context = f":\n{tail(log)}" if log is not None else ""
            if proc is not None:
                assert proc.poll() is None, f"process exited ({proc.returncode}){context}"
            assert time.monotonic() < deadline, f"nothing listens on {port}{context}"
            time.sleep(0.1)
