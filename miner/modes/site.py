"""site: a site agent. It owns one site's [[site.device]] entries, follows the desired
state the fleet leader writes for it on the bus, reports what its devices really do, and
follows its own fail-safe when the bus is gone (miner.fleet.site)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, TextIO

from miner.config import Config, ConfigError
from miner.metrics import Metrics
from miner.modes.base import Run


def default_state_dir() -> Path:
    """Next to the found-block journals: ~/.local/share/gridminer/bus."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "gridminer" / "bus"


def site_bus(settings: Any, site: str):
    """The bus as this site: its own inbox prefix (a site may read only `_INBOX_<site>.>`)
    and, without bus.user or bus.creds_file, the user named after the site (as in
    deploy/nats/nats-server.conf)."""
    from dataclasses import replace

    from miner.fleet.bus import Bus

    if settings.user is None and settings.creds_file is None:
        settings = replace(settings, user=site)
    if settings.name is None:
        settings = replace(settings, name=f"site-{site}-{os.getpid()}")
    return Bus(settings, site=site)


class SiteRun(Run):
    """site: the site agent of bus.site, with that site's devices from the sites file."""

    def __init__(self, config: Config, *, metrics: Metrics | None = None, out: TextIO = sys.stdout) -> None:
        super().__init__(config, metrics=metrics, out=out)
        self.agent = None

    def _load_sites(self) -> None:
        """Only this site's devices and feed are checked: other sites' secrets are not here."""
        from miner.fleet.site import site_setting_problems
        from miner.sched.sites import SitesError, load_sites

        sc, site = self.config.sched, self.config.bus.site
        try:
            self.fleet = load_sites(sc.sites)
        except SitesError as e:
            raise ConfigError(f"sched.sites: {e}") from None
        problems = site_setting_problems(self.fleet, site)
        if problems:
            raise ConfigError(f"sched.sites {sc.sites}: site {site!r}: {len(problems)} setting(s) missing or wrong; "
                              "nothing was started:\n  - " + "\n  - ".join(problems))

    async def _run(self) -> int:
        import asyncio

        from miner.fleet.bus import BusError
        from miner.fleet.records import load_public_key
        from miner.fleet.site import build_site_agent

        bus, site = self.config.bus, self.config.bus.site
        try:
            public_key = load_public_key(bus.leader_public_key)
        except ValueError as e:
            raise ConfigError(f"bus.leader_public_key: {e}") from None
        state_dir = Path(bus.state_dir).expanduser() if bus.state_dir else default_state_dir()
        self.metrics.set_run_info(chain="-", mode="site")
        try:
            link = site_bus(bus, site)
            link.connect_options()      # a missing password fails now, not in the background
        except BusError as e:
            raise ConfigError(str(e)) from None
        try:
            self.agent = build_site_agent(self.fleet, site, bus=link, public_key=public_key,
                                          desired_ttl_seconds=bus.desired_ttl_seconds,
                                          report_interval_seconds=bus.report_interval_seconds, state_dir=state_dir,
                                          metrics=self.metrics, own_price_interval=self.config.sched.interval_seconds)
        except ValueError as e:
            raise ConfigError(f"site {site!r}: {e}") from None
        devices = len(self.agent.devices.actuator.devices.get(site, []))
        self._print(f"site agent {site}: {devices} device(s), bus {bus.url}, fail-safe "
                    f"{self.agent.follower.fail_safe}, desired state trusted {bus.desired_ttl_seconds:g} s")
        task = asyncio.create_task(self.agent.run(), name="site-agent")
        try:
            await self._until_stopped([task])
        finally:
            self.agent.stop()
            await asyncio.gather(task, return_exceptions=True)
        return 0
