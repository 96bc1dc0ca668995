"""The scheduler's shared vocabulary: price intervals, site specs and states, decisions.

Everything here is plain data. Times are timezone-aware UTC datetimes; prices are per MWh
in the feed's currency (`PriceInterval`) or in USD after conversion and the site's adder
(`SiteDecision`). A site's power level is a fraction of its capacity: 0.0 is off, and
while on it lies in [min_power_fraction, 1.0].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Mapping, Protocol, Sequence

UTC = timezone.utc


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class PriceInterval:
    """One published price for the delivery interval [start, end), both UTC."""

    start: datetime
    end: datetime
    price: float                  # per MWh, in `currency`; negative prices are normal
    currency: str                 # ISO 4217, e.g. "USD", "EUR"
    resolution: timedelta         # end - start as published (PT60M, PT15M, ...)
    published: datetime | None = None  # when it became known; None: not before `start`

    def known_at(self, now: datetime) -> bool:
        """True when a decision made at `now` may use this price (no look-ahead)."""
        return (self.published if self.published is not None else self.start) <= now


@dataclass(frozen=True)
class DemandResponseWindow:
    """A forced curtailment window, [start, end) in UTC."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class SiteSpec:
    """One site as configured in a sites file."""

    name: str
    capacity_mw: float
    efficiency_j_per_th: float
    timezone: str = "UTC"
    currency: str = "USD"
    usd_per_unit: float = 1.0          # converts the feed's currency to USD
    adder_usd_per_mwh: float = 0.0     # transmission, fees: added to every price
    min_on_hours: float = 0.0
    min_off_hours: float = 0.0
    ramp_mw_per_hour: float | None = None   # None: no ramp limit
    start_cost_usd: float = 0.0
    min_power_fraction: float = 1.0    # 1.0: on/off only
    demand_response: tuple[DemandResponseWindow, ...] = ()
    fail_safe: str = "curtail"         # what to do without a fresh price: "curtail" or "hold"
    price_ttl_seconds: float = 7200.0  # a price older than this (past its interval) is stale
    feed: Mapping = field(default_factory=dict)       # the [site.feed] table, see feeds.make_feed
    devices: tuple[Mapping, ...] = ()  # the [[site.device]] tables, see devices.make_device

    def usd_per_mwh(self, price: float) -> float:
        """The all-in cost of one MWh at this site for a feed price."""
        return price * self.usd_per_unit + self.adder_usd_per_mwh

    @property
    def hashrate_ths(self) -> float:
        """Full-capacity hash rate: MW / (J/TH) = TH/s x 1e6."""
        return self.capacity_mw * 1e6 / self.efficiency_j_per_th


@dataclass(frozen=True)
class SiteState:
    """What a policy needs to know about a site now."""

    level: float = 0.0                 # 0.0 off, else fraction of capacity
    since: datetime | None = None      # when the current on/off status began (None: long ago)

    @property
    def on(self) -> bool:
        return self.level > 0.0


# Bounded set of reasons (they label metrics): why a site runs at its level.
REASONS = (
    "price_below_breakeven",   # cheap power: mining pays
    "price_above_breakeven",   # dear power: curtailed
    "hysteresis",              # inside the dead band: kept as it was
    "min_on_time",             # would curtail, but must stay on
    "min_off_time",            # would run, but must stay off
    "ramp_limit",              # level limited by the ramp rate
    "start_cost",              # a short cheap spell does not pay for a start
    "fleet_budget",            # the fleet power budget binds
    "hashrate_target",         # running to meet the fleet hash-rate target
    "demand_response",         # forced curtailment window
    "price_missing",           # no fresh price: fail-safe applied
    "optimizer",               # the rolling-horizon optimiser's plan
    "always_on",               # the always-on baseline runs whatever the price
)


@dataclass(frozen=True)
class SiteDecision:
    site: str
    level: float                       # 0.0 off, else fraction of capacity
    reason: str                        # one of REASONS
    price_usd_per_mwh: float | None    # all-in price the decision saw (None: missing)
    breakeven_usd_per_mwh: float
    detail: str = ""                   # free text for the log, never a metric label


@dataclass(frozen=True)
class Plan:
    at: datetime
    decisions: Mapping[str, SiteDecision]


class Policy(Protocol):
    """Pure decision rule: (state, prices, now, hashprice) -> plan.

    `prices` maps a site name to the intervals its feed has delivered (sorted by start);
    a policy uses only those `known_at(now)`. A site with no interval covering `now` gets
    its fail-safe decision (reason "price_missing")."""

    def decide(self, states: Mapping[str, SiteState],
               prices: Mapping[str, Sequence[PriceInterval]], now: datetime,
               hashprice_usd_per_th_day: float) -> Plan: ...


class FeedError(Exception):
    """A price feed could not deliver: unreachable, malformed answer, missing field."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind               # bounded: "unreachable", "malformed", "missing", "error"


class PriceFeed(Protocol):
    """A live source of prices. `fetch` returns the intervals known at `now` (published
    no later than now), may return future intervals (day-ahead), and raises FeedError."""

    async def fetch(self, now: datetime) -> Sequence[PriceInterval]: ...
