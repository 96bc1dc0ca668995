"""Exact optimum of a small coupled fleet: dynamic programming over the joint status of
every site, for a fleet under a power budget or a hash-rate target (not both), without
ramp limits or hold slots. The same model as optimize.solve_milp, solved without HiGHS:
on three sites some ten times faster than the MILP, whose root work (cuts and
heuristics closing a 1-2 % LP gap) dominates small models.

Site status before a slot: (on, k) or (off, k), k = whole slots in that status capped at
min_on / min_off (as optimize.solve_site_dp); the fleet's status is the tuple of its
sites', numbered in mixed radix. In each slot every site runs or idles as its status
allows (min on and off time, demand response, fail-safe curtail); given the set that
runs, the best power levels are one greedy fill (a single fleet row over box-bounded
levels is a fractional knapsack):

    budget  running sites start at their lowest level; what is left of the budget goes
            to those that pay, best margin first; lowest levels over the budget pay the
            MILP's slack penalty per MW.
    target  running sites run at full power where it pays, else at their lowest level;
            a shortfall is filled by the losing sites that lose least per TH/s, and what
            is still short pays the penalty per unit of the MILP's scaled slack.

Work per slot is (fleet states) x (2 ** sites); `work` says whether a fleet is small
enough (MAX_WORK)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Fleet states x run/idle choices per slot above which the MILP is the faster exact
# solve. Measured on 24 h plans with 2 h minimum times: 3 sites (1,728) 5 ms against
# HiGHS' 43 ms, 4 sites (20,736) 18 ms against 28 ms; 5 sites (248,832) would not pay.
MAX_WORK = 25_000


def work(units: Sequence) -> int:
    """Fleet states x choice vectors per slot."""
    states = 1
    for u in units:
        states *= u.min_on + u.min_off + 2
    return states << len(units)


def site_moves(min_on: int, min_off: int, forced: bool, curtail: bool
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(allowed, next status, start) per status and choice (0 idle, 1 run) of one site in
    one slot. Statuses: on k = 0..min_on, then off k = 0..min_off."""
    n = min_on + min_off + 2
    off0 = min_on + 1
    allowed = np.zeros((n, 2), bool)
    nxt = np.zeros((n, 2), np.int64)
    start = np.zeros((n, 2), bool)
    for k in range(min_on + 1):
        if forced:                              # demand response: off, min on gives way
            allowed[k, 0], nxt[k, 0] = True, off0 + 1
            continue
        if k < min_on or not curtail:           # curtail: on only while min on binds
            allowed[k, 1], nxt[k, 1] = True, min(k + 1, min_on)
        if k >= min_on:
            allowed[k, 0], nxt[k, 0] = True, off0 + 1
    for k in range(min_off + 1):
        s = off0 + k
        allowed[s, 0], nxt[s, 0] = True, off0 + min(k + 1, min_off)
        if k >= min_off and not forced and not curtail:
            allowed[s, 1], nxt[s, 1], start[s, 1] = True, 1, True
    return allowed, nxt, start


def initial_status(units: Sequence, init: Sequence) -> np.ndarray:
    """Each site's status number before slot 0 (site_moves' numbering)."""
    return np.array([min(s0.slots, u.min_on) if s0.on else u.min_on + 1 + min(s0.slots, u.min_off)
                     for u, s0 in zip(units, init)], np.int64)


def _fill(units: Sequence, margin: np.ndarray, running: np.ndarray, budget_mw: float | None,
          target_ths: float | None, penalty: float) -> tuple[np.ndarray, np.ndarray]:
    """(value USD per slot (T,), levels (S, T)) of the best power levels when the sites
    marked in `running` (S,) run."""
    S, T = margin.shape
    cap = np.array([u.capacity_mw for u in units])
    lo = np.array([u.min_level for u in units]) * cap
    ths = np.array([u.ths_per_mw for u in units])
    run = running.astype(float)[:, None]
    cols = np.arange(T)
    if budget_mw is not None:
        power = lo[:, None] * run * np.ones(T)
        left = budget_mw - power.sum(axis=0)
        value = np.sum(margin * power, axis=0) - penalty * np.maximum(-left, 0.0)
        left = np.maximum(left, 0.0)
        order = np.argsort(-margin, axis=0, kind="stable")          # (S, T): best first
        for r in range(S):
            i = order[r]
            gain = margin[i, cols]
            room = (cap[i] - lo[i]) * running[i]
            add = np.where(gain > 0, np.minimum(room, left), 0.0)
            power[i, cols] += add
            value += gain * add
            left -= add
    else:
        pays = margin >= 0
        power = np.where(pays, cap[:, None], lo[:, None]) * run
        value = np.sum(margin * power, axis=0)
        short = target_ths - np.sum(power * ths[:, None], axis=0)
        # losing sites below full power, least loss per TH/s first
        order = np.argsort(-margin / ths[:, None], axis=0, kind="stable")
        for r in range(S):
            i = order[r]
            room = np.where(pays[i, cols], 0.0, (cap[i] - lo[i]) * running[i])
            add = np.clip(short / ths[i], 0.0, room)
            power[i, cols] += add
            value += margin[i, cols] * add
            short -= add * ths[i]
        ref = float(ths.max())
        value -= penalty * np.maximum(short, 0.0) / ref
    return value, power / cap[:, None]


def solve_fleet_dp(units: Sequence, init: Sequence, margin: np.ndarray, forced_off: np.ndarray,
                   curtail: np.ndarray, budget_mw: float | None, target_ths: float | None,
                   penalty: float) -> np.ndarray:
    """Levels (S, T) of an optimal schedule (see the module docstring for the model)."""
    if (budget_mw is None) == (target_ths is None):
        raise ValueError("the fleet DP takes a power budget or a hash-rate target, not both or neither")
    S, T = margin.shape
    sizes = [u.min_on + u.min_off + 2 for u in units]
    strides = np.cumprod([1] + sizes[:-1]).astype(np.int64)
    N = int(np.prod(sizes))
    ids = np.arange(N)
    digit = [(ids // strides[i]) % sizes[i] for i in range(S)]
    C = 1 << S
    bits = [[(c >> i) & 1 for i in range(S)] for c in range(C)]
    value = np.empty((C, T))
    levels = np.empty((C, S, T))
    for c in range(C):
        value[c], levels[c] = _fill(units, margin, np.array(bits[c], bool), budget_mw, target_ths, penalty)
    costs = [u.start_cost_usd for u in units]
    moves_cache: dict[tuple, tuple] = {}

    def moves(i: int, t: int):
        key = (i, bool(forced_off[i, t]), bool(curtail[i, t]))
        if key not in moves_cache:
            allowed, nxt, start = site_moves(units[i].min_on, units[i].min_off, *key[1:])
            d = digit[i]
            moves_cache[key] = (allowed[d], nxt[d] * strides[i], start[d] * costs[i])
        return moves_cache[key]

    future = np.zeros(N)
    choice = np.zeros((T, N), np.int64)
    for t in range(T - 1, -1, -1):
        slot_moves = [moves(i, t) for i in range(S)]
        best = np.full(N, -np.inf)
        arg = np.zeros(N, np.int64)
        for c in range(C):
            ok = np.ones(N, bool)
            nxt = np.zeros(N, np.int64)
            cost = np.zeros(N)
            for i, (allowed, step, start) in enumerate(slot_moves):
                b = bits[c][i]
                ok &= allowed[:, b]
                nxt += step[:, b]
                cost += start[:, b]
            total = np.where(ok, value[c, t] - cost + future[nxt], -np.inf)
            better = total > best                # ties keep the first choice (all idle first)
            best = np.where(better, total, best)
            arg = np.where(better, c, arg)
        future = best
        choice[t] = arg
    state = int(initial_status(units, init) @ strides)
    out = np.zeros((S, T))
    for t in range(T):
        c = int(choice[t, state])
        out[:, t] = levels[c, :, t]
        state = sum(int(moves(i, t)[1][state, bits[c][i]]) for i in range(S))
    return out
