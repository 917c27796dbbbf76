"""A run's Trainer with what its config names built above the trainer: the SelectionSchedule of
`selection.method` is made here and injected, so that train.py imports no selection method."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .config import load_config
from .config_schema import RunConfig
from .runs import CONFIG, SUMMARY
from .selection.schedule import SelectionSchedule
from .train import Trainer


def build_trainer(cfg: RunConfig, run_dir: str | Path, **kw) -> Trainer:
    """Trainer(cfg, run_dir, **kw) given the SelectionSchedule that cfg.selection names (unless kw holds one)."""
    if cfg.selection.method != "none" and kw.get("selection_schedule") is None:
        kw["selection_schedule"] = SelectionSchedule(cfg)  # its settings checked now, before the data is built
    return Trainer(cfg, run_dir, **kw)


def train(cfg: RunConfig, run_dir: str | Path, **kw) -> Optional[dict]:
    """Train cfg into run_dir and evaluate it: the summary."""
    return build_trainer(cfg, run_dir, **kw).fit()


def resume(run_dir: str | Path) -> Optional[dict]:
    """Continue an interrupted run from its saved config and checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).exists():
        raise FileNotFoundError(f"{run_dir}: no {CONFIG}; is this a leanrobust run directory?")
    if (run_dir / SUMMARY).exists():  # resuming would redo the test evaluation and overwrite the summary
        raise ValueError(f"{run_dir} is a finished run (it has {SUMMARY}); evaluate it further with "
                         f"`leanrobust eval {run_dir}`")
    return build_trainer(load_config(run_dir / CONFIG, lenient=True), run_dir).fit()
