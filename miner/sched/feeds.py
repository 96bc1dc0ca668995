"""Live power-price feeds: static, replay of a price file, generic HTTP JSON, ENTSO-E
day-ahead (A44), ERCOT settlement point prices and gridstatus, plus `make_feed`, which
builds one from a site's [site.feed] table.

Every feed yields `PriceInterval`s: [start, end) in UTC, the price per MWh in the
market's currency, the resolution and when the price became known (`published`), so a
policy never uses a price before it was published. Reading price files and the interval
helpers live in `price_files`; `load_price_csv`, `merge_intervals`, `price_at` and
`hourly_array` are re-exported here for the modules that import them from this one.
"""

from __future__ import annotations

import asyncio
import bisect
import http.client
import json
import logging
import math
import numbers
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from datetime import date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from miner.sched.model import UTC, FeedError, PriceFeed, PriceInterval, SiteSpec
from miner.sched.price_files import (
    HOUR,
    MISSING_PRICE_CELLS,
    DayAheadClock,
    WallClock,
    day_ahead_published_local,
    hourly_array,
    is_ambiguous,
    load_price_csv,
    localize,
    market_of_file,
    merge_intervals,
    parse_local_hhmm,
    parse_price_cell,
    price_at,
    utc_datetime,
    zone_named,
)

__all__ = [
    # re-exported from price_files (imported from here by other modules)
    "load_price_csv", "merge_intervals", "price_at", "hourly_array",
    # this module's own
    "floor_time", "StaticFeed", "ReplayFeed",
    "MAX_RESPONSE_BYTES", "DEFAULT_TIMEOUT_S", "http_get", "headers_from_env",
    "json_path", "parse_time_value", "parse_price_value", "parse_json_prices", "HTTPJSONFeed",
    "ENTSOE_ZONE", "parse_iso_duration", "entsoe_acknowledgement_reason", "parse_entsoe_a44",
    "EntsoeFeed",
    "ERCOT_ZONE", "ERCOT_BASE_URL", "ERCOT_ENDPOINTS", "RT_INTERVAL", "parse_ercot_spp",
    "ErcotFeed", "carry_latest",
    "GRIDSTATUS_PRICE_COLUMNS", "intervals_from_records", "GridstatusFeed",
    "FEED_KEYS", "make_feed", "feed_for_site", "feeds_for_sites", "SHAREABLE_FEEDS", "csv_market_timezone",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Static and replay feeds


def floor_time(now: datetime, step: timedelta) -> datetime:
    """`now` rounded down to a whole `step` since the Unix epoch (UTC)."""
    seconds = step.total_seconds()
    t = now.timestamp()
    return datetime.fromtimestamp(t - t % seconds, UTC)


class StaticFeed:
    """One constant price, for the interval of `resolution` that covers `now`."""

    def __init__(self, price: float, currency: str = "USD", *,
                 resolution: timedelta = HOUR) -> None:
        if not math.isfinite(price):
            raise ValueError(f"static price must be a finite number, got {price!r}")
        self.price = float(price)
        self.currency = currency
        self.resolution = resolution

    async def fetch(self, now: datetime) -> Sequence[PriceInterval]:
        start = floor_time(now, self.resolution)
        return [PriceInterval(start, start + self.resolution, self.price, self.currency,
                              self.resolution, published=start)]


class ReplayFeed:
    """Replays recorded intervals as a live feed: at `now` it returns the intervals known
    at `now` (published <= now) from `lookback` ago on, including any already published
    for the future (tomorrow's day-ahead prices after 13:00).

    With `replay_from`, the recording is shifted so that it plays from `replay_from` at
    the first fetch (or at `anchor`): a past week can be demonstrated live. The shift is a
    whole number of days, so hours and publication times keep their daily pattern."""

    def __init__(self, intervals: Sequence[PriceInterval], *, replay_from: datetime | None = None,
                 anchor: datetime | None = None, lookback: timedelta = timedelta(days=1),
                 horizon: timedelta = timedelta(days=3)) -> None:
        self.intervals = merge_intervals(intervals)
        self._starts = [iv.start for iv in self.intervals]
        self.replay_from = replay_from
        self.lookback = lookback
        self.horizon = horizon
        self._shift: timedelta | None = None
        if replay_from is not None and anchor is not None:
            self._shift = self._shift_for(anchor)
        elif replay_from is None:
            self._shift = timedelta(0)

    def _shift_for(self, anchor: datetime) -> timedelta:
        assert self.replay_from is not None
        days = (anchor - self.replay_from) // timedelta(days=1)
        return timedelta(days=days)

    def shift(self, now: datetime) -> timedelta:
        """How far the recording is moved forward (fixed at the first fetch)."""
        if self._shift is None:
            self._shift = self._shift_for(now)
        return self._shift

    async def fetch(self, now: datetime) -> Sequence[PriceInterval]:
        return self.known_at(now)

    def known_at(self, now: datetime) -> list[PriceInterval]:
        shift = self.shift(now)
        t = now - shift
        lo = bisect.bisect_left(self._starts, t - self.lookback - HOUR * 24)
        hi = bisect.bisect_right(self._starts, t + self.horizon)
        out = []
        for iv in self.intervals[lo:hi]:
            if iv.end <= t - self.lookback or not iv.known_at(t):
                continue
            if shift:
                iv = PriceInterval(iv.start + shift, iv.end + shift, iv.price, iv.currency,
                                   iv.resolution,
                                   None if iv.published is None else iv.published + shift)
            out.append(iv)
        if not out:
            raise FeedError(f"no recorded price around {t.isoformat()}", "missing")
        return out


# ---------------------------------------------------------------------------
# HTTP (stdlib only: urllib in a thread)

MAX_RESPONSE_BYTES = 16 * 1024 * 1024   # a price answer is kilobytes; cap what a broken server can send
DEFAULT_TIMEOUT_S = 10.0


def _redact(url: str) -> str:
    """A URL fit for logs and errors: query values of secret-looking keys removed."""
    return re.sub(r"(?i)((?:token|key|secret|password|securityToken)=)[^&]*", r"\1***", url)


def _http_get_blocking(url: str, headers: Mapping[str, str], timeout: float) -> tuple[int, bytes]:
    if not url.lower().startswith(("http://", "https://")):
        raise FeedError(f"only http(s) URLs are fetched, got {_redact(url)}", "error")
    request = urllib.request.Request(url, headers=dict(headers), method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(MAX_RESPONSE_BYTES + 1)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise FeedError(f"{_redact(url)}: {reason}", "unreachable") from exc
    if len(body) > MAX_RESPONSE_BYTES:
        raise FeedError(f"{_redact(url)}: answer larger than {MAX_RESPONSE_BYTES} bytes", "malformed")
    return status, body


async def http_get(url: str, headers: Mapping[str, str] | None = None, *,
                   timeout: float = DEFAULT_TIMEOUT_S) -> tuple[int, bytes]:
    """GET without blocking the loop: (HTTP status, body). FeedError("unreachable") when
    no answer came (refused, DNS, timeout)."""
    return await asyncio.to_thread(_http_get_blocking, url, headers or {}, timeout)


def headers_from_env(headers_env: Mapping[str, str],
                     environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """{header: env var name} -> {header: value}; secrets stay out of config files."""
    env = os.environ if environ is None else environ
    out = {}
    for header, var in headers_env.items():
        value = env.get(var)
        if not value:
            raise FeedError(f"environment variable {var} (for header {header}) is not set", "error")
        out[header] = value
    return out


def _load_json(body: bytes, what: str) -> object:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FeedError(f"{what}: answer is not JSON ({exc})", "malformed") from exc


# ---------------------------------------------------------------------------
# Generic JSON poll


def json_path(doc: object, path: str) -> object:
    """Follow a dotted path ("data.0.price"): names index objects, integers index lists.
    FeedError("missing") names the first step that is not there."""
    node = doc
    if not path:
        return node
    for step in path.split("."):
        if isinstance(node, Mapping) and step in node:
            node = node[step]
        elif isinstance(node, list) and re.fullmatch(r"-?\d+", step) and -len(node) <= int(step) < len(node):
            node = node[int(step)]
        else:
            raise FeedError(f"no {step!r} at {path!r}", "missing")
    return node


def parse_time_value(value: object, zone: tzinfo = UTC) -> datetime:
    """An ISO 8601 string or Unix time (seconds, or milliseconds when > 1e11) -> UTC.
    Naive strings are read in `zone`. FeedError("malformed") otherwise."""
    if isinstance(value, bool):
        raise FeedError(f"not a time: {value!r}", "malformed")
    if isinstance(value, (int, float)):
        seconds = value / 1000.0 if abs(value) > 1e11 else float(value)
        return datetime.fromtimestamp(seconds, UTC)
    if isinstance(value, str):
        try:
            t = datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise FeedError(f"not an ISO 8601 time: {value!r}", "malformed") from exc
        if t.tzinfo is None:
            t = t.replace(tzinfo=zone)
        return t.astimezone(UTC)
    raise FeedError(f"not a time: {value!r}", "malformed")


def parse_price_value(value: object) -> float | None:
    """A JSON price -> float; None for null, "" and "n/e"; FeedError for other junk."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise FeedError(f"not a price: {value!r}", "malformed")
    if isinstance(value, numbers.Real):          # int, float, numpy scalars
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        if value.strip() in MISSING_PRICE_CELLS:
            return None
        price = parse_price_cell(value)
        if price is None:
            raise FeedError(f"not a price: {value!r}", "malformed")
        return price
    raise FeedError(f"not a price: {value!r}", "malformed")


def parse_json_prices(doc: object, *, price_path: str, fetched_at: datetime,
                      start_path: str | None = None, end_path: str | None = None,
                      items_path: str | None = None, currency: str = "USD",
                      resolution: timedelta = HOUR, zone: tzinfo = UTC) -> list[PriceInterval]:
    """Intervals from a JSON answer by field paths. Without `start_path` the one price
    applies from `fetched_at` for `resolution`. Published = fetched_at (we cannot know
    earlier)."""
    items = json_path(doc, items_path) if items_path else [doc]
    if not isinstance(items, list):
        raise FeedError(f"{items_path!r} is not a list", "malformed")
    out = []
    for item in items:
        price = parse_price_value(json_path(item, price_path))
        if price is None:
            continue
        start = parse_time_value(json_path(item, start_path), zone) if start_path else fetched_at
        end = parse_time_value(json_path(item, end_path), zone) if end_path else start + resolution
        if end <= start:
            raise FeedError(f"interval ends before it starts ({start} .. {end})", "malformed")
        out.append(PriceInterval(start, end, price, currency, end - start, published=fetched_at))
    if not out:
        raise FeedError("no price in the answer", "missing")
    return merge_intervals(out)


class HTTPJSONFeed:
    """Polls any JSON price API; field paths say where the numbers are."""

    def __init__(self, url: str, *, price_path: str, start_path: str | None = None,
                 end_path: str | None = None, items_path: str | None = None, currency: str = "USD",
                 resolution: timedelta = HOUR, headers_env: Mapping[str, str] | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, timezone: str = "UTC") -> None:
        if items_path and not start_path:
            raise ValueError("http_json: items_path needs start_path (each item's start time)")
        self.url = url
        self.price_path = price_path
        self.start_path = start_path
        self.end_path = end_path
        self.items_path = items_path
        self.currency = currency
        self.resolution = resolution
        self.headers_env = dict(headers_env or {})
        self.timeout = timeout
        self.zone = zone_named(timezone)

    async def fetch(self, now: datetime) -> Sequence[PriceInterval]:
        status, body = await http_get(self.url, headers_from_env(self.headers_env), timeout=self.timeout)
        if status != 200:
            raise FeedError(f"{_redact(self.url)}: HTTP {status}", "error")
        return parse_json_prices(_load_json(body, _redact(self.url)), price_path=self.price_path,
                                 fetched_at=now, start_path=self.start_path, end_path=self.end_path,
                                 items_path=self.items_path, currency=self.currency,
                                 resolution=self.resolution, zone=self.zone)


# ---------------------------------------------------------------------------
# ENTSO-E Transparency Platform, day-ahead prices (document type A44)
#
# Followed: the Transparency Platform RESTful API user guide (documentType=A44,
# in_Domain = out_Domain = bidding-zone EIC, periodStart/periodEnd yyyyMMddHHmm UTC,
# securityToken) and the Publication_MarketDocument schema: TimeSeries/Period with
# timeInterval start/end, resolution (PT60M, PT30M, PT15M) and Points (position from 1,
# price.amount). curveType A01 lists every position; A03 ("variable sized block") omits
# a position whose price equals the previous one, so it repeats until the next Point or
# the end of the Period. "No data" comes back as an Acknowledgement_MarketDocument.

ENTSOE_ZONE = "Europe/Brussels"   # SDAC's clock: CET/CEST


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(node: ET.Element, name: str) -> ET.Element | None:
    for c in node:
        if _local_name(c.tag) == name:
            return c
    return None


def _children(node: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in node if _local_name(c.tag) == name]


def _text(node: ET.Element | None, name: str, default: str | None = None) -> str | None:
    c = None if node is None else _child(node, name)
    return c.text.strip() if c is not None and c.text is not None else default


def parse_iso_duration(text: str) -> timedelta:
    """PT15M, PT30M, PT60M, PT1H, P1D -> timedelta; FeedError for anything else."""
    m = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?)?", text.strip())
    if not m or not any(m.groups()):
        raise FeedError(f"unsupported resolution {text!r}", "malformed")
    d, h, mins = (int(g) if g else 0 for g in m.groups())
    return timedelta(days=d, hours=h, minutes=mins)


def _entsoe_time(text: str | None, what: str) -> datetime:
    if not text:
        raise FeedError(f"A44: {what} missing", "malformed")
    return parse_time_value(text)


def entsoe_acknowledgement_reason(root: ET.Element) -> str:
    reasons = [" ".join(filter(None, (_text(r, "code"), _text(r, "text")))) for r in _children(root, "Reason")]
    return "; ".join(r for r in reasons if r) or "acknowledgement without reason"


def parse_entsoe_a44(xml: bytes, *, published_local: str | None = None) -> list[PriceInterval]:
    """A Publication_MarketDocument (A44) -> intervals. published = the earlier of the
    SDAC publication estimate (13:00 CET the day before delivery) and the document's
    createdDateTime: both are no earlier than the truth, so the earlier is the better
    bound. An Acknowledgement_MarketDocument -> FeedError("missing") with its reason."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise FeedError(f"A44: not XML ({exc})", "malformed") from exc
    kind = _local_name(root.tag)
    if kind == "Acknowledgement_MarketDocument":
        raise FeedError(f"ENTSO-E: {entsoe_acknowledgement_reason(root)}", "missing")
    if kind != "Publication_MarketDocument":
        raise FeedError(f"ENTSO-E: unexpected document {kind}", "malformed")
    doc_type = _text(root, "type")
    if doc_type not in (None, "A44"):
        raise FeedError(f"ENTSO-E: document type {doc_type}, expected A44 (prices)", "malformed")
    created_text = _text(root, "createdDateTime")
    created = _entsoe_time(created_text, "createdDateTime") if created_text else None
    zone = zone_named(ENTSOE_ZONE)
    clock = DayAheadClock(zone, day_ahead_published_local(ENTSOE_ZONE, published_local))
    out: list[PriceInterval] = []
    for series in _children(root, "TimeSeries"):
        currency = _text(series, "currency_Unit.name", "EUR") or "EUR"
        unit = (_text(series, "price_Measure_Unit.name", "MWH") or "MWH").upper()
        if unit != "MWH":
            raise FeedError(f"A44: prices per {unit}, expected MWH", "malformed")
        curve = _text(series, "curveType", "A01")
        if curve not in ("A01", "A03"):
            raise FeedError(f"A44: unsupported curveType {curve}", "malformed")
        for period in _children(series, "Period"):
            out.extend(_entsoe_period(period, currency=currency, curve=curve,
                                      clock=clock, created=created))
    return merge_intervals(out)


def _entsoe_period(period: ET.Element, *, currency: str, curve: str | None,
                   clock: DayAheadClock, created: datetime | None) -> list[PriceInterval]:
    interval = _child(period, "timeInterval")
    start = _entsoe_time(_text(interval, "start"), "timeInterval/start")
    end = _entsoe_time(_text(interval, "end"), "timeInterval/end")
    step = parse_iso_duration(_text(period, "resolution") or "")
    slots = int((end - start) / step)
    if slots <= 0 or start + slots * step != end:
        raise FeedError(f"A44: period {start}..{end} is not a whole number of {step}", "malformed")
    prices: dict[int, float] = {}
    for point in _children(period, "Point"):
        try:
            position = int(_text(point, "position") or "")
            amount = float(_text(point, "price.amount") or "")
        except ValueError as exc:
            raise FeedError(f"A44: bad Point ({exc})", "malformed") from exc
        if not 1 <= position <= slots:
            raise FeedError(f"A44: position {position} outside 1..{slots}", "malformed")
        prices[position] = amount
    out = []
    last: float | None = None
    for position in range(1, slots + 1):
        price = prices.get(position)
        if price is None and curve == "A03":
            price = last          # A03: an omitted position repeats the previous price
        if price is None:
            continue              # A01: an omitted position is a gap
        last = price
        s = start + (position - 1) * step
        published = clock.published(s)
        if created is not None and created < published:
            published = created
        out.append(PriceInterval(s, s + step, price, currency, step, published))
    return out


class EntsoeFeed:
    """Day-ahead prices of one bidding zone from the ENTSO-E Transparency Platform."""

    def __init__(self, area_eic: str, *, token_env: str = "ENTSOE_TOKEN",
                 base_url: str = "https://web-api.tp.entsoe.eu/api",
                 timeout: float = DEFAULT_TIMEOUT_S, published_local: str | None = None) -> None:
        if not re.fullmatch(r"[0-9A-Z-]{16}", area_eic):
            raise ValueError(f"entsoe: area must be a 16-character EIC code, got {area_eic!r}")
        self.area_eic = area_eic
        self.token_env = token_env
        self.base_url = base_url
        self.timeout = timeout
        self.published_local = published_local

    def query_url(self, now: datetime, token: str) -> str:
        """Today and tomorrow (CET days) for the zone."""
        zone = zone_named(ENTSOE_ZONE)
        day = now.astimezone(zone).date()
        start = datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
        end = datetime.combine(day + timedelta(days=2), time(0), tzinfo=zone).astimezone(UTC)
        query = urllib.parse.urlencode({
            "documentType": "A44", "in_Domain": self.area_eic, "out_Domain": self.area_eic,
            "periodStart": start.strftime("%Y%m%d%H%M"), "periodEnd": end.strftime("%Y%m%d%H%M"),
            "securityToken": token})
        return f"{self.base_url}?{query}"

    async def fetch(self, now: datetime) -> Sequence[PriceInterval]:
        token = os.environ.get(self.token_env)
        if not token:
            raise FeedError(f"environment variable {self.token_env} (ENTSO-E token) is not set", "error")
        url = self.query_url(now, token)
        status, body = await http_get(url, timeout=self.timeout)
        if status != 200 and b"Acknowledgement_MarketDocument" not in body[:2000]:
            raise FeedError(f"ENTSO-E: HTTP {status}", "error")
        intervals = parse_entsoe_a44(body, published_local=self.published_local)
        # Fetched now, so known now: never claim a later publication than the fetch.
        return [iv if iv.published is not None and iv.published <= now
                else PriceInterval(iv.start, iv.end, iv.price, iv.currency, iv.resolution, now)
                for iv in intervals]


# ---------------------------------------------------------------------------
# ERCOT public API (api.ercot.com/api/public-reports)
#
# Followed: ERCOT's public API answers, as read by gridstatus (ercot_api.hit_ercot_api):
# {"_meta": {..., "totalPages": n}, "report": {...}, "fields": [{"name": ...}, ...],
# "data": [[...], ...]}, rows positional in the order of "fields".
#   NP4-190-CD dam_stlmnt_pnt_prices: deliveryDate, hourEnding "01:00".."24:00",
#     settlementPoint, settlementPointPrice, DSTFlag
#   NP6-905-CD spp_node_zone_hub: deliveryDate, deliveryHour 1..24, deliveryInterval 1..4,
#     settlementPoint (settlementPointName in the CSV archives), settlementPointType,
#     settlementPointPrice, DSTFlag
# Times are Central prevailing time, hour ending; DSTFlag marks the repeated hour on the
# fall-back day (ERCOT's "02:00*"), i.e. the second, standard-time, occurrence.

ERCOT_ZONE = "America/Chicago"
ERCOT_BASE_URL = "https://api.ercot.com/api/public-reports"
ERCOT_ENDPOINTS = {"dam": "/np4-190-cd/dam_stlmnt_pnt_prices", "rt": "/np6-905-cd/spp_node_zone_hub"}
RT_INTERVAL = timedelta(minutes=15)


def _ercot_flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().upper() in ("Y", "TRUE", "T", "1", "N", "FALSE", "F", "0", ""):
        return value.strip().upper() in ("Y", "TRUE", "T", "1")
    raise FeedError(f"ERCOT: bad DSTFlag {value!r}", "malformed")


def _ercot_date(value: object) -> date:
    text = str(value).strip()
    try:
        if "/" in text:                      # MIS CSV style: 11/05/2023
            m, d, y = text.split("/")
            return date(int(y), int(m), int(d))
        return date.fromisoformat(text[:10])
    except ValueError as exc:
        raise FeedError(f"ERCOT: bad deliveryDate {value!r}", "malformed") from exc


def _ercot_hour(value: object) -> int:
    text = str(value).strip()
    hour = text.split(":")[0] if ":" in text else text
    if not hour.isdigit() or not 1 <= int(hour) <= 24:
        raise FeedError(f"ERCOT: bad hour {value!r}", "malformed")
    return int(hour)


def parse_ercot_spp(doc: object, *, settlement_point: str | None = None,
                    published_local: str = "13:30") -> list[PriceInterval]:
    """DAM (hourly) or real-time (15-minute) settlement point prices -> intervals, told
    apart by their fields. DAM prices are published the day before at `published_local`
    Central; real-time prices are known when their interval has ended."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("fields"), list) \
            or not isinstance(doc.get("data"), list):
        raise FeedError("ERCOT: answer lacks 'fields' and 'data'", "malformed")
    try:
        names = [f["name"] for f in doc["fields"]]
    except (TypeError, KeyError) as exc:
        raise FeedError("ERCOT: 'fields' without names", "malformed") from exc
    col = {n: i for i, n in enumerate(names)}
    point_col = col.get("settlementPoint", col.get("settlementPointName"))
    rt = "deliveryInterval" in col
    need = ["deliveryDate", "settlementPointPrice", "DSTFlag"] + (
        ["deliveryHour", "deliveryInterval"] if rt else ["hourEnding"])
    missing = [n for n in need if n not in col]
    if missing:
        raise FeedError(f"ERCOT: fields {missing} missing", "malformed")
    wall = WallClock(zone_named(ERCOT_ZONE))
    clock = DayAheadClock(zone_named(ERCOT_ZONE), parse_local_hhmm(published_local))
    out = []
    for row in doc["data"]:
        if not isinstance(row, list) or len(row) != len(names):
            raise FeedError(f"ERCOT: row {row!r} does not match the fields", "malformed")
        if settlement_point and point_col is not None and str(row[point_col]).strip() != settlement_point:
            continue
        price = parse_price_value(row[col["settlementPointPrice"]])
        if price is None:
            continue
        day = _ercot_date(row[col["deliveryDate"]])
        if rt:
            interval = _ercot_hour(row[col["deliveryInterval"]])
            if interval > 4:
                raise FeedError(f"ERCOT: deliveryInterval {interval} outside 1..4", "malformed")
            offset = timedelta(hours=_ercot_hour(row[col["deliveryHour"]]) - 1) + (interval - 1) * RT_INTERVAL
            step = RT_INTERVAL
        else:
            offset, step = timedelta(hours=_ercot_hour(row[col["hourEnding"]]) - 1), HOUR
        naive = datetime.combine(day, time(0)) + offset
        zone = wall.zone
        if is_ambiguous(naive, zone):
            start = localize(naive, zone, fold=1 if _ercot_flag(row[col["DSTFlag"]]) else 0)
        else:
            start = localize(naive, zone)
        if start is None:
            log.info("ERCOT: %s does not exist in Central time; row skipped", naive)
            continue
        start = start.astimezone(UTC)
        published = start + step if rt else clock.published(start)
        out.append(PriceInterval(start, start + step, price, "USD", step, published))
    return merge_intervals(out)


class ErcotFeed:
    """ERCOT settlement point prices through the public API.

    Both credentials come from the environment: the subscription key (header
    Ocp-Apim-Subscription-Key) and an ID token (Authorization: Bearer). Getting the token
    is the operator's job: ERCOT issues it through its Azure B2C ROPC flow with the API
    account's user name and password, valid one hour, so a cron job or secret manager
    refreshes ERCOT_API_TOKEN. For market "rt" the latest settled 15-minute price is
    carried into the current interval (published now): real-time prices are only known
    after the fact and an operator curtails on the latest one."""

    def __init__(self, settlement_point: str, *, market: str = "dam",
                 subscription_key_env: str = "ERCOT_SUBSCRIPTION_KEY",
                 token_env: str = "ERCOT_API_TOKEN", base_url: str = ERCOT_BASE_URL,
                 timeout: float = DEFAULT_TIMEOUT_S, max_pages: int = 10) -> None:
        if market not in ERCOT_ENDPOINTS:
            raise ValueError(f"ercot: market must be one of {sorted(ERCOT_ENDPOINTS)}, got {market!r}")
        self.settlement_point = settlement_point
        self.market = market
        self.headers_env = {"Ocp-Apim-Subscription-Key": subscription_key_env}
        self.token_env = token_env
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_pages = max_pages

    def query_url(self, now: datetime, page: int = 1) -> str:
        today = now.astimezone(zone_named(ERCOT_ZONE)).date()
        first = today - timedelta(days=1) if self.market == "rt" else today
        query = urllib.parse.urlencode({
            "deliveryDateFrom": first.isoformat(), "deliveryDateTo": (today + timedelta(days=1)).isoformat(),
            "settlementPoint": self.settlement_point, "size": 1000, "page": page})
        return f"{self.base_url}{ERCOT_ENDPOINTS[self.market]}?{query}"

    async def fetch(self, now: datetime) -> Sequence[PriceInterval]:
        headers = headers_from_env(self.headers_env)
        token = os.environ.get(self.token_env)
        if not token:
            raise FeedError(f"environment variable {self.token_env} (ERCOT bearer token) is not set", "error")
        headers["Authorization"] = f"Bearer {token}"
        fields: list | None = None
        rows: list = []
        page, pages = 1, 1
        while page <= min(pages, self.max_pages):
            status, body = await http_get(self.query_url(now, page), headers, timeout=self.timeout)
            if status != 200:
                raise FeedError(f"ERCOT: HTTP {status}", "error")
            doc = _load_json(body, "ERCOT")
            if not isinstance(doc, Mapping):
                raise FeedError("ERCOT: answer is not a JSON object", "malformed")
            fields = fields or doc.get("fields")
            rows.extend(doc.get("data") or [])
            meta = doc.get("_meta")
            pages = int(meta.get("totalPages", 1)) if isinstance(meta, Mapping) else 1
            page += 1
        intervals = parse_ercot_spp({"fields": fields, "data": rows},
                                    settlement_point=self.settlement_point)
        if self.market == "rt":
            intervals = carry_latest(intervals, now, RT_INTERVAL)
        if not intervals:
            raise FeedError(f"ERCOT: no price for {self.settlement_point}", "missing")
        return intervals


def carry_latest(intervals: list[PriceInterval], now: datetime, step: timedelta,
                 max_age: timedelta = HOUR) -> list[PriceInterval]:
    """Add the latest known price as the estimate for the `step` interval covering `now`
    (published now), unless a known price covers now already or the latest is older than
    `max_age`. Unknown (not yet settled) intervals from now on are dropped."""
    known = [iv for iv in intervals if iv.known_at(now)]
    if not known or price_at(known, now) is not None or now - known[-1].end > max_age:
        return known
    start = floor_time(now, step)
    latest = known[-1]
    estimate = PriceInterval(max(start, latest.end), start + step, latest.price, latest.currency,
                             step, published=now)
    return merge_intervals(known, [estimate])


# ---------------------------------------------------------------------------
# gridstatus (optional extra)

GRIDSTATUS_PRICE_COLUMNS = ("LMP", "SPP", "Price")


def intervals_from_records(records: Iterable[Mapping], *, location: str | None = None,
                           currency: str = "USD", published: datetime | None = None) -> list[PriceInterval]:
    """gridstatus rows ({"Interval Start", "Interval End", "Location", "LMP"|"SPP"}, tz-aware
    timestamps) -> intervals. Takes plain mappings so it runs without pandas."""
    out = []
    for rec in records:
        if location is not None and "Location" in rec and rec["Location"] != location:
            continue
        column = next((c for c in GRIDSTATUS_PRICE_COLUMNS if c in rec), None)
        if column is None:
            raise FeedError(f"gridstatus: no price column in {sorted(rec)}", "malformed")
        price = parse_price_value(rec[column])
        if price is None:
            continue
        start, end = (_aware_utc(rec.get(k), k) for k in ("Interval Start", "Interval End"))
        out.append(PriceInterval(start, end, price, currency, end - start,
                                 published if published is not None else start))
    return merge_intervals(out)


def _aware_utc(value: object, what: str) -> datetime:
    to_py = getattr(value, "to_pydatetime", None)     # pandas.Timestamp
    value = to_py() if to_py is not None else value
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise FeedError(f"gridstatus: {what} is not a tz-aware time: {value!r}", "malformed")
    return value.astimezone(UTC)


class GridstatusFeed:
    """Prices through the `gridstatus` package (pip install 'gridstatus'): e.g.
    iso="caiso", location="TH_NP15_GEN-APND", market="DAY_AHEAD_HOURLY", method "get_lmp"
    (ERCOT: method="get_spp"). Its calls block, so they run in a thread. Day-ahead
    markets get published = now (fetched now); others are taken as known at start.
    Not tested against the network here: only its row conversion is."""

    def __init__(self, iso: str, location: str, market: str = "DAY_AHEAD_HOURLY", *,
                 method: str = "get_lmp") -> None:
        try:
            import gridstatus  # noqa: F401  (optional extra)
        except ImportError as exc:
            raise ValueError("feed kind 'gridstatus' needs the optional package: "
                             "pip install 'gridminer[gridstatus]' (or pip install gridstatus)") from exc
        self.iso = iso
        self.location = location
        self.market = market
        self.method = method

    def _fetch_blocking(self, now: datetime) -> list[dict]:
        import gridstatus
        client = gridstatus.get_iso(self.iso.lower())()
        df = getattr(client, self.method)(date="today", market=self.market, locations=[self.location])
        to_dicts = getattr(df, "to_dicts", None)          # polars in recent gridstatus
        return to_dicts() if to_dicts is not None else df.to_dict("records")

    async def fetch(self, now: datetime) -> Sequence[PriceInterval]:
        try:
            records = await asyncio.to_thread(self._fetch_blocking, now)
        except FeedError:
            raise
        except Exception as exc:   # gridstatus raises requests/pandas/its own errors
            raise FeedError(f"gridstatus {self.iso} {self.market}: {exc}", "unreachable") from exc
        intervals = intervals_from_records(records, location=self.location,
                                           published=now if "DAY_AHEAD" in self.market.upper() else None)
        if not intervals:
            raise FeedError(f"gridstatus: no price for {self.location}", "missing")
        return intervals


# ---------------------------------------------------------------------------
# Building a feed from a site's [site.feed] table

FEED_KEYS: dict[str, tuple[set[str], set[str]]] = {
    # kind: (required keys, optional keys)
    "static": ({"price"}, {"currency", "resolution_minutes"}),
    "csv": ({"path"}, {"timezone", "market_timezone", "publication", "published_local", "replay_from",
                       "currency"}),
    "http_json": ({"url", "price_path"}, {"start_path", "end_path", "items_path", "currency",
                                          "resolution_minutes", "headers_env", "timeout_s", "timezone"}),
    "entsoe": ({"area"}, {"token_env", "base_url", "timeout_s", "published_local"}),
    "ercot": ({"settlement_point"}, {"market", "subscription_key_env", "token_env", "base_url",
                                     "timeout_s"}),
    "gridstatus": ({"iso", "location"}, {"market", "method"}),
}
# The currency each kind delivers when the table does not say.
_FIXED_CURRENCY = {"entsoe": "EUR", "ercot": "USD", "gridstatus": "USD"}


def _check_keys(kind: str, table: Mapping) -> None:
    required, optional = FEED_KEYS[kind]
    keys = set(table) - {"kind"}
    missing = sorted(required - keys)
    if missing:
        raise ValueError(f"[site.feed] kind {kind!r}: missing key {missing[0]!r}")
    unknown = sorted(keys - required - optional)
    if unknown:
        raise ValueError(f"[site.feed] kind {kind!r}: unknown key {unknown[0]!r} "
                         f"(allowed: {', '.join(sorted(required | optional))})")


def _number(table: Mapping, key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"[site.feed] {key} must be a number, got {value!r}")
    return float(value)


def _string(table: Mapping, key: str, default: str | None = None) -> str | None:
    value = table.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"[site.feed] {key} must be a string, got {value!r}")
    return value


def _replay_from(value: object) -> datetime | None:
    if value is None:
        return None
    try:
        return utc_datetime(value)
    except ValueError as exc:
        raise ValueError(f"[site.feed] replay_from: {exc}") from exc


def csv_market_timezone(table: Mapping, site: SiteSpec) -> str | None:
    """The market zone of a csv feed's day-ahead publication times: the table's
    `market_timezone`, else the site's `timezone` unless that is UTC (the default, which
    names no market); None leaves the choice to load_price_csv (the file's local clock,
    or an error for a UTC file)."""
    given = _string(table, "market_timezone")
    if given is not None:
        return given
    return None if site.timezone.upper() == "UTC" else site.timezone


def make_feed(table: Mapping, *, base_dir: Path, site: SiteSpec) -> PriceFeed:
    """A feed from a [site.feed] table: `kind` plus that kind's keys (FEED_KEYS). Wrong
    or missing keys raise ValueError naming the key; so does a feed whose currency is not
    the site's (the site's usd_per_unit converts one currency only)."""
    kind = table.get("kind")
    if kind not in FEED_KEYS:
        raise ValueError(f"[site.feed] kind must be one of {sorted(FEED_KEYS)}, got {kind!r}")
    _check_keys(kind, table)
    currency = _string(table, "currency") or _FIXED_CURRENCY.get(kind, site.currency)
    if kind != "csv" and currency.upper() != site.currency.upper():
        raise ValueError(f"site {site.name!r}: feed prices are in {currency}, the site's currency "
                         f"is {site.currency}; set currency (and usd_per_unit) on the site")
    timeout = _number(table, "timeout_s", DEFAULT_TIMEOUT_S)
    if kind == "static":
        return StaticFeed(_number(table, "price", 0.0), currency,
                          resolution=timedelta(minutes=_number(table, "resolution_minutes", 60)))
    if kind == "csv":
        path = Path(_string(table, "path") or "")
        path = path if path.is_absolute() else Path(base_dir) / path
        if not path.is_file():
            raise ValueError(f"[site.feed] path: no price file {path}")
        market = market_of_file(path)     # a file named for its market needs no zone keys
        intervals = load_price_csv(path, timezone=_string(table, "timezone") or (market and market.clock),
                                   currency=_string(table, "currency") or site.currency,
                                   publication=_string(table, "publication", "realtime") or "realtime",
                                   published_local=_string(table, "published_local"),
                                   market_timezone=csv_market_timezone(table, site) or (market and market.zone))
        return ReplayFeed(intervals, replay_from=_replay_from(table.get("replay_from")))
    if kind == "http_json":
        headers_env = table.get("headers_env", {})
        if not isinstance(headers_env, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers_env.items()):
            raise ValueError("[site.feed] headers_env must be a table of header = \"ENV_VAR\"")
        return HTTPJSONFeed(_string(table, "url") or "", price_path=_string(table, "price_path") or "",
                            start_path=_string(table, "start_path"), end_path=_string(table, "end_path"),
                            items_path=_string(table, "items_path"), currency=currency,
                            resolution=timedelta(minutes=_number(table, "resolution_minutes", 60)),
                            headers_env=headers_env, timeout=timeout,
                            timezone=_string(table, "timezone", "UTC") or "UTC")
    if kind == "entsoe":
        return EntsoeFeed(_string(table, "area") or "", token_env=_string(table, "token_env", "ENTSOE_TOKEN"),
                          base_url=_string(table, "base_url", "https://web-api.tp.entsoe.eu/api"),
                          timeout=timeout, published_local=_string(table, "published_local"))
    if kind == "ercot":
        return ErcotFeed(_string(table, "settlement_point") or "", market=_string(table, "market", "dam"),
                         subscription_key_env=_string(table, "subscription_key_env", "ERCOT_SUBSCRIPTION_KEY"),
                         token_env=_string(table, "token_env", "ERCOT_API_TOKEN"),
                         base_url=_string(table, "base_url", ERCOT_BASE_URL), timeout=timeout)
    return GridstatusFeed(_string(table, "iso") or "", _string(table, "location") or "",
                          _string(table, "market", "DAY_AHEAD_HOURLY") or "DAY_AHEAD_HOURLY",
                          method=_string(table, "method", "get_lmp") or "get_lmp")


def feed_environment(table: Mapping) -> list[tuple[str, str]]:
    """The environment variables a [site.feed] table needs at fetch time: (name, what for)."""
    kind = table.get("kind")
    if kind == "http_json":
        headers = table.get("headers_env") or {}
        return [(var, f"header {h}") for h, var in headers.items() if isinstance(var, str)] \
            if isinstance(headers, Mapping) else []
    if kind == "entsoe":
        return [(_string(table, "token_env", "ENTSOE_TOKEN") or "ENTSOE_TOKEN", "ENTSO-E token")]
    if kind == "ercot":
        return [(_string(table, "subscription_key_env", "ERCOT_SUBSCRIPTION_KEY") or "ERCOT_SUBSCRIPTION_KEY",
                 "ERCOT subscription key"),
                (_string(table, "token_env", "ERCOT_API_TOKEN") or "ERCOT_API_TOKEN", "ERCOT bearer token")]
    return []


def feed_for_site(site: SiteSpec, base_dir: Path) -> PriceFeed:
    """The feed of a site as the sites loader filled `site.feed` (a [site.feed] table, or
    {"kind": "csv", "path": <prices>, ...} for a site that only names a price file)."""
    if not site.feed:
        raise ValueError(f"site {site.name!r}: no price feed ([site.feed] table or prices = \"file.csv\")")
    return make_feed(site.feed, base_dir=base_dir, site=site)


# Feeds whose fetch is a request to a market's API: sites whose feeds make the same request
# (several sites in one market or zone) share one object, fetched once per step.
SHAREABLE_FEEDS = (HTTPJSONFeed, EntsoeFeed, ErcotFeed)


def feeds_for_sites(sites: Iterable[SiteSpec], base_dir: Path) -> dict[str, PriceFeed]:
    """Each site's feed (feed_for_site); sites whose network feeds have the same kind and
    settings get the same object."""
    feeds: dict[str, PriceFeed] = {}
    built: dict[tuple[str, str], PriceFeed] = {}
    for site in sites:
        feed = feed_for_site(site, base_dir)
        if isinstance(feed, SHAREABLE_FEEDS):
            key = (type(feed).__name__, repr(sorted(vars(feed).items())))
            feed = built.setdefault(key, feed)
        feeds[site.name] = feed
    return feeds
