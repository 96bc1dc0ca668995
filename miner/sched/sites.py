"""Sites files: the TOML that describes a fleet's sites, its economics and its coupling.

    [economics]
    hashprice_usd_per_th_day = 0.05   # or hashprice_file = "series.csv" (start,usd_per_th_day)
    pool_fee = 0.02                   # live use may give btc_usd, subsidy_btc, avg_fees_btc
    [fleet]                           # optional coupling; omit for independent sites
    power_budget_mw = 12.0            # and/or hashrate_target_ths = 400000
    [[site]]
    name = "texas"
    prices = "US-TEX-ERCO_2023.csv"   # relative to the sites file; or a [site.feed] table
    ...                               # see SITE_KEYS

`load_sites` validates everything up front: an unknown key, a wrong type or a value out
of range is a `SitesError` naming the site and the key.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from miner.sched.economics import HashpriceError, HashpriceSeries, load_hashprice_csv
from miner.sched.model import DemandResponseWindow, SiteSpec
from miner.sched.price_files import market_of_file, utc_datetime, zone_named


class SitesError(ValueError):
    """A sites file is unreadable or invalid; the message names the site and key."""


ECONOMICS_KEYS = {"hashprice_usd_per_th_day", "hashprice_file", "pool_fee", "btc_usd",
                  "subsidy_btc", "avg_fees_btc"}
FLEET_KEYS = {"power_budget_mw", "hashrate_target_ths"}
SITE_KEYS = {
    "name", "prices", "currency", "usd_per_unit", "adder_usd_per_mwh", "capacity_mw",
    "efficiency_j_per_th", "min_on_hours", "min_off_hours", "start_cost_usd",
    "min_power_fraction", "timezone", "ramp_mw_per_hour", "fail_safe", "price_ttl_seconds",
    "demand_response", "price_timezone", "publication", "published_local", "feed", "device",
}
FAIL_SAFES = ("curtail", "hold")
# How a price file's prices became known (feeds.load_price_csv): "day_ahead" the day
# before delivery, "realtime" at the start of the interval, "settled" at its end.
PUBLICATIONS = ("day_ahead", "realtime", "settled")
# Files whose name names their market (price_files.KNOWN_MARKET_FILES) need no
# price_timezone, timezone or publication: the file's clock, the market zone and how its
# prices become known are inferred. PJM's file is its real-time market, replayed as
# "realtime": an hour's price is known from its start, the reading of an operator who
# sees the running 5-minute prices and can curtail within minutes (the hourly file cannot
# show that reaction). "settled" (known when the hour ends) is the strict reading; give
# publication = "settled" to test it. Unknown files are day-ahead markets by default.


@dataclass(frozen=True)
class EconomicsSpec:
    """Revenue inputs: a hashprice (constant or series), the pool fee, and for live use the
    BTC price and block reward from which a hashprice can be computed."""

    pool_fee: float = 0.0
    hashprice_usd_per_th_day: float | None = None
    hashprice_series: HashpriceSeries | None = None
    btc_usd: float | None = None
    subsidy_btc: float | None = None
    avg_fees_btc: float = 0.0

    def hashprice_at(self, when: datetime) -> float:
        """The configured hashprice at `when` (series first, then the constant)."""
        if self.hashprice_series is not None:
            return self.hashprice_series.at(when)
        if self.hashprice_usd_per_th_day is not None:
            return self.hashprice_usd_per_th_day
        raise SitesError("no hashprice configured: give [economics] hashprice_usd_per_th_day or "
                         "hashprice_file (live use can compute it from difficulty and btc_usd)")


@dataclass(frozen=True)
class FleetSpec:
    sites: tuple[SiteSpec, ...]
    economics: EconomicsSpec
    power_budget_mw: float | None = None
    hashrate_target_ths: float | None = None
    base_dir: Path = Path(".")
    # site name -> the price file to replay in a back-test ({"kind": "csv", "path", ...}),
    # kept apart from SiteSpec.feed so a site may have a live feed and a replay file.
    replay: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def coupled(self) -> bool:
        return self.power_budget_mw is not None or self.hashrate_target_ths is not None

    def site(self, name: str) -> SiteSpec:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)


def load_sites(path: str | Path) -> FleetSpec:
    """Read and validate a sites file; relative paths in it are relative to its folder."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise SitesError(f"cannot read sites file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SitesError(f"{path}: not valid TOML: {exc}") from exc
    return parse_sites(doc, base_dir=path.resolve().parent)


def parse_sites(doc: Mapping[str, Any], *, base_dir: Path) -> FleetSpec:
    """Validate a parsed sites document (see module docstring)."""
    _unknown(doc, {"economics", "fleet", "site"}, "top level")
    economics = _parse_economics(_table(doc.get("economics", {}), "[economics]"), base_dir)
    fleet = _table(doc.get("fleet", {}), "[fleet]")
    _unknown(fleet, FLEET_KEYS, "[fleet]")
    budget = _number(fleet, "power_budget_mw", "[fleet]", minimum=0.0, strict=True)
    target = _number(fleet, "hashrate_target_ths", "[fleet]", minimum=0.0, strict=True)
    raw_sites = doc.get("site")
    if not isinstance(raw_sites, list) or not raw_sites:
        raise SitesError("a sites file needs at least one [[site]] table")
    sites: list[SiteSpec] = []
    replay: dict[str, Mapping[str, Any]] = {}
    for i, raw in enumerate(raw_sites):
        site, replay_feed = _parse_site(_table(raw, f"[[site]] #{i + 1}"), i, base_dir)
        if any(s.name == site.name for s in sites):
            raise SitesError(f"site {site.name!r}: name used twice")
        sites.append(site)
        if replay_feed is not None:
            replay[site.name] = replay_feed
    return FleetSpec(sites=tuple(sites), economics=economics, power_budget_mw=budget,
                     hashrate_target_ths=target, base_dir=base_dir, replay=replay)


# ---------------------------------------------------------------------------


def _parse_economics(table: Mapping[str, Any], base_dir: Path) -> EconomicsSpec:
    where = "[economics]"
    _unknown(table, ECONOMICS_KEYS, where)
    constant = _number(table, "hashprice_usd_per_th_day", where, minimum=0.0)
    file = _string(table, "hashprice_file", where)
    if constant is not None and file is not None:
        raise SitesError(f"{where}: give hashprice_usd_per_th_day or hashprice_file, not both")
    series = None
    if file is not None:
        try:
            series = load_hashprice_csv(_resolve(base_dir, file))
        except HashpriceError as exc:
            raise SitesError(f"{where} hashprice_file: {exc}") from exc
    fee = _number(table, "pool_fee", where, minimum=0.0) or 0.0
    if fee >= 1.0:
        raise SitesError(f"{where} pool_fee: must be a fraction in [0, 1), got {fee}")
    btc = _number(table, "btc_usd", where, minimum=0.0, strict=True)
    if constant is None and series is None and btc is None:
        raise SitesError(f"{where}: needs hashprice_usd_per_th_day, hashprice_file or (live) btc_usd")
    return EconomicsSpec(pool_fee=fee, hashprice_usd_per_th_day=constant, hashprice_series=series,
                         btc_usd=btc, subsidy_btc=_number(table, "subsidy_btc", where, minimum=0.0),
                         avg_fees_btc=_number(table, "avg_fees_btc", where, minimum=0.0) or 0.0)


def _parse_site(raw: Mapping[str, Any], index: int, base_dir: Path) -> tuple[SiteSpec, dict | None]:
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SitesError(f"[[site]] #{index + 1}: needs name = \"...\" (a non-empty string)")
    where = f"site {name!r}"
    _unknown(raw, SITE_KEYS, where)
    tz = _string(raw, "timezone", where) or "UTC"
    _zone(tz, where, "timezone")
    currency = (_string(raw, "currency", where) or "USD").upper()
    usd_per_unit = _number(raw, "usd_per_unit", where, minimum=0.0, strict=True)
    if currency != "USD" and usd_per_unit is None:
        raise SitesError(f"{where}: currency {currency} needs usd_per_unit (USD per {currency})")
    capacity = _number(raw, "capacity_mw", where, minimum=0.0, strict=True)
    if capacity is None:
        raise SitesError(f"{where}: needs capacity_mw (> 0)")
    efficiency = _number(raw, "efficiency_j_per_th", where, minimum=0.0, strict=True)
    if efficiency is None:
        raise SitesError(f"{where}: needs efficiency_j_per_th (> 0)")
    min_frac = _number(raw, "min_power_fraction", where, minimum=0.0, strict=True)
    if min_frac is not None and min_frac > 1.0:
        raise SitesError(f"{where} min_power_fraction: must be in (0, 1], got {min_frac}")
    fail_safe = _string(raw, "fail_safe", where) or "curtail"
    if fail_safe not in FAIL_SAFES:
        raise SitesError(f"{where} fail_safe: must be one of {FAIL_SAFES}, got {fail_safe!r}")
    ttl = _number(raw, "price_ttl_seconds", where, minimum=0.0)
    windows = _parse_windows(raw.get("demand_response", []), where, tz)

    feed_table = raw.get("feed")
    if feed_table is not None and not isinstance(feed_table, Mapping):
        raise SitesError(f"{where} feed: must be a table ([site.feed])")
    devices = raw.get("device", [])
    if not isinstance(devices, list) or not all(isinstance(d, Mapping) for d in devices):
        raise SitesError(f"{where} device: must be [[site.device]] tables")
    replay = _replay_feed(raw, where, base_dir, currency, tz)
    if feed_table is None and replay is None:
        raise SitesError(f"{where}: needs prices = \"FILE.csv\" or a [site.feed] table")

    spec = SiteSpec(
        name=name, capacity_mw=capacity, efficiency_j_per_th=efficiency, timezone=tz,
        currency=currency, usd_per_unit=usd_per_unit if usd_per_unit is not None else 1.0,
        adder_usd_per_mwh=_number(raw, "adder_usd_per_mwh", where) or 0.0,
        min_on_hours=_number(raw, "min_on_hours", where, minimum=0.0) or 0.0,
        min_off_hours=_number(raw, "min_off_hours", where, minimum=0.0) or 0.0,
        ramp_mw_per_hour=_number(raw, "ramp_mw_per_hour", where, minimum=0.0, strict=True),
        start_cost_usd=_number(raw, "start_cost_usd", where, minimum=0.0) or 0.0,
        min_power_fraction=min_frac if min_frac is not None else 1.0,
        demand_response=windows, fail_safe=fail_safe,
        price_ttl_seconds=ttl if ttl is not None else SiteSpec.price_ttl_seconds,
        feed=dict(feed_table) if feed_table is not None else dict(replay or {}),
        devices=tuple(dict(d) for d in devices),
    )
    return spec, replay


def _replay_feed(raw: Mapping[str, Any], where: str, base_dir: Path, currency: str,
                 site_tz: str) -> dict | None:
    """The CSV feed dict for `prices = FILE` (None without one). The site's `timezone` is
    the market zone of day-ahead publication times (feeds.csv_market_timezone); UTC, the
    default, names no market and is left out. For a file that names a known market,
    price_timezone and the market zone default to what its name tells."""
    prices = _string(raw, "prices", where)
    price_tz = _string(raw, "price_timezone", where)
    publication = _string(raw, "publication", where)
    published_local = _string(raw, "published_local", where)
    if prices is None:
        for key, value in (("price_timezone", price_tz), ("publication", publication),
                           ("published_local", published_local)):
            if value is not None:
                raise SitesError(f"{where} {key}: only meaningful with prices = \"FILE.csv\"")
        return None
    if price_tz is not None:
        _zone(price_tz, where, "price_timezone")
    market = market_of_file(prices)
    if price_tz is None and market is not None:
        price_tz = market.clock
    if publication is None:
        publication = default_publication(prices)
    elif publication not in PUBLICATIONS:
        raise SitesError(f"{where} publication: must be one of {PUBLICATIONS}, got {publication!r}")
    if published_local is not None:
        parts = published_local.split(":")
        if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[0]) > 23 or int(parts[1]) > 59:
            raise SitesError(f"{where} published_local: expected HH:MM, got {published_local!r}")
    feed = {"kind": "csv", "path": str(_resolve(base_dir, prices)), "publication": publication,
            "currency": currency}
    if price_tz is not None:
        feed["timezone"] = price_tz
    if site_tz.upper() != "UTC":
        feed["market_timezone"] = site_tz
    elif market is not None:
        feed["market_timezone"] = market.zone
    if published_local is not None:
        feed["published_local"] = published_local
    return feed


def default_publication(file_name: str) -> str:
    """"realtime" for the files of real-time markets (PJM), "day_ahead" otherwise."""
    market = market_of_file(file_name)
    return market.publication if market is not None else "day_ahead"


def _parse_windows(raw: Any, where: str, tz: str) -> tuple[DemandResponseWindow, ...]:
    if not isinstance(raw, list):
        raise SitesError(f"{where} demand_response: must be a list of {{start=..., end=...}} tables")
    zone = _zone(tz, where, "timezone")
    out = []
    for i, item in enumerate(raw):
        w = f"{where} demand_response[{i}]"
        if not isinstance(item, Mapping):
            raise SitesError(f"{w}: must be a table {{start=..., end=...}}")
        _unknown(item, {"start", "end"}, w)
        if "start" not in item or "end" not in item:
            raise SitesError(f"{w}: needs start and end")
        start = _datetime(item["start"], f"{w} start", zone)
        end = _datetime(item["end"], f"{w} end", zone)
        if end <= start:
            raise SitesError(f"{w}: end {end.isoformat()} is not after start {start.isoformat()}")
        out.append(DemandResponseWindow(start=start, end=end))
    return tuple(sorted(out, key=lambda x: x.start))


def _datetime(value: Any, where: str, zone) -> datetime:
    """A TOML datetime or ISO string; naive ones are wall-clock time of the site's zone."""
    try:
        return utc_datetime(value, zone, allow_date=False)
    except ValueError as exc:
        raise SitesError(f"{where}: {exc}") from exc


def _zone(name: str, where: str, key: str):
    try:
        return zone_named(name)
    except ValueError as exc:
        raise SitesError(f"{where} {key}: {exc}") from exc


def _resolve(base_dir: Path, name: str) -> Path:
    p = Path(name).expanduser()
    return p if p.is_absolute() else (base_dir / p).resolve()


def _unknown(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise SitesError(f"{where}: unknown key {extra[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SitesError(f"{where}: must be a table")
    return value


def _string(table: Mapping[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SitesError(f"{where} {key}: expected a non-empty string, got {value!r}")
    return value.strip()


def _number(table: Mapping[str, Any], key: str, where: str, *, minimum: float | None = None,
            strict: bool = False) -> float | None:
    """A finite number; with `minimum`, >= it (> it when `strict`)."""
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SitesError(f"{where} {key}: expected a number, got {value!r}")
    value = float(value)
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        raise SitesError(f"{where} {key}: must be {'>' if strict else '>='} {minimum:g}, got {value:g}")
    return value
