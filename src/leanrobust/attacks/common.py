"""Shared attack plumbing: per-sample eps, mode restoration, projections."""
from __future__ import annotations

import contextlib
import itertools
from typing import Iterator

import torch
from torch import nn


def per_sample(value: float | torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    """`value` as a (B,) tensor on `like`'s device and dtype, B = like.shape[0]: a number (or 0-d tensor)
    broadcasts, anything else must hold exactly B entries (ValueError naming `name`)."""
    v = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if v.ndim == 0:
        v = v.expand(like.shape[0])
    v = v.reshape(-1)
    if v.numel() != like.shape[0]:
        raise ValueError(f"{name} has {v.numel()} entries for a batch of {like.shape[0]}")
    return v


def as_eps(eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample radius shaped (B, 1, 1, ...) to broadcast over x; a float broadcasts."""
    e = per_sample(eps, x, "eps")
    if (e < 0).any():
        raise ValueError("eps must be >= 0")
    return e.reshape(-1, *([1] * (x.ndim - 1)))


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the attack in eval mode (BatchNorm buffers untouched), then restore every
    submodule's own training flag exactly as the caller left it."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, t in modes:
            m.train(t)


@contextlib.contextmanager
def channels_last(model: nn.Module) -> Iterator[nn.Module]:
    """NHWC layout for the model's 4-D weights while inside (oneDNN and cuDNN convolutions run
    faster on it, ~1.3x for DeepFool on CPU); values and Parameter objects untouched, each tensor's
    own layout restored on exit."""
    moved = [t for t in itertools.chain(model.parameters(), model.buffers())
             if t.ndim == 4 and not t.is_contiguous(memory_format=torch.channels_last)]
    for t in moved:
        t.data = t.data.contiguous(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        for t in moved:
            t.data = t.data.contiguous()


def flat_norm(v: torch.Tensor, p: float) -> torch.Tensor:
    """Per-sample p-norm, shaped (B, 1, 1, ...) for broadcasting."""
    n = v.flatten(1).norm(p=p, dim=1)
    return n.reshape(-1, *([1] * (v.ndim - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Project x_adv onto the eps-ball around x (per-sample eps) intersected with [0,1]."""
    delta = x_adv - x
    if norm == "linf":
        delta = torch.maximum(torch.minimum(delta, eps), -eps)
    elif norm == "l2":
        n = flat_norm(delta, 2).clamp_min(1e-12)
        delta = delta * torch.clamp(eps / n, max=1.0)
    else:
        raise ValueError(f"unknown norm {norm!r}; expected 'linf' or 'l2'")
    return (x + delta).clamp(0.0, 1.0)


NORMS = ("linf", "l2")


def check_unit_range(x: torch.Tensor, attack: str) -> None:
    """Raise unless every input lies in [0,1] (one min/max pass): attacks clip to that box, so a
    normalised input would be clipped silently into a different image."""
    if x.numel() == 0:
        return
    lo, hi = torch.aminmax(x.detach())
    if not (bool(lo >= 0) and bool(hi <= 1)):  # NaN fails too
        raise ValueError(f"{attack}: inputs must lie in [0,1], got values in [{float(lo):.4g}, {float(hi):.4g}]; "
                         "attacks perturb and clip images in [0,1], so the model must take [0,1] inputs with its "
                         "normalisation inside it (e.g. leanrobust.models.Normalize(mean, std) as its first layer), "
                         "and x must not be normalised (nor uint8: divide by 255)")


def default_rel_step(steps: int) -> float:
    """The default step of the iterative attacks (pgd, trades_kl) as a multiple of eps: 2.5 / steps, so
    the iterates can cross the ball (and come back) within the steps."""
    return 2.5 / max(steps, 1)


def step_length(eps: torch.Tensor, alpha, rel_step, default_rel: float, attack: str,
                removed: dict) -> torch.Tensor:
    """Per-sample step: alpha (absolute, as in torchattacks) or rel_step * eps (default_rel * eps when
    neither is given). `step_size` is refused: it meant rel_step here but alpha in torchattacks."""
    if "step_size" in removed:
        raise TypeError(f"{attack}() takes no step_size: pass alpha= for an absolute step (torchattacks' "
                        f"meaning, e.g. alpha=2/255) or rel_step= for a multiple of eps (leanrobust's former "
                        f"step_size, e.g. rel_step=0.25 gives 0.25 * eps)")
    if removed:
        raise TypeError(f"{attack}() got unexpected keyword argument(s) {', '.join(sorted(removed))}")
    if alpha is not None and rel_step is not None:
        raise ValueError(f"{attack}: give alpha (absolute step) or rel_step (multiple of eps), not both")
    name, value = ("alpha", alpha) if alpha is not None else ("rel_step", default_rel if rel_step is None else rel_step)
    v = torch.as_tensor(value, dtype=eps.dtype, device=eps.device).reshape(-1)
    if v.numel() not in (1, eps.shape[0]):
        raise ValueError(f"{attack}: {name} has {v.numel()} entries for a batch of {eps.shape[0]}")
    if not bool((v >= 0).all()):
        raise ValueError(f"{attack}: {name} must be >= 0, got {value!r}")
    v = v.reshape(-1, *([1] * (eps.ndim - 1)))
    return v.expand_as(eps) if alpha is not None else v * eps


def check_norm(norm: str) -> str:
    """Return norm if it is a known threat model ("linf", "l2"), else raise ValueError."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    return norm


def iterative_start(x: torch.Tensor, eps, *, norm: str, steps: int, alpha, rel_step, attack: str,
                    removed: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the iterative attacks (pgd, trades_kl) check and set up first: the norm, x detached, the
    per-sample eps (as_eps), the per-sample step (step_length, default default_rel_step(steps) * eps),
    x within [0,1]. Returns (x, eps, step)."""
    check_norm(norm)
    x = x.detach()
    eps_b = as_eps(eps, x)
    step = step_length(eps_b, alpha, rel_step, default_rel_step(steps), attack, removed)
    check_unit_range(x, attack)
    return x, eps_b, step


def random_init(x: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Random start inside the eps-ball, clipped to [0,1]: uniform per pixel for linf; for l2 a
    uniform direction with radius U(0,1) * eps."""
    if check_norm(norm) == "linf":
        delta = (2 * torch.rand_like(x) - 1) * eps
    else:
        d = torch.randn_like(x)
        r = torch.rand(x.shape[0], device=x.device, dtype=x.dtype).reshape(eps.shape)
        delta = d / flat_norm(d, 2).clamp_min(1e-12) * r * eps
    return (x + delta).clamp(0.0, 1.0)


def ascent_step(x_adv: torch.Tensor, grad: torch.Tensor, alpha: torch.Tensor, norm: str) -> torch.Tensor:
    """One steepest-ascent step of per-sample length alpha: sign of the gradient for linf, the
    per-sample L2-normalised gradient for l2 (not yet projected)."""
    if check_norm(norm) == "linf":
        return x_adv + alpha * grad.sign()
    return x_adv + alpha * grad / flat_norm(grad, 2).clamp_min(1e-12)


def input_grad(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d loss / d x only: nothing accumulates in the parameters' .grad."""
    return torch.autograd.grad(loss, x)[0]


def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample CW margin max_{j != y} z_j - z_y (> 0 exactly when misclassified)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return other.amax(dim=1) - z_y
