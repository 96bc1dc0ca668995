"""in_daemon_thread: results and errors reach the awaiting task, and a process whose event
loop stops while the thread still computes exits at once (asyncio.to_thread's executor
would hold the exit until the computation ends)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time

import pytest

from miner.stopping import in_daemon_thread


def test_result_and_error_reach_the_awaiting_task():
    async def scenario():
        assert await in_daemon_thread(sum, [1, 2, 3]) == 6
        with pytest.raises(ZeroDivisionError):
            await in_daemon_thread(lambda: 1 / 0)

    asyncio.run(scenario())


@pytest.mark.parametrize("runner", ["in_daemon_thread", "asyncio.to_thread"])
def test_a_stop_does_not_wait_for_the_computation(runner):
    # the computation sleeps 60 s; the loop gives up on it after 0.5 s and the process
    # must end. With asyncio.to_thread it would end when the sleep does, so that case
    # sleeps 3 s only and shows the wait the daemon thread avoids.
    seconds = 60 if runner == "in_daemon_thread" else 3
    code = textwrap.dedent(f"""
        import asyncio, time
        from miner.stopping import in_daemon_thread

        async def main():
            try:
                await asyncio.wait_for({runner}(time.sleep, {seconds}), 0.5)
            except asyncio.TimeoutError:
                print("given up", flush=True)

        asyncio.run(main())
    """)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert out.returncode == 0 and "given up" in out.stdout, out.stderr
    if runner == "in_daemon_thread":
        assert took < 30, took          # not the 60 s of the sleep (under any load)
    else:
        assert took >= 3, took          # the executor joined the sleeping thread
