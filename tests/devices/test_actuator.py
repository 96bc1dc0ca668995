"""The shared actuator's per-command timeout: a device that never answers is given up on."""

import asyncio

from miner.devices.actuator import DeviceActuator, RetryPolicy
from miner.devices.model import DeviceReading
from miner.metrics import Metrics


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
