"""The device vocabulary: what a driver reads from a rig and the protocol every driver meets.

A device is anything that can be curtailed: local CPU workers, a gridminer agent, an ASIC
through its control API. Its level is a fraction of its capacity: 0.0 stops hashing.
Drivers raise DeviceError when the device does not answer or refuses a command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class DeviceReading:
    hashing: bool                      # the device reports hashing now
    hashrate_hs: float                 # hashes per second it reports (0.0 when unknown)
    power_w: float | None = None       # watts it reports, None when it cannot tell
    level: float | None = None         # power level it runs at, if it can tell


class DeviceError(Exception):
    """A device did not answer or refused a command."""


class Device(Protocol):
    """Something that can be curtailed: local workers, an agent, an ASIC."""

    name: str

    async def apply(self, level: float) -> None:
        """Run at `level` (0.0: stop hashing). Raises DeviceError."""

    async def read(self) -> DeviceReading:
        """What the device reports now. Raises DeviceError."""
