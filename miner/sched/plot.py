"""The back-test's pictures, for a person to look at.

`plot_backtest(result, "fleet.png")` writes two PNGs:

* ``fleet.png``, the period at a glance: fleet profit per month for every policy; each
  site's monthly profit and uptime under gridminer (heatmaps with the values written in);
  each site's price duration curve (hours sorted by price) against its breakeven; and
  the fleet's power per day.
* ``fleet-detail.png``, a window (default: the first 7 days) hour by hour: for each site
  its all-in price against breakeven, and below it, in a panel of its own, the power
  level that gridminer (thin line) and hindsight (wide pale band) ran it at; then the
  fleet's power against the budget.

Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it
works headless and inside a process that uses another backend.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from miner.sched.price_files import utc_datetime

if TYPE_CHECKING:
    from miner.sched.backtest import BacktestResult

DETAIL_DEFAULT_DAYS = 7
POLICY_COLOURS = {"always_on": "tab:gray", "threshold": "tab:orange", "hysteresis": "tab:purple",
                  "gridminer": "tab:green", "hindsight": "tab:blue"}
# Price axes show the 1st..99th percentile (spikes would flatten the rest); what lies
# beyond is said in the panel.
PRICE_PERCENTILES = (1.0, 99.0)


def _hours(result: "BacktestResult") -> np.ndarray:
    n = result.price_usd.shape[1]
    start = np.datetime64(result.start.replace(tzinfo=None), "h")
    return start + np.arange(n).astype("timedelta64[h]")


def detail_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}-detail{path.suffix or '.png'}")


def plot_backtest(result: "BacktestResult", path: str | Path, *,
                  window: Sequence[object] | None = None, dpi: int = 100) -> list[Path]:
    """Write the overview PNG at `path` and the detail PNG beside it; returns both paths.
    `window`: (from, to) of the detail plot (dates, date-times or ISO strings)."""
    path = Path(path)
    out = [path, detail_path(path)]
    a, b = detail_window(result, window)
    for fig, p in ((_overview(result), out[0]), (_detail(result, a, b), out[1])):
        FigureCanvasAgg(fig)
        fig.savefig(p, dpi=dpi)
    return out


def detail_window(result: "BacktestResult", window: Sequence[object] | None) -> tuple[int, int]:
    """Hour indexes [a, b) of the detail plot; ValueError for a window outside the period."""
    n = result.price_usd.shape[1]
    if window is None:
        return 0, min(n, DETAIL_DEFAULT_DAYS * 24)
    start, end = (utc_datetime(w) for w in window)
    a = max(0, int((start - result.start) / timedelta(hours=1)))
    b = min(n, int(np.ceil((end - result.start) / timedelta(hours=1))))
    if b <= a:
        raise ValueError(f"plot window {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC is outside the "
                         f"back-test period {result.start:%Y-%m-%d %H:%M} .. {result.end:%Y-%m-%d %H:%M} UTC")
    return a, b


# ---------------------------------------------------------------------------
# The period at a glance


def _months(result: "BacktestResult") -> tuple[np.ndarray, list[str]]:
    """Month index per hour and the month labels."""
    t = _hours(result).astype("datetime64[M]")
    months = np.unique(t)
    return np.searchsorted(months, t), [str(m) for m in months]


def monthly(result: "BacktestResult", policy: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(profit USD (S, M), uptime fraction (S, M), month labels) of a policy."""
    idx, labels = _months(result)
    levels = result.policies[policy].levels
    energy = levels * result.capacity_mw[:, None]
    from miner.sched.backtest import _forward_fill

    price = _forward_fill(result.price_usd)     # charged as the accounting does
    hourly_profit = energy * (result.breakeven_usd - price)
    on = levels > 0
    starts = on & ~np.concatenate([np.zeros((on.shape[0], 1), bool), on[:, :-1]], axis=1)
    costs = np.array([s.get("start_costs_usd", 0.0) / max(s.get("starts", 0), 1)
                      for s in result.policies[policy].sites]) if result.policies[policy].sites else \
        np.zeros(on.shape[0])
    hourly_profit = hourly_profit - starts * costs[:, None]
    M = len(labels)
    profit = np.zeros((on.shape[0], M))
    uptime = np.zeros((on.shape[0], M))
    for m in range(M):
        sel = idx == m
        profit[:, m] = hourly_profit[:, sel].sum(axis=1)
        uptime[:, m] = on[:, sel].mean(axis=1)
    return profit, uptime, labels


def _overview(result: "BacktestResult") -> Figure:
    S = len(result.site_names)
    fig = Figure(figsize=(16, 6.0 + 0.9 * S), layout="constrained")
    grid = fig.add_gridspec(3, 2, height_ratios=[1.0, 0.16 * S + 0.4, 1.2])
    _fleet_monthly(fig.add_subplot(grid[0, 0]), result)
    _fleet_daily_power(fig.add_subplot(grid[0, 1]), result)
    policy = "gridminer" if "gridminer" in result.policies else next(iter(result.policies))
    profit, uptime, labels = monthly(result, policy)
    _heatmap(fig, fig.add_subplot(grid[1, 0]), profit / 1000.0, result.site_names, labels,
             f"{policy}: profit per site and month (thousand USD)", "{:,.0f}", "RdYlGn", centre=True)
    _heatmap(fig, fig.add_subplot(grid[1, 1]), uptime * 100.0, result.site_names, labels,
             f"{policy}: uptime per site and month (% of hours on)", "{:.0f}", "Greens", centre=False)
    _duration_curves(fig, grid[2, :], result)
    fig.suptitle(_title(result), fontsize=11)
    return fig


def _fleet_monthly(ax, result: "BacktestResult") -> None:
    names = list(result.policies)
    width = 0.8 / max(len(names), 1)
    labels: list[str] = []
    top = 0.0
    for k, p in enumerate(names):
        profit, _, labels = monthly(result, p)
        top = max(top, float(profit.sum(axis=0).max()) / 1e6)
        x = np.arange(len(labels)) + (k - (len(names) - 1) / 2) * width
        ax.bar(x, profit.sum(axis=0) / 1e6, width, color=POLICY_COLOURS.get(p), label=p,
               hatch="//" if p == "hindsight" else None, edgecolor="white" if p == "hindsight" else None)
    ax.set_xticks(np.arange(len(labels)), [m[2:] for m in labels], fontsize=8)
    ax.set_xlabel("month (UTC)", fontsize=8)
    ax.set_ylabel("fleet profit (million USD)", fontsize=8)
    ax.set_title("fleet profit per month, by policy", fontsize=9, loc="left")
    ax.axhline(0.0, color="black", lw=0.6)
    if top > 0:
        ax.set_ylim(top=top * 1.2)       # room for the legend above the bars
    ax.legend(fontsize=7, ncols=len(names), loc="upper center")
    ax.tick_params(labelsize=8)


def _fleet_daily_power(ax, result: "BacktestResult") -> None:
    from miner.sched.backtest import fleet_power_mw

    t = _hours(result)
    days = t.astype("datetime64[D]")
    uniq = np.unique(days)
    idx = np.searchsorted(uniq, days)
    for p in result.policies:
        mwh = np.bincount(idx, weights=fleet_power_mw(result, p), minlength=len(uniq))
        hours = np.bincount(idx, minlength=len(uniq))
        ax.plot(uniq.astype("datetime64[h]").astype(datetime), mwh / np.maximum(hours, 1),
                lw=1.6 if p == "hindsight" else 0.9, alpha=0.45 if p == "hindsight" else 0.9,
                color=POLICY_COLOURS.get(p), label=p)
    ax.axhline(float(result.capacity_mw.sum()), color="black", lw=0.6, ls=":", label="fleet capacity")
    _budget_line(ax, result)
    ax.set_ylabel("fleet power, daily mean (MW)", fontsize=8)
    ax.set_xlabel("date (UTC)", fontsize=8)
    ax.set_title("fleet power per day", fontsize=9, loc="left")
    ax.set_ylim(0, float(result.capacity_mw.sum()) * 1.08)
    ax.legend(fontsize=7, ncols=4, loc="lower left")
    ax.tick_params(labelsize=8)


def _heatmap(fig: Figure, ax, values: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str,
             fmt: str, cmap: str, *, centre: bool) -> None:
    finite = values[np.isfinite(values)]
    if centre:
        span = float(np.max(np.abs(finite))) if finite.size else 1.0
        vmin, vmax = -span, span
    else:
        vmin, vmax = 0.0, 100.0
    im = ax.imshow(values, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_yticks(np.arange(len(rows)), rows, fontsize=8)
    ax.set_xticks(np.arange(len(cols)), [c[2:] for c in cols], fontsize=8)
    ax.set_xlabel("month (UTC)", fontsize=8)
    ax.set_title(title, fontsize=9, loc="left")
    if len(cols) <= 24:
        for r in range(values.shape[0]):
            for c in range(values.shape[1]):
                ax.text(c, r, fmt.format(values[r, c]), ha="center", va="center", fontsize=6.5)
    fig.colorbar(im, ax=ax, pad=0.01)


def _duration_curves(fig: Figure, cell, result: "BacktestResult") -> None:
    S = len(result.site_names)
    cols = min(S, 5)
    rows = int(np.ceil(S / cols))
    sub = cell.subgridspec(rows, cols)
    for i, name in enumerate(result.site_names):
        ax = fig.add_subplot(sub[i // cols, i % cols])
        price = result.price_usd[i]
        price = np.sort(price[np.isfinite(price)])[::-1]
        if not price.size:
            ax.set_title(f"{name}: no prices", fontsize=8)
            continue
        share = (np.arange(price.size) + 0.5) / price.size * 100.0
        ax.plot(share, price, color="tab:red", lw=1.0, label="all-in price")
        be = float(np.mean(result.breakeven_usd[i]))
        ax.axhline(be, color="black", ls="--", lw=0.9, label=f"breakeven {be:.0f}")
        above = float(np.mean(price > be) * 100.0)
        lo, hi = np.percentile(price, PRICE_PERCENTILES)
        ax.set_ylim(min(lo, 0.0) - 10.0, max(hi, be) * 1.25)
        ax.fill_between(share, price, be, where=price > be, color="tab:red", alpha=0.25, lw=0)
        ax.set_title(f"{name}: {above:.1f}% h above breakeven; max {price[0]:,.0f}", fontsize=8, loc="left")
        ax.set_xlabel("share of hours (%)", fontsize=7)
        if i % cols == 0:
            ax.set_ylabel("all-in price (USD/MWh)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5, loc="upper right")


# ---------------------------------------------------------------------------
# A window hour by hour


def _detail(result: "BacktestResult", a: int, b: int) -> Figure:
    S = len(result.site_names)
    t = _hours(result)[a:b].astype(datetime)
    fig = Figure(figsize=(16, 2.4 * S + 2.6), layout="constrained")
    grid = fig.add_gridspec(2 * S + 1, 1, height_ratios=[1.6, 0.8] * S + [1.4])
    first = None
    for i, name in enumerate(result.site_names):
        ax = fig.add_subplot(grid[2 * i], sharex=first)
        first = first or ax
        price = result.price_usd[i, a:b]
        be = result.breakeven_usd[i, a:b]
        ax.step(t, price, where="post", lw=1.0, color="tab:red", label="all-in price")
        ax.step(t, be, where="post", lw=1.0, ls="--", color="black", label="breakeven")
        finite = price[np.isfinite(price)]
        if finite.size:
            lo, hi = np.percentile(finite, PRICE_PERCENTILES)
            top = max(hi, float(np.max(be))) * 1.2
            ax.set_ylim(min(lo, 0.0) - 10.0, top)
            if finite.max() > top:
                ax.text(0.995, 0.92, f"peaks up to {finite.max():,.0f} cut off", transform=ax.transAxes,
                        ha="right", va="top", fontsize=7, color="tab:red")
        ax.set_ylabel("USD/MWh", fontsize=8)
        ax.set_title(name, fontsize=9, loc="left")
        ax.tick_params(labelsize=7, labelbottom=False)
        if i == 0:
            ax.legend(fontsize=7, ncols=2, loc="upper left")
        lv = fig.add_subplot(grid[2 * i + 1], sharex=first)
        for p, style in (("hindsight", dict(lw=5.0, alpha=0.3)), ("gridminer", dict(lw=1.2, alpha=1.0))):
            if p in result.policies:
                lv.step(t, result.policies[p].levels[i, a:b] * 100.0, where="post", color=POLICY_COLOURS[p],
                        label=p, **style)
        lv.set_ylim(-8, 112)
        lv.set_yticks([0, 50, 100])
        lv.set_ylabel("power (%)", fontsize=8)
        lv.tick_params(labelsize=7, labelbottom=False)
        if i == 0:
            lv.legend(fontsize=7, ncols=2, loc="lower left")
    ax = fig.add_subplot(grid[2 * S], sharex=first)
    from miner.sched.backtest import fleet_power_mw

    for p in result.policies:
        hs = p == "hindsight"
        ax.step(t, fleet_power_mw(result, p)[a:b], where="post", color=POLICY_COLOURS.get(p), label=p,
                lw=4.0 if hs else 1.0, alpha=0.3 if hs else 0.9)
    _budget_line(ax, result)
    ax.set_ylim(0, float(result.capacity_mw.sum()) * 1.1)
    ax.set_ylabel("fleet power (MW)", fontsize=8)
    ax.set_xlabel("time (UTC)", fontsize=8)
    ax.legend(fontsize=7, ncols=len(result.policies) + 1, loc="lower left")
    ax.tick_params(labelsize=7)
    start = result.start + timedelta(hours=a)
    end = result.start + timedelta(hours=b)
    fig.suptitle(f"{_title(result)}\nhour by hour {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC: "
                 "price against breakeven, and the power level gridminer (line) and hindsight (band) chose",
                 fontsize=10)
    return fig


def _budget_line(ax, result: "BacktestResult") -> None:
    if result.coupling.startswith("power budget"):
        mw = float(result.coupling.split()[2])
        ax.axhline(mw, color="tab:red", lw=0.8, ls="-.", label=f"budget {mw:g} MW")


def _title(result: "BacktestResult") -> str:
    cr = f", capture ratio {result.capture_ratio:.3f}" if result.capture_ratio is not None else ""
    return (f"back-test {result.start:%Y-%m-%d} .. {result.end:%Y-%m-%d} UTC, "
            f"{len(result.site_names)} sites, coupling: {result.coupling}{cr}")
