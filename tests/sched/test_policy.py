"""Policies on constructed price paths, through the live entry point `decide`."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from miner.sched.model import REASONS, DemandResponseWindow, PriceInterval, SiteSpec, SiteState
from miner.sched.policy import AlwaysOn, GridminerPolicy, Hysteresis, Threshold, make_policy
from miner.sched.sites import EconomicsSpec, FleetSpec

UTC = timezone.utc
T0 = datetime(2024, 3, 4, tzinfo=UTC)
HOUR = timedelta(hours=1)
# breakeven = hashprice x 1e6 / (24 x 20 J/TH) = 100 USD/MWh with no pool fee
HASHPRICE = 0.048


def site(name="s", **kw) -> SiteSpec:
    kw.setdefault("capacity_mw", 1.0)
    return SiteSpec(name=name, efficiency_j_per_th=20.0, **kw)


def series(prices, start=T0, published=None, currency="USD") -> list[PriceInterval]:
    """Hourly intervals from `start`; a None price leaves the hour out. `published`: one
    time for all (day-ahead style), else each price is known at its start."""
    out = []
    for k, p in enumerate(prices):
        if p is None:
            continue
        s = start + k * HOUR
        out.append(PriceInterval(start=s, end=s + HOUR, price=p, currency=currency, resolution=HOUR,
                                 published=published if published is not None else s))
    return out


def simulate(policy, prices: dict[str, list[PriceInterval]], hours: int, states=None, start=T0,
             hashprice=HASHPRICE):
    """Call decide at each hour, carrying the states as the scheduler would."""
    states = dict(states or {})
    out = []
    for k in range(hours):
        now = start + k * HOUR
        plan = policy.decide(states, prices, now, hashprice)
        out.append(plan)
        for name, d in plan.decisions.items():
            assert d.reason in REASONS
            old = states.get(name, SiteState())
            changed = (d.level > 0) != old.on
            states[name] = SiteState(level=d.level, since=now if changed else old.since)
    return out


def levels(plans, name="s"):
    return [p.decisions[name].level for p in plans]


def reasons(plans, name="s"):
    return [p.decisions[name].reason for p in plans]


def test_threshold_crossing_and_negative_prices():
    s = site()
    plans = simulate(Threshold([s]), {"s": series([90, -30, 105, 110, 99.9])}, 5)
    assert levels(plans) == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert reasons(plans) == ["price_below_breakeven", "price_below_breakeven", "price_above_breakeven",
                              "price_above_breakeven", "price_below_breakeven"]
    d = plans[2].decisions["s"]
    assert d.price_usd_per_mwh == 105 and d.breakeven_usd_per_mwh == pytest.approx(100.0)
    assert "105.00" in d.detail


def test_currency_and_adder_make_the_all_in_price():
    s = site(currency="EUR", usd_per_unit=1.1, adder_usd_per_mwh=5.0)
    plans = simulate(Threshold([s]), {"s": series([85, 87], currency="EUR")}, 2)
    assert [p.decisions["s"].price_usd_per_mwh for p in plans] == pytest.approx([98.5, 100.7])
    assert levels(plans) == [1.0, 0.0]


def test_hysteresis_band():
    # band = 5 % of 100: stop above 105, start below 95, keep the status in between
    s = site()
    plans = simulate(Hysteresis([s], dwell_hours=1), {"s": series([90, 102, 104, 106, 103, 96, 94])}, 7)
    assert levels(plans) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert reasons(plans) == ["price_below_breakeven", "hysteresis", "hysteresis", "price_above_breakeven",
                              "price_above_breakeven", "hysteresis", "price_below_breakeven"]
    assert "dead band" in plans[1].decisions["s"].detail


def test_hysteresis_dwell():
    s = site(min_power_fraction=0.5)
    plans = simulate(Hysteresis([s], dwell_hours=3), {"s": series([90, 200, 200, 200, 50, 50, 50, 50])}, 8)
    # on at 0; stays on (at its lowest level) until 3 hours in; off 3 hours before restarting
    assert levels(plans) == [1.0, 0.5, 0.5, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert "dwell" in plans[1].decisions["s"].detail


@pytest.mark.parametrize("cls", [Threshold, Hysteresis, GridminerPolicy])
def test_min_on_and_off(cls):
    s = site(min_on_hours=3, min_off_hours=2, min_power_fraction=0.25)
    kw = {"dwell_hours": 1} if cls is Hysteresis else {}
    plans = simulate(cls([s], **kw), {"s": series([50, 300, 300, 300, 50, 50, 50], published=T0 - HOUR)}, 7)
    if cls is GridminerPolicy:
        # it sees the dear hours coming and never starts: running 3 h costs more than 1 h earns
        assert levels(plans) == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
        return
    assert levels(plans) == [1.0, 0.25, 0.25, 0.0, 0.0, 1.0, 1.0]
    assert reasons(plans)[1:5] == ["min_on_time", "min_on_time", "price_above_breakeven", "min_off_time"]
    assert "1 h left" in plans[2].decisions["s"].detail


def test_minute_level_decisions_honour_min_on():
    s = site(min_on_hours=1)
    pol = Threshold([s])
    prices = {"s": series([50, 300])}
    started = SiteState(level=1.0, since=T0 + timedelta(minutes=20))
    # started at 00:20, price goes up at 01:00: min on time keeps it on until 01:20
    d = pol.decide({"s": started}, prices, T0 + timedelta(minutes=65), HASHPRICE).decisions["s"]
    assert (d.level, d.reason) == (1.0, "min_on_time")
    d = pol.decide({"s": started}, prices, T0 + timedelta(minutes=81), HASHPRICE).decisions["s"]
    assert (d.level, d.reason) == (0.0, "price_above_breakeven")


def test_ramp_limit():
    s = site(capacity_mw=10.0, min_power_fraction=0.2, ramp_mw_per_hour=3.0)
    plans = simulate(Threshold([s]), {"s": series([50] * 5 + [300] * 5)}, 10)
    assert levels(plans) == pytest.approx([0.3, 0.6, 0.9, 1.0, 1.0, 0.7, 0.4, 0.2, 0.0, 0.0])
    assert reasons(plans)[0] == "ramp_limit" and reasons(plans)[5] == "ramp_limit"


def test_start_cost_makes_a_short_dip_not_worth_it():
    # day-ahead prices known in advance; one cheap hour earns 1 MWh x 20 USD < 50 USD start
    s = site(start_cost_usd=50.0)
    prices = {"s": series([150, 150, 80, 150, 150, 70, 70, 70, 150], published=T0 - 10 * HOUR)}
    g = simulate(GridminerPolicy([s]), prices, 9)
    assert levels(g) == [0, 0, 0, 0, 0, 1, 1, 1, 0]
    assert reasons(g)[2] == "start_cost"
    assert "does not pay" in g[2].decisions["s"].detail
    t = simulate(Threshold([s]), prices, 9)
    assert levels(t)[2] == 1.0                   # the baseline pays the start for 20 USD


def test_running_through_a_short_spike():
    s = site(start_cost_usd=50.0, min_power_fraction=0.5)
    prices = {"s": series([60, 60, 120, 60, 60], published=T0 - 10 * HOUR)}
    g = simulate(GridminerPolicy([s]), prices, 5)
    assert levels(g) == [1.0, 1.0, 0.5, 1.0, 1.0]
    assert reasons(g)[2] == "start_cost"


def test_demand_response():
    window = DemandResponseWindow(start=T0 + 2 * HOUR + timedelta(minutes=30), end=T0 + 4 * HOUR)
    s = site(demand_response=(window,), min_on_hours=3)
    for pol in (AlwaysOn([s]), Threshold([s]), GridminerPolicy([s])):
        plans = simulate(pol, {"s": series([50] * 6, published=T0 - HOUR)}, 6)
        assert levels(plans)[2:4] == [0.0, 0.0], pol.name
        assert reasons(plans)[2:4] == ["demand_response", "demand_response"]
        assert levels(plans)[4] == 1.0


@pytest.mark.parametrize("cls", [AlwaysOn, Threshold, Hysteresis, GridminerPolicy])
def test_missing_price_fail_safe(cls):
    # prices stop after hour 1; TTL 30 min: hour 2 still uses hour 1's price (it ended at
    # 02:00, 0 s ago), hour 3 does not (1 h old): fail-safe
    curtail = site("c", price_ttl_seconds=1800)
    hold = site("h", price_ttl_seconds=1800, fail_safe="hold", min_power_fraction=0.5)
    prices = {"c": series([50, 50]), "h": series([50, 50])}
    plans = simulate(cls([curtail, hold]), prices, 5)
    assert levels(plans, "c") == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert reasons(plans, "c")[3:] == ["price_missing", "price_missing"]
    assert plans[3].decisions["c"].price_usd_per_mwh is None
    assert plans[2].decisions["c"].price_usd_per_mwh == 50
    assert levels(plans, "h") == [1.0, 1.0, 1.0, 1.0, 1.0]
    assert reasons(plans, "h")[3:] == ["price_missing", "price_missing"]


def test_fail_safe_curtail_waits_for_min_on():
    # TTL 0: hour 1 still sees hour 0's price (it ended just now); hours 2.. have none
    s = site(min_on_hours=4, price_ttl_seconds=0)
    plans = simulate(Threshold([s]), {"s": series([50])}, 5)
    assert levels(plans) == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert reasons(plans)[2:] == ["price_missing"] * 3
    assert "min on time (2 h left)" in plans[2].decisions["s"].detail


def coupled_fleet(budget=None, target=None, sites=None) -> FleetSpec:
    return FleetSpec(sites=tuple(sites), economics=EconomicsSpec(hashprice_usd_per_th_day=HASHPRICE),
                     power_budget_mw=budget, hashrate_target_ths=target)


@pytest.mark.parametrize("name", ["threshold", "hysteresis", "gridminer"])
def test_budget_binding_by_merit_order(name):
    sites = [site("a", capacity_mw=10.0, min_power_fraction=0.5), site("b", capacity_mw=10.0, min_power_fraction=0.5),
             site("c", capacity_mw=10.0, min_power_fraction=0.5)]
    prices = {"a": series([40] * 3, published=T0 - HOUR), "b": series([80] * 3, published=T0 - HOUR),
              "c": series([60] * 3, published=T0 - HOUR)}
    pol = make_policy(coupled_fleet(budget=15.0, sites=sites), name)
    plans = simulate(pol, prices, 3)
    for p in plans:
        lv = {n: d.level for n, d in p.decisions.items()}
        assert lv == {"a": 1.0, "b": 0.0, "c": 0.5}
        assert p.decisions["b"].reason == "fleet_budget"


def test_always_on_budget_share_is_price_blind():
    sites = [site("a", capacity_mw=10.0), site("b", capacity_mw=10.0, min_power_fraction=0.5),
             site("c", capacity_mw=10.0)]
    prices = {n: series([40, 500], published=T0 - HOUR) for n in "abc"}
    plans = simulate(make_policy(coupled_fleet(budget=15.0, sites=sites), "always_on"), prices, 2)
    for p in plans:
        assert {n: d.level for n, d in p.decisions.items()} == {"a": 1.0, "b": 0.5, "c": 0.0}
    assert plans[1].decisions["a"].reason == "always_on"


@pytest.mark.parametrize("name", ["always_on", "threshold", "gridminer"])
def test_target_met_at_least_cost(name):
    # both sites lose money; the target needs 300,000 TH/s = 6 MW at 20 J/TH
    sites = [site("dear", capacity_mw=10.0, min_power_fraction=0.5), site("cheap", capacity_mw=10.0,
                                                                            min_power_fraction=0.5)]
    prices = {"dear": series([140] * 2, published=T0 - HOUR), "cheap": series([120] * 2, published=T0 - HOUR)}
    plans = simulate(make_policy(coupled_fleet(target=300_000, sites=sites), name), prices, 2)
    for p in plans:
        lv = {n: d.level for n, d in p.decisions.items()}
        if name == "always_on":
            assert lv == {"dear": 1.0, "cheap": 1.0}
            continue
        assert lv == {"dear": 0.0, "cheap": pytest.approx(0.6)}
        assert p.decisions["cheap"].reason == "hashrate_target"


def test_gridminer_replans_when_prices_are_published():
    s = site(start_cost_usd=10.0)
    day1 = series([50] * 24, published=T0 - 11 * HOUR)
    day2 = series([200] * 24, start=T0 + 24 * HOUR, published=T0 + 12 * HOUR)
    pol = GridminerPolicy([s])
    simulate(pol, {"s": day1 + day2}, 11)
    assert pol.replans == 1                      # one plan kept through the morning
    simulate(pol, {"s": day1 + day2}, 3, start=T0 + 11 * HOUR,
             states={"s": SiteState(level=1.0, since=T0)})
    # the states handed in at 11:00 are where the plan said: kept; day 2 at 12:00: a new plan
    assert pol.replans == 2


def test_gridminer_uses_the_last_settled_hour_of_a_real_time_market():
    # "settled" publication: an hour is known when it ends; the decision for 02:00 sees 01:00
    s = site()
    rt = [PriceInterval(start=T0 + k * HOUR, end=T0 + (k + 1) * HOUR, price=p, currency="USD", resolution=HOUR,
                        published=T0 + (k + 1) * HOUR) for k, p in enumerate([50, 150, 50, 50])]
    plans = simulate(GridminerPolicy([s]), {"s": rt}, 4, start=T0 + HOUR)
    assert [p.decisions["s"].price_usd_per_mwh for p in plans[:3]] == [50, 150, 50]
    assert levels(plans)[:3] == [1.0, 0.0, 1.0]


def test_make_policy():
    fleet = coupled_fleet(sites=[site()])
    for name, cls in [("always_on", AlwaysOn), ("threshold", Threshold), ("hysteresis", Hysteresis),
                      ("gridminer", GridminerPolicy)]:
        assert type(make_policy(fleet, name)) is cls
    assert type(make_policy(fleet)) is GridminerPolicy
    with pytest.raises(ValueError, match="unknown policy 'greedy'"):
        make_policy(fleet, "greedy")


def test_a_site_without_any_price_and_a_wrong_currency():
    a, b = site("a"), site("b")
    plan = Threshold([a, b]).decide({}, {"b": series([50], currency="EUR")}, T0, HASHPRICE)
    assert plan.at == T0
    assert plan.decisions["a"].reason == "price_missing" and plan.decisions["a"].level == 0.0
    assert plan.decisions["b"].reason == "price_missing"


@pytest.mark.parametrize("cls", [Threshold, GridminerPolicy])
def test_live_minimum_times_shorter_than_an_hour(cls):
    prices = {"s": series([300] * 3)}
    now = T0 + timedelta(minutes=40)
    # no minimum on time: a site started 10 s ago may stop at once
    s = site()
    d = cls([s]).decide({"s": SiteState(level=1.0, since=now - timedelta(seconds=10))}, prices, now,
                        HASHPRICE).decisions["s"]
    assert (d.level, d.reason) == (0.0, "price_above_breakeven")
    # 30 minutes: on for 20 minutes it stays (the reason says why), after 31 it may stop
    s = site(min_on_hours=0.5, min_power_fraction=0.5)
    d = cls([s]).decide({"s": SiteState(level=1.0, since=now - timedelta(minutes=20))}, prices, now,
                        HASHPRICE).decisions["s"]
    assert (d.level, d.reason) == (0.5, "min_on_time")
    d = cls([s]).decide({"s": SiteState(level=1.0, since=now - timedelta(minutes=31))}, prices, now,
                        HASHPRICE).decisions["s"]
    assert (d.level, d.reason) == (0.0, "price_above_breakeven")


@pytest.mark.parametrize("cls", [Threshold, GridminerPolicy])
def test_live_decisions_use_the_interval_covering_now(cls):
    # 5-minute prices as a live feed delivers them: at 10:07 the running price is 300,
    # although the hour's average so far is 160
    start = T0 + 10 * HOUR
    five = timedelta(minutes=5)
    ivs = [PriceInterval(start + k * five, start + (k + 1) * five, p, "USD", five, start + k * five)
           for k, p in enumerate([20, 300])]
    s = site(price_ttl_seconds=120)
    d = cls([s]).decide({}, {"s": ivs}, start + timedelta(minutes=7), HASHPRICE).decisions["s"]
    assert (d.level, d.reason, d.price_usd_per_mwh) == (0.0, "price_above_breakeven", 300)
    # 3 minutes after the last interval ended, beyond the 2-minute TTL: fail-safe
    d = cls([s]).decide({}, {"s": ivs}, start + timedelta(minutes=13), HASHPRICE).decisions["s"]
    assert (d.level, d.reason, d.price_usd_per_mwh) == (0.0, "price_missing", None)
