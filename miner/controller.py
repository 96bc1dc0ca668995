"""Wires one run from a validated Config: the run mode's class for config.mining.mode.

Each mode (miner/modes/) builds its own components; adding a mode is one line in MODES
(and its name in miner.config.MODES, which a config may choose).
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from miner.config import Config
from miner.metrics import Metrics
from miner.modes.agent import AgentMiner
from miner.modes.base import Run
from miner.modes.proxy import ProxyMiner
from miner.modes.site import SiteRun
from miner.modes.solo import SoloMiner

# mining.mode -> the class that runs it.
MODES: dict[str, type[Run]] = {
    "solo": SoloMiner,
    "agent": AgentMiner,
    "proxy": ProxyMiner,
    "site": SiteRun,
}


def build_run(config: Config, *, metrics: Metrics | None = None, out: TextIO = sys.stdout) -> Run:
    """The run of config's mode, not started yet."""
    return MODES[config.mining.mode](config, metrics=metrics, out=out)


def run(config: Config) -> int:
    """Run config's mode until it ends or SIGINT/SIGTERM stops it; returns the exit status."""
    return asyncio.run(build_run(config).run())
