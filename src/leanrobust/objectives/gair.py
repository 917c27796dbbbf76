"""GAIRAT (Zhang et al. ICLR 2021): geometry-aware instance reweighting; samples whose PGD path
stays correctly classified for fewer steps (small kappa, near the boundary) count more."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..attacks import pgd, trades_kl
from ..attacks.common import eval_mode
from .base import ObjectiveOutput, kl_per_sample, normalise_instance_weights, weighted_mean

WEIGHT_MODES = ("tanh", "sigmoid", "discrete")


def gair_weights(kappa: torch.Tensor, steps: int, lam: float, mode: str = "tanh") -> torch.Tensor:
    """GAIRAT Eq. 6, unnormalised, from kappa in {0..K} (K = steps):
    tanh: (1 + tanh(lam + 5 (1 - 2 kappa / K))) / 2; sigmoid: sigmoid(lam + 5 (1 - 2 kappa / K));
    discrete: (K + 1 - kappa) / (K + 1). lam = +inf gives all ones (standard AT) in every mode."""
    if mode not in WEIGHT_MODES:
        raise ValueError(f"unknown weight_mode {mode!r}; expected one of {WEIGHT_MODES}")
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    k = kappa.to(torch.get_default_dtype())
    if math.isinf(lam) and lam > 0:
        return torch.ones_like(k)
    if mode == "discrete":
        return (steps + 1 - k) / (steps + 1)
    arg = lam + 5.0 * (1.0 - 2.0 * k / steps)
    return (1.0 + torch.tanh(arg)) / 2.0 if mode == "tanh" else torch.sigmoid(arg)


def _reweighting(epoch: int, begin_epoch: int | None, num_epochs: int | None) -> bool:
    """Whether 0-based `epoch` reweights: begin_epoch counts from 1 as in the reference code
    (`epoch + 1 >= begin_epoch`), default num_epochs // 2 (the 60th of 120 epochs onwards)."""
    begin = begin_epoch if begin_epoch is not None else (num_epochs // 2 if num_epochs is not None else 0)
    return epoch + 1 >= begin


def gair_lambda(epoch: int, num_epochs: int | None = None, begin_epoch: int | None = None,
                lam_after: float = -1.0) -> float:
    """GAIRAT's fixed schedule at 0-based `epoch`: +inf (plain AT burn-in) before the
    begin_epoch-th epoch (1-based, default num_epochs // 2, e.g. the 60th of 120), lam_after from it on."""
    return lam_after if _reweighting(epoch, begin_epoch, num_epochs) else math.inf


def gair_at(model, x, y, eps, weight, *, norm: str = "linf", steps: int = 10,
            step_size: float | None = None, weight_mode: str = "tanh", begin_epoch: int | None = None,
            lam: float = -1.0, epoch: int | None = None, num_epochs: int | None = None) -> ObjectiveOutput:
    """GAIR-AT: mean_i c_i CE(f(x_adv_i), y_i), c = gair_weights(kappa) normalised within the batch
    and times the sample weight (base.normalise_instance_weights). kappa comes from the training
    PGD itself (no extra passes). Before begin_epoch lambda = +inf, so this is PGD-AT; without an
    epoch, lam applies from the start."""
    x_adv, kappa = pgd(model, x, y, eps, steps=steps, rel_step=step_size, norm=norm, return_kappa=True)
    lam_now = lam if epoch is None else gair_lambda(epoch, num_epochs, begin_epoch, lam)
    w = gair_weights(kappa, steps, lam_now, weight_mode).to(x)
    c = normalise_instance_weights(w, weight)
    logits = model(x_adv)
    per = F.cross_entropy(logits, y, reduction="none")
    return ObjectiveOutput((c * per).mean(), per.detach(), logits.detach(),
                           {"kappa": kappa, "gair_weight": w, "lambda": lam_now})


def gair_trades(model, x, y, eps, weight, *, beta: float = 6.0, norm: str = "linf", steps: int = 10,
                step_size: float | None = None, weight_mode: str = "tanh",
                begin_epoch: int | None = None, lam: float = 3.0, lam_burn_in: float = 100.0,
                epoch: int | None = None, num_epochs: int | None = None,
                label_smoothing: float = 0.0) -> ObjectiveOutput:
    """GAIR-TRADES, per sample: CE(f(x), y) + beta [w KL(p(x) || p(x_kl)) + (1 - w) KL(p(x) || p(x_cw))]
    (KL as in trades.py), x_kl from trades_kl, x_cw and kappa from CW-loss PGD, w = gair_weights
    unnormalised; lambda = lam_burn_in (100) before the begin_epoch-th epoch (1-based, default
    num_epochs // 2), then lam (3).
    When every kappa maps to w = 1 (lambda 100 in tanh/sigmoid mode) the CW term is exactly zero and
    the CW attack is skipped. Loss = mean(weight * per_sample)."""
    lam_now = lam if epoch is None or _reweighting(epoch, begin_epoch, num_epochs) else lam_burn_in
    with torch.no_grad(), eval_mode(model):
        p_natural = F.softmax(model(x), dim=1)
    x_kl = trades_kl(model, x, eps, steps=steps, rel_step=step_size, norm=norm, p_natural=p_natural)
    extras = {"lambda": lam_now}
    x_cw = None
    if not bool((gair_weights(torch.arange(steps + 1), steps, lam_now, weight_mode) == 1).all()):
        x_cw, kappa = pgd(model, x, y, eps, steps=steps, rel_step=step_size, norm=norm, loss="cw",
                          return_kappa=True)
        w = gair_weights(kappa, steps, lam_now, weight_mode).to(x)
        extras.update(kappa=kappa, gair_weight=w)
    logits_nat = model(x)
    logits_kl = model(x_kl)
    robust = kl_per_sample(logits_nat, logits_kl)
    if x_cw is not None:
        robust = w * robust + (1.0 - w) * kl_per_sample(logits_nat, model(x_cw))
    per = F.cross_entropy(logits_nat, y, reduction="none", label_smoothing=label_smoothing) + beta * robust
    return ObjectiveOutput(weighted_mean(per, weight), per.detach(), logits_kl.detach(), extras)
