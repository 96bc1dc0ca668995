"""The live scheduler: every `interval_seconds`, prices in, a plan out, devices driven.

    step(now):
      1. feeds ──fetch (concurrent, timeout)──► last good intervals per site (the newest
                 answer replaces what it overlaps); failure: logged, feed_errors{site,kind};
                 stale (no known price covers now, and the last one ended more than the
                 site's price_ttl_seconds ago): the site gets no prices, so the policy
                 applies its fail-safe (reason price_missing)
      2. hashprice source (static, series, or live from the node) ──► hashprice gauge
      3. policy.decide(states, prices, now, hashprice) ──► Plan (logged on change)
      4. devices: apply(level), retried with backoff; read() ──► what really hashes;
                 the SiteState the policy sees next is what happened, not what was asked
      5. energy, cost, credit and revenue integrated over [previous step, now) from the
         power measured (or modelled: capacity x level) at the previous step

Nothing in a step may stop the loop: `run()` logs and counts any exception and goes on.
Clocks and sleeps are injected so tests drive `step()` with a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Mapping, Protocol, Sequence

from miner.devices.actuator import LocalActuator, RetryPolicy, SiteMeasurement, error_text
from miner.devices.model import Device
from miner.metrics import Metrics
from miner.sched.economics import HashpriceSeries, hashprice_usd_per_th_day
from miner.sched.feeds import merge_intervals, price_at
from miner.sched.model import (FeedError, Plan, Policy, PriceFeed, PriceInterval, SiteDecision, SiteSpec, SiteState,
                               utc_now)
from miner.stopping import in_daemon_thread

log = logging.getLogger(__name__)

# Intervals kept per site after they ended (seconds): policies with hysteresis or a
# rolling horizon look back a little; a live feed that returns only the current price
# builds this history up fetch by fetch.
HISTORY_SECONDS = 2 * 86_400
# A failing feed or device is logged at most this often (seconds); "restored" when it heals.
ERROR_LOG_INTERVAL = 60.0
SATS_PER_BTC = 100_000_000


# -- hashprice sources -----------------------------------------------------------------------

class HashpriceUnavailable(Exception):
    """The hashprice cannot be known now (node unreachable, series does not cover now)."""


class HashpriceSource(Protocol):
    async def hashprice(self, now: datetime) -> float:
        """USD per TH/s per day at `now`, before pool fee. Raises HashpriceUnavailable."""


class StaticHashprice:
    """A constant from the sites file ([economics] hashprice_usd_per_th_day)."""

    def __init__(self, usd_per_th_day: float) -> None:
        if not (math.isfinite(usd_per_th_day) and usd_per_th_day >= 0):
            raise ValueError(f"hashprice must be a number >= 0, got {usd_per_th_day!r}")
        self.value = usd_per_th_day

    async def hashprice(self, now: datetime) -> float:
        return self.value


class SeriesHashprice:
    """A step series from the sites file ([economics] hashprice_file)."""

    def __init__(self, series: HashpriceSeries) -> None:
        self.series = series

    async def hashprice(self, now: datetime) -> float:
        try:
            return self.series.at(now)
        except ValueError as e:  # HashpriceError: now is before the series starts
            raise HashpriceUnavailable(str(e)) from None


class NodeHashprice:
    """Live: difficulty from the node's getmininginfo, the block reward (a configured
    subsidy + average fees, else the current template's coinbase value), times the BTC
    price (a constant, or a feed whose `price` is USD per BTC). Refreshed at most every
    `refresh_seconds`; between refreshes and while the node is away, the last value holds."""

    def __init__(self, rpc: Any, btc_usd: float | PriceFeed, *,
                 coinbase_sats: Callable[[], int | None] | None = None,
                 subsidy_btc: float | None = None, avg_fees_btc: float = 0.0,
                 refresh_seconds: float = 600.0, timeout_seconds: float = 10.0) -> None:
        self.rpc, self.btc_usd = rpc, btc_usd
        self.coinbase_sats, self.subsidy_btc, self.avg_fees_btc = coinbase_sats, subsidy_btc, avg_fees_btc
        self.refresh, self.timeout = timedelta(seconds=refresh_seconds), timeout_seconds
        self._value: float | None = None
        self._at: datetime | None = None

    async def hashprice(self, now: datetime) -> float:
        if self._value is not None and self._at is not None and now - self._at < self.refresh:
            return self._value
        try:
            difficulty = await self._difficulty()
            value = hashprice_usd_per_th_day(difficulty, await self._reward_btc(), await self._btc_usd(now))
        except HashpriceUnavailable:
            raise
        except FeedError as e:
            raise HashpriceUnavailable(f"BTC price feed: {e}") from None
        except asyncio.CancelledError:
            raise
        except Exception as e:  # RPCError and its family, timeouts, odd answers (ValueError)
            raise HashpriceUnavailable(f"node: {error_text(e)}") from None
        self._value, self._at = value, now
        return value

    async def _difficulty(self) -> float:
        info = await asyncio.wait_for(self.rpc.call("getmininginfo"), self.timeout)
        difficulty = info.get("difficulty") if isinstance(info, dict) else None
        if not _positive_number(difficulty):
            # bcoin answers difficulty 0 before its chain has a block; getdifficulty (Core
            # and bcoin) is the tip's proof-of-work difficulty all the same.
            difficulty = await asyncio.wait_for(self.rpc.call("getdifficulty"), self.timeout)
        if not _positive_number(difficulty):
            raise HashpriceUnavailable(f"node: no usable difficulty (getmininginfo, getdifficulty: {difficulty!r})")
        return float(difficulty)

    async def _reward_btc(self) -> float:
        if self.subsidy_btc is not None:  # configured: the operator's average beats one template
            return self.subsidy_btc + self.avg_fees_btc
        sats = self.coinbase_sats() if self.coinbase_sats is not None else None
        if sats is not None:
            return sats / SATS_PER_BTC
        template = await asyncio.wait_for(self.rpc.call("getblocktemplate", {"rules": ["segwit"]}), self.timeout)
        value = template.get("coinbasevalue") if isinstance(template, dict) else None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise HashpriceUnavailable(f"node: getblocktemplate has no usable coinbasevalue ({value!r})")
        return value / SATS_PER_BTC

    async def _btc_usd(self, now: datetime) -> float:
        if isinstance(self.btc_usd, (int, float)):
            return float(self.btc_usd)
        interval = price_at(merge_intervals(await asyncio.wait_for(self.btc_usd.fetch(now), self.timeout)), now)
        if interval is None:
            raise HashpriceUnavailable("BTC price feed has no price covering now")
        return interval.price


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


# -- the scheduler ----------------------------------------------------------------------------

@dataclass
class _Measured:
    """What a site did after a step's actuation: the base of the next step's integration."""

    at: datetime
    power_w: float
    hashrate_ths: float
    price_usd_per_mwh: float | None
    hashprice: float | None


def price_age_seconds(intervals: Sequence[PriceInterval], now: datetime) -> float | None:
    """How old the price in force is: 0 while a known interval covers `now`, else seconds
    since the latest known interval ended (a price holds up to the site's TTL past its
    interval, as the policies read it); None when no price is known at all."""
    if price_at(intervals, now) is not None:
        return 0.0
    ended = [iv.end for iv in intervals if iv.known_at(now) and iv.end <= now]
    return (now - max(ended)).total_seconds() if ended else None


PRICE_REASONS = ("price_below_breakeven", "price_above_breakeven")


def describe(decision: SiteDecision) -> str:
    """'curtail (price_above_breakeven: 131.20 > 102.08 USD/MWh)': the log's words for a
    decision; a reason other than the price itself adds the policy's detail."""
    action = "curtail" if decision.level <= 0 else f"run at {decision.level:.0%}"
    p, b, detail = decision.price_usd_per_mwh, decision.breakeven_usd_per_mwh, decision.detail
    if p is None:
        return f"{action} ({decision.reason}: {detail or 'no fresh price'}; breakeven {b:.2f} USD/MWh)"
    why = f"{p:.2f} {'>' if p > b else '<' if p < b else '='} {b:.2f} USD/MWh"
    extra = f"; {detail}" if detail and decision.reason not in PRICE_REASONS else ""
    return f"{action} ({decision.reason}: {why}{extra})"


class Actuator(Protocol):
    """Where a plan's decisions go: devices in this process (LocalActuator) or, for a
    fleet, each site's desired state on the bus (miner.fleet.scheduler.BusActuator)."""

    async def actuate(self, site: str, decision: SiteDecision, before_level: float = 0.0) -> SiteMeasurement:
        """Apply one site's decision; what the site really does afterwards."""

    async def take_over(self) -> Mapping[str, SiteMeasurement]:
        """Before the first decision: what the sites it knows already do."""


class Scheduler:
    def __init__(self, fleet: Any, policy: Policy, feeds: Mapping[str, PriceFeed],
                 devices: Mapping[str, Sequence[Device]] | None = None, *, actuator: Actuator | None = None,
                 metrics: Metrics | None = None,
                 hashprice_source: HashpriceSource, clock: Callable[[], datetime] = utc_now,
                 interval_seconds: float = 60.0, retry: RetryPolicy = RetryPolicy(),
                 feed_timeout_seconds: float = 10.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if not interval_seconds > 0:
            raise ValueError(f"interval_seconds must be > 0, got {interval_seconds}")
        if devices is not None and actuator is not None:
            raise ValueError("give devices (driven from this process) or an actuator, not both")
        self.fleet, self.policy = fleet, policy
        self.sites: dict[str, SiteSpec] = {s.name: s for s in fleet.sites}
        devices = devices if devices is not None else {}
        unknown = (set(feeds) | set(devices)) - set(self.sites)
        if unknown:
            raise ValueError(f"feeds or devices for unknown site(s): {', '.join(sorted(unknown))}")
        self.feeds = dict(feeds)
        self.metrics = metrics if metrics is not None else Metrics()
        self.actuator: Actuator = actuator if actuator is not None else \
            LocalActuator(devices, metrics=self.metrics, retry=retry, sleep=sleep)
        # The devices driven from this process, per site (none when a bus carries the plan).
        self.devices: dict[str, list[Device]] = getattr(self.actuator, "devices", {})
        self.hashprice_source = hashprice_source
        self.clock, self.interval, self.retry, self._sleep = clock, interval_seconds, retry, sleep
        self.feed_timeout = feed_timeout_seconds
        self.pool_fee = float(getattr(fleet.economics, "pool_fee", 0.0))
        self.states: dict[str, SiteState] = {name: SiteState() for name in self.sites}
        self.intervals: dict[str, list[PriceInterval]] = {name: [] for name in self.sites}
        self.fetched_at: dict[str, datetime] = {}     # last good fetch per site
        self.stale: dict[str, bool] = {}
        self.hashprice: float | None = None           # last good value
        self.plan: Plan | None = None                 # the last plan
        self._measured: dict[str, _Measured] = {}
        self._error_logged: dict[str, float] = {}
        self._stopping = asyncio.Event()
        self.steps = 0
        # Per-site counters exist from the start at 0, so increase() sees their first event.
        m = self.metrics
        for name in self.sites:
            for counter in (m.site_starts, m.site_energy, m.site_cost, m.site_credit, m.site_revenue,
                            m.failsafe):
                counter.labels(name)

    # -- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        """One step now, then one every interval until stop(); a failing step is logged,
        counted (gridminer_sched_errors_total) and the next one comes all the same."""
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            started = loop.time()
            try:
                await self.step(self.clock())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler step failed; the next one comes in %.3g s", self.interval)
                self.metrics.sched_errors.labels("step").inc()
            left = self.interval - (loop.time() - started)
            if left > 0:
                try:
                    await asyncio.wait_for(self._stopping.wait(), left)
                except asyncio.TimeoutError:
                    pass

    def stop(self) -> None:
        self._stopping.set()

    async def step(self, now: datetime) -> Plan:
        """One cycle: fetch, price, decide, actuate, measure, integrate (see the module doc)."""
        self.steps += 1
        if self.steps == 1:
            await self._take_over()
        phase = self.metrics.sched_step_seconds
        with phase.labels("prices").time():
            prices = await self._fetch_prices(now)
        with phase.labels("hashprice").time():
            hashprice = await self._current_hashprice(now)
        if hashprice is None:
            # No revenue figure, no breakeven: every site follows its fail-safe.
            prices, hashprice = {name: [] for name in self.sites}, 0.0
        # Off the event loop: a coupled fleet's MILP may take a second or more (the first
        # bounded fleet DP compiles for ~10 s), and the loop carries new-tip jobs, stratum
        # and found blocks; in a daemon thread, so a stop does not wait for it.
        with phase.labels("decide").time():
            plan = await in_daemon_thread(self.policy.decide, dict(self.states), prices, now, hashprice)
        self._record_plan(plan)
        sites = [name for name in self.sites if name in plan.decisions]
        with phase.labels("actuate").time():
            measured = await asyncio.gather(*(self.actuator.actuate(name, plan.decisions[name],
                                                                     self.states[name].level) for name in sites))
        for name, site_measured in zip(sites, measured):
            try:  # one site's bad figures must not stall the others' bookkeeping
                self._integrate(name, now)
                self._update_state(name, plan.decisions[name], site_measured, now)
            except Exception:
                log.exception("scheduler: site %s: bookkeeping failed; the other sites go on", name)
                self.metrics.sched_errors.labels("site").inc()
        self.plan = plan
        return plan

    async def _take_over(self) -> None:
        """Before the first decision: a site whose devices already hash is on, since an
        unknown time (None: long ago); starting the scheduler is not a start of the site."""
        for name, found in (await self.actuator.take_over()).items():
            if name not in self.sites:
                continue
            # What the devices do before the first decision (prices may take a while):
            # the dashboards show the real hash rate from the start, not 0.
            self.metrics.site_hashing.labels(name).set(1 if found.hashing else 0)
            self.metrics.site_hashrate.labels(name).set(found.hashrate_hs)
            if found.level > 0:
                self.states[name] = SiteState(found.level, None)
                log.info("site %s: found hashing at %.0f%% when the scheduler started", name, found.level * 100)

    # -- 1. prices -------------------------------------------------------------------------

    async def _fetch_prices(self, now: datetime) -> dict[str, list[PriceInterval]]:
        """The intervals per site for the policy; a stale site maps to [] (its fail-safe)."""
        sharing: dict[int, list[str]] = {}   # one fetch per feed object, however many sites share it
        for name, feed in self.feeds.items():
            sharing.setdefault(id(feed), []).append(name)
        await asyncio.gather(*(self._fetch_one(names, now) for names in sharing.values()))
        prices: dict[str, list[PriceInterval]] = {}
        for name, site in self.sites.items():
            fetched = self.fetched_at.get(name)
            if fetched is not None:
                self.metrics.feed_age.labels(name).set((now - fetched).total_seconds())
            age = price_age_seconds(self.intervals[name], now)
            stale = age is None or age > site.price_ttl_seconds
            self.metrics.feed_stale.labels(name).set(1 if stale else 0)
            if stale != self.stale.get(name, False):
                if stale:
                    why = "no price known" if age is None else \
                        f"the last price ended {age:.0f} s ago > ttl {site.price_ttl_seconds:.0f} s"
                    log.warning("site %s: price stale (%s): fail-safe %s", name, why, site.fail_safe)
                elif name in self.stale:
                    log.info("site %s: fresh price again", name)
            self.stale[name] = stale
            prices[name] = [] if stale else list(self.intervals[name])
        return prices

    async def _fetch_one(self, names: list[str], now: datetime) -> None:
        """Fetch the feed the sites `names` share, once; each site's prices and errors kept apart."""
        feed = self.feeds[names[0]]
        try:
            got = await asyncio.wait_for(feed.fetch(now), self.feed_timeout)
            fresh = merge_intervals(got)
        except FeedError as e:
            for name in names:
                self._feed_failed(name, e.kind, str(e))
            return
        except asyncio.TimeoutError:
            for name in names:
                self._feed_failed(name, "unreachable", f"no answer within {self.feed_timeout:g} s")
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a feed bug must not take the loop down
            log.exception("site %s: price feed failed unexpectedly", ", ".join(names))
            for name in names:
                self._feed_failed(name, "error", repr(e), logged=True)
            return
        horizon = now - timedelta(seconds=HISTORY_SECONDS)
        for name in names:
            self.intervals[name] = [iv for iv in merge_intervals(fresh, self.intervals[name]) if iv.end > horizon]
            self.fetched_at[name] = now
            if self._error_logged.pop(f"feed:{name}", None) is not None:
                log.info("site %s: price feed restored", name)

    def _feed_failed(self, name: str, kind: str, message: str, *, logged: bool = False) -> None:
        self.metrics.feed_errors.labels(name, kind).inc()
        if not logged:
            self._log_limited(f"feed:{name}", "site %s: price feed failed (%s): %s", name, kind, message)

    # -- 2. hashprice ----------------------------------------------------------------------

    async def _current_hashprice(self, now: datetime) -> float | None:
        try:
            value = await self.hashprice_source.hashprice(now)
        except HashpriceUnavailable as e:
            kind = "unavailable"
            message = str(e)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("hashprice source failed unexpectedly")
            kind, message = "error", repr(e)
        else:
            if math.isfinite(value) and value >= 0:
                self.hashprice = value
                self.metrics.hashprice.set(value)
                if self._error_logged.pop("hashprice", None) is not None:
                    log.info("hashprice available again: %.6g USD/TH/day", value)
                return value
            kind, message = "invalid", f"hashprice {value!r}"
        self.metrics.sched_errors.labels(f"hashprice_{kind}").inc()
        if self.hashprice is not None:
            self._log_limited("hashprice", "hashprice unavailable (%s); keeping %.6g USD/TH/day",
                              message, self.hashprice)
            return self.hashprice
        self._log_limited("hashprice", "hashprice unavailable (%s): every site follows its fail-safe", message)
        return None

    # -- 3. the plan -----------------------------------------------------------------------

    def _record_plan(self, plan: Plan) -> None:
        before = self.plan.decisions if self.plan is not None else {}
        for name, d in plan.decisions.items():
            m = self.metrics
            m.sched_decisions.labels(name, d.reason).inc()
            if d.reason == "price_missing":
                m.failsafe.labels(name).inc()
            if d.price_usd_per_mwh is not None:
                m.site_price.labels(name).set(d.price_usd_per_mwh)
            m.site_breakeven.labels(name).set(d.breakeven_usd_per_mwh)
            m.site_level.labels(name).set(d.level)
            m.site_curtailed.labels(name).set(1 if d.level <= 0 else 0)
            old = before.get(name)
            if old is None or old.level != d.level or old.reason != d.reason:
                level = logging.WARNING if d.reason == "price_missing" else logging.INFO
                log.log(level, "site %s: %s", name, describe(d))

    # -- 4. actuation ----------------------------------------------------------------------

    def _update_state(self, name: str, decision: SiteDecision, measured: SiteMeasurement,
                      now: datetime) -> None:
        """The state the policy sees next step: what the devices really do."""
        site, before = self.sites[name], self.states[name]
        level, hashing = measured.level, measured.hashing
        on_now = level > 0
        if on_now != before.on:
            self.states[name] = SiteState(level, now)
            if on_now:
                self.metrics.site_starts.labels(name).inc()
        elif level != before.level:
            self.states[name] = SiteState(level, before.since)
        if decision.level > 0 and not measured.modelled and not hashing:
            self._log_limited(f"wake:{name}", "site %s: no device hashing although planned at %.0f%%; "
                              "the site stays off", name, decision.level * 100)
        if measured.power_w is not None:
            power_w = measured.power_w
            hashrate_hs = measured.hashrate_hs
            hashrate_ths = hashrate_hs / 1e12 if hashrate_hs > 0 else site.hashrate_ths * level
        else:
            # Cost and revenue from the same source: the site's model at this level (a
            # measured CPU hash rate against a 10 MW modelled draw would book a fantasy loss).
            power_w, hashrate_ths = site.capacity_mw * 1e6 * level, site.hashrate_ths * level
        m = self.metrics
        if not measured.modelled:
            m.site_hashing.labels(name).set(1 if hashing else 0)
            m.site_hashrate.labels(name).set(measured.hashrate_hs)
        m.site_power.labels(name).set(power_w)
        self._measured[name] = _Measured(now, power_w, hashrate_ths, decision.price_usd_per_mwh, self.hashprice)

    # -- 5. money --------------------------------------------------------------------------

    def _integrate(self, name: str, now: datetime) -> None:
        """Energy, cost or credit, and revenue over [last step, now) at the last step's
        measured power, all-in price and hash rate (left Riemann sum: what was in force)."""
        last = self._measured.get(name)
        if last is None:
            return
        seconds = (now - last.at).total_seconds()
        if seconds <= 0:
            return
        m = self.metrics
        joules = last.power_w * seconds
        m.site_energy.labels(name).inc(joules)
        if last.price_usd_per_mwh is not None:
            cost = joules / 3.6e9 * last.price_usd_per_mwh
            if cost >= 0:
                m.site_cost.labels(name).inc(cost)
            else:
                m.site_credit.labels(name).inc(-cost)
        if last.hashprice is not None:
            m.site_revenue.labels(name).inc(last.hashrate_ths * last.hashprice * (1 - self.pool_fee)
                                            * seconds / 86_400)

    # -- logging ---------------------------------------------------------------------------

    def _log_limited(self, key: str, message: str, *args: Any) -> None:
        """Warn at most once per ERROR_LOG_INTERVAL per key; the key's recovery is logged once."""
        now = time.monotonic()
        if now - self._error_logged.get(key, -math.inf) >= ERROR_LOG_INTERVAL:
            self._error_logged[key] = now
            log.warning(message, *args)


# -- wiring from a sites file -------------------------------------------------------------------

LOCAL_DEVICE_NAME = "local"   # the implicit local-workers device of the local site


def local_site_of(fleet: Any, configured: str | None) -> str | None:
    """The site the local CPU workers belong to: the configured one (it must exist), else
    the one site with a kind "local" device, else None. ValueError when ambiguous."""
    names = [s.name for s in fleet.sites]
    if configured is not None:
        if configured not in names:
            raise ValueError(f"local_site {configured!r} is not a site of the sites file "
                             f"(sites: {', '.join(names)})")
        others = [s.name for s in fleet.sites if s.name != configured and _has_local(s)]
        if others:
            raise ValueError(f"site {others[0]!r} has a kind \"local\" device, but the local workers "
                             f"belong to local_site {configured!r}")
        return configured
    with_local = [s.name for s in fleet.sites if _has_local(s)]
    if len(with_local) > 1:
        raise ValueError(f"kind \"local\" devices at {', '.join(with_local)}: the local workers are one "
                         "pool at one site")
    return with_local[0] if with_local else None


def _has_local(site: SiteSpec) -> bool:
    return any(d.get("kind") == "local" for d in site.devices)


def hashprice_source_for(economics: Any, *, rpc: Any = None,
                         coinbase_sats: Callable[[], int | None] | None = None) -> HashpriceSource:
    """The sites file's [economics]: a series, a constant, or live from the node (btc_usd)."""
    if economics.hashprice_series is not None:
        return SeriesHashprice(economics.hashprice_series)
    if economics.hashprice_usd_per_th_day is not None:
        return StaticHashprice(economics.hashprice_usd_per_th_day)
    if economics.btc_usd is None:
        raise ValueError("[economics]: needs hashprice_usd_per_th_day, hashprice_file or btc_usd")
    if rpc is None:
        raise ValueError("[economics] btc_usd: a live hashprice needs the node's difficulty, and only solo "
                         "mode has a node; give hashprice_usd_per_th_day or hashprice_file")
    return NodeHashprice(rpc, economics.btc_usd, coinbase_sats=coinbase_sats,
                         subsidy_btc=economics.subsidy_btc, avg_fees_btc=economics.avg_fees_btc)


def fleet_setting_problems(fleet: Any, *, local_site: str | None = None,
                           environ: Mapping[str, str] | None = None, devices: bool = True) -> list[str]:
    """Everything wrong or missing in a loaded sites file's feeds and devices, all of it
    (a bad key, an unreadable price file, an environment variable a feed or device needs
    that is not set), so a run can refuse to start with one complete list before it
    starts a node or a worker. Empty when build_scheduler will find nothing to refuse."""
    from miner.devices.drivers import make_device
    from miner.sched.feeds import feed_environment, feed_for_site

    env = os.environ if environ is None else environ
    problems: list[str] = []
    for site in fleet.sites:
        try:
            feed_for_site(site, fleet.base_dir)
        except ValueError as e:
            problems.append(str(e) if site.name in str(e) else f"site {site.name!r}: {e}")
        for var, what in feed_environment(site.feed):
            if not env.get(var):
                problems.append(f"site {site.name!r} feed: environment variable {var} ({what}) is not set")
        for table in site.devices if devices else ():  # a fleet scheduler leaves devices to the sites
            if isinstance(table, Mapping) and table.get("kind") == "local":
                if site.name != local_site:
                    problems.append(f"site {site.name!r} device {table.get('name', '?')!r}: kind 'local' "
                                    f"belongs to the site of the local workers (sched.local_site)")
                continue
            try:
                make_device(table, site=site.name, environ=env)
            except ValueError as e:
                problems.append(str(e))
    return problems


def build_scheduler(fleet: Any, *, metrics: Metrics, interval_seconds: float = 60.0,
                    policy_name: str = "gridminer", local_pool: Any = None, local_site: str | None = None,
                    rpc: Any = None, coinbase_sats: Callable[[], int | None] | None = None) -> Scheduler:
    """A Scheduler for a loaded sites file: each site's feed and devices, the policy, the
    hashprice source. The local pool is a device of `local_site` (implicitly when the site
    lists no kind "local" device and the pool has threads). ValueError naming what is wrong."""
    from miner.devices.drivers import make_device
    from miner.sched.feeds import feeds_for_sites
    from miner.sched.policy import make_policy

    feeds = feeds_for_sites(fleet.sites, fleet.base_dir)
    devices: dict[str, list[Device]] = {}
    for site in fleet.sites:
        pool = local_pool if site.name == local_site else None
        devices[site.name] = [make_device(table, site=site.name, local_pool=pool) for table in site.devices]
        if site.name == local_site and pool is not None and pool.threads > 0 and not _has_local(site):
            from miner.devices.local import LocalWorkers

            devices[site.name].append(LocalWorkers(LOCAL_DEVICE_NAME, pool))
    return Scheduler(fleet, make_policy(fleet, policy_name), feeds, devices, metrics=metrics,
                     hashprice_source=hashprice_source_for(fleet.economics, rpc=rpc, coinbase_sats=coinbase_sats),
                     interval_seconds=interval_seconds)
