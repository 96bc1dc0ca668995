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
