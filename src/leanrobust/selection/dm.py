"""Distribution Matching condensation (Zhao & Bilen, WACV 2023), the condensation baseline MFC is
compared with: synthetic images, initialised from real ones, learn to match each class's mean
embedding under freshly sampled random ConvNets, with the same (siamese) augmentation on both sides.

Choices, following the authors' public code where it is explicit:
- embedder: ConvNet, ``depth`` x [conv 3x3 (``width`` channels), instance norm (GroupNorm with one
  group per channel, affine), ReLU, avg-pool 2x2], flattened; PyTorch's default initialisation,
  re-drawn every iteration from a seeded generator, weights frozen, train mode.
- loss per iteration: sum over classes of ||mean emb(real batch) - mean emb(synthetic)||^2;
  ``history`` records it divided by the number of classes (as the authors print it).
- optimisation on normalised pixels (per-channel mean/std of the given data unless passed),
  SGD lr 1, momentum 0.5; the result is de-normalised, clipped to [0,1] and rounded to uint8.
- DSA ("color_crop_cutout_flip_scale_rotate", single mode): per class and iteration one of the six
  groups is drawn, with one parameter set shared by the whole real and synthetic batch of that
  class (the authors' siamese batch mode); all ops are differentiable tensor ops.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.augment import to_float
from ..io import atomic_write
from .random_subset import _labels_numpy, class_budgets

DSA_STRATEGY = ("color", "crop", "cutout", "flip", "scale", "rotate")
# the authors' ParamDiffAug defaults
DSA_PARAMS = dict(prob_flip=0.5, ratio_scale=1.2, ratio_rotate=15.0, ratio_crop_pad=0.125,
                  ratio_cutout=0.5, brightness=1.0, saturation=2.0, contrast=0.5)


# ----------------------------------------------------------------------------------------------
# differentiable siamese augmentation

def _u(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g, device=g.device))


def sample_dsa(g: torch.Generator, size: tuple[int, int], strategy=DSA_STRATEGY) -> dict:
    """Draw one augmentation (group name + parameters) to apply identically to several batches."""
    p = DSA_PARAMS
    name = strategy[int(torch.randint(len(strategy), (), generator=g, device=g.device))]
    h, w = size
    if name == "color":
        return {"name": name, "brightness": (_u(g) - 0.5) * p["brightness"],
                "saturation": _u(g) * p["saturation"], "contrast": _u(g) + p["contrast"]}
    if name == "crop":
        sh, sw = int(h * p["ratio_crop_pad"] + 0.5), int(w * p["ratio_crop_pad"] + 0.5)
        return {"name": name, "dy": int(torch.randint(-sh, sh + 1, (), generator=g, device=g.device)),
                "dx": int(torch.randint(-sw, sw + 1, (), generator=g, device=g.device))}
    if name == "cutout":
        ch, cw = int(h * p["ratio_cutout"] + 0.5), int(w * p["ratio_cutout"] + 0.5)
        return {"name": name, "cy": int(torch.randint(0, h + (1 - ch % 2), (), generator=g, device=g.device)),
                "cx": int(torch.randint(0, w + (1 - cw % 2), (), generator=g, device=g.device)), "ch": ch, "cw": cw}
    if name == "flip":
        return {"name": name, "flip": _u(g) < p["prob_flip"]}
    if name == "scale":
        r = p["ratio_scale"]
        return {"name": name, "sx": _u(g) * (r - 1.0 / r) + 1.0 / r, "sy": _u(g) * (r - 1.0 / r) + 1.0 / r}
    if name == "rotate":
        return {"name": name, "angle": (_u(g) - 0.5) * 2 * p["ratio_rotate"] / 180 * math.pi}
    raise ValueError(f"unknown DSA augmentation {name!r}; expected one of {DSA_STRATEGY}")


def apply_dsa(x: torch.Tensor, a: dict) -> torch.Tensor:
    """Apply a sampled augmentation to a batch (N, C, H, W); differentiable in x."""
    name = a["name"]
    if name == "color":
        x = x + a["brightness"]
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * a["saturation"] + m
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - m) * a["contrast"] + m
    if name == "crop":  # translate with zero padding
        dy, dx = a["dy"], a["dx"]
        h, w = x.shape[-2:]
        xp = F.pad(x, (abs(dx), abs(dx), abs(dy), abs(dy)))
        return xp[..., abs(dy) - dy:abs(dy) - dy + h, abs(dx) - dx:abs(dx) - dx + w]
    if name == "cutout":
        h, w = x.shape[-2:]
        y0, y1 = max(a["cy"] - a["ch"] // 2, 0), min(a["cy"] - a["ch"] // 2 + a["ch"], h)
        x0, x1 = max(a["cx"] - a["cw"] // 2, 0), min(a["cx"] - a["cw"] // 2 + a["cw"], w)
        mask = torch.ones((h, w), dtype=x.dtype, device=x.device)
        mask[y0:y1, x0:x1] = 0
        return x * mask
    if name == "flip":
        return x.flip(3) if a["flip"] else x
    if name in ("scale", "rotate"):
        if name == "scale":
            m = [[a["sx"], 0.0, 0.0], [0.0, a["sy"], 0.0]]
        else:
            c, s = math.cos(a["angle"]), math.sin(a["angle"])
            m = [[c, s, 0.0], [-s, c, 0.0]]
        theta = torch.tensor(m, dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, align_corners=True)
    raise ValueError(f"unknown DSA augmentation {name!r}")


# ----------------------------------------------------------------------------------------------
# random ConvNet embedder

def convnet_embedder(channels: int, *, width: int = 128, depth: int = 3) -> nn.Sequential:
    """ConvNet feature extractor (DM's 'ConvNet' without its classifier)."""
    layers: list[nn.Module] = []
    c = channels
    for _ in range(depth):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.GroupNorm(width, width, affine=True),
                   nn.ReLU(inplace=True), nn.AvgPool2d(2, 2)]
        c = width
    return nn.Sequential(*layers, nn.Flatten())


@torch.no_grad()
def _redraw(net: nn.Module, g: torch.Generator) -> None:
    """Fresh PyTorch-default initialisation of every conv (kaiming uniform a=sqrt(5), uniform bias)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=g)
            bound = 1.0 / math.sqrt(m.weight[0].numel())
            m.bias.uniform_(-bound, bound, generator=g)
        elif isinstance(m, nn.GroupNorm):
            m.weight.fill_(1.0)
            m.bias.zero_()


# ----------------------------------------------------------------------------------------------

def dm_condense(images_uint8, labels, *, ipc: int, iterations: int, batch_real: int = 256, lr: float = 1.0,
                seed: int = 0, device=None, width: int = 128, depth: int = 3, momentum: float = 0.5,
                dsa: bool = True, mean=None, std=None, progress: bool = False,
                state: str | Path | None = None, state_every: int = 25,
                ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Condense (N, C, H, W) uint8 images to ``ipc`` synthetic images per class.

    Returns (images uint8 (K, C, H, W) on the CPU, labels int64 (K,) sorted by class, history of the
    matching loss per iteration). The result is a new pool (synthetic images) meant to be trained on
    with unit weights. ``mean``/``std``: per-channel normalisation of the pixel space the images are
    optimised in (default: the data's own statistics). H and W must be >= 2**depth. progress: a tqdm
    bar over the iterations on stderr, with the matching loss.
    state: a file the condensation saves itself to every ``state_every`` iterations (the synthetic images,
    the optimiser and the generator that draws every network, batch and augmentation) and resumes from, so
    an interrupted run ends with the images of an uninterrupted one (hours on a CPU). A state made with
    other settings or data is refused."""
    x_all = images_uint8 if isinstance(images_uint8, torch.Tensor) else torch.as_tensor(np.asarray(images_uint8))
    if x_all.ndim != 4:
        raise ValueError(f"images_uint8 must be (N, C, H, W), got shape {tuple(x_all.shape)}")
    if x_all.dtype != torch.uint8:
        raise ValueError(f"images_uint8 must have dtype uint8, got {x_all.dtype}")
    y = _labels_numpy(labels)
    if y.size != x_all.shape[0]:
        raise ValueError(f"images_uint8 has {x_all.shape[0]} samples but labels has {y.size}")
    budgets = class_budgets(y, ipc=ipc)
    if isinstance(iterations, bool) or int(iterations) != iterations or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    if isinstance(batch_real, bool) or int(batch_real) != batch_real or batch_real < 1:
        raise ValueError(f"batch_real must be an integer >= 1, got {batch_real!r}")
    if not (math.isfinite(float(lr)) and lr > 0):
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if min(x_all.shape[-2:]) < 2 ** depth:
        raise ValueError(f"images of size {tuple(x_all.shape[-2:])} are too small for a depth-{depth} ConvNet")
    dev = torch.device(device) if device is not None else x_all.device
    C = x_all.shape[1]

    x = to_float(x_all.to(dev))
    mean_t = (x.mean(dim=(0, 2, 3)) if mean is None else torch.as_tensor(mean, dtype=torch.float32, device=dev)).reshape(1, C, 1, 1)
    std_t = (x.std(dim=(0, 2, 3)) if std is None else torch.as_tensor(std, dtype=torch.float32, device=dev)).reshape(1, C, 1, 1)
    std_t = std_t.clamp_min(1e-6)
    z = (x - mean_t) / std_t

    rng = np.random.default_rng(seed)
    g = torch.Generator(device=dev).manual_seed(int(seed))
    classes = list(budgets)
    idx_by_class = {c: torch.from_numpy(np.flatnonzero(y == c)).to(dev) for c in classes}
    init = np.concatenate([rng.choice(np.flatnonzero(y == c), size=ipc, replace=False) for c in classes])
    syn = z[torch.from_numpy(init).to(dev)].clone().requires_grad_(True)
    syn_labels = torch.as_tensor(np.repeat(classes, ipc), dtype=torch.long)
    opt = torch.optim.SGD([syn], lr=float(lr), momentum=float(momentum))

    net = convnet_embedder(C, width=width, depth=depth).to(dev).train()
    for p in net.parameters():
        p.requires_grad_(False)
    history: list[float] = []
    key = torch.tensor([ipc, int(batch_real), int(seed), width, depth, int(dsa), x_all.shape[0], *x_all.shape[1:],
                        int(x_all.sum())], dtype=torch.int64)  # what a state must have been made with
    key_f = torch.tensor([float(lr), float(momentum)], dtype=torch.float64)
    done = 0
    if state is not None and Path(state).exists():
        st = torch.load(state, map_location="cpu", weights_only=True)
        if not (torch.equal(st["key"], key) and torch.equal(st["key_f"], key_f)):
            raise ValueError(f"{state}: a DM state made with other settings or data; delete it to start over")
        done = int(st["iterations"])
        if done > iterations:
            raise ValueError(f"{state}: holds {done} iterations, more than the {iterations} asked for")
        with torch.no_grad():
            syn.copy_(st["syn"].to(dev))
        opt.load_state_dict(st["opt"])
        g.set_state(st["generator"].to(g.get_state().device))
        history = [float(v) for v in st["history"]]

    def save_state(n: int) -> None:
        atomic_write(state, lambda tmp: torch.save(
            {"key": key, "key_f": key_f, "iterations": n, "syn": syn.detach().cpu(), "opt": opt.state_dict(),
             "generator": g.get_state(), "history": torch.tensor(history, dtype=torch.float64)}, tmp))

    size = tuple(x.shape[-2:])
    bar = tqdm(total=int(iterations), initial=done, desc="dm", unit="it", disable=not progress, dynamic_ncols=True)
    for it in range(done, int(iterations)):
        _redraw(net, g)
        real_b, syn_b = [], []
        for i, c in enumerate(classes):
            pool = idx_by_class[c]
            take = pool[torch.randperm(pool.numel(), generator=g, device=dev)[:batch_real]]
            r, s = z[take], syn[i * ipc:(i + 1) * ipc]
            if dsa:
                aug = sample_dsa(g, size)
                r, s = apply_dsa(r, aug), apply_dsa(s, aug)
            real_b.append(r)
            syn_b.append(s)
        with torch.no_grad():
            emb_real = net(torch.cat(real_b))
        emb_syn = net(torch.cat(syn_b))
        loss = syn.new_zeros(())
        start = 0
        for i, r in enumerate(real_b):
            mu_real = emb_real[start:start + r.shape[0]].mean(0)
            start += r.shape[0]
            mu_syn = emb_syn[i * ipc:(i + 1) * ipc].mean(0)
            loss = loss + (mu_real - mu_syn).square().sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(float(loss.detach()) / len(classes))
        bar.set_postfix(loss=f"{history[-1]:.4g}", refresh=False)
        bar.update()
        if state is not None and ((it + 1) % state_every == 0 or it + 1 == iterations):
            save_state(it + 1)
    bar.close()

    out = (syn.detach() * std_t + mean_t).clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).cpu()
    return out, syn_labels, history
