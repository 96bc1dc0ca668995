"""site: a site agent. It owns one site's [[site.device]] entries, follows the desired
state the fleet leader writes for it on the bus, reports what its devices really do, and
follows its own fail-safe when the bus is gone (miner.fleet.site).

With [upstream] pools it also mines, as agent mode does: its CPU workers mine the pool
and are a device of its site (kind "local", or implicitly when the site lists none)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, TextIO

from miner.config import Config, ConfigError, data_dir
from miner.metrics import Metrics
from miner.modes.agent import AgentMiner


def default_state_dir() -> Path:
    """Next to the found-block journals: ~/.local/share/gridminer/bus."""
    return data_dir() / "bus"


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


class SiteRun(AgentMiner):
    """site: the site agent of bus.site, with that site's devices from the sites file;
    mining too when [upstream] names pools. No cgminer API here: the site agent drives its
    own workers, and the API's default port belongs to the site's agent rigs."""

    def __init__(self, config: Config, *, metrics: Metrics | None = None, out: TextIO = sys.stdout) -> None:
        from dataclasses import replace

        super().__init__(replace(config, agent=replace(config.agent, api="off")), metrics=metrics, out=out)
        self.agent = None

    @property
    def mines(self) -> bool:
        return bool(self.config.upstream.pools)

    def _load_sites(self) -> None:
        """Only this site's devices and feed are checked: other sites' secrets are not here."""
        from miner.fleet.site import site_setting_problems
        from miner.sched.sites import SitesError, load_sites

        sc, site = self.config.sched, self.config.bus.site
        try:
            self.fleet = load_sites(sc.sites)
        except SitesError as e:
            raise ConfigError(f"sched.sites: {e}") from None
        self.local_site = site
        problems = site_setting_problems(self.fleet, site, mines=self.mines)
        if problems:
            raise ConfigError(f"sched.sites {sc.sites}: site {site!r}: {len(problems)} setting(s) missing or wrong; "
                              "nothing was started:\n  - " + "\n  - ".join(problems))

    async def _run(self) -> int:
        if self.mines:
            return await super()._run()   # agent mode's mining; the site agent comes in as its scheduler
        self._prepare_scheduler()
        self._print(self._started_line())
        tasks = self._scheduler_tasks()
        try:
            await self._until_stopped(tasks)
        finally:
            await self._wind_down(tasks)
        return 0

    def _prepare_scheduler(self, **_: object) -> None:
        """The site agent, in the place of the local scheduler (after the worker pool exists)."""
        from miner.fleet.bus import BusError
        from miner.fleet.records import load_public_key
        from miner.fleet.site import build_site_agent

        bus, site = self.config.bus, self.config.bus.site
        try:
            public_key = load_public_key(bus.leader_public_key)
        except ValueError as e:
            raise ConfigError(f"bus.leader_public_key: {e}") from None
        state_dir = Path(bus.state_dir).expanduser() if bus.state_dir else default_state_dir()
        try:
            link = site_bus(bus, site)
            link.connect_options()      # a missing password fails now, not in the background
        except BusError as e:
            raise ConfigError(str(e)) from None
        try:
            self.agent = build_site_agent(self.fleet, site, bus=link, public_key=public_key,
                                          desired_ttl_seconds=bus.desired_ttl_seconds,
                                          report_interval_seconds=bus.report_interval_seconds, state_dir=state_dir,
                                          metrics=self.metrics, own_price_interval=self.config.sched.interval_seconds,
                                          local_pool=self.pool)
        except ValueError as e:
            raise ConfigError(f"site {site!r}: {e}") from None
        if self.mines:
            self._print(self._started_line())

    def _started_line(self) -> str:
        bus = self.config.bus
        devices = len(self.agent.devices.actuator.devices.get(bus.site, []))
        return (f"site agent {bus.site}: {devices} device(s), bus {bus.url}, fail-safe "
                f"{self.agent.follower.fail_safe}, desired state trusted {bus.desired_ttl_seconds:g} s")

    def _scheduler_tasks(self) -> list:
        import asyncio

        return [asyncio.create_task(self.agent.run(), name="site-agent")] if self.agent is not None else []

    async def _wind_down(self, tasks) -> None:
        if self.agent is not None:
            self.agent.stop()     # closes the bus connection on its way out (bounded)
        await super()._wind_down(tasks)
