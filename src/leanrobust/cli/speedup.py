"""`leanrobust speedup`: compute each group of runs needs to reach a target held-out robust accuracy,
and its speed-up over a baseline group (speedup.py)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import KNOWN_ERRORS, echo_outputs, fail


def register(app: typer.Typer) -> None:
    """Add the `speedup` command to the leanrobust app."""

    @app.command()
    def speedup(paths: List[Path] = typer.Argument(..., help="run directories (finished or not), or folders holding "
                                                             "them; runs sharing a config name are one group's seeds"),
                baseline: str = typer.Option(..., "--baseline", help="the group (config name) to compare against"),
                target: Optional[float] = typer.Option(None, "--target", help="target accuracy as a fraction (0.69) "
                                                       "or a percentage (69); default: see --drop"),
                drop: Optional[float] = typer.Option(None, "--drop", min=0.0, help="default target: the baseline's "
                                                     "best (mean over seeds) minus this many points (default 1.0)"),
                metric: str = typer.Option("val_robust", "--metric", help="curve key: val_robust or val_clean"),
                out: Path = typer.Option(Path("runs/speedup"), "--out",
                                         help="folder for speedup.md, speedup.json, speedup.png"),
                as_json: bool = typer.Option(False, "--json/--no-json", help="print JSON only"),
                boot: int = typer.Option(10000, "--boot", min=0, help="bootstrap resamples for the CI (0: no CI)"),
                seed: int = typer.Option(0, "--seed", help="bootstrap seed"),
                ) -> None:
        """Compute (grad evals, seconds) to reach a target held-out robust accuracy, and speed-up over a baseline."""
        from ..speedup import build_speedup, to_markdown, write_speedup

        try:
            res = build_speedup(list(paths), baseline, target=target, drop=drop, metric=metric, boot=boot, seed=seed)
            files = write_speedup(res, out)
        except KNOWN_ERRORS as e:
            fail(e)
        echo_outputs(res.to_dict(), to_markdown(res), files, as_json)
