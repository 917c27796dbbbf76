"""The speed-up figure: every run's learning curve against compute (a colour per group, seeds thin with
Wilson bands, the group's mean thick), the target and each group's reach point, with a caption.
Its functions take a speedup.Speedup (typed Any: this module is imported by speedup.py, not the reverse)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .figures import binomial_ci, pct, save_figure


def metric_label(metric: str) -> str:
    """A curve's metric in words, for the figure's axes and caption and the speed-up table."""
    return {"val_robust": "held-out robust accuracy", "val_clean": "held-out clean accuracy"}.get(metric, metric)


BAND_MAX_N = 10_000  # curve points measured on fewer held-out points get a 95% binomial band


def caption(s: Any) -> str:
    """What every series of the curves plot means (printed under it)."""
    ns = sorted({c.val_n for c in s.curves if c.val_n})
    band = (f"Shaded: 95% Wilson binomial interval of each seed's accuracy on its {', '.join(map(str, ns))} held-out "
            "points" if ns and max(ns) < BAND_MAX_N else "No intervals: curves measured on 10,000 or more points, or "
            "on a varying number")
    return (f"{metric_label(s.metric).capitalize()} against training compute (grad evals: forward+backward sample "
            "passes of training, selection scoring included, validation excluded; log scale). One colour per group "
            "(config name): thin lines are its seeds, the thick line with dots their mean at the points every seed logged. "
            f"{band}. Dashed line: the target {pct(s.target)}% ({s.target_how}). Star: the group's reach point, "
            "the mean grad evals at which its seeds first reached the target (only when every seed did).")


def make_figure(s: Any):
    """The metric (%) against grad evals for every run on one figure: a colour per group, seeds as thin
    lines with binomial bands, the group's mean curve (over the points every seed logged) thick, the target
    dashed, and each group's reach point (mean grad evals to target) starred; legend and caption below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import textwrap

    cap = textwrap.wrap(caption(s), 110)
    rows = (len(s.groups) + 2 + 1) // 2  # legend entries in two columns
    extra = 0.22 * rows + 0.15 * len(cap) + 0.6
    fig = plt.figure(figsize=(8, 5 + extra))
    top = 5 / (5 + extra)
    ax = fig.add_axes((0.1, 1 - top + 0.12 * top, 0.86, 0.78 * top))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, g in enumerate(s.groups):
        colour, cs = colours[i % len(colours)], [c for c in s.curves if c.name == g.name]
        for c in cs:
            ax.plot(c.grad_evals, [100 * v for v in c.value], color=colour, lw=0.8, alpha=0.45)
            if c.val_n and c.val_n < BAND_MAX_N and c.value:
                lo, hi = binomial_ci(np.asarray(c.value, dtype=float), c.val_n)
                ax.fill_between(c.grad_evals, 100 * lo, 100 * hi, color=colour, alpha=0.12, lw=0, gid="band")
        common = sorted(set.intersection(*(set(c.epoch) for c in cs)) - {None}) if cs else []
        if common:  # mean over seeds at each epoch (or mid-epoch point) they all logged
            at = [[c.epoch.index(e) for e in common] for c in cs]
            x = np.mean([[c.grad_evals[j] for j in idx] for c, idx in zip(cs, at)], axis=0)
            y = np.mean([[100 * c.value[j] for j in idx] for c, idx in zip(cs, at)], axis=0)
            ax.plot(x, y, color=colour, lw=2.2, marker="o", ms=3, label=f"{g.name} (mean of {len(cs)} seed(s))")
        if g.grad_evals is not None:
            ax.plot([g.grad_evals], [100 * s.target], marker="*", ms=14, color=colour, mec="black", ls="none")
    ax.axhline(100 * s.target, color="black", ls="--", lw=1, label=f"target {pct(s.target)}%")
    ax.plot([], [], marker="*", ms=12, color="white", mec="black", ls="none", label="reach point (mean over seeds)")
    ax.set(xscale="log", xlabel="training compute (grad evals: forward+backward sample passes)",
           ylabel=f"{metric_label(s.metric)} (%)",
           title=f"{metric_label(s.metric)} vs compute; target {pct(s.target)}%")
    ax.grid(alpha=0.3)
    # below the axes: a legend never hides a curve
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.13), ncol=2, frameon=False)
    fig.text(0.1, 0.01, "\n".join(cap), va="bottom", ha="left", fontsize=7.5, gid="caption")
    return fig


def plot(s: Any, path: str | Path) -> Path:
    """Write make_figure(s) as a PNG."""
    return save_figure(make_figure(s), path)
