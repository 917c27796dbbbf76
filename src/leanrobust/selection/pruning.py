"""Score-based pruning: keep exactly round(fraction * N) pool samples, removing the highest or
lowest scores, per class in proportion to class sizes (largest remainder) or globally."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..data.pool import largest_remainder
from ..selection_contract import Selection

PRUNE_MODES = ("highest", "lowest")


def _as_numpy(a, name: str, dtype=None) -> np.ndarray:
    out = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    out = out.reshape(-1)
    return out.astype(dtype) if dtype is not None else out


def _labels(labels, n: Optional[int] = None) -> np.ndarray:
    y = _as_numpy(labels, "labels")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if n is not None and y.size != n:
        raise ValueError(f"labels has {y.size} entries, scores has {n}")
    return y.astype(np.int64)


def resolve_count(n: int, *, fraction: Optional[float] = None, count: Optional[int] = None) -> int:
    """Samples to keep out of n: exactly one of fraction in (0, 1] (-> round(fraction * n), Python
    rounding) or count in [1, n]. Anything else raises ValueError naming the parameter."""
    if (fraction is None) == (count is None):
        raise ValueError(f"give exactly one of fraction or count; got fraction={fraction!r}, count={count!r}")
    if n <= 0:
        raise ValueError("cannot select from an empty pool (scores is empty)")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating, np.integer)):
            raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
        f = float(fraction)
        if not math.isfinite(f) or not 0.0 < f <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        k = int(round(f * n))
        if k < 1:
            raise ValueError(f"fraction={fraction!r} of {n} samples keeps none; raise fraction")
        return k
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
        raise ValueError(f"count must be an integer in [1, {n}], got {count!r}")
    if not 1 <= int(count) <= n:
        raise ValueError(f"count must be in [1, {n}], got {count}")
    return int(count)


def class_quotas(labels, total: int) -> dict[int, int]:
    """Split `total` over the classes present in proportion to their sizes, largest-remainder
    rounding (data.pool.largest_remainder; ties: smaller class id first): every class gets floor or
    ceil of its exact share total * n_c / N, so it differs from proportional by < 1 and never exceeds n_c."""
    y = _labels(labels)
    classes, counts = np.unique(y, return_counts=True)
    n = int(counts.sum())
    if not 0 <= total <= n:
        raise ValueError(f"total must be in [0, {n}], got {total}")
    return {int(c): int(q) for c, q in zip(classes, largest_remainder(counts, total))}


def keep_order(scores: np.ndarray, idx: np.ndarray, prune: str) -> np.ndarray:
    """idx re-ordered from most to least worth keeping: ascending score when the highest are
    pruned, descending when the lowest are; ties by smaller pool index first (deterministic)."""
    if prune not in PRUNE_MODES:
        raise ValueError(f"prune must be 'highest' or 'lowest', got {prune!r}")
    s = scores[idx].astype(np.float64)
    key = s if prune == "highest" else -s
    return idx[np.lexsort((idx, key))]


def _per_sample(v, n: int, name: str) -> np.ndarray:
    """A float broadcast to n, or an array of n pool entries."""
    a = _as_numpy(v, name, np.float64)
    if a.size == 1:
        return np.full(n, float(a[0]))
    if a.size != n:
        raise ValueError(f"{name} must be a number or have one entry per pool sample ({n}), got {a.size}")
    return a


def select_by_score(scores, labels, *, fraction: Optional[float] = None, count: Optional[int] = None,
                    prune: str = "highest", class_balanced: bool = True, eps=0.0, weight=None) -> Selection:
    """Keep exactly k = round(fraction * N) (or `count`) samples, pruning those of highest (or
    lowest) score. class_balanced: k is split over classes by `class_quotas` and each class keeps
    its quota of best-ranked samples; else the k best-ranked of the whole pool. Ties go to the
    smaller pool index. eps and weight: a number or one value per pool sample (taken at the kept
    indices; weight default 1). Returns a Selection with sorted indices."""
    s = _as_numpy(scores, "scores", np.float64)
    n = s.size
    k = resolve_count(n, fraction=fraction, count=count)
    if np.isnan(s).any():
        raise ValueError(f"scores contain {int(np.isnan(s).sum())} NaN values")
    y = _labels(labels, n)
    if prune not in PRUNE_MODES:
        raise ValueError(f"prune must be 'highest' or 'lowest', got {prune!r}")
    if class_balanced:
        kept = [keep_order(s, np.flatnonzero(y == c), prune)[:q] for c, q in class_quotas(y, k).items()]
        idx = np.sort(np.concatenate(kept))
    else:
        idx = np.sort(keep_order(s, np.arange(n), prune)[:k])
    e = _per_sample(eps, n, "eps")[idx]
    w = np.ones(idx.size) if weight is None else _per_sample(weight, n, "weight")[idx]
    return Selection(torch.from_numpy(idx.astype(np.int64)), torch.from_numpy(w.astype(np.float32)),
                     torch.from_numpy(e.astype(np.float32)))
