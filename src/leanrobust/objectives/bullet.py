"""Bullet-Train-style acceleration (Hua et al. 2021): a cheap look at each sample decides how many
attack steps it gets, so the full attack is spent only on samples near the decision boundary."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attacks import pgd, trades_kl
from ..attacks.common import eval_mode
from .base import ObjectiveOutput, as_weight, weighted_mean
from .trades import trades_per_sample

SKIPPED, OUTLIER, ROBUST, BOUNDARY = -1, 0, 1, 2
OUTLIER_ATTACKS = ("none", "fgsm")


def _check(steps: int, probe_steps: int, outlier_attack: str) -> None:
    if not 1 <= probe_steps < steps:
        raise ValueError(f"probe_steps must be in [1, steps={steps}), got {probe_steps}")
    if outlier_attack not in OUTLIER_ATTACKS:
        raise ValueError(f"outlier_attack must be one of {OUTLIER_ATTACKS}, got {outlier_attack!r}")


def _eps_vector(eps, like: torch.Tensor) -> torch.Tensor:
    e = torch.as_tensor(eps, dtype=like.dtype, device=like.device).reshape(-1)
    return e.expand(like.shape[0]).clone() if e.numel() == 1 else e


def _setup(x: torch.Tensor, eps, weight):
    """Per-sample eps, groups (all SKIPPED), steps spent (0), x_adv = x, and the positions of
    samples with weight > 0 (the only ones attacked)."""
    b = x.shape[0]
    w = as_weight(weight, x.new_empty(b))
    group = torch.full((b,), SKIPPED, dtype=torch.long, device=x.device)
    spent = torch.zeros(b, dtype=torch.long, device=x.device)
    return _eps_vector(eps, x.new_empty(b)), group, spent, x.detach().clone(), (w > 0).nonzero().squeeze(1)


def _no_grad_logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), eval_mode(model):
        return model(x)


def bullet_allocation(model, x, y, eps, weight, *, norm: str = "linf", steps: int = 10,
                      step_size: float | None = None, probe_steps: int = 1, probe_step_size: float | None = None,
                      outlier_attack: str = "none"):
    """The Bullet-Train allocation for PGD-AT; returns (x_adv, group, steps_spent, clean_logits).

    1. Samples of weight 0: no attack, x_adv = x (group SKIPPED = -1, 0 steps, no passes).
    2. One no-grad eval-mode clean forward on the rest (counted as forward_evals).
       Misclassified -> OUTLIER (0): x_adv = x with outlier_attack "none" (0 steps), or a one-step
       random-start attack with step 1.25 eps ("fgsm", 1 step): they are already on the wrong
       side, a full attack only pushes them further.
    3. Correctly classified: a `probe_steps`-step PGD (random start, step probe_step_size, default
       pgd's 2.5 / probe_steps relative to eps), then one no-grad forward at the probe. Still
       correct -> ROBUST (1): the probe is their adversarial example (probe_steps steps).
    4. Fooled by the probe -> BOUNDARY (2): a fresh full `steps`-step PGD (step_size), so they
       cost probe_steps + steps.
    steps_spent counts the gradient steps per sample."""
    _check(steps, probe_steps, outlier_attack)
    b = x.shape[0]
    e, group, spent, x_adv, act = _setup(x, eps, weight)
    clean_logits = torch.zeros(b, 0, device=x.device)
    if act.numel() == 0:
        return x_adv, group, spent, clean_logits
    logits = _no_grad_logits(model, x[act])
    clean_logits = logits.new_zeros(b, logits.shape[1])
    clean_logits[act] = logits
    ok = logits.argmax(1) == y[act]
    out, cor = act[~ok], act[ok]
    group[out] = OUTLIER
    if out.numel() and outlier_attack == "fgsm":
        x_adv[out] = pgd(model, x[out], y[out], e[out], steps=1, rel_step=1.25, norm=norm)
        spent[out] = 1
    if cor.numel():
        probe = pgd(model, x[cor], y[cor], e[cor], steps=probe_steps, rel_step=probe_step_size, norm=norm)
        still = _no_grad_logits(model, probe).argmax(1) == y[cor]
        rob, bnd = cor[still], cor[~still]
        x_adv[rob] = probe[still]
        group[rob], spent[rob] = ROBUST, probe_steps
        if bnd.numel():
            x_adv[bnd] = pgd(model, x[bnd], y[bnd], e[bnd], steps=steps, rel_step=step_size, norm=norm)
            group[bnd], spent[bnd] = BOUNDARY, probe_steps + steps
    return x_adv, group, spent, clean_logits


def bullet_pgd_at(model, x, y, eps, weight, *, norm: str = "linf", steps: int = 10,
                  step_size: float | None = None, probe_steps: int = 1, probe_step_size: float | None = None,
                  outlier_attack: str = "none", label_smoothing: float = 0.0) -> ObjectiveOutput:
    """PGD-AT with Bullet-Train step allocation (bullet_allocation): weighted mean of CE at
    x_adv (one training forward over the whole batch; weight-0 samples sit at their clean point
    and contribute nothing). extras: group (-1 skipped, 0 outlier, 1 robust, 2 boundary) and
    steps (gradient steps spent per sample)."""
    x_adv, group, spent, _ = bullet_allocation(model, x, y, eps, weight, norm=norm, steps=steps,
                                               step_size=step_size, probe_steps=probe_steps,
                                               probe_step_size=probe_step_size, outlier_attack=outlier_attack)
    logits = model(x_adv)
    per = F.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing)
    return ObjectiveOutput(weighted_mean(per, weight), per.detach(), logits.detach(),
                           {"group": group, "steps": spent})


def bullet_trades(model, x, y, eps, weight, *, beta: float = 6.0, norm: str = "linf", steps: int = 10,
                  step_size: float | None = None, probe_steps: int = 1, probe_step_size: float | None = None,
                  label_smoothing: float = 0.0) -> ObjectiveOutput:
    """TRADES with the same allocation on its KL attack: one no-grad clean forward gives p(x)
    and the groups; misclassified (OUTLIER) samples get no attack (x_adv = x, KL term 0, loss =
    their clean CE); correct ones get a probe_steps-step trades_kl; those whose prediction at
    the probe is still y are ROBUST, the others (BOUNDARY) get a fresh full `steps`-step
    trades_kl. Weight-0 samples: no attack, no loss. The adversarial forward runs only on
    attacked samples (for the others logits_adv = logits_nat)."""
    _check(steps, probe_steps, "none")
    e, group, spent, x_adv, act = _setup(x, eps, weight)
    if act.numel():
        p_nat = F.softmax(_no_grad_logits(model, x[act]), dim=1)
        ok = p_nat.argmax(1) == y[act]
        group[act[~ok]] = OUTLIER
        cor, p_cor = act[ok], p_nat[ok]
        if cor.numel():
            probe = trades_kl(model, x[cor], e[cor], steps=probe_steps, rel_step=probe_step_size, norm=norm,
                              p_natural=p_cor)
            still = _no_grad_logits(model, probe).argmax(1) == y[cor]
            rob, bnd = cor[still], cor[~still]
            x_adv[rob] = probe[still]
            group[rob], spent[rob] = ROBUST, probe_steps
            if bnd.numel():
                x_adv[bnd] = trades_kl(model, x[bnd], e[bnd], steps=steps, rel_step=step_size, norm=norm,
                                       p_natural=p_cor[~still])
                group[bnd], spent[bnd] = BOUNDARY, probe_steps + steps
    logits_nat = model(x)
    attacked = (group >= ROBUST).nonzero().squeeze(1)
    logits_adv = logits_nat.clone()
    if attacked.numel():
        logits_adv[attacked] = model(x_adv[attacked])
    per = trades_per_sample(logits_nat, logits_adv, y, beta, label_smoothing)
    return ObjectiveOutput(weighted_mean(per, weight), per.detach(), logits_adv.detach(),
                           {"group": group, "steps": spent})
