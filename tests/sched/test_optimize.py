"""The schedule optimisers: MILP against brute force, the DP against the MILP, the
constraint checker, and the windowed solve for long periods."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miner.sched.optimize import (Problem, Unit, UnitState, end_state, fleet_dp_applicable, profit_of,
                                  site_violations, solve, solve_coupled, solve_dp, solve_fleet_dp, solve_milp,
                                  solve_site_dp, violations)

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def unit(cap=1.0, lo=1.0, on=1, off=1, ramp=None, cost=0.0, ths=5e4):
    return Unit(capacity_mw=cap, min_level=lo, min_on=on, min_off=off, ramp_mw=ramp, start_cost_usd=cost,
                ths_per_mw=ths)


def feasible(problem: Problem, level: np.ndarray) -> bool:
    return not any(violations(problem, level).values())


# ---------------------------------------------------------------------------
# hand-made cases


def test_start_cost_makes_a_short_dip_not_worth_it():
    # margin +10 USD/MWh for one hour between two dear hours; a start costs 15 USD
    u = unit(cap=1.0, cost=15.0)
    p = Problem([u], [UnitState()], np.array([[-5.0, 10.0, -5.0]]))
    s = solve_milp(p)
    assert s.level.tolist() == [[0.0, 0.0, 0.0]] and s.profit_usd == 0.0
    # two cheap hours pay it: 20 - 15 = 5
    p = Problem([u], [UnitState()], np.array([[-5.0, 10.0, 10.0, -5.0]]))
    s = solve_milp(p)
    assert s.level.tolist() == [[0.0, 1.0, 1.0, 0.0]] and s.profit_usd == pytest.approx(5.0)


def test_running_through_a_short_spike_beats_a_restart():
    u = unit(cap=2.0, lo=0.5, cost=30.0)
    p = Problem([u], [UnitState(on=True, level=1.0, slots=5)], np.array([[20.0, -10.0, 20.0]]))
    s = solve_milp(p)
    # off in the spike would save 20 but the restart costs 30: stay on at the lowest level
    assert s.level.tolist() == [[1.0, 0.5, 1.0]]
    assert s.profit_usd == pytest.approx(2 * 20 + 1 * -10 + 2 * 20)


def test_min_on_and_off_from_the_initial_state():
    u = unit(on=3, off=2)
    # just started (1 slot on): must stay on 2 more slots although every hour loses
    p = Problem([u], [UnitState(on=True, level=1.0, slots=1)], np.full((1, 4), -1.0))
    assert solve_milp(p).level.tolist() == [[1.0, 1.0, 0.0, 0.0]]
    levels, _ = solve_site_dp(u, UnitState(on=True, level=1.0, slots=1), np.full(4, -1.0), np.zeros(4, bool),
                              np.zeros(4, bool))
    assert levels.tolist() == [1.0, 1.0, 0.0, 0.0]
    # just stopped: must stay off one more slot although mining pays
    p = Problem([u], [UnitState(on=False, slots=1)], np.full((1, 4), 5.0))
    assert solve_milp(p).level.tolist() == [[0.0, 1.0, 1.0, 1.0]]


def test_negative_prices_and_levels():
    # a negative price is a big margin; with min level 0.25 a dear hour inside a run
    # costs least at the lowest level
    u = unit(cap=4.0, lo=0.25, on=3)
    p = Problem([u], [UnitState()], np.array([[150.0, -40.0, 5.0]]))
    s = solve_milp(p)
    assert s.level.tolist() == [[1.0, 0.25, 1.0]]
    assert s.profit_usd == pytest.approx(4 * 150 - 1 * 40 + 4 * 5)


def test_demand_response_forces_off_and_excuses_min_on():
    u = unit(on=4)
    forced = np.array([[False, False, True, False, False]])
    p = Problem([u], [UnitState()], np.full((1, 5), 10.0), forced_off=forced)
    s = solve_milp(p)
    assert s.level[0, 2] == 0.0 and s.level[0].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]
    assert feasible(p, s.level)
    assert solve_dp(p).level.tolist() == s.level.tolist()


def test_fail_safe_curtail_and_hold():
    u = unit(cap=1.0, lo=0.5, on=2)
    # curtail slot 1: the site that started at slot 0 must stay on (min on 2) -> on in slot 1
    p = Problem([u], [UnitState()], np.array([[10.0, 10.0, 10.0]]), curtail=np.array([[False, True, True]]))
    s = solve_milp(p)
    assert s.level[0].tolist() == [1.0, 1.0, 0.0]
    assert solve_dp(p).level.tolist() == s.level.tolist()
    # hold: the level of the slot before, whatever the margin
    p = Problem([u], [UnitState(on=True, level=0.5, slots=9)], np.array([[10.0, 10.0, 10.0]]),
                hold=np.array([[True, True, False]]))
    assert solve_milp(p).level[0].tolist() == [0.5, 0.5, 1.0]


def test_ramp_limits_start_stop_and_moves():
    u = unit(cap=10.0, lo=0.2, ramp=3.0)       # step = max(3, 2) MW
    # up 3 MW an hour from a start at 3 MW; down 3 MW an hour to the 2 MW floor, and a
    # stop only from <= 3 MW: 3, 6, 9, 10 | 7, 4, 2, 0
    p = Problem([u], [UnitState()], np.array([[10.0] * 4 + [-1.0] * 4]))
    s = solve_milp(p)
    assert s.level[0].tolist() == pytest.approx([0.3, 0.6, 0.9, 1.0, 0.7, 0.4, 0.2, 0.0])
    assert s.profit_usd == pytest.approx(10 * 28 - 13)
    assert feasible(p, s.level)
    # a deep dip ahead: it ramps down early rather than run through it
    p = Problem([u], [UnitState()], np.array([[10.0] * 4 + [-50.0] * 4]))
    s = solve_milp(p)
    assert s.level[0].tolist() == pytest.approx([0.3, 0.6, 0.6, 0.3, 0.0, 0.0, 0.0, 0.0])
    v = site_violations(u, UnitState(), np.array([1.0, 1.0]))
    assert v["ramp"] == 1                        # a start straight to 10 MW
    v = site_violations(u, UnitState(on=True, level=1.0, slots=3), np.array([0.0]))
    assert v["ramp"] == 1                        # a stop from 10 MW
    v = site_violations(u, UnitState(on=True, level=1.0, slots=3), np.array([0.0]), forced_off=np.array([True]))
    assert v["ramp"] == 0 and v["min_on"] == 0   # demand response may drop it


def test_budget_binds_by_merit():
    units = [unit(cap=10.0, lo=0.5), unit(cap=10.0, lo=0.5), unit(cap=10.0, lo=0.5)]
    margin = np.array([[50.0], [20.0], [30.0]])
    p = Problem(units, [UnitState()] * 3, margin, budget_mw=15.0)
    s = solve_milp(p)
    assert s.level[:, 0].tolist() == [1.0, 0.0, 0.5]
    assert s.excess_mw.tolist() == [0.0]


def test_solver_prints_nothing_on_stdout():
    # `miner backtest --json` prints the JSON alone: HiGHS' banner must not reach stdout
    code = ("import numpy as np\n"
            "from miner.sched.optimize import Problem, Unit, UnitState, solve_milp\n"
            "u = Unit(10.0, 0.5, 2, 2, None, 250.0, 5e4)\n"
            "p = Problem([u] * 5, [UnitState()] * 5, np.full((5, 6), 40.0), budget_mw=27.0)\n"
            "s = solve_milp(p)\n"
            "assert s.method == 'milp' and abs(s.level.sum(axis=0) * 10 - 27).max() < 1e-6\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""


def test_target_met_at_least_cost_and_shortfall_reported():
    cheap, dear = unit(cap=10.0, lo=0.5, ths=5e4), unit(cap=10.0, lo=0.5, ths=4e4)
    margin = np.array([[-5.0], [-1.0]])          # both lose money; the target forces running
    # 300,000 TH/s: the first gives 5e4/MW at -5/MWh = -1e-4 USD/TH, the second -2.5e-5: cheaper
    p = Problem([cheap, dear], [UnitState()] * 2, margin, target_ths=300_000)
    s = solve_milp(p)
    assert s.level[:, 0].tolist() == pytest.approx([0.0, 0.75])
    assert s.shortfall_ths.tolist() == [0.0]
    # beyond capacity: the most it can, the shortfall reported
    p = Problem([cheap, dear], [UnitState()] * 2, margin, target_ths=2_000_000)
    s = solve_milp(p)
    assert s.level[:, 0].tolist() == [1.0, 1.0]
    assert s.shortfall_ths[0] == pytest.approx(2_000_000 - 900_000)
    assert violations(p, s.level)["target"] == 1


def test_violation_checker_counts_each_kind():
    u = unit(cap=1.0, lo=0.5, on=2, off=2)
    v = site_violations(u, UnitState(), np.array([1.0, 0.0, 1.0, 0.3]))
    assert v["min_on"] == 1 and v["min_off"] == 1 and v["level"] == 1
    v = site_violations(u, UnitState(), np.array([1.0]), forced_off=np.array([True]))
    assert v["demand_response"] == 1
    v = site_violations(u, UnitState(), np.array([1.0]), curtail=np.array([True]))
    assert v["fail_safe"] == 1


def test_end_state_carries_durations():
    s = end_state(UnitState(on=True, level=1.0, slots=2), np.array([1.0, 1.0]))
    assert s == UnitState(on=True, level=1.0, slots=4)
    s = end_state(UnitState(on=True, level=1.0, slots=2), np.array([1.0, 0.0, 0.0]))
    assert s == UnitState(on=False, level=0.0, slots=2)


def test_windowed_solve_is_feasible_and_close_to_the_whole():
    rng = np.random.default_rng(7)
    units = [unit(cap=5.0, lo=0.5, on=2, off=2, cost=40.0) for _ in range(3)]
    T = 120
    margin = rng.normal(5, 30, (3, 1)) + np.cumsum(rng.normal(0, 8, (3, T)), axis=1)
    p = Problem(units, [UnitState()] * 3, margin, budget_mw=9.0)
    whole = solve_milp(p)
    windowed = solve(p, window=24, overlap=12)
    assert windowed.method == "milp-windowed"
    assert feasible(p, windowed.level) and feasible(p, whole.level)
    assert windowed.profit_usd <= whole.profit_usd + 1e-6
    assert windowed.profit_usd >= 0.98 * whole.profit_usd
    lp = solve_milp(p, relax=True)
    assert lp.profit_usd >= whole.profit_usd - 1e-6


# ---------------------------------------------------------------------------
# properties


@st.composite
def small_problems(draw, max_sites=2, max_slots=4, coupled=True):
    S = draw(st.integers(1, max_sites))
    T = draw(st.integers(1, max_slots if S == 1 else max(1, max_slots - 1)))
    units, init = [], []
    for _ in range(S):
        lo = draw(st.sampled_from([0.5, 1.0]))
        cap = float(draw(st.integers(1, 4)))
        ramp = draw(st.sampled_from([None, None, 0.5 * cap]))
        units.append(unit(cap=cap, lo=lo, on=draw(st.integers(1, 3)), off=draw(st.integers(1, 3)), ramp=ramp,
                          cost=float(draw(st.integers(0, 30))), ths=float(draw(st.sampled_from([4e4, 5e4])))))
        on = draw(st.booleans())
        init.append(UnitState(on=on, level=(lo if on else 0.0), slots=draw(st.integers(0, 3))))
    margin = np.array(draw(st.lists(st.floats(-40, 40, allow_nan=False), min_size=S * T, max_size=S * T))).reshape(S, T)
    flags = lambda: np.array(draw(st.lists(st.booleans(), min_size=S * T, max_size=S * T))).reshape(S, T) & \
        (np.array(draw(st.lists(st.integers(0, 4), min_size=S * T, max_size=S * T))).reshape(S, T) == 0)
    budget = target = None
    if coupled and S > 1:
        kind = draw(st.sampled_from(["none", "budget", "target"]))
        total = sum(u.capacity_mw for u in units)
        if kind == "budget":
            budget = total * draw(st.sampled_from([0.4, 0.6]))
        elif kind == "target":
            target = total * 4e4 * draw(st.sampled_from([0.3, 0.5]))
    return Problem(units, init, margin, forced_off=flags(), curtail=flags(), hold=flags(),
                   budget_mw=budget, target_ths=target)


def brute_force(problem: Problem):
    """Every schedule on the level grid {0, min, middle, 1}; the feasible ones' best profit."""
    S, T = problem.margin.shape
    grids = [sorted({0.0, u.min_level, (u.min_level + 1) / 2, 1.0}) for u in problem.units]
    best = None
    for choice in itertools.product(*[grids[i] for i in range(S) for _ in range(T)]):
        level = np.array(choice).reshape(S, T)
        if feasible(problem, level):
            profit = profit_of(problem, level)[0]
            best = profit if best is None else max(best, profit)
    return best


@FAST
@given(small_problems())
def test_milp_beats_every_feasible_brute_force_schedule(problem):
    s = solve_milp(problem)
    best = brute_force(problem)
    v = violations(problem, s.level)
    if best is not None:
        # something feasible exists: the MILP's schedule is feasible and at least as good
        assert not any(v.values()), v
        assert s.profit_usd >= best - 1e-6
    else:
        # nothing on the grid is feasible: only the fleet rows may be missed, by slack
        assert not any(n for k, n in v.items() if k not in ("budget", "target")), v


@FAST
@given(small_problems(max_sites=3, max_slots=10, coupled=False))
def test_dp_equals_milp_without_ramp_and_hold(problem):
    problem = Problem([u if not u.ramp_limited else Unit(u.capacity_mw, u.min_level, u.min_on, u.min_off, None,
                                                         u.start_cost_usd, u.ths_per_mw) for u in problem.units],
                      problem.init, problem.margin, problem.forced_off, problem.curtail)
    dp, milp = solve_dp(problem), solve_milp(problem)
    assert dp.profit_usd == pytest.approx(milp.profit_usd, abs=1e-6)
    assert feasible(problem, dp.level)


@FAST
@given(small_problems(max_sites=3, max_slots=8))
def test_fleet_dp_equals_milp(problem):
    # one fleet row, no ramp limit, no hold slot: the fleet DP's optimum is the MILP's
    # (objective with the slack penalty included, so infeasible rows compare too)
    units = [Unit(u.capacity_mw, u.min_level, u.min_on, u.min_off, None, u.start_cost_usd, u.ths_per_mw)
             for u in problem.units]
    budget, target = problem.budget_mw, problem.target_ths
    if budget is None and target is None:
        budget = sum(u.capacity_mw for u in units) * 0.5
    problem = Problem(units, problem.init, problem.margin, problem.forced_off, problem.curtail,
                      budget_mw=budget, target_ths=target)
    assert fleet_dp_applicable(problem)
    dp, milp = solve_fleet_dp(problem), solve_milp(problem)
    penalty = lambda s: (s.excess_mw.sum() + s.shortfall_ths.sum() / max(u.ths_per_mw for u in units))
    assert penalty(dp) == pytest.approx(penalty(milp), abs=1e-6)
    assert dp.profit_usd == pytest.approx(milp.profit_usd, abs=1e-6)
    v = violations(problem, dp.level)
    assert not any(n for k, n in v.items() if k not in ("budget", "target")), v
    assert solve_coupled(problem).method in ("dp", "fleet-dp")
