"""The objective contract: what every training objective returns, the weighted mean, and the
name -> function dispatch that hands each objective only the hyper-parameters it declares."""
from __future__ import annotations

import inspect
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple

import torch
import torch.nn.functional as F

from ..attacks.common import per_sample

__all__ = ["ObjectiveOutput", "weighted_mean", "call_objective", "as_weight", "kl_per_sample",
           "normalise_instance_weights"]


class ObjectiveOutput(NamedTuple):
    """loss: scalar to backpropagate; per_sample: (B,) unweighted per-sample loss (detached);
    logits: detached logits the robust term was computed on (clean for ERM), for metrics;
    extras: method-specific detached tensors (kappa, instance weights, ...). Read-only default."""

    loss: torch.Tensor
    per_sample: torch.Tensor
    logits: torch.Tensor
    extras: Mapping[str, Any] = MappingProxyType({})


def as_weight(weight: float | torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Per-sample weight as a (B,) tensor on `like`'s device and dtype (None or a float broadcasts)."""
    return per_sample(1.0 if weight is None else weight, like, "weight")


def weighted_mean(per_sample: torch.Tensor, weight: float | torch.Tensor | None) -> torch.Tensor:
    """(weight * per_sample).mean(): a sample with weight 0 contributes no gradient."""
    return (as_weight(weight, per_sample) * per_sample).mean()


def normalise_instance_weights(w: torch.Tensor, weight: float | torch.Tensor | None) -> torch.Tensor:
    """Instance weights w (GAIR, MAIL) normalised within the batch and combined with the sample
    weights: c_i = weight_i * w_i * sum(weight) / sum(weight * w). With unit sample weights this is
    GAIRAT's w_i * B / sum(w); with w = 1 it is exactly the sample weight; samples of weight 0 take
    no part in the normaliser. Detached: the weights carry no gradient."""
    sw = as_weight(weight, w)
    prod = (sw * w.to(sw.dtype)).detach()
    return prod * (sw.sum() / prod.sum().clamp_min(torch.finfo(prod.dtype).tiny))


def kl_per_sample(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """sum_k p_k (log p_k - log q_k) per sample, p = softmax(logits_p), q = softmax(logits_q).
    This is what TRADES/MART code computes as KLDivLoss(log q, p) with p the clean prediction."""
    log_p = F.log_softmax(logits_p, dim=1)
    log_q = F.log_softmax(logits_q, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def call_objective(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   eps: float | torch.Tensor, weight: float | torch.Tensor | None,
                   **available: Any) -> ObjectiveOutput:
    """Run OBJECTIVES[name], passing only the keyword arguments it declares (all of them if it
    takes **kwargs). Values that are None count as "not offered", so the function's default
    applies. Unknown names raise ValueError listing the registered ones."""
    from . import OBJECTIVES  # import cycle: the registry in the package __init__ imports this module

    try:
        fn: Callable[..., ObjectiveOutput] = OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; expected one of: "
                         f"{', '.join(sorted(OBJECTIVES))}") from None
    params = inspect.signature(fn).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = {n for n, p in params.items()
                if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}
    accepted -= {"model", "x", "y", "eps", "weight"}
    kwargs = {k: v for k, v in available.items() if v is not None and (takes_all or k in accepted)}
    return fn(model, x, y, eps, weight, **kwargs)
