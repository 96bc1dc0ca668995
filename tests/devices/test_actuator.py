"""site_measurement: device outcomes -> what a site really does (pure)."""

from __future__ import annotations

import math

import pytest

from miner.devices.actuator import DeviceOutcome, SiteMeasurement, site_measurement
from miner.devices.model import DeviceReading


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
