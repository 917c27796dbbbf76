"""PGD adversarial training (Madry et al. 2018): cross-entropy on PGD examples."""
from __future__ import annotations

import torch.nn.functional as F

from ..attacks import pgd
from .base import ObjectiveOutput, weighted_mean


def pgd_at(model, x, y, eps, weight, *, norm: str = "linf", steps: int = 10,
           step_size: float | None = None, label_smoothing: float = 0.0) -> ObjectiveOutput:
    """min E[w_i CE(f(x_i + delta_i), y_i)], delta_i from `steps`-step PGD in the eps_i ball
    (step_size relative to eps, attack default 2.5/steps)."""
    x_adv = pgd(model, x, y, eps, steps=steps, rel_step=step_size, norm=norm)
    logits = model(x_adv)
    per = F.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing)
    return ObjectiveOutput(weighted_mean(per, weight), per.detach(), logits.detach())
