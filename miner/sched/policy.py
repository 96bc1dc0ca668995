"""Policies: from sites' states, published prices, the time and the hashprice, a power
level per site for the hour that contains `now`, each with its reason.

Time runs in slots of one UTC hour; a decision at `now` holds for the slot
[floor_hour(now), +1 h). Prices are turned into hourly arrays (`PriceBook`); the price a
decision sees for its own slot is the slot's price if already published, else the latest
published price whose interval ended no more than the site's TTL ago (a real-time market
whose hour is settled at its end is steered by the last settled hour), else nothing: the
site's fail-safe (curtail, or hold its level), reason "price_missing", never breaking its
minimum on time.

Every policy has two entry points that share one code path (`_step`):
* `decide(states, prices, now, hashprice)`: the live scheduler's call (the `Policy`
  protocol of model.py);
* `run(book, hashprice, init, first, last)`: the back-test's loop over a period, the
  same decisions hour after hour without rebuilding arrays from intervals.

Policies:
* AlwaysOn: every site on at full power (a power budget: a fixed, price-blind share).
* Threshold: on while the price is below breakeven.
* Hysteresis: the strike-price rule with a dead band and dwell times.
* GridminerPolicy: per site, the exact optimum over known prices (+ a forecast tail),
  re-planned whenever new prices are published; for a coupled fleet the HiGHS MILP over
  the rolling horizon and a merit-order dispatch for the current hour.
All honour min on/off times, ramps, demand response and the fleet budget or target (a
baseline that breaks constraints would flatter itself); the back-test counts breaches.
"""

from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Mapping, Sequence

import numpy as np

from miner.sched.economics import breakeven_usd_per_mwh
from miner.sched.feeds import hourly_array
from miner.sched.model import (REASONS, UTC, Plan, PriceInterval, SiteDecision, SiteSpec, SiteState)
from miner.sched.optimize import (LONG_AGO_SLOTS, Problem, Unit, UnitState, solve_coupled, solve_milp,
                                  solve_site_dp)

log = logging.getLogger(__name__)

HOUR_S = 3600
LOOKBACK_H = 7 * 24       # history a forecast may draw on: the same hour up to a week back
TAIL_H = 24               # forecast hours planned beyond the last published price
MAX_HORIZON_H = 72        # longest plan; day-ahead markets publish at most ~35 h ahead
# A fleet plan (one MILP) is kept while the next FLEET_PLAN_CHECK_H hours of its inputs are
# unchanged and its sites are where it said; prices published for later hours wait for
# the next plan. A 10-site MILP costs 20-40 ms; re-planning at each publication of four
# markets publishing at different times of day would cost four MILPs a day instead of ~2.
FLEET_PLAN_CHECK_H = 6
FLEET_TAIL_H = 6          # forecast hours in a fleet plan: it is re-made before they matter
FLEET_MAX_HORIZON_H = 24  # longest fleet plan: MILP time grows with it; 24 h lost 0.003 % of profit vs 36 h
LEVEL_TOL = 1e-9
REASON_INDEX = {r: i for i, r in enumerate(REASONS)}
POLICY_NAMES = ("always_on", "threshold", "hysteresis", "gridminer")


def floor_hour_s(t_s: float) -> float:
    return math.floor(t_s / HOUR_S) * HOUR_S


def fleet_units(sites: Sequence[SiteSpec]) -> list[Unit]:
    return [Unit.of(s) for s in sites]


# ---------------------------------------------------------------------------
# Prices on the hour grid


@dataclass
class PriceBook:
    """Hourly all-in USD prices of every site on one grid: index j is the hour starting at
    start_s + 3600 j. NaN price: none in the data; `published` NaN likewise."""

    start_s: float
    usd: np.ndarray            # (S, N) all-in USD/MWh (feed price x usd_per_unit + adder)
    published: np.ndarray     # (S, N) Unix seconds when each hour's price became known
    forced: np.ndarray        # (S, N) bool: the hour overlaps a demand-response window
    # Live decisions: the price of the interval covering `now` (a 5-minute price, not the
    # hour's average so far) for slot live_j, NaN where stale or missing (see live_price)
    live_j: int | None = None
    live_usd: np.ndarray | None = None

    @property
    def hours(self) -> int:
        return self.usd.shape[1]

    @classmethod
    def build(cls, sites: Sequence[SiteSpec], prices: Mapping[str, Sequence[PriceInterval]],
              start_s: float, hours: int) -> "PriceBook":
        """From each site's intervals (sorted by start), on [start_s, start_s + hours h)."""
        start = datetime.fromtimestamp(start_s, UTC)
        end = start + timedelta(hours=hours)
        usd = np.full((len(sites), hours), np.nan)
        pub = np.full((len(sites), hours), np.nan)
        for i, site in enumerate(sites):
            ivs = prices.get(site.name, ())
            # only the intervals that can touch the window (hourly_array walks what it gets)
            a = bisect.bisect_left(ivs, start - timedelta(days=1), key=lambda iv: iv.start)
            b = bisect.bisect_left(ivs, end, key=lambda iv: iv.start)
            window = [iv for iv in ivs[a:b] if iv.currency.upper() == site.currency.upper()]
            if len(window) < b - a:
                log.warning("site %s: %d price intervals in a currency other than %s ignored",
                            site.name, b - a - len(window), site.currency)
            p, published = hourly_array(window, start, hours)
            usd[i] = p * site.usd_per_unit + site.adder_usd_per_mwh
            pub[i] = published
        return cls(start_s=start_s, usd=usd, published=pub,
                   forced=demand_response_mask(sites, start_s, hours))


def live_price(intervals: Sequence[PriceInterval], now: datetime, ttl_s: float) -> PriceInterval | None:
    """The price a live decision at `now` runs on: the known interval covering `now`, else
    the latest known one if it ended no more than `ttl_s` ago, else None (fail-safe)."""
    i = bisect.bisect_right(intervals, now, key=lambda iv: iv.start)
    for iv in reversed(intervals[max(0, i - 64):i]):
        if not iv.known_at(now):
            continue
        if iv.end > now or (now - iv.end).total_seconds() <= ttl_s:
            return iv
        return None
    return None


def demand_response_mask(sites: Sequence[SiteSpec], start_s: float, hours: int) -> np.ndarray:
    """(S, hours) bool: the hour overlaps one of the site's demand-response windows (a
    decision holds for a whole hour, so a window forces off every hour it touches)."""
    out = np.zeros((len(sites), hours), bool)
    for i, site in enumerate(sites):
        for w in site.demand_response:
            a = math.floor((w.start.timestamp() - start_s) / HOUR_S)
            b = math.ceil((w.end.timestamp() - start_s) / HOUR_S)
            out[i, max(a, 0):max(min(b, hours), 0)] = True
    return out


def current_price(book: PriceBook, i: int, j: int, now_s: float, ttl_s: float) -> tuple[float, int]:
    """(all-in USD price the decision at `now_s` sees for slot j, hours it is old): the slot's
    own published price (age 0), else the latest known hour that ended <= ttl ago, else NaN."""
    if j == book.live_j:
        price = float(book.live_usd[i])
        return price, (0 if not math.isnan(price) else -1)
    pub = book.published[i]
    if j < book.hours and pub[j] <= now_s:
        return float(book.usd[i, j]), 0
    back = int(ttl_s // HOUR_S) + 2
    for h in range(min(j, book.hours) - 1, max(j - back, -1), -1):
        if pub[h] <= now_s:
            age_s = now_s - (book.start_s + (h + 1) * HOUR_S)
            if age_s <= ttl_s:
                return float(book.usd[i, h]), j - h
            break
    return math.nan, -1


@dataclass
class View:
    """What a site's planner sees at slot j: horizon prices (known or forecast)."""

    price0: float              # the slot's price as decided on (NaN: missing -> fail-safe)
    price: np.ndarray          # (H,) USD/MWh: known, else forecast (slot 0 = price0 or forecast)
    forced: np.ndarray         # (H,) demand response
    own_h: int                 # slots from j through the last published hour (0: none ahead)


def site_view(book: PriceBook, i: int, j: int, now_s: float, ttl_s: float, horizon: int | None = None) -> View:
    """Known prices from slot j on, the rest forecast: the same hour on the latest earlier
    day whose price is known (up to a week back), else the latest known price."""
    n = book.hours
    cap = MAX_HORIZON_H if horizon is None else horizon
    hi = min(j + cap, n)
    pub = book.published[i, j:hi]
    usd = book.usd[i, j:hi]
    known = pub <= now_s
    idx = np.flatnonzero(known)
    own_h = int(idx[-1]) + 1 if idx.size else 0
    H = horizon if horizon is not None else min(max(own_h, 1) + TAIL_H, MAX_HORIZON_H)
    H = max(1, min(H, hi - j)) if hi > j else 1
    price0, _ = current_price(book, i, j, now_s, ttl_s)
    price = np.where(known[:H], usd[:H], np.nan) if hi > j else np.full(1, np.nan)
    for d in range(1, LOOKBACK_H // 24 + 1):
        gaps = np.isnan(price)
        gaps[0] = False
        if not gaps.any():
            break
        a = j - 24 * d
        src = np.full(H, np.nan)
        lo = max(0, -a)
        if a + lo < n and lo < H:
            m = min(H, n - a)
            seg_pub = book.published[i, a + lo:a + m]
            src[lo:m] = np.where(seg_pub <= now_s, book.usd[i, a + lo:a + m], np.nan)
        price = np.where(gaps & ~np.isnan(src), src, price)
    rest = np.isnan(price)
    rest[0] = False
    if rest.any():
        fallback = price0 if not math.isnan(price0) else _latest_known(book, i, j, now_s)
        price[rest] = fallback
    if math.isnan(price0):
        # the plan's slot 0 is a fail-safe slot; a finite stand-in keeps arrays finite
        price[0] = _latest_known(book, i, j, now_s)
    else:
        price[0] = price0
    forced = book.forced[i, j:j + H]
    if len(forced) < H:
        forced = np.concatenate([forced, np.zeros(H - len(forced), bool)])
    return View(price0=price0, price=price, forced=forced, own_h=own_h)


def _latest_known(book: PriceBook, i: int, j: int, now_s: float) -> float:
    """The latest known price at or before slot j (0.0 when none: a neutral stand-in)."""
    lo = max(0, j - LOOKBACK_H)
    pub = book.published[i, lo:j + 1]
    hits = np.flatnonzero(pub <= now_s)
    return float(book.usd[i, lo + hits[-1]]) if hits.size else 0.0


# ---------------------------------------------------------------------------
# What a site may do in a slot


@dataclass(frozen=True)
class Room:
    """The choices a site's constraints leave for this slot."""

    can_on: bool
    can_off: bool
    lo: float                  # lowest allowed level if on
    hi: float                  # highest allowed level if on
    on_reason: str = ""        # why it must stay on (when not can_off)
    off_reason: str = ""       # why it cannot run (when not can_on)
    detail: str = ""


def room_for(unit: Unit, st: UnitState, forced: bool, fail_safe: str | None) -> Room:
    """`fail_safe` is the site's rule when its price is missing ("curtail"/"hold"), else None."""
    if forced:
        return Room(False, True, 0.0, 0.0, off_reason="demand_response", detail="demand-response window")
    must_on = st.on and st.slots < unit.min_on
    ramp = unit.ramp_mw / unit.capacity_mw if unit.ramp_mw is not None else None
    step = unit.step_mw / unit.capacity_mw
    if st.on:
        lo, hi = unit.min_level, 1.0
        if ramp is not None:
            lo, hi = max(lo, st.level - ramp), min(hi, st.level + ramp)
            lo = min(lo, hi)
    else:
        lo, hi = unit.min_level, 1.0 if ramp is None else max(unit.min_level, min(1.0, step))
    left = unit.min_on - st.slots
    if fail_safe == "hold":
        if st.on:
            return Room(True, False, st.level, st.level, on_reason="price_missing",
                        detail="no fresh price: fail-safe hold keeps the level")
        return Room(False, True, 0.0, 0.0, off_reason="price_missing",
                    detail="no fresh price: fail-safe hold keeps it off")
    if fail_safe == "curtail":
        if must_on:
            return Room(True, False, lo, hi, on_reason="price_missing",
                        detail=f"no fresh price: fail-safe curtail waits for the min on time ({left} h left)")
        return Room(False, True, 0.0, 0.0, off_reason="price_missing", detail="no fresh price: fail-safe curtail")
    if st.on:
        if must_on:
            return Room(True, False, lo, hi, on_reason="min_on_time", detail=f"min on time: {left} h left")
        if ramp is not None and st.level * unit.capacity_mw > unit.step_mw + 1e-9:
            return Room(True, False, lo, hi, on_reason="ramp_limit",
                        detail=f"ramping down before it may stop (at {st.level:.2f})")
        return Room(True, True, lo, hi)
    if st.slots < unit.min_off:
        return Room(False, True, 0.0, 0.0, off_reason="min_off_time",
                    detail=f"min off time: {unit.min_off - st.slots} h left")
    return Room(True, True, lo, hi)


def settle(room: Room, want: float) -> tuple[float, str | None, str]:
    """The level the room allows closest to `want` (0: off), and the binding reason."""
    if want <= 0:
        if room.can_off:
            if not room.can_on and room.off_reason in ("demand_response", "price_missing"):
                return 0.0, room.off_reason, room.detail     # forced: say so even if it was wanted
            return 0.0, None, ""
        return room.lo, room.on_reason, room.detail
    if not room.can_on:
        return 0.0, room.off_reason, room.detail
    level = min(max(want, room.lo), room.hi)
    if abs(level - want) > LEVEL_TOL:
        if room.lo == room.hi and room.on_reason == "price_missing":
            return level, "price_missing", room.detail
        return level, "ramp_limit", f"ramp limit: {want:.2f} wanted, {level:.2f} reachable"
    return level, None, ""


# ---------------------------------------------------------------------------
# Fleet coupling: merit order for the current slot


def merit_dispatch(units: Sequence[Unit], rooms: Sequence[Room], levels: list[float], reasons: list[str],
                   details: list[str], margin: Sequence[float], budget_mw: float | None,
                   target_ths: float | None, fill: bool = False) -> None:
    """Repair proposed levels in place so the fleet rows hold for this slot, by merit order:
    a short hash-rate target is filled by the sites with the most profit per TH/s first
    (lowest cost), then an exceeded power budget is cut from the sites with the lowest
    margin per MWh first. Sites move only within their rooms; the budget wins a conflict."""
    caps = [u.capacity_mw for u in units]
    if target_ths is not None:
        rate = sum(lv * c * u.ths_per_mw for lv, c, u in zip(levels, caps, units))
        order = sorted(range(len(units)), key=lambda i: -(_finite(margin[i]) / units[i].ths_per_mw))
        for i in order:
            short = target_ths - rate
            if short <= 1e-9 * max(target_ths, 1.0):
                break
            room = rooms[i]
            if not room.can_on:
                continue
            per_level = caps[i] * units[i].ths_per_mw
            new = min(room.hi, max(room.lo, levels[i] + short / per_level))
            if new > levels[i] + LEVEL_TOL:
                rate += (new - levels[i]) * per_level
                levels[i] = new
                reasons[i] = "hashrate_target"
                details[i] = f"running to meet the fleet target of {target_ths:,.0f} TH/s"
    if budget_mw is not None and sum(lv * c for lv, c in zip(levels, caps)) > budget_mw * (1 + 1e-9):
        # fill the budget best margin first: what a site must run (min on, hold) comes
        # first, then each site gets what it wanted while the budget lasts, or nothing
        # when what is left is below its lowest level
        floor = [rooms[i].lo * caps[i] if (levels[i] > 0 and not rooms[i].can_off) else 0.0
                 for i in range(len(units))]
        left = budget_mw - sum(floor)
        for i in sorted(range(len(units)), key=lambda i: -_finite(margin[i])):
            wanted = levels[i] * caps[i]
            extra = min(max(wanted - floor[i], 0.0), max(left, 0.0))
            power = floor[i] + extra
            if power > 0 and power < rooms[i].lo * caps[i] - 1e-9:
                power = 0.0                   # below its lowest level: off (it may stop)
            left -= power - floor[i]
            new = power / caps[i]
            if new < levels[i] - LEVEL_TOL:
                levels[i] = new
                reasons[i] = "fleet_budget"
                details[i] = f"fleet power budget {budget_mw:g} MW, filled best margin first"
    if fill and budget_mw is not None:
        # budget a plan left unused (a real-time site ran less than its forecast): give it,
        # best margin first, to sites that pay: those running, or those whose hour at that
        # power pays their start
        left = budget_mw - sum(lv * c for lv, c in zip(levels, caps))
        for i in sorted(range(len(units)), key=lambda i: -_finite(margin[i])):
            if left <= 1e-9 or not margin[i] > 0 or not rooms[i].can_on:
                continue
            top = min(rooms[i].hi, levels[i] + left / caps[i])
            if levels[i] <= 0 and (top < rooms[i].lo or margin[i] * top * caps[i] < units[i].start_cost_usd):
                continue
            if top > levels[i] + LEVEL_TOL:
                left -= (top - levels[i]) * caps[i]
                levels[i] = top
                reasons[i] = "price_below_breakeven"
                details[i] = f"fleet budget {budget_mw:g} MW left unused by the plan"


def _finite(x: float) -> float:
    return x if not math.isnan(x) else -1e18


# ---------------------------------------------------------------------------
# Policies


@dataclass
class RunResult:
    """What `run` decided: levels (S, hours), reason indices into REASONS, price seen."""

    levels: np.ndarray
    reasons: np.ndarray
    price_seen: np.ndarray
    replans: int = 0


class _Base:
    """Shared machinery: the slot loop, rooms, reasons, Plan building."""

    name = "base"
    fill_budget = False        # merit_dispatch: hand budget left unused to sites that pay

    def __init__(self, sites: Sequence[SiteSpec], pool_fee: float = 0.0, *, power_budget_mw: float | None = None,
                 hashrate_target_ths: float | None = None) -> None:
        self.sites = tuple(sites)
        self.units = fleet_units(self.sites)
        self.pool_fee = pool_fee
        self.budget_mw = power_budget_mw
        self.target_ths = hashrate_target_ths
        self.replans = 0

    @property
    def coupled(self) -> bool:
        return self.budget_mw is not None or self.target_ths is not None

    # -- entry points -------------------------------------------------------

    def decide(self, states: Mapping[str, SiteState], prices: Mapping[str, Sequence[PriceInterval]],
               now: datetime, hashprice_usd_per_th_day: float) -> Plan:
        now_s = now.timestamp()
        slot_s = floor_hour_s(now_s)
        book = PriceBook.build(self.sites, prices, slot_s - LOOKBACK_H * HOUR_S, LOOKBACK_H + MAX_HORIZON_H + 1)
        j = LOOKBACK_H
        book.live_j = j
        book.live_usd = np.full(len(self.sites), np.nan)
        for i, s in enumerate(self.sites):
            iv = live_price(prices.get(s.name, ()), now, s.price_ttl_seconds)
            if iv is not None and iv.currency.upper() == s.currency.upper():
                book.live_usd[i] = s.usd_per_mwh(iv.price)
        ust = [UnitState.of(states.get(s.name, SiteState()), now_s, u) for s, u in zip(self.sites, self.units)]
        be = [breakeven_usd_per_mwh(hashprice_usd_per_th_day, self.pool_fee, s.efficiency_j_per_th)
              for s in self.sites]
        levels, reasons, details, seen = self._step(book, j, now_s, ust, be, explain=True)
        decisions = {
            s.name: SiteDecision(site=s.name, level=levels[i], reason=reasons[i],
                                 price_usd_per_mwh=None if math.isnan(seen[i]) else seen[i],
                                 breakeven_usd_per_mwh=be[i], detail=details[i])
            for i, s in enumerate(self.sites)}
        return Plan(at=now, decisions=decisions)

    def run(self, book: PriceBook, hashprice: np.ndarray, init: Sequence[UnitState], first: int,
            last: int, on_progress: Callable[[float], None] | None = None) -> RunResult:
        """Decide every slot j in [first, last) at its start, carrying the states; hashprice
        is per slot (the value in force at each decision). on_progress gets the share of
        slots done, once a simulated day."""
        S = len(self.sites)
        n = last - first
        levels = np.zeros((S, n))
        reasons = np.zeros((S, n), np.int8)
        seen = np.full((S, n), np.nan)
        st = list(init)
        effs = [s.efficiency_j_per_th for s in self.sites]
        for k in range(n):
            j = first + k
            now_s = book.start_s + j * HOUR_S
            hp = float(hashprice[k])
            be = [breakeven_usd_per_mwh(hp, self.pool_fee, e) for e in effs]
            lv, rs, _, sn = self._step(book, j, now_s, st, be, explain=False)
            for i in range(S):
                levels[i, k] = lv[i]
                reasons[i, k] = REASON_INDEX[rs[i]]
                seen[i, k] = sn[i]
                st[i] = advance(st[i], lv[i])
            if on_progress is not None and k % 24 == 23:
                on_progress((k + 1) / n)
        return RunResult(levels=levels, reasons=reasons, price_seen=seen, replans=self.replans)

    # -- the one decision code path -----------------------------------------

    def _step(self, book: PriceBook, j: int, now_s: float, states: Sequence[UnitState], be: Sequence[float],
              explain: bool) -> tuple[list[float], list[str], list[str], list[float]]:
        seen = []
        rooms = []
        for i, site in enumerate(self.sites):
            price, _ = current_price(book, i, j, now_s, site.price_ttl_seconds)
            seen.append(price)
            fs = site.fail_safe if math.isnan(price) else None
            rooms.append(room_for(self.units[i], states[i], bool(book.forced[i, j]) if j < book.hours else False, fs))
        margin = [be[i] - seen[i] for i in range(len(self.sites))]
        levels, reasons, details = self._propose(book, j, now_s, states, be, seen, rooms, explain)
        if self.coupled:
            merit_dispatch(self.units, rooms, levels, reasons, details, margin, self.budget_mw, self.target_ths,
                           fill=self.fill_budget)
        return levels, reasons, details, seen

    def _propose(self, book: PriceBook, j: int, now_s: float, states: Sequence[UnitState], be: Sequence[float],
                 seen: Sequence[float], rooms: Sequence[Room], explain: bool
                 ) -> tuple[list[float], list[str], list[str]]:
        raise NotImplementedError

    @staticmethod
    def _price_reason(price: float, be: float) -> str:
        return "price_below_breakeven" if price < be else "price_above_breakeven"


def advance(st: UnitState, level: float) -> UnitState:
    """The state after a slot run at `level`."""
    on = level > 0
    if on == st.on:
        return UnitState(on=on, level=level if on else 0.0, slots=min(st.slots + 1, LONG_AGO_SLOTS))
    return UnitState(on=on, level=level if on else 0.0, slots=1)


def _desired_level(unit: Unit, margin: float) -> float:
    """Full power while mining pays, else the lowest level (for a site that must run)."""
    return 1.0 if margin >= 0 else unit.min_level


class AlwaysOn(_Base):
    """Every site on at full power whatever the price; with a power budget, a fixed,
    price-blind share (the sites in file order, full power until the budget is used)."""

    name = "always_on"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.share = [1.0] * len(self.units)
        if self.budget_mw is not None:
            left = self.budget_mw
            for i, u in enumerate(self.units):
                take = min(1.0, max(left, 0.0) / u.capacity_mw)
                self.share[i] = take if take >= u.min_level - LEVEL_TOL else 0.0
                left -= self.share[i] * u.capacity_mw

    def _propose(self, book, j, now_s, states, be, seen, rooms, explain):
        levels, reasons, details = [], [], []
        for i, room in enumerate(rooms):
            level, bound, detail = settle(room, self.share[i])
            levels.append(level)
            if bound is not None:
                reasons.append(bound)
                details.append(detail)
            elif self.share[i] <= 0:
                reasons.append("fleet_budget")
                details.append("outside the always-on share of the power budget")
            elif math.isnan(seen[i]):
                reasons.append("price_missing")
                details.append(room.detail)
            else:
                reasons.append("price_below_breakeven" if seen[i] < be[i] else "always_on")
                details.append("always on" if explain else "")
        return levels, reasons, details


class Threshold(_Base):
    """On while the all-in price is below breakeven, full power; off above it."""

    name = "threshold"

    def want(self, st: UnitState, price: float, be: float, explain: bool) -> tuple[bool, str, str]:
        """(run?, reason, detail) by the rule alone, before constraints."""
        on = price < be
        return on, self._price_reason(price, be), \
            (f"price {price:.2f} vs breakeven {be:.2f} USD/MWh" if explain else "")

    def _propose(self, book, j, now_s, states, be, seen, rooms, explain):
        levels, reasons, details = [], [], []
        for i, room in enumerate(rooms):
            st = states[i]
            if math.isnan(seen[i]):
                want, reason, detail = (st.level if st.on else 0.0), "price_missing", room.detail
            else:
                on, reason, detail = self.want(st, seen[i], be[i], explain)
                want = _desired_level(self.units[i], be[i] - seen[i]) if on else 0.0
            level, bound, bdetail = settle(room, want)
            levels.append(level)
            reasons.append(bound or reason)
            details.append((bdetail or detail) if explain else "")
        return levels, reasons, details


class Hysteresis(Threshold):
    """The strike-price rule with a dead band: stop above breakeven + band, start below
    breakeven - band, keep the status inside; and a dwell time, the least time spent in a
    status before switching (on top of the sites' own min on/off times). While kept on
    above breakeven it runs at its lowest level."""

    name = "hysteresis"

    def __init__(self, *args, band_fraction: float = 0.05, band_min_usd_per_mwh: float = 2.0,
                 dwell_hours: int = 2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.band_fraction = band_fraction
        self.band_min = band_min_usd_per_mwh
        self.dwell = dwell_hours

    def want(self, st, price, be, explain):
        band = max(self.band_min, self.band_fraction * abs(be))
        if st.on:
            if price > be + band and st.slots >= self.dwell:
                return False, "price_above_breakeven", \
                    (f"price {price:.2f} > breakeven {be:.2f} + band {band:.2f}" if explain else "")
            why = "dwell time" if price > be + band else "dead band"
            return True, ("price_below_breakeven" if price < be else "hysteresis"), \
                (f"kept on ({why}): price {price:.2f}, breakeven {be:.2f} +/- {band:.2f}" if explain else "")
        if price < be - band and st.slots >= self.dwell:
            return True, "price_below_breakeven", \
                (f"price {price:.2f} < breakeven {be:.2f} - band {band:.2f}" if explain else "")
        why = "dwell time" if price < be - band else "dead band"
        return False, ("price_above_breakeven" if price >= be else "hysteresis"), \
            (f"kept off ({why}): price {price:.2f}, breakeven {be:.2f} +/- {band:.2f}" if explain else "")


@dataclass
class _SitePlan:
    """A kept per-site plan and what must hold to keep following it."""

    slot0: int                 # absolute hour (Unix seconds / 3600) of its first slot
    made_s: float              # when it was made: any price published since may change it
    be: float
    levels: np.ndarray
    next_slot: int             # the slot it expects to be asked next ...
    next_state: UnitState      # ... with the site in this state


@dataclass
class _FleetPlan:
    slot0: int
    made_s: float
    be: tuple[float, ...]
    planned: tuple[int, ...]   # sites the plan is keyed on (prices published ahead)
    levels: np.ndarray         # (S, H)
    next_slot: int
    next_states: tuple[UnitState, ...]


def held_by(room: Room, level: float, price: float, be: float) -> str | None:
    """The constraint that explains a planned level against the price: running at a loss
    while it may not stop, or idle while it pays but may not start (None: the price does)."""
    if level > 0 and price >= be and not room.can_off:
        return room.on_reason
    if level <= 0 and price < be and not room.can_on:
        return room.off_reason
    return None


def same_state(unit: Unit, a: UnitState, b: UnitState) -> bool:
    """Equal for planning: the level matters only to a ramp-limited site (a plan for any
    other site is the same from any level, see optimize.solve_site_dp)."""
    if unit.ramp_limited:
        return a == b
    return a.on == b.on and a.slots == b.slots


def published_since(book: PriceBook, i: int, j: int, since_s: float, now_s: float, ahead: int) -> bool:
    """Did any price of hours [j - LOOKBACK_H, j + ahead) become known in (since_s, now_s]?
    If not, every input of a plan over those hours (known prices and the forecasts made
    from them) is as it was when the plan was made."""
    w = book.published[i, max(0, j - LOOKBACK_H):j + ahead]
    return bool(np.any((w > since_s) & (w <= now_s)))


class GridminerPolicy(Threshold):
    """Rolling-horizon optimiser.

    Uncoupled fleet: per site, the exact DP (optimize.solve_site_dp; the MILP for a
    ramp-limited site) over the published prices plus a TAIL_H-hour forecast (the same
    hour on the latest day with a known price). A plan is kept while no price of its
    window has been published since it was made and the site is where the plan said; new
    prices (a day-ahead publication, each settled real-time hour) or a deviation make a
    new plan. Following a kept plan gives exactly the decisions a fresh plan would (the
    DP is time-consistent with fixed tie-breaking), so the live scheduler's
    once-a-minute `decide` and the back-test's hourly `run` agree.

    Coupled fleet (power budget or hash-rate target): the HiGHS MILP over all sites and
    the rolling horizon (published prices + FLEET_TAIL_H forecast hours, at most
    FLEET_MAX_HORIZON_H), kept while the prices of its next FLEET_PLAN_CHECK_H hours are
    unchanged and its day-ahead sites are where it said. Sites without published prices
    ahead (real-time markets, gaps) enter the MILP with their forecast but decide each
    hour on their own DP with the latest price; the merit-order dispatch then makes the
    hour fit the budget or target."""

    name = "gridminer"
    fill_budget = True

    def __init__(self, *args, time_limit_s: float = 10.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.time_limit_s = time_limit_s
        self._site_plans: dict[int, _SitePlan] = {}
        self._fleet_plan: _FleetPlan | None = None
        self.cache = True          # False: plan afresh every slot (tests compare both)

    # -- per-site plans -----------------------------------------------------

    def _site_level(self, book: PriceBook, i: int, j: int, now_s: float, st: UnitState, be: float,
                    price: float) -> tuple[float, int]:
        """(planned level for slot j, plan length): the kept plan's, or a new plan's."""
        slot = int(floor_hour_s(now_s) // HOUR_S)    # absolute: j is relative to the book
        site, unit = self.sites[i], self.units[i]
        curtail0 = math.isnan(price) and site.fail_safe == "curtail"
        plan = self._site_plans.get(i)
        if (self.cache and plan is not None and slot == plan.next_slot and same_state(unit, plan.next_state, st)
                and be == plan.be and not curtail0 and slot - plan.slot0 < len(plan.levels)
                and book.published[i, j] <= now_s
                and not published_since(book, i, j, plan.made_s, now_s, MAX_HORIZON_H)):
            level = float(plan.levels[slot - plan.slot0])
            plan.next_slot, plan.next_state = slot + 1, advance(st, level)
            return level, len(plan.levels) - (slot - plan.slot0)
        self.replans += 1
        view = site_view(book, i, j, now_s, site.price_ttl_seconds)
        margin = be - view.price
        curtail = np.zeros(len(margin), bool)
        curtail[0] = curtail0
        if unit.ramp_limited:
            problem = Problem([unit], [st], margin[None, :], view.forced[None, :], curtail[None, :])
            levels = solve_milp(problem, time_limit_s=self.time_limit_s).level[0]
        else:
            levels, _ = solve_site_dp(unit, st, margin, view.forced, curtail)
        level = float(levels[0])
        self._site_plans[i] = _SitePlan(slot0=slot, made_s=now_s, be=be, levels=levels, next_slot=slot + 1,
                                        next_state=advance(st, level))
        return level, len(levels)

    def _explain(self, i: int, level: float, price: float, be: float) -> tuple[str, str]:
        unit = self.units[i]
        if level > 0:
            if price < be:
                return "price_below_breakeven", f"price {price:.2f} < breakeven {be:.2f}"
            if unit.start_cost_usd > 0:
                return "start_cost", (f"price {price:.2f} > breakeven {be:.2f}, but running through the dear "
                                      f"spell costs less than a stop and a {unit.start_cost_usd:g} USD restart")
            return "optimizer", f"the plan runs it at price {price:.2f} (breakeven {be:.2f})"
        if price >= be:
            return "price_above_breakeven", f"price {price:.2f} >= breakeven {be:.2f}"
        if unit.start_cost_usd > 0:
            return "start_cost", (f"price {price:.2f} < breakeven {be:.2f}, but the cheap spell does not "
                                  f"pay a {unit.start_cost_usd:g} USD start")
        return "optimizer", f"the plan keeps it off at price {price:.2f} (breakeven {be:.2f})"

    def _own_decision(self, book, i, j, now_s, st, be, price, room, explain):
        """The site's decision by its own plan (uncoupled rule)."""
        site = self.sites[i]
        if math.isnan(price) and site.fail_safe == "hold":
            level, bound, detail = settle(room, st.level if st.on else 0.0)
            return level, (bound or "price_missing"), (detail if explain else "")
        want, horizon = self._site_level(book, i, j, now_s, st, be, price)
        level, bound, detail = settle(room, want)
        if bound is not None:
            return level, bound, detail if explain else ""
        if math.isnan(price):
            return level, "price_missing", room.detail if explain else ""
        bound = held_by(room, level, price, be)
        if bound is not None:
            return level, bound, room.detail if explain else ""
        reason, text = self._explain(i, level, price, be)
        return level, reason, (f"{text} (plan over {horizon} h)" if explain else "")

    # -- coupled fleets ------------------------------------------------------

    def _fleet_levels(self, book, j, now_s, states, be, seen) -> tuple[np.ndarray, set[int]]:
        """Planned levels for slot j from the (kept or new) fleet MILP, and the sites the
        plan is keyed on: those with published prices beyond this slot. The others decide
        on their own plans each hour."""
        S = len(self.sites)
        slot = int(floor_hour_s(now_s) // HOUR_S)    # absolute: j is relative to the book
        ahead = [known_ahead(book, i, j, now_s) for i in range(S)]
        planned = tuple(i for i in range(S) if ahead[i] > 1)
        missing = [math.isnan(x) for x in seen]
        plan = self._fleet_plan
        if (self.cache and plan is not None and plan.planned == planned and slot == plan.next_slot
                and not any(missing[i] for i in planned)
                and plan.levels.shape[1] - (slot - plan.slot0) >= FLEET_PLAN_CHECK_H
                and plan.be == tuple(be)
                and all(same_state(self.units[i], plan.next_states[i], states[i]) for i in planned)
                and not any(published_since(book, i, j, plan.made_s, now_s, FLEET_PLAN_CHECK_H) for i in planned)):
            k = slot - plan.slot0
            plan.next_slot = slot + 1
            plan.next_states = tuple(advance(states[i], float(plan.levels[i, k])) for i in range(S))
            return plan.levels[:, k], set(planned)
        self.replans += 1
        H = min(max(ahead + [1]) + FLEET_TAIL_H, FLEET_MAX_HORIZON_H)
        margin = np.zeros((S, H))
        forced = np.zeros((S, H), bool)
        for i in range(S):
            v = site_view(book, i, j, now_s, self.sites[i].price_ttl_seconds, horizon=H)
            width = len(v.price)
            margin[i, :width] = be[i] - v.price
            margin[i, width:] = margin[i, width - 1]
            forced[i, :len(v.forced)] = v.forced[:H]
        curtail = np.zeros((S, H), bool)
        hold = np.zeros((S, H), bool)
        for i in range(S):
            if missing[i]:
                curtail[i, 0] = self.sites[i].fail_safe == "curtail"
                hold[i, 0] = not curtail[i, 0]
        problem = Problem(self.units, list(states), margin, forced, curtail, hold,
                          budget_mw=self.budget_mw, target_ths=self.target_ths)
        try:
            levels = solve_coupled(problem, time_limit_s=self.time_limit_s).level
        except RuntimeError as exc:
            log.warning("fleet MILP failed (%s); this hour goes by the merit order alone", exc)
            self._fleet_plan = None
            return np.full(S, np.nan), set()
        self._fleet_plan = _FleetPlan(slot0=slot, made_s=now_s, be=tuple(be), planned=planned, levels=levels,
                                      next_slot=slot + 1,
                                      next_states=tuple(advance(states[i], float(levels[i, 0])) for i in range(S)))
        return levels[:, 0], set(planned)

    def _propose(self, book, j, now_s, states, be, seen, rooms, explain):
        S = len(self.sites)
        levels, reasons, details = [0.0] * S, [""] * S, [""] * S
        if not self.coupled:
            for i in range(S):
                levels[i], reasons[i], details[i] = self._own_decision(book, i, j, now_s, states[i], be[i],
                                                                       seen[i], rooms[i], explain)
            return levels, reasons, details
        planned_levels, planned = self._fleet_levels(book, j, now_s, states, be, seen)
        for i in range(S):
            if i not in planned or math.isnan(planned_levels[i]):
                levels[i], reasons[i], details[i] = self._own_decision(
                    book, i, j, now_s, states[i], be[i], seen[i], rooms[i], explain)
                continue
            level, bound, detail = settle(rooms[i], float(planned_levels[i]))
            if bound is not None:
                reason, text = bound, detail
            elif math.isnan(seen[i]):
                reason, text = "price_missing", rooms[i].detail
            elif held_by(rooms[i], level, seen[i], be[i]) is not None:
                reason, text = held_by(rooms[i], level, seen[i], be[i]), rooms[i].detail
            else:
                reason, text = self._explain(i, level, seen[i], be[i])
                if level > 0 and seen[i] >= be[i] and self.target_ths is not None:
                    reason, text = "hashrate_target", f"the fleet plan runs it for the target; {text}"
                elif level <= 0 and seen[i] < be[i] and self.budget_mw is not None:
                    reason, text = "fleet_budget", f"the fleet plan leaves it off under the budget; {text}"
                elif 0 < level < 1.0 - LEVEL_TOL and self.budget_mw is not None and seen[i] < be[i]:
                    reason = "fleet_budget"
                text = f"fleet MILP: {text}"
            levels[i], reasons[i], details[i] = level, reason, (text if explain else "")
        return levels, reasons, details


def known_ahead(book: PriceBook, i: int, j: int, now_s: float) -> int:
    """Slots from j through the last hour (within the longest plan) whose price is known."""
    pub = book.published[i, j:j + MAX_HORIZON_H]
    idx = np.flatnonzero(pub <= now_s)
    return int(idx[-1]) + 1 if idx.size else 0


POLICIES = {"always_on": AlwaysOn, "threshold": Threshold, "hysteresis": Hysteresis, "gridminer": GridminerPolicy}


def make_policy(fleet, name: str = "gridminer", **options) -> _Base:
    """A policy for a FleetSpec by name: always_on, threshold, hysteresis or gridminer."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}") from None
    return cls(fleet.sites, fleet.economics.pool_fee, power_budget_mw=fleet.power_budget_mw,
               hashrate_target_ths=fleet.hashrate_target_ths, **options)
