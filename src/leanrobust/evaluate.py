"""Test-set evaluation: clean accuracy and robust accuracy per attack (PGD-k, CW-k on the
margin loss, PGD-k on logits times S, and the reference AutoAttack through pyautoattack), on the
same points, with gradient-masking flags (masking.py) from the gaps between them."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed  # under torchrun: each rank attacks its share of the points, results joined
from .attacks import autoattack, pgd
from .attacks.common import channels_last, eval_mode
from .data.augment import to_float
from .masking import ATTACK_RE, masking_flags  # ATTACK_RE: pgdK / cwK / pgdKxS (K steps, logits x S)

AA_VERSIONS = {"standard": None, "fast": ["apgd-ce", "apgd-t"]}


def parse_attacks(names: list[str] | str) -> list[str]:
    """Validate attack names: pgdK, cwK (K steps), pgdKxS (CE on logits x S) and autoattack."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    out = []
    for n in (s.strip().lower() for s in names):
        m = ATTACK_RE.match(n)
        if n != "autoattack" and (not m or int(m.group(2)) == 0 or m.group(3) is not None and int(m.group(3)) == 0):
            raise ValueError(f"unknown attack {n!r}: use pgdK, cwK (K >= 1 steps, e.g. pgd20, cw20), pgdKxS "
                             "(PGD-K with cross-entropy on the logits times S >= 1, e.g. pgd20x10) or autoattack")
        out.append(n)
    return out


class ScaledLogits(nn.Module):
    """The model with its logits times `scale`: same predictions, a CE attack that is not blunted by
    compressed logits (Hitaj et al. 2021)."""

    def __init__(self, model: nn.Module, scale: float):
        super().__init__()
        self.model, self.scale = model, float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    with eval_mode(model):
        return torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])


@torch.no_grad()
def is_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per point of one batch: the model (eval mode, no grad) predicts y on x."""
    with torch.no_grad(), eval_mode(model):
        return model(x).argmax(1) == y


def robust_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor, *, steps: int,
                   norm: str, loss: str = "ce", attacked: nn.Module | None = None,
                   clean: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per point of one batch: (clean, robust). clean: the model predicts y on x (pass it when known);
    robust: it predicts y both on x and on PGD-`steps` x_adv (loss "ce" or "cw") at eps, attacking
    `attacked` (default: the model): as AutoAttack counts, a misclassified point is never robust."""
    if clean is None:
        clean = is_correct(model, x, y)
    x_adv = pgd(model if attacked is None else attacked, x, y, eps, steps=steps, norm=norm, loss=loss)
    return clean, clean & is_correct(model, x_adv, y)


def evaluate_model(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float, norm: str,
                   attacks: list[str], n: int | None = None, autoattack_n: int | None = None,
                   autoattack_version: str = "standard", batch_size: int = 500, device: torch.device | str = "cpu",
                   seed: int = 0, state_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Accuracies on the first n test points (the first autoattack_n for AutoAttack).
    Returns {"clean_acc", "robust_acc": {attack: acc}, "n", "autoattack_n", "eval_seconds", "masking"}
    (masking: masking.masking_flags on the attacks that ran)."""
    device = torch.device(device)
    attacks = parse_attacks(attacks)
    n = len(labels) if n is None else min(n, len(labels))
    x, y = to_float(images[:n]), labels[:n].long()
    # NHWC weights on the CPU: oneDNN's pooling and convolutions run faster (PGD-20: 1.09x on 2 cores)
    with channels_last(model) if device.type == "cpu" else contextlib.nullcontext():
        t0 = time.perf_counter()
        result: dict = {"n": n, "eps": eps, "norm": norm, "robust_acc": {}}
        clean_correct = predict(model, x, batch_size, device) == y
        robust_pts: dict[str, torch.Tensor] = {}  # attack -> per point: correct clean and attacked (robust_correct)
        result["clean_acc"] = clean_correct.float().mean().item()
        for name in attacks:
            if name == "autoattack":
                m = n if autoattack_n is None else min(autoattack_n, n)
                state = Path(state_dir) / f"autoattack_{autoattack_version}_{m}.json" if state_dir else None
                lo, hi = distributed.even_range(m)  # all m points in one process
                res = autoattack(model, x[lo:hi].to(device), y[lo:hi].to(device), eps=eps, norm=norm,
                                 version="standard" if autoattack_version == "standard" else "custom",
                                 attacks=AA_VERSIONS[autoattack_version], seed=seed, batch_size=batch_size,
                                 state_path=distributed.state_path(state), device=device, progress=progress)
                robust_pts["autoattack"] = distributed.gather(res.robust.cpu())
                result["robust_acc"]["autoattack"] = robust_pts["autoattack"].float().mean().item()
                result["autoattack_n"] = m
                result["autoattack_version"] = autoattack_version
                continue
            kind, steps, scale = ATTACK_RE.match(name).groups()
            attacked = ScaledLogits(model, int(scale)) if scale else model  # predictions: the model's own
            lo, hi = distributed.shard_range(n, batch_size)  # whole batches; (0, n) in one process
            torch.manual_seed(seed)
            distributed.skip_random_starts(x[:lo], batch_size, eps, norm, device)  # as if batches 0..lo ran here
            robust = [torch.zeros(0, dtype=torch.bool)]
            for i in tqdm(range(lo, hi, batch_size), desc=f"eval {name}", disable=not progress, leave=False):
                xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
                _, ok = robust_correct(model, xb, yb, eps, steps=int(steps), norm=norm,
                                       loss="ce" if kind == "pgd" else "cw", attacked=attacked,
                                       clean=clean_correct[i:i + batch_size].to(device))
                robust.append(ok.cpu())
            robust_pts[name] = distributed.gather(torch.cat(robust))
            result["robust_acc"][name] = robust_pts[name].float().mean().item()
        m = result.get("autoattack_n")
        result["masking"] = masking_flags(
            result["robust_acc"], n, autoattack_n=m, autoattack_version=autoattack_version,
            on_autoattack_points=None if m is None else {k: v[:m].float().mean().item()
                                                         for k, v in robust_pts.items() if k != "autoattack"})
        result["eval_seconds"] = time.perf_counter() - t0
    return result
