"""k-centre greedy selection (Sener & Savarese's core-set baseline): per class, farthest-point
centres in input space, so the kept samples spread over the class; unit weights, the given eps."""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .distances import check_metric, farthest_point, to_unit_flat
from .random_subset import _labels_numpy, check_nonneg, class_budgets
from ..selection_contract import Selection


def kcenter_selection(images, labels, *, ipc: int | None = None, fraction: float | None = None,
                      metric: str = "l2", seed: int = 0, eps: float = 0.0, device=None,
                      chunk: int = 65536, progress: bool = False) -> Selection:
    """Per class, Gonzalez's farthest-point greedy from a seeded random first centre: each next
    centre is the point farthest from those chosen (distances to the newest centre computed in
    row chunks of ``chunk``). Images uint8 or float in [0,1], flattened; ``metric`` l2|l1|linf.
    Budget: exactly one of ``ipc`` or ``fraction`` (see ``class_budgets``). Indices sorted.
    progress: a tqdm bar over the centres on stderr."""
    metric = check_metric(metric)
    eps = check_nonneg("eps", eps)
    y = _labels_numpy(labels)
    budgets = class_budgets(y, ipc=ipc, fraction=fraction)
    x = to_unit_flat(images, device)
    if x.shape[0] != y.size:
        raise ValueError(f"images has {x.shape[0]} samples but labels has {y.size}")
    rng = np.random.default_rng(seed)
    picked = []
    bar = tqdm(total=sum(budgets.values()), desc=f"kcenter ({metric})", unit="centre", disable=not progress,
               dynamic_ncols=True)
    for c, k in budgets.items():
        pos = np.flatnonzero(y == c)
        start = int(rng.integers(pos.size))
        centres, _, _ = farthest_point(x[torch.from_numpy(pos).to(x.device)], k, metric, start=start, chunk=chunk,
                                       on_centre=bar.update)
        bar.update(k - centres.size)  # duplicates: the rest is filled at random
        if centres.size < k:  # fewer distinct points than k: fill with unpicked samples, seeded
            rest = np.setdiff1d(np.arange(pos.size), centres)
            centres = np.concatenate([centres, rng.choice(rest, size=k - centres.size, replace=False)])
        picked.append(pos[centres])
    bar.close()
    idx = np.sort(np.concatenate(picked))
    return Selection(torch.from_numpy(idx), torch.ones(idx.size), torch.full((idx.size,), eps))
