"""Back-test: replay real price files through every policy, hour by hour, and account.

    miner backtest SITES.toml [--from DATE --to DATE] [--plot FILE.png] [--json] [--policies ...]

The simulation runs on the UTC hour grid over [from, to). Each policy decides each hour
at its start from the prices published by then (day-ahead prices the day before, a
real-time market's hour once settled), exactly as the live scheduler would; the
hindsight bound sees every actual price of the period at once and honours the same
constraints (see `optimize` for how exact it is).

Accounting, the same for every policy:
* energy (MWh) = level x capacity per hour; revenue = energy x breakeven (that is the
  hash rate x hashprice x (1 - fee) / 24, at the hashprice in force that hour);
  energy cost = energy x the hour's actual all-in price; start costs per off -> on.
* An hour without a price in the data is charged at the last known price before it
  (the first known after it at the very start); it is counted in `hours_without_price`.
  Whether a site runs then is decided as live: the last price within its TTL, or else
  its fail-safe ("curtail": off unless its min on time binds; "hold": keep the level).
  The hindsight bound obeys the same fail-safe hours.
* Violations are counted per site and hour (min on, min off, ramp, demand response,
  fail-safe, level range) and per fleet hour (budget exceeded, target not met).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from miner.sched.economics import HashpriceError, breakeven_usd_per_mwh
from miner.sched.model import UTC, PriceInterval, SiteSpec
from miner.sched.price_files import source_of_file, utc_datetime
from miner.sched.optimize import (Problem, Schedule, Unit, UnitState, VIOLATION_KINDS, fleet_slack,
                                  site_violations, solve, solve_milp, warm_up_fleet_bound)
from miner.sched.policy import (HOUR_S, LOOKBACK_H, MAX_HORIZON_H, POLICY_NAMES, PriceBook, current_price,
                                make_policy)
from miner.sched.sites import FleetSpec, SitesError, load_sites
from miner.stopping import run_stoppable

ALL_POLICIES = POLICY_NAMES + ("hindsight",)
# Hindsight windows for coupled fleets and ramp-limited sites (the rest: one exact DP per
# site): each solve covers window + overlap hours and keeps the first `window`. On the
# 10-site year, 48 + 24 is within 0.001 % of 168 + 48 and 25 % faster.
HINDSIGHT_WINDOW_H = 48
HINDSIGHT_OVERLAP_H = 24
# `miner backtest` tells how far its jobs are this long after the start, then this often.
PROGRESS_FIRST_S = 2.0
PROGRESS_EVERY_S = 5.0
ProgressFn = Callable[[float], None]


# Said when price files are missing: which ship, and where the others come from.
PRICE_DATA_SHIPPED = (
    "Only ERCOT, CAISO and NYISO prices (2023-2024) ship with gridminer, in "
    "deploy/examples/prices/ (its README.md says why the others do not). Paths in a sites "
    "file are relative to the sites file; .csv.gz files are read as they are.")
PRICE_DATA_SOURCES = (
    "Real price files: the \"processed\" files of github.com/HewlettPackard/green-dcc "
    "(data/electricity_prices/processed/<REGION>/<YEAR>/) or ENTSO-E Transparency Platform "
    "day-ahead price exports.")


def missing_price_files_error(missing: Sequence[tuple[str, Path]]) -> str:
    """One error for every site whose price file is missing: each file, where to get it."""
    lines = [f"site {name!r}: no price file {path}" + (f"; get it from {source}"
                                                       if (source := source_of_file(path)) else "")
             for name, path in missing]
    if len(missing) > 1:
        lines = [f"{len(missing)} sites have no price file:"] + [f"  {line}" for line in lines]
    if not all(source_of_file(path) for _, path in missing):
        lines.append(PRICE_DATA_SOURCES)
    return "\n".join(lines + [PRICE_DATA_SHIPPED])


class BacktestError(ValueError):
    """The back-test cannot run: no price file for a site, an empty period, no hashprice."""


# ---------------------------------------------------------------------------
# Prices


def replay_feed(fleet: FleetSpec, site: SiteSpec) -> dict | None:
    """The site's price file table: its `prices =` file, else a csv [site.feed]."""
    feed = fleet.replay.get(site.name)
    return site.feed if feed is None and site.feed.get("kind") == "csv" else feed


def replay_path(fleet: FleetSpec, feed: Mapping) -> Path:
    path = Path(feed["path"])
    return path if path.is_absolute() else fleet.base_dir / path


def load_replay_prices(fleet: FleetSpec, site: SiteSpec) -> list[PriceInterval]:
    """The site's price file as intervals, publication times made honest for a back-test.

    Day-ahead prices are stamped as published at the market's local publication time in
    the market zone (feeds.csv_market_timezone: the site's `timezone`), as the live csv
    feed does: a file written in naive UTC (CAISO, NYISO) is not stamped by the UTC day."""
    from miner.sched.feeds import csv_market_timezone, load_price_csv

    feed = replay_feed(fleet, site)
    if feed is None:
        raise BacktestError(f"site {site.name!r}: no price file to replay (give prices = \"FILE.csv\")")
    path = replay_path(fleet, feed)
    publication = feed.get("publication") or "day_ahead"
    if not path.is_file():
        raise BacktestError(missing_price_files_error([(site.name, path)]))
    # Keys named as a sites file names them (a [site.feed] table has its own names).
    keys = ({"clock_key": "price_timezone", "zone_key": "timezone"} if site.name in fleet.replay
            else {})
    try:
        return load_price_csv(path, timezone=feed.get("timezone"), currency=site.currency,
                              publication=publication, published_local=feed.get("published_local"),
                              market_timezone=csv_market_timezone(feed, site), **keys)
    except OSError as exc:
        raise BacktestError(f"site {site.name!r}: cannot read price file {path}: {exc}") from exc
    except ValueError as exc:
        raise BacktestError(f"site {site.name!r}: {exc}") from exc


def coverage(intervals_by_site: Mapping[str, Sequence[PriceInterval]]) -> tuple[datetime, datetime]:
    """The period every site has prices for: [latest first start, earliest last end)."""
    firsts = [ivs[0].start for ivs in intervals_by_site.values() if ivs]
    lasts = [ivs[-1].end for ivs in intervals_by_site.values() if ivs]
    if not firsts or len(firsts) < len(intervals_by_site):
        raise BacktestError("a site has no prices at all")
    return max(firsts), min(lasts)


def _forward_fill(a: np.ndarray) -> np.ndarray:
    """NaNs replaced by the last value before them (the first value after, at the start)."""
    out = a.copy()
    for row in out:
        idx = np.where(~np.isnan(row), np.arange(len(row)), -1)
        np.maximum.accumulate(idx, out=idx)
        have = idx >= 0
        row[have] = row[idx[have]]
        if (~have).any() and have.any():
            row[~have] = row[np.flatnonzero(have)[0]]
    return out


# ---------------------------------------------------------------------------
# Results


@dataclass
class PolicyResult:
    name: str
    levels: np.ndarray                 # (S, N) fraction of capacity per site and hour
    sites: list[dict]                  # per-site figures
    fleet: dict                        # fleet figures
    seconds: float
    replans: int = 0
    method: str = ""                   # hindsight: how it was solved
    notes: list[str] = field(default_factory=list)


@dataclass
class BacktestResult:
    start: datetime
    end: datetime
    site_names: list[str]
    policies: dict[str, PolicyResult]
    price_usd: np.ndarray              # (S, N) actual all-in USD/MWh (NaN: none in the data)
    breakeven_usd: np.ndarray          # (S, N)
    capture_ratio: float | None
    coupling: str
    hours_without_price: list[int]
    capacity_mw: np.ndarray = field(default_factory=lambda: np.zeros(0))
    hindsight_bound_usd: float | None = None   # LP relaxation of the whole period (bound=True)
    notes: list[str] = field(default_factory=list)
    # sites whose every hour's price was published before the hour began (day-ahead
    # markets): a decision there knows the hour's real price, as hindsight does
    known_before_sites: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        pol = {}
        for name, r in self.policies.items():
            entry = dict(r.fleet)
            entry["sites"] = {s["site"]: {k: v for k, v in s.items() if k != "site"} for s in r.sites}
            entry["seconds"] = round(r.seconds, 3)
            if r.method:
                entry["method"] = r.method
            pol[name] = entry
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "hours": self.price_usd.shape[1],
                "coupling": self.coupling, "policies": pol, "capture_ratio": self.capture_ratio,
                "hours_without_price": dict(zip(self.site_names, self.hours_without_price)),
                "hindsight_bound_usd": self.hindsight_bound_usd,
                "prices_known_before_the_hour": self.known_before_sites,
                "notes": self.notes, "seconds": round(self.seconds, 3)}


# ---------------------------------------------------------------------------
# The simulation


def run_backtest(fleet: FleetSpec, start: datetime | date | str | None = None,
                 end: datetime | date | str | None = None, policies: Sequence[str] = ALL_POLICIES, *,
                 prices: Mapping[str, Sequence[PriceInterval]] | None = None,
                 hindsight_window_h: int = HINDSIGHT_WINDOW_H,
                 hindsight_overlap_h: int = HINDSIGHT_OVERLAP_H, workers: int | None = None,
                 bound: bool = False, progress: Callable[[str], None] | None = None) -> BacktestResult:
    """Simulate `policies` over [start, end) (default: the span every price file covers).
    `prices`: the sites' intervals, if already loaded (else from their price files).
    `workers`: processes for the policies and the hindsight bound (default: up to 2, the
    CPUs this process may use; 1 runs everything here). The results do not depend on it.
    `bound`: also solve the LP relaxation of the whole period (a proven upper bound on the
    hindsight optimum: how far a windowed hindsight can be from exact; seconds to minutes).
    `progress`: called with a line saying how far each policy is, every few seconds while
    they run in worker processes."""
    t_begin = time.perf_counter()
    unknown = [p for p in policies if p not in ALL_POLICIES]
    if unknown:
        raise BacktestError(f"unknown policy {unknown[0]!r}; choose from {', '.join(ALL_POLICIES)}")
    sites = fleet.sites
    if prices is None:
        missing = [(s.name, path) for s in sites if (feed := replay_feed(fleet, s)) is not None
                   and not (path := replay_path(fleet, feed)).is_file()]
        if missing:
            raise BacktestError(missing_price_files_error(missing))
        prices = {s.name: load_replay_prices(fleet, s) for s in sites}
    first, last = coverage({s.name: prices.get(s.name, ()) for s in sites})
    start_dt = utc_datetime(start) if start is not None else first
    end_dt = utc_datetime(end) if end is not None else last
    start_s = math.ceil(start_dt.timestamp() / HOUR_S) * HOUR_S
    end_s = math.floor(end_dt.timestamp() / HOUR_S) * HOUR_S
    n = int((end_s - start_s) // HOUR_S)
    if n <= 0:
        raise BacktestError(f"empty period {start_dt.isoformat()} .. {end_dt.isoformat()}")
    book = PriceBook.build(sites, prices, start_s - LOOKBACK_H * HOUR_S, LOOKBACK_H + n + MAX_HORIZON_H + 1)
    j0, j1 = LOOKBACK_H, LOOKBACK_H + n
    try:
        hashprice = _hourly_hashprice(fleet, start_s, n)
    except (HashpriceError, SitesError) as exc:
        raise BacktestError(str(exc)) from exc
    fee = fleet.economics.pool_fee
    eff = np.array([s.efficiency_j_per_th for s in sites])
    breakeven = breakeven_usd_per_mwh(hashprice[None, :], fee, eff[:, None])
    actual = book.usd[:, j0:j1]
    missing = np.isnan(actual)
    charged = _forward_fill(actual)
    if np.isnan(charged).any():
        bad = [s.name for s, row in zip(sites, charged) if np.isnan(row).all()]
        raise BacktestError(f"no price at all in the period for site(s) {', '.join(bad)}")
    units = [Unit.of(s) for s in sites]
    init = [UnitState() for _ in sites]
    forced = book.forced[:, j0:j1]

    hour_starts = book.start_s + np.arange(j0, j1) * HOUR_S
    published = book.published[:, j0:j1]
    known_before = [s.name for i, s in enumerate(sites)
                    if np.all(np.isnan(published[i]) | (published[i] < hour_starts))]
    price_seen = seen_prices(book, sites, j0, j1)
    unseen = np.isnan(price_seen)
    curtail = unseen & np.array([s.fail_safe == "curtail" for s in sites])[:, None]
    hold = unseen & ~curtail
    problem = Problem(units, init, breakeven - charged, forced, curtail, hold,
                      budget_mw=fleet.power_budget_mw, target_ths=fleet.hashrate_target_ths)
    # The jobs, longest first: gridminer and hindsight in parallel when there are two cores.
    jobs: list[tuple[str, tuple]] = []
    if "gridminer" in policies:
        jobs.append(("policy", (fleet, "gridminer", book, hashprice, init, j0, j1)))
    if "hindsight" in policies:
        jobs.append(("hindsight", (problem, hindsight_window_h, hindsight_overlap_h)))
        if bound:
            jobs.append(("bound", (problem,)))
    for name in policies:
        if name not in ("gridminer", "hindsight"):
            jobs.append(("policy", (fleet, name, book, hashprice, init, j0, j1)))
    results: dict[str, PolicyResult] = {}
    notes: list[str] = []
    lp: Schedule | None = None
    labels = [args[1] if kind == "policy" else "hindsight" if kind == "hindsight" else "LP bound"
              for kind, args in jobs]

    def report(shares: list[float | None]) -> None:
        progress("back-test: " + ", ".join(
            f"{label} {'queued' if x is None else 'done' if x >= 1.0 else 'running' if kind == 'bound' else f'{x:.0%}'}"
            for label, (kind, _), x in zip(labels, jobs, shares)))

    if workers != 1 and ("gridminer" in policies or "hindsight" in policies):
        _warm_up_in_parent(problem, progress)
    for (kind, _), out in zip(jobs, _run_jobs(jobs, workers, report if progress is not None else None)):
        if kind == "bound":
            lp = out
        else:
            results[out.name] = out
    results = {name: results[name] for name in policies}
    if "hindsight" in results:
        notes += results["hindsight"].notes
        method = results["hindsight"].method
        if "windowed" in method:
            notes.append(f"hindsight solved in {hindsight_window_h} h windows with {hindsight_overlap_h} h "
                         "overlap: feasible, not proven optimal (benchmarks/README.md gives the gap)")

    lp_bound = None
    if lp is not None:
        short, excess = fleet_slack(problem, lp.level)
        tol = 1e-6 * max(problem.target_ths or 1.0, 1.0)
        if not lp.notes and np.all(short <= tol) and np.all(excess <= 1e-6):
            lp_bound = lp.profit_usd
        else:
            notes.append("LP bound not reported: " + ("; ".join(lp.notes) or "the relaxation used fleet slack"))
    for r in results.values():
        r.sites, r.fleet = _account(problem, sites, r.levels, charged, breakeven, actual, missing)
    capture = None
    if {"always_on", "gridminer", "hindsight"} <= results.keys():
        ao = results["always_on"].fleet["profit_usd"]
        hs = results["hindsight"].fleet["profit_usd"]
        gm = results["gridminer"].fleet["profit_usd"]
        capture = (gm - ao) / (hs - ao) if abs(hs - ao) > 1e-9 else None
        if gm > hs + 1e-6 * max(abs(hs), 1.0):
            notes.append("gridminer beat the hindsight schedule: the windowed hindsight is not optimal here")
    coupling = ("power budget %g MW" % fleet.power_budget_mw if fleet.power_budget_mw is not None else "") + \
        (" hash-rate target %g TH/s" % fleet.hashrate_target_ths if fleet.hashrate_target_ths is not None else "")
    return BacktestResult(start=datetime.fromtimestamp(start_s, UTC), end=datetime.fromtimestamp(end_s, UTC),
                          site_names=[s.name for s in sites], policies=results, price_usd=actual,
                          breakeven_usd=breakeven, capture_ratio=capture, coupling=coupling.strip() or "none",
                          hours_without_price=[int(m.sum()) for m in missing],
                          capacity_mw=np.array([s.capacity_mw for s in sites]), notes=notes,
                          hindsight_bound_usd=lp_bound, known_before_sites=known_before,
                          seconds=time.perf_counter() - t_begin)


def seen_prices(book: PriceBook, sites: Sequence[SiteSpec], j0: int, j1: int) -> np.ndarray:
    """(S, N) the price each hour's decision sees (NaN: none, the fail-safe applies). It
    depends on the data and the TTL only, so it is the same for every policy."""
    out = np.full((len(sites), j1 - j0), np.nan)
    for i, s in enumerate(sites):
        for j in range(j0, j1):
            out[i, j - j0] = current_price(book, i, j, book.start_s + j * HOUR_S, s.price_ttl_seconds)[0]
    return out


def _policy_job(fleet: FleetSpec, name: str, book: PriceBook, hashprice: np.ndarray, init, j0: int,
                j1: int, *, on_progress: ProgressFn | None = None) -> PolicyResult:
    t0 = time.perf_counter()
    run = make_policy(fleet, name).run(book, hashprice, init, j0, j1, on_progress=on_progress)
    return PolicyResult(name=name, levels=run.levels, sites=[], fleet={}, seconds=time.perf_counter() - t0,
                        replans=run.replans)


def _hindsight_job(problem: Problem, window: int, overlap: int, *,
                   on_progress: ProgressFn | None = None) -> PolicyResult:
    t0 = time.perf_counter()
    sched = solve(problem, window=window, overlap=overlap, on_progress=on_progress)
    return PolicyResult(name="hindsight", levels=sched.level, sites=[], fleet={},
                        seconds=time.perf_counter() - t0, method=sched.method, notes=list(sched.notes))


def _bound_job(problem: Problem, *, on_progress: ProgressFn | None = None) -> Schedule:
    return solve_milp(problem, relax=True, time_limit_s=600.0)   # one HiGHS call: no progress to tell


def _warm_up_in_parent(problem: Problem, progress: Callable[[str], None] | None) -> None:
    """Compile (or load from numba's cache) the bounded fleet DP here, once, before the
    workers fork and inherit it, instead of in both of them; a line says so if it takes
    longer than PROGRESS_FIRST_S (the first run after an install: ~12 s)."""
    timer = None
    if progress is not None:
        timer = threading.Timer(PROGRESS_FIRST_S, progress, args=(
            "back-test: compiling the bounded fleet DP for this budget fleet (numba, ~12 s on the first "
            "run; later runs load it from numba's cache)",))
        timer.daemon = True
        timer.start()
    try:
        warm_up_fleet_bound(problem)
    finally:
        if timer is not None:
            timer.cancel()
            timer.join()        # gone before the fork (it may hold stderr's lock while printing)


_JOBS = {"policy": _policy_job, "hindsight": _hindsight_job, "bound": _bound_job}
# Share of each job done, written by the workers (set in each by _worker_init).
_done_shares = None


def _job(kind: str, index: int, args: tuple):
    def on_progress(share: float) -> None:
        _done_shares[index] = share

    on_progress(0.0)   # started
    return _JOBS[kind](*args, on_progress=on_progress)


def _run_jobs(jobs: list[tuple[str, tuple]], workers: int | None,
              progress: Callable[[list[float | None]], None] | None = None) -> list:
    """Each job's result, in order. workers=1: all in this process (for a profiler).
    Otherwise in forked worker processes (up to 2, the CPUs this process may use), even on
    one CPU: this process only waits, so SIGINT or SIGTERM (miner.stopping) reaches it at once
    and the workers are terminated, never left computing (a HiGHS call cannot be
    interrupted from Python). `progress` gets each job's share done (1.0 when finished,
    None when not started) PROGRESS_FIRST_S after the start, then every PROGRESS_EVERY_S."""
    if workers == 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [_JOBS[kind](*args) for kind, args in jobs]
    if workers is None:
        workers = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    workers = max(1, min(workers, len(jobs)))
    ctx = multiprocessing.get_context("fork")
    shares = ctx.RawArray("d", [-1.0] * len(jobs))
    # fork: the workers inherit the loaded prices, imported modules and the compiled bounded
    # fleet DP (_warm_up_in_parent); nothing has run HiGHS in this process, and no thread is
    # left running
    pool = ctx.Pool(workers, initializer=_worker_init, initargs=(shares,))
    try:
        pending = [pool.apply_async(_job, (kind, i, args)) for i, (kind, args) in enumerate(jobs)]
        report = time.monotonic() + PROGRESS_FIRST_S
        for p in pending:
            while not p.ready():
                p.wait(max(0.05, report - time.monotonic()))
                if time.monotonic() >= report:
                    if progress is not None:
                        progress([1.0 if q.ready() else (None if shares[i] < 0 else shares[i])
                                  for i, q in enumerate(pending)])
                    report += PROGRESS_EVERY_S
        out = [p.get() for p in pending]
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()
    return out


def _worker_init(shares) -> None:
    """A worker leaves SIGINT to the parent (which terminates it), dies at SIGTERM, and
    writes its jobs' progress into the shared array."""
    global _done_shares
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _done_shares = shares


def fleet_power_mw(result: BacktestResult, policy: str) -> np.ndarray:
    """The fleet's power per hour under a policy."""
    return (result.policies[policy].levels * result.capacity_mw[:, None]).sum(axis=0)


def _hourly_hashprice(fleet: FleetSpec, start_s: float, n: int) -> np.ndarray:
    econ = fleet.economics
    if econ.hashprice_series is not None:
        return econ.hashprice_series.hourly(start_s, n)
    if econ.hashprice_usd_per_th_day is not None:
        return np.full(n, econ.hashprice_usd_per_th_day)
    raise BacktestError("the back-test needs [economics] hashprice_usd_per_th_day or hashprice_file")


def _account(problem: Problem, sites: Sequence[SiteSpec], levels: np.ndarray, charged: np.ndarray,
             breakeven: np.ndarray, actual: np.ndarray, missing: np.ndarray) -> tuple[list[dict], dict]:
    caps = np.array([s.capacity_mw for s in sites])[:, None]
    energy = levels * caps
    cost = energy * charged
    revenue = energy * breakeven
    on = levels > 0
    prev = np.concatenate([np.zeros((len(sites), 1), bool), on[:, :-1]], axis=1)
    starts = (on & ~prev).sum(axis=1)
    start_costs = starts * np.array([s.start_cost_usd for s in sites])
    per_site = []
    total_viol = dict.fromkeys(VIOLATION_KINDS, 0)
    for i, s in enumerate(sites):
        v = site_violations(problem.units[i], problem.init[i], levels[i], problem.forced_off[i],
                            problem.curtail[i], problem.hold[i])
        for k, c in v.items():
            total_viol[k] += c
        e = float(energy[i].sum())
        per_site.append({
            "site": s.name,
            "profit_usd": round(float(revenue[i].sum() - cost[i].sum() - start_costs[i]), 2),
            "revenue_usd": round(float(revenue[i].sum()), 2),
            "energy_cost_usd": round(float(cost[i].sum()), 2),
            "start_costs_usd": round(float(start_costs[i]), 2),
            "energy_mwh": round(e, 3),
            "avg_price_paid_usd_per_mwh": round(float(cost[i].sum()) / e, 2) if e > 0 else None,
            "site_avg_price_usd_per_mwh": round(float(np.nanmean(actual[i])), 2) if (~missing[i]).any() else None,
            "uptime": round(float(on[i].mean()), 4),
            "starts": int(starts[i]),
            "violations": int(sum(v.values())),
            "violations_by_kind": {k: c for k, c in v.items() if c},
        })
    short, excess = fleet_slack(problem, levels)
    total_viol["budget"] = int(np.sum(excess > 1e-6))
    total_viol["target"] = int(np.sum(short > 1e-6 * max(problem.target_ths or 1.0, 1.0)))
    e = float(energy.sum())
    fleet = {
        "profit_usd": round(sum(s["profit_usd"] for s in per_site), 2),
        "revenue_usd": round(float(revenue.sum()), 2),
        "energy_cost_usd": round(float(cost.sum()), 2),
        "start_costs_usd": round(float(start_costs.sum()), 2),
        "energy_mwh": round(e, 3),
        "avg_price_paid_usd_per_mwh": round(float(cost.sum()) / e, 2) if e > 0 else None,
        "site_avg_price_usd_per_mwh": round(float(np.nanmean(actual)), 2),
        "uptime": round(float(on.mean()), 4),
        "starts": int(starts.sum()),
        "violations": int(sum(total_viol.values())),
        "violations_by_kind": {k: c for k, c in total_viol.items() if c},
    }
    return per_site, fleet


# ---------------------------------------------------------------------------
# Output

COLUMNS = (("profit_usd", "profit USD", "{:,.0f}"), ("revenue_usd", "revenue USD", "{:,.0f}"),
           ("energy_cost_usd", "energy USD", "{:,.0f}"), ("energy_mwh", "MWh", "{:,.0f}"),
           ("avg_price_paid_usd_per_mwh", "paid $/MWh", "{:.2f}"),
           ("site_avg_price_usd_per_mwh", "avg $/MWh", "{:.2f}"), ("uptime", "uptime", "{:.1%}"),
           ("starts", "starts", "{:d}"), ("violations", "viol.", "{:d}"))


def _table(title: str, rows: list[tuple[str, dict]]) -> str:
    head = ["policy"] + [c[1] for c in COLUMNS]
    body = []
    for name, figures in rows:
        cells = [name]
        for key, _, fmt in COLUMNS:
            value = figures.get(key)
            cells.append("-" if value is None else fmt.format(value))
        body.append(cells)
    widths = [max(len(r[k]) for r in [head] + body) for k in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([title, line(head), line(["-" * w for w in widths])] + [line(r) for r in body])


def format_report(result: BacktestResult, per_site: bool = True) -> str:
    out = [f"back-test {result.start:%Y-%m-%d %H:%M} .. {result.end:%Y-%m-%d %H:%M} UTC "
           f"({result.price_usd.shape[1]} h, {len(result.site_names)} sites, coupling: {result.coupling})"]
    if per_site:
        for i, name in enumerate(result.site_names):
            rows = [(p, r.sites[i]) for p, r in result.policies.items()]
            extra = f", {result.hours_without_price[i]} h without price" if result.hours_without_price[i] else ""
            out.append("")
            out.append(_table(f"site {name}{extra}", rows))
    out.append("")
    out.append(_table("fleet", [(p, r.fleet) for p, r in result.policies.items()]))
    if result.capture_ratio is not None:
        out.append(f"\ncapture ratio (gridminer - always_on) / (hindsight - always_on): {result.capture_ratio:.3f}")
        out.append(capture_explanation(result))
    timing = ", ".join(f"{p} {r.seconds:.1f}s" for p, r in result.policies.items())
    out.append(f"time: {result.seconds:.1f}s ({timing})")
    if "hindsight" in result.policies:
        out.append(f"hindsight method: {result.policies['hindsight'].method}")
        if result.hindsight_bound_usd is not None:
            hs = result.policies["hindsight"].fleet["profit_usd"]
            gap = (result.hindsight_bound_usd - hs) / abs(result.hindsight_bound_usd)
            out.append(f"whole-period LP bound: {result.hindsight_bound_usd:,.0f} USD: the hindsight schedule is "
                       f"at most {gap:.4%} below the exact optimum")
    out.extend(f"note: {n}" for n in result.notes)
    return "\n".join(out)


def capture_explanation(result: BacktestResult) -> str:
    """Why the capture ratio is what it is: a ratio of 1 at day-ahead sites is no bug."""
    known = result.known_before_sites
    rest = [n for n in result.site_names if n not in known]
    if not known:
        return ("  (no site's prices were known before their hour: gridminer plans on forecasts, "
                "hindsight on the real prices)")
    head = ("  all sites" if not rest else f"  {len(known)} of {len(result.site_names)} sites") + \
        " have day-ahead prices: each hour's price is published the day before, so gridminer " \
        "decides on the same prices hindsight sees"
    if not rest:
        return head + "; it can differ only where its rolling plan ends before the published prices do"
    return head + f"; the gap comes from {', '.join(rest)}, whose prices are known only as the hour " \
        "runs (real-time), and from the end of the rolling horizon"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `miner backtest` arguments (shared by `python -m miner.sched.backtest`)."""
    parser.add_argument("sites", metavar="SITES.toml", help="sites file (prices = paths relative to it)")
    parser.add_argument("--from", dest="start", metavar="DATE",
                        help="first hour, ISO date or date-time (naive = UTC); default: start of the prices")
    parser.add_argument("--to", dest="end", metavar="DATE",
                        help="end (exclusive), ISO date or date-time; default: end of the prices")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="write FILE.png (the period at a glance: monthly profit and uptime per site, "
                             "price duration curves against breakeven, fleet power) and FILE-detail.png "
                             "(hourly prices, breakeven and power levels over --plot-window)")
    parser.add_argument("--plot-window", nargs=2, metavar=("FROM", "TO"),
                        help="the detail plot's period, ISO dates or date-times (naive = UTC); "
                             "default: the first 7 days")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object holding every figure on stdout, the tables on stderr")
    parser.add_argument("--policies", metavar="NAME", nargs="+", default=list(ALL_POLICIES),
                        help=f"policies to run (default: all of {' '.join(ALL_POLICIES)}); "
                             "the capture ratio needs always_on, gridminer and hindsight")
    parser.add_argument("--no-site-tables", action="store_true", help="print the fleet table only")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(
        prog="miner backtest", description="Replay price files through the policies and compare them "
                                           "with always-on and the hindsight optimum."))
    args = parser.parse_args(argv)
    return run_cli(args)


def run_cli(args: argparse.Namespace) -> int:
    """Run a parsed `miner backtest` command line; 0 ok, 2 bad input, 128 + the signal's
    number when SIGINT or SIGTERM stops it (at once: the work runs in worker processes,
    which are terminated)."""
    return run_stoppable("miner backtest", lambda: _run_cli(args))


def _run_cli(args: argparse.Namespace) -> int:
    policies = []
    for p in args.policies:
        policies += [x for x in p.split(",") if x]
    try:
        for when in args.plot_window or ():
            utc_datetime(when)           # a bad date fails before the run, not after it
        fleet = load_sites(args.sites)
        t0 = time.monotonic()

        def progress(line: str) -> None:    # stderr: with --json stdout is the JSON alone
            print(f"[{time.monotonic() - t0:5.1f} s] {line}", file=sys.stderr, flush=True)

        result = run_backtest(fleet, args.start, args.end, policies, progress=progress)
    except (SitesError, BacktestError) as exc:
        print(f"miner backtest: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:   # a date that does not parse
        print(f"miner backtest: {exc}", file=sys.stderr)
        return 2
    # With --json stdout carries the JSON alone (for jq and json.tool); the tables go to stderr.
    human = sys.stderr if args.json else sys.stdout
    print(format_report(result, per_site=not args.no_site_tables), file=human)
    if args.plot:
        from miner.sched.plot import plot_backtest

        try:
            written = plot_backtest(result, args.plot, window=args.plot_window)
        except (ValueError, OSError) as exc:     # a window outside the period, an unwritable path
            print(f"miner backtest: --plot: {exc}", file=sys.stderr)
            return 2
        for path in written:
            print(f"plot written to {path}", file=human)
    if args.json:
        print(json.dumps(result.to_json(), separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
