"""FGSM with a random start (Wong et al. 2020, "Fast is better than free"): one signed-gradient
step from a uniform point of the Linf ball, the attack behind single-step adversarial training."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import as_eps, check_unit_range, eval_mode, input_grad, project, random_init, step_length


def fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor, *,
            alpha: float | torch.Tensor | None = None, rel_step: float | None = None, **removed) -> torch.Tensor:
    """x_adv = proj(x + delta0 + step_i sign(grad CE)), delta0 ~ U(-eps_i, eps_i). Step as in pgd:
    alpha absolute, or rel_step * eps_i (default rel_step 1.25, Wong et al.); an alpha >= 1 (a step
    across the whole [0,1] range) raises, since alpha used to be the relative step here. x in [0,1].
    Runs in eval mode (the caller's modes are restored), like every attack here, so BatchNorm's
    running statistics see only the training update; Wong et al.'s code crafts the example in
    train mode (batch statistics), which can move where catastrophic overfitting sets in."""
    x = x.detach()
    eps_b = as_eps(eps, x)
    if alpha is not None and bool((torch.as_tensor(alpha) >= 1).any()):
        raise ValueError(f"fgsm_rs: alpha={alpha!r} is an absolute step (it spans the whole [0,1] range); "
                         f"for a multiple of eps pass rel_step={alpha!r} (alpha was relative to eps before)")
    step = step_length(eps_b, alpha, rel_step, 1.25, "fgsm_rs", removed)
    check_unit_range(x, "fgsm_rs")
    with eval_mode(model), torch.enable_grad():
        x0 = random_init(x, eps_b, "linf").requires_grad_(True)
        g = input_grad(F.cross_entropy(model(x0), y, reduction="sum"), x0)
    return project(x0.detach() + step * g.sign(), x, eps_b, "linf")
