"""Optimal site schedules over a horizon of whole hours (slots): a HiGHS MILP (highspy) for
fleets, and an exact per-site dynamic programme for sites that need no MILP.

One model serves both the rolling-horizon policy (known prices plus a forecast) and the
hindsight bound (the whole period, perfect foresight, same constraints).

Per site i and slot t (one hour):
    on[i,t]    binary      1 while the site runs
    start, stop            continuous in [0, 1]; integral at any vertex because
                           start - stop = on[t] - on[t-1], start <= on[t], stop <= 1 - on[t]
    p[i,t]     MW          min_level x cap x on <= p <= cap x on
objective (maximised): sum margin[i,t] x p[i,t] - start_cost_i x start[i,t]
    where margin = breakeven - all-in price (USD/MWh), so margin x p is the hour's profit.
constraints:
    min on   sum(start[k], k in the last min_on slots up to t) <= on[t]
    min off  sum(stop[k],  k in the last min_off slots up to t) <= 1 - on[t]
    ramp     p[t] - p[t-1] <= R + (max(R, Pmin) - R) x start[t]   (a start may jump to
             p[t-1] - p[t] <= R + (max(R, Pmin) - R) x stop[t]     Pmin, a stop from it)
    forced   demand response: on = 0 (min on and ramp give way; a min-on window never
             crosses a forced slot); fail-safe "curtail": no start, on only while min on
             binds; fail-safe "hold": on and p equal the previous slot's
    fleet    sum p[., t] <= budget;  sum hashrate[., t] >= target
The fleet rows carry a slack with a penalty far above any margin, so a fleet that
cannot meet its target (capacity, forced slots) gets the most it can, never "infeasible";
the slack is reported (shortfall_ths, excess_mw).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import numpy as np

from miner.sched import fleet_dp
from miner.sched.model import SiteSpec, SiteState

LONG_AGO_SLOTS = 1 << 20               # "status began long ago": every minimum time is met

# HiGHS options: relative MIP gap (1e-6 ~ exact at our money scales) and a time cap per
# solve so one hard window cannot stall a back-test or the live loop.
DEFAULT_MIP_REL_GAP = 1e-6
DEFAULT_TIME_LIMIT_S = 20.0
# Every solve of ours ends at the root node, where HiGHS' default primal heuristics
# (feasibility jump, RINS, RENS, the reduced-cost sub-MIP) and symmetry detection cost
# more than they find. Without them, same optima (to 1e-10), one thread: 40 ms per 24 h
# plan of the ten-site budget fleet against ~70 ms through scipy's HiGHS and 84 ms with
# highspy's defaults (two threads), 167 ms per 72 h hindsight window against 307 ms
# (benchmarks/README.md). One thread: a back-test already runs its policies in parallel
# processes (a second HiGHS thread made the whole back-test slower). Presolve off: on
# these small, already tight models it costs more than it saves.
HIGHS_OPTIONS = {
    "output_flag": False, "threads": 1, "presolve": "off",
    "mip_heuristic_run_feasibility_jump": False, "mip_heuristic_run_rins": False,
    "mip_heuristic_run_rens": False, "mip_heuristic_run_root_reduced_cost": False,
    "mip_heuristic_effort": 0.0, "mip_detect_symmetry": False,
}


def slots_of_hours(hours: float) -> int:
    """Minimum on/off time in whole slots: at least one (a decision holds for its slot)."""
    return max(1, math.ceil(hours - 1e-9))


@dataclass(frozen=True)
class Unit:
    """A site's constraints in slot units."""

    capacity_mw: float
    min_level: float                   # fraction of capacity while on, (0, 1]
    min_on: int                        # slots, >= 1
    min_off: int                       # slots, >= 1
    ramp_mw: float | None              # per slot; None: unlimited
    start_cost_usd: float
    ths_per_mw: float                  # hash rate per MW of power
    min_on_hours: float | None = None  # as configured (None: min_on); live decisions between
    min_off_hours: float | None = None  # slot starts compare elapsed time with these

    @classmethod
    def of(cls, site: SiteSpec) -> "Unit":
        return cls(capacity_mw=site.capacity_mw, min_level=site.min_power_fraction,
                   min_on=slots_of_hours(site.min_on_hours), min_off=slots_of_hours(site.min_off_hours),
                   ramp_mw=site.ramp_mw_per_hour, start_cost_usd=site.start_cost_usd,
                   ths_per_mw=1e6 / site.efficiency_j_per_th, min_on_hours=site.min_on_hours,
                   min_off_hours=site.min_off_hours)

    @property
    def ramp_limited(self) -> bool:
        """True when the ramp limit can bind: some level change (a start to full power
        included) would exceed it. An on/off-only site is never ramp limited."""
        return self.ramp_mw is not None and self.min_level < 1.0 and self.ramp_mw < self.capacity_mw

    @property
    def step_mw(self) -> float:
        """The most a start may reach or a stop may leave: max(ramp, lowest on power)."""
        pmin = self.min_level * self.capacity_mw
        return pmin if self.ramp_mw is None else max(self.ramp_mw, pmin)


class UnitState(NamedTuple):
    """A site's status just before slot 0 (a tuple: the policies make millions of them)."""

    on: bool = False
    level: float = 0.0
    slots: int = LONG_AGO_SLOTS        # whole slots the current on/off status has lasted

    @classmethod
    def of(cls, state: SiteState, now_s: float, unit: Unit | None = None) -> "UnitState":
        """The planning state of a live site at `now_s`. `slots` counts whole hours in the
        status; with the `unit`, a minimum time is met exactly when the elapsed time reaches
        the configured hours (slots >= min_on), and while it is not, the slots left to
        serve are the hours left rounded up: a decision between slot starts neither cuts a
        minimum short nor holds a site for a minimum of 0 or 0.5 h until the hour ends."""
        if state.since is None:
            return cls(on=state.on, level=state.level if state.on else 0.0, slots=LONG_AGO_SLOTS)
        elapsed_h = max(0.0, (now_s - state.since.timestamp()) / 3600.0)
        slots = int(elapsed_h)
        if unit is not None:
            need_slots = unit.min_on if state.on else unit.min_off
            need_h = unit.min_on_hours if state.on else unit.min_off_hours
            need_h = float(need_slots) if need_h is None else need_h
            if elapsed_h >= need_h:
                slots = max(slots, need_slots)
            else:
                slots = max(0, need_slots - math.ceil(need_h - elapsed_h - 1e-9))
        return cls(on=state.on, level=state.level if state.on else 0.0, slots=min(slots, LONG_AGO_SLOTS))


@dataclass
class Problem:
    """Inputs over T slots for S sites (arrays are (S, T))."""

    units: Sequence[Unit]
    init: Sequence[UnitState]
    margin: np.ndarray                 # USD/MWh: breakeven - all-in price
    forced_off: np.ndarray | None = None   # demand response
    curtail: np.ndarray | None = None      # fail-safe "curtail" slots
    hold: np.ndarray | None = None         # fail-safe "hold" slots
    budget_mw: float | None = None
    target_ths: float | None = None

    def __post_init__(self) -> None:
        self.margin = np.atleast_2d(np.asarray(self.margin, dtype=float))
        shape = self.margin.shape
        if shape[0] != len(self.units) or len(self.init) != len(self.units):
            raise ValueError(f"margin rows {shape[0]}, units {len(self.units)}, init {len(self.init)} differ")
        if not np.all(np.isfinite(self.margin)):
            raise ValueError("margin must be finite everywhere (mark unknown slots curtail or hold)")
        for name in ("forced_off", "curtail", "hold"):
            v = getattr(self, name)
            setattr(self, name, np.zeros(shape, bool) if v is None else np.asarray(v, bool).reshape(shape))
        # a forced slot overrides the fail-safe flags
        self.curtail = self.curtail & ~self.forced_off
        self.hold = self.hold & ~self.forced_off & ~self.curtail

    @property
    def slots(self) -> int:
        return self.margin.shape[1]

    def sub(self, rows: Sequence[int], a: int, b: int, init: Sequence[UnitState] | None = None,
            coupled: bool = True) -> "Problem":
        """Sites `rows`, slots [a, b), with another initial state."""
        rows = list(rows)
        return Problem(units=[self.units[i] for i in rows],
                       init=list(init) if init is not None else [self.init[i] for i in rows],
                       margin=self.margin[rows, a:b], forced_off=self.forced_off[rows, a:b],
                       curtail=self.curtail[rows, a:b], hold=self.hold[rows, a:b],
                       budget_mw=self.budget_mw if coupled else None,
                       target_ths=self.target_ths if coupled else None)


@dataclass
class Schedule:
    """A solved schedule: levels (fractions) per site and slot, and how it was found."""

    level: np.ndarray                  # (S, T), 0 off else in [min_level, 1]
    starts: np.ndarray                 # (S, T) bool
    profit_usd: float                  # sum margin x energy - start costs
    shortfall_ths: np.ndarray          # (T,) target not met by this much
    excess_mw: np.ndarray              # (T,) budget exceeded by this much (forced units)
    method: str                        # "dp", "milp", "milp-windowed"
    mip_gap: float = 0.0               # HiGHS' relative gap at the end (0 for dp)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------
# Shared helpers


def profit_of(problem: Problem, level: np.ndarray) -> tuple[float, np.ndarray]:
    """(profit USD, starts) of a level schedule under the problem's margins."""
    caps = np.array([u.capacity_mw for u in problem.units])
    costs = np.array([u.start_cost_usd for u in problem.units])
    on = level > 0
    prev = np.array([s.on for s in problem.init])[:, None]
    starts = on & ~np.concatenate([prev, on[:, :-1]], axis=1)
    energy = level * caps[:, None]
    return float(np.sum(problem.margin * energy) - np.sum(starts * costs[:, None])), starts


def fleet_slack(problem: Problem, level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shortfall TH/s, excess MW) per slot of a level schedule."""
    caps = np.array([u.capacity_mw for u in problem.units])[:, None]
    ths = np.array([u.ths_per_mw for u in problem.units])[:, None]
    power = np.sum(level * caps, axis=0)
    rate = np.sum(level * caps * ths, axis=0)
    short = np.zeros(problem.slots) if problem.target_ths is None else np.maximum(problem.target_ths - rate, 0.0)
    excess = np.zeros(problem.slots) if problem.budget_mw is None else np.maximum(power - problem.budget_mw, 0.0)
    return short, excess


def scheduled(problem: Problem, level: np.ndarray, method: str, t0: float, **extra) -> Schedule:
    """A Schedule of `level` under `problem` (its profit, starts and fleet slack), timed from t0."""
    profit, starts = profit_of(problem, level)
    short, excess = fleet_slack(problem, level)
    return Schedule(level=level, starts=starts, profit_usd=profit, shortfall_ths=short, excess_mw=excess,
                    method=method, seconds=time.perf_counter() - t0, **extra)


def _must_on_slots(unit: Unit, init: UnitState, forced: np.ndarray) -> int:
    """How many leading slots the initial min-on time keeps the site on (cut by a forced slot)."""
    if not init.on or init.slots >= unit.min_on:
        return 0
    r = min(unit.min_on - init.slots, len(forced))
    hits = np.flatnonzero(forced[:r])
    return int(hits[0]) if hits.size else r


def _must_off_slots(unit: Unit, init: UnitState, horizon: int) -> int:
    if init.on or init.slots >= unit.min_off:
        return 0
    return min(unit.min_off - init.slots, horizon)


# ---------------------------------------------------------------------------
# Exact per-site dynamic programme (no ramp limit, no hold slots, no fleet coupling)


def dp_applicable(problem: Problem) -> bool:
    return (problem.budget_mw is None and problem.target_ths is None
            and not any(u.ramp_limited for u in problem.units) and not problem.hold.any())


def solve_site_dp(unit: Unit, init: UnitState, margin: np.ndarray, forced_off: np.ndarray,
                  curtail: np.ndarray) -> tuple[np.ndarray, float]:
    """Exact optimum for one site without ramp limit: (levels, profit USD).

    States: (on, k) / (off, k), k = whole slots in that status before the slot, capped at
    min_on / min_off. Without a ramp limit the best level while on is 1 when the margin is
    >= 0 and the lowest level otherwise (profit is linear in power), so on/off is the only
    choice. Ties keep the current status (no churn), so a plan re-made one slot later from
    the state it predicted makes the same choices: the DP is time-consistent."""
    T = len(margin)
    K_on, K_off = unit.min_on, unit.min_off
    lo = unit.min_level
    best_on = (unit.capacity_mw * np.maximum(margin, margin * lo)).tolist()
    forced_l = np.asarray(forced_off, bool).tolist()
    curtail_l = np.asarray(curtail, bool).tolist()
    start_cost = unit.start_cost_usd
    NEG = -math.inf
    # v_on[k], v_off[k]: best profit from slot t on, with k slots in that status before t.
    v_on = [0.0] * (K_on + 1)
    v_off = [0.0] * (K_off + 1)
    keep_on = [[False] * (K_on + 1) for _ in range(T)]      # choice: run in slot t?
    start_off = [[False] * (K_off + 1) for _ in range(T)]
    on_next = [min(k + 1, K_on) for k in range(K_on + 1)]
    off_next = [min(k + 1, K_off) for k in range(K_off + 1)]
    for t in range(T - 1, -1, -1):
        r = best_on[t]
        stop = v_off[1]
        row = keep_on[t]
        new_on = [0.0] * (K_on + 1)
        if forced_l[t]:
            new_on = [stop] * (K_on + 1)
        else:
            cur = curtail_l[t]
            for k in range(K_on + 1):
                keep = r + v_on[on_next[k]]
                if k < K_on or (not cur and keep >= stop):   # min on binds, or worth it
                    new_on[k] = keep
                    row[k] = True
                else:
                    new_on[k] = stop
        may_start = not forced_l[t] and not curtail_l[t]
        start_val = r - start_cost + v_on[1] if may_start else NEG
        row = start_off[t]
        new_off = [0.0] * (K_off + 1)
        for k in range(K_off + 1):
            stay = v_off[off_next[k]]
            if k >= K_off and start_val > stay:               # tie: stay off
                new_off[k] = start_val
                row[k] = True
            else:
                new_off[k] = stay
        v_on, v_off = new_on, new_off
    levels = np.zeros(T)
    on = init.on
    k = min(init.slots, K_on if on else K_off)
    total = 0.0
    for t in range(T):
        if (keep_on[t][k] if on else start_off[t][k]):
            levels[t] = 1.0 if margin[t] >= 0 else lo
            total += best_on[t]
            if not on:
                total -= start_cost
                on, k = True, 1
            else:
                k = on_next[k]
        elif on:
            on, k = False, 1
        else:
            k = off_next[k]
    return levels, total


def solve_dp(problem: Problem) -> Schedule:
    """Every site by its exact DP (the problem must be dp_applicable)."""
    t0 = time.perf_counter()
    if not dp_applicable(problem):
        raise ValueError("solve_dp needs an uncoupled problem without ramp limits or hold slots")
    level = np.zeros_like(problem.margin)
    for i, unit in enumerate(problem.units):
        level[i], _ = solve_site_dp(unit, problem.init[i], problem.margin[i], problem.forced_off[i],
                                    problem.curtail[i])
    return scheduled(problem, level, "dp", t0)


def solve_if_uncoupling_fits(problem: Problem) -> Schedule | None:
    """The coupled problem solved exactly without a MILP when its coupling does not bind:
    each site's own optimum (the DP, an upper bound on the coupled optimum) is taken
    when together they keep the budget and meet the target in every slot. None when they
    do not, or when a site needs the MILP anyway (ramp limit, hold slots)."""
    t0 = time.perf_counter()
    if any(u.ramp_limited for u in problem.units) or problem.hold.any():
        return None
    level = np.zeros_like(problem.margin)
    for i, unit in enumerate(problem.units):
        level[i], _ = solve_site_dp(unit, problem.init[i], problem.margin[i], problem.forced_off[i],
                                    problem.curtail[i])
    short, excess = fleet_slack(problem, level)
    if np.any(excess > TOLERANCE) or np.any(short > TOLERANCE * max(problem.target_ths or 1.0, 1.0)):
        return None
    return scheduled(problem, level, "dp", t0)


def fleet_dp_applicable(problem: Problem) -> bool:
    """A fleet the exact fleet DP solves faster than the MILP: a budget or a target (not
    both), no ramp limit, no hold slot, few sites (fleet_dp.MAX_WORK)."""
    return ((problem.budget_mw is None) != (problem.target_ths is None)
            and not any(u.ramp_limited for u in problem.units) and not problem.hold.any()
            and fleet_dp.work(problem.units) <= fleet_dp.MAX_WORK)


def solve_fleet_dp(problem: Problem) -> Schedule:
    """A small coupled fleet's exact optimum by fleet_dp (it must be fleet_dp_applicable)."""
    t0 = time.perf_counter()
    if not fleet_dp_applicable(problem):
        raise ValueError("solve_fleet_dp needs a small fleet with one fleet row, no ramp limits or hold slots")
    level = fleet_dp.solve_fleet_dp(problem.units, problem.init, problem.margin, problem.forced_off,
                                    problem.curtail, problem.budget_mw, problem.target_ths,
                                    slack_penalty(problem))
    return scheduled(problem, np.round(level, 9), "fleet-dp", t0)


def fleet_bound_applicable(problem: Problem) -> bool:
    """A fleet under a power budget alone, no ramp limit, no hold slot: fleet_bound's model;
    its joint statuses and choice vectors numbered in 62 bits."""
    return (problem.budget_mw is not None and problem.target_ths is None
            and not any(u.ramp_limited for u in problem.units) and not problem.hold.any()
            and fleet_dp.work(problem.units) < 1 << 62)


def budget_prices(problem: Problem) -> np.ndarray:
    """USD per MW of each slot's budget row in the LP relaxation's optimum (>= 0)."""
    model, _, rows = _fleet_model(problem)
    res = model.solve(relax=True, time_limit_s=DEFAULT_TIME_LIMIT_S, mip_rel_gap=DEFAULT_MIP_REL_GAP)
    if res.row_dual is None:
        raise RuntimeError(f"LP relaxation found no row prices: {res.message}")
    return np.abs(res.row_dual[rows])


def solve_fleet_bound(problem: Problem) -> Schedule | None:
    """A budget fleet's exact optimum by fleet_bound (it must be fleet_bound_applicable):
    with the subgradient's budget prices for a short problem, else (or when that search
    holds too many statuses) the LP relaxation's; None when that one does too."""
    # imported here, as highspy is: numba takes half a second to import and most `miner`
    # commands never solve a fleet
    from miner.sched import fleet_bound  # noqa: PLC0415

    t0 = time.perf_counter()
    if not fleet_bound_applicable(problem):
        raise ValueError("solve_fleet_bound needs a power budget alone, no ramp limits or hold slots")
    fleet = fleet_bound.BudgetFleet(problem.units, problem.init, problem.margin, problem.forced_off,
                                    problem.curtail, problem.budget_mw, slack_penalty(problem))
    level = fleet.solve(fleet.descent_prices()) if problem.slots <= fleet_bound.DESCENT_MAX_SLOTS else None
    if level is None:
        level = fleet.solve(budget_prices(problem))
    if level is None:
        return None
    return scheduled(problem, np.round(level, 9), "fleet-bound", t0)


def warm_up_fleet_bound(problem: Problem) -> bool:
    """When the problem's fleet is one fleet_bound plans (a budget fleet too large for the
    fleet DP), compile fleet_bound's numba code now, or load it from numba's cache, by
    solving two idle slots of that fleet; True when it did. The first compile takes ~12 s:
    a caller that forks workers does it once, before, so they inherit it."""
    probe = Problem(problem.units, [UnitState()] * len(problem.units), np.zeros((len(problem.units), 2)),
                    budget_mw=problem.budget_mw, target_ths=problem.target_ths)
    if not fleet_bound_applicable(probe) or fleet_dp_applicable(probe):
        return False
    solve_fleet_bound(probe)
    return True


def solve_coupled(problem: Problem, *, time_limit_s: float = DEFAULT_TIME_LIMIT_S,
                  mip_rel_gap: float = DEFAULT_MIP_REL_GAP) -> Schedule:
    """A coupled fleet's optimum by the cheapest exact way: the sites' own optima when
    they keep the coupling, the fleet DP for a small fleet, the bounded fleet DP for a
    larger one under a budget, else the MILP."""
    fits = solve_if_uncoupling_fits(problem)
    if fits is not None:
        return fits
    if fleet_dp_applicable(problem):
        return solve_fleet_dp(problem)
    if fleet_bound_applicable(problem):
        bounded = solve_fleet_bound(problem)
        if bounded is not None:
            return bounded
    return solve_milp(problem, time_limit_s=time_limit_s, mip_rel_gap=mip_rel_gap)


# ---------------------------------------------------------------------------
# MILP (HiGHS through highspy)


class _Model:
    """Variables and sparse rows for HiGHS, built a block at a time.

    A term whose column is -1 is dropped: callers move constants (the initial status, the
    power before slot 0) to the row bounds and mark the term absent."""

    def __init__(self) -> None:
        self.n = 0
        self._c: list[np.ndarray] = []
        self._lb: list[np.ndarray] = []
        self._ub: list[np.ndarray] = []
        self._int: list[np.ndarray] = []
        self._r: list[np.ndarray] = []
        self._col: list[np.ndarray] = []
        self._val: list[np.ndarray] = []
        self._lo: list[np.ndarray] = []
        self._hi: list[np.ndarray] = []
        self.m = 0

    def var(self, size: int, lb: float | np.ndarray, ub: float | np.ndarray, cost: float | np.ndarray = 0.0,
            integer: bool = False) -> np.ndarray:
        idx = self.n + np.arange(size)
        self.n += size
        self._c.append(_filled(cost, size))
        self._lb.append(_filled(lb, size))
        self._ub.append(_filled(ub, size))
        self._int.append(np.full(size, 1 if integer else 0))
        return idx

    def rows(self, terms: Sequence[tuple[np.ndarray, float | np.ndarray]], lo, hi) -> None:
        """len(terms[0][0]) rows; row m = sum over terms of val[m] x x[col[m]]."""
        size = len(terms[0][0])
        if size == 0:
            return
        r = self.m + np.arange(size)
        for col, val in terms:
            col = np.asarray(col, np.int64)
            val = _filled(val, size)
            keep = col >= 0
            self._r.append(r[keep])
            self._col.append(col[keep])
            self._val.append(val[keep])
        self._lo.append(_filled(lo, size))
        self._hi.append(_filled(hi, size))
        self.m += size

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self._lb), np.concatenate(self._ub)

    def solve(self, *, relax: bool, time_limit_s: float, mip_rel_gap: float) -> "_Result":
        # highspy is imported here, not at module level: every `miner` command builds the
        # parser that imports this module, and most never solve a model.
        import highspy  # noqa: PLC0415

        inf = highspy.kHighsInf
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = self.n, self.m
        lp.col_cost_ = np.concatenate(self._c)
        lb, ub = self.bounds()
        lp.col_lower_ = np.nan_to_num(lb, neginf=-inf)
        lp.col_upper_ = np.nan_to_num(ub, posinf=inf)
        lp.row_lower_ = np.nan_to_num(np.concatenate(self._lo), neginf=-inf) if self.m else np.zeros(0)
        lp.row_upper_ = np.nan_to_num(np.concatenate(self._hi), posinf=inf) if self.m else np.zeros(0)
        if self.m:
            start, index, value = _columnwise(np.concatenate(self._r), np.concatenate(self._col),
                                              np.concatenate(self._val), self.n, self.m)
            lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
            lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = start, index, value
        if not relax:
            kinds = (highspy.HighsVarType.kContinuous, highspy.HighsVarType.kInteger)
            lp.integrality_ = [kinds[k] for k in np.concatenate(self._int)]
        # The binding's core class: highspy.Highs registers a log callback when made,
        # which prints HiGHS' banner on stdout before output_flag can be switched off
        # (and `miner backtest --json` must print the JSON alone).
        h = highspy._Highs()
        for name, v in {**HIGHS_OPTIONS, "time_limit": float(time_limit_s), "mip_rel_gap": mip_rel_gap}.items():
            if h.setOptionValue(name, v) != highspy.HighsStatus.kOk:
                raise RuntimeError(f"HiGHS refused option {name}={v!r} (highspy {highspy.__version__})")
        h.passModel(lp)
        h.run()
        status = h.getModelStatus()
        info = h.getInfo()
        solution = h.getSolution()
        # a time limit may end a MILP with an incumbent: it is still a schedule
        feasible = solution.value_valid and (status == highspy.HighsModelStatus.kOptimal
                                             or info.primal_solution_status == highspy.kSolutionStatusFeasible)
        return _Result(x=np.array(solution.col_value) if feasible else None,
                       fun=info.objective_function_value if feasible else None,
                       time_limit=status == highspy.HighsModelStatus.kTimeLimit,
                       mip_gap=0.0 if relax else float(info.mip_gap),
                       message=h.modelStatusToString(status),
                       row_dual=np.array(solution.row_dual) if relax and solution.dual_valid else None)


class _Result(NamedTuple):
    x: np.ndarray | None
    fun: float | None
    time_limit: bool
    mip_gap: float
    message: str
    row_dual: np.ndarray | None = None      # the relaxation's row prices (HiGHS' sign)


def _filled(x: float | np.ndarray, size: int) -> np.ndarray:
    """A new float array of `size`: x's values, or the scalar x repeated."""
    a = np.asarray(x, float)
    if a.shape == (size,):
        return a.copy()
    return np.full(size, a, float) if a.ndim == 0 else np.broadcast_to(a, (size,)).copy()


def _columnwise(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int, m: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column-wise sparse matrix (start, index, value) from triplets, duplicates summed."""
    key = cols.astype(np.int64) * m + rows
    order = np.argsort(key, kind="stable")
    key, vals = key[order], vals[order]
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    key, vals = key[first], np.add.reduceat(vals, first)
    start = np.searchsorted(key // m, np.arange(n + 1)).astype(np.int32)
    return start, (key % m).astype(np.int32), vals


def _shift(idx: np.ndarray, d: int) -> np.ndarray:
    """idx[t - d] for every t, -1 where t - d < 0 (a term that is absent)."""
    out = np.full(len(idx), -1, np.int64)
    if d < len(idx):
        out[d:] = idx[:len(idx) - d]
    return out


def _window_start(width: int, forced: np.ndarray) -> np.ndarray:
    """For each slot t, the first slot of the window [a, t] of the last `width` slots,
    cut just after the latest forced slot <= t (a forced stop ends every obligation)."""
    T = len(forced)
    last = np.where(forced, np.arange(T), -1)
    last = np.maximum.accumulate(last) if T else last
    return np.maximum(np.maximum(np.arange(T) - width + 1, 0), last + 1)


def _window_terms(idx: np.ndarray, starts: np.ndarray, upto_offset: int, width: int) -> list:
    """Terms sum(idx[k], k in [starts[t], t - upto_offset]) for every t (absent beyond)."""
    T = len(idx)
    ts = np.arange(T)
    terms = []
    for d in range(upto_offset, width):
        col = _shift(idx, d)
        col[ts - d < starts] = -1
        terms.append((col, 1.0))
    return terms


def solve_milp(problem: Problem, *, time_limit_s: float = DEFAULT_TIME_LIMIT_S,
               mip_rel_gap: float = DEFAULT_MIP_REL_GAP, relax: bool = False) -> Schedule:
    """The whole problem as one MILP (`relax`: its LP relaxation, an upper bound); the
    model is _fleet_model's."""
    t_begin = time.perf_counter()
    S, T = problem.margin.shape
    model, handles, _ = _fleet_model(problem)
    res = model.solve(relax=relax, time_limit_s=time_limit_s, mip_rel_gap=mip_rel_gap)
    if res.x is None:
        raise RuntimeError(f"MILP found no solution: {res.message}")
    x = res.x
    level = np.zeros((S, T))
    for i, (u, (on, p)) in enumerate(zip(problem.units, handles)):
        if relax:
            level[i] = x[p] / u.capacity_mw if p is not None else x[on]
            continue
        running = x[on] > 0.5
        frac = np.clip(x[p] / u.capacity_mw, u.min_level, 1.0) if p is not None else np.ones(T)
        level[i] = np.where(running, np.round(frac, 9), 0.0)
    gap = float(getattr(res, "mip_gap", 0.0) or 0.0)
    sched = scheduled(problem, level, "lp" if relax else "milp", t_begin, mip_gap=gap)
    if relax and res.fun is not None:
        # the relaxation's own optimum (fractional starts are paid fractionally)
        sched.profit_usd = -float(res.fun)
    if res.time_limit:
        sched.notes.append(f"time limit {time_limit_s:g}s reached; gap {gap:.2e}")
    return sched


def _fleet_model(problem: Problem) -> tuple[_Model, list, np.ndarray]:
    """(model, (on, power) columns per site, the budget rows) of the problem as a MILP.

    Compact form: stop[t] = start[t] - on[t] + on[t-1] is substituted, start is continuous
    with start >= on[t] - on[t-1] (a start cost, a min-on or a min-off row never gains from
    a larger one; where a larger start would relax a row, fail-safe curtail and ramp, start
    is pinned by start <= on[t], start <= 1 - on[t-1]), and a site with min_level 1 and no
    ramp has no power variable (p = cap x on)."""
    S, T = problem.margin.shape
    model = _Model()
    ts = np.arange(T)
    power_terms: list[tuple[np.ndarray, np.ndarray, float]] = []   # (cols, MW per unit of var)
    handles = []
    for i, (u, s0) in enumerate(zip(problem.units, problem.init)):
        cap, pmin = u.capacity_mw, u.min_level * u.capacity_mw
        forced, cur, hold = problem.forced_off[i], problem.curtail[i], problem.hold[i]
        must_on = _must_on_slots(u, s0, forced)
        must_off = _must_off_slots(u, s0, T)
        on_lb = np.zeros(T)
        on_ub = np.ones(T)
        on_ub[forced] = 0.0
        on_lb[:must_on] = 1.0
        on_ub[:must_off] = 0.0
        continuous_power = u.min_level < 1.0 or u.ramp_limited
        on = model.var(T, on_lb, on_ub, 0.0 if continuous_power else -problem.margin[i] * cap, integer=True)
        start_ub = np.where(cur, 0.0, 1.0)
        start = model.var(T, 0.0, start_ub, u.start_cost_usd)
        prev_on = float(s0.on)
        p_prev0 = s0.level * cap if s0.on else 0.0
        on_prev = _shift(on, 1)
        # start[t] - on[t] + on[t-1] >= 0
        lo0 = np.zeros(T)
        lo0[0] = -prev_on
        model.rows([(start, 1.0), (on, -1.0), (on_prev, 1.0)], lo0, np.inf)
        if cur.any() or u.ramp_limited:
            # rows where a larger start would relax a limit: make start exact,
            # start <= on[t] and start <= 1 - on[t-1]
            model.rows([(start, 1.0), (on, -1.0)], -np.inf, 0.0)
            hi0 = np.ones(T)
            hi0[0] = 1.0 - prev_on
            model.rows([(start, 1.0), (on_prev, 1.0)], -np.inf, hi0)
        if continuous_power:
            p = model.var(T, 0.0, cap, -problem.margin[i])
            model.rows([(p, 1.0), (on, -cap)], -np.inf, 0.0)
            model.rows([(p, 1.0), (on, -pmin)], 0.0, np.inf)
            power_terms.append((p, np.ones(T), u.ths_per_mw))
        else:
            p = None
            power_terms.append((on, np.full(T, cap), u.ths_per_mw))
        handles.append((on, p))
        # minimum on: sum(start[k], k in window) - on[t] <= 0 (not in forced slots)
        if u.min_on >= 2:
            a_on = _window_start(u.min_on, forced)
            rows = np.flatnonzero(~forced)
            terms = [(col[rows], 1.0) for col, _ in _window_terms(start, a_on, 0, u.min_on)]
            model.rows(terms + [(on[rows], -1.0)], -np.inf, 0.0)
        # minimum off: on[a-1] + sum(start[k], k in [a, t]) <= 1, a = t - min_off + 1
        if u.min_off >= 2:
            a_off = np.maximum(ts - u.min_off + 1, 0)
            before = np.where(a_off >= 1, on[np.maximum(a_off - 1, 0)], -1)
            hi = np.where(a_off >= 1, 1.0, 1.0 - prev_on)
            model.rows(_window_terms(start, a_off, 0, u.min_off) + [(before, 1.0)], -np.inf, hi)
        # fail-safe curtail: on[t] - sum(start[k], k in [a, t-1]) <= 1 while the initial min on binds, else 0
        if cur.any():
            a_on = _window_start(u.min_on, forced)
            rows = np.flatnonzero(cur)
            terms = [(col[rows], -1.0) for col, _ in _window_terms(start, a_on, 1, u.min_on)]
            model.rows(terms + [(on[rows], 1.0)], -np.inf, np.where(rows < must_on, 1.0, 0.0))
        # fail-safe hold: the status (and power) of the slot before
        if hold.any():
            rows = np.flatnonzero(hold)
            rhs = np.where(rows == 0, prev_on, 0.0)
            model.rows([(on[rows], 1.0), (on_prev[rows], -1.0)], rhs, rhs)
            if p is not None:
                rhs = np.where(rows == 0, p_prev0, 0.0)
                model.rows([(p[rows], 1.0), (_shift(p, 1)[rows], -1.0)], rhs, rhs)
        # ramp: p[t] - p[t-1] <= R + (step - R) start[t];
        #       p[t-1] - p[t] <= R + (step - R) stop[t], stop = start - on[t] + on[t-1]
        if u.ramp_limited and p is not None:
            ramp, extra = float(u.ramp_mw), u.step_mw - float(u.ramp_mw)
            p_prev = _shift(p, 1)
            hi = np.full(T, ramp)
            hi[0] += p_prev0
            model.rows([(p, 1.0), (p_prev, -1.0), (start, -extra)], -np.inf, hi)
            hi = np.full(T, ramp)
            hi[0] += -p_prev0 + extra * prev_on
            hi[forced | cur] = np.inf                  # a forced stop may drop from any level
            model.rows([(p_prev, 1.0), (p, -1.0), (start, -extra), (on, extra), (on_prev, -extra)],
                       -np.inf, hi)

    penalty = slack_penalty(problem)
    budget_rows = np.zeros(0, np.int64)
    if problem.budget_mw is not None:
        slack = model.var(T, 0.0, np.inf, penalty)
        budget_rows = model.m + ts
        model.rows([(cols, mw) for cols, mw, _ in power_terms] + [(slack, -1.0)], -np.inf, problem.budget_mw)
    if problem.target_ths is not None:
        ref = max(u.ths_per_mw for u in problem.units)
        slack = model.var(T, 0.0, np.inf, penalty)
        model.rows([(cols, mw * ths / ref) for cols, mw, ths in power_terms] + [(slack, 1.0)],
                   problem.target_ths / ref, np.inf)
    return model, handles, budget_rows


def slack_penalty(problem: Problem) -> float:
    """USD per MW-slot of budget excess or target shortfall: above anything a slot can earn
    or save, so slack is used only where the fleet rows cannot be met."""
    biggest = float(np.max(np.abs(problem.margin))) if problem.margin.size else 0.0
    starts = max([u.start_cost_usd / max(u.min_level * u.capacity_mw, 1e-9) for u in problem.units] + [0.0])
    mins = max([u.min_on for u in problem.units] + [1])
    return 100.0 * (1.0 + biggest * (mins + 1) + starts)


# ---------------------------------------------------------------------------
# Checking a schedule

VIOLATION_KINDS = ("min_on", "min_off", "ramp", "level", "demand_response", "fail_safe", "budget", "target")
TOLERANCE = 1e-6


def site_violations(unit: Unit, init: UnitState, level: np.ndarray, forced_off: np.ndarray | None = None,
                    curtail: np.ndarray | None = None, hold: np.ndarray | None = None) -> dict[str, int]:
    """Count one site's breaches, slot by slot, of its constraints. A stop in a forced slot
    (demand response) breaks no minimum on time; a stop there or by the fail-safe curtail
    breaks no ramp limit (the fail-safe itself waits for the minimum on time)."""
    T = len(level)
    forced_off = np.zeros(T, bool) if forced_off is None else forced_off
    curtail = np.zeros(T, bool) if curtail is None else curtail
    hold = np.zeros(T, bool) if hold is None else hold
    out = dict.fromkeys(VIOLATION_KINDS[:6], 0)
    cap = unit.capacity_mw
    on, k = init.on, init.slots
    prev_p = init.level * cap if init.on else 0.0
    for t in range(T):
        lvl = float(level[t])
        now_on = lvl > 0
        p = lvl * cap
        if now_on and not (unit.min_level - TOLERANCE <= lvl <= 1.0 + TOLERANCE):
            out["level"] += 1
        if now_on and forced_off[t]:
            out["demand_response"] += 1
        if curtail[t] and now_on and not (on and k < unit.min_on):
            out["fail_safe"] += 1
        if hold[t] and not forced_off[t] and abs(p - prev_p) > TOLERANCE * max(cap, 1.0):
            out["fail_safe"] += 1
        if on and not now_on and k < unit.min_on and not forced_off[t]:
            out["min_on"] += 1
        if not on and now_on and k < unit.min_off:
            out["min_off"] += 1
        if unit.ramp_mw is not None:
            slack = TOLERANCE * max(cap, 1.0)
            if on and now_on and abs(p - prev_p) > unit.ramp_mw + slack:
                out["ramp"] += 1
            elif not on and now_on and p > unit.step_mw + slack:
                out["ramp"] += 1
            elif on and not now_on and prev_p > unit.step_mw + slack and not (forced_off[t] or curtail[t]):
                out["ramp"] += 1
        if now_on == on:
            k = min(k + 1, LONG_AGO_SLOTS)
        else:
            on, k = now_on, 1
        prev_p = p
    return out


def violations(problem: Problem, level: np.ndarray) -> dict[str, int]:
    """All breaches of a fleet schedule, summed over sites; fleet rows per slot."""
    total = dict.fromkeys(VIOLATION_KINDS, 0)
    for i, u in enumerate(problem.units):
        for kind, n in site_violations(u, problem.init[i], level[i], problem.forced_off[i],
                                       problem.curtail[i], problem.hold[i]).items():
            total[kind] += n
    short, excess = fleet_slack(problem, level)
    total["budget"] = int(np.sum(excess > TOLERANCE))
    total["target"] = int(np.sum(short > TOLERANCE * max(problem.target_ths or 1.0, 1.0)))
    return total


# ---------------------------------------------------------------------------
# Long periods


def end_state(init: UnitState, level_row: np.ndarray) -> UnitState:
    """The status after a row of levels, starting from `init`."""
    on = level_row > 0
    if not len(on):
        return init
    last = bool(on[-1])
    changes = np.flatnonzero(on != last)
    if changes.size:
        run = len(on) - 1 - int(changes[-1])
        slots = run
    else:
        slots = len(on) + (init.slots if init.on == last else 0)
        slots = min(slots, LONG_AGO_SLOTS)
    return UnitState(on=last, level=float(level_row[-1]), slots=slots)


def solve(problem: Problem, *, window: int = 168, overlap: int = 48,
          time_limit_s: float = DEFAULT_TIME_LIMIT_S, mip_rel_gap: float = DEFAULT_MIP_REL_GAP,
          on_progress: Callable[[float], None] | None = None) -> Schedule:
    """The best schedule we can find in reasonable time.

    Uncoupled fleets decompose per site: the exact DP for sites without ramp limit or hold
    slots, the MILP for the others. Coupled fleets and ramp-limited sites over more than
    `window` + `overlap` slots are solved in windows: each window is optimised over
    `window + overlap` slots, its first `window` slots are kept and the state carried on.
    Windowed results are feasible but not proven optimal (see `Schedule.method`). Measured
    on the 10-site years of benchmarks/backtest_real.py: 48 h windows with 24 h overlap
    came within 0.07-0.11 % (power budget) and 0.0004-0.0015 % (hash-rate target) of the
    whole-year LP relaxation, an upper bound on the optimum (`solve_milp(..., relax=True)`,
    ~9 s); a whole-year MILP of a 2023 budget fleet (HiGHS, 122 s, gap 2e-6) beat the
    windowed schedule by 0.0002 %. On single sites (no coupling) windowed, whole-year MILP and the
    exact DP gave the same profit."""
    t0 = time.perf_counter()
    S, T = problem.margin.shape
    coupled = problem.budget_mw is not None or problem.target_ths is not None
    level = np.zeros((S, T))
    methods: set[str] = set()
    gaps = [0.0]
    notes: list[str] = []
    groups: list[list[int]]
    if coupled:
        groups = [list(range(S))]
    else:
        groups = [[i] for i in range(S)]
    for g, rows in enumerate(groups):
        if on_progress is not None:
            on_progress(g / len(groups))
        sub = problem.sub(rows, 0, T, coupled=coupled)
        if not coupled and dp_applicable(sub):
            level[rows[0]], _ = solve_site_dp(sub.units[0], sub.init[0], sub.margin[0],
                                              sub.forced_off[0], sub.curtail[0])
            methods.add("dp")
            continue
        if T <= window + overlap:
            s = solve_coupled(sub, time_limit_s=time_limit_s, mip_rel_gap=mip_rel_gap) if coupled else \
                solve_milp(sub, time_limit_s=time_limit_s, mip_rel_gap=mip_rel_gap)
            level[rows] = s.level
            methods.add("milp" if s.method == "dp" else s.method)
            gaps.append(s.mip_gap)
            notes += s.notes
            continue
        init = list(sub.init)
        for a in range(0, T, window):
            b = min(T, a + window + overlap)
            keep = min(window, T - a)
            window_problem = problem.sub(rows, a, b, init=init, coupled=coupled)
            s = solve_coupled(window_problem, time_limit_s=time_limit_s, mip_rel_gap=mip_rel_gap) if coupled \
                else solve_milp(window_problem, time_limit_s=time_limit_s, mip_rel_gap=mip_rel_gap)
            if s.method in ("fleet-dp", "fleet-bound"):
                methods.add(s.method)
            level[rows, a:a + keep] = s.level[:, :keep]
            init = [end_state(init[j], s.level[j, :keep]) for j in range(len(rows))]
            gaps.append(s.mip_gap)
            notes += s.notes
            if on_progress is not None:
                on_progress((g + (a + keep) / T) / len(groups))
        methods.add("milp-windowed")
    return scheduled(problem, level, "+".join(sorted(methods)), t0, mip_gap=max(gaps), notes=notes)
