"""The revenue side of mining, in USD: hashprice, breakeven power price, site revenue.

Hashprice is what one TH/s earns per day before pool fees: the expected number of blocks
a TH/s finds in a day times the block reward in USD. A hash meets a difficulty-d target
with probability 1 / (d x 2^32) (DIFF1_TARGET = 0xFFFF << 208 ~ 2^224, so 2^256 / target
~ d x 2^32; the exact factor is 2^48 / 0xFFFF = 2^32 x (1 + 1/65535), which the industry
ignores and so do we), so a TH/s finds 1e12 x 86400 / (d x 2^32) blocks per day.

Revenue is linear in power at a fixed efficiency, so a site's revenue per MWh it burns is
its breakeven power price: the power price at which mining exactly pays.
"""

from __future__ import annotations

import bisect
import csv
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HASHES_PER_DIFFICULTY = 2 ** 32        # expected hashes per share of difficulty 1
SECONDS_PER_DAY = 86_400
HALVING_INTERVAL_BLOCKS = 210_000
INITIAL_SUBSIDY_SAT = 50 * 100_000_000
SAT_PER_BTC = 100_000_000


def expected_blocks_per_th_day(difficulty: float) -> float:
    """Blocks one TH/s is expected to find per day at network `difficulty`."""
    if not difficulty > 0 or not math.isfinite(difficulty):
        raise ValueError(f"difficulty must be a positive number, got {difficulty!r}")
    return 1e12 * SECONDS_PER_DAY / (difficulty * HASHES_PER_DIFFICULTY)


def hashprice_usd_per_th_day(difficulty: float, block_reward_btc: float, btc_usd: float) -> float:
    """USD one TH/s earns per day (before pool fee) at this difficulty, reward and BTC price."""
    if block_reward_btc < 0 or btc_usd < 0:
        raise ValueError(f"block reward and BTC price must be >= 0, got {block_reward_btc}, {btc_usd}")
    return expected_blocks_per_th_day(difficulty) * block_reward_btc * btc_usd


def subsidy_btc(height: int) -> float:
    """Block subsidy at `height` (consensus: 50 BTC halved every 210,000 blocks, in sats)."""
    if height < 0:
        raise ValueError(f"height must be >= 0, got {height}")
    halvings = height // HALVING_INTERVAL_BLOCKS
    return (INITIAL_SUBSIDY_SAT >> halvings) / SAT_PER_BTC if halvings < 64 else 0.0


def breakeven_usd_per_mwh(hashprice: float, pool_fee: float, j_per_th: float) -> float:
    """Power price (USD/MWh) at which a `j_per_th` machine exactly pays for its power.

    Revenue per MWh = hashprice x (1 - fee) / 24 per TH/s-hour, and one TH/s draws
    j_per_th W, i.e. 1e6 / j_per_th TH/s per MW."""
    if (j_per_th <= 0) if isinstance(j_per_th, (int, float)) else np.any(np.asarray(j_per_th) <= 0):
        raise ValueError(f"efficiency must be > 0 J/TH, got {j_per_th}")   # scalars or arrays
    return hashprice * (1.0 - pool_fee) * 1e6 / (24.0 * j_per_th)


def revenue_usd(hashrate_ths: float, level: float, hashprice: float, pool_fee: float,
                hours: float = 1.0) -> float:
    """What a site of full-power `hashrate_ths` earns at power `level` for `hours`, net of fee."""
    return hashrate_ths * level * hashprice * (1.0 - pool_fee) * hours / 24.0


def profit_usd(capacity_mw: float, level: float, breakeven: float, price_usd_per_mwh: float,
               hours: float = 1.0) -> float:
    """Revenue minus energy cost for `hours` at `level`: energy x (breakeven - price)."""
    return capacity_mw * level * hours * (breakeven - price_usd_per_mwh)


class HashpriceError(ValueError):
    """A hashprice series file is malformed or does not cover the time asked for."""


@dataclass(frozen=True)
class HashpriceSeries:
    """A step function of time: each value holds from its start until the next start."""

    starts_s: tuple[float, ...]        # Unix seconds, strictly increasing
    values: tuple[float, ...]          # USD per TH/s per day
    source: str = ""

    def __post_init__(self) -> None:
        if not self.starts_s or len(self.starts_s) != len(self.values):
            raise HashpriceError(f"{self.source or 'hashprice series'}: needs >= 1 (start, value) row")
        if any(b <= a for a, b in zip(self.starts_s, self.starts_s[1:])):
            raise HashpriceError(f"{self.source or 'hashprice series'}: starts must increase strictly")

    def at(self, when: datetime) -> float:
        """The value in force at `when`; HashpriceError before the first start."""
        t = when.timestamp()
        i = bisect.bisect_right(self.starts_s, t) - 1
        if i < 0:
            raise HashpriceError(f"{self.source or 'hashprice series'}: no value at "
                                 f"{when.isoformat()} (first starts "
                                 f"{datetime.fromtimestamp(self.starts_s[0], timezone.utc).isoformat()})")
        return self.values[i]

    def hourly(self, start_s: float, hours: int) -> np.ndarray:
        """Values on the hours start_s + 3600 k, k < hours (HashpriceError before the first)."""
        grid = start_s + 3600.0 * np.arange(hours)
        idx = np.searchsorted(np.asarray(self.starts_s), grid, side="right") - 1
        if hours and idx[0] < 0:
            raise HashpriceError(f"{self.source or 'hashprice series'}: starts after the period begins")
        return np.asarray(self.values)[idx]


def load_hashprice_csv(path: str | Path) -> HashpriceSeries:
    """Read `start,usd_per_th_day` rows (ISO-8601 start; naive means UTC) into a series."""
    path = Path(path)
    rows: list[tuple[float, float]] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip().lower() for h in header[:2]] != ["start", "usd_per_th_day"]:
                raise HashpriceError(f"{path}: expected header 'start,usd_per_th_day', got {header!r}")
            for lineno, row in enumerate(reader, start=2):
                if not row or not row[0].strip():
                    continue
                try:
                    stamp = datetime.fromisoformat(row[0].strip())
                    value = float(row[1])
                except (ValueError, IndexError) as exc:
                    raise HashpriceError(f"{path}:{lineno}: bad row {row!r}: {exc}") from exc
                if not math.isfinite(value) or value < 0:
                    raise HashpriceError(f"{path}:{lineno}: hashprice must be a number >= 0, got {row[1]!r}")
                if stamp.tzinfo is None:
                    stamp = stamp.replace(tzinfo=timezone.utc)
                rows.append((stamp.timestamp(), value))
    except OSError as exc:
        raise HashpriceError(f"cannot read hashprice file {path}: {exc}") from exc
    rows.sort()
    return HashpriceSeries(tuple(r[0] for r in rows), tuple(r[1] for r in rows), source=str(path.name))
