"""`leanrobust compress` (selection/compress.py): an MFC covering or a baseline of the training pool, written as
a Selection (train with data.selection=FILE) or a new pool (dm: data.pool=FILE)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import KNOWN_ERRORS, fail


def register(app: typer.Typer) -> None:
    """Add the `compress` command to the leanrobust app."""

    @app.command("compress")
    def compress_cmd(config: Path = typer.Argument(..., help="experiment YAML (data, eps, norm)"),
                     method: str = typer.Option(..., "--method", help="mfc | dm | random | kcenter"),
                     ipc: Optional[int] = typer.Option(None, "--ipc", help="images per class"),
                     fraction: Optional[float] = typer.Option(None, "--fraction", help="share of the pool kept"),
                     radius: Optional[float] = typer.Option(None, "--radius", help="MFC covering radius eta"),
                     metric: Optional[str] = typer.Option(None, help="l2 | l1 | linf covering metric (default l2, "
                                                          "MFC's authors'; eps + eta is measured in the training norm)"),
                     solver: str = typer.Option("auto", help="MFC: auto | greedy | milp | lp_milp"),
                     plain_eps: bool = typer.Option(False, "--plain-eps/--no-plain-eps", help="MFC: attack centres at eps, not eps + eta"),
                     force: bool = typer.Option(False, "--force/--no-force", help="MFC: write a vacuous covering (all centres' "
                                                "balls at eps + eta share an image) instead of refusing it"),
                     iterations: int = typer.Option(1000, help="DM: optimisation steps"),
                     batch_real: int = typer.Option(256, help="DM: real images per class per step"),
                     set_: Optional[List[str]] = typer.Option(None, "--set", help="config override key=value"),
                     out: Path = typer.Option(..., "--out", help="output .npz"),
                     device: str = typer.Option("cpu")) -> None:
        """Compress the training set: an MFC covering or a baseline, as a Selection or a new pool."""
        from ..selection.compress import compress

        try:
            rep = compress(config, method, ipc=ipc, fraction=fraction, radius=radius, metric=metric, solver=solver,
                           plain_eps=plain_eps, iterations=iterations, batch_real=batch_real, overrides=set_, out=out,
                           device=device, force=force)
        except KNOWN_ERRORS as e:
            fail(e)
        if method == "mfc":
            typer.echo(f"mfc: {rep['diagnosis']}")
            if rep["vacuous"] and rep["generalized_loss"]:  # (--plain-eps does not attack at eps + eta)
                typer.secho("warning: vacuous covering written because of --force", fg=typer.colors.YELLOW, err=True)
        typer.echo(f"{method}: kept {rep['k']} of {rep['n_pool']} in {rep['seconds']:.1f}s -> {out}; "
                   f"report {out.with_suffix('.json')}")
        typer.echo(f"train with: {rep['train']}")
