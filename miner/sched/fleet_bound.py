"""Exact optimum of a larger fleet under a power budget: the fleet DP of fleet_dp.py over
the joint status of every site, keeping only the joint statuses that can still reach a
threshold. Same model as optimize.solve_milp (and fleet_dp), solved without HiGHS.

Bound. With a price lam[t] >= 0 on each slot's budget row (at most the slack penalty),
the fleet's best value from slot t is at most lam[t:] . budget plus each site's own
best value from t at margins margin - lam (one small DP per site, `site_values`): the
Lagrangian bound, which with the LP relaxation's row prices equals the LP bound. Any
prices give the optimum; better ones cut more. `descend` finds them without an LP (100
subgradient steps, ~1.7 ms for ten sites x 24 h, within a median 3e-6 of the LP bound
on the ten-site back-test's plans); for 72 h windows the LP's prices cut three times
more, so the caller takes those for problems over DESCENT_MAX_SLOTS.

Search. Forward over slots, each joint status holds its best value so far; a site's
choice (run or idle) is enumerated depth first and a branch is cut as soon as its value
plus the bound on the rest falls below the threshold; a leaf's slot is then valued
exactly (fleet_dp's greedy fill) and kept if that value plus the sites' bounds from the
next slot still reaches the threshold. Equal statuses merge (the better value stays;
ties keep the first found, idle before run). Every schedule at least as good as the
threshold survives, so when any survives, the best one found is the optimum.

Threshold. The bound less 0.025 % of it, then twice that gap each time nothing survives
(the LP gap of the ten-site back-test's plans is 0.02-0.4 %). A pass that holds more than
MAX_STATES statuses in a slot, or a problem whose passes value more than MAX_LEAVES
choice vectors, gives up: the caller solves the MILP instead.

Compiled with numba (cached beside this file): ~12 s the first time on a 2-core EPYC,
~1 s to load in a new process afterwards."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from numba import njit

from miner.sched.fleet_dp import initial_status, site_moves

MAX_STATES = 100_000          # joint statuses in one slot before a pass gives up
MAX_LEAVES = 20_000_000       # choice vectors valued over all of a problem's passes (10-20 s; the
                              # budget year's hardest problem needs 2.8 M)
FIRST_GAP = 2.5e-4            # first threshold: bound x (1 - FIRST_GAP), then the gap doubles
LAST_GAP = 0.2                # beyond it: no threshold at all
_HASH = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64 (Fibonacci hashing)

DESCENT_STEPS = 100           # subgradient steps for the budget prices of short problems
DESCENT_MAX_SLOTS = 24        # longer problems take the LP relaxation's prices
STEP_GAP = 1e-3               # Polyak steps aim this far below the bound
OK, NONE_REACHES, TOO_MANY = 0, 1, 2


@njit(cache=True, error_model="numpy")
def site_values(allowed, nxt, start_usd, n_status, on_value, G):
    """G[i, t, s]: best value of site i from slot t in status s at its own on-values."""
    S, T = on_value.shape
    for i in range(S):
        for s in range(n_status[i]):
            G[i, T, s] = 0.0
        for t in range(T - 1, -1, -1):
            for s in range(n_status[i]):
                best = -np.inf
                for c in range(2):
                    if allowed[i, t, s, c]:
                        v = G[i, t + 1, nxt[i, t, s, c]] - start_usd[i, t, s, c]
                        if c == 1:
                            v += on_value[i, t]
                        best = max(best, v)
                G[i, t, s] = best


@njit(cache=True, error_model="numpy")
def slot_fill(t, run, margin, cap, lo, order, budget, penalty, power):
    """Value of slot t when the sites marked in `run` run (fleet_dp's budget fill); the
    power per site into `power`."""
    S = margin.shape[0]
    left = budget
    value = 0.0
    for i in range(S):
        power[i] = lo[i] if run[i] else 0.0
        left -= power[i]
        value += margin[i, t] * power[i]
    if left < 0:
        value += penalty * left
        left = 0.0
    for r in range(S):
        i = order[r, t]
        if margin[i, t] <= 0 or left <= 0:
            break
        if run[i]:
            add = min(cap[i] - lo[i], left)
            power[i] += add
            value += margin[i, t] * add
            left -= add
    return value


@njit(cache=True, error_model="numpy")
def descend(allowed, nxt, start_usd, n_status, margin, cap, lo, order, forced_off, budget, penalty, status0,
            iterations, G):
    """Budget prices by projected subgradient descent on the Lagrangian bound: (prices,
    bound). Starts from each slot's merit-order price (the margin of the site whose
    capacity reaches the budget, best margin first); Polyak steps toward an optimum
    guessed STEP_GAP below the bound, halved after 5 steps without a lower bound."""
    S, T = margin.shape
    lam = np.zeros(T)
    for t in range(T):
        left = budget
        for r in range(S):
            i = order[r, t]
            if margin[i, t] <= 0:
                break
            if forced_off[i, t]:
                continue
            if cap[i] >= left:
                lam[t] = min(margin[i, t], penalty)
                break
            left -= cap[i]
    on_value = np.empty((S, T))
    best_lam = lam.copy()
    best = np.inf
    use = np.empty(T)
    theta = 1.0
    stalled = 0
    for k in range(iterations):
        for i in range(S):
            for t in range(T):
                a = margin[i, t] - lam[t]
                on_value[i, t] = max(a * cap[i], a * lo[i])
        site_values(allowed, nxt, start_usd, n_status, on_value, G)
        bound = 0.0
        for t in range(T):
            bound += lam[t] * budget
            use[t] = 0.0
        for i in range(S):                         # each site's own best path: its power per slot
            s = status0[i]
            bound += G[i, 0, s]
            for t in range(T):
                pick, v_pick = 0, -np.inf
                for c in range(2):
                    if allowed[i, t, s, c]:
                        v = G[i, t + 1, nxt[i, t, s, c]] - start_usd[i, t, s, c] + c * on_value[i, t]
                        if v > v_pick:
                            pick, v_pick = c, v
                if pick == 1:
                    use[t] += cap[i] if margin[i, t] >= lam[t] else lo[i]
                s = nxt[i, t, s, pick]
        if k == 0 or bound < best:
            best = bound
            best_lam[:] = lam
            stalled = 0
        else:
            stalled += 1
            if stalled >= 5:
                theta *= 0.5
                stalled = 0
        norm = 0.0
        for t in range(T):                         # d bound / d lam[t] = budget - use[t]
            use[t] = budget - use[t]
            if (lam[t] <= 0.0 and use[t] > 0.0) or (lam[t] >= penalty and use[t] < 0.0):
                use[t] = 0.0
            norm += use[t] * use[t]
        if norm == 0.0:                            # every slot's row holds with equality or its price is 0
            break
        step = theta * STEP_GAP * abs(bound) / norm
        for t in range(T):
            lam[t] = min(max(lam[t] - step * use[t], 0.0), penalty)
    return best_lam, best


@njit(cache=True)
def _grown(a, n):
    b = np.empty(n, a.dtype)
    b[:a.shape[0]] = a
    return b


@njit(cache=True, error_model="numpy")
def search(allowed, nxt, start_usd, n_status, strides, on_value, G, budget_tail, margin, cap, lo, order,
           budget, penalty, init_status, threshold, max_states, max_leaves):
    """(OK | NONE_REACHES | TOO_MANY, best value, run mask per slot of the best schedule,
    leaves valued). TOO_MANY: more than max_states statuses in a slot or more than
    max_leaves choice vectors valued."""
    S, T = margin.shape
    size = 1024
    keys = np.empty(size, np.int64)
    vals = np.empty(size)
    parent = np.empty(size, np.int64)
    choice = np.empty(size, np.int64)
    first = np.zeros(T + 2, np.int64)             # statuses of slot t: [first[t], first[t + 1])
    keys[0] = 0
    for i in range(S):
        keys[0] += init_status[i] * strides[i]
    vals[0] = 0.0
    parent[0] = -1
    choice[0] = 0
    first[1] = 1
    bits = 10
    slot_of = np.zeros(1 << bits, np.int64)       # hash table: key -> index in this slot
    stamp = np.zeros(1 << bits, np.int64)         # slot t + 1 wrote it (0: never)
    status = np.empty(S, np.int64)
    w = np.empty((S, 2))
    rest = np.empty(S + 1)
    partial = np.empty(S + 1)
    c = np.empty(S, np.int64)
    run = np.empty(S, np.bool_)
    power = np.empty(S)
    none = np.zeros(T, np.int64)
    leaves = 0
    for t in range(T):
        base = first[t + 1]
        m = 0
        for j in range(first[t], first[t + 1]):
            F = vals[j]
            for i in range(S):
                status[i] = (keys[j] // strides[i]) % n_status[i]
                for b in range(2):
                    w[i, b] = -np.inf
                    if allowed[i, t, status[i], b]:
                        w[i, b] = G[i, t + 1, nxt[i, t, status[i], b]] - start_usd[i, t, status[i], b]
                        if b == 1:
                            w[i, b] += on_value[i, t]
            rest[S] = budget_tail[t]
            for i in range(S - 1, -1, -1):
                rest[i] = rest[i + 1] + max(w[i, 0], w[i, 1])
            if F + rest[0] < threshold:
                continue
            pos = 0
            partial[0] = 0.0
            c[0] = -1
            while pos >= 0:                            # depth first over the sites' choices
                c[pos] += 1
                if c[pos] > 1:
                    pos -= 1
                    continue
                p = partial[pos] + w[pos, c[pos]]
                if not allowed[pos, t, status[pos], c[pos]] or F + p + rest[pos + 1] < threshold:
                    continue
                if pos < S - 1:
                    partial[pos + 1] = p
                    pos += 1
                    c[pos] = -1
                    continue
                leaves += 1
                if leaves > max_leaves:
                    return TOO_MANY, 0.0, none, leaves
                key = 0
                start_cost = 0.0
                bound = 0.0
                mask = 0
                for i in range(S):
                    run[i] = c[i] == 1
                    mask |= c[i] << i
                    s2 = nxt[i, t, status[i], c[i]]
                    key += s2 * strides[i]
                    start_cost += start_usd[i, t, status[i], c[i]]
                    bound += G[i, t + 1, s2]
                value = F + slot_fill(t, run, margin, cap, lo, order, budget, penalty, power) - start_cost
                if value + bound + budget_tail[t + 1] < threshold:
                    continue
                hmask = (1 << bits) - 1
                h = ((key * _HASH) >> 17) & hmask
                while stamp[h] == t + 1 and keys[slot_of[h]] != key:
                    h = (h + 1) & hmask
                if stamp[h] == t + 1:                  # the status is already reached
                    r = slot_of[h]
                    if value > vals[r]:
                        vals[r], parent[r], choice[r] = value, j, mask
                    continue
                if m >= max_states:
                    return TOO_MANY, 0.0, none, leaves
                r = base + m
                if r >= size:
                    size *= 2
                    keys, vals = _grown(keys, size), _grown(vals, size)
                    parent, choice = _grown(parent, size), _grown(choice, size)
                keys[r], vals[r], parent[r], choice[r] = key, value, j, mask
                stamp[h], slot_of[h] = t + 1, r
                m += 1
                if 2 * m > hmask:                      # rehash this slot's statuses, twice the table
                    bits += 1
                    slot_of = np.zeros(1 << bits, np.int64)
                    stamp = np.zeros(1 << bits, np.int64)
                    hmask = (1 << bits) - 1
                    for q in range(base, base + m):
                        h = ((keys[q] * _HASH) >> 17) & hmask
                        while stamp[h] == t + 1:
                            h = (h + 1) & hmask
                        stamp[h], slot_of[h] = t + 1, q
        if m == 0:
            return NONE_REACHES, -np.inf, none, leaves
        first[t + 2] = base + m
    best = first[T]
    for j in range(first[T], first[T + 1]):
        if vals[j] > vals[best]:
            best = j
    masks = np.zeros(T, np.int64)
    j = best
    for t in range(T - 1, -1, -1):
        masks[t] = choice[j]
        j = parent[j]
    return OK, vals[best], masks, leaves


def _tables(units: Sequence, forced_off: np.ndarray, curtail: np.ndarray):
    """Per site and slot: allowed choices, next status and start cost for each status."""
    S, T = forced_off.shape
    n_status = np.array([u.min_on + u.min_off + 2 for u in units], np.int64)
    N = int(n_status.max())
    allowed = np.zeros((S, T, N, 2), bool)
    nxt = np.zeros((S, T, N, 2), np.int64)
    start_usd = np.zeros((S, T, N, 2))
    for i, u in enumerate(units):
        n = n_status[i]
        for f in (False, True):
            for cur in (False, True):
                ts = np.flatnonzero((forced_off[i] == f) & (curtail[i] == cur))
                if ts.size:
                    a, nx, st = site_moves(u.min_on, u.min_off, f, cur)
                    allowed[i, ts, :n], nxt[i, ts, :n], start_usd[i, ts, :n] = a, nx, st * u.start_cost_usd
    return allowed, nxt, start_usd, n_status


class BudgetFleet:
    """One problem's tables, built once for its searches (same model as fleet_dp)."""

    def __init__(self, units: Sequence, init: Sequence, margin: np.ndarray, forced_off: np.ndarray,
                 curtail: np.ndarray, budget_mw: float, penalty: float) -> None:
        self.allowed, self.nxt, self.start_usd, self.n_status = _tables(units, forced_off, curtail)
        self.strides = np.cumprod(np.r_[1, self.n_status[:-1]]).astype(np.int64)
        self.cap = np.array([u.capacity_mw for u in units], float)
        self.lo = np.array([u.min_level for u in units], float) * self.cap
        self.margin = np.ascontiguousarray(margin, float)
        self.order = np.argsort(-self.margin, axis=0, kind="stable").astype(np.int64)
        self.forced_off = np.ascontiguousarray(forced_off, bool)
        self.budget_mw, self.penalty = float(budget_mw), float(penalty)
        self.status0 = initial_status(units, init)
        self.leaves = 0                           # choice vectors valued by this problem's searches

    def _values(self) -> np.ndarray:
        S, T = self.margin.shape
        return np.zeros((S, T + 1, int(self.n_status.max())))

    def descent_prices(self, steps: int = DESCENT_STEPS) -> np.ndarray:
        """Budget prices from `descend` (no LP)."""
        prices, _ = descend(self.allowed, self.nxt, self.start_usd, self.n_status, self.margin, self.cap, self.lo,
                            self.order, self.forced_off, self.budget_mw, self.penalty, self.status0, steps,
                            self._values())
        return prices

    def solve(self, prices: np.ndarray) -> np.ndarray | None:
        """Levels (S, T) of an optimal schedule, with `prices` (T,) as the budget rows'
        prices for the bound (any prices give the optimum; good ones give it fast). None
        when a pass holds too many statuses."""
        S, T = self.margin.shape
        lam = np.clip(np.asarray(prices, float), 0.0, self.penalty)
        adjusted = self.margin - lam
        on_value = np.maximum(adjusted * self.cap[:, None], adjusted * self.lo[:, None])
        G = self._values()
        site_values(self.allowed, self.nxt, self.start_usd, self.n_status, on_value, G)
        budget_tail = np.r_[np.cumsum((lam * self.budget_mw)[::-1])[::-1], 0.0]
        bound = float(sum(G[i, 0, self.status0[i]] for i in range(S)) + budget_tail[0])
        gap = FIRST_GAP
        while True:
            threshold = bound - gap * max(abs(bound), 1.0) if gap < LAST_GAP else -np.inf
            found, _, masks, leaves = search(self.allowed, self.nxt, self.start_usd, self.n_status, self.strides,
                                             on_value, G, budget_tail, self.margin, self.cap, self.lo, self.order,
                                             self.budget_mw, self.penalty, self.status0, threshold, MAX_STATES,
                                             MAX_LEAVES - self.leaves)
            self.leaves += leaves
            if found == TOO_MANY:
                return None
            if found == OK:
                break
            if threshold == -np.inf:      # no schedule at all: cannot happen with site_moves' tables
                return None
            gap *= 2
        level = np.zeros((S, T))
        power = np.empty(S)
        for t in range(T):
            run = ((int(masks[t]) >> np.arange(S)) & 1).astype(bool)
            slot_fill(t, run, self.margin, self.cap, self.lo, self.order, self.budget_mw, self.penalty, power)
            level[:, t] = power / self.cap
        return level
