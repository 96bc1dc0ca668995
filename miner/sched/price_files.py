"""Price files for replay and back-tests, and the interval helpers every feed shares.

A file becomes sorted, non-overlapping `PriceInterval`s: [start, end) in UTC, the price
per MWh in the market's currency, the resolution and when the price became known
(`published`), so a policy never uses a price before it was published. Sits below
`feeds` in the import order: the live feeds reuse its time, price-cell and interval
helpers.

Two file formats are read (auto-detected from the header row):

* green-dcc: ``Datetime,Price (USD/MWh)`` (or EUR); the datetime is the interval start,
  tz-aware (ERCOT: ``2023-01-01 00:00:00-06:00``) or naive. Naive files need the clock
  they were written in: ``"UTC"`` (CAISO, PJM, NYISO) or the local zone (EU files).
* ENTSO-E Transparency Platform export: ``"MTU (CET/CEST)","Day-ahead Price [EUR/MWh]",
  "Currency","BZN|SE3"``, rows ``"01.01.2024 00:00 - 01.01.2024 01:00","29.56","EUR"``
  in wall-clock time; the autumn repeated hour appears twice (summer time first).
"""

from __future__ import annotations

import bisect
import csv
import gzip
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import Iterable, Sequence
from zoneinfo import ZoneInfo

import numpy as np

from miner.sched.model import UTC, PriceInterval

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)

# Price cells that mean "no price" in the files we read (ENTSO-E: "n/e" = not
# available; "" on the non-existent spring hour; "-" in some exports).
MISSING_PRICE_CELLS = frozenset({"", "n/e", "-", "n/a", "nan", "NaN", "null"})

# When day-ahead results are public: local time in the market zone on the day before
# delivery. Chosen at or after the real publication so a back-test cannot look ahead:
# - SDAC (EU coupled day-ahead, what ENTSO-E A44 and the EU files hold): order books
#   close 12:00 CET, results are published from about 12:45 CET -> 13:00 for Europe/*.
# - ERCOT DAM: offers close 10:00, results posted by 13:30 Central -> 13:30.
# - CAISO DAM results ~13:00 Pacific, NYISO ~11:00 Eastern, PJM DA ~13:30 Eastern:
#   13:30 covers every US market we know, so it is the default for other zones.
EUROPE_DAY_AHEAD_PUBLISHED_LOCAL = "13:00"
DEFAULT_DAY_AHEAD_PUBLISHED_LOCAL = "13:30"

# Markets known by their file name (green-dcc `<REGION>_<YEAR>.csv`, ENTSO-E exports
# `SE4_<YEAR>_entsoe.csv`; gzipped or not): the first "_"-separated part of the name ->
# (clock of naive timestamps, None when the file states it: tz-aware rows or an ENTSO-E
# "MTU (CET/CEST)" header; the market zone, whose wall clock day-ahead results are
# published in; how prices become known). PJM's file is its real-time market, replayed
# as "realtime" (see sites.py); the others are day-ahead markets.
KNOWN_MARKET_FILES: dict[str, tuple[str | None, str, str]] = {
    "US-TEX-ERCO": (None, "America/Chicago", "day_ahead"),
    "US-CAL-CISO": ("UTC", "America/Los_Angeles", "day_ahead"),
    "US-MIDA-PJM": ("UTC", "America/New_York", "realtime"),
    "US-NY-NYIS": ("UTC", "America/New_York", "day_ahead"),
    "DE-LU": ("Europe/Berlin", "Europe/Berlin", "day_ahead"),
    "FR": ("Europe/Paris", "Europe/Paris", "day_ahead"),
    "NL": ("Europe/Amsterdam", "Europe/Amsterdam", "day_ahead"),
    "BE": ("Europe/Brussels", "Europe/Brussels", "day_ahead"),
    "ES": ("Europe/Madrid", "Europe/Madrid", "day_ahead"),
    **{f"SE{n}": (None, "Europe/Stockholm", "day_ahead") for n in range(1, 5)},
}


@dataclass(frozen=True)
class MarketFile:
    """What a known price file's name tells: see KNOWN_MARKET_FILES."""

    market: str
    clock: str | None
    zone: str
    publication: str


def market_of_file(name: str | Path) -> MarketFile | None:
    """The market a price file's name names ("US-CAL-CISO_2023.csv.gz" -> CAISO), or None."""
    stem = Path(name).name
    for suffix in (".gz", ".csv"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    known = KNOWN_MARKET_FILES.get(stem.split("_")[0].upper())
    if known is None:
        return None
    return MarketFile(stem.split("_")[0].upper(), *known)


# Where a file named for its market can be fetched (the example's sources; only ERCOT,
# CAISO and NYISO ship with gridminer, the others' terms restrict redistribution).
GREEN_DCC_REPO = "github.com/HewlettPackard/green-dcc"
GREEN_DCC_PATH = "data/electricity_prices/processed/{market}/{year}/{market}_electricity_prices_{year}.csv"


def source_of_file(name: str | Path) -> str | None:
    """Where to fetch the price file a name names ("DE-LU_2023.csv" -> the green-dcc file
    it is a renamed copy of), or None for a name gridminer does not know."""
    market = market_of_file(name)
    if market is None:
        return None
    year = next((part[:4] for part in Path(name).name.split("_")[1:] if part[:4].isdigit()), "<YEAR>")
    if market.market.startswith("SE"):
        return (f"the ENTSO-E Transparency Platform's CSV export of Day-ahead Prices, "
                f"BZN|{market.market}, {year} (transparency.entsoe.eu), renamed {Path(name).name}")
    return (f"{GREEN_DCC_REPO}, {GREEN_DCC_PATH.format(market=market.market, year=year)} "
            f"(a \"processed\" file, not \"standardized\"), renamed {Path(name).name}")


def open_price_text(path: Path):
    """A price file opened as text; a .gz file is decompressed on the fly."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", newline="", encoding="utf-8-sig")
    return path.open(newline="", encoding="utf-8-sig")


# ENTSO-E export header "MTU (<clock>)" -> a zone with that clock's rules.
_ENTSOE_CLOCKS = {
    "CET/CEST": "Europe/Brussels",
    "EET/EEST": "Europe/Helsinki",
    "WET/WEST": "Europe/Lisbon",
    "GMT/BST": "Europe/London",
    "UTC": "UTC",
}

_CURRENCY_IN_HEADER = re.compile(r"[\[(]\s*([A-Z]{3})\s*/\s*MWh\s*[\])]")
# How a file's prices became known: "realtime" at the interval start (the usual reading of
# a real-time hourly series: the operator sees the running price), "settled" at its end
# (strict: an hourly real-time average is final only when the hour is over), "day_ahead"
# the day before delivery.
_PUBLICATIONS = ("realtime", "settled", "day_ahead")


# ---------------------------------------------------------------------------
# Small time helpers


def zone_named(name: str) -> tzinfo:
    """A tzinfo for an IANA name ("UTC" included); ValueError names the bad zone."""
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def localize(naive: datetime, zone: tzinfo, *, fold: int = 0) -> datetime | None:
    """Attach `zone` to a wall-clock time; None when that time does not exist there
    (spring forward). `fold` picks the first (0) or second (1) of a repeated time."""
    aware = naive.replace(tzinfo=zone, fold=fold)
    if zone is UTC:
        return aware
    back = aware.astimezone(UTC).astimezone(zone)
    if back.replace(tzinfo=None) != naive:
        return None
    return aware


def utc_datetime(value: object, zone: tzinfo = UTC, *, allow_date: bool = True) -> datetime:
    """A configured time (a datetime, an ISO string, or with `allow_date` a date meaning
    its midnight) in UTC; a naive one is wall-clock time in `zone`. ValueError says why."""
    if allow_date and isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time(0))
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"not an ISO date-time: {value!r}") from exc
    if not isinstance(value, datetime):
        wanted = "a date or date-time" if allow_date else "a date-time"
        raise ValueError(f"expected {wanted}, got {value!r}")
    return (value if value.tzinfo else value.replace(tzinfo=zone)).astimezone(UTC)


def is_ambiguous(naive: datetime, zone: tzinfo) -> bool:
    """True for a wall-clock time that occurs twice (autumn fall back)."""
    if zone is UTC:
        return False
    return (naive.replace(tzinfo=zone, fold=0).utcoffset()
            != naive.replace(tzinfo=zone, fold=1).utcoffset())


class WallClock:
    """Wall-clock rows of a file -> UTC, DST aware. A repeated autumn time is taken as
    summer time the first time it is seen and winter time the second; a time that does
    not exist (spring forward) gives None. Days without a transition hit a cache (one
    offset per day), which makes a year of rows ~3x faster than zoneinfo per row."""

    def __init__(self, zone: tzinfo) -> None:
        self.zone = zone
        self._day_offset: dict[date, timedelta | None] = {}
        self._seen_ambiguous: set[datetime] = set()

    def _offset_of_day(self, day: date) -> timedelta | None:
        """The day's single UTC offset, None when a transition falls on it."""
        if day not in self._day_offset:
            first = datetime.combine(day, time(0), tzinfo=self.zone)
            last = datetime.combine(day + timedelta(days=1), time(0), tzinfo=self.zone)
            offsets = {first.utcoffset(), last.utcoffset(),
                       first.replace(fold=1).utcoffset(), last.replace(fold=1).utcoffset()}
            self._day_offset[day] = offsets.pop() if len(offsets) == 1 else None
        return self._day_offset[day]

    def to_utc(self, naive: datetime) -> datetime | None:
        if self.zone is UTC:
            return naive.replace(tzinfo=UTC)
        offset = self._offset_of_day(naive.date())
        if offset is not None:
            return (naive - offset).replace(tzinfo=UTC)
        fold = 0
        if is_ambiguous(naive, self.zone):
            fold = 1 if naive in self._seen_ambiguous else 0
            self._seen_ambiguous.add(naive)
        aware = localize(naive, self.zone, fold=fold)
        return None if aware is None else aware.astimezone(UTC)


def parse_local_hhmm(text: str) -> time:
    """"13:30" -> time(13, 30); ValueError otherwise."""
    try:
        hh, mm = text.strip().split(":")
        return time(int(hh), int(mm))
    except ValueError as exc:
        raise ValueError(f"expected a local time HH:MM, got {text!r}") from exc


def day_ahead_published_local(zone_name: str | None, published_local: str | None) -> time:
    """The local publication time of day-ahead results for a market zone."""
    if published_local is not None:
        return parse_local_hhmm(published_local)
    if zone_name and zone_name.startswith("Europe/"):
        return parse_local_hhmm(EUROPE_DAY_AHEAD_PUBLISHED_LOCAL)
    return parse_local_hhmm(DEFAULT_DAY_AHEAD_PUBLISHED_LOCAL)


class DayAheadClock:
    """published(start) = `at` local time in `zone` on the day before the delivery day
    of `start` (the day in `zone`). Cached per day: files hold 24-96 rows per day."""

    def __init__(self, zone: tzinfo, at: time) -> None:
        self.zone = zone
        self.at = at
        self._by_day: dict[date, datetime] = {}

    def published(self, start_utc: datetime) -> datetime:
        day = start_utc.astimezone(self.zone).date()
        hit = self._by_day.get(day)
        if hit is None:
            local = datetime.combine(day - timedelta(days=1), self.at, tzinfo=self.zone)
            hit = self._by_day[day] = local.astimezone(UTC)
        return hit


def parse_price_cell(text: str) -> float | None:
    """A price cell -> float, None when the cell means "no price" (never 0.0)."""
    text = text.strip()
    if text in MISSING_PRICE_CELLS:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------
# Interval sequences


def merge_intervals(*series: Sequence[PriceInterval]) -> list[PriceInterval]:
    """Sort and de-duplicate: where intervals overlap, the one from the earlier series wins
    (within a series, the earlier start), whatever their starts; the result has no
    overlaps. So merge_intervals(newest_answer, what_we_had) lets a revised or re-anchored
    price replace everything it overlaps."""
    kept: list[PriceInterval] = []     # sorted by start, non-overlapping
    starts: list[datetime] = []
    for s in series:
        for iv in sorted(s, key=lambda iv: iv.start):
            i = bisect.bisect_right(starts, iv.start)
            if (i > 0 and kept[i - 1].end > iv.start) or (i < len(kept) and kept[i].start < iv.end):
                continue
            kept.insert(i, iv)
            starts.insert(i, iv.start)
    return kept


def price_at(intervals: Sequence[PriceInterval], now: datetime) -> PriceInterval | None:
    """The interval covering `now` that is known at `now` (sorted, non-overlapping input)."""
    i = bisect.bisect_right(intervals, now, key=lambda iv: iv.start) - 1
    if i < 0:
        return None
    iv = intervals[i]
    if iv.end > now and iv.known_at(now):
        return iv
    return None


def hourly_array(intervals: Sequence[PriceInterval], start: datetime,
                 hours: int) -> tuple[np.ndarray, np.ndarray]:
    """Prices on UTC hours [start, start + hours): (prices float64 with NaN where no price,
    published float64 Unix seconds with NaN where no price). Sub-hourly intervals are
    averaged over the hour, weighted by the time they cover; the hour's price is known
    when its last part is, so `published` is the latest of its parts."""
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    t0 = start.timestamp()
    if t0 % 3600:
        raise ValueError(f"start must be on a whole UTC hour, got {start.isoformat()}")
    weighted = np.zeros(hours)
    covered = np.zeros(hours)
    published = np.full(hours, -np.inf)
    for iv in intervals:
        a = iv.start.timestamp() - t0
        b = iv.end.timestamp() - t0
        first = max(int(a // 3600), 0)
        last = min(int(math.ceil(b / 3600)), hours)
        pub = (iv.published if iv.published is not None else iv.start).timestamp()
        for h in range(first, last):
            seconds = min(b, (h + 1) * 3600.0) - max(a, h * 3600.0)
            if seconds <= 0:
                continue
            weighted[h] += iv.price * seconds
            covered[h] += seconds
            if pub > published[h]:
                published[h] = pub
    have = covered > 0
    prices = np.full(hours, np.nan)
    prices[have] = weighted[have] / covered[have]
    published[~have] = np.nan
    return prices, published


# ---------------------------------------------------------------------------
# Price files


def _with_publication(rows: Iterable[tuple[datetime, datetime, float]], *, currency: str,
                      publication: str, clock: DayAheadClock | None) -> list[PriceInterval]:
    out = []
    for start, end, price in rows:
        if publication == "realtime":
            published = start
        elif publication == "settled":
            published = end
        else:
            assert clock is not None
            published = clock.published(start)
        out.append(PriceInterval(start=start, end=end, price=price, currency=currency,
                                 resolution=end - start, published=published))
    return out


def _check_publication(publication: str) -> None:
    if publication not in _PUBLICATIONS:
        raise ValueError(f"publication must be one of {_PUBLICATIONS}, got {publication!r}")


def _currency_from_header(cell: str) -> str | None:
    m = _CURRENCY_IN_HEADER.search(cell)
    return m.group(1) if m else None


def _pick_currency(from_header: str | None, given: str | None, path: Path) -> str:
    if from_header and given and from_header != given.upper():
        raise ValueError(f"{path}: file prices are in {from_header}, configured currency is {given}")
    cur = from_header or (given.upper() if given else None)
    if cur is None:
        raise ValueError(f"{path}: no currency in the header; give currency=")
    return cur


def _day_ahead_clock(path: Path, *, market_timezone: str | None, file_zone: str | None,
                     published_local: str | None, zone_key: str = "market_timezone") -> DayAheadClock:
    """The publication clock of day-ahead prices: `published_local` on the wall clock of the
    market zone. Without `market_timezone` the file's clock stands for the market only when
    it is a local zone: a UTC clock (naive-UTC CAISO/PJM/NYISO files, tz-aware rows read
    without a zone) says nothing about where 13:00 is, and guessing UTC would stamp US
    prices up to 8 h before they were published, so that is refused."""
    zone_name = market_timezone
    if zone_name is None and file_zone is not None and file_zone.upper() != "UTC":
        zone_name = file_zone
    if zone_name is None:
        raise ValueError(f"{path}: day-ahead publication needs {zone_key} = \"ZONE\" (the zone whose "
                         "wall clock the publication time is in, e.g. 'America/Los_Angeles' for "
                         "CAISO): the file's clock is UTC or a row offset, not a market's")
    return DayAheadClock(zone_named(zone_name), day_ahead_published_local(zone_name, published_local))


def _row_spacing(starts: Sequence[datetime]) -> timedelta:
    """The most common gap between consecutive starts (gaps and DST do not fool it);
    one hour for a file with a single row (both formats are hourly by default)."""
    steps = Counter(b - a for a, b in zip(starts, starts[1:]) if b > a)
    return steps.most_common(1)[0][0] if steps else HOUR


def load_price_csv(path: str | Path, *, timezone: str | None = None, currency: str | None = None,
                   publication: str = "realtime", published_local: str | None = None,
                   market_timezone: str | None = None, clock_key: str = "timezone",
                   zone_key: str = "market_timezone") -> list[PriceInterval]:
    """Read a green-dcc or ENTSO-E price file into sorted, non-overlapping UTC intervals.

    `timezone`: the clock of the file's timestamps (required for naive green-dcc files;
    the ENTSO-E header names its clock). `market_timezone`: the zone whose wall clock
    day-ahead results are published in (the delivery day and `published_local` are read
    there). It defaults to the file's clock when that is a local zone (EU files, ENTSO-E
    exports); a day-ahead file on a UTC clock (naive-UTC CAISO/PJM/NYISO, tz-aware rows
    without `timezone`) needs it, else ValueError: a file's clock is not its market's.
    `publication`: "realtime" (known at start), "settled" (known at end) or "day_ahead"
    (known on the day before delivery at `published_local`, see day_ahead_published_local).
    Missing prices ("", "n/e", "-", text) are skipped; negative prices are kept.
    `clock_key`, `zone_key`: the caller's names of `timezone` and `market_timezone`, for
    the errors that ask for them (a sites file calls them price_timezone and timezone).
    A ".gz" file is read through gzip."""
    keys = {"clock_key": clock_key, "zone_key": zone_key}
    path = Path(path)
    _check_publication(publication)
    with open_price_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path}: empty file")
        if header[0].strip().startswith("MTU"):
            return _load_entsoe_rows(path, header, reader, timezone=timezone, currency=currency,
                                     publication=publication, published_local=published_local,
                                     market_timezone=market_timezone, **keys)
        if header[0].strip().lower() == "datetime" and len(header) >= 2:
            return _load_green_dcc_rows(path, header, reader, timezone=timezone, currency=currency,
                                        publication=publication, published_local=published_local,
                                        market_timezone=market_timezone, **keys)
    raise ValueError(f"{path}: unknown price file format (header {header!r}); expected "
                     "'Datetime,Price (USD/MWh)' or an ENTSO-E export with 'MTU (...)'")


def _load_green_dcc_rows(path: Path, header: list[str], reader: Iterable[list[str]], *,
                         timezone: str | None, currency: str | None, publication: str,
                         published_local: str | None,
                         market_timezone: str | None, clock_key: str,
                         zone_key: str) -> list[PriceInterval]:
    cur = _pick_currency(_currency_from_header(header[1]), currency, path)
    zone = zone_named(timezone) if timezone else None
    starts: list[datetime] = []
    prices: list[float] = []
    wall = WallClock(zone) if zone is not None else None
    all_starts: list[datetime] = []   # rows without a price too: they tell the spacing
    skipped = 0
    for lineno, row in enumerate(reader, start=2):
        if not row or not row[0].strip():
            continue
        try:
            stamp = datetime.fromisoformat(row[0].strip())
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: bad timestamp {row[0]!r}") from exc
        if stamp.tzinfo is None:
            if wall is None:
                raise ValueError(f"{path}: naive timestamps ({row[0]!r}) and a file name that names no "
                                 f"known market: give {clock_key} = \"ZONE\", the clock the file "
                                 "was written in ('UTC' for CAISO/PJM/NYISO files, the local zone "
                                 "for EU files)")
            start = wall.to_utc(stamp)  # before the price test: see _load_entsoe_rows
        else:
            start = stamp.astimezone(UTC)
        if start is not None:
            all_starts.append(start)
        price = parse_price_cell(row[1]) if len(row) > 1 else None
        if price is None:
            skipped += 1
            continue
        if start is None:
            log.info("%s:%d: %s does not exist in %s (spring forward); row dropped",
                     path.name, lineno, stamp, timezone)
            continue
        starts.append(start)
        prices.append(price)
    if skipped:
        log.info("%s: %d rows without a price skipped", path.name, skipped)
    step = _row_spacing(sorted(all_starts))
    clock = None
    if publication == "day_ahead":
        clock = _day_ahead_clock(path, market_timezone=market_timezone, file_zone=timezone,
                                 published_local=published_local, zone_key=zone_key)
    rows = ((s, s + step, p) for s, p in zip(starts, prices))
    intervals = _with_publication(rows, currency=cur, publication=publication, clock=clock)
    return merge_intervals(intervals)


_MTU = re.compile(r"^\s*(\d{2}\.\d{2}\.\d{4} \d{2}:\d{2})\s*-\s*(\d{2}\.\d{2}\.\d{4} \d{2}:\d{2})")


def _parse_entsoe_stamp(text: str) -> datetime:
    # "29.10.2023 02:00": fixed layout, sliced (strptime is ~10x slower on 9k rows).
    return datetime(int(text[6:10]), int(text[3:5]), int(text[0:2]), int(text[11:13]), int(text[14:16]))


def _load_entsoe_rows(path: Path, header: list[str], reader: Iterable[list[str]], *,
                      timezone: str | None, currency: str | None, publication: str,
                      published_local: str | None,
                      market_timezone: str | None, clock_key: str,
                      zone_key: str) -> list[PriceInterval]:
    m = re.search(r"MTU\s*\(([^)]*)\)", header[0])
    clock_name = m.group(1).strip() if m else ""
    zone_name = timezone or _ENTSOE_CLOCKS.get(clock_name)
    if zone_name is None:
        raise ValueError(f"{path}: unknown MTU clock {clock_name!r}; give {clock_key} = \"ZONE\"")
    zone = zone_named(zone_name)
    cur = _pick_currency(_currency_from_header(header[1]) if len(header) > 1 else None, currency, path)
    wall = WallClock(zone)
    rows: list[tuple[datetime, datetime, float]] = []
    skipped = 0
    for lineno, row in enumerate(reader, start=2):
        if not row or not row[0].strip():
            continue
        mtu = _MTU.match(row[0])
        if mtu is None:
            raise ValueError(f"{path}:{lineno}: bad MTU {row[0]!r}")
        start_local = _parse_entsoe_stamp(mtu.group(1))
        end_local = _parse_entsoe_stamp(mtu.group(2))
        # Convert before looking at the price: an autumn repeated hour without a price
        # must still count as seen, so its twin gets the right fold.
        start = wall.to_utc(start_local)
        price = parse_price_cell(row[1]) if len(row) > 1 else None
        if price is None:
            skipped += 1
            continue
        if start is None:
            log.info("%s:%d: %s does not exist in %s; row dropped", path.name, lineno,
                     start_local, zone_name)
            continue
        # The MTU's wall-clock length, not end - start in UTC: the first repeated autumn
        # hour reads "02:00 - 03:00" but ends at the second 02:00.
        rows.append((start, start + (end_local - start_local), price))
    if skipped:
        log.info("%s: %d rows without a price skipped", path.name, skipped)
    clock = None
    if publication == "day_ahead":
        clock = _day_ahead_clock(path, market_timezone=market_timezone, file_zone=zone_name,
                                 published_local=published_local, zone_key=zone_key)
    return merge_intervals(_with_publication(rows, currency=cur, publication=publication, clock=clock))
