"""The site agent: one site's devices driven by its desired state on the fleet bus.

    NATS ──$KV.gridminer_desired.<site> (live puts)──┐
         ──direct get of that key (start, reconnect, ┤ verify (records) ──► Follower.offer
           every report_interval)                    │
                                                     ▼
    control loop: Follower.target(now, own price) ──► actuator (retry, read back)
                      │ after each apply (ack) and every report_interval
                      └─► SiteReport ──$KV.gridminer_reported.<site> (JetStream publish, PubAck)

The decisions are miner.fleet.following's (pure); this module does the waiting, the
bus and the devices. Every wait ends on stop(); a bus that is down never blocks a stop,
an apply or the fail-safe.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Sequence

from miner.devices.actuator import DeviceActuator, DeviceOutcome, RetryPolicy, SiteMeasurement, \
    error_text, site_measurement, usable_watts
from miner.devices.model import Device
from miner.fleet.following import Follower, OwnPrice, Target, expires_at
from miner.fleet.records import (MODES, REJECT_REASONS, Ack, DeviceReport, RecordError, SiteReport, encode_report,
                                 format_time)
from miner.metrics import Metrics
from miner.sched.model import utc_now

log = logging.getLogger(__name__)

# A refused record is logged at most this often per reason (seconds); every one is counted.
REJECT_LOG_INTERVAL = 60.0
# Between attempts at a resync the bus did not answer (seconds, doubling to the cap).
RESYNC_RETRY_FIRST, RESYNC_RETRY_CAP = 0.5, 5.0
# How long the site's own price feed may take to answer (seconds).
FEED_TIMEOUT = 10.0
# How often the site's own price feed is read (seconds; site mode uses [sched] interval_seconds).
OWN_PRICE_INTERVAL = 60.0


@dataclass(frozen=True)
class Applied:
    """What the site's devices do after being told a level (or only read)."""

    outcome: str                       # applied | partial | failed (every device obeyed, some, none)
    measurement: SiteMeasurement
    devices: tuple[DeviceReport, ...]


def rate_of(value: float) -> float:
    """A hash rate for a report: firmware's NaN, infinity or negative is 0 (not hashing)."""
    return value if math.isfinite(value) and value > 0 else 0.0


def obeyed(outcome: DeviceOutcome, level: float) -> bool:
    """The device took the command and its read-back shows it: hashing exactly when level > 0."""
    return outcome.applied and outcome.reading is not None and outcome.hashing == (level > 0)


def applied_of(level: float | None, measurement: SiteMeasurement) -> Applied:
    """The ack outcome and per-device report of a measurement; `level` None: only read."""
    devices = tuple(DeviceReport(
        name=o.device, up=o.reading is not None, hashing=o.hashing,
        applied=level is not None and obeyed(o, level),
        hashrate_hs=rate_of(o.reading.hashrate_hs) if o.reading is not None else 0.0,
        power_w=usable_watts(o.reading.power_w) if o.reading is not None else None,
        level=o.reading.level if o.reading is not None and o.reading.level is not None
        and 0.0 <= o.reading.level <= 1.0 else None) for o in measurement.devices)
    ok = sum(d.applied for d in devices)
    outcome = "applied" if ok == len(devices) else "partial" if ok else "failed"
    return Applied(outcome, measurement, devices)


class SiteDevices:
    """One site's devices behind the shared actuator (retry, read-back, measured state)."""

    def __init__(self, site: str, devices: Sequence[Device], *, metrics: Metrics,
                 retry: RetryPolicy = RetryPolicy()) -> None:
        self.site = site
        self.actuator = DeviceActuator({site: list(devices)}, metrics=metrics, retry=retry)
        self.level_before = 0.0

    async def apply(self, level: float) -> Applied:
        """Tell every device `level` (a device already at it is only read back)."""
        outcomes = await self.actuator.apply(self.site, level)
        m = site_measurement(level, self.level_before, outcomes)
        self.level_before = m.level
        return applied_of(level, m)

    async def read(self) -> Applied:
        """What the devices do, telling them nothing (before any level is in force)."""
        devices = self.actuator.devices.get(self.site, [])
        readings = await self.actuator.readings(self.site)
        outcomes = [DeviceOutcome(d.name, False, r, r is not None and r.hashing) for d, r in zip(devices, readings)]
        hashing = [r for r in readings if r is not None and r.hashing]
        level = max((r.level if r.level is not None else 1.0 for r in hashing), default=0.0)
        powers = [usable_watts(r.power_w) if r is not None else None for r in readings]
        power = sum(powers) if powers and None not in powers else None
        m = SiteMeasurement(level, bool(hashing), sum(r.hashrate_hs for r in hashing), power, tuple(outcomes))
        self.level_before = level
        return applied_of(None, m)


class StateFile:
    """The highest applied revision and its record, kept across restarts (atomic writes)."""

    def __init__(self, directory: Path, site: str) -> None:
        self.path = Path(directory) / f"site-{site}.json"

    def load(self) -> tuple[int | None, bytes | None]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as e:
            log.warning("site state %s unreadable (%s): starting without it", self.path, e)
            return None, None
        revision = doc.get("highest_applied_revision") if isinstance(doc, dict) else None
        record = doc.get("record") if isinstance(doc, dict) else None
        if isinstance(revision, bool) or not isinstance(revision, int):
            return None, None
        return revision, record.encode() if isinstance(record, str) else None

    def save(self, revision: int, record: bytes | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        body = json.dumps({"highest_applied_revision": revision,
                           "record": record.decode() if record is not None else None})
        with open(tmp, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


class SiteAgent:
    """One site on the bus. `bus` is a miner.fleet.bus.Bus made for this site (its inbox
    prefix, its credentials); `decode(bytes, now)` returns a verified desired record or raises RecordError;
    `devices` applies levels and reads back; `own_price(now)` (optional) returns the
    site's OwnPrice for its fail-safe threshold, read every `own_price_interval` seconds."""

    def __init__(self, site: str, *, bus: Any,
                 decode: Callable[[bytes, datetime], Any], devices: SiteDevices, fail_safe: str,
                 desired_ttl_seconds: float, report_interval_seconds: float, state_dir: Path,
                 metrics: Metrics | None = None,
                 own_price: Callable[[datetime], Awaitable[OwnPrice | None]] | None = None,
                 own_price_interval: float = OWN_PRICE_INTERVAL,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.site = site
        self.bus, self._decode, self.devices = bus, decode, devices
        bus.on_state = self._on_bus_state
        self._own_price, self.own_price_interval = own_price, own_price_interval
        self.report_interval = report_interval_seconds
        self.metrics = metrics if metrics is not None else Metrics()
        self.clock = clock
        self.state = StateFile(state_dir, site)
        highest, raw = self.state.load()
        last = None
        if raw is not None:
            try:
                last = decode(raw, clock())
            except RecordError as e:
                log.warning("site %s: the persisted desired record is no longer valid (%s)", site, e)
            if last is not None and last.revision != highest:
                last = None
        self.follower = Follower(desired_ttl_seconds=desired_ttl_seconds, fail_safe=fail_safe,
                                 started_at=clock(), highest_applied=highest, last=last)
        self._raw: dict[int, bytes] = {last.revision: raw} if last is not None and raw else {}
        self.connected = False
        self.mode = "starting"
        self.in_force: Applied | None = None
        self._level: float | None = None   # the level last told to the devices
        self._ack: Ack | None = None
        self._own: OwnPrice | None = None
        self._wake = asyncio.Event()
        self._resync = asyncio.Event()
        self._full_resync = True          # start or reconnect: read, offer, report (else a check)
        self._check_key = False
        self._last_raw: bytes | None = None   # the newest key value offered, by any path
        self.subscription: Any = None     # the live subscription to our desired key
        self._stopping = asyncio.Event()
        self._reject_logged: dict[str, float] = {}
        self.reports = 0
        self._report_due = 0.0              # loop time of the next periodic report
        m = self.metrics
        for reason in REJECT_REASONS:
            m.bus_rejected.labels(site, reason)
        m.bus_connected.labels(site).set(0)
        self._set_mode("starting")
        if highest is not None:
            m.bus_applied_revision.labels(site).set(highest)

    # -- running ---------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()
        self.bus.stop()
        self._wake.set()
        self._resync.set()

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._follow_bus(), name=f"bus:{self.site}"),
                 asyncio.create_task(self._control(), name=f"control:{self.site}")]
        if self._own_price is not None:
            tasks.append(asyncio.create_task(self._watch_own_price(), name=f"own-price:{self.site}"))
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stopping and not t.cancelled() and t.exception() is not None:
                    raise t.exception()   # a bug: the run ends (and its service restarts) loudly
        finally:
            stopping.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.bus.close()   # bounded: a dead link never holds a stop

    async def _pause(self, seconds: float) -> None:
        """Sleep that a stop ends at once."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    # -- the bus ---------------------------------------------------------------------------

    async def _follow_bus(self) -> None:
        """Connect (retrying until stop), subscribe to our key, then resync at start and
        after every reconnect (on_state)."""
        from miner.fleet.bus import BusStopped

        try:
            await self.bus.connect()
        except BusStopped:
            return
        delay = RESYNC_RETRY_FIRST
        while not self._stopping.is_set():
            try:
                self.subscription = await self.bus.subscribe_desired(self.site, self._on_desired_message)
                break
            except Exception as e:  # noqa: BLE001 - the link dropped at once: nats-py reconnects
                log.info("site %s: cannot subscribe yet (%s); retrying in %.1f s", self.site,
                         error_text(e), delay)
                await self._pause(delay)
                delay = min(delay * 2, RESYNC_RETRY_CAP)
        self._resync.set()
        while not self._stopping.is_set():
            await self._resync.wait()
            self._resync.clear()
            if self._stopping.is_set():
                break
            if self._full_resync:
                self._full_resync = self._check_key = False
                await self._resync_once()
            elif self._check_key:
                self._check_key = False
                await self._check_once()

    async def _check_once(self) -> None:
        """One direct get of our key between resyncs: a value we have not seen is offered
        (one the subscription missed); the same bytes again, nothing happens (a refused
        record is not counted again); a bus that does not answer waits for the next check."""
        from miner.fleet.bus import BusError

        try:
            found = await self.bus.read_desired_raw(self.site)
        except BusError as e:
            log.debug("site %s: key check failed (%s)", self.site, e)
            return
        if found is not None and found[1] != self._last_raw:
            self._offer(found[1], "check")

    async def _resync_once(self) -> None:
        """Read our key's newest value (direct get); retried until the bus answers."""
        from miner.fleet.bus import BusError

        delay = RESYNC_RETRY_FIRST
        while not self._stopping.is_set():
            try:
                found = await self.bus.read_desired_raw(self.site)
            except BusError as e:
                log.info("site %s: resync failed (%s); retrying in %.1f s", self.site, e, delay)
                await self._pause(delay)
                delay = min(delay * 2, RESYNC_RETRY_CAP)
                continue
            if found is None:
                log.info("site %s: no desired state on the bus", self.site)
            else:
                self._offer(found[1], "resync")
            self.follower.mark_resynced()
            self._report_soon()
            return

    async def _on_desired_message(self, msg: Any) -> None:
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            log.info("site %s: our desired key was deleted on the bus", self.site)
            return
        self._offer(msg.data, "update")

    def _offer(self, data: bytes, via: str) -> None:
        self._last_raw = bytes(data)
        now = self.clock()
        try:
            record = self._decode(data, now)
        except RecordError as e:
            self._reject(e.reason, str(e))
            return
        verdict = self.follower.offer(record, now)
        if verdict == "accepted":
            self._raw[record.revision] = bytes(data)
            log.info("site %s: desired revision %d (%s): level %.2f, %s, valid until %s", self.site,
                     record.revision, via, record.level, record.reason, format_time(expires_at(record, self.follower.desired_ttl)))
            self._wake.set()
        elif verdict == "current":
            self._raw.setdefault(record.revision, bytes(data))
            self._wake.set()
        elif verdict == "stale_revision":
            self._reject(verdict, f"revision {record.revision} ({via}) is not newer than "
                                  f"{self.follower.newest_revision} (a deposed leader's write; if the bus's "
                                  f"store was wiped, its revisions restart: remove {self.state.path})")
        else:
            self._reject(verdict, f"revision {record.revision} ({via}): {verdict.replace('_', ' ')}")

    def _reject(self, reason: str, message: str) -> None:
        self.metrics.bus_rejected.labels(self.site, reason).inc()
        now = time.monotonic()
        if now - self._reject_logged.get(reason, -math.inf) >= REJECT_LOG_INTERVAL:
            self._reject_logged[reason] = now
            log.warning("site %s: desired record refused, never applied (%s): %s", self.site, reason, message)

    async def _on_bus_state(self, connected: bool) -> None:
        if self._stopping.is_set():
            return
        if connected:
            log.info("site %s: on the bus; resyncing", self.site)
            self._full_resync = True
            self._resync.set()
        elif self.connected:
            log.warning("site %s: bus connection lost; following the last desired state until it expires",
                        self.site)
        self._set_connected(connected)

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        self.metrics.bus_connected.labels(self.site).set(1 if up else 0)

    # -- control ---------------------------------------------------------------------------

    def _report_soon(self) -> None:
        self._report_due = 0.0
        self._wake.set()

    async def _control(self) -> None:
        """Apply what the follower says, report, then wait for new input, an expiry or the
        next report. A failing pass (a bug, a full disk) is logged and the next one comes."""
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                await self._control_pass(loop)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("site %s: control pass failed; trying again in %.3g s", self.site,
                              self.report_interval)
                self._report_due = loop.time() + self.report_interval
            wait = self._report_due - loop.time()
            change = self.follower.next_change(self.clock())
            if change is not None:
                wait = min(wait, (change - self.clock()).total_seconds() + 0.01)
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, wait))
            except asyncio.TimeoutError:
                pass

    async def _control_pass(self, loop: asyncio.AbstractEventLoop) -> None:
        now = self.clock()
        target = self.follower.target(now, self._own)
        self._set_mode(target.mode, target)
        d = self.follower.desired
        self.metrics.bus_desired_level.labels(self.site).set(target.level if target.mode == "following" else math.nan)
        if d is not None:
            self.metrics.bus_desired_age.labels(self.site).set(max(0.0, (now - d.issued_at).total_seconds()))
        new_revision = target.mode == "following" and self.follower.needs_apply()
        if target.level is not None and (new_revision or target.level != self._level):
            await self._apply_target(target, new_revision)
            self._report_due = 0.0
        elif loop.time() >= self._report_due:
            # Report what the devices do; one that drifted from the level in force is told again.
            self.in_force = await (self.devices.apply(self._level) if self._level is not None
                                   else self.devices.read())
        if loop.time() >= self._report_due:
            await self._report(self.clock())
            self._report_due = loop.time() + self.report_interval
            # And look at our key again: a live put the subscription never delivered (nats-server
            # 2.9 can miss a publish made just after a subscription is confirmed) is applied
            # within a report interval, not left until the desired state expires.
            self._check_key = True
            self._resync.set()

    async def _apply_target(self, target: Target, new_revision: bool) -> None:
        level = float(target.level)
        log.log(logging.WARNING if target.mode == "fail_safe" else logging.INFO,
                "site %s: %s, level %.2f (%s%s)", self.site, target.mode, level, target.reason,
                f"; {target.detail}" if target.detail else "")
        applied = await self.devices.apply(level)
        self.in_force, self._level = applied, level
        revision = target.revision if new_revision else None
        self.follower.mark_applied(revision, level)
        if revision is not None:
            self.state.save(revision, self._raw.get(revision))
            self._raw = {r: b for r, b in self._raw.items() if r >= revision}
            self.metrics.bus_applied_revision.labels(self.site).set(revision)
            m = applied.measurement
            disobeying = [d.name for d in applied.devices if not d.applied]
            detail = f"level {level:.2f} asked, {m.level:.2f} in force"
            if disobeying:
                detail += f"; not obeying: {', '.join(disobeying)}"
            self._ack = Ack(revision, applied.outcome, detail[:4000], self.clock())
        if applied.outcome != "applied":
            log.warning("site %s: level %.2f %s: %s", self.site, level, applied.outcome,
                        ", ".join(f"{d.name} {'hashing' if d.hashing else 'idle'}{'' if d.up else ' (no answer)'}"
                                  for d in applied.devices if not d.applied))

    def _set_mode(self, mode: str, target: Target | None = None) -> None:
        if mode != self.mode and target is not None:
            level = logging.WARNING if mode == "fail_safe" else logging.INFO
            log.log(level, "site %s: mode %s -> %s (%s)", self.site, self.mode, mode, target.detail or target.reason)
        self.mode = mode
        for m in MODES:
            self.metrics.bus_mode.labels(self.site, m).set(1 if m == mode else 0)

    # -- reports ---------------------------------------------------------------------------

    def report(self, now: datetime) -> SiteReport:
        """The SiteReport this agent would write now: what the devices really do."""
        d, a = self.follower.desired, self.in_force
        m = a.measurement if a is not None else None
        return SiteReport(
            site=self.site, at=now, bus_connected=self.connected, mode=self.mode,
            applied_revision=self.follower.highest_applied,
            desired_level=d.level if self.mode == "following" and d is not None else None,
            level=m.level if m is not None else 0.0, hashing=m.hashing if m is not None else False,
            hashrate_hs=rate_of(m.hashrate_hs) if m is not None else 0.0,
            power_w=usable_watts(m.power_w) if m is not None else None,
            devices=a.devices if a is not None else (), ack=self._ack)

    async def _report(self, now: datetime) -> None:
        from miner.fleet.bus import BusError

        if not self.connected:
            return  # nothing is buffered while the bus is away: on reconnect a fresh one goes
        try:
            await self.bus.publish_report(self.site, encode_report(self.report(now)))
        except BusError as e:
            log.info("site %s: report not stored (%s)", self.site, e)
            return
        except RecordError as e:   # a device's figures the report cannot carry: a bug to see, not a crash
            log.error("site %s: report not written: %s", self.site, e)
            return
        self.reports += 1

    # -- own price -------------------------------------------------------------------------

    async def _watch_own_price(self) -> None:
        """The site's own price, read while it may matter: whenever no desired state is in
        force, and ahead of the one in force expiring (a paid price API is not read every
        minute at every site for nothing)."""
        while not self._stopping.is_set():
            now = self.clock()
            d = self.follower.desired
            if self.mode == "following" and d is not None and \
                    (expires_at(d, self.follower.desired_ttl) - now).total_seconds() > 2 * self.own_price_interval:
                await self._pause(self.own_price_interval)
                continue
            try:
                own = await self._own_price(now)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the feed's failures are its own to log
                log.info("site %s: own price unavailable (%s)", self.site, e)
                own = OwnPrice(None, self._own.breakeven_usd_per_mwh) if self._own is not None else None
            if own != self._own:
                self._own = own
                self._wake.set()
            await self._pause(self.own_price_interval)


# -- the site's own price rule ----------------------------------------------------------------

def has_own_feed(fleet: Any, site: Any) -> bool:
    """The site has a live [site.feed] table (not only a `prices = FILE` back-test replay)."""
    return bool(site.feed) and dict(site.feed) != dict(fleet.replay.get(site.name, {}))


class OwnThreshold:
    """A site's own price against its breakeven, for its fail-safe: the price from its
    [site.feed], the hashprice from the sites file's [economics] or else the last desired
    record's (the leader's view, a few minutes old at most when the bus went away)."""

    def __init__(self, fleet: Any, site: Any, feed: Any,
                 last_hashprice: Callable[[], float | None]) -> None:
        self.fleet, self.site, self.feed, self.last_hashprice = fleet, site, feed, last_hashprice
        self.intervals: list = []

    def hashprice(self, now: datetime) -> float | None:
        from miner.sched.sites import SitesError

        try:
            return self.fleet.economics.hashprice_at(now)
        except (SitesError, ValueError):
            return self.last_hashprice()

    async def __call__(self, now: datetime) -> OwnPrice | None:
        from miner.sched.economics import breakeven_usd_per_mwh
        from miner.sched.feeds import merge_intervals
        from miner.sched.policy import live_price

        hashprice = self.hashprice(now)
        if hashprice is None:
            return None       # no breakeven: the configured fail-safe rules
        breakeven = breakeven_usd_per_mwh(hashprice, self.fleet.economics.pool_fee, self.site.efficiency_j_per_th)
        try:
            fresh = await asyncio.wait_for(self.feed.fetch(now), FEED_TIMEOUT)
            horizon = now.timestamp() - 2 * 86_400
            self.intervals = [iv for iv in merge_intervals([*self.intervals, *fresh]) if iv.end.timestamp() > horizon]
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - FeedError, timeouts: the last prices hold up to their TTL
            log.info("site %s: own price feed: %s", self.site.name, error_text(e))
        iv = live_price(self.intervals, now, self.site.price_ttl_seconds)
        return OwnPrice(self.site.usd_per_mwh(iv.price) if iv is not None else None, breakeven)


# -- wiring from a sites file ----------------------------------------------------------------

def site_setting_problems(fleet: Any, site_name: str, *, mines: bool = False,
                          environ: Mapping[str, str] | None = None) -> list[str]:
    """Everything wrong with one site's devices and own feed (other sites' devices and
    secrets are not this host's business): empty when build_site_agent will succeed.
    `mines`: this run has CPU workers, so a kind "local" device is its own."""
    from miner.devices.drivers import make_device
    from miner.fleet.records import check_site_name
    from miner.sched.feeds import feed_for_site

    try:
        check_site_name(site_name)
        site = fleet.site(site_name)
    except ValueError as e:
        return [str(e)]
    except KeyError:
        return [f"site {site_name!r} is not in the sites file (sites: {', '.join(s.name for s in fleet.sites)})"]
    env = os.environ if environ is None else environ
    problems = []
    for table in site.devices:
        if isinstance(table, Mapping) and table.get("kind") == "local":
            if not mines:
                problems.append(f"site {site_name!r} device {table.get('name', '?')!r}: kind 'local' needs this "
                                "run to mine (give [upstream] pools), or run the CPU workers as an agent rig")
            continue
        try:
            make_device(table, site=site_name, environ=env)
        except ValueError as e:
            problems.append(str(e))
    if has_own_feed(fleet, site):
        try:
            feed_for_site(site, fleet.base_dir)
        except ValueError as e:
            problems.append(str(e))
    return problems


def own_feed_missing(fleet: Any, site: Any, environ: Mapping[str, str] | None = None) -> list[str]:
    """The environment variables the site's own feed needs and does not have: without
    them the site's fail-safe is its plain curtail/hold (the fleet's keys may live only
    where the fleet runs)."""
    from miner.sched.feeds import feed_environment

    env = os.environ if environ is None else environ
    return [f"{var} ({what})" for var, what in feed_environment(site.feed) if not env.get(var)]


def build_site_agent(fleet: Any, site_name: str, *, bus: Any, public_key: Any,
                     desired_ttl_seconds: float, report_interval_seconds: float, state_dir: Path,
                     metrics: Metrics, own_price_interval: float = OWN_PRICE_INTERVAL,
                     local_pool: Any = None) -> SiteAgent:
    """The SiteAgent of `site_name` in a loaded sites file: its devices, its fail-safe and
    (with a [site.feed]) its own price rule. `local_pool`: this run's CPU workers, a device
    of the site (kind "local", or implicitly when it lists none and the pool has threads).
    ValueError naming what is wrong."""
    from miner.devices.drivers import make_device
    from miner.fleet.records import decode_desired
    from miner.sched.feeds import feed_for_site

    from miner.sched.scheduler import LOCAL_DEVICE_NAME

    problems = site_setting_problems(fleet, site_name, mines=local_pool is not None)
    if problems:
        raise ValueError("; ".join(problems))
    site = fleet.site(site_name)
    drivers = [make_device(t, site=site_name, local_pool=local_pool) for t in site.devices]
    if local_pool is not None and local_pool.threads > 0 and not any(t.get("kind") == "local" for t in site.devices):
        from miner.devices.local import LocalWorkers

        drivers.append(LocalWorkers(LOCAL_DEVICE_NAME, local_pool))
    devices = SiteDevices(site_name, drivers, metrics=metrics)

    def decode(data: bytes, now: datetime):
        return decode_desired(data, site=site_name, public_key=public_key, now=now)

    agent: SiteAgent | None = None
    own = None
    missing = own_feed_missing(fleet, site) if has_own_feed(fleet, site) else []
    if missing:
        log.warning("site %s: its own price feed needs %s: without it the fail-safe is %s", site_name,
                    ", ".join(missing), site.fail_safe)
    if has_own_feed(fleet, site) and not missing:
        def last_hashprice() -> float | None:
            d = agent.follower.desired if agent is not None else None
            return d.hashprice_usd_per_th_day if d is not None else None

        own = OwnThreshold(fleet, site, feed_for_site(site, fleet.base_dir), last_hashprice)
    agent = SiteAgent(site_name, bus=bus, decode=decode, devices=devices, fail_safe=site.fail_safe,
                      desired_ttl_seconds=desired_ttl_seconds, report_interval_seconds=report_interval_seconds,
                      state_dir=state_dir, metrics=metrics, own_price=own, own_price_interval=own_price_interval)
    return agent
