"""Sites files: the issue's TOML, every extra key, and a clear error for every bad one."""

from __future__ import annotations

import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pytest

from miner.sched.sites import SitesError, default_publication, load_sites

UTC = timezone.utc
REPO = Path(__file__).resolve().parents[2]

# The "Interfaces others script against" block of the issue, verbatim.
ISSUE_EXAMPLE = """\
[economics]
hashprice_usd_per_th_day = 0.05   # or hashprice_file = "series.csv" (start,usd_per_th_day)
pool_fee = 0.02
[fleet]                            # optional coupling; omit for independent sites
power_budget_mw = 12.0             # or hashrate_target_ths = 400000
[[site]]
name = "texas"
prices = "US-TEX-ERCO_2023.csv"    # path relative to the sites file
currency = "USD"                   # EUR sites: usd_per_unit = 1.08
adder_usd_per_mwh = 5.0
capacity_mw = 10.0
efficiency_j_per_th = 20.0
min_on_hours = 1
min_off_hours = 1
start_cost_usd = 50.0
min_power_fraction = 0.5           # lowest power level while on; 1.0 = on/off only
"""

BASE_SITE = """\
[[site]]
name = "a"
prices = "a.csv"
capacity_mw = 2.0
efficiency_j_per_th = 20.0
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "sites.toml"
    p.write_text(textwrap.dedent(text))
    return p


def fleet_of(tmp_path: Path, site_extra: str = "", top: str = "[economics]\nhashprice_usd_per_th_day = 0.05\n"):
    return load_sites(write(tmp_path, top + BASE_SITE + site_extra))


def test_issue_example(tmp_path):
    fleet = load_sites(write(tmp_path, ISSUE_EXAMPLE))
    assert fleet.economics.hashprice_usd_per_th_day == 0.05
    assert fleet.economics.pool_fee == 0.02
    assert fleet.power_budget_mw == 12.0 and fleet.hashrate_target_ths is None
    assert fleet.coupled
    assert fleet.base_dir == tmp_path.resolve()
    (site,) = fleet.sites
    assert (site.name, site.currency, site.adder_usd_per_mwh, site.capacity_mw, site.efficiency_j_per_th) == \
        ("texas", "USD", 5.0, 10.0, 20.0)
    assert (site.min_on_hours, site.min_off_hours, site.start_cost_usd, site.min_power_fraction) == (1, 1, 50.0, 0.5)
    assert site.feed == {"kind": "csv", "path": str(tmp_path.resolve() / "US-TEX-ERCO_2023.csv"),
                         "publication": "day_ahead", "currency": "USD",
                         "market_timezone": "America/Chicago"}   # inferred from the file name
    assert fleet.replay["texas"] == site.feed
    assert site.fail_safe == "curtail" and site.ramp_mw_per_hour is None and site.demand_response == ()


def test_every_extra_key(tmp_path):
    fleet = load_sites(write(tmp_path, """\
        [economics]
        hashprice_usd_per_th_day = 0.05
        pool_fee = 0.01
        btc_usd = 60000
        subsidy_btc = 3.125
        avg_fees_btc = 0.2
        [fleet]
        hashrate_target_ths = 400000
        [[site]]
        name = "de"
        prices = "prices/DE-LU_2023.csv"
        price_timezone = "Europe/Berlin"
        published_local = "12:45"
        timezone = "Europe/Berlin"
        currency = "eur"
        usd_per_unit = 1.08
        capacity_mw = 5
        efficiency_j_per_th = 18.5
        ramp_mw_per_hour = 2.5
        fail_safe = "hold"
        price_ttl_seconds = 900
        demand_response = [{start = 2023-08-01T14:00:00, end = 2023-08-01T18:00:00},
                           {start = "2023-07-01T10:00:00+00:00", end = 2023-07-01T12:00:00Z}]
        [[site.device]]
        kind = "agent"
        url = "127.0.0.1:4028"
        [[site.device]]
        kind = "local"
        [[site]]
        name = "pjm"
        prices = "US-MIDA-PJM_2023.csv"
        capacity_mw = 1
        efficiency_j_per_th = 20
        [site.feed]
        kind = "static"
        price = 30.0
        """))
    assert fleet.hashrate_target_ths == 400000 and fleet.power_budget_mw is None
    e = fleet.economics
    assert (e.pool_fee, e.btc_usd, e.subsidy_btc, e.avg_fees_btc) == (0.01, 60000, 3.125, 0.2)
    de, pjm = fleet.sites
    assert (de.currency, de.usd_per_unit, de.timezone, de.ramp_mw_per_hour) == ("EUR", 1.08, "Europe/Berlin", 2.5)
    assert (de.fail_safe, de.price_ttl_seconds, de.efficiency_j_per_th) == ("hold", 900.0, 18.5)
    # naive windows are wall-clock time of the site (CEST, UTC+2 in August), sorted
    assert [(w.start, w.end) for w in de.demand_response] == [
        (datetime(2023, 7, 1, 10, tzinfo=UTC), datetime(2023, 7, 1, 12, tzinfo=UTC)),
        (datetime(2023, 8, 1, 12, tzinfo=UTC), datetime(2023, 8, 1, 16, tzinfo=UTC))]
    assert de.devices == ({"kind": "agent", "url": "127.0.0.1:4028"}, {"kind": "local"})
    assert de.feed == {"kind": "csv", "path": str(tmp_path.resolve() / "prices" / "DE-LU_2023.csv"),
                       "timezone": "Europe/Berlin", "publication": "day_ahead", "currency": "EUR",
                       "market_timezone": "Europe/Berlin", "published_local": "12:45"}
    # a live feed table is passed through; the price file stays for the back-test
    assert pjm.feed == {"kind": "static", "price": 30.0}
    assert fleet.replay["pjm"]["publication"] == "realtime"
    assert fleet.site("pjm") is pjm
    with pytest.raises(KeyError):
        fleet.site("nope")


def test_publication_inference_and_override(tmp_path):
    assert default_publication("x/US-MIDA-PJM_2024.csv") == "realtime"
    assert default_publication("US-TEX-ERCO_2024.csv") == "day_ahead"
    assert default_publication("SE3_2023_entsoe.csv") == "day_ahead"
    fleet = fleet_of(tmp_path, 'publication = "settled"\n')
    assert fleet.sites[0].feed["publication"] == "settled"


def test_hashprice_file(tmp_path):
    (tmp_path / "hp.csv").write_text("start,usd_per_th_day\n2023-01-01,0.08\n2024-04-20,0.05\n")
    fleet = fleet_of(tmp_path, top='[economics]\nhashprice_file = "hp.csv"\n')
    assert fleet.economics.hashprice_at(datetime(2024, 5, 1, tzinfo=UTC)) == 0.05
    assert fleet.economics.hashprice_at(datetime(2023, 5, 1, tzinfo=UTC)) == 0.08


def test_live_only_economics_has_no_constant(tmp_path):
    fleet = fleet_of(tmp_path, top="[economics]\nbtc_usd = 60000\n")
    with pytest.raises(SitesError, match="no hashprice configured"):
        fleet.economics.hashprice_at(datetime(2024, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize("name, sites", [("sites-backtest.toml", 3), ("sites-backtest-10.toml", 10)])
def test_the_example_backtests_parse(name, sites):
    """Both parse without their price files (the ten-site one's are fetched by the operator)."""
    fleet = load_sites(REPO / "deploy" / "examples" / name)
    assert len(fleet.sites) == sites
    assert {s.efficiency_j_per_th for s in fleet.sites} == {20.0}
    assert {(s.min_on_hours, s.min_off_hours) for s in fleet.sites} == {(1.0, 1.0)}
    assert all(s.start_cost_usd > 0 for s in fleet.sites)
    assert {s.name for s in fleet.sites} >= {"texas", "california", "new-york"}
    assert all(f["publication"] == ("realtime" if site == "virginia" else "day_ahead")
               for site, f in fleet.replay.items())
    assert all(Path(f["path"]).is_absolute() for f in fleet.replay.values())


@pytest.mark.parametrize("site_extra, top, match", [
    ('colour = "red"\n', None, r"site 'a': unknown key 'colour'"),
    ('fail_safe = "panic"\n', None, r"site 'a' fail_safe: must be one of"),
    ('timezone = "Mars/Olympus"\n', None, r"site 'a' timezone: unknown time zone"),
    ('price_timezone = "Nowhere"\n', None, r"site 'a' price_timezone: unknown time zone"),
    ('publication = "tomorrow"\n', None, r"site 'a' publication: must be one of"),
    ('published_local = "25:00"\n', None, r"published_local: expected HH:MM"),
    ('currency = "EUR"\n', None, r"site 'a': currency EUR needs usd_per_unit"),
    ("usd_per_unit = 0\n", None, r"usd_per_unit: must be > 0"),
    ("min_power_fraction = 0\n", None, r"min_power_fraction: must be > 0"),
    ("min_power_fraction = 1.5\n", None, r"min_power_fraction: must be in \(0, 1\]"),
    ("min_on_hours = -1\n", None, r"min_on_hours: must be >= 0"),
    ("start_cost_usd = -5\n", None, r"start_cost_usd: must be >= 0"),
    ("ramp_mw_per_hour = 0\n", None, r"ramp_mw_per_hour: must be > 0"),
    ("price_ttl_seconds = -1\n", None, r"price_ttl_seconds: must be >= 0"),
    ('adder_usd_per_mwh = "5"\n', None, r"adder_usd_per_mwh: expected a number"),
    ("min_off_hours = true\n", None, r"min_off_hours: expected a number"),
    ("demand_response = [{start = 2023-01-01T10:00:00, end = 2023-01-01T10:00:00}]\n", None, r"is not after start"),
    ("demand_response = [{start = 2023-01-01T10:00:00}]\n", None, r"needs start and end"),
    ("demand_response = [{start = 2023-01-01T10:00:00, end = 2023-01-01T11:00:00, why = 1}]\n", None,
     r"demand_response\[0\]: unknown key 'why'"),
    ('demand_response = [{start = "yesterday", end = 2023-01-01T11:00:00}]\n', None, r"not an ISO date-time"),
    ("demand_response = [1]\n", None, r"must be a table"),
    ('demand_response = "never"\n', None, r"must be a list"),
    ('feed = "http://x"\n', None, r"feed: must be a table"),
    ("device = 3\n", None, r"device: must be \[\[site.device\]\] tables"),
    (None, '[economics]\nhashprice_usd_per_th_day = 0.05\nhashprice_file = "x.csv"\n', r"not both"),
    (None, "[economics]\npool_fee = 0.02\n", r"needs hashprice_usd_per_th_day, hashprice_file or"),
    (None, "[economics]\nhashprice_usd_per_th_day = 0.05\npool_fee = 1.0\n", r"pool_fee: must be a fraction"),
    (None, "[economics]\nhashprice_usd_per_th_day = -0.05\n", r"hashprice_usd_per_th_day: must be >= 0"),
    (None, "[economics]\nhashprice_usd_per_th_day = 0.05\nfee = 0.02\n", r"\[economics\]: unknown key 'fee'"),
    (None, '[economics]\nhashprice_file = "missing.csv"\n', r"hashprice_file: cannot read"),
    (None, "[economics]\nhashprice_usd_per_th_day = 0.05\n[fleet]\npower_budget_mw = 0\n",
     r"power_budget_mw: must be > 0"),
    (None, "[economics]\nhashprice_usd_per_th_day = 0.05\n[fleet]\nbudget = 3\n", r"\[fleet\]: unknown key 'budget'"),
    (None, "[economics]\nhashprice_usd_per_th_day = 0.05\n[sites]\n", r"top level: unknown key 'sites'"),
])
def test_errors_name_site_and_key(tmp_path, site_extra, top, match):
    with pytest.raises(SitesError, match=match):
        fleet_of(tmp_path, site_extra or "", top or "[economics]\nhashprice_usd_per_th_day = 0.05\n")


@pytest.mark.parametrize("body, match", [
    ("[economics]\nhashprice_usd_per_th_day = 0.05\n", r"at least one \[\[site\]\]"),
    ("[economics]\nhashprice_usd_per_th_day = 0.05\n[[site]]\ncapacity_mw = 1\n", r"#1: needs name"),
    ("[economics]\nhashprice_usd_per_th_day = 0.05\n" + BASE_SITE + BASE_SITE, r"site 'a': name used twice"),
    ("[economics]\nhashprice_usd_per_th_day = 0.05\n[[site]]\nname = \"b\"\nprices = \"b.csv\"\n"
     "efficiency_j_per_th = 20\n", r"site 'b': needs capacity_mw"),
    ("[economics]\nhashprice_usd_per_th_day = 0.05\n[[site]]\nname = \"b\"\nprices = \"b.csv\"\n"
     "capacity_mw = 1\n", r"site 'b': needs efficiency_j_per_th"),
    ("[economics]\nhashprice_usd_per_th_day = 0.05\n[[site]]\nname = \"b\"\ncapacity_mw = 1\n"
     "efficiency_j_per_th = 20\n", r"site 'b': needs prices"),
    ("[economics]\nhashprice_usd_per_th_day = 0.05\n[[site]]\nname = \"b\"\ncapacity_mw = 1\n"
     "efficiency_j_per_th = 20\nprice_timezone = \"UTC\"\n[site.feed]\nkind = \"static\"\nprice = 1\n",
     r"price_timezone: only meaningful with prices"),
    ("[economics\n", r"not valid TOML"),
])
def test_document_errors(tmp_path, body, match):
    with pytest.raises(SitesError, match=match):
        load_sites(write(tmp_path, body))


@pytest.mark.parametrize("key", ["capacity_mw", "efficiency_j_per_th"])
def test_non_positive_size(tmp_path, key):
    text = "[economics]\nhashprice_usd_per_th_day = 0.05\n" + BASE_SITE
    text = "\n".join(f"{key} = 0" if line.startswith(key) else line for line in text.splitlines())
    with pytest.raises(SitesError, match=rf"site 'a' {key}: must be > 0"):
        load_sites(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(SitesError, match="cannot read sites file"):
        load_sites(tmp_path / "absent.toml")
