"""The shared actuator: device outcomes -> what a site really does (pure), and the per-command
timeout that gives up on a device that never answers."""

from __future__ import annotations

import asyncio
import math

import pytest

from miner.devices.actuator import DeviceActuator, DeviceOutcome, RetryPolicy, SiteMeasurement, site_measurement
from miner.devices.model import DeviceReading
from miner.metrics import Metrics


def out(name, *, hashing, applied=True, rate=10.0, power=100.0, answered=True):
    reading = DeviceReading(hashing, rate, power) if answered else None
    return DeviceOutcome(name, applied, reading, hashing)


@pytest.mark.parametrize("decision, before, outcomes, expected", [
    # No devices: modelled, it does what it was told.
    (0.5, 0.0, [], SiteMeasurement(0.5, True, 0.0, None, modelled=True)),
    # Planned on and one device hashes: the planned level, only hashing devices' rates, all watts.
    (0.5, 0.0, [out("a", hashing=True), out("b", hashing=False, applied=False)], None),
    # Planned on, nobody hashes: off.
    (1.0, 0.0, [out("a", hashing=False, applied=False)], (0.0, False, 0.0, 100.0)),
    # A curtail that did not take: still at the level before (1.0 when that was 0).
    (0.0, 0.6, [out("a", hashing=True)], (0.6, True, 10.0, 100.0)),
    (0.0, 0.0, [out("a", hashing=True)], (1.0, True, 10.0, 100.0)),
    # A device that does not answer: its power is unknown, so the site's is.
    (1.0, 0.0, [out("a", hashing=True), out("b", hashing=False, answered=False)], (1.0, True, 10.0, None)),
    # Nonsense watts are not a measurement.
    (1.0, 0.0, [out("a", hashing=True, power=math.nan)], (1.0, True, 10.0, None)),
    (1.0, 0.0, [out("a", hashing=True, power=-5.0)], (1.0, True, 10.0, None)),
])
def test_site_measurement(decision, before, outcomes, expected):
    got = site_measurement(decision, before, outcomes)
    if isinstance(expected, SiteMeasurement):
        assert got == expected
    elif expected is None:
        assert (got.level, got.hashing, got.hashrate_hs, got.power_w, got.modelled) == (0.5, True, 10.0, 200.0, False)
    else:
        assert (got.level, got.hashing, got.hashrate_hs, got.power_w) == expected
        assert got.devices == tuple(outcomes) and not got.modelled


class Hung:
    """A rig whose control API accepts the connection and never answers."""

    name = "hung-01"

    def __init__(self) -> None:
        self.calls = 0

    async def apply(self, level: float) -> None:
        self.calls += 1
        await asyncio.Event().wait()

    async def read(self) -> DeviceReading:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def test_a_device_that_never_answers_times_out_each_try_and_is_reported_down():
    metrics, rig = Metrics(), Hung()
    actuator = DeviceActuator({"texas": [rig]}, metrics=metrics,
                              retry=RetryPolicy(tries=2, first_delay_seconds=0.0, timeout_seconds=0.05))
    [outcome] = asyncio.run(actuator.apply("texas", 1.0))
    assert rig.calls == 2
    assert not outcome.applied and outcome.reading is None and not outcome.hashing
    sample = metrics.registry.get_sample_value
    assert sample("gridminer_device_actuations_total", {"site": "texas", "device": "hung-01", "result": "failed"}) == 1
    assert sample("gridminer_device_actuations_total",
                  {"site": "texas", "device": "hung-01", "result": "read_failed"}) == 1
    assert sample("gridminer_device_up", {"site": "texas", "device": "hung-01"}) == 0


# -- CommandDeadlines: asyncio.timeout's behaviour with one shared timer -------------------------

def test_shared_deadlines_time_out_each_hung_command_at_its_own_deadline():
    from miner.devices.actuator import CommandDeadlines

    async def main():
        deadlines, loop = CommandDeadlines(), asyncio.get_running_loop()
        ended: dict[str, tuple[str, float]] = {}

        async def command(name: str, answers_after: float | None) -> None:
            started = loop.time()
            try:
                async with deadlines.timeout(0.2):
                    if answers_after is None:
                        await asyncio.Event().wait()
                    else:
                        await asyncio.sleep(answers_after)
                ended[name] = ("ok", loop.time() - started)
            except TimeoutError:
                ended[name] = ("timeout", loop.time() - started)

        first = asyncio.create_task(command("hung-first", None))
        quick = asyncio.create_task(command("quick", 0.0))
        await asyncio.sleep(0.1)               # a later command gets a later deadline
        later = asyncio.create_task(command("hung-later", None))
        await asyncio.gather(first, quick, later)
        return ended

    ended = asyncio.run(main())
    assert ended["quick"][0] == "ok"
    assert ended["hung-first"][0] == "timeout" and ended["hung-first"][1] >= 0.2
    # Not expired with the first one: its own 0.2 s, counted from its own start.
    assert ended["hung-later"][0] == "timeout" and ended["hung-later"][1] >= 0.2


def test_a_stop_inside_a_shared_deadline_stays_a_cancellation():
    from miner.devices.actuator import CommandDeadlines

    async def main():
        deadlines = CommandDeadlines()
        entered = asyncio.Event()

        async def command() -> None:
            async with deadlines.timeout(30.0):
                entered.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(command())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not deadlines._queue and deadlines._timer is None   # nothing left armed

    asyncio.run(main())


def test_a_stop_at_the_moment_of_the_deadline_is_not_swallowed_as_a_timeout():
    """As asyncio.timeout: when the task is also cancelled from outside, the
    CancelledError goes on (a stop is never turned into a device timeout)."""
    from miner.devices.actuator import CommandDeadlines

    async def main():
        deadlines = CommandDeadlines()
        seen = []

        async def command() -> None:
            try:
                async with deadlines.timeout(0.05):
                    try:
                        await asyncio.Event().wait()
                    except asyncio.CancelledError:
                        asyncio.current_task().cancel()   # the stop arrives with the deadline
                        raise
            except TimeoutError:
                seen.append("timeout")

        task = asyncio.create_task(command())
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == []

    asyncio.run(main())


def test_shared_deadlines_give_a_shorter_timeout_after_a_longer_one_its_own_deadline():
    from miner.devices.actuator import CommandDeadlines

    async def main():
        deadlines = CommandDeadlines()
        outcome = []

        async def long_wait() -> None:
            async with deadlines.timeout(30.0):
                await asyncio.Event().wait()

        background = asyncio.create_task(long_wait())
        await asyncio.sleep(0)
        try:
            async with deadlines.timeout(0.05):
                await asyncio.Event().wait()
        except TimeoutError:
            outcome.append("timeout")
        background.cancel()
        await asyncio.gather(background, return_exceptions=True)
        return outcome

    assert asyncio.run(main()) == ["timeout"]


def test_many_devices_share_one_timer_and_answer_within_their_timeouts():
    """A site of many quick devices: every command answers, none is cancelled, and the
    actuator's deadline queue is empty afterwards."""

    class Quick:
        def __init__(self, name: str) -> None:
            self.name, self.level = name, 0.0

        async def apply(self, level: float) -> None:
            await asyncio.sleep(0.001)
            self.level = level

        async def read(self) -> DeviceReading:
            await asyncio.sleep(0.001)
            return DeviceReading(self.level > 0, 1e12 * self.level, 100.0, self.level)

    rigs = [Quick(f"rig-{i:02d}") for i in range(40)]
    metrics = Metrics()
    actuator = DeviceActuator({"texas": rigs}, metrics=metrics, retry=RetryPolicy(timeout_seconds=5.0))

    async def main():
        first = await actuator.apply("texas", 1.0)
        second = await actuator.apply("texas", 0.0)
        return first, second

    first, second = asyncio.run(main())
    assert all(o.applied and o.hashing for o in first) and all(o.applied and not o.hashing for o in second)
    assert not actuator._deadlines._queue and actuator._deadlines._timer is None
    sample = metrics.registry.get_sample_value
    assert sample("gridminer_device_actuations_total", {"site": "texas", "device": "rig-07", "result": "ok"}) == 2
    assert sample("gridminer_device_up", {"site": "texas", "device": "rig-07"}) == 1


def test_shared_deadlines_work_in_a_new_loop_after_one_ended_mid_command():
    """A loop closed while a command waited (its task never finished) leaves nothing that
    keeps the next loop's commands from timing out."""
    from miner.devices.actuator import CommandDeadlines

    deadlines = CommandDeadlines()

    async def hung(seconds: float) -> str:
        try:
            async with deadlines.timeout(seconds):
                await asyncio.Event().wait()
        except TimeoutError:
            return "timeout"
        return "answered"

    old = asyncio.new_event_loop()
    try:
        old.create_task(hung(0.3))
        old.run_until_complete(asyncio.sleep(0.01))
    finally:
        old.close()

    async def main():
        # A deadline after the dead loop's (so it queues behind it); the outer bound only
        # keeps a broken implementation from hanging the test.
        return await asyncio.wait_for(hung(0.6), 20.0)

    assert asyncio.run(main()) == "timeout"
