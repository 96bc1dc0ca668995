"""Variable difficulty, pure: aim each connection at one share per target interval.

The estimate weighs every share by the difficulty it was issued at, so shares still
arriving for jobs sent before a set_difficulty count for the work they really took:

    hashrate ≈ Σ share_difficulty · 2**32 / elapsed
    wanted   = hashrate · target_share_interval / 2**32 = Σ d · interval / elapsed

Phases (time passed in, never read):

    fast start  first fast_start_s seconds of the connection: retarget after
                fast_start_retarget_shares shares, or after 2 intervals with none;
                steps up to x fast_start_max_step (time only, so that more shares can
                never mean a smaller step)
    steady      retarget every retarget_window_s (a window with no share steps down),
                or early after burst_shares shares; steps up to x max_step / ÷ max_step

Each result is clamped: [max(min_difficulty, suggested floor), max_difficulty], then
capped at the network difficulty (a share target is never harder than a block), then
rounded *down* to NICE_SIGNIFICANT_DIGITS digits when that stays inside the bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from decimal import ROUND_FLOOR, Decimal

__all__ = [
    "HASHES_PER_DIFF1",
    "NICE_SIGNIFICANT_DIGITS",
    "Vardiff",
    "VardiffConfig",
    "VardiffState",
    "parse_suggested_difficulty",
]

HASHES_PER_DIFF1 = 2**32  # expected hashes per share at difficulty 1
NICE_SIGNIFICANT_DIGITS = 3  # decimal digits kept when rounding a difficulty down
# Elapsed times below this (seconds) count as this: a burst of shares within one clock
# tick must not divide by zero; the step bound does the rest.
MIN_ELAPSED_S = 1e-6


@dataclass(frozen=True)
class VardiffConfig:
    """Vardiff tunables; times in seconds, difficulties in diff-1 units (fractions allowed)."""

    target_share_interval: float = 10.0  # s between shares we aim for, per connection
    min_difficulty: float = 2.0**-32  # about every hash is a share; the network cap may go lower
    max_difficulty: float = 2.0**52
    start_difficulty: float = 1e-4  # a 1 MH/s CPU miner: a share every ~0.4 s until the first retarget
    retarget_window_s: float = 60.0  # steady-state window the rate is averaged over
    burst_shares: int = 24  # retarget early once a window holds this many (4x the expected 6)
    fast_start_s: float = 60.0  # s after connect during which vardiff reacts fast
    fast_start_retarget_shares: int = 4  # fast start retargets after this many shares
    max_step: float = 4.0  # steady: new/current within [1/max_step, max_step]
    fast_start_max_step: float = 16.0  # fast start: bigger steps up, to reach an ASIC's rate quickly
    tolerance: float = 0.5  # no change unless new/current is outside [1/(1+tol), 1+tol]

    def __post_init__(self) -> None:
        for name in ("target_share_interval", "min_difficulty", "max_difficulty", "start_difficulty",
                     "retarget_window_s", "fast_start_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"vardiff.{name} must be a positive finite number, got {value!r}")
        for name in ("burst_shares", "fast_start_retarget_shares"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"vardiff.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("max_step", "fast_start_max_step"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 1):
                raise ValueError(f"vardiff.{name} must be > 1, got {getattr(self, name)!r}")
        if not 0 <= self.tolerance < self.max_step - 1:
            raise ValueError(f"vardiff.tolerance must be in [0, max_step - 1), got {self.tolerance!r}")
        if not self.min_difficulty <= self.start_difficulty <= self.max_difficulty:
            raise ValueError("vardiff: expected min_difficulty <= start_difficulty <= max_difficulty, got "
                             f"{self.min_difficulty} / {self.start_difficulty} / {self.max_difficulty}")
        # Count-triggered retargets must only ever raise the difficulty (keeps the reaction monotone).
        if self.burst_shares * self.target_share_interval < self.retarget_window_s:
            raise ValueError("vardiff.burst_shares must be >= retarget_window_s / target_share_interval")
        if self.fast_start_retarget_shares < 2:
            raise ValueError("vardiff.fast_start_retarget_shares must be >= 2")


@dataclass(frozen=True)
class VardiffState:
    """One connection's vardiff memory; replace, never mutate."""

    difficulty: float  # the difficulty last handed out (what set_difficulty said)
    started_at: float  # unix s: connection start
    window_start: float  # unix s: start of the current measuring window
    window_work: float = 0.0  # Σ issued difficulty of shares in the window
    window_shares: int = 0
    total_shares: int = 0
    floor: float = 0.0  # from mining.suggest_difficulty, already clamped to [min, max]


def parse_suggested_difficulty(value: object) -> float | None:
    """A suggest_difficulty parameter (number or numeric string) as a positive float, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _round_down(value: float) -> float:
    """value rounded down to NICE_SIGNIFICANT_DIGITS significant decimal digits (never up)."""
    if value <= 0 or not math.isfinite(value):
        return value
    exact = Decimal(repr(value))  # shortest round-trip digits: 0.3 stays 0.3
    quantum = Decimal(1).scaleb(exact.adjusted() - NICE_SIGNIFICANT_DIGITS + 1)
    nice = float(exact.quantize(quantum, rounding=ROUND_FLOOR))
    while nice > value:  # float() rounded to nearest, possibly up: step down until not harder
        nice = math.nextafter(nice, 0.0)
    return nice


class Vardiff:
    """Pure vardiff rules for one config; each method returns a new state."""

    def __init__(self, config: VardiffConfig | None = None) -> None:
        self.config = config or VardiffConfig()

    def bounds(self, state_floor: float, network_difficulty: float) -> tuple[float, float]:
        """(lowest, highest) difficulty allowed now; highest never exceeds the network's."""
        cfg = self.config
        if not (math.isfinite(network_difficulty) and network_difficulty > 0):
            raise ValueError(f"network_difficulty must be positive and finite, got {network_difficulty!r}")
        high = min(cfg.max_difficulty, network_difficulty)
        low = min(max(cfg.min_difficulty, state_floor), high)
        return low, high

    def clamp(self, difficulty: float, state_floor: float, network_difficulty: float) -> float:
        """Clamp to the bounds, then round down to a readable value if that stays inside them."""
        low, high = self.bounds(state_floor, network_difficulty)
        exact = min(max(difficulty, low), high)
        nice = _round_down(exact)
        return nice if nice >= low else exact

    def start(self, now: float, network_difficulty: float, suggested: object = None) -> VardiffState:
        """The state and first difficulty for a new connection (a suggestion may come before)."""
        floor = self._floor(suggested)
        start = floor if floor else self.config.start_difficulty
        difficulty = self.clamp(start, floor, network_difficulty)
        return VardiffState(difficulty=difficulty, started_at=now, window_start=now, floor=floor)

    def _floor(self, suggested: object) -> float:
        value = parse_suggested_difficulty(suggested)
        if value is None:
            return 0.0
        return min(max(value, self.config.min_difficulty), self.config.max_difficulty)

    def suggest(self, state: VardiffState, suggested: object, now: float,
                network_difficulty: float) -> tuple[float | None, VardiffState]:
        """mining.suggest_difficulty: use it (clamped) now and as this connection's floor."""
        floor = self._floor(suggested)
        if not floor:
            return None, state
        difficulty = self.clamp(floor, floor, network_difficulty)
        new_state = replace(state, difficulty=difficulty, floor=floor, window_start=now,
                            window_work=0.0, window_shares=0)
        return (difficulty if difficulty != state.difficulty else None), new_state

    def on_share(self, state: VardiffState, share_difficulty: float, now: float) -> VardiffState:
        """Count an accepted share at the difficulty its job was issued with."""
        return replace(state, window_work=state.window_work + share_difficulty,
                       window_shares=state.window_shares + 1, total_shares=state.total_shares + 1)

    def in_fast_start(self, state: VardiffState, now: float) -> bool:
        """Whether the connection is still in its fast-start phase."""
        return now - state.started_at < self.config.fast_start_s

    def next_difficulty(self, state: VardiffState, now: float,
                        network_difficulty: float) -> tuple[float | None, VardiffState]:
        """Call after each share and on a timer: (new difficulty or None, new state)."""
        cfg = self.config
        current = state.difficulty
        low, high = self.bounds(state.floor, network_difficulty)
        if current > high or current < low:  # the network (or a floor) moved under us
            difficulty = self.clamp(current, state.floor, network_difficulty)
            return difficulty, self._reset(state, difficulty, now)
        elapsed = now - state.window_start
        fast = self.in_fast_start(state, now)
        if fast:
            due = (state.window_shares >= cfg.fast_start_retarget_shares
                   or elapsed >= 2 * cfg.target_share_interval)
        else:
            due = state.window_shares >= cfg.burst_shares or elapsed >= cfg.retarget_window_s
        if not due:
            return None, state
        elapsed = max(elapsed, MIN_ELAPSED_S)
        if state.window_shares:
            wanted = state.window_work * cfg.target_share_interval / elapsed
            step = cfg.fast_start_max_step if fast else cfg.max_step
        else:  # nothing yet: as if one share came now, and never more than one step down
            wanted = current * cfg.target_share_interval / elapsed
            step = cfg.max_step
        wanted = min(max(wanted, current / step), current * step)
        if 1 / (1 + cfg.tolerance) <= wanted / current <= 1 + cfg.tolerance:
            return None, self._reset(state, current, now)
        difficulty = self.clamp(wanted, state.floor, network_difficulty)
        # current is inside the bounds here; rounding must not turn a raise into a cut
        difficulty = max(difficulty, current) if wanted > current else min(difficulty, current)
        if difficulty == current:
            return None, self._reset(state, current, now)
        return difficulty, self._reset(state, difficulty, now)

    @staticmethod
    def _reset(state: VardiffState, difficulty: float, now: float) -> VardiffState:
        return replace(state, difficulty=difficulty, window_start=now, window_work=0.0, window_shares=0)

    @staticmethod
    def expected_interval(hashrate: float, difficulty: float) -> float:
        """Mean seconds between shares for a miner of hashrate H/s at a difficulty."""
        return difficulty * HASHES_PER_DIFF1 / hashrate
