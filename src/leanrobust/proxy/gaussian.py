"""The per-class Gaussian proxy (diagonal or probabilistic-PCA covariance in pixel space): a deliberately
crude generator, the bottom rung of the proxy-quality ladder, sampled into shards like the DDPM."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..data.sources import load_images
from ..io import write_shards
from .sampling import class_counts, shuffled_labels


class GaussianProxy:
    """Per-class Gaussian in pixel space (0..255): mean plus either a diagonal covariance (rank 0) or a
    probabilistic-PCA one (top-`rank` principal directions + isotropic residual variance). Samples are
    clipped to [0, 255] and rounded: a deliberately crude generator for the proxy-quality ladder."""

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, scale: torch.Tensor, resid: torch.Tensor, shape):
        self.mean, self.basis, self.scale, self.resid, self.shape = mean, basis, scale, resid, tuple(shape)

    @classmethod
    def fit(cls, images: torch.Tensor, labels: torch.Tensor, num_classes: int, rank: int = 0) -> "GaussianProxy":
        x = images.flatten(1).double()
        d = x.shape[1]
        mean, basis, scale, resid = [], [], [], []
        for c in range(num_classes):
            xc = x[labels == c]
            if len(xc) < 2:
                raise ValueError(f"class {c} has {len(xc)} images; the Gaussian proxy needs at least 2")
            mu = xc.mean(0)
            if rank == 0:
                basis.append(torch.zeros(0, d, dtype=x.dtype))
                scale.append(torch.zeros(0, dtype=x.dtype))
                resid.append(xc.std(0))
            else:
                _, s, vh = torch.linalg.svd(xc - mu, full_matrices=False)
                var = s ** 2 / (len(xc) - 1)
                r = min(rank, len(var))
                basis.append(vh[:r])
                scale.append(var[:r].sqrt())
                rest = var[r:].sum() / max(d - r, 1)
                resid.append(rest.sqrt().expand(d))
            mean.append(mu)
        return cls(torch.stack(mean), torch.stack(basis), torch.stack(scale), torch.stack(resid), images.shape[1:])

    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(len(labels), self.basis.shape[1], generator=generator, dtype=torch.float64)
        e = torch.randn(len(labels), self.mean.shape[1], generator=generator, dtype=torch.float64)
        x = self.mean[labels] + torch.einsum("br,brd->bd", z * self.scale[labels], self.basis[labels])
        x = x + e * self.resid[labels]
        return x.clamp(0, 255).round().to(torch.uint8).reshape(len(labels), *self.shape)


def gaussian_to_npz(real: str | Path, out: str | Path, n: int, *, rank: int = 0,
                    per_class: str | Sequence[int] | None = "balanced", seed: int = 0, batch_size: int = 10000,
                    num_classes: int | None = None, progress: bool = True, overwrite: bool = False) -> dict:
    """Fit a GaussianProxy to a real training set (dataset name or npz) and write n samples to OUT."""
    x, y, k = load_images(real, "train", num_classes=num_classes)
    proxy = GaussianProxy.fit(x, y, k, rank)
    counts = class_counts(n, k, per_class)
    labels = shuffled_labels(counts, seed)

    def make_batch(i, size):
        yb = labels[i * batch_size:i * batch_size + size]
        return proxy.sample(yb, torch.Generator().manual_seed(seed * 1_000_003 + i)), yb

    plan = {"gaussian": str(real), "rank": rank, "seed": seed, "counts": counts}
    return write_shards(out, plan, make_batch, n, batch_size, progress=progress, overwrite=overwrite)
