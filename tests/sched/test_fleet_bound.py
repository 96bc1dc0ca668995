"""The bounded fleet DP against the MILP: any budget prices give the MILP's optimum, on
random fleets too large for the plain fleet DP and on real prices; a search that holds
too many statuses hands the problem to the MILP."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miner.sched import fleet_bound
from miner.sched.optimize import (Problem, Unit, UnitState, budget_prices, fleet_bound_applicable,
                                  fleet_dp_applicable, fleet_slack, profit_of, slack_penalty, solve,
                                  solve_coupled, solve_fleet_bound, solve_milp, violations)
from tests.sched.test_backtest import PRICES

SOME = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def budget_fleets(draw):
    S = draw(st.integers(2, 7))
    T = draw(st.integers(1, 10))
    units, init = [], []
    for _ in range(S):
        lo = draw(st.sampled_from([0.5, 1.0, 0.25]))
        cap = float(draw(st.integers(1, 6)))
        units.append(Unit(capacity_mw=cap, min_level=lo, min_on=draw(st.integers(1, 3)),
                          min_off=draw(st.integers(1, 3)), ramp_mw=None,
                          start_cost_usd=float(draw(st.integers(0, 40))), ths_per_mw=5e4))
        on = draw(st.booleans())
        init.append(UnitState(on=on, level=lo if on else 0.0, slots=draw(st.integers(0, 3))))
    margin = np.array(draw(st.lists(st.floats(-40, 40, allow_nan=False), min_size=S * T,
                                    max_size=S * T))).reshape(S, T)
    rare = lambda: np.array(draw(st.lists(st.integers(0, 6), min_size=S * T, max_size=S * T))).reshape(S, T) == 0
    budget = sum(u.capacity_mw for u in units) * draw(st.sampled_from([0.2, 0.4, 0.6]))
    return Problem(units, init, margin, forced_off=rare(), curtail=rare(), budget_mw=budget)


def objective(problem: Problem, level: np.ndarray) -> float:
    """The MILP's objective: profit less the slack penalty on budget excess."""
    _, excess = fleet_slack(problem, level)
    return profit_of(problem, level)[0] - slack_penalty(problem) * float(excess.sum())


@SOME
@given(budget_fleets(), st.sampled_from(["lp", "descent", "zero", "random"]), st.integers(0, 2 ** 32 - 1))
def test_any_budget_prices_give_the_milp_optimum(problem, prices, seed):
    T = problem.slots
    fleet = fleet_bound.BudgetFleet(problem.units, problem.init, problem.margin, problem.forced_off,
                                    problem.curtail, problem.budget_mw, slack_penalty(problem))
    lam = {"lp": lambda: budget_prices(problem), "descent": fleet.descent_prices, "zero": lambda: np.zeros(T),
           "random": lambda: np.random.default_rng(seed).uniform(0, 60, T)}[prices]()
    level = fleet.solve(lam)
    milp = solve_milp(problem)
    assert level is not None
    # HiGHS' levels carry its 1e-6 feasibility tolerance (and 9 decimals), times a slack
    # penalty of ~1e4 USD per MW: equal to 1e-4 USD
    ours, theirs = objective(problem, level), objective(problem, milp.level)
    assert ours >= theirs - 1e-4 and ours == pytest.approx(theirs, rel=1e-6, abs=1e-4)
    v = violations(problem, level)
    assert not any(n for k, n in v.items() if k != "budget"), v
    assert v["budget"] == violations(problem, milp.level)["budget"]


def ercot_margins() -> np.ndarray:
    """USD/MWh margins of ERCOT's real week 33 of 2023 at 20 J/TH and 0.075 USD/TH/day."""
    lines = (PRICES / "US-TEX-ERCO_2023_week33.csv").read_text().splitlines()[1:]
    price = np.array([float(line.split(",")[1]) for line in lines if line.strip()])
    return 0.075 * 1e6 / 20.0 / 24.0 - price


def test_ten_sites_on_real_prices_equal_the_milp():
    # ten sites on ERCOT's real week (each shifted by hours and a few USD so the sites
    # differ) under 54 % of their power: 24 h plans as the policy makes them and 72 h
    # windows as the hindsight does; the bounded DP finds the MILP's optimum where the
    # fleet DP cannot run
    base = ercot_margins()
    margin = np.stack([np.roll(base, 3 * i) + 2.0 * i for i in range(10)])
    units = [Unit(capacity_mw=cap, min_level=0.5, min_on=2, min_off=2, ramp_mw=None, start_cost_usd=25.0 * cap,
                  ths_per_mw=5e4) for cap in (15.0, 5.0, 10.0, 10.0, 12.0, 8.0, 10.0, 10.0, 6.0, 14.0)]
    init = [UnitState()] * 10
    for a, hours in [(a, 24) for a in range(0, 130, 13)] + [(0, 72), (72, 72)]:
        p = Problem(units, init, margin[:, a:a + hours], budget_mw=54.0)
        assert fleet_bound_applicable(p) and not fleet_dp_applicable(p)
        bounded, milp = solve_fleet_bound(p), solve_milp(p)
        assert bounded is not None and bounded.method == "fleet-bound"
        assert bounded.profit_usd >= milp.profit_usd - 1e-6 * abs(milp.profit_usd), a
        assert bounded.profit_usd == pytest.approx(milp.profit_usd, rel=1e-6), a
        assert not any(violations(p, bounded.level).values()), a
        init = [UnitState(on=bool(lv > 0), level=float(lv), slots=1) for lv in bounded.level[:, 8]]


def test_too_many_statuses_hand_the_problem_to_the_milp(monkeypatch):
    rng = np.random.default_rng(7)
    units = [Unit(capacity_mw=10.0, min_level=0.5, min_on=2, min_off=2, ramp_mw=None, start_cost_usd=250.0,
                  ths_per_mw=5e4)] * 8
    p = Problem(units, [UnitState()] * 8, rng.normal(5, 30, (8, 24)), budget_mw=40.0)
    assert solve_coupled(p).method == "fleet-bound"
    milp = solve_milp(p)
    for limit, value in (("MAX_STATES", 2), ("MAX_LEAVES", 50)):
        with monkeypatch.context() as m:
            m.setattr(fleet_bound, limit, value)
            assert solve_fleet_bound(p) is None, limit
            s = solve_coupled(p)
            assert s.method == "milp" and s.profit_usd == pytest.approx(milp.profit_usd), limit


def test_a_fleet_whose_statuses_need_more_than_62_bits_goes_to_the_milp():
    units = [Unit(capacity_mw=1.0, min_level=0.5, min_on=2, min_off=2, ramp_mw=None, start_cost_usd=1.0,
                  ths_per_mw=5e4)]
    fits = lambda n: fleet_bound_applicable(Problem(units * n, [UnitState()] * n, np.ones((n, 2)), budget_mw=n / 2))
    assert fits(12) and not fits(30)


def test_windowed_year_reports_the_bounded_dp():
    rng = np.random.default_rng(3)
    units = [Unit(capacity_mw=10.0, min_level=0.5, min_on=2, min_off=1, ramp_mw=None, start_cost_usd=100.0,
                  ths_per_mw=5e4)] * 6
    p = Problem(units, [UnitState()] * 6, rng.normal(5, 30, (6, 200)), budget_mw=30.0)
    s = solve(p, window=48, overlap=24)
    assert s.method == "fleet-bound+milp-windowed"
    assert not any(violations(p, s.level).values())


def test_warm_up_prepares_the_bounded_dp_only_for_fleets_it_plans(monkeypatch):
    from miner.sched import backtest
    from miner.sched.optimize import warm_up_fleet_bound

    unit = Unit(capacity_mw=10.0, min_level=0.5, min_on=2, min_off=2, ramp_mw=None, start_cost_usd=250.0,
                ths_per_mw=5e4)
    fleet = lambda n, **coupling: Problem([unit] * n, [UnitState()] * n, np.zeros((n, 3)), **coupling)
    assert not warm_up_fleet_bound(fleet(3, budget_mw=15.0))          # the fleet DP's
    assert not warm_up_fleet_bound(fleet(6, target_ths=1e6))          # the MILP's
    assert warm_up_fleet_bound(fleet(6, budget_mw=30.0)) and fleet_bound.search.signatures
    # the back-test does it in its own process before the workers fork, and says so when it is slow
    lines: list[str] = []
    monkeypatch.setattr(backtest, "PROGRESS_FIRST_S", 0.05)
    said = threading.Event()

    def slow_compile(problem):          # lasts until the line is out (however loaded the machine)
        assert said.wait(60), "no progress line while compiling"

    monkeypatch.setattr(backtest, "warm_up_fleet_bound", slow_compile)
    backtest._warm_up_in_parent(fleet(6, budget_mw=30.0), lambda line: (lines.append(line), said.set()))
    assert len(lines) == 1 and "compiling the bounded fleet DP" in lines[0]
    monkeypatch.setattr(backtest, "warm_up_fleet_bound", lambda problem: None)
    lines.clear()
    backtest._warm_up_in_parent(fleet(6, budget_mw=30.0), lines.append)
    assert lines == []                  # quick: no line (its timer is cancelled and joined)
