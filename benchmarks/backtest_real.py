"""The scheduler's back-test on a year of real prices: ten 20 J/TH ASIC sites, 2023 and 2024.

    .venv/bin/python benchmarks/backtest_real.py [PRICE_DIR] [--fleet ten|shipped]
                     [--years 2023 2024] [--coupling none budget target]
                     [--pjm-publication realtime|settled] [--min-hours H] [--no-bound]
                     [--plot-dir DIR] [--json] [--profile FILE]

PRICE_DIR holds `green-dcc/<REGION>_<YEAR>.csv` (HewlettPackard/green-dcc, the
"processed" files renamed; .csv.gz read as well) and `entsoe-sweden/SE4_<YEAR>_entsoe.csv`
(an ENTSO-E day-ahead export). gridminer ships only ERCOT, CAISO and NYISO
(deploy/examples/prices, used for them when PRICE_DIR lacks them); the other seven
markets' terms restrict redistribution, so fetch them yourself:
deploy/examples/sites-backtest-10.toml says from where. `--fleet shipped` runs the three
shipped sites alone (30 MW) and needs no PRICE_DIR. For each year it writes the sites
file of the experiment into a temporary folder (the fleet of sites-backtest-10.toml:
texas, california, virginia (PJM real-time market: its hourly price known from the
hour's start, or with --pjm-publication settled from its end), new-york, germany,
france, netherlands, spain, belgium, sweden-se4; 90 MW; 1 h minimum on and off time
(--min-hours); 25 USD per MW per start; levels 50-100 %), runs `miner backtest` on the
calendar year for each coupling, and prints the fleet tables and capture ratios:

    none     independent sites
    budget   a fleet power budget of 60 % of capacity (54 MW; 18 MW for --fleet shipped)
    target   a fleet hash-rate target of half the fleet (2.25 EH/s; 0.75 EH/s) at least cost

Hashprice: 2023 0.08, 2024 0.06 USD per TH/s per day (yearly averages; breakeven at
20 J/TH and 2 % fee: 163 and 122.5 USD/MWh). With --bound (default) the LP relaxation of
each coupled year gives a proven upper bound, so the windowed hindsight's distance from
the exact optimum is printed. Figures, not a pass/fail test.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

from miner.sched.backtest import format_report, run_backtest
from miner.sched.plot import plot_backtest
from miner.sched.sites import load_sites

HASHPRICE = {2023: 0.08, 2024: 0.06}            # USD per TH/s per day, yearly average
EUR_USD = {2023: 1.08, 2024: 1.08}
COUPLINGS = ("none", "budget", "target")
BUDGET_SHARE = 0.6                               # of the fleet's capacity
TARGET_SHARE = 0.5                               # of the fleet's full hash rate
EFFICIENCY_J_PER_TH = 20.0
START_COST_USD_PER_MW = 25.0

# name, file (under PRICE_DIR), market zone, clock of naive timestamps, currency, MW
SITES = [
    ("texas", "green-dcc/US-TEX-ERCO_{y}.csv", "America/Chicago", None, "USD", 15.0),
    ("california", "green-dcc/US-CAL-CISO_{y}.csv", "America/Los_Angeles", "UTC", "USD", 5.0),
    ("virginia", "green-dcc/US-MIDA-PJM_{y}.csv", "America/New_York", "UTC", "USD", 10.0),
    ("new-york", "green-dcc/US-NY-NYIS_{y}.csv", "America/New_York", "UTC", "USD", 10.0),
    ("germany", "green-dcc/DE-LU_{y}.csv", "Europe/Berlin", "Europe/Berlin", "EUR", 10.0),
    ("france", "green-dcc/FR_{y}.csv", "Europe/Paris", "Europe/Paris", "EUR", 10.0),
    ("netherlands", "green-dcc/NL_{y}.csv", "Europe/Amsterdam", "Europe/Amsterdam", "EUR", 10.0),
    ("spain", "green-dcc/ES_{y}.csv", "Europe/Madrid", "Europe/Madrid", "EUR", 10.0),
    ("belgium", "green-dcc/BE_{y}.csv", "Europe/Brussels", "Europe/Brussels", "EUR", 5.0),
    ("sweden-se4", "entsoe-sweden/SE4_{y}_entsoe.csv", "Europe/Stockholm", None, "EUR", 5.0),
]
SHIPPED_SITES = ("texas", "california", "new-york")    # their prices ship in deploy/examples/prices
FLEETS = {"ten": SITES, "shipped": [s for s in SITES if s[0] in SHIPPED_SITES]}


REPO = Path(__file__).resolve().parents[1]
SHIPPED_PRICES = REPO / "deploy" / "examples" / "prices"


def price_file(price_dir: Path, pattern: str, year: int) -> Path:
    """The file under price_dir, gzipped or not; else the shipped one, if it ships."""
    for folder in (price_dir, SHIPPED_PRICES):
        plain = folder / pattern.format(y=year)
        gz = plain.with_name(plain.name + ".gz")
        for path in (plain, gz):
            if path.is_file():
                return path
    return price_dir / pattern.format(y=year)


def coupling_toml(coupling: str, sites: list[tuple]) -> str:
    mw = sum(site[-1] for site in sites)
    if coupling == "budget":
        return f"[fleet]\npower_budget_mw = {BUDGET_SHARE * mw:g}\n"
    if coupling == "target":
        return f"[fleet]\nhashrate_target_ths = {TARGET_SHARE * mw * 1e6 / EFFICIENCY_J_PER_TH:.0f}\n"
    return ""


def sites_toml(price_dir: Path, year: int, coupling: str, pjm_publication: str = "realtime",
               min_hours: float = 1.0, sites: list[tuple] = SITES) -> str:
    out = [f"[economics]\nhashprice_usd_per_th_day = {HASHPRICE[year]}\npool_fee = 0.02\n",
           coupling_toml(coupling, sites)]
    for name, file, zone, clock, currency, mw in sites:
        path = price_file(price_dir, file, year)
        out.append(f'[[site]]\nname = "{name}"\nprices = "{path.as_posix()}"\ntimezone = "{zone}"\n')
        if clock:
            out.append(f'price_timezone = "{clock}"\n')
        if "PJM" in file:
            out.append(f'publication = "{pjm_publication}"\n')
        if currency != "USD":
            out.append(f'currency = "{currency}"\nusd_per_unit = {EUR_USD[year]}\n')
        out.append(f"capacity_mw = {mw}\nefficiency_j_per_th = 20.0\nadder_usd_per_mwh = 10.0\n"
                   f"min_on_hours = {min_hours:g}\nmin_off_hours = {min_hours:g}\nstart_cost_usd = {START_COST_USD_PER_MW * mw}\n"
                   "min_power_fraction = 0.5\n\n")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("price_dir", nargs="?", help="folder with green-dcc/ and entsoe-sweden/ "
                                                     "(default: the shipped deploy/examples/prices)")
    parser.add_argument("--fleet", choices=list(FLEETS), default="ten",
                        help="the ten sites of sites-backtest-10.toml, or the three whose prices ship")
    parser.add_argument("--years", nargs="+", type=int, default=[2023, 2024], choices=sorted(HASHPRICE))
    parser.add_argument("--coupling", nargs="+", default=list(COUPLINGS), choices=list(COUPLINGS))
    parser.add_argument("--pjm-publication", choices=("realtime", "settled"), default="realtime",
                        help="when the PJM real-time hour's price is known: its start (default) or end")
    parser.add_argument("--min-hours", type=float, default=1.0, help="minimum on and off time of every site")
    parser.add_argument("--no-bound", action="store_true", help="skip the LP upper bound of coupled years")
    parser.add_argument("--profile", metavar="FILE", help="run under cProfile, print the top functions, "
                                                           "save the stats to FILE")
    parser.add_argument("--plot-dir", help="write one PNG per run there")
    parser.add_argument("--site-tables", action="store_true", help="print every site's table too")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of all figures")
    args = parser.parse_args(argv)
    price_dir = Path(args.price_dir or SHIPPED_PRICES).resolve()
    sites = FLEETS[args.fleet]
    missing = [f.format(y=y) for y in args.years for _, f, *_ in sites if not price_file(price_dir, f, y).is_file()]
    if missing:
        print(f"missing price files under {price_dir}: {', '.join(missing)}. gridminer ships only ERCOT, "
              "CAISO and NYISO; deploy/examples/sites-backtest-10.toml says where to fetch the others "
              "(or run --fleet shipped)", file=sys.stderr)
        return 2
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for year in args.years:
            for coupling in args.coupling:
                path = Path(tmp) / f"sites-{year}-{coupling}.toml"
                path.write_text(sites_toml(price_dir, year, coupling, args.pjm_publication, args.min_hours, sites))
                profiler = cProfile.Profile() if args.profile else None
                t0 = time.perf_counter()
                if profiler:
                    profiler.enable()
                # workers=1 under the profiler: it sees only this process
                result = run_backtest(load_sites(path), f"{year}-01-01", f"{year + 1}-01-01",
                                      bound=coupling != "none" and not args.no_bound,
                                      workers=1 if profiler else None)
                seconds = time.perf_counter() - t0
                if profiler:
                    profiler.disable()
                    profiler.dump_stats(args.profile)
                    pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(25)
                pjm = f", PJM {args.pjm_publication}" if args.fleet == "ten" else ""
                print(f"\n===== {len(sites)} sites, {year}, coupling {coupling}: hashprice {HASHPRICE[year]} "
                      f"USD/TH/day{pjm} =====")
                print(format_report(result, per_site=args.site_tables))
                if args.plot_dir:
                    png = Path(args.plot_dir) / f"backtest-{year}-{coupling}.png"
                    png.parent.mkdir(parents=True, exist_ok=True)
                    plot_backtest(result, png)
                    print(f"plot: {png}")
                doc = result.to_json()
                summary.append({"year": year, "coupling": coupling, "seconds": round(seconds, 1),
                                "capture_ratio": result.capture_ratio,
                                "hindsight_bound_usd": result.hindsight_bound_usd,
                                "policies": {p: {k: v for k, v in f.items() if k != "sites"}
                                             for p, f in doc["policies"].items()}})
    print(f"\nminimum on/off {args.min_hours:g} h; seconds = the whole back-test (5 policies, "
          "gridminer and hindsight in parallel on 2 cores)")
    print("year  coupling  capture  violations (all policies)  seconds")
    for row in summary:
        viol = sum(p["violations"] for p in row["policies"].values())
        cr = row["capture_ratio"]
        print(f"{row['year']}  {row['coupling']:8s}  {cr:.3f}    {viol:<25d}  {row['seconds']:.1f}"
              if cr is not None else f"{row['year']}  {row['coupling']}  -")
    if args.json:
        print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
