"""What the comparison commands (report, speedup) share: the three files each writes (NAME.md, NAME.json,
NAME.png), accuracies printed as percentages, and the Wilson interval of their error bars and bands."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import write_json, write_text


def pct(x: float) -> str:
    """An accuracy fraction as a percentage with two decimals (0.7238 -> 72.38)."""
    return f"{100 * x:.2f}"


def binomial_ci(p, n: int, z: float = 1.96):
    """Wilson score interval (95% by default) of accuracies p (a number or an array), each measured on n points."""
    if n <= 0:
        return (0.0, 1.0)
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def save_figure(fig, path: str | Path) -> Path:
    """A matplotlib figure as a PNG (parent folders made), then closed so that loops do not leak figures."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(out_dir: str | Path, stem: str, markdown: str, data: dict, fig) -> dict[str, Path]:
    """out_dir/stem.md, stem.json and stem.png; returns their paths by kind."""
    out = Path(out_dir)
    return {"md": write_text(out / f"{stem}.md", markdown), "json": write_json(out / f"{stem}.json", data),
            "png": save_figure(fig, out / f"{stem}.png")}
