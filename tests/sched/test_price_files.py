"""Price files: the loader on real excerpts (DST, gaps, "n/e", overlaps, negative
prices), publication times (no look-ahead), property round trips of both file formats,
and the interval helpers merge_intervals, price_at and hourly_array."""

from __future__ import annotations

import logging
import math
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miner.sched.model import UTC, PriceInterval
from miner.sched.price_files import hourly_array, load_price_csv, merge_intervals, price_at

DATA = Path(__file__).resolve().parents[1] / "data" / "prices"
H = timedelta(hours=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def rows(intervals):
    """(start, end, price) triples, the comparable part of intervals."""
    return [(iv.start, iv.end, iv.price) for iv in intervals]


# ---------------------------------------------------------------------------
# ENTSO-E export (Sweden SE3)


def test_entsoe_spring_dst_empty_row_is_skipped_and_hours_stay_contiguous():
    ivs = load_price_csv(DATA / "SE3_2023_entsoe_synthetic.csv")
    spring = [r for r in rows(ivs) if r[0] < utc(2023, 3, 26, 6)]
    # 25.03 22:00 CET = 21:00Z ... 26.03 01:00 CET = 00:00Z; the empty "02:00" row does
    # not exist; 03:00 CEST = 01:00Z follows without a gap.
    assert spring == [
        (utc(2023, 3, 25, 21), utc(2023, 3, 25, 22), 48.18),
        (utc(2023, 3, 25, 22), utc(2023, 3, 25, 23), 38.58),
        (utc(2023, 3, 25, 23), utc(2023, 3, 26, 0), 35.53),
        (utc(2023, 3, 26, 0), utc(2023, 3, 26, 1), 34.56),
        (utc(2023, 3, 26, 1), utc(2023, 3, 26, 2), 25.58),
        (utc(2023, 3, 26, 2), utc(2023, 3, 26, 3), 29.76),
        (utc(2023, 3, 26, 3), utc(2023, 3, 26, 4), 35.02),
        (utc(2023, 3, 26, 4), utc(2023, 3, 26, 5), 38.38),
    ]
    assert all(iv.currency == "EUR" and iv.resolution == H for iv in ivs)


def test_entsoe_autumn_repeated_hour_gives_two_prices_summer_time_first():
    ivs = load_price_csv(DATA / "SE3_2023_entsoe_synthetic.csv")
    autumn = [r for r in rows(ivs) if utc(2023, 10, 28, 20) <= r[0] < utc(2023, 10, 29, 4)]
    assert autumn == [
        (utc(2023, 10, 28, 20), utc(2023, 10, 28, 21), 40.93),
        (utc(2023, 10, 28, 21), utc(2023, 10, 28, 22), 36.24),
        (utc(2023, 10, 28, 22), utc(2023, 10, 28, 23), 37.56),
        (utc(2023, 10, 28, 23), utc(2023, 10, 29, 0), 26.25),
        (utc(2023, 10, 29, 0), utc(2023, 10, 29, 1), 27.73),   # 02:00 CEST
        (utc(2023, 10, 29, 1), utc(2023, 10, 29, 2), 21.85),   # 02:00 CET
        (utc(2023, 10, 29, 2), utc(2023, 10, 29, 3), 23.27),
        (utc(2023, 10, 29, 3), utc(2023, 10, 29, 4), 29.40),
    ]


def test_negative_prices_are_kept():
    ivs = load_price_csv(DATA / "SE3_2023_entsoe_synthetic.csv")
    # 30.04.2023 13:00 and 14:00 CEST = 11:00Z and 12:00Z
    assert price_at(ivs, utc(2023, 4, 30, 11, 30)).price == -0.76
    assert price_at(ivs, utc(2023, 4, 30, 12, 0)).price == -0.43


def test_entsoe_n_e_rows_are_missing_not_zero():
    ivs = load_price_csv(DATA / "SE3_2024_entsoe_synthetic.csv")
    assert len(ivs) == 6
    assert ivs[-1].end == utc(2024, 10, 4, 22)      # 05.10.2024 00:00 CEST, then "n/e"
    assert ivs[-1].price == 50.50
    assert 0.0 not in [iv.price for iv in ivs]
    assert price_at(ivs, utc(2024, 10, 5, 1)) is None


# ---------------------------------------------------------------------------
# green-dcc files


def test_ercot_tz_aware_rows_across_both_dst_switches():
    ivs = load_price_csv(DATA / "US-TEX-ERCO_2023_excerpt.csv")
    starts = [iv.start for iv in ivs]
    # March: 01:00-06:00 = 07:00Z then 03:00-05:00 = 08:00Z; November: 01:00 twice.
    assert utc(2023, 3, 12, 7) in starts and utc(2023, 3, 12, 8) in starts
    by_start = {iv.start: iv.price for iv in ivs}
    assert [by_start[utc(2023, 11, 5, h)] for h in (5, 6, 7, 8)] == [20.78, 22.49, 25.61, 23.39]
    # Two runs of contiguous hours, no overlap, no hole inside a run.
    runs = [[iv for iv in ivs if iv.start.month == m] for m in (3, 11)]
    for run_ in runs:
        assert all(a.end == b.start for a, b in zip(run_, run_[1:]))
    assert len(runs[0]) == 8 and len(runs[1]) == 9


def test_caiso_files_overlap_by_a_day_and_merge_without_overlap():
    a = load_price_csv(DATA / "US-CAL-CISO_2023_tail.csv", timezone="UTC")
    b = load_price_csv(DATA / "US-CAL-CISO_2024_head.csv", timezone="UTC")
    overlap = {iv.start for iv in a} & {iv.start for iv in b}
    assert len(overlap) == 24
    assert min(overlap) == utc(2023, 12, 31, 8) and max(overlap) == utc(2024, 1, 1, 7)
    merged = merge_intervals(a, b)
    assert len(merged) == len(a) + len(b) - 24
    assert all(x.end == y.start for x, y in zip(merged, merged[1:]))
    assert merged[0].start == utc(2023, 12, 31, 2) and merged[-1].end == utc(2024, 1, 1, 14)


def test_merge_keeps_the_first_series_on_overlap():
    first = [PriceInterval(utc(2024, 1, 1, 0), utc(2024, 1, 1, 1), 10.0, "USD", H)]
    second = [PriceInterval(utc(2024, 1, 1, 0), utc(2024, 1, 1, 1), 99.0, "USD", H),
              PriceInterval(utc(2024, 1, 1, 0, 30), utc(2024, 1, 1, 1, 30), 98.0, "USD", H),
              PriceInterval(utc(2024, 1, 1, 1), utc(2024, 1, 1, 2), 11.0, "USD", H)]
    assert [iv.price for iv in merge_intervals(first, second)] == [10.0, 11.0]
    assert [iv.price for iv in merge_intervals(second, first)] == [99.0, 11.0]


def test_naive_file_without_timezone_is_refused():
    with pytest.raises(ValueError, match="timezone"):
        load_price_csv(DATA / "DE-LU_2023_synthetic.csv")


def test_naive_local_file_drops_the_nonexistent_spring_row_and_keeps_the_autumn_gap(caplog):
    with caplog.at_level(logging.INFO, logger="miner.sched.price_files"):
        ivs = load_price_csv(DATA / "DE-LU_2023_synthetic.csv", timezone="Europe/Berlin")
    assert "does not exist" in caplog.text
    by_start = {iv.start: iv.price for iv in ivs}
    # Spring: 01:00 CET = 00:00Z, the "02:00" row is dropped, 03:00 CEST = 01:00Z.
    assert [by_start[utc(2023, 3, 26, h)] for h in (0, 1, 2)] == [35.73, 25.89, 30.41]
    assert sum(1 for s in by_start if s.date() == date(2023, 3, 26) and s.hour < 6) == 5
    # Autumn: 02:00 is read as summer time (00:00Z); the winter 02:00 (01:00Z) is a gap.
    assert by_start[utc(2023, 10, 29, 0)] == 0.015
    assert utc(2023, 10, 29, 1) not in by_start
    assert by_start[utc(2023, 10, 29, 2)] == -0.24
    assert by_start[utc(2023, 7, 2, 12)] == -500.0          # 14:00 CEST


def test_currency_comes_from_the_header_and_a_conflict_is_an_error():
    assert load_price_csv(DATA / "US-CAL-CISO_2024_head.csv", timezone="UTC")[0].currency == "USD"
    with pytest.raises(ValueError, match="EUR"):
        load_price_csv(DATA / "DE-LU_2023_synthetic.csv", timezone="Europe/Berlin", currency="USD")


def test_bad_files_give_clear_errors(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("when,what\n1,2\n")
    with pytest.raises(ValueError, match="unknown price file format"):
        load_price_csv(bad)
    bad.write_text("Datetime,Price (USD/MWh)\n2023-01-01 00:00:00,1.0\nyesterday,2.0\n")
    with pytest.raises(ValueError, match=r"x.csv:3: bad timestamp"):
        load_price_csv(bad, timezone="UTC")
    bad.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_price_csv(bad)
    with pytest.raises(ValueError, match="publication"):
        load_price_csv(DATA / "US-CAL-CISO_2024_head.csv", timezone="UTC", publication="tomorrow")


def test_missing_price_cells_are_skipped(tmp_path):
    f = tmp_path / "gaps.csv"
    f.write_text("Datetime,Price (USD/MWh)\n2023-01-01 00:00:00,1.5\n2023-01-01 01:00:00,\n"
                 "2023-01-01 02:00:00,-\n2023-01-01 03:00:00,n/e\n2023-01-01 04:00:00,abc\n"
                 "2023-01-01 05:00:00,-2.5\n")
    assert rows(load_price_csv(f, timezone="UTC")) == [
        (utc(2023, 1, 1, 0), utc(2023, 1, 1, 1), 1.5), (utc(2023, 1, 1, 5), utc(2023, 1, 1, 6), -2.5)]


# ---------------------------------------------------------------------------
# Publication times: no look-ahead


def test_day_ahead_publication_times():
    se3 = load_price_csv(DATA / "SE3_2023_entsoe_synthetic.csv", publication="day_ahead")
    winter_0200 = next(iv for iv in se3 if iv.start == utc(2023, 10, 29, 1))
    assert winter_0200.published == utc(2023, 10, 28, 11)       # 13:00 CEST the day before
    ercot = load_price_csv(DATA / "US-TEX-ERCO_2023_excerpt.csv", timezone="America/Chicago",
                           publication="day_ahead")
    pub = {iv.start: iv.published for iv in ercot}
    assert pub[utc(2023, 11, 5, 7)] == utc(2023, 11, 4, 18, 30)  # 13:30 CDT on the 4th
    assert pub[utc(2023, 3, 12, 8)] == utc(2023, 3, 11, 19, 30)  # 13:30 CST on the 11th
    noon = load_price_csv(DATA / "US-TEX-ERCO_2023_excerpt.csv", timezone="America/Chicago",
                          publication="day_ahead", published_local="12:00")
    assert {iv.start: iv.published for iv in noon}[utc(2023, 11, 5, 7)] == utc(2023, 11, 4, 17)


def test_day_ahead_on_a_utc_clock_is_stamped_in_the_market_zone():
    """Naive-UTC CAISO: the file's clock is not the market's. Published 13:30 Pacific (the
    default US time) on the day before the delivery day in Los Angeles, not 13:30 UTC,
    which would be 8 h early for 08:00Z..23:59Z rows."""
    ivs = load_price_csv(DATA / "US-CAL-CISO_2024_head.csv", timezone="UTC", publication="day_ahead",
                         market_timezone="America/Los_Angeles")
    pub = {iv.start: iv.published for iv in ivs}
    la = ZoneInfo("America/Los_Angeles")
    for start, published in pub.items():
        delivery_day = start.astimezone(la).date()
        expected = datetime.combine(delivery_day - timedelta(days=1), datetime.min.time(), tzinfo=la)
        assert published == (expected + timedelta(hours=13, minutes=30)).astimezone(UTC)
    assert pub[utc(2023, 12, 31, 8)] == utc(2023, 12, 30, 21, 30)    # Dec 31 00:00 PST
    assert pub[utc(2024, 1, 1, 7)] == utc(2023, 12, 30, 21, 30)      # Dec 31 23:00 PST
    assert pub[utc(2024, 1, 1, 8)] == utc(2023, 12, 31, 21, 30)      # Jan 1 00:00 PST
    # No market zone on a UTC clock: refused, not guessed as UTC (look-ahead) ...
    with pytest.raises(ValueError, match="market_timezone"):
        load_price_csv(DATA / "US-CAL-CISO_2024_head.csv", timezone="UTC", publication="day_ahead")
    # ... nor as the offsets of tz-aware rows
    with pytest.raises(ValueError, match="market_timezone"):
        load_price_csv(DATA / "US-TEX-ERCO_2023_excerpt.csv", publication="day_ahead")
    ercot = load_price_csv(DATA / "US-TEX-ERCO_2023_excerpt.csv", publication="day_ahead",
                           market_timezone="America/Chicago")
    assert {iv.start: iv.published for iv in ercot}[utc(2023, 3, 12, 8)] == utc(2023, 3, 11, 19, 30)
    # realtime and settled files need no market zone
    assert load_price_csv(DATA / "US-CAL-CISO_2024_head.csv", timezone="UTC", publication="settled")


def test_market_zone_defaults_to_a_local_file_clock_and_can_be_overridden():
    local = load_price_csv(DATA / "DE-LU_2023_synthetic.csv", timezone="Europe/Berlin", publication="day_ahead")
    same = load_price_csv(DATA / "DE-LU_2023_synthetic.csv", timezone="Europe/Berlin", publication="day_ahead",
                          market_timezone="Europe/Berlin")
    assert [iv.published for iv in local] == [iv.published for iv in same]
    # a market zone given wins over the file's clock (13:00 CET -> 13:30 Eastern)
    ny = load_price_csv(DATA / "DE-LU_2023_synthetic.csv", timezone="Europe/Berlin", publication="day_ahead",
                        market_timezone="America/New_York")
    assert {iv.start: iv.published for iv in ny}[utc(2023, 10, 29, 5)] == utc(2023, 10, 28, 17, 30)
    with pytest.raises(ValueError, match="unknown time zone"):
        load_price_csv(DATA / "DE-LU_2023_synthetic.csv", timezone="Europe/Berlin", publication="day_ahead",
                       market_timezone="Mars/Olympus")


def test_realtime_and_settled_publication():
    rt = load_price_csv(DATA / "US-CAL-CISO_2024_head.csv", timezone="UTC")
    assert all(iv.published == iv.start for iv in rt)
    settled = load_price_csv(DATA / "US-CAL-CISO_2024_head.csv", timezone="UTC", publication="settled")
    assert all(iv.published == iv.end for iv in settled)
    assert price_at(settled, utc(2023, 12, 31, 9, 30)) is None   # not known before the hour ends


def test_price_at_respects_publication():
    ivs = load_price_csv(DATA / "US-TEX-ERCO_2023_excerpt.csv", timezone="America/Chicago",
                         publication="day_ahead")
    hit = price_at(ivs, utc(2023, 11, 5, 7, 59))
    assert hit.price == 25.61 and hit.start == utc(2023, 11, 5, 7)
    assert price_at(ivs, utc(2023, 11, 5, 8)).price == 23.39     # [start, end)
    assert price_at(ivs, utc(2023, 6, 1)) is None                 # not in the excerpt
    assert price_at(ivs, utc(2023, 3, 11, 3)) is None             # before the first
    assert price_at([], utc(2023, 3, 11, 3)) is None


def test_hourly_array_aligns_on_utc_hours_with_nan_gaps():
    ivs = load_price_csv(DATA / "DE-LU_2023_synthetic.csv", timezone="Europe/Berlin",
                         publication="day_ahead")
    prices, published = hourly_array(ivs, utc(2023, 10, 28, 22), 6)
    assert np.isnan(prices[3]) and np.isnan(published[3])        # 01:00Z: the lost hour
    assert list(prices[[0, 1, 2, 4]]) == [14.04, 0.96, 0.015, -0.24]
    # 22:00Z on the 28th is already the 29th in Berlin: published 13:00 CEST on the 28th.
    assert published[0] == published[2] == utc(2023, 10, 28, 11).timestamp()


def test_hourly_array_averages_sub_hourly_intervals():
    q = timedelta(minutes=15)
    t0 = utc(2025, 1, 1)
    ivs = [PriceInterval(t0 + i * q, t0 + (i + 1) * q, p, "EUR", q, published=t0 - H + i * q)
           for i, p in enumerate([10.0, 20.0, 30.0, -20.0, 5.0])]
    prices, published = hourly_array(ivs, t0, 3)
    assert prices[0] == pytest.approx(10.0)
    assert prices[1] == pytest.approx(5.0)                       # only a quarter covered
    assert math.isnan(prices[2])
    assert published[0] == (t0 - H + 3 * q).timestamp()          # the last quarter's
    with pytest.raises(ValueError, match="whole UTC hour"):
        hourly_array(ivs, t0 + q, 2)


def test_excerpts_are_in_the_repository_and_attributed():
    """The tests read only tests/data/prices: the shared price folder may be absent."""
    readme = (DATA / "README.md").read_text()
    csvs = sorted(DATA.glob("*.csv"))
    assert len(csvs) >= 6
    for f in csvs:
        assert f"`{f.name}`" in readme
        assert f.stat().st_size < 16384                 # excerpts (a week at most), not the files
    assert "green-dcc" in readme and "punnoose-1620" in readme and "make_synthetic.py" in readme


# ---------------------------------------------------------------------------
# Property round trips


@st.composite
def hourly_series(draw):
    start = utc(2023, 1, 1) + H * draw(st.integers(0, 2 * 8760))
    prices = draw(st.lists(st.one_of(st.none(), st.decimals(-500, 5000, places=2, allow_nan=False)),
                           min_size=1, max_size=60))
    return start, prices


@settings(max_examples=60, deadline=None)
@given(hourly_series())
def test_green_dcc_text_round_trips(tmp_path_factory, series):
    start, prices = series
    lines = ["Datetime,Price (USD/MWh)"]
    for i, p in enumerate(prices):
        lines.append(f"{(start + i * H).strftime('%Y-%m-%d %H:%M:%S')},{'' if p is None else p}")
    f = tmp_path_factory.mktemp("g") / "p.csv"
    f.write_text("\n".join(lines) + "\n")
    got = rows(load_price_csv(f, timezone="UTC"))
    assert got == [(start + i * H, start + (i + 1) * H, float(p)) for i, p in enumerate(prices) if p is not None]


@settings(max_examples=60, deadline=None)
@given(hourly_series(), st.sampled_from(["", "n/e"]))
def test_entsoe_text_round_trips_through_wall_clock(tmp_path_factory, series, missing):
    """UTC hours written as an ENTSO-E export in Stockholm wall clock (the autumn hour
    twice, the spring hour absent) read back as the same UTC hours."""
    start, prices = series
    zone = ZoneInfo("Europe/Stockholm")
    lines = ['"MTU (CET/CEST)","Day-ahead Price [EUR/MWh]","Currency","BZN|SE3"']
    for i, p in enumerate(prices):
        a = (start + i * H).astimezone(zone)
        b = (start + (i + 1) * H).astimezone(zone)
        mtu = f"{a:%d.%m.%Y %H:%M} - {b:%d.%m.%Y %H:%M}"
        lines.append(f'"{mtu}","{missing if p is None else p}","{"" if p is None else "EUR"}"')
    f = tmp_path_factory.mktemp("e") / "p.csv"
    f.write_text("\n".join(lines) + "\n")
    got = rows(load_price_csv(f))
    assert got == [(start + i * H, start + (i + 1) * H, float(p)) for i, p in enumerate(prices) if p is not None]
