"""Write the synthetic European price files of this folder (run from anywhere:
`python tests/data/prices/make_synthetic.py`). Deterministic: the same bytes every run.

The ENTSO-E and green-dcc European files carry prices whose exchanges restrict
republication, so the tests use made-up prices in the exact formats and with the same
quirks (clock, DST rows, "n/e", negative prices, the -500 EUR/MWh floor) instead. The
shape is a plain daily curve (cheap nights, a midday dip, an evening peak) plus seeded
noise; quirk rows get the values the tests need to see (negative, floor)."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENTSOE_HEADER = '"MTU (CET/CEST)","Day-ahead Price [EUR/MWh]","Currency","BZN|SE3"\n'
GREEN_HEADER = "Datetime,Price (EUR/MWh)\n"


def daily_curve(hour: int, base: float, evening: float) -> float:
    """EUR/MWh at a local hour: night trough, morning and evening peaks, midday dip."""
    return (base + 0.35 * evening * math.exp(-((hour - 8) / 2.0) ** 2)
            + evening * math.exp(-((hour - 19) / 2.5) ** 2) - 0.25 * base * math.exp(-((hour - 13) / 2.5) ** 2)
            - 0.3 * base * math.exp(-((hour - 3) / 2.5) ** 2))


def price(rng: random.Random, hour: int, base: float, evening: float) -> float:
    return round(daily_curve(hour, base, evening) + rng.gauss(0.0, 0.06 * base), 2)


def hours(first: datetime, count: int) -> list[datetime]:
    return [first + timedelta(hours=i) for i in range(count)]


def entsoe_row(start: datetime, value: str, currency: str = "EUR", end: datetime | None = None) -> str:
    end = end or start + timedelta(hours=1)
    return (f'"{start:%d.%m.%Y %H:%M} - {end:%d.%m.%Y %H:%M}","{value}","{currency}"\n')


def se3_2023(rng: random.Random) -> str:
    out = [ENTSOE_HEADER]
    for t in hours(datetime(2023, 3, 25, 22), 9):          # spring DST: empty 02:00 row
        out.append(entsoe_row(t, "", "") if t.hour == 2 else entsoe_row(t, f"{price(rng, t.hour, 40, 25):.2f}"))
    for t in hours(datetime(2023, 4, 30, 10), 6):           # a sunny Sunday: negative at 13:00, 14:00
        value = -round(rng.uniform(0.01, 1.5), 2) if t.hour in (13, 14) else round(rng.uniform(0.5, 30), 2)
        out.append(entsoe_row(t, f"{value:.2f}"))
    for t in hours(datetime(2023, 10, 28, 22), 9):          # autumn DST: 02:00 twice
        for _ in range(2 if t.hour == 2 else 1):
            out.append(entsoe_row(t, f"{price(rng, t.hour, 35, 30):.2f}"))
    return "".join(out)


def se3_2024(rng: random.Random) -> str:
    out = [ENTSOE_HEADER]
    for t in hours(datetime(2024, 10, 4, 18), 13):          # "n/e" from 00:00, then no currency
        if t.day == 4:
            out.append(entsoe_row(t, f"{price(rng, t.hour, 45, 70):.2f}"))
        else:
            out.append(entsoe_row(t, "n/e", "EUR" if t.hour < 2 else ""))
    return "".join(out)


def green(t: datetime, value: float) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S},{value!r}\n"


def delu_2023_excerpt(rng: random.Random) -> str:
    """Naive Berlin wall clock, 24 rows a day: a 02:00 row on the spring day (it does not
    exist), one 02:00 row on the autumn day (the second is missing); the -500 floor."""
    out = [GREEN_HEADER]
    for t in hours(datetime(2023, 3, 25, 22), 9):
        out.append(green(t, price(rng, t.hour, 42, 30)))
    floor_day = [-round(rng.uniform(60, 120), 2), -round(rng.uniform(150, 200), 2), -round(rng.uniform(250, 300), 2),
                 -500.0, -399.0, -round(rng.uniform(100, 150), 2), -round(rng.uniform(20, 50), 2)]
    for t, value in zip(hours(datetime(2023, 7, 2, 11), 7), floor_day):
        out.append(green(t, value))
    autumn = [75.0, 47.0, 14.0, 0.96, 0.015, -0.24, -0.28, -0.39, -0.36, -0.07]
    for t, value in zip(hours(datetime(2023, 10, 28, 22), 10), autumn):
        out.append(green(t, round(value + rng.uniform(-0.5, 0.5), 2) if abs(value) > 5 else value))
    return "".join(out)


def delu_2023_week33(rng: random.Random) -> str:
    """15-21.08.2023, 168 local hours around a 2023 breakeven: evening peaks above it."""
    out = [GREEN_HEADER]
    for t in hours(datetime(2023, 8, 15, 0), 168):
        weekend = t.weekday() >= 5
        out.append(green(t, price(rng, t.hour, 85 if weekend else 100, 60 if weekend else 95)))
    return "".join(out)


FILES = {
    "SE3_2023_entsoe_synthetic.csv": se3_2023,
    "SE3_2024_entsoe_synthetic.csv": se3_2024,
    "DE-LU_2023_synthetic.csv": delu_2023_excerpt,
    "DE-LU_2023_week33_synthetic.csv": delu_2023_week33,
}


def main() -> None:
    for seed, (name, make) in enumerate(FILES.items()):
        (HERE / name).write_text(make(random.Random(seed)), newline="")


if __name__ == "__main__":
    main()
