"""Empirical risk minimisation: clean cross-entropy, the no-attack baseline."""
from __future__ import annotations

import torch.nn.functional as F

from .base import ObjectiveOutput, weighted_mean


def erm(model, x, y, eps, weight, *, label_smoothing: float = 0.0) -> ObjectiveOutput:
    """Weighted mean of per-sample clean CE (eps is ignored)."""
    logits = model(x)
    per = F.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing)
    return ObjectiveOutput(weighted_mean(per, weight), per.detach(), logits.detach())
