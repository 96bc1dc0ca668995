"""The fleet scheduler (`miner fleet`): prices, hashprice and the policy over every site,
each site's decision written to the bus as its signed desired state, each site's report
read back as what it really does. It never dials a device.

    Scheduler.step ──decision──► BusActuator.actuate(site)
                                   leader: DesiredState(epoch, seq+1) ──put──► gridminer_desired/<site>
                                   always: gridminer_reported/<site> ──► SiteMeasurement
                                           (no report, or older than 3 report intervals:
                                            not hashing, level 0, site_reporting 0)

Several may run: only the lease holder (miner.fleet.lease) writes; a standby computes the
same plans and reads the same reports, so it takes over warm. A new leader writes every
site at once under its new epoch; a leader rewrites a site's unchanged state when a third
of desired_ttl has passed, so a site never lets a live leader's state expire.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Sequence

from miner.config import Config
from miner.devices.actuator import DeviceOutcome, LimitedLog, SiteMeasurement, error_text
from miner.devices.model import DeviceReading
from miner.fleet.bus import Bus, BusStopped, instance_name, load_signing_key_file
from miner.fleet.lease import Lease
from miner.fleet.records import (RecordError, SiteReport, check_site_name, decode_report, encode_desired,
                                 make_desired, public_key_hex)
from miner.metrics import Metrics
from miner.sched.model import SiteDecision, utc_now

log = logging.getLogger(__name__)

# A report older than this many report intervals means the site is not reporting.
STALE_REPORTS = 3
# Reads of the sites' reports in flight at once.
READ_CONCURRENCY = 64
# Seconds a stop may spend on releasing the lease and closing the bus (SIGTERM: 5 s in all).
STOP_STEP_SECONDS = 1.5


@dataclass
class _Written:
    epoch: int
    seq: int
    level: float
    reason: str
    issued_at: datetime


class BusActuator:
    """The Scheduler's actuator for a fleet: desired state out (leader only), reports in."""

    def __init__(self, sites: Sequence[str], *, desired_kv: Any, reported_kv: Any, lease: Lease, signing_key: Any,
                 metrics: Metrics, desired_ttl_seconds: float, report_interval_seconds: float,
                 leader_name: str, clock: Callable[[], datetime] = utc_now) -> None:
        self.sites = [check_site_name(s) for s in sites]
        self.desired_kv, self.reported_kv, self.lease = desired_kv, reported_kv, lease
        self.key, self.metrics, self.clock = signing_key, metrics, clock
        self.desired_ttl, self.report_interval = desired_ttl_seconds, report_interval_seconds
        self.leader_name = leader_name
        self.written: dict[str, _Written] = {}
        self.reports: dict[str, SiteReport] = {}
        self._report_seen: dict[str, tuple[int, datetime]] = {}   # site -> (KV revision, first seen)
        self._ack_seen: dict[str, tuple[tuple[int, datetime], datetime]] = {}
        self._measurements: dict[str, tuple[SiteReport, SiteMeasurement]] = {}   # from which report
        # The hashprice the decisions saw (the scheduler's), written into each desired state.
        self.hashprice_of: Callable[[], float | None] = lambda: None
        self._seq = 0
        self._seq_epoch: int | None = None
        self._log = LimitedLog(log)
        self._reads = asyncio.Semaphore(READ_CONCURRENCY)
        for site in self.sites:
            metrics.fleet_site_reporting.labels(site).set(0)

    # -- the Actuator protocol -------------------------------------------------------------

    async def actuate(self, site: str, decision: SiteDecision, before_level: float = 0.0) -> SiteMeasurement:
        if self.lease.leading:
            await self._write_if_due(site, decision)
        return await self.measure(site)

    async def take_over(self) -> dict[str, SiteMeasurement]:
        measured = await asyncio.gather(*(self.measure(site) for site in self.sites))
        return {site: m for site, m in zip(self.sites, measured) if self.reports.get(site) is not None}

    # -- desired state out ---------------------------------------------------------------

    def _due(self, site: str, decision: SiteDecision, epoch: int, now: datetime) -> bool:
        last = self.written.get(site)
        return (last is None or last.epoch != epoch or last.level != decision.level or last.reason != decision.reason
                or (now - last.issued_at).total_seconds() >= self.desired_ttl / 3)

    async def _write_if_due(self, site: str, decision: SiteDecision) -> None:
        epoch, now = self.lease.epoch, self.clock()
        if epoch is None or not self._due(site, decision, epoch, now):
            return
        if self._seq_epoch != epoch:
            self._seq_epoch, self._seq = epoch, 0
        self._seq += 1
        state = make_desired(site, epoch=epoch, seq=self._seq, level=decision.level, reason=decision.reason,
                             issued_at=now.replace(microsecond=0), ttl_seconds=self.desired_ttl,
                             hashprice=self.hashprice_of(), leader=self.leader_name)
        data = encode_desired(state, self.key)
        if not self.lease.leading:   # the lease may have run out while this step ran
            return
        try:
            await self.desired_kv.put(site, data)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.metrics.fleet_bus_errors.labels("write").inc()
            self._log.warning(f"write:{site}", "fleet: desired state of site %s not written: %s", site,
                              error_text(e))
            return
        self.written[site] = _Written(epoch, state.seq, decision.level, decision.reason, state.issued_at)
        self.metrics.fleet_desired_level.labels(site).set(decision.level)
        self.metrics.fleet_desired_revision.labels(site).set(state.revision)
        log.debug("fleet: site %s desired level %.2f (%s), revision %d", site, decision.level, decision.reason,
                  state.revision)

    # -- reports in ----------------------------------------------------------------------

    async def read_report(self, site: str) -> SiteReport | None:
        import nats.js.errors

        async with self._reads:
            try:
                entry = await self.reported_kv.get(site)
            except nats.js.errors.KeyNotFoundError:
                return self.reports.get(site)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.metrics.fleet_bus_errors.labels("read").inc()
                self._log.warning(f"read:{site}", "fleet: report of site %s unreadable: %s", site,
                                  error_text(e))
                return self.reports.get(site)
        seen = self._report_seen.get(site)
        if seen is not None and seen[0] == entry.revision and site in self.reports:
            # Unchanged since the last step: not decoded again (a 50-device report costs
            # about a millisecond, for every site at every step).
            return self.reports[site]
        try:
            report = decode_report(entry.value, site=site)
        except RecordError as e:
            self.metrics.fleet_bus_errors.labels("report_malformed").inc()
            self._log.warning(f"report:{site}", "fleet: report of site %s refused (%s): %s", site, e.reason, e)
            return self.reports.get(site)
        self.reports[site] = report
        # Ages by this process's clock from when a new report or ack was first seen, so a
        # site whose clock is off is still judged right; the site's own time stamps count
        # only for what was already there when this process started.
        now = self.clock()
        seen = self._report_seen.get(site)
        if seen is None or seen[0] != entry.revision:
            self._report_seen[site] = (entry.revision, min(report.at, now) if seen is None else now)
        if report.ack is not None:
            ack_key = (report.ack.revision, report.ack.at)
            acked = self._ack_seen.get(site)
            if acked is None or acked[0] != ack_key:
                self._ack_seen[site] = (ack_key, min(report.ack.at, now) if acked is None else now)
        return report

    async def measure(self, site: str) -> SiteMeasurement:
        report = await self.read_report(site)
        now = self.clock()
        m = self.metrics
        seen = self._report_seen.get(site)
        fresh = report is not None and seen is not None and \
            (now - seen[1]).total_seconds() < STALE_REPORTS * self.report_interval
        m.fleet_site_reporting.labels(site).set(1 if fresh else 0)
        acked = self._ack_seen.get(site)
        if acked is not None:
            m.fleet_last_ack_age.labels(site).set(max(0.0, (now - acked[1]).total_seconds()))
        if report is None or not fresh:
            if report is not None:
                self._log.warning(f"stale:{site}", "fleet: site %s not reporting (last report %s)", site,
                                  report.at.isoformat())
            m.fleet_reported_level.labels(site).set(0)
            return SiteMeasurement(0.0, False, 0.0, None)
        m.fleet_reported_level.labels(site).set(report.level)
        known = self._measurements.get(site)
        if known is not None and known[0] is report:
            return known[1]
        devices = tuple(DeviceOutcome(d.name, d.applied,
                                      DeviceReading(d.hashing, d.hashrate_hs, d.power_w, d.level) if d.up else None,
                                      d.hashing)
                        for d in report.devices)
        measured = SiteMeasurement(report.level, report.hashing, report.hashrate_hs, report.power_w, devices)
        self._measurements[site] = (report, measured)
        return measured


# -- the runner -----------------------------------------------------------------------------------

class FleetRunner:
    """`miner fleet`: connect, make the buckets, hold or wait for the lease, run the
    scheduler with a BusActuator; SIGINT/SIGTERM end it within 5 s, bus or no bus."""

    def __init__(self, config: Config, fleet: Any, *, metrics: Metrics | None = None,
                 policy_name: str | None = None) -> None:
        self.config, self.fleet = config, fleet
        self.metrics = metrics if metrics is not None else Metrics()
        self.policy_name = policy_name or config.sched.policy
        self.name = instance_name(config.bus)
        for site in fleet.sites:
            check_site_name(site.name)
        if not config.bus.signing_key_file:
            raise ValueError("[bus] signing_key_file: the fleet signs every desired state; make a key with "
                             "`miner fleet keygen --out FILE` and give its path")
        self.key = load_signing_key_file(config.bus.signing_key_file)
        self.bus = Bus(config.bus, on_state=self._bus_state)
        self.lease: Lease | None = None
        self.scheduler: Any = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self.metrics_port: int | None = None

    def stop(self) -> None:
        self._stopping.set()
        self.bus.stop()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests)
                pass
        self._start_metrics()
        log.info("fleet %s: %d sites, policy %s, bus %s, public key %s", self.name, len(self.fleet.sites),
                 self.policy_name, self.config.bus.url, public_key_hex(self.key))
        work = asyncio.ensure_future(self._work())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            if self.lease is not None:
                await self._bounded(self.lease.release(), "releasing the lease")
            await self._bounded(self.bus.close(), "closing the bus")
            self.metrics.fleet_leader.set(0)
        if work.done() and not work.cancelled() and work.exception() is not None \
                and not isinstance(work.exception(), BusStopped):
            raise work.exception()
        log.info("fleet %s: stopped", self.name)
        return 0

    async def _bounded(self, coroutine: Any, what: str) -> None:
        try:
            await asyncio.wait_for(coroutine, STOP_STEP_SECONDS)
        except asyncio.TimeoutError:
            log.info("fleet %s: %s took over %.1f s; going on", self.name, what, STOP_STEP_SECONDS)

    async def _work(self) -> None:
        from miner.sched.feeds import feeds_for_sites
        from miner.sched.policy import make_policy
        from miner.sched.scheduler import Scheduler, hashprice_source_for

        b = self.config.bus
        await self.bus.connect()
        desired, reported, lease_kv = await self._buckets()
        self.lease = Lease(lease_kv, self.name, b.lease_ttl_seconds, on_change=self._leadership)
        actuator = BusActuator([s.name for s in self.fleet.sites], desired_kv=desired, reported_kv=reported,
                               lease=self.lease, signing_key=self.key, metrics=self.metrics,
                               desired_ttl_seconds=b.desired_ttl_seconds,
                               report_interval_seconds=b.report_interval_seconds, leader_name=self.name)
        feeds = feeds_for_sites(self.fleet.sites, self.fleet.base_dir)
        self.scheduler = Scheduler(self.fleet, make_policy(self.fleet, self.policy_name), feeds, actuator=actuator,
                                   metrics=self.metrics,
                                   hashprice_source=hashprice_source_for(self.fleet.economics),
                                   interval_seconds=self.config.sched.interval_seconds)
        actuator.hashprice_of = lambda: self.scheduler.hashprice
        await self.lease.step()   # lead from the first step when nobody else does
        lease_task = asyncio.ensure_future(self._lease_loop())
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                try:
                    await self.scheduler.step(self.scheduler.clock())
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("fleet step failed; the next one comes in %.3g s", self.scheduler.interval)
                    self.metrics.sched_errors.labels("step").inc()
                self._publish_lease_metrics()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.scheduler.interval)
                except asyncio.TimeoutError:
                    pass
        finally:
            lease_task.cancel()
            await asyncio.gather(lease_task, return_exceptions=True)

    async def _buckets(self) -> tuple[Any, Any, Any]:
        """The buckets, retried every few seconds while the bus refuses (cancellable)."""
        while True:
            try:
                return await self.bus.fleet_buckets(self.config.bus.lease_ttl_seconds)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.metrics.fleet_bus_errors.labels("buckets").inc()
                log.warning("fleet %s: buckets unavailable (%s); retrying", self.name, error_text(e))
                await asyncio.sleep(2.0)

    async def _lease_loop(self) -> None:
        assert self.lease is not None
        while True:
            await asyncio.sleep(self.lease.interval)
            try:
                await self.lease.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fleet %s: lease step failed", self.name)
                self.metrics.fleet_bus_errors.labels("lease").inc()
            self._publish_lease_metrics()

    def _leadership(self, leading: bool) -> None:
        self.metrics.fleet_leader.set(1 if leading else 0)
        if leading:
            self._wake.set()   # a new leader writes every site now, under its epoch

    def _publish_lease_metrics(self) -> None:
        if self.lease is None:
            return
        self.metrics.fleet_leader.set(1 if self.lease.leading else 0)
        age = self.lease.age_seconds()
        if age is not None:
            self.metrics.fleet_lease_age.set(age)

    async def _bus_state(self, connected: bool) -> None:
        if connected and self.lease is not None:
            self._wake.set()   # resync at once: the lease, and what the sites reported meanwhile

    def _start_metrics(self) -> None:
        from prometheus_client import start_http_server

        from miner.config import parse_listen

        listen = self.config.metrics.listen
        if listen == "off":
            return
        host, port = parse_listen(listen, "metrics.listen")
        try:
            server, _ = start_http_server(port, addr=host, registry=self.metrics.registry)
        except OSError as e:
            log.error("metrics endpoint %s unavailable (%s); the fleet runs without it", listen, e)
            return
        self.metrics_port = server.server_port
        log.info("fleet %s: metrics at http://%s:%d/metrics", self.name, host, server.server_port)

