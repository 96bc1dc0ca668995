"""Stopping a synchronous command (`miner bench`, `miner backtest`) on SIGINT or SIGTERM.

The signal raises `Stopped` in the main thread, so `finally` blocks run and child
processes are killed on the way out, and the command exits with 128 + the signal's
number and one line on stderr instead of a traceback (or, for SIGTERM, instead of dying
with its children left running). The run modes stop through their event loop instead
(miner/modes/base.py)."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from typing import Callable, TypeVar

T = TypeVar("T")

__all__ = ["Stopped", "in_daemon_thread", "run_stoppable"]


class Stopped(Exception):
    """SIGINT or SIGTERM arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_stoppable(command: str, body: Callable[[], int]) -> int:
    """body()'s exit status, or 128 + the signal's number when SIGINT or SIGTERM stops it.
    A SIGINT that is ignored (a background job of a non-interactive shell) stays ignored."""

    def stop(signum: int, frame: object) -> None:
        raise Stopped(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, stop)
    try:
        return body()
    except Stopped as stopped:
        print(f"{command}: stopped by {stopped}", file=sys.stderr)
        return 128 + stopped.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def in_daemon_thread(fn: Callable[..., T], *args: object) -> T:
    """fn(*args) in a thread of its own, awaited. Unlike asyncio.to_thread, a stop never
    waits for it: the default executor's threads are joined when the loop and the
    interpreter shut down, so a long computation there (a first numba compile, a MILP at
    its time limit) would hold a stop for its whole length; a daemon thread is left
    behind instead. Cancelling the await abandons the result."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()

    def settle(result: object, error: BaseException | None) -> None:
        if done.done():
            return
        if error is None:
            done.set_result(result)
        else:
            done.set_exception(error)

    def work() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as e:          # noqa: BLE001 - handed to the awaiting task
            result, error = None, e
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:                # the loop closed meanwhile: nobody waits
            pass

    threading.Thread(target=work, name=f"daemon-{getattr(fn, '__name__', 'call')}", daemon=True).start()
    return await done
