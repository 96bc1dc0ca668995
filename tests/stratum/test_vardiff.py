"""Vardiff against simulated miners (deterministic share arrivals) and its invariants."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miner.chain.target import difficulty_to_target, target_to_difficulty
from miner.stratum.vardiff import (
    HASHES_PER_DIFF1,
    Vardiff,
    VardiffConfig,
    VardiffState,
    _round_down,
    parse_suggested_difficulty,
)

MAINNET_DIFFICULTY = 1.2e14
REGTEST_DIFFICULTY = target_to_difficulty(0x7FFFFF << 232)  # bits 0x207fffff: ~4.66e-10
TICK_S = 1.0  # the session's vardiff timer


def ideal(hashrate: float, interval: float = 10.0) -> float:
    return hashrate * interval / HASHES_PER_DIFF1


def simulate(hashrate: float, vd: Vardiff, network: float = MAINNET_DIFFICULTY, duration: float = 900.0,
             state: VardiffState | None = None):
    """Shares every difficulty·2**32/hashrate seconds exactly; returns (changes, share times, state)."""
    state = state or vd.start(0.0, network)
    t, next_tick = state.started_at, state.started_at + TICK_S
    next_share = t + vd.expected_interval(hashrate, state.difficulty)
    changes: list[tuple[float, float]] = []
    shares: list[float] = []
    while t < duration:
        is_share = next_share <= next_tick
        if is_share:
            t = next_share
            state = vd.on_share(state, state.difficulty, t)
            shares.append(t)
        else:
            t, next_tick = next_tick, next_tick + TICK_S
        new, state = vd.next_difficulty(state, t, network)
        if new is not None:
            changes.append((t, new))
        if is_share or new is not None:
            next_share = t + vd.expected_interval(hashrate, state.difficulty)
    return changes, shares, state


@pytest.mark.parametrize("hashrate,max_changes,settle_s", [
    (1e3, 8, 300.0),  # 1 kH/s: start is ~43x too hard, idle step-downs
    (1e6, 4, 60.0),  # a CPU miner
    (100e12, 12, 10.0),  # a 100 TH/s ASIC starting 1e9x too easy
])
def test_converges_to_one_share_per_interval(hashrate, max_changes, settle_s):
    vd = Vardiff()
    changes, shares, state = simulate(hashrate, vd)
    assert len(changes) <= max_changes, changes
    assert all(t <= settle_s for t, _ in changes), changes
    interval = vd.expected_interval(hashrate, state.difficulty)
    assert 10.0 / 1.5 <= interval <= 10.0 * 1.5
    late = [s for s in shares if s >= 600.0]
    assert 20 <= len(late) <= 45
    assert state.difficulty <= ideal(hashrate) * 1.5


def test_fast_start_reaches_an_asic_within_seconds():
    vd = Vardiff()
    changes, _, state = simulate(100e12, vd, duration=20.0)
    assert changes and changes[-1][0] < 10.0
    assert ideal(100e12) / 1.5 <= state.difficulty <= ideal(100e12) * 1.5
    steps = [b / a for a, b in zip([vd.config.start_difficulty] + [d for _, d in changes], [d for _, d in changes])]
    assert all(s <= vd.config.fast_start_max_step for s in steps)


def test_cpu_miner_sees_shares_within_seconds():
    _, shares, _ = simulate(1e6, Vardiff(), duration=30.0)
    assert shares and shares[0] < 1.0 and len(shares) >= 5


def test_regtest_caps_everything_at_the_network_difficulty():
    vd = Vardiff()
    state = vd.start(0.0, REGTEST_DIFFICULTY)
    assert state.difficulty <= REGTEST_DIFFICULTY
    assert difficulty_to_target(state.difficulty) >= 0x7FFFFF << 232  # never harder than a block
    changes, shares, state = simulate(1e6, vd, network=REGTEST_DIFFICULTY, duration=0.05)
    assert all(d <= REGTEST_DIFFICULTY for _, d in changes) and state.difficulty <= REGTEST_DIFFICULTY
    assert shares[0] < 1e-3
    _, suggested = vd.suggest(state, 1000, 0.05, REGTEST_DIFFICULTY)
    assert suggested.difficulty <= REGTEST_DIFFICULTY


def test_network_difficulty_drop_lowers_the_current_difficulty_at_once():
    vd = Vardiff()
    state = vd.start(0.0, MAINNET_DIFFICULTY, suggested=1000)
    new, state = vd.next_difficulty(state, 0.5, 10.0)
    assert new is not None and new <= 10.0 and state.difficulty == new


def test_suggest_difficulty_as_given_and_clamped():
    cfg = VardiffConfig(min_difficulty=1e-6, max_difficulty=1e6)
    vd = Vardiff(cfg)
    state = vd.start(0.0, MAINNET_DIFFICULTY)
    new, s = vd.suggest(state, "512", 1.0, MAINNET_DIFFICULTY)
    assert new == 512 and s.difficulty == 512 and s.floor == 512
    new, s = vd.suggest(state, 0.25, 1.0, MAINNET_DIFFICULTY)
    assert new == 0.25
    new, s = vd.suggest(state, 1e12, 1.0, MAINNET_DIFFICULTY)
    assert new == 1e6
    new, s = vd.suggest(state, 1e-12, 1.0, MAINNET_DIFFICULTY)
    assert new == 1e-6
    for junk in ("abc", "", None, -5, 0, float("nan"), float("inf"), True, [1], "1e999"):
        assert vd.suggest(state, junk, 1.0, MAINNET_DIFFICULTY) == (None, state)
    state = vd.start(0.0, MAINNET_DIFFICULTY, suggested="64")
    assert state.difficulty == 64 and state.floor == 64


def test_suggested_difficulty_is_a_floor_for_vardiff():
    vd = Vardiff()
    state = vd.start(0.0, MAINNET_DIFFICULTY, suggested=1.0)
    changes, _, state = simulate(1e6, vd, duration=600.0, state=state)  # ideal would be ~2.3e-3
    assert changes == [] and state.difficulty == 1.0


def test_no_shares_steps_down_to_the_minimum():
    cfg = VardiffConfig(min_difficulty=1e-3, start_difficulty=10.0)
    vd = Vardiff(cfg)
    state = vd.start(0.0, MAINNET_DIFFICULTY)
    seen = []
    for t in range(1, 3600):
        new, state = vd.next_difficulty(state, float(t), MAINNET_DIFFICULTY)
        if new is not None:
            seen.append(new)
    assert seen[0] == 5.0 and seen[-1] == 1e-3
    assert all(b >= a / cfg.max_step * 0.99 for a, b in zip([10.0] + seen, seen))  # 1%: rounding down


def test_steady_steps_are_bounded():
    vd = Vardiff()
    state = VardiffState(difficulty=1.0, started_at=0.0, window_start=1000.0)
    for _ in range(1000):
        state = vd.on_share(state, 1.0, 1001.0)
    new, _ = vd.next_difficulty(state, 1001.0, MAINNET_DIFFICULTY)
    assert new == 4.0  # burst retarget, x max_step
    quiet = vd.on_share(VardiffState(difficulty=1.0, started_at=0.0, window_start=1000.0), 1.0, 1500.0)
    new, _ = vd.next_difficulty(quiet, 1600.0, MAINNET_DIFFICULTY)
    assert new == 0.25


def test_small_deviation_does_not_retarget():
    vd = Vardiff()
    state = VardiffState(difficulty=1.0, started_at=0.0, window_start=1000.0)
    for _ in range(8):  # 8 shares in 60 s where 6 are expected
        state = vd.on_share(state, 1.0, 1030.0)
    new, state = vd.next_difficulty(state, 1060.0, MAINNET_DIFFICULTY)
    assert new is None and state.window_shares == 0 and state.window_start == 1060.0


def test_shares_from_older_jobs_count_at_their_own_difficulty():
    vd = Vardiff()
    state = VardiffState(difficulty=4.0, started_at=0.0, window_start=1000.0)
    for _ in range(24):  # a burst, but at the old difficulty 0.25: the work of 1.5 shares at 4
        state = vd.on_share(state, 0.25, 1010.0)
    new, _ = vd.next_difficulty(state, 1010.0, MAINNET_DIFFICULTY)
    # Counted at 0.25 each: 6 units of work in 10 s, wanted 6 = 1.5x, inside the band. Counted
    # at the current 4 they would look like a burst and push the difficulty x4.
    assert new is None


def test_round_down_never_up():
    assert _round_down(2.3283064365386963e-3) == pytest.approx(2.32e-3) and _round_down(2.3283e-3) <= 2.3283e-3
    assert _round_down(4.656542373906925e-10) <= 4.656542373906925e-10
    assert _round_down(1000.0) == 1000.0 and _round_down(1e-4 * 16) == 1e-4 * 16 and _round_down(0.3) == 0.3


def test_config_rejects_bad_settings_by_name():
    with pytest.raises(ValueError, match="target_share_interval"):
        VardiffConfig(target_share_interval=0)
    with pytest.raises(ValueError, match="start_difficulty"):
        VardiffConfig(min_difficulty=1.0, start_difficulty=0.5)
    with pytest.raises(ValueError, match="max_step"):
        VardiffConfig(max_step=1.0)
    with pytest.raises(ValueError, match="burst_shares"):
        VardiffConfig(burst_shares=2)
    with pytest.raises(ValueError, match="network_difficulty"):
        Vardiff().start(0.0, 0.0)


def test_parse_suggested_difficulty():
    assert parse_suggested_difficulty(" 0.5 ") == 0.5 and parse_suggested_difficulty(8) == 8.0
    assert parse_suggested_difficulty("x") is None and parse_suggested_difficulty(10**400) is None


_DIFF = st.floats(min_value=1e-12, max_value=1e16, allow_nan=False, allow_infinity=False)


@settings(max_examples=400, deadline=None)
@given(current=_DIFF, network=_DIFF, n1=st.integers(0, 60), extra=st.integers(0, 60),
       started=st.floats(0, 200), elapsed=st.floats(0, 200), floor=st.one_of(st.just(0.0), _DIFF))
def test_more_shares_never_lower_difficulty(current, network, n1, extra, started, elapsed, floor):
    vd = Vardiff()
    base = VardiffState(difficulty=current, started_at=0.0, window_start=started, floor=floor)

    def outcome(n: int) -> float:
        state = base
        for _ in range(n):
            state = vd.on_share(state, current, started)
        new, after = vd.next_difficulty(state, started + elapsed, network)
        assert (new is None) or new == after.difficulty
        return after.difficulty

    assert outcome(n1) <= outcome(n1 + extra)


_EVENT = st.one_of(
    st.tuples(st.just("share"), st.floats(0, 30)),
    st.tuples(st.just("tick"), st.floats(0, 120)),
    st.tuples(st.just("suggest"), st.one_of(_DIFF, st.text(max_size=6))),
    st.tuples(st.just("network"), _DIFF),
)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(_EVENT, max_size=60), network=_DIFF, min_d=st.floats(1e-12, 1e3),
       span=st.floats(1.0, 1e8))
def test_difficulty_always_within_bounds(events, network, min_d, span):
    cfg = VardiffConfig(min_difficulty=min_d, max_difficulty=min_d * span, start_difficulty=min_d * math.sqrt(span))
    vd = Vardiff(cfg)
    state, t = vd.start(0.0, network), 0.0
    for kind, value in events:
        if kind == "share":
            t += value
            state = vd.on_share(state, state.difficulty, t)
            new, state = vd.next_difficulty(state, t, network)
        elif kind == "tick":
            t += value
            new, state = vd.next_difficulty(state, t, network)
        elif kind == "suggest":
            new, state = vd.suggest(state, value, t, network)
        else:
            network = value
            new, state = vd.next_difficulty(state, t, network)
        assert new is None or new == state.difficulty
        assert state.difficulty <= min(cfg.max_difficulty, network)
        assert state.difficulty >= min(cfg.min_difficulty, network) * (1 - 1e-9)
        assert state.floor == 0.0 or cfg.min_difficulty <= state.floor <= cfg.max_difficulty


@settings(max_examples=500, deadline=None)
@given(value=_DIFF, network=_DIFF, floor=st.one_of(st.just(0.0), _DIFF))
def test_clamp_never_rounds_up(value, network, floor):
    vd = Vardiff(VardiffConfig(min_difficulty=1e-12, max_difficulty=1e16, start_difficulty=1.0))
    low, high = vd.bounds(floor, network)
    result = vd.clamp(value, floor, network)
    assert low <= result <= high
    assert result <= max(value, low)  # rounding only ever makes it easier
    assert _round_down(value) <= value and _round_down(value) >= value * (1 - 1e-2)
