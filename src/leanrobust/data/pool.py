"""The sample pool: uint8 images, labels and real/generated origin held as tensors on one device.

Everything downstream (scorers, selectors, sampler, trainer) indexes into a Pool with index tensors.
Images may also be a ShardImages (a generated set larger than memory, read batch by batch)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .shards import ShardImages
from .npz import load_npz
from .sources import dataset_info, load_dataset
from .validate import validate_arrays

REAL, GENERATED = 0, 1


@dataclass
class Pool:
    images: torch.Tensor | ShardImages  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)
    origin: torch.Tensor  # uint8 (N,): 0 = real, 1 = generated
    num_classes: int

    def __post_init__(self):
        if self.labels.dtype != torch.int64:
            raise ValueError(f"Pool: labels must be int64, got {self.labels.dtype}")
        validate_arrays(self.images, self.labels, self.num_classes, "Pool")
        if self.origin.dtype != torch.uint8 or self.origin.shape != self.labels.shape:
            raise ValueError(f"Pool: origin must be uint8 of shape {tuple(self.labels.shape)}, "
                             f"got {self.origin.dtype} {tuple(self.origin.shape)}")
        if len(self.origin) and int(self.origin.max()) > GENERATED:
            raise ValueError("Pool: origin values must be 0 (real) or 1 (generated)")
        if not (self.images.device == self.labels.device == self.origin.device):
            raise ValueError("Pool: images, labels and origin must be on one device")

    @classmethod
    def from_tensors(cls, images, labels, num_classes: int, *, generated: bool = False) -> "Pool":
        """A pool whose samples are all real (or all generated)."""
        labels = torch.as_tensor(labels, dtype=torch.int64, device=images.device)
        origin = torch.full(labels.shape, int(generated), dtype=torch.uint8, device=images.device)
        return cls(images, labels, origin, num_classes)

    @classmethod
    def from_dataset(cls, name: str, split: str = "train", root=None, download: bool = True) -> "Pool":
        return cls.from_tensors(*load_dataset(name, split, root, download), dataset_info(name).num_classes)

    @classmethod
    def from_npz(cls, path, num_classes: int, *, generated: bool = True, limit: int | None = None) -> "Pool":
        return cls.from_tensors(*load_npz(path, num_classes, limit=limit), num_classes, generated=generated)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def is_generated(self) -> torch.Tensor:
        return self.origin == GENERATED

    def to(self, device) -> "Pool":
        return Pool(self.images.to(device), self.labels.to(device), self.origin.to(device), self.num_classes)

    def rows(self, a: int, b: int) -> "Pool":
        """Samples [a, b) without copying (a view; lazy for images in shard files): one rank's share of a pool."""
        images = self.images.window(a, b) if isinstance(self.images, ShardImages) else self.images[a:b]
        return Pool(images, self.labels[a:b], self.origin[a:b], self.num_classes)

    def subset(self, idx) -> "Pool":
        """Samples at `idx` (long indices or a bool mask), in that order (shard images are read)."""
        idx = torch.as_tensor(idx, device=self.device)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        idx = idx.long()
        return Pool(self.images[idx], self.labels[idx], self.origin[idx], self.num_classes)

    def concat(self, other: "Pool") -> "Pool":
        """This pool followed by `other` (moved to this pool's device)."""
        if other.images.shape[1:] != self.images.shape[1:] or other.num_classes != self.num_classes:
            raise ValueError(f"Pool.concat: cannot join (C,H,W)={tuple(self.images.shape[1:])}, "
                             f"{self.num_classes} classes with (C,H,W)={tuple(other.images.shape[1:])}, "
                             f"{other.num_classes} classes")
        other = other.to(self.device)
        lazy = isinstance(self.images, ShardImages) or isinstance(other.images, ShardImages)
        images = ShardImages.concat(self.images, other.images) if lazy else torch.cat([self.images, other.images])
        return Pool(images, torch.cat([self.labels, other.labels]), torch.cat([self.origin, other.origin]),
                    self.num_classes)


def largest_remainder(counts, total: int) -> np.ndarray:
    """Split `total` over groups of sizes `counts` (int64 quotas, one per group) in proportion to their sizes,
    largest-remainder rounding (ties: the earlier group first): each group gets the floor or the ceiling of its
    exact share total * n_c / N, so never more than n_c when total <= N, and an empty group gets 0."""
    counts = np.asarray(counts, dtype=np.int64)
    exact = counts.astype(np.float64) * total / max(int(counts.sum()), 1)
    quota = np.floor(exact).astype(np.int64)
    rest = total - int(quota.sum())
    order = np.lexsort((np.arange(len(counts)), -(exact - quota)))  # largest remainder first, then position
    quota[order[:rest]] += 1
    return quota


def split_validation(pool: Pool, n_val: int, seed: int) -> tuple[Pool, Pool]:
    """Hold out `n_val` real samples, stratified by class (largest-remainder quotas), deterministic in `seed`.

    Returns (train_pool, val_pool); train keeps every other sample (generated ones included) in pool order."""
    real = (~pool.is_generated).nonzero().flatten().cpu()
    n_real = len(real)
    if not 0 <= n_val < max(n_real, 1):
        raise ValueError(f"split_validation: n_val={n_val} must be in [0, {n_real}) (the number of real samples)")
    keep = torch.ones(len(pool), dtype=torch.bool)
    if n_val:
        labels = pool.labels.cpu()[real]
        counts = torch.bincount(labels, minlength=pool.num_classes)
        quota = torch.from_numpy(largest_remainder(counts.numpy(), n_val))
        g = torch.Generator().manual_seed(int(seed))
        perm = real[torch.randperm(n_real, generator=g)]
        lab = pool.labels.cpu()[perm]
        srt = torch.argsort(lab, stable=True)
        perm, lab = perm[srt], lab[srt]
        start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(n_real) - start[lab]
        keep[perm[rank < quota[lab]]] = False
    val = (~keep).nonzero().flatten().to(pool.device)
    return pool.subset(keep.nonzero().flatten().to(pool.device)), pool.subset(val)
