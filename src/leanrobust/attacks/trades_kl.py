"""TRADES' inner maximisation (Zhang et al. 2019): from x + 0.001 N(0,1), ascend the KL divergence
between the clean prediction and the prediction at x_adv, projecting onto the eps-ball."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import ascent_step, eval_mode, input_grad, iterative_start, project


def trades_kl(model: nn.Module, x: torch.Tensor, eps: float | torch.Tensor, *, steps: int = 10,
              alpha: float | torch.Tensor | None = None, rel_step: float | None = None, norm: str = "linf",
              p_natural: torch.Tensor | None = None, **removed) -> torch.Tensor:
    """Maximise sum_k p_k(x) log(p_k(x) / p_k(x_adv)) -- TRADES' code, KLDivLoss(log p(x_adv),
    p_natural) -- with sign steps (linf) or L2-normalised gradient steps (l2; TRADES' own L2
    branch uses an optimiser on delta instead). Step as in pgd: alpha absolute or rel_step * eps
    (default rel_step: default_rel_step(steps) = 2.5 / steps; TRADES CIFAR uses alpha=0.007, i.e.
    rel_step 0.007 / 0.031 ~ 0.23); step_size raises. x must lie in [0,1].
    p_natural: clean probabilities (B, K); computed in eval mode without grad when None."""
    x, eps_b, alpha = iterative_start(x, eps, norm=norm, steps=steps, alpha=alpha, rel_step=rel_step,
                                      attack="trades_kl", removed=removed)
    with eval_mode(model):
        if p_natural is None:
            with torch.no_grad():
                p_natural = F.softmax(model(x), dim=1)
        p_natural = p_natural.detach()
        x_adv = x + 0.001 * torch.randn_like(x)
        for _ in range(steps):
            with torch.enable_grad():
                x_adv.requires_grad_(True)
                kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_natural, reduction="sum")
                g = input_grad(kl, x_adv)
            x_adv = project(ascent_step(x_adv.detach(), g, alpha, norm), x, eps_b, norm)
    return project(x_adv.detach(), x, eps_b, norm)
