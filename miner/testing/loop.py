"""An asyncio event loop on a background thread, so async components serve sync test code.

StratumPool and StratumMiner run gridminer's asyncio server and client; a plain
`def test_...` drives them from the main thread through `run()` (a coroutine, waited
for with a timeout) and `call()` (a plain function on the loop thread).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Seconds stop() waits for the loop thread to finish its shutdown.
STOP_TIMEOUT_S = 10.0


class LoopThread:
    """One event loop on one daemon thread: start(), run(coro), call(fn), stop()."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            # Tasks still pending (a component that did not stop cleanly) are cancelled.
            pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run coro on the loop and return its result; TimeoutError (coro cancelled) after timeout."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(f"{self.name}: run() called from its own loop thread (it would deadlock)")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"{self.name}: no result within {timeout} s") from None

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start coro on the loop without waiting for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """fn(*args) on the loop thread; its result."""
        async def invoke() -> T:
            return fn(*args)

        return self.run(invoke(), timeout)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the loop (pending tasks are cancelled) and wait for the thread to end."""
        if not self._started or self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("%s: loop thread did not stop within %.0f s", self.name, timeout)
