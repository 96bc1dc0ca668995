"""The back-test's picture: each site's all-in price against its breakeven, the power
level the policies ran it at, and the fleet's power.

Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it
works headless and inside a process that uses another backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from miner.sched.backtest import BacktestResult

PANELS_MAX_SITES = 12        # more sites than this: heatmaps instead of one panel each
LEVEL_POLICIES = ("gridminer", "hindsight")
POLICY_COLOURS = {"always_on": "tab:gray", "threshold": "tab:orange", "hysteresis": "tab:purple",
                  "gridminer": "tab:green", "hindsight": "tab:blue"}


def _hours(result: "BacktestResult") -> np.ndarray:
    n = result.price_usd.shape[1]
    start = np.datetime64(result.start.replace(tzinfo=None), "h")
    return start + np.arange(n).astype("timedelta64[h]")


def plot_backtest(result: "BacktestResult", path: str | Path, *, policies: Sequence[str] = LEVEL_POLICIES,
                  dpi: int = 100) -> Path:
    """Write the PNG; returns its path."""
    path = Path(path)
    S = len(result.site_names)
    shown = [p for p in policies if p in result.policies]
    if S <= PANELS_MAX_SITES:
        fig = _panels(result, shown)
    else:
        fig = _heatmaps(result, shown)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi)
    return path


def _panels(result: "BacktestResult", shown: Sequence[str]) -> Figure:
    S = len(result.site_names)
    t = _hours(result)
    fig = Figure(figsize=(14, 1.9 * (S + 1) + 0.8), layout="constrained")
    axes = fig.subplots(S + 1, 1, sharex=True)
    for i, name in enumerate(result.site_names):
        ax = axes[i]
        price = result.price_usd[i]
        ax.plot(t, price, lw=0.4, color="tab:red", label="all-in price")
        ax.plot(t, result.breakeven_usd[i], lw=1.0, ls="--", color="black", label="breakeven")
        finite = price[np.isfinite(price)]
        if finite.size:
            lo, hi = np.percentile(finite, [0.5, 99.5])
            top = max(hi, float(np.max(result.breakeven_usd[i]))) * 1.15
            ax.set_ylim(min(lo, 0.0) - 5.0, top)
        ax.set_ylabel("USD/MWh", fontsize=8)
        ax.set_title(name, fontsize=9, loc="left")
        lv = ax.twinx()
        for p in shown:
            lv.step(t, result.policies[p].levels[i], where="post", lw=0.6, alpha=0.8,
                    color=POLICY_COLOURS.get(p), label=f"level ({p})")
        lv.set_ylim(-0.05, 1.6)
        lv.set_yticks([0, 0.5, 1.0])
        lv.tick_params(labelsize=7)
        if i == 0:
            handles = ax.get_legend_handles_labels()[0] + lv.get_legend_handles_labels()[0]
            labels = ax.get_legend_handles_labels()[1] + lv.get_legend_handles_labels()[1]
            ax.legend(handles, labels, fontsize=7, ncols=4, loc="upper right")
    _fleet_power(axes[-1], result, t)
    fig.suptitle(_title(result), fontsize=10)
    return fig


def _heatmaps(result: "BacktestResult", shown: Sequence[str]) -> Figure:
    t = _hours(result)
    rows = 2 + len(shown)
    fig = Figure(figsize=(14, 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True)
    extent = (float(t[0].astype("datetime64[s]").astype(float)) / 86400.0,
              float(t[-1].astype("datetime64[s]").astype(float)) / 86400.0, len(result.site_names) - 0.5, -0.5)
    margin = result.breakeven_usd - result.price_usd
    span = np.nanpercentile(np.abs(margin), 98) if np.isfinite(margin).any() else 1.0
    im = axes[0].imshow(margin, aspect="auto", cmap="RdYlGn", vmin=-span, vmax=span, extent=extent,
                        interpolation="nearest")
    axes[0].set_title("breakeven - price (USD/MWh): green pays", fontsize=9, loc="left")
    fig.colorbar(im, ax=axes[0], pad=0.01)
    for k, p in enumerate(shown):
        im = axes[1 + k].imshow(result.policies[p].levels, aspect="auto", cmap="Greens", vmin=0, vmax=1,
                                extent=extent, interpolation="nearest")
        axes[1 + k].set_title(f"power level ({p})", fontsize=9, loc="left")
        fig.colorbar(im, ax=axes[1 + k], pad=0.01)
    for ax in axes[:-1]:
        ax.set_ylabel("site", fontsize=8)
        ax.xaxis_date()
    _fleet_power(axes[-1], result, t)
    fig.suptitle(_title(result), fontsize=10)
    return fig


def _fleet_power(ax, result: "BacktestResult", t: np.ndarray) -> None:
    from miner.sched.backtest import fleet_power_mw

    for p, r in result.policies.items():
        ax.step(t, fleet_power_mw(result, p), where="post", lw=0.6, color=POLICY_COLOURS.get(p), label=p)
    ax.set_ylabel("fleet MW", fontsize=8)
    ax.legend(fontsize=7, ncols=len(result.policies), loc="lower right")


def _title(result: "BacktestResult") -> str:
    cr = f", capture ratio {result.capture_ratio:.3f}" if result.capture_ratio is not None else ""
    return (f"back-test {result.start:%Y-%m-%d} .. {result.end:%Y-%m-%d} UTC, "
            f"{len(result.site_names)} sites, coupling: {result.coupling}{cr}")
