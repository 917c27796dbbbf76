"""MART (Wang et al. ICLR 2020): boosted CE on adversarial examples plus a KL term weighted by how
badly the clean sample is classified, emphasising misclassified examples."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attacks import pgd
from .base import ObjectiveOutput, kl_per_sample, weighted_mean

# Stability constants of MART's reference code: -log(1.0001 - p + 1e-12) and (1.0000001 - p_y).
_BCE_OFFSET, _LOG_FLOOR, _TRUE_OFFSET = 1.0001, 1e-12, 1.0000001


def mart_per_sample(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
                    beta: float = 6.0) -> torch.Tensor:
    """BCE(x_adv) + beta * KL(p(x) || p(x_adv)) * (1 - p_y(x)), per sample, where
    BCE = CE(f(x_adv), y) - log(1 - max_{k != y} p_k(x_adv)) and
    KL = sum_k p_k(x) log(p_k(x) / p_k(x_adv)). Offsets as in the reference code (1.0001, 1e-12,
    1.0000001) keep logs and gradients finite."""
    p_adv = F.softmax(logits_adv, dim=1)
    other = p_adv.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    bce = F.cross_entropy(logits_adv, y, reduction="none") - torch.log(_BCE_OFFSET - other + _LOG_FLOOR)
    p_true = F.softmax(logits_nat, dim=1).gather(1, y[:, None]).squeeze(1)
    return bce + beta * kl_per_sample(logits_nat, logits_adv) * (_TRUE_OFFSET - p_true)


def mart(model, x, y, eps, weight, *, beta: float = 6.0, norm: str = "linf", steps: int = 10,
         step_size: float | None = None) -> ObjectiveOutput:
    """Weighted mean of mart_per_sample; x_adv from CE-PGD (uniform random start, where MART's
    code starts at x + 0.001 N(0, 1))."""
    x_adv = pgd(model, x, y, eps, steps=steps, rel_step=step_size, norm=norm)
    logits_nat = model(x)
    logits_adv = model(x_adv)
    per = mart_per_sample(logits_nat, logits_adv, y, beta)
    return ObjectiveOutput(weighted_mean(per, weight), per.detach(), logits_adv.detach())
