"""Gaussian-noise training (Cohen et al. 2019), the base classifier of randomized smoothing: cross-entropy
on x + N(0, sigma^2 I), not clamped to [0,1], matching how `leanrobust.certify` smooths."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ObjectiveOutput, weighted_mean


def gaussian_noise(model, x, y, eps, weight, *, sigma: float = 0.25, label_smoothing: float = 0.0) -> ObjectiveOutput:
    """Weighted mean of per-sample CE on one noisy copy x + sigma * N(0, I) of each input (eps is ignored:
    the certified radius comes from sigma). No clamping, as in Cohen et al.'s training and certification."""
    logits = model(x + sigma * torch.randn_like(x))
    per = F.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing)
    return ObjectiveOutput(weighted_mean(per, weight), per.detach(), logits.detach())
