"""Many miners of chosen families served at once, for another process to drive."""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any

from miner.testing.asic_emulators.antminer import AntminerStockMiner
from miner.testing.asic_emulators.base import EmulatedMiner
from miner.testing.asic_emulators.host import EmulatorHost
from miner.testing.asic_emulators.luxos import LuxOSMiner
from miner.testing.asic_emulators.web_json import BitaxeMiner, BraiinsOSMiner, EPicMiner, VNishMiner
from miner.testing.asic_emulators.whatsminer import WhatsMinerMiner

FAMILIES: dict[str, type[EmulatedMiner]] = {
    "luxos": LuxOSMiner, "vnish": VNishMiner, "braiins": BraiinsOSMiner, "epic": EPicMiner,
    "whatsminer": WhatsMinerMiner, "antminer": AntminerStockMiner, "bitaxe": BitaxeMiner,
}


async def serve_fleet(counts: dict[str, int], *, password: str | None = None,
                      announce: Any = print, stop: asyncio.Event | None = None) -> None:
    """Serve counts[family] miners of each family until `stop` is set; `announce` gets one
    JSON line per miner ({"family", "ip"}) and then {"ready": n}."""
    stop = stop or asyncio.Event()
    async with EmulatorHost() as host:
        n = 0
        for family, count in counts.items():
            cls = FAMILIES[family]
            for _ in range(count):
                takes_password = "password" in inspect.signature(cls).parameters
                miner = cls(password=password) if password and takes_password else cls()
                announce(json.dumps({"family": family, "ip": await host.add(miner)}))
                n += 1
        announce(json.dumps({"ready": n}))
        await stop.wait()
