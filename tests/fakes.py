"""Fakes shared by the test packages (only for what a test must not really wait for)."""

from __future__ import annotations

import asyncio


class FakeClock:
    """Monotonic time that moves only when something sleeps on it; records every delay.

    Serves both clock shapes in the code: a plain callable (NodeRPC's clock=) and an
    object with monotonic() and async sleep() (BlockSubmitter's clock=).
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # still yield, as a real sleep would
