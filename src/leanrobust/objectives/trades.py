"""TRADES (Zhang et al. 2019): clean cross-entropy plus beta times the KL divergence between the
clean and the adversarial prediction, the adversary maximising that KL."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attacks import trades_kl
from ..attacks.common import eval_mode
from .base import ObjectiveOutput, kl_per_sample, weighted_mean


def trades_per_sample(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
                      beta: float = 6.0, label_smoothing: float = 0.0) -> torch.Tensor:
    """CE_ls(f(x), y) + beta * sum_k p_k(x) log(p_k(x) / p_k(x_adv)), per sample. The KL term is
    the paper's KL(f(x) || f(x')) as its reference code computes it (KLDivLoss(log p(x_adv), p(x)),
    summed over classes); gradients flow through both predictions."""
    ce = F.cross_entropy(logits_nat, y, reduction="none", label_smoothing=label_smoothing)
    return ce + beta * kl_per_sample(logits_nat, logits_adv)


def trades(model, x, y, eps, weight, *, beta: float = 6.0, norm: str = "linf", steps: int = 10,
           step_size: float | None = None, label_smoothing: float = 0.0) -> ObjectiveOutput:
    """Weighted mean of trades_per_sample; x_adv from trades_kl against p(x) of a no-grad
    eval-mode clean forward."""
    with torch.no_grad(), eval_mode(model):
        p_natural = F.softmax(model(x), dim=1)
    x_adv = trades_kl(model, x, eps, steps=steps, rel_step=step_size, norm=norm, p_natural=p_natural)
    logits_nat = model(x)
    logits_adv = model(x_adv)
    per = trades_per_sample(logits_nat, logits_adv, y, beta, label_smoothing)
    return ObjectiveOutput(weighted_mean(per, weight), per.detach(), logits_adv.detach())
