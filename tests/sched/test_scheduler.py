"""The scheduler's step, driven with a fake clock: feeds that fail or go stale, devices
that refuse to wake or to curtail, energy, cost, credit and revenue integration, the
log lines, and a loop that survives a failing step.

Devices and broken feeds are test doubles built to the Device / PriceFeed protocols of
miner.sched.model (they stand for ASICs and market APIs); the sites file, the static
feed, the economics and the metrics are the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from miner.metrics import Metrics
from miner.sched.economics import breakeven_usd_per_mwh
from miner.sched.feeds import StaticFeed, merge_intervals
from miner.devices.model import DeviceError, DeviceReading
from miner.sched.model import UTC, FeedError, PriceInterval, SiteState
from miner.sched.scheduler import (HashpriceUnavailable, NodeHashprice, RetryPolicy, Scheduler, SeriesHashprice,
                                   StaticHashprice, describe)
from miner.sched.policy import make_policy
from miner.sched.sites import parse_sites

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
HASHPRICE = 0.05
BREAKEVEN = breakeven_usd_per_mwh(HASHPRICE, 0.02, 20.0)   # 102.08 USD/MWh


def fleet_of(*sites: dict, **economics):
    doc = {"economics": {"hashprice_usd_per_th_day": HASHPRICE, "pool_fee": 0.02, **economics},
           "site": [{"capacity_mw": 1.0, "efficiency_j_per_th": 20.0, "feed": {"kind": "static", "price": 0.0},
                     **s} for s in sites]}
    return parse_sites(doc, base_dir=Path("."))  # no file in these sites: nothing to resolve


class Recording:
    """A real policy (miner.sched.policy) that also records the states it was shown."""

    def __init__(self, fleet, name: str = "threshold") -> None:
        self.policy = make_policy(fleet, name)
        self.seen_states: list[dict[str, SiteState]] = []

    def decide(self, states, prices, now, hashprice_usd_per_th_day):
        self.seen_states.append(dict(states))
        return self.policy.decide(states, prices, now, hashprice_usd_per_th_day)


class SettableFeed:
    """A live feed whose price the test sets, and which fails or hangs on demand."""

    def __init__(self, price: float) -> None:
        self.static = StaticFeed(price)
        self.failure: Exception | None = None
        self.hang = False
        self.calls = 0

    @property
    def price(self) -> float:
        return self.static.price

    @price.setter
    def price(self, value: float) -> None:
        self.static.price = value

    async def fetch(self, now):
        self.calls += 1
        if self.hang:
            await asyncio.sleep(3600)
        if self.failure is not None:
            raise self.failure
        return await self.static.fetch(now)


class Rig:
    """An ASIC as the Device protocol sees it; can refuse to wake, fail a few commands,
    ignore a curtail, or report its power."""

    def __init__(self, name: str, *, power_w: float | None = None, hashrate_hs: float = 50e12,
                 refuse_wake: bool = False, failures: int = 0, ignore_curtail: bool = False) -> None:
        self.name, self.power_w, self.rate = name, power_w, hashrate_hs
        self.refuse_wake, self.failures, self.ignore_curtail = refuse_wake, failures, ignore_curtail
        self.level = 0.0
        self.commands: list[float] = []

    async def apply(self, level: float) -> None:
        self.commands.append(level)
        if self.failures > 0:
            self.failures -= 1
            raise DeviceError(f"{self.name}: connection refused")
        if level > 0 and self.refuse_wake:
            raise DeviceError(f"{self.name}: wake refused")
        if level == 0 and self.ignore_curtail:
            return
        self.level = level

    async def read(self) -> DeviceReading:
        on = self.level > 0
        return DeviceReading(on, self.rate * self.level, None if self.power_w is None else self.power_w * self.level,
                             self.level)


async def no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


def make(fleet, feeds, devices, *, hashprice=None, **kw):
    metrics = Metrics()
    policy = Recording(fleet)
    sched = Scheduler(fleet, policy, feeds, devices, metrics=metrics,
                      hashprice_source=hashprice or StaticHashprice(HASHPRICE),
                      retry=RetryPolicy(tries=3, first_delay_seconds=0.01), sleep=no_sleep, **kw)
    return sched, policy, metrics


def sample(metrics: Metrics, name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# -- prices ------------------------------------------------------------------------------------

def test_price_across_breakeven_curtails_and_resumes_with_reasons_in_the_log(caplog):
    fleet = fleet_of({"name": "texas"})
    feed, rig = SettableFeed(30.0), Rig("rig1")
    sched, _, metrics = make(fleet, {"texas": feed}, {"texas": [rig]})
    caplog.set_level(logging.INFO, logger="miner.sched.scheduler")

    async def scenario():  # an hour apart: the policy's decisions hold for an hour
        await sched.step(at(0))
        assert rig.level == 1.0
        feed.price = 131.2
        await sched.step(at(60))
        assert rig.level == 0.0
        await sched.step(at(120))  # no change: no new log line, no new command
        feed.price = 40.0
        await sched.step(at(180))

    asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "miner.sched.scheduler"]
    assert lines == ["site texas: run at 100% (price_below_breakeven: 30.00 < 102.08 USD/MWh)",
                     "site texas: curtail (price_above_breakeven: 131.20 > 102.08 USD/MWh)",
                     "site texas: run at 100% (price_below_breakeven: 40.00 < 102.08 USD/MWh)"]
    assert rig.commands == [1.0, 0.0, 1.0]
    assert sample(metrics, "gridminer_sched_decisions_total", site="texas", reason="price_above_breakeven") == 2
    assert sample(metrics, "gridminer_sched_decisions_total", site="texas", reason="price_below_breakeven") == 2
    assert sample(metrics, "gridminer_site_curtailed", site="texas") == 0
    assert sample(metrics, "gridminer_site_hashing", site="texas") == 1
    assert sample(metrics, "gridminer_site_starts_total", site="texas") == 2
    assert sample(metrics, "gridminer_site_price_usd_per_mwh", site="texas") == 40.0
    assert sample(metrics, "gridminer_site_breakeven_usd_per_mwh", site="texas") == pytest.approx(BREAKEVEN)
    assert sample(metrics, "gridminer_hashprice_usd_per_th_day") == HASHPRICE
    assert sample(metrics, "gridminer_device_actuations_total", site="texas", device="rig1", result="ok") == 3


def test_each_phase_of_a_step_is_timed_the_policy_apart_from_the_rest():
    fleet = fleet_of({"name": "texas"})
    sched, policy, metrics = make(fleet, {"texas": SettableFeed(30.0)}, {"texas": [Rig("rig1")]})
    slow = 0.05

    class SlowPolicy:
        def decide(self, *args):
            time.sleep(slow)   # runs off the loop (to_thread), as a MILP does
            return policy.decide(*args)

    sched.policy = SlowPolicy()
    asyncio.run(sched.step(at(0)))
    asyncio.run(sched.step(at(60)))
    for phase in ("prices", "hashprice", "decide", "actuate"):
        assert sample(metrics, "gridminer_sched_step_seconds_count", phase=phase) == 2, phase
    assert sample(metrics, "gridminer_sched_step_seconds_sum", phase="decide") >= 2 * slow


def test_stale_feed_applies_the_fail_safe_and_a_fresh_price_lifts_it(caplog):
    fleet = fleet_of({"name": "texas", "price_ttl_seconds": 600},
                     {"name": "paris", "price_ttl_seconds": 600, "fail_safe": "hold"})
    texas, paris = SettableFeed(30.0), SettableFeed(30.0)
    sched, policy, metrics = make(fleet, {"texas": texas, "paris": paris},
                                  {"texas": [Rig("t1")], "paris": [Rig("p1")]})
    caplog.set_level(logging.INFO, logger="miner.sched.scheduler")

    async def scenario():
        await sched.step(at(0))   # the static price covers 12:00-13:00
        texas.failure = paris.failure = FeedError("connection refused", "unreachable")
        await sched.step(at(65))  # its hour ended 300 s ago: within the ttl, it still holds
        assert sched.plan.decisions["texas"].reason == "price_below_breakeven"
        assert sample(metrics, "gridminer_feed_stale", site="texas") == 0
        await sched.step(at(71))  # 660 s > ttl: stale
        plan = sched.plan
        texas.failure = paris.failure = None
        await sched.step(at(72))  # fresh again (texas stays off for its hour)
        await sched.step(at(140))
        return plan

    stale_plan = asyncio.run(scenario())
    assert stale_plan.decisions["texas"].level == 0.0 and stale_plan.decisions["texas"].reason == "price_missing"
    assert stale_plan.decisions["paris"].level == 1.0 and stale_plan.decisions["paris"].reason == "price_missing"
    assert sched.plan.decisions["texas"].level == 1.0
    assert sample(metrics, "gridminer_feed_errors_total", site="texas", kind="unreachable") == 2
    assert sample(metrics, "gridminer_sched_failsafe_total", site="texas") == 1
    assert sample(metrics, "gridminer_sched_failsafe_total", site="paris") == 1
    assert sample(metrics, "gridminer_feed_stale", site="texas") == 0
    assert sample(metrics, "gridminer_feed_age_seconds", site="texas") == 0
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "site texas: price feed failed (unreachable): connection refused" in text
    assert "site texas: price stale (the last price ended 660 s ago > ttl 600 s): fail-safe curtail" in text
    assert "site texas: curtail (price_missing: no fresh price: fail-safe curtail; breakeven 102.08 USD/MWh)" \
        in text
    assert "site paris: run at 100% (price_missing" in text
    assert "site texas: price feed restored" in text and "site texas: fresh price again" in text


def test_a_price_that_ended_longer_ago_than_the_ttl_is_stale():
    fleet = fleet_of({"name": "texas", "price_ttl_seconds": 1800})

    class Expired:
        async def fetch(self, now):
            start = now - timedelta(hours=2)
            return [PriceInterval(start, start + timedelta(hours=1), 10.0, "USD", timedelta(hours=1), start)]

    sched, _, metrics = make(fleet, {"texas": Expired()}, {"texas": [Rig("t1")]})
    plan = asyncio.run(sched.step(T0))
    assert plan.decisions["texas"].reason == "price_missing"
    assert sample(metrics, "gridminer_feed_stale", site="texas") == 1


def test_feed_errors_of_every_kind_are_counted_and_the_other_sites_go_on(caplog):
    fleet = fleet_of({"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "d"})
    a, b, c, d = SettableFeed(30.0), SettableFeed(30.0), SettableFeed(30.0), SettableFeed(30.0)
    b.failure = FeedError("field 'price' missing", "malformed")
    c.failure = RuntimeError("a bug in a feed")
    d.hang = True
    sched, _, metrics = make(fleet, {"a": a, "b": b, "c": c, "d": d}, {}, feed_timeout_seconds=0.05)
    plan = asyncio.run(sched.step(T0))
    assert plan.decisions["a"].level == 1.0
    assert {plan.decisions[s].reason for s in "bcd"} == {"price_missing"}
    assert sample(metrics, "gridminer_feed_errors_total", site="b", kind="malformed") == 1
    assert sample(metrics, "gridminer_feed_errors_total", site="c", kind="error") == 1
    assert sample(metrics, "gridminer_feed_errors_total", site="d", kind="unreachable") == 1
    assert "a bug in a feed" in caplog.text


def test_sites_that_share_a_feed_fetch_it_once_per_step_and_keep_their_errors_apart():
    fleet = fleet_of({"name": "a"}, {"name": "b"}, {"name": "c"})
    market, own = SettableFeed(30.0), SettableFeed(200.0)
    sched, _, metrics = make(fleet, {"a": market, "b": market, "c": own}, {})
    plan = asyncio.run(sched.step(at(0)))
    assert market.calls == 1 and own.calls == 1
    assert plan.decisions["a"].level == plan.decisions["b"].level == 1.0 and plan.decisions["c"].level == 0.0
    assert sched.intervals["a"] == sched.intervals["b"] and sched.intervals["a"] is not sched.intervals["b"]
    market.failure = FeedError("HTTP 503", "error")
    asyncio.run(sched.step(at(60)))
    assert market.calls == 2
    assert sample(metrics, "gridminer_feed_errors_total", site="a", kind="error") == 1
    assert sample(metrics, "gridminer_feed_errors_total", site="b", kind="error") == 1
    assert sample(metrics, "gridminer_feed_errors_total", site="c", kind="error") is None


def test_the_newest_answer_wins_over_what_it_overlaps():
    hour = timedelta(hours=1)

    def iv(start, price, length=hour):
        return PriceInterval(start, start + length, price, "USD", length, start)

    old = [iv(T0 - hour, 1.0), iv(T0, 2.0), iv(T0 + hour, 3.0)]
    # A live feed re-anchors its one price at each fetch: [T0+10min, +1h) replaces both it overlaps.
    got = merge_intervals([iv(T0 + timedelta(minutes=10), 9.0)], old)
    assert [(x.start, x.price) for x in got] == [(T0 - hour, 1.0), (T0 + timedelta(minutes=10), 9.0)]


# -- devices -----------------------------------------------------------------------------------

def test_a_device_that_refuses_to_wake_is_retried_counted_and_not_hashing(caplog):
    fleet = fleet_of({"name": "texas"})
    rig = Rig("rig1", refuse_wake=True)
    sched, policy, metrics = make(fleet, {"texas": SettableFeed(30.0)}, {"texas": [rig]})
    sched.states["texas"] = SiteState(0.0, T0 - timedelta(hours=3))

    async def scenario():
        await sched.step(at(0))
        await sched.step(at(1))

    asyncio.run(scenario())
    assert rig.commands == [1.0] * 6, "3 tries per step, and again next step"
    assert sample(metrics, "gridminer_device_actuations_total", site="texas", device="rig1", result="retried") == 4
    assert sample(metrics, "gridminer_device_actuations_total", site="texas", device="rig1", result="failed") == 2
    assert sample(metrics, "gridminer_device_up", site="texas", device="rig1") == 1  # it answers, and refuses
    assert sample(metrics, "gridminer_site_hashing", site="texas") == 0
    assert sample(metrics, "gridminer_site_starts_total", site="texas") == 0
    # The plan says run; what the policy sees next is the truth: off, since unchanged.
    assert sample(metrics, "gridminer_site_power_level", site="texas") == 1.0
    assert policy.seen_states[1]["texas"] == SiteState(0.0, T0 - timedelta(hours=3))
    assert sched.states["texas"] == SiteState(0.0, T0 - timedelta(hours=3))
    assert sample(metrics, "gridminer_site_power_watts", site="texas") == 0.0
    assert "site texas: device rig1 did not take level 1.00 after 3 tries: rig1: wake refused" in caplog.text
    assert "site texas: no device hashing although planned at 100%; the site stays off" in caplog.text


def test_a_device_that_fails_once_is_retried_and_then_counted_as_hashing():
    fleet = fleet_of({"name": "texas"})
    flaky, steady = Rig("flaky", failures=1), Rig("steady", refuse_wake=True)
    sched, _, metrics = make(fleet, {"texas": SettableFeed(30.0)}, {"texas": [flaky, steady]})
    asyncio.run(sched.step(T0))
    assert flaky.commands == [1.0, 1.0]
    assert sample(metrics, "gridminer_device_actuations_total", site="texas", device="flaky", result="retried") == 1
    assert sample(metrics, "gridminer_device_actuations_total", site="texas", device="flaky", result="ok") == 1
    assert sample(metrics, "gridminer_device_up", site="texas", device="flaky") == 1
    assert sample(metrics, "gridminer_site_hashing", site="texas") == 1
    assert sample(metrics, "gridminer_site_hashrate_hashes_per_second", site="texas") == 50e12  # only the one
    assert sched.states["texas"] == SiteState(1.0, T0)
    assert sample(metrics, "gridminer_site_starts_total", site="texas") == 1


def test_a_curtail_that_does_not_take_leaves_the_site_on_and_is_sent_again():
    fleet = fleet_of({"name": "texas"})
    feed, rig = SettableFeed(30.0), Rig("rig1", ignore_curtail=True)
    sched, _, metrics = make(fleet, {"texas": feed}, {"texas": [rig]})

    async def scenario():
        await sched.step(at(0))
        feed.price = 500.0
        await sched.step(at(60))
        await sched.step(at(120))

    asyncio.run(scenario())
    assert rig.commands == [1.0, 0.0, 0.0]
    assert sample(metrics, "gridminer_site_curtailed", site="texas") == 1
    assert sample(metrics, "gridminer_site_hashing", site="texas") == 1
    assert sched.states["texas"] == SiteState(1.0, at(0))


def test_read_failure_is_counted_and_the_device_is_not_hashing():
    fleet = fleet_of({"name": "texas"})

    class Mute(Rig):
        async def read(self):
            raise DeviceError("no route to host")

    sched, _, metrics = make(fleet, {"texas": SettableFeed(30.0)}, {"texas": [Mute("m")]})
    asyncio.run(sched.step(T0))
    # Once at take-over, once after the command.
    assert sample(metrics, "gridminer_device_actuations_total", site="texas", device="m", result="read_failed") == 2
    assert sample(metrics, "gridminer_device_up", site="texas", device="m") == 0
    assert sched.states["texas"].level == 0.0


def test_devices_found_hashing_at_start_make_the_site_on_since_long_ago(caplog):
    """Starting the daemon is not a start of the site: no start counted, no min on time."""
    fleet = fleet_of({"name": "texas", "min_on_hours": 2}, {"name": "paris"})
    running, idle = Rig("running"), Rig("idle")
    running.level = 1.0
    sched, policy, metrics = make(fleet, {"texas": SettableFeed(500.0), "paris": SettableFeed(500.0)},
                                  {"texas": [running], "paris": [idle]})
    caplog.set_level(logging.INFO, logger="miner.sched.scheduler")
    plan = asyncio.run(sched.step(T0))
    assert policy.seen_states[0] == {"texas": SiteState(1.0, None), "paris": SiteState()}
    assert plan.decisions["texas"].level == 0.0, "long ago: the min on time does not hold it"
    assert running.commands == [0.0] and running.level == 0.0
    assert sample(metrics, "gridminer_site_starts_total", site="texas") == 0
    assert sched.states["texas"] == SiteState(0.0, T0)
    assert "site texas: found hashing at 100% when the scheduler started" in caplog.text


# -- money -------------------------------------------------------------------------------------

def test_energy_cost_and_revenue_integrate_between_steps():
    fleet = fleet_of({"name": "texas", "adder_usd_per_mwh": 5.0, "capacity_mw": 2.0})
    feed = SettableFeed(45.0)
    measured = Rig("rig1", power_w=1e6, hashrate_hs=50e15)   # 1 MW, 50,000 TH/s
    sched, _, metrics = make(fleet, {"texas": feed}, {"texas": [measured]})

    async def scenario():
        await sched.step(at(0))
        feed.price = 60.0
        await sched.step(at(60))     # one hour at 1 MW, 45 + 5 USD/MWh
        await sched.step(at(90))     # half an hour at 60 + 5

    asyncio.run(scenario())
    assert sample(metrics, "gridminer_site_energy_joules_total", site="texas") == pytest.approx(1.5 * 3.6e9)
    assert sample(metrics, "gridminer_site_energy_cost_usd_total", site="texas") == pytest.approx(50.0 + 32.5)
    revenue = 50_000 * HASHPRICE * 0.98 * 1.5 / 24
    assert sample(metrics, "gridminer_site_revenue_usd_total", site="texas") == pytest.approx(revenue)


def test_modelled_power_when_devices_report_none_and_negative_prices_earn_credit():
    fleet = fleet_of({"name": "texas", "capacity_mw": 2.0, "efficiency_j_per_th": 25.0})
    feed = SettableFeed(-20.0)
    sched, _, metrics = make(fleet, {"texas": feed}, {"texas": [Rig("rig1", hashrate_hs=0.0)]})

    async def scenario():
        await sched.step(at(0))
        await sched.step(at(30))

    asyncio.run(scenario())
    assert sample(metrics, "gridminer_site_power_watts", site="texas") == 2e6  # capacity x level
    assert sample(metrics, "gridminer_site_energy_joules_total", site="texas") == pytest.approx(3.6e9)
    assert sample(metrics, "gridminer_site_energy_credit_usd_total", site="texas") == pytest.approx(20.0)
    assert sample(metrics, "gridminer_site_energy_cost_usd_total", site="texas") == 0
    modelled_ths = 2e6 / 25.0   # no rate reported: capacity / efficiency
    assert sample(metrics, "gridminer_site_revenue_usd_total", site="texas") == pytest.approx(
        modelled_ths * HASHPRICE * 0.98 * 0.5 / 24)


def test_nonsense_watts_count_as_unreported_and_the_bookkeeping_goes_on():
    # Firmware that reports negative power once made Counter.inc() raise on every later
    # step, freezing the state the policy sees.
    fleet = fleet_of({"name": "texas", "capacity_mw": 2.0, "efficiency_j_per_th": 25.0})
    feed = SettableFeed(40.0)
    sched, _, metrics = make(fleet, {"texas": feed}, {"texas": [Rig("rig1", power_w=-1.0, hashrate_hs=1e15)]})

    async def scenario():
        for minutes in (0, 30, 60):
            await sched.step(at(minutes))

    asyncio.run(scenario())
    assert sample(metrics, "gridminer_site_power_watts", site="texas") == 2e6  # modelled: capacity x level
    assert sample(metrics, "gridminer_site_energy_joules_total", site="texas") == pytest.approx(2 * 3.6e9)
    assert sample(metrics, "gridminer_sched_errors_total", kind="site") is None


def test_a_site_without_devices_follows_the_plan():
    fleet = fleet_of({"name": "modelled", "capacity_mw": 3.0})
    sched, _, metrics = make(fleet, {"modelled": SettableFeed(10.0)}, {})
    asyncio.run(sched.step(T0))
    assert sched.states["modelled"] == SiteState(1.0, T0)
    assert sample(metrics, "gridminer_site_power_watts", site="modelled") == 3e6
    assert sample(metrics, "gridminer_site_hashing", site="modelled") is None


# -- hashprice ---------------------------------------------------------------------------------

class Broken:
    def __init__(self, error: Exception) -> None:
        self.error, self.value = error, None

    async def hashprice(self, now):
        if self.value is None:
            raise self.error
        return self.value


def test_no_hashprice_at_all_means_fail_safe_and_a_lost_one_keeps_the_last(caplog):
    fleet = fleet_of({"name": "texas"})
    source = Broken(HashpriceUnavailable("node: connection refused"))
    sched, _, metrics = make(fleet, {"texas": SettableFeed(30.0)}, {"texas": [Rig("r")]}, hashprice=source)

    async def scenario():
        first = await sched.step(at(0))
        source.value = 0.06
        second = await sched.step(at(1))
        source.value = None
        third = await sched.step(at(2))
        return first, second, third

    first, second, third = asyncio.run(scenario())
    assert first.decisions["texas"].reason == "price_missing"
    assert second.decisions["texas"].reason == "price_below_breakeven"
    assert third.decisions["texas"].breakeven_usd_per_mwh == pytest.approx(breakeven_usd_per_mwh(0.06, 0.02, 20))
    assert sample(metrics, "gridminer_sched_errors_total", kind="hashprice_unavailable") == 2
    assert sample(metrics, "gridminer_hashprice_usd_per_th_day") == 0.06
    assert "every site follows its fail-safe" in caplog.text


def test_series_hashprice_follows_its_steps(tmp_path):
    (tmp_path / "hp.csv").write_text("start,usd_per_th_day\n2024-03-01T00:00:00Z,0.05\n2024-03-01T12:30:00Z,0.07\n")
    doc = {"economics": {"hashprice_file": "hp.csv", "pool_fee": 0.0},
           "site": [{"name": "x", "capacity_mw": 1.0, "efficiency_j_per_th": 20.0,
                     "feed": {"kind": "static", "price": 0.0}}]}
    fleet = parse_sites(doc, base_dir=tmp_path)
    source = SeriesHashprice(fleet.economics.hashprice_series)

    async def values():
        return [await source.hashprice(t) for t in (at(0), at(29), at(30))]

    assert asyncio.run(values()) == [0.05, 0.05, 0.07]
    with pytest.raises(HashpriceUnavailable):
        asyncio.run(source.hashprice(T0 - timedelta(days=1)))


def test_node_hashprice_from_the_regtest_node(regtest_node):
    """Live: getmininginfo's difficulty and the node's template coinbasevalue."""
    from miner.node.rpc import NodeRPC
    from miner.sched.economics import hashprice_usd_per_th_day

    rpc = NodeRPC(regtest_node.rpc_url, regtest_node.auth, timeout=10)
    try:
        source = NodeHashprice(rpc, 60_000.0, refresh_seconds=600)
        value = asyncio.run(source.hashprice(T0))
        difficulty = rpc.call_sync("getmininginfo")["difficulty"] or rpc.call_sync("getdifficulty")  # bcoin: 0 at height 0
        template = rpc.call_sync("getblocktemplate", {"rules": ["segwit"]})
        assert value == pytest.approx(hashprice_usd_per_th_day(difficulty, template["coinbasevalue"] / 1e8, 60_000))
        with_subsidy = NodeHashprice(rpc, 60_000.0, subsidy_btc=3.125, avg_fees_btc=0.1)
        assert asyncio.run(with_subsidy.hashprice(T0)) == pytest.approx(
            hashprice_usd_per_th_day(difficulty, 3.225, 60_000))
        from_job = NodeHashprice(rpc, 60_000.0, coinbase_sats=lambda: 312_500_000)
        assert asyncio.run(from_job.hashprice(T0)) == pytest.approx(hashprice_usd_per_th_day(difficulty, 3.125, 60_000))
    finally:
        rpc.close()
    dead = NodeRPC("http://127.0.0.1:9", regtest_node.auth, timeout=1)
    try:
        with pytest.raises(HashpriceUnavailable, match="node"):
            asyncio.run(NodeHashprice(dead, 60_000.0, timeout_seconds=2).hashprice(T0))
    finally:
        dead.close()


# -- the loop ----------------------------------------------------------------------------------

def test_the_loop_survives_a_failing_step_and_stops_on_request(caplog):
    fleet = fleet_of({"name": "texas"})

    class Flaky(Recording):
        calls = 0

        def decide(self, states, prices, now, hashprice):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise ZeroDivisionError("a policy bug")
            return super().decide(states, prices, now, hashprice)

    metrics = Metrics()
    rig = Rig("rig1")
    sched = Scheduler(fleet, Flaky(fleet), {"texas": SettableFeed(30.0)}, {"texas": [rig]}, metrics=metrics,
                      hashprice_source=StaticHashprice(HASHPRICE), interval_seconds=0.01)

    async def scenario():
        task = asyncio.create_task(sched.run())
        while sched.steps < 3:
            await asyncio.sleep(0.01)
        sched.stop()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert sample(metrics, "gridminer_sched_errors_total", kind="step") == 1
    assert rig.level == 1.0
    assert "a policy bug" in caplog.text


def test_describe_words():
    from miner.sched.model import SiteDecision

    assert describe(SiteDecision("t", 0.5, "ramp_limit", 80.0, 102.08, "ramp 2 MW/h")) == \
        "run at 50% (ramp_limit: 80.00 < 102.08 USD/MWh; ramp 2 MW/h)"
    assert describe(SiteDecision("t", 1.0, "price_below_breakeven", 80.0, 102.08, "price 80 vs 102.08")) == \
        "run at 100% (price_below_breakeven: 80.00 < 102.08 USD/MWh)"
    assert describe(SiteDecision("t", 0.0, "price_missing", None, 102.08)) == \
        "curtail (price_missing: no fresh price; breakeven 102.08 USD/MWh)"
    assert describe(SiteDecision("t", 0.0, "demand_response", 102.08, 102.08)) == \
        "curtail (demand_response: 102.08 = 102.08 USD/MWh)"


def test_bad_arguments():
    fleet = fleet_of({"name": "texas"})
    with pytest.raises(ValueError, match="unknown site"):
        Scheduler(fleet, Recording(fleet), {"paris": SettableFeed(1.0)}, {},
                  hashprice_source=StaticHashprice(0.05))
    with pytest.raises(ValueError, match="interval_seconds"):
        Scheduler(fleet, Recording(fleet), {}, {}, hashprice_source=StaticHashprice(0.05), interval_seconds=0)
    with pytest.raises(ValueError):
        RetryPolicy(tries=0)
    assert list(RetryPolicy(tries=5, first_delay_seconds=1, max_delay_seconds=3).delays()) == [1, 2, 3, 3]


# -- wiring from a sites file ------------------------------------------------------------------

def test_local_site_is_named_or_found_and_never_ambiguous():
    from miner.sched.scheduler import local_site_of

    plain = fleet_of({"name": "texas"}, {"name": "paris"})
    with_local = fleet_of({"name": "texas"}, {"name": "paris", "device": [{"kind": "local", "name": "cpu"}]})
    assert local_site_of(plain, None) is None
    assert local_site_of(plain, "texas") == "texas"
    assert local_site_of(with_local, None) == "paris"
    with pytest.raises(ValueError, match="not a site"):
        local_site_of(plain, "berlin")
    with pytest.raises(ValueError, match="belong to local_site 'texas'"):
        local_site_of(with_local, "texas")
    both = fleet_of({"name": "a", "device": [{"kind": "local", "name": "x"}]},
                    {"name": "b", "device": [{"kind": "local", "name": "y"}]})
    with pytest.raises(ValueError, match="one pool at one site"):
        local_site_of(both, None)


def test_build_scheduler_makes_feeds_devices_policy_and_hashprice():
    from miner.devices.local import LocalWorkers
    from miner.hashing.pool import WorkerPool
    from miner.sched.scheduler import build_scheduler, hashprice_source_for

    pool = WorkerPool(2, lambda *a: None)
    fleet = fleet_of({"name": "texas"}, {"name": "paris", "device": [{"kind": "local", "name": "cpu"}]})
    sched = build_scheduler(fleet, metrics=Metrics(), local_pool=pool, local_site="paris", interval_seconds=5)
    assert [type(d) for d in sched.devices["paris"]] == [LocalWorkers] and sched.devices["texas"] == []
    assert isinstance(sched.feeds["texas"], StaticFeed) and sched.interval == 5
    assert isinstance(sched.hashprice_source, StaticHashprice)
    implicit = build_scheduler(fleet_of({"name": "texas"}), metrics=Metrics(), local_pool=pool, local_site="texas")
    assert [d.name for d in implicit.devices["texas"]] == ["local"]
    no_threads = build_scheduler(fleet_of({"name": "texas"}), metrics=Metrics(), local_pool=WorkerPool(0, print),
                                 local_site="texas")
    assert no_threads.devices["texas"] == [], "a proxy without local threads has no local device"
    with pytest.raises(ValueError, match="unknown policy"):
        build_scheduler(fleet_of({"name": "texas"}), metrics=Metrics(), policy_name="greedy")
    with pytest.raises(ValueError, match="needs the run's local worker pool"):
        build_scheduler(fleet, metrics=Metrics())  # kind "local" in a run without CPU workers

    doc = {"economics": {"btc_usd": 60_000.0, "subsidy_btc": 3.125},
           "site": [{"name": "x", "capacity_mw": 1.0, "efficiency_j_per_th": 20.0, "feed": {"kind": "static"}}]}
    live = parse_sites(doc, base_dir=Path("."))
    with pytest.raises(ValueError, match="only solo mode has a node"):
        hashprice_source_for(live.economics)
    source = hashprice_source_for(live.economics, rpc=object())
    assert isinstance(source, NodeHashprice) and source.subsidy_btc == 3.125 and source.btc_usd == 60_000.0


def test_site_hash_rate_is_read_before_the_first_decision():
    """The dashboards' site hash rate comes from the devices at once, not after the first
    step has fetched prices (here a feed that never answers) and decided."""
    fleet = fleet_of({"name": "texas"})
    rig = Rig("s19", hashrate_hs=110e12)
    rig.level = 1.0
    feed = SettableFeed(20.0)
    feed.hang = True
    sched, policy, metrics = make(fleet, {"texas": feed}, {"texas": [rig]}, feed_timeout_seconds=3600.0)

    async def scenario():
        task = asyncio.create_task(sched.run())
        try:
            for _ in range(3000):      # the condition, not a time: ends as soon as it holds
                if sample(metrics, "gridminer_site_hashrate_hashes_per_second", site="texas") is not None:
                    break
                await asyncio.sleep(0.01)
            assert feed.calls >= 1 and not policy.seen_states, "still waiting for the price"
            return (sample(metrics, "gridminer_site_hashrate_hashes_per_second", site="texas"),
                    sample(metrics, "gridminer_site_hashing", site="texas"))
        finally:
            sched.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    assert asyncio.run(scenario()) == (110e12, 1.0)


def test_fleet_setting_problems_lists_every_missing_variable_and_bad_table(tmp_path):
    from miner.sched.scheduler import fleet_setting_problems

    doc = {"economics": {"hashprice_usd_per_th_day": HASHPRICE},
           "site": [{"name": "texas", "capacity_mw": 1.0, "efficiency_j_per_th": 20.0,
                     "feed": {"kind": "ercot", "settlement_point": "HB_NORTH"},
                     "device": [{"kind": "agent", "name": "rig", "host": "10.0.0.1", "token_env": "RIG_TOKEN"},
                                {"kind": "cgminer", "name": "s9", "host": "10.0.0.2", "curtail": "maybe"}]},
                    {"name": "paris", "capacity_mw": 1.0, "efficiency_j_per_th": 20.0,
                     "feed": {"kind": "http_json", "url": "https://p.example/", "price_path": "p",
                              "headers_env": {"Authorization": "PRICE_AUTH"}},
                     "device": [{"kind": "local", "name": "cpu"}]},
                    {"name": "lab", "capacity_mw": 1.0, "efficiency_j_per_th": 20.0,
                     "feed": {"kind": "csv", "path": "absent.csv"}}]}
    fleet = parse_sites(doc, base_dir=tmp_path)
    problems = fleet_setting_problems(fleet, local_site="texas", environ={})
    text = "\n".join(problems)
    for needle in ("ERCOT_SUBSCRIPTION_KEY", "ERCOT_API_TOKEN", "RIG_TOKEN", "'s9'", "curtail", "PRICE_AUTH",
                   "paris' device 'cpu'", "absent.csv"):
        assert needle in text, needle
    assert len(problems) == 7
    env = {"ERCOT_SUBSCRIPTION_KEY": "k", "ERCOT_API_TOKEN": "t", "RIG_TOKEN": "r", "PRICE_AUTH": "a"}
    assert len(fleet_setting_problems(fleet, local_site="texas", environ=env)) == 3
