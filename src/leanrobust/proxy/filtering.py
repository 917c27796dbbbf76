"""Filtering generated data: rank samples per class by a classifier's confidence in the intended label
(Wang et al. 2023 keep the top 20% per class) or by a robust real-vs-generated discriminator's realism
score (Sehwag et al. 2022), and write the kept subset as an npz."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import load_npz, to_float
from ..io import write_npz

REAL, GENERATED = 0, 1  # discriminator classes, as Pool.origin


@torch.no_grad()
def predict_proba(model: nn.Module, images: torch.Tensor, *, batch_size: int = 500, device=None) -> torch.Tensor:
    """Softmax outputs (N, K) of a model (eval mode) on uint8 or [0,1] float images, in batches."""
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        xb = images[i:i + batch_size].to(device)
        xb = to_float(xb)
        out.append(model(xb).float().softmax(1).cpu())
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, 0)


def confidence_scores(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **kw) -> torch.Tensor:
    """p(intended label | x) under a classifier."""
    return predict_proba(model, images, **kw).gather(1, labels.long().cpu()[:, None]).squeeze(1)


def realism_scores(discriminator: nn.Module, images: torch.Tensor, **kw) -> torch.Tensor:
    """p(real | x) under a 2-class discriminator (class 0 = real, 1 = generated)."""
    p = predict_proba(discriminator, images, **kw)
    if p.shape[1] != 2:
        raise ValueError(f"a realism discriminator has 2 outputs (0 = real, 1 = generated), this model has {p.shape[1]}")
    return p[:, REAL]


def keep_top_per_class(scores: torch.Tensor, labels: torch.Tensor, keep: float) -> torch.Tensor:
    """Sorted indices of the ceil(keep * n_c) highest-scoring samples of every class c (ties: lower index)."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    scores, labels = torch.as_tensor(scores).double().cpu(), torch.as_tensor(labels).long().cpu()
    kept = []
    for c in labels.unique():
        idx = (labels == c).nonzero().squeeze(1)
        order = torch.from_numpy(np.argsort(-scores[idx].numpy(), kind="stable"))
        kept.append(idx[order[:math.ceil(keep * len(idx))]])
    return torch.cat(kept).sort().values if kept else torch.zeros(0, dtype=torch.long)


def filter_npz(src: str | Path, out: str | Path, *, by: str, model: nn.Module, keep: float = 0.2,
               batch_size: int = 500, device=None) -> dict:
    """Score the samples of `src` (by 'confidence' or 'realism'), keep the top `keep` per class, and
    write them (image uint8 NxHxWxC, label int64, score float32) to `out` atomically."""
    images, labels = load_npz(src)
    if by == "confidence":
        scores = confidence_scores(model, images, labels, batch_size=batch_size, device=device)
    elif by == "realism":
        scores = realism_scores(model, images, batch_size=batch_size, device=device)
    else:
        raise ValueError(f"unknown filter {by!r}; expected confidence or realism")
    idx = keep_top_per_class(scores, labels, keep)
    write_npz(out, image=images[idx].permute(0, 2, 3, 1).numpy(), label=labels[idx].numpy(),
              score=scores[idx].numpy().astype(np.float32))
    return {"out": str(out), "kept": len(idx), "of": len(labels), "by": by, "keep": keep,
            "score_kept_min": float(scores[idx].min()) if len(idx) else None,
            "score_mean": float(scores.mean()) if len(scores) else None}
