"""Projected gradient descent (Madry et al. 2018), Linf or L2, cross-entropy or CW margin loss,
restarts keeping each sample's worst case, and GAIRAT's kappa counted on the way."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import ascent_step, cw_margin, eval_mode, input_grad, iterative_start, project, random_init


def _loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none") if loss == "ce" else cw_margin(logits, y)


def _pgd_run(model, x, y, eps, alpha, steps, norm, loss, random_start):
    """One PGD run; kappa counts the iterates (before each step) that are still correct, read off
    the logits of that step's own forward pass."""
    x_adv = random_init(x, eps, norm) if random_start else x.clone()
    kappa = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for _ in range(steps):
        with torch.enable_grad():
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            g = input_grad(_loss(logits, y, loss).sum(), x_adv)
        kappa += (logits.detach().argmax(1) == y).long()
        x_adv = project(ascent_step(x_adv.detach(), g, alpha, norm), x, eps, norm)
    return x_adv.detach(), kappa


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor, *,
        steps: int = 10, alpha: float | torch.Tensor | None = None, rel_step: float | None = None,
        norm: str = "linf", loss: str = "ce", random_start: bool = True, restarts: int = 1,
        return_kappa: bool = False, **removed):
    """PGD in the per-sample eps-ball intersected with [0,1], model in eval mode (restored after).

    Step: alpha, absolute (torchattacks' alpha, e.g. 2/255), or rel_step, a multiple of eps
    (alpha_i = rel_step * eps_i); default rel_step = default_rel_step(steps) = 2.5 / steps. `step_size`
    raises (it was the relative step here, but is absolute in torchattacks). x must lie in [0,1]
    (normalisation belongs in the model), else ValueError. loss "ce" or "cw"
    (max_{j!=y} z_j - z_y, the CW-Linf evaluation loss). With restarts > 1, later restarts only
    attack samples not yet misclassified; per sample the result is the first misclassifying
    iterate's end point, else the restart with the highest loss. return_kappa=True also returns
    GAIRAT's kappa (long, 0..steps) from the first restart. Returns x_adv or (x_adv, kappa)."""
    if loss not in ("ce", "cw"):
        raise ValueError(f"unknown loss {loss!r}; expected 'ce' or 'cw'")
    x, eps_b, step = iterative_start(x, eps, norm=norm, steps=steps, alpha=alpha, rel_step=rel_step, attack="pgd",
                                     removed=removed)
    with eval_mode(model):
        x_adv, kappa = _pgd_run(model, x, y, eps_b, step, steps, norm, loss, random_start)
        if restarts > 1:
            x_adv = _restarts(model, x, y, eps_b, step, steps, norm, loss, random_start, restarts, x_adv)
    return (x_adv, kappa) if return_kappa else x_adv


def _restarts(model, x, y, eps, alpha, steps, norm, loss, random_start, restarts, x_adv):
    """Keep per sample the worst case over restarts: first misclassified, else highest loss."""
    with torch.no_grad():
        logits = model(x_adv)
    best, best_loss = x_adv.clone(), _loss(logits, y, loss)
    fooled = logits.argmax(1) != y
    for _ in range(restarts - 1):
        idx = (~fooled).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        cand, _ = _pgd_run(model, x[idx], y[idx], eps[idx], alpha[idx], steps, norm, loss, random_start)
        with torch.no_grad():
            logits = model(cand)
        cand_loss, cand_fooled = _loss(logits, y[idx], loss), logits.argmax(1) != y[idx]
        better = cand_fooled | (cand_loss > best_loss[idx])
        sel = idx[better]
        best[sel], best_loss[sel], fooled[sel] = cand[better], cand_loss[better], cand_fooled[better]
    return best
