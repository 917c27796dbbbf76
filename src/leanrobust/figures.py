"""The three files every comparison command writes (NAME.md, NAME.json, NAME.png), in one place."""
from __future__ import annotations

from pathlib import Path

from .io import write_json, write_text


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
