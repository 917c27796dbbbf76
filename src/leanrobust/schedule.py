"""Learning-rate schedules as pure functions of training progress in epochs, so a resumed run
recomputes exactly the same rate, and a selection that changes the epoch length mid-run (a full
warm-up epoch, then a 30% subset) still spans the schedule over exactly `epochs` epochs."""
from __future__ import annotations

import math

from .config_schema import OptimConfig


def lr_factor(cfg: OptimConfig, epoch: int, i: int, iters_per_epoch: int) -> float:
    """Multiplier of cfg.lr at batch `i` (0-based) of `iters_per_epoch` in epoch `epoch` (0-based)."""
    ipe = max(iters_per_epoch, 1)
    it = epoch * ipe + i  # the iteration as if every epoch had this epoch's length
    t = min(max(it / (ipe * cfg.epochs), 0.0), 1.0)
    if cfg.schedule == "constant":
        f = 1.0
    elif cfg.schedule == "piecewise":
        f = cfg.gamma ** sum(t >= m for m in cfg.milestones)
    elif cfg.schedule == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * t))
    elif cfg.schedule == "onecycle":  # linear up to the peak at 30% of training, then linear down to 0
        f = t / 0.3 if t < 0.3 else max(0.0, (1.0 - t) / 0.7)
        f = max(f, 1e-3)
    else:  # unreachable: the schema restricts the names
        raise ValueError(f"unknown schedule {cfg.schedule!r}")
    warm = cfg.warmup_epochs * ipe
    if warm > 0 and it < warm:
        f *= min(1.0, (it + 1) / warm)  # a fractional warm-up ends at the base rate, never above it
    return f
