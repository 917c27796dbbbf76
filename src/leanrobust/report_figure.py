"""The report's figure: clean vs robust accuracy with the Pareto front, and robust accuracy vs training
cost; one marker per threat model, Wilson error bars, numbered runs placed apart, a key and a caption.
Its functions take a report.Report (typed Any: this module is imported by report.py, not the reverse)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from .figures import binomial_ci, save_figure

ERROR_BAR_MAX_N = 10_000  # accuracies measured on fewer test points get a 95% binomial interval


def _err(p: float, n: int) -> Optional[list[list[float]]]:
    """Asymmetric error bar (in %) for matplotlib, None from ERROR_BAR_MAX_N points on."""
    if n >= ERROR_BAR_MAX_N:
        return None
    lo, hi = binomial_ci(p, n)
    return [[100 * (p - lo)], [100 * (hi - p)]]


def caption(rep: Any) -> str:
    """What every series of the figure means (printed under the plot and in report.md)."""
    tms = "; ".join(f"{m} {tm}" for tm, m in zip(rep.threat_models, _MARKER_NAMES))
    return (f"Left: clean accuracy against {rep.attack} accuracy; right: {rep.attack} accuracy against training cost "
            "(grad evals: forward+backward sample passes of training, attacks and selection scoring included, log "
            f"scale). Markers: the threat model each run was trained and attacked at ({tms}). Numbers: the run's "
            "rank (column # of report.md; key below). Error bars: 95% Wilson binomial intervals of accuracies measured "
            f"on fewer than {ERROR_BAR_MAX_N:,} test points (none from {ERROR_BAR_MAX_N:,} on). Pareto front (dashed "
            "staircase, ringed runs): runs that no run of the same threat model beats in both clean and robust "
            "accuracy.")


_MARKERS = "osD^v<>p*h"
_MARKER_NAMES = ("circle", "square", "diamond", "triangle", "down-triangle", "left-triangle", "right-triangle",
                 "pentagon", "star", "hexagon")


def _place_labels(fig, ax, points: list[tuple[float, float, str]], ringed: set[str]) -> list:
    """Number labels next to their points, each at the first of a ring of offsets (growing outward) where it
    overlaps no label placed before and no other run's marker, with a leader line once it sits away from
    its point. ringed: labels of points drawn with a Pareto ring (a larger marker)."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72
    markers = []
    for x, y, label in points:
        cx, cy = ax.transData.transform((x, y))
        r = (9 if label in ringed else 5) * px
        markers.append(Bbox.from_extents(cx - r, cy - r, cx + r, cy + r))
    offsets = [(dx * r, dy * r) for r in (1, 1.8, 2.6, 3.5, 5) for dx, dy in
               ((6, 5), (6, -12), (-12, 5), (-12, -12), (9, -3), (-16, -3), (-3, 9), (-3, -16))]
    placed: list = []
    texts = []
    for k, (x, y, label) in enumerate(points):
        others = [b for j, b in enumerate(markers) if j != k]
        for i, off in enumerate(offsets):
            far = i >= 8
            t = ax.annotate(label, (x, y), xytext=off, textcoords="offset points", fontsize=7, gid="label",
                            arrowprops=dict(arrowstyle="-", lw=0.5, color="0.4", shrinkA=0, shrinkB=3) if far else None)
            t.update_positions(renderer)
            box = Text.get_window_extent(t, renderer)  # the text alone, not its leader line
            if not any(box.overlaps(b) for b in placed + others) or i == len(offsets) - 1:
                placed.append(box)
                texts.append(t)
                break
            t.remove()
    return texts


def make_figure(rep: Any):
    """The report's figure: left clean vs robust accuracy with the Pareto front, right robust accuracy vs
    training cost; one marker per threat model, binomial error bars, numbered runs with a key and a caption."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import textwrap

    key = [f"{i:>2}  {r.name} ({r.objective}; {r.data}; {r.threat_model})" for i, r in enumerate(rep.records, 1)]
    cap = textwrap.wrap(caption(rep), 150)
    extra = 0.14 * (len(key) + 1) + 0.15 * len(cap) + 0.4
    fig = plt.figure(figsize=(11, 4.5 + extra))
    top = 4.5 / (4.5 + extra)
    ax1 = fig.add_axes((0.07, 1 - top + 0.1 * top, 0.40, 0.78 * top))
    ax2 = fig.add_axes((0.57, 1 - top + 0.1 * top, 0.40, 0.78 * top))
    markers = dict(zip(rep.threat_models, _MARKERS))
    acc = {r.name: rep.attack for r in rep.records}
    for tm, mk in markers.items():
        rs = [r for r in rep.records if r.threat_model == tm]
        for j, r in enumerate(rs):
            y, pts = r.robust[acc[r.name]]
            kw = dict(fmt=mk, color=f"C{rep.threat_models.index(tm)}", ms=6, capsize=2, elinewidth=0.8,
                      label=tm if j == 0 else None)
            ax1.errorbar([100 * r.clean_acc], [100 * y], xerr=_err(r.clean_acc, r.n), yerr=_err(y, pts), **kw)
            ax2.errorbar([max(r.grad_evals, 1)], [100 * y], yerr=_err(y, pts), **kw)
    for i, tm in enumerate(rep.threat_models):  # a staircase per threat model: no interpolation between runs
        front = sorted((r for r in rep.records if r.name in rep.front and r.threat_model == tm), key=lambda r: r.clean_acc)
        xs, ys = [100 * r.clean_acc for r in front], [100 * r.robust[rep.attack][0] for r in front]
        ax1.plot(xs, ys, "k--", lw=0.8, drawstyle="steps-pre")
        # rings: the front is visible even when it is one run
        ax1.scatter(xs, ys, s=160, facecolors="none", edgecolors="black", linewidths=0.9, gid="pareto",
                    label="Pareto front" if i == 0 else None, zorder=3)
    ax1.set(xlabel="clean accuracy (%)", ylabel=f"{rep.attack} accuracy (%)", title="accuracy-robustness trade-off")
    ax2.set(xscale="log", xlabel="training cost (grad evals, log scale)", ylabel=f"{rep.attack} accuracy (%)",
            title="robustness per compute")
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter
    ax2.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax2.xaxis.set_major_formatter(EngFormatter(sep=""))  # 1k, 20k, 5M: short labels that never collide
    ax2.xaxis.set_minor_formatter(NullFormatter())
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.margins(0.12)
    ax1.legend(fontsize=8, loc="best")
    fig.canvas.draw()  # final limits: labels are placed in display coordinates
    ringed = {str(i) for i, r in enumerate(rep.records, 1) if r.name in rep.front}
    for ax, xof, rings in ((ax1, lambda r: 100 * r.clean_acc, ringed), (ax2, lambda r: max(r.grad_evals, 1), set())):
        pts = [(xof(r), 100 * r.robust[rep.attack][0], str(i)) for i, r in enumerate(rep.records, 1)]
        _place_labels(fig, ax, pts, rings)
    y = 1 - top - 0.02 * top
    fig.text(0.07, y, "\n".join(["Runs (number: rank):"] + key), va="top", ha="left", fontsize=7.5,
             family="monospace", gid="key")
    fig.text(0.07, 0.01, "\n".join(cap), va="bottom", ha="left", fontsize=7.5, gid="caption")
    return fig


def plot(rep: Any, path: str | Path) -> Path:
    """Write make_figure(rep) as a PNG."""
    return save_figure(make_figure(rep), path)
