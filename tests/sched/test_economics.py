"""Revenue side: hashprice, breakeven and revenue with worked real-world numbers."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from miner.chain.target import bits_to_target, target_to_difficulty
from miner.sched.economics import (HashpriceError, HashpriceSeries, breakeven_usd_per_mwh,
                                   expected_blocks_per_th_day, hashprice_usd_per_th_day, load_hashprice_csv,
                                   profit_usd, revenue_usd, subsidy_btc)
from miner.sched.model import SiteSpec

DATA = Path(__file__).resolve().parents[1] / "data"
UTC = timezone.utc


def test_halving_block_840000():
    # Block 840,000 (the April 2024 halving), bits 0x17034219: difficulty 86,388,558,925,171.02
    # as bitcoind reports it. A TH/s tries 1e12 x 86400 hashes a day and a block needs
    # d x 2^32 on average: 8.64e16 / (8.6389e13 x 4.295e9) = 2.3286e-7 blocks per day.
    difficulty = target_to_difficulty(bits_to_target(0x17034219))
    assert difficulty == pytest.approx(86388558925171.02, rel=1e-15)
    assert expected_blocks_per_th_day(difficulty) == pytest.approx(2.328614791e-07, rel=1e-9)
    # With the new 3.125 BTC subsidy alone and BTC at 63,800 USD (its price that day):
    # 2.3286e-7 x 3.125 x 63,800 = 0.0464 USD per TH/s per day, the post-halving
    # hashprice the industry quoted before fees.
    hp = hashprice_usd_per_th_day(difficulty, subsidy_btc(840_000), 63_800)
    assert hp == pytest.approx(0.046427, rel=1e-4)
    # A 20 J/TH machine, 2 % pool fee: 0.046427 x 0.98 x 1e6 / (24 x 20) = 94.79 USD/MWh.
    assert breakeven_usd_per_mwh(hp, 0.02, 20.0) == pytest.approx(94.788, rel=1e-4)


def test_hashprice_from_a_real_getblock_answer():
    block = json.loads((DATA / "bitcoin_mainnet_951658.json").read_text())
    d = block["difficulty"]
    assert target_to_difficulty(bits_to_target(int(block["bits"], 16))) == pytest.approx(d, rel=1e-12)
    hp = hashprice_usd_per_th_day(d, subsidy_btc(block["height"]), 100_000)
    assert hp == pytest.approx(1e12 * 86400 / (d * 2 ** 32) * 3.125 * 100_000, rel=1e-12)
    assert hp == pytest.approx(0.045241, rel=1e-4)


def test_breakeven_and_revenue_worked_numbers():
    # 0.06 USD/TH/day, 2 % fee, 20 J/TH: 0.06 x 0.98 x 1e6 / 480 = 122.5 USD/MWh exactly.
    assert breakeven_usd_per_mwh(0.06, 0.02, 20.0) == pytest.approx(122.5)
    site = SiteSpec(name="x", capacity_mw=10.0, efficiency_j_per_th=20.0)
    assert site.hashrate_ths == pytest.approx(500_000)      # 10 MW / 20 J/TH = 0.5 EH/s
    # an hour at full power: 500,000 x 0.06 x 0.98 / 24 = 1,225 USD = 10 MWh x 122.5
    rev = revenue_usd(site.hashrate_ths, 1.0, 0.06, 0.02)
    assert rev == pytest.approx(1225.0)
    assert rev == pytest.approx(10.0 * breakeven_usd_per_mwh(0.06, 0.02, 20.0))
    assert revenue_usd(site.hashrate_ths, 0.5, 0.06, 0.02, hours=2.0) == pytest.approx(1225.0)
    # profit at 100 USD/MWh: 10 MWh x (122.5 - 100); negative prices pay twice
    assert profit_usd(10.0, 1.0, 122.5, 100.0) == pytest.approx(225.0)
    assert profit_usd(10.0, 1.0, 122.5, -20.0) == pytest.approx(1425.0)
    # breakeven works on arrays (the back-test's hour x site grid)
    grid = breakeven_usd_per_mwh(np.array([0.06, 0.08])[None, :], 0.02, np.array([20.0, 40.0])[:, None])
    assert grid.ravel().tolist() == pytest.approx([122.5, 163.333333, 61.25, 81.666667])


@pytest.mark.parametrize("height, btc", [(0, 50.0), (209_999, 50.0), (210_000, 25.0), (630_000, 6.25),
                                         (840_000, 3.125), (1_049_999, 3.125), (1_050_000, 1.5625),
                                         (64 * 210_000, 0.0)])
def test_subsidy_schedule(height, btc):
    assert subsidy_btc(height) == btc


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="difficulty"):
        expected_blocks_per_th_day(0)
    with pytest.raises(ValueError, match="difficulty"):
        expected_blocks_per_th_day(float("nan"))
    with pytest.raises(ValueError, match="efficiency"):
        breakeven_usd_per_mwh(0.05, 0.02, 0.0)
    with pytest.raises(ValueError):
        hashprice_usd_per_th_day(1e14, -1.0, 60_000)
    with pytest.raises(ValueError):
        subsidy_btc(-1)


def test_hashprice_series_file(tmp_path):
    f = tmp_path / "hp.csv"
    f.write_text("start,usd_per_th_day\n2024-01-01,0.10\n2024-04-20T00:00:00+00:00,0.05\n"
                 "2024-02-01 00:00:00,0.09\n")          # unsorted rows are fine
    s = load_hashprice_csv(f)
    assert s.at(datetime(2024, 1, 15, tzinfo=UTC)) == 0.10
    assert s.at(datetime(2024, 2, 1, tzinfo=UTC)) == 0.09
    assert s.at(datetime(2024, 4, 19, 23, tzinfo=UTC)) == 0.09
    assert s.at(datetime(2030, 1, 1, tzinfo=UTC)) == 0.05
    start = datetime(2024, 1, 31, 22, tzinfo=UTC).timestamp()
    assert s.hourly(start, 4).tolist() == [0.10, 0.10, 0.09, 0.09]
    with pytest.raises(HashpriceError, match="no value"):
        s.at(datetime(2023, 12, 31, tzinfo=UTC))
    with pytest.raises(HashpriceError, match="starts after"):
        s.hourly(datetime(2023, 12, 31, tzinfo=UTC).timestamp(), 48)


@pytest.mark.parametrize("text, match", [
    ("when,value\n2024-01-01,0.1\n", "header"),
    ("start,usd_per_th_day\n2024-13-01,0.1\n", "bad row"),
    ("start,usd_per_th_day\n2024-01-01,abc\n", "bad row"),
    ("start,usd_per_th_day\n2024-01-01,-0.1\n", ">= 0"),
    ("start,usd_per_th_day\n2024-01-01,0.1\n2024-01-01T00:00:00Z,0.2\n", "strictly"),
    ("start,usd_per_th_day\n", ">= 1"),
])
def test_hashprice_file_errors(tmp_path, text, match):
    f = tmp_path / "hp.csv"
    f.write_text(text)
    with pytest.raises(HashpriceError, match=match):
        load_hashprice_csv(f)


def test_missing_hashprice_file(tmp_path):
    with pytest.raises(HashpriceError, match="cannot read"):
        load_hashprice_csv(tmp_path / "nope.csv")


def test_series_needs_rows():
    with pytest.raises(HashpriceError):
        HashpriceSeries((), ())
