"""DeepFool (Moosavi-Dezfooli et al. 2016), L2 and Linf, batched over samples and classes: the
minimal-perturbation margin that PUMA prunes by."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .common import check_norm, eval_mode, flat_norm


class DeepFoolResult(NamedTuple):
    """x_adv = clamp(x + delta, 0, 1); delta = (1 + overshoot) * sum_i r_i, the overshot
    perturbation BEFORE clipping; margin = ||delta|| per sample (L2 or Linf, the attack's norm);
    converged: the prediction on the last iterate (x + delta, clipped to [0,1] when clip=True)
    differs from the clean prediction (False when the step limit, or clipping, stopped it; margin
    is then not a boundary distance); iterations: number of updates applied (steps when not
    converged)."""

    x_adv: torch.Tensor
    delta: torch.Tensor
    margin: torch.Tensor
    converged: torch.Tensor
    iterations: torch.Tensor


def deepfool(model: nn.Module, x: torch.Tensor, *, norm: str = "l2", steps: int = 50,
             overshoot: float = 0.02, batch_size: int | None = None,
             candidates: int = 10, clip: bool = False) -> DeepFoolResult:
    """DeepFool against the model's clean prediction, in eval mode (modes restored after).

    Each iteration: one forward on the still-active samples, then one backward per candidate
    class (retain_graph) for the gradients of f_k - f_label; step to the nearest linearised
    boundary, l = argmin_k |f_k| / ||w_k||_q (q = 2 for l2, q = 1 for linf), with
    r = (|f_l| + 1e-4) w_l / ||w_l||_2^2 (l2) or (|f_l| + 1e-4) sign(w_l) / ||w_l||_1 (linf), as
    in the reference code. candidates: the top classes of the clean logits considered (10 in the
    reference code; all classes for 10-class data; 3 keeps the ranking of margins at a third of the
    backward passes, see benchmarks/results/deepfool_speed.md). clip: clamp every iterate to [0,1]
    (torchattacks' variant, a box-constrained margin, ~2x the iterations on images with saturated
    pixels); default False follows the reference code, which iterates unclipped (a distance to the
    model's boundary in input space, PUMA's margin). batch_size chunks large inputs."""
    check_norm(norm)
    x = x.detach()
    n = x.shape[0] if batch_size is None else batch_size
    with eval_mode(model):
        parts = [_deepfool(model, xb, norm, steps, overshoot, candidates, clip) for xb in x.split(max(n, 1))]
    return DeepFoolResult(*(torch.cat(field) for field in zip(*parts)))


def _class_grads(z: torch.Tensor, cand: torch.Tensor, xa: torch.Tensor):
    """f[:, j] = z_cand_j - z_label and w[:, j] = grad of it (j = 1..C-1); one backward each."""
    zc = z.gather(1, cand)
    f = zc[:, 1:] - zc[:, :1]
    last = f.shape[1] - 1
    w = [torch.autograd.grad(f[:, j].sum(), xa, retain_graph=j < last)[0] for j in range(f.shape[1])]
    return f.detach(), torch.stack(w, 1)


def _deepfool(model, x, norm, steps, overshoot, candidates, clip):
    b = x.shape[0]
    r_tot = torch.zeros_like(x)
    converged = torch.zeros(b, dtype=torch.bool, device=x.device)
    iterations = torch.full((b,), steps, dtype=torch.long, device=x.device)
    active = torch.arange(b, device=x.device)
    cand = None
    for it in range(steps + 1):
        with torch.enable_grad():
            xa = x[active] + (1 + overshoot) * r_tot[active]
            xa = (xa.clamp(0, 1) if clip else xa).requires_grad_(True)
            z = model(xa)
            if cand is None:  # clean prediction first, then the next most likely classes
                label = z.detach().argmax(1, keepdim=True)
                k = min(candidates, z.shape[1])
                cand = z.detach().scatter(1, label, float("inf")).topk(k, dim=1).indices
            fooled = z.detach().argmax(1) != cand[active, 0]
            converged[active[fooled]] = True
            iterations[active[fooled]] = it
            keep = ~fooled
            if it == steps or not keep.any() or cand.shape[1] < 2:
                break
            f, w = _class_grads(z, cand[active], xa)
        f, w = f[keep], w[keep]
        active = active[keep]
        r_tot[active] += _step(f, w, norm)
    delta = (1 + overshoot) * r_tot
    margin = flat_norm(delta, 2 if norm == "l2" else float("inf")).flatten()
    return (x + delta).clamp(0, 1), delta, margin, converged, iterations


def _step(f: torch.Tensor, w: torch.Tensor, norm: str) -> torch.Tensor:
    """Step to the nearest linearised boundary; f (n, C-1) < 0, w (n, C-1, *shape)."""
    wf = w.flatten(2)
    wn = (wf.norm(dim=2) if norm == "l2" else wf.abs().sum(dim=2)).clamp_min(1e-12)
    l = (f.abs() / wn).argmin(dim=1)
    rows = torch.arange(f.shape[0], device=f.device)
    w_l = w[rows, l]
    shape = (-1,) + (1,) * (w_l.ndim - 1)
    size = (f[rows, l].abs() + 1e-4).reshape(shape)  # +1e-4 as in the reference code
    if norm == "l2":
        return size * w_l / wn[rows, l].reshape(shape) ** 2
    return size * w_l.sign() / wn[rows, l].reshape(shape)
