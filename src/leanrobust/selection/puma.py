"""PUMA (Maroto & Frossard 2024): prune the samples of highest DeepFool margin and attack the
lowest-margin kept samples at a smaller radius, so pruning easy data does not make training on
ambiguous or mislabeled near-boundary samples more harmful."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from .pruning import _as_numpy, _labels, class_quotas, resolve_count, select_by_score
from ..selection_contract import Selection


def puma_eps(margins, eps: float, *, floor: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """The per-sample radius rule: clip(scale * margin, floor, eps). Never above eps."""
    m = _as_numpy(margins, "margins", np.float64)
    return np.clip(scale * m, min(floor, eps), eps)


def puma_selection(margins, labels, *, fraction: Optional[float] = None, count: Optional[int] = None,
                   eps: float, q: float = 0.1, floor: float = 0.0, scale: float = 1.0,
                   class_balanced: bool = True) -> Selection:
    """Keep round(fraction * N) samples, pruning the HIGHEST margins (select_by_score, per class
    when class_balanced); then, among the kept samples, the round(q * K) of LOWEST margin (split
    over classes by class_quotas when class_balanced, ties to the smaller pool index) train at

        eps_i = clip(scale * margin_i, floor, eps)        (all other kept samples: eps)

    so eps_i <= eps always. Unit weights.

    The paper's exact rule is not public; this one is chosen because a sample whose DeepFool
    margin (its distance to the nearest decision boundary, input space, measured in the training
    attack's norm) is below eps cannot be made robust at eps without the eps-ball crossing into
    what the model, and often the data, assigns to another class: attacking it at eps trains on
    examples that may well carry another class's label, which is how mislabeled and ambiguous
    samples hurt clean accuracy once the easy high-margin data is gone. Attacking it at a radius
    near its margin (scale 1) keeps the adversarial example near its own side; DeepFool's margin
    includes its 2% overshoot and is an upper bound on the true distance, so scale < 1 (e.g.
    1 / 1.02) is the conservative choice when the ball must not cross. Samples with a
    margin >= eps / scale keep eps even when they are among the q lowest. Margins may be
    signed (negative for misclassified samples, see scores.py): those get `floor`. Defaults
    q = 0.1, floor = 0 (the misclassified / boundary samples are trained on clean points),
    scale = 1; all configurable."""
    m = _as_numpy(margins, "margins", np.float64)
    n = m.size
    if isinstance(eps, bool) or not math.isfinite(float(eps)) or float(eps) < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if not 0.0 <= float(q) <= 1.0:
        raise ValueError(f"q must be in [0, 1] (share of the kept set whose eps is lowered), got {q!r}")
    if not math.isfinite(float(floor)) or not 0.0 <= float(floor) <= float(eps):
        raise ValueError(f"floor must be in [0, eps={eps}], got {floor!r}")
    if not math.isfinite(float(scale)) or float(scale) <= 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    k = resolve_count(n, fraction=fraction, count=count)
    sel = select_by_score(m, labels, count=k, prune="highest", class_balanced=class_balanced, eps=float(eps))
    idx = sel.indices.numpy()
    y = _labels(labels, n)
    n_low = int(round(float(q) * k))
    pos = np.arange(k)
    if class_balanced:
        quotas = class_quotas(y[idx], n_low)
        low_pos = np.concatenate([_lowest(m, idx, pos[y[idx] == c], qc) for c, qc in quotas.items()])
    else:
        low_pos = _lowest(m, idx, pos, n_low)
    eps_sel = np.full(k, float(eps))
    eps_sel[low_pos] = puma_eps(m[idx[low_pos]], float(eps), floor=float(floor), scale=float(scale))
    return Selection(sel.indices, torch.ones(k), torch.from_numpy(eps_sel.astype(np.float32)))


def _lowest(m: np.ndarray, idx: np.ndarray, pos: np.ndarray, count: int) -> np.ndarray:
    """Positions (into the kept set) of the `count` lowest margins among `pos`; ties to the
    smaller pool index."""
    order = np.lexsort((idx[pos], m[idx[pos]]))
    return pos[order[:count]]
