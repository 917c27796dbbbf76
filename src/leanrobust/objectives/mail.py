"""MAIL (Wang et al. NeurIPS 2021): instance reweighting by the probabilistic margin of the
adversarial example, a continuous, less attack-path-dependent alternative to GAIRAT's kappa."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attacks import pgd
from .base import ObjectiveOutput, as_weight, normalise_instance_weights


def probabilistic_margin(logits_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PM = max_{k != y} p_k - p_y (softmax of logits_adv), in [-1, 1]; large = on the wrong side of
    the boundary. Sign as in the public MAIL code (QizhouWang/MAIL, `PM`), i.e. minus the paper's
    margin p_y - max_{k != y} p_k."""
    p = F.softmax(logits_adv.detach(), dim=1)
    p_true = p.gather(1, y[:, None]).squeeze(1)
    p_other = p.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return p_other - p_true


def mail_weights(pm: torch.Tensor, bias: float = -0.5, slope: float = 10.0) -> torch.Tensor:
    """w = 3 * sigmoid(slope * (PM + bias)) (public MAIL code `weight_assign`). Defaults: MAIL-AT's published
    command (bias -0.5, slope 10: near-binary weights), not its argparse defaults (-1.5, 1: weights 0.2-1.1,
    close to plain AT). Monotone increasing in PM: attackable samples count more."""
    return 3.0 * torch.sigmoid(slope * (pm + bias))


def mail_at(model, x, y, eps, weight, *, norm: str = "linf", steps: int = 10,
            step_size: float | None = None, bias: float = -0.5, slope: float = 10.0,
            begin_epoch: int | None = None, normalize: bool = False,
            epoch: int | None = None, num_epochs: int | None = None) -> ObjectiveOutput:
    """MAIL-AT: mean_i c_i CE(f(x_adv_i), y_i) with w = mail_weights(PM(f(x_adv))) (detached).
    normalize=False (default) uses weight * w as the public MAIL code does (no batch normalisation, so
    the factor 3 stays); normalize=True normalises w within the batch like GAIR-AT
    (base.normalise_instance_weights). Plain PGD-AT before begin_epoch (default
    round(0.625 * num_epochs), epoch 75 of 120); begin_epoch is 0-based here, as in the MAIL code
    (`for epoch in range(75, 120)`), while GAIRAT's code counts it from 1. Without an epoch,
    reweighting applies throughout."""
    x_adv = pgd(model, x, y, eps, steps=steps, rel_step=step_size, norm=norm)
    logits = model(x_adv)
    per = F.cross_entropy(logits, y, reduction="none")
    if begin_epoch is None:
        begin_epoch = round(0.625 * num_epochs) if num_epochs is not None else 0
    pm = probabilistic_margin(logits, y)
    w = mail_weights(pm, bias, slope) if epoch is None or epoch >= begin_epoch else torch.ones_like(pm)
    c = normalise_instance_weights(w, weight) if normalize else w * as_weight(weight, w)
    return ObjectiveOutput((c * per).mean(), per.detach(), logits.detach(), {"pm": pm, "mail_weight": w})
