"""DeepFool (Moosavi-Dezfooli et al. 2016), L2 and Linf, batched over samples and classes: the
minimal-perturbation margin that PUMA prunes by."""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch import nn

from .common import channels_last, check_norm, check_unit_range, eval_mode, flat_norm
from .conv_input_grad import input_grad_convs


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
             candidates: int = 10, clip: bool = False, on_finished=None) -> DeepFoolResult:
    """DeepFool against the model's clean prediction, in eval mode (modes restored after).

    Each iteration: one forward on the samples not yet fooled, then one backward per candidate
    class (retain_graph) for the gradients of f_k - f_label; step to the nearest linearised
    boundary (a no-grad forward then checks the new iterate),
    l = argmin_k |f_k| / ||w_k||_q (q = 2 for l2, q = 1 for linf), with
    r = (|f_l| + 1e-4) w_l / ||w_l||_2^2 (l2) or (|f_l| + 1e-4) sign(w_l) / ||w_l||_1 (linf), as
    in the reference code. candidates: the top classes of the clean logits considered (10 in the
    reference code; all classes for 10-class data; 3 keeps the ranking of margins at a third of the
    backward passes, see benchmarks/results/deepfool_speed.md). clip: clamp every iterate to [0,1]
    (torchattacks' variant, a box-constrained margin, ~2x the iterations on images with saturated
    pixels); default False follows the reference code, which iterates unclipped (a distance to the
    model's boundary in input space, PUMA's margin). batch_size: at most this many images in flight
    (default all); a finished image's slot is refilled with the next waiting one, so passes stay
    full-width instead of shrinking to a long tail of tiny batches. Images are independent: the
    result does not depend on batch_size beyond float rounding. x must lie in [0,1] (else ValueError).
    on_finished(k): called after each pass with the number of images that left the queue (a progress bar)."""
    check_norm(norm)
    x = x.detach()
    check_unit_range(x, "deepfool")
    image = x.ndim == 4  # NHWC weights and inputs while attacking (faster convolutions); x's layout kept
    layout = torch.channels_last if image and x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1 \
        else torch.contiguous_format
    if image:
        x = x.contiguous(memory_format=torch.channels_last)
    capacity = x.shape[0] if batch_size is None else int(batch_size)
    if capacity < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with eval_mode(model), (channels_last(model) if image else contextlib.nullcontext()), \
            (input_grad_convs(model) if image else contextlib.nullcontext()):
        out = _deepfool(model, x, norm, steps, overshoot, candidates, clip, capacity, on_finished)
    if image:
        out = [t.contiguous(memory_format=layout) if t.ndim == 4 else t for t in out]
    return DeepFoolResult(*out)


def _class_grads(z: torch.Tensor, cand: torch.Tensor, xa: torch.Tensor):
    """f[:, j] = z_cand_j - z_label and w[:, j] = grad of it (j = 1..C-1); one backward each."""
    zc = z.gather(1, cand)
    f = zc[:, 1:] - zc[:, :1]
    last = f.shape[1] - 1
    w = [torch.autograd.grad(f[:, j].sum(), xa, retain_graph=j < last)[0] for j in range(f.shape[1])]
    return f.detach(), torch.stack(w, 1)


def _deepfool(model, x, norm, steps, overshoot, candidates, clip, capacity, on_finished=None):
    """The work queue: `active` holds at most `capacity` images, each at its own iteration `it`.
    A pass first checks, with a no-grad forward, whether the images that just stepped are across
    the boundary (they leave, converged; so do those at the step limit), refills the freed slots
    with waiting images, then runs one gradient pass (forward + candidates-1 backward) in which
    every image steps: no backward is spent on an image that turns out to be fooled already. A
    new image's first forward gives its clean prediction and candidate classes."""
    n, dev = x.shape[0], x.device
    r_tot = torch.zeros_like(x)
    converged = torch.zeros(n, dtype=torch.bool, device=dev)
    iterations = torch.full((n,), steps, dtype=torch.long, device=dev)
    it = torch.zeros(n, dtype=torch.long, device=dev)
    cand = None
    active = torch.empty(0, dtype=torch.long, device=dev)
    queued = 0

    def iterate(idx):
        xa = x[idx] + (1 + overshoot) * r_tot[idx]
        return xa.clamp(0, 1) if clip else xa

    while True:
        if active.numel():  # every active image has just stepped: is it across the boundary?
            with torch.no_grad():
                fooled = model(iterate(active)).argmax(1) != cand[active, 0]
            converged[active[fooled]] = True
            iterations[active[fooled]] = it[active[fooled]]
            before = active.numel()
            active = active[~fooled & (it[active] < steps)]
            if on_finished is not None and active.numel() < before:
                on_finished(before - active.numel())
        if active.numel() < capacity and queued < n:
            take = min(capacity - active.numel(), n - queued)
            active = torch.cat([active, torch.arange(queued, queued + take, device=dev)])
            queued += take
        if active.numel() == 0:
            break
        with torch.enable_grad():
            xa = iterate(active).requires_grad_(True)
            z = model(xa)
            if cand is None:
                cand = torch.empty(n, min(candidates, z.shape[1]), dtype=torch.long, device=dev)
            fresh = it[active] == 0
            if fresh.any():  # clean prediction first, then the next most likely classes
                zf = z.detach()[fresh]
                label = zf.argmax(1, keepdim=True)
                cand[active[fresh]] = zf.scatter(1, label, float("inf")).topk(cand.shape[1], dim=1).indices
            if cand.shape[1] < 2 or steps == 0:  # nothing to step towards: not converged
                if on_finished is not None:
                    on_finished(active.numel())
                active = active[:0]
                continue
            f, w = _class_grads(z, cand[active], xa)
        r_tot[active] += _step(f, w, norm)
        it[active] += 1
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
