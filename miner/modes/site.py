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


def site_connector(bus: Any, site: str):
    """connect(**callbacks) -> a nats client as this site: its own inbox prefix (the
    server lets a site read only `_INBOX_<site>.>`), reconnecting for ever. The user is
    bus.user, else the site's name."""
    import ssl

    import nats

    options: dict[str, Any] = {"servers": [bus.url], "name": bus.name or f"gridminer-site-{site}",
                               "inbox_prefix": f"_INBOX_{site}", "allow_reconnect": True,
                               "max_reconnect_attempts": -1, "reconnect_time_wait": 1, "connect_timeout": 5}
    if bus.creds_file:
        options["user_credentials"] = os.path.expanduser(bus.creds_file)
    else:  # the nats-server example names each site's user after its site
        options["user"], options["password"] = bus.user or site, bus.password or ""
    if bus.tls_ca:
        options["tls"] = ssl.create_default_context(cafile=os.path.expanduser(bus.tls_ca))

    async def connect(**callbacks):
        return await nats.connect(**options, **callbacks)
    return connect


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
            self.agent = build_site_agent(self.fleet, site, connect=site_connector(bus, site), public_key=public_key,
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
