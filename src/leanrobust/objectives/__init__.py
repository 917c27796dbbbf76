"""Training objectives: one small function per method, fn(model, x, y, eps, weight, **hp) ->
ObjectiveOutput, looked up by name in OBJECTIVES (see docs/architecture.md). An objective's step_size
(objective.step_size of a config) is relative to eps; objectives hand it to the attacks as rel_step."""
from .base import ObjectiveOutput, call_objective, weighted_mean
from .bullet import bullet_pgd_at, bullet_trades
from .erm import erm
from .fgsm_rs import fgsm_rs
from .gair import gair_at, gair_lambda, gair_trades, gair_weights
from .mail import mail_at, mail_weights, probabilistic_margin
from .mart import mart
from .noise import gaussian_noise
from .pgd_at import pgd_at
from .trades import trades

OBJECTIVES = {
    "erm": erm,
    "pgd_at": pgd_at,
    "trades": trades,
    "mart": mart,
    "fgsm_rs": fgsm_rs,
    "gair_at": gair_at,
    "gair_trades": gair_trades,
    "mail_at": mail_at,
    "gaussian_noise": gaussian_noise,
    "bullet_pgd_at": bullet_pgd_at,
    "bullet_trades": bullet_trades,
}

__all__ = ["OBJECTIVES", "ObjectiveOutput", "call_objective", "weighted_mean", "gair_weights",
           "gair_lambda", "probabilistic_margin", "mail_weights", *OBJECTIVES]
