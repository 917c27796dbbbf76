"""Class-balanced random subset: the baseline every selection method must beat, plus the
per-class budget rule (ipc or fraction) and the argument checks shared by the random, k-centre and MFC selectors."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..selection_contract import Selection


def _labels_numpy(labels) -> np.ndarray:
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    y = y.reshape(-1)
    if y.size == 0:
        raise ValueError("labels is empty")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    return y.astype(np.int64)


def check_nonneg(name: str, v) -> float:
    """`v` as a float, or a ValueError naming `name` unless it is a finite number >= 0."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(f) or f < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {v!r}")
    return f


def class_budgets(labels, *, ipc: int | None = None, fraction: float | None = None) -> dict[int, int]:
    """Number of samples to keep per class: exactly one of ``ipc`` (images per class, every
    class must hold at least that many) or ``fraction`` in (0, 1] (per class
    ``max(1, round(fraction * n_c))``, so every class keeps at least one sample)."""
    y = _labels_numpy(labels)
    if (ipc is None) == (fraction is None):
        raise ValueError("give exactly one of ipc (images per class) or fraction; got "
                         f"ipc={ipc!r}, fraction={fraction!r}")
    classes, counts = np.unique(y, return_counts=True)
    if ipc is not None:
        if isinstance(ipc, bool) or int(ipc) != ipc:
            raise ValueError(f"ipc must be a positive integer, got {ipc!r}")
        ipc = int(ipc)
        if ipc <= 0:
            raise ValueError(f"ipc must be >= 1, got {ipc}")
        small = {int(c): int(n) for c, n in zip(classes, counts) if n < ipc}
        if small:
            raise ValueError(f"ipc={ipc} is more than the data: class sizes {small} (class: count)")
        return {int(c): ipc for c in classes}
    f = float(fraction)
    if not math.isfinite(f) or f <= 0.0 or f > 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return {int(c): max(1, min(int(n), int(round(f * n)))) for c, n in zip(classes, counts)}


def random_selection(labels, *, ipc: int | None = None, fraction: float | None = None,
                     seed: int = 0, eps: float = 0.0) -> Selection:
    """Class-balanced random subset: per class, ``class_budgets`` samples drawn without
    replacement (numpy Generator seeded with ``seed``); unit weight, the given eps.
    Indices come back sorted."""
    y = _labels_numpy(labels)
    budgets = class_budgets(y, ipc=ipc, fraction=fraction)
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(y == c), size=k, replace=False) for c, k in budgets.items()]
    idx = np.sort(np.concatenate(picked))
    return Selection(torch.from_numpy(idx), torch.ones(idx.size), torch.full((idx.size,), float(eps)))
