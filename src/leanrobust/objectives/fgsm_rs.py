"""Fast adversarial training (Wong et al. ICLR 2020): cross-entropy on single-step FGSM examples
from a uniform random start, step 1.25 * eps."""
from __future__ import annotations

import torch.nn.functional as F

from ..attacks import fgsm_rs as fgsm_rs_attack
from .base import ObjectiveOutput, weighted_mean


def fgsm_rs(model, x, y, eps, weight, *, alpha: float | None = None,
            label_smoothing: float = 0.0) -> ObjectiveOutput:
    """Weighted mean of CE on fgsm_rs examples; step alpha_i = alpha * eps_i, default 1.25. Here (a
    config's objective.params.alpha) alpha stays relative to eps: it is the attack's rel_step."""
    x_adv = fgsm_rs_attack(model, x, y, eps, rel_step=alpha)
    logits = model(x_adv)
    per = F.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing)
    return ObjectiveOutput(weighted_mean(per, weight), per.detach(), logits.detach())
