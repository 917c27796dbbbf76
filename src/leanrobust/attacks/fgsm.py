"""FGSM with a random start (Wong et al. 2020, "Fast is better than free"): one signed-gradient
step from a uniform point of the Linf ball, the attack behind single-step adversarial training."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import as_eps, eval_mode, input_grad, project, random_init


def fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor, *,
            alpha: float | None = None) -> torch.Tensor:
    """x_adv = proj(x + delta0 + alpha_i sign(grad CE)), delta0 ~ U(-eps_i, eps_i). alpha is
    relative to eps like pgd's step_size: alpha_i = alpha * eps_i, default 1.25 (Wong et al.).
    Runs in eval mode (the caller's modes are restored), like every attack here, so BatchNorm's
    running statistics see only the training update; Wong et al.'s code crafts the example in
    train mode (batch statistics), which can move where catastrophic overfitting sets in."""
    x = x.detach()
    eps_b = as_eps(eps, x)
    step = (1.25 if alpha is None else alpha) * eps_b
    with eval_mode(model), torch.enable_grad():
        x0 = random_init(x, eps_b, "linf").requires_grad_(True)
        g = input_grad(F.cross_entropy(model(x0), y, reduction="sum"), x0)
    return project(x0.detach() + step * g.sign(), x, eps_b, "linf")
