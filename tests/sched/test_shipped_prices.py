"""The price data shipped for the example back-test: only the three markets whose data
may be republished, the example runs from any copy of the repository, the issue's
minimal sites file (no time-zone keys) runs on it, .gz files read like the plain ones,
and a missing file or an unknown naive file says what to do. The ten-site fleet needs
files gridminer does not ship: its test runs when GRIDMINER_PRICE_DATA names a folder
holding them (green-dcc/<REGION>_<YEAR>.csv, entsoe-sweden/SE4_<YEAR>_entsoe.csv)."""

from __future__ import annotations

import gzip
import json
import os
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

# The markets shipped for deploy/examples/sites-backtest.toml, in its order, and their
# currencies. Nothing else may ship: the other markets' terms restrict redistribution.
SHIPPED_MARKETS = [("green-dcc/US-TEX-ERCO", "USD"), ("green-dcc/US-CAL-CISO", "USD"),
                   ("green-dcc/US-NY-NYIS", "USD")]
# The seven markets of sites-backtest-10.toml that the operator fetches.
NOT_SHIPPED = ["US-MIDA-PJM", "DE-LU", "FR", "NL", "ES", "BE", "SE4"]


def shipped(stem: str, year: int) -> Path:
    return SHIPPED / f"{stem}_{year}.csv.gz"


def shipped_files() -> set[Path]:
    """The files git tracks under deploy/examples/prices (an operator's fetched files next
    to them are ignored); every file there outside a git checkout."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", str(SHIPPED)], cwd=REPO, capture_output=True,
                                timeout=60)
    except OSError:
        listed = None
    if listed is None or listed.returncode != 0:
        return {f for f in SHIPPED.rglob("*") if f.is_file()}
    return {REPO / name for name in listed.stdout.decode().split("\0") if name}


def test_only_the_three_republishable_markets_ship_for_2023_and_2024_and_are_small():
    files = {shipped(stem, y) for stem, _ in SHIPPED_MARKETS for y in (2023, 2024)}
    present = {f for f in shipped_files() if f.name not in ("README.md", ".gitignore")}
    assert present == files, sorted(f.name for f in present ^ files)
    assert sum(f.stat().st_size for f in files) < 350_000
    readme = (SHIPPED / "README.md").read_text()
    for text in ("HewlettPackard/green-dcc", "MIT", "ERCOT", "CAISO", "NYISO", "sites-backtest-10.toml"):
        assert text in readme
    ignored = (SHIPPED / ".gitignore").read_text()
    assert all(market in ignored for market in NOT_SHIPPED[:-1]) and "entsoe-sweden/" in ignored


def test_gzip_file_reads_like_the_plain_file(tmp_path):
    plain = TEST_PRICES / "SE3_2023_entsoe_synthetic.csv"
    gz = tmp_path / "SE3_2023_entsoe_synthetic.csv.gz"
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


def minimal_sites(tmp_path: Path, fleet: str = "[fleet]\npower_budget_mw = 18.0\n") -> Path:
    """The sites file of the scheduler issue (no timezone, price_timezone or publication
    keys) over the three shipped 2023 files."""
    text = "[economics]\nhashprice_usd_per_th_day = 0.08\npool_fee = 0.02\n" + fleet
    for stem, currency in SHIPPED_MARKETS:
        text += MINIMAL_SITE.format(name=stem.split("/")[1].lower(), path=shipped(stem, 2023).as_posix(),
                                    currency=currency, eur="usd_per_unit = 1.08\n" if currency == "EUR" else "")
    path = tmp_path / "sites.toml"
    path.write_text(text)
    return path


def test_minimal_sites_file_loads_the_same_prices_as_the_example_with_its_keys(tmp_path):
    minimal = load_sites(minimal_sites(tmp_path))
    example = load_sites(EXAMPLES / "sites-backtest.toml")
    assert len(minimal.sites) == len(example.sites) == 3
    for a, b in zip(minimal.sites, example.sites):
        assert load_replay_prices(minimal, a) == load_replay_prices(example, b), a.name


def test_minimal_sites_file_runs_on_the_shipped_data(tmp_path):
    r = run_backtest(load_sites(minimal_sites(tmp_path)), "2023-07-01", "2023-07-04",
                     policies=("always_on", "gridminer", "hindsight"), workers=1)
    assert r.price_usd.shape == (3, 72)
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
    assert doc["hours"] == 48 and len(doc["policies"]["gridminer"]["sites"]) == 3
    assert "capture ratio" in backtest.stderr and "fleet" in backtest.stderr


def test_missing_price_file_says_where_the_data_comes_from(tmp_path):
    (tmp_path / "s.toml").write_text('[economics]\nhashprice_usd_per_th_day = 0.05\n'
                                     '[[site]]\nname = "x"\nprices = "US-TEX-ERCO_2023.csv"\ncapacity_mw = 1\n'
                                     'efficiency_j_per_th = 20\n')
    with pytest.raises(BacktestError) as err:
        run_backtest(load_sites(tmp_path / "s.toml"))
    text = str(err.value)
    assert f"site 'x': no price file {tmp_path / 'US-TEX-ERCO_2023.csv'}; get it from " in text
    assert "green-dcc, data/electricity_prices/processed/US-TEX-ERCO/2023/US-TEX-ERCO_electricity_prices_2023.csv" in text
    assert "deploy/examples/prices" in text
    # a file of a market gridminer does not know: the sources in general
    text = (tmp_path / "s.toml").read_text().replace("US-TEX-ERCO_2023.csv", "mine.csv")
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(BacktestError) as err:
        run_backtest(load_sites(tmp_path / "s.toml"))
    text = str(err.value)
    assert f"site 'x': no price file {tmp_path / 'mine.csv'}\n" in text
    assert "deploy/examples/prices" in text and "green-dcc" in text and "ENTSO-E" in text


def test_ten_site_example_without_the_fetched_files_names_each_file_and_its_source(tmp_path):
    """A fresh clone: the seven markets gridminer does not ship are missing, and the
    error says which file and exactly where it comes from."""
    copy = tmp_path / "examples"
    shutil.copytree(EXAMPLES, copy)
    fleet = load_sites(copy / "sites-backtest-10.toml")
    assert [s.name for s in fleet.sites][:4] == ["texas", "california", "virginia", "new-york"]
    for site in fleet.sites:
        market = Path(fleet.replay[site.name]["path"]).name.split("_")[0]
        if market not in NOT_SHIPPED:
            assert load_replay_prices(fleet, site)
            continue
        with pytest.raises(BacktestError) as err:
            load_replay_prices(fleet, site)
        text = str(err.value)
        assert f"site {site.name!r}: no price file {copy / 'prices'}" in text
        if market == "SE4":
            assert "ENTSO-E Transparency Platform's CSV export of Day-ahead Prices, BZN|SE4, 2023" in text
        else:
            assert f"green-dcc, data/electricity_prices/processed/{market}/2023/{market}_electricity_prices_2023.csv" in text
    with pytest.raises(BacktestError) as err:
        run_backtest(fleet)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{len(NOT_SHIPPED)} sites have no price file:"
    assert sum("no price file" in line and "get it from" in line for line in lines) == len(NOT_SHIPPED)


PRICE_DATA = os.environ.get("GRIDMINER_PRICE_DATA")


@pytest.mark.skipif(not PRICE_DATA, reason="set GRIDMINER_PRICE_DATA to a folder holding the fetched "
                                           "green-dcc/<REGION>_2023.csv and entsoe-sweden/SE4_2023_entsoe.csv "
                                           "files (see deploy/examples/sites-backtest-10.toml)")
def test_ten_site_example_runs_on_the_fetched_files(tmp_path):
    copy = tmp_path / "examples"
    shutil.copytree(EXAMPLES, copy)
    fleet = load_sites(copy / "sites-backtest-10.toml")
    for feed in fleet.replay.values():
        path = Path(feed["path"])
        if not path.is_file():
            fetched = Path(PRICE_DATA) / path.relative_to(copy / "prices")
            if not fetched.is_file():
                pytest.skip(f"GRIDMINER_PRICE_DATA lacks {fetched.relative_to(PRICE_DATA)}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(fetched)
    assert fleet.replay["virginia"]["publication"] == "realtime"
    r = run_backtest(fleet, "2023-07-01", "2023-07-04", policies=("always_on", "gridminer", "hindsight"),
                     workers=1)
    assert r.price_usd.shape == (10, 72)
    assert all(p.fleet["violations"] == 0 for p in r.policies.values())
    assert r.policies["hindsight"].fleet["profit_usd"] >= r.policies["gridminer"].fleet["profit_usd"]


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
