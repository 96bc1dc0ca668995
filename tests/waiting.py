"""Waiting in async tests: poll a condition against a deadline instead of sleeping blindly."""

from __future__ import annotations

import asyncio
import time


async def wait_until(predicate, timeout: float = 5.0, what: str = "condition", interval: float = 0.02):
    """predicate()'s first truthy value; an AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(interval)
