"""The price data shipped for the example back-test: the example runs from any copy of
the repository, the issue's minimal sites file (no time-zone keys) runs on it, .gz files
read like the plain ones, and a missing file or an unknown naive file says what to do."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from miner.sched.backtest import BacktestError, load_replay_prices, run_backtest
from miner.sched.price_files import KNOWN_MARKET_FILES, load_price_csv, market_of_file
from miner.sched.sites import load_sites

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "deploy" / "examples"
SHIPPED = EXAMPLES / "prices"
TEST_PRICES = REPO / "tests" / "data" / "prices"

# The ten files of deploy/examples/sites-backtest.toml (2023) and their currencies.
TEN = [("green-dcc/US-TEX-ERCO", "USD"), ("green-dcc/US-CAL-CISO", "USD"), ("green-dcc/US-MIDA-PJM", "USD"),
       ("green-dcc/US-NY-NYIS", "USD"), ("green-dcc/DE-LU", "EUR"), ("green-dcc/FR", "EUR"),
       ("green-dcc/NL", "EUR"), ("green-dcc/ES", "EUR"), ("green-dcc/BE", "EUR"),
       ("entsoe-sweden/SE4", "EUR")]


def shipped(stem: str, year: int) -> Path:
    suffix = "_entsoe.csv.gz" if "entsoe" in stem else ".csv.gz"
    return SHIPPED / f"{stem}_{year}{suffix}"


def test_every_file_of_the_example_ships_for_2023_and_2024_and_is_small():
    files = [shipped(stem, y) for stem, _ in TEN for y in (2023, 2024)]
    assert all(f.is_file() for f in files), [f.name for f in files if not f.is_file()]
    assert sum(f.stat().st_size for f in files) < 1_100_000
    readme = (SHIPPED / "README.md").read_text()
    for source in ("HewlettPackard/green-dcc", "punnoose-1620/machine-learning-project", "MIT", "ENTSO-E"):
        assert source in readme


def test_gzip_file_reads_like_the_plain_file(tmp_path):
    plain = TEST_PRICES / "SE3_2023_entsoe_excerpt.csv"
    gz = tmp_path / "SE3_2023_entsoe_excerpt.csv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    assert load_price_csv(gz, publication="day_ahead") == load_price_csv(plain, publication="day_ahead")


@pytest.mark.parametrize("name, market, clock, zone, publication", [
    ("US-TEX-ERCO_2023.csv.gz", "US-TEX-ERCO", None, "America/Chicago", "day_ahead"),
    ("x/US-CAL-CISO_2024.csv", "US-CAL-CISO", "UTC", "America/Los_Angeles", "day_ahead"),
    ("US-MIDA-PJM_electricity_prices_2023.csv", "US-MIDA-PJM", "UTC", "America/New_York", "realtime"),
    ("US-NY-NYIS_2023.csv", "US-NY-NYIS", "UTC", "America/New_York", "day_ahead"),
    ("DE-LU_2023.csv", "DE-LU", "Europe/Berlin", "Europe/Berlin", "day_ahead"),
    ("fr_2024.csv", "FR", "Europe/Paris", "Europe/Paris", "day_ahead"),
    ("SE1_2024_entsoe.csv", "SE1", None, "Europe/Stockholm", "day_ahead"),
])
def test_market_of_file(name, market, clock, zone, publication):
    m = market_of_file(name)
    assert (m.market, m.clock, m.zone, m.publication) == (market, clock, zone, publication)


@pytest.mark.parametrize("name", ["prices.csv", "FRANCE_2023.csv", "AT_2023.csv", "my-DE-LU_2023.csv"])
def test_unknown_file_names_name_no_market(name):
    assert market_of_file(name) is None


def test_every_known_market_is_in_the_table():
    assert {"US-TEX-ERCO", "US-MIDA-PJM", "US-CAL-CISO", "US-NY-NYIS", "DE-LU", "FR", "NL", "BE", "ES",
            "SE1", "SE2", "SE3", "SE4"} <= set(KNOWN_MARKET_FILES)


MINIMAL_SITE = """
[[site]]
name = "{name}"
prices = "{path}"
currency = "{currency}"
{eur}adder_usd_per_mwh = 5.0
capacity_mw = 10.0
efficiency_j_per_th = 20.0
min_on_hours = 1
min_off_hours = 1
start_cost_usd = 50.0
min_power_fraction = 0.5
"""


def minimal_sites(tmp_path: Path, fleet: str = "[fleet]\npower_budget_mw = 60.0\n") -> Path:
    """The sites file of the scheduler issue (no timezone, price_timezone or publication
    keys) over the ten shipped 2023 files."""
    text = "[economics]\nhashprice_usd_per_th_day = 0.08\npool_fee = 0.02\n" + fleet
    for stem, currency in TEN:
        text += MINIMAL_SITE.format(name=stem.split("/")[1].lower(), path=shipped(stem, 2023).as_posix(),
                                    currency=currency, eur="usd_per_unit = 1.08\n" if currency == "EUR" else "")
    path = tmp_path / "sites.toml"
    path.write_text(text)
    return path


def test_minimal_sites_file_loads_the_same_prices_as_the_example_with_its_keys(tmp_path):
    minimal = load_sites(minimal_sites(tmp_path))
    example = load_sites(EXAMPLES / "sites-backtest.toml")
    for a, b in zip(minimal.sites, example.sites):
        assert load_replay_prices(minimal, a) == load_replay_prices(example, b), a.name


def test_minimal_sites_file_runs_on_the_shipped_data(tmp_path):
    r = run_backtest(load_sites(minimal_sites(tmp_path)), "2023-07-01", "2023-07-04",
                     policies=("always_on", "gridminer", "hindsight"), workers=1)
    assert r.price_usd.shape == (10, 72)
    assert all(p.fleet["violations"] == 0 for p in r.policies.values())
    assert r.policies["hindsight"].fleet["profit_usd"] >= r.policies["always_on"].fleet["profit_usd"]


def test_example_backtest_json_from_a_copy_of_the_examples(tmp_path):
    """A fresh clone: the example's paths are relative to the sites file; stdout is the
    JSON alone (`| python -m json.tool` works), the tables go to stderr."""
    copy = tmp_path / "examples"
    shutil.copytree(EXAMPLES, copy)
    backtest = subprocess.run([sys.executable, "-m", "miner", "backtest", str(copy / "sites-backtest.toml"),
                               "--from", "2023-08-14", "--to", "2023-08-16", "--json"],
                              capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert backtest.returncode == 0, backtest.stderr
    tool = subprocess.run([sys.executable, "-m", "json.tool"], input=backtest.stdout, capture_output=True,
                          text=True, timeout=60)
    assert tool.returncode == 0, tool.stderr
    doc = json.loads(backtest.stdout)
    assert doc["hours"] == 48 and len(doc["policies"]["gridminer"]["sites"]) == 10
    assert "capture ratio" in backtest.stderr and "fleet" in backtest.stderr


def test_missing_price_file_says_where_the_data_comes_from(tmp_path):
    (tmp_path / "s.toml").write_text('[economics]\nhashprice_usd_per_th_day = 0.05\n'
                                     '[[site]]\nname = "x"\nprices = "US-TEX-ERCO_2023.csv"\ncapacity_mw = 1\n'
                                     'efficiency_j_per_th = 20\n')
    with pytest.raises(BacktestError) as err:
        run_backtest(load_sites(tmp_path / "s.toml"))
    text = str(err.value)
    assert "no price file" in text and str(tmp_path / "US-TEX-ERCO_2023.csv") in text
    assert "deploy/examples/prices" in text and "green-dcc" in text and "ENTSO-E" in text


def test_unknown_naive_file_asks_for_the_sites_file_keys(tmp_path):
    (tmp_path / "mine.csv").write_text("Datetime,Price (EUR/MWh)\n2023-01-02 00:00:00,10\n2023-01-02 01:00:00,11\n")
    (tmp_path / "s.toml").write_text('[economics]\nhashprice_usd_per_th_day = 0.05\n'
                                     '[[site]]\nname = "x"\nprices = "mine.csv"\ncurrency = "EUR"\n'
                                     'usd_per_unit = 1.1\ncapacity_mw = 1\nefficiency_j_per_th = 20\n')
    with pytest.raises(BacktestError, match=r"give price_timezone = \"ZONE\""):
        run_backtest(load_sites(tmp_path / "s.toml"))
    # with the clock but no market zone: a day-ahead file on a UTC clock asks for timezone
    text = (tmp_path / "s.toml").read_text().replace('prices = "mine.csv"\n',
                                                     'prices = "mine.csv"\nprice_timezone = "UTC"\n')
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(BacktestError, match=r"needs timezone = \"ZONE\""):
        run_backtest(load_sites(tmp_path / "s.toml"))


def test_csv_feed_table_infers_the_zones_of_a_known_file(tmp_path):
    """[site.feed] kind = "csv" reads a file named for its market without timezone keys,
    as `prices =` does: CAISO's naive-UTC rows, published 13:30 Pacific the day before."""
    from datetime import datetime, timezone

    from miner.sched.feeds import ReplayFeed, make_feed
    from miner.sched.model import SiteSpec

    site = SiteSpec(name="ca", capacity_mw=1.0, efficiency_j_per_th=20.0)
    feed = make_feed({"kind": "csv", "path": str(TEST_PRICES / "US-CAL-CISO_2024_head.csv"),
                      "publication": "day_ahead"}, base_dir=tmp_path, site=site)
    assert isinstance(feed, ReplayFeed)
    explicit = load_price_csv(TEST_PRICES / "US-CAL-CISO_2024_head.csv", timezone="UTC", publication="day_ahead",
                              market_timezone="America/Los_Angeles")
    assert feed.intervals == explicit
    assert explicit[0].published == datetime(2023, 12, 30, 21, 30, tzinfo=timezone.utc)
