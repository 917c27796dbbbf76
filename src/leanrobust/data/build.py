"""From a data config to the tensors a run needs: the training pool (real + generated),
the held-out validation pool and the test set. Deterministic given the seed, so the pool
indices used by scores and Selections mean the same samples in every command. A generated set (or a
replacement pool) may be a folder of shards or a large npz: it is memory-mapped, not loaded (shards.py)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config_schema import DataConfig
from .augment import to_float
from .pool import Pool, split_validation
from .shards import open_images
from .sources import DataError, DatasetInfo, dataset_info, load_dataset, load_npz


@dataclass
class TrainingData:
    info: DatasetInfo
    pool: Pool  # real (first) then generated samples: the index space of Selections
    val: Pool
    n_real: int


def npz_info(images: torch.Tensor, num_classes: int, name: str = "npz") -> DatasetInfo:
    """Statistics of a generic npz set: per-channel mean/std measured on (up to 10k of) its images."""
    x = to_float(images[:10000])
    mean = tuple(x.mean(dim=(0, 2, 3)).tolist())
    std = tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
    c, h = images.shape[1], images.shape[2]
    return DatasetInfo(name=name, num_classes=num_classes, channels=c, size=h, mean=mean, std=std,
                       flip=False, crop_pad=4 if h >= 32 else 2)


def _load_split(cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.dataset == "npz":
        path = cfg.path if split == "train" else cfg.test_path
        if path is None:
            raise ValueError("data.test_path is needed to evaluate an npz dataset")
        return load_npz(path, num_classes=cfg.num_classes)
    return load_dataset(cfg.dataset, split=split, root=cfg.root, download=cfg.download)


def data_info(cfg: DataConfig, train_images: torch.Tensor | None = None) -> DatasetInfo:
    if cfg.dataset == "npz":
        if train_images is None:
            train_images, _ = _load_split(cfg, "train")
        return npz_info(train_images, cfg.num_classes)
    return dataset_info(cfg.dataset)


def _check_shape(images: torch.Tensor, info: DatasetInfo, path) -> None:
    """An extra npz (pool, generated, npz test set) must hold images of the dataset's shape."""
    want = (info.channels, info.size, info.size)
    if tuple(images.shape[1:]) != want:
        raise DataError(f"{path}: images are {tuple(images.shape[1:])} (C, H, W) but {info.name} images are {want}")


def build_training_data(cfg: DataConfig, seed: int) -> TrainingData:
    images, labels = _load_split(cfg, "train")
    info = data_info(cfg, images)
    real = Pool(images, labels, torch.zeros(labels.numel(), dtype=torch.uint8), info.num_classes)
    if cfg.val_seed is None:  # runs written before val_seed: subset first, then the split, both from the run's seed
        if cfg.train_subset is not None and cfg.train_subset + cfg.val_size < len(real):
            real = split_validation(real, cfg.train_subset + cfg.val_size, seed)[1]  # a stratified random subset
        train, val = split_validation(real, cfg.val_size, seed)
        val_order_seed = int(seed) + 1
    else:  # the held-out set depends on the dataset and val_seed only: one curve set for every run and seed
        train, val = split_validation(real, cfg.val_size, cfg.val_seed)
        if cfg.train_subset is not None and cfg.train_subset < len(train):
            train = split_validation(train, cfg.train_subset, seed)[1]  # a stratified random subset of the rest
        val_order_seed = int(cfg.val_seed) + 1
    # validation uses its first validation.n points: a seeded random order, not the dataset's (which may be sorted)
    val = val.subset(torch.randperm(len(val), generator=torch.Generator().manual_seed(val_order_seed)).to(val.device))
    if cfg.pool:
        p_images, p_labels = open_images(cfg.pool, num_classes=info.num_classes)
        _check_shape(p_images, info, cfg.pool)
        train = Pool(p_images, p_labels, torch.zeros(p_labels.numel(), dtype=torch.uint8), info.num_classes)
    n_real = len(train)
    if cfg.generated:
        g_images, g_labels = open_images(cfg.generated, num_classes=info.num_classes)
        _check_shape(g_images, info, cfg.generated)
        gen = Pool(g_images, g_labels, torch.ones(g_labels.numel(), dtype=torch.uint8), info.num_classes)
        train = train.concat(gen)
    return TrainingData(info=info, pool=train, val=val, n_real=n_real)


def load_test_set(cfg: DataConfig, info: DatasetInfo | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Test images (uint8) and labels in a fixed shuffled order, so the first n points are a
    random, reproducible subset that is the same for every run and every method. With `info`
    (the training data's), an npz test file of another image shape is an error naming the file."""
    images, labels = _load_split(cfg, "test")
    if info is not None and cfg.dataset == "npz":
        _check_shape(images, info, cfg.test_path)
    perm = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(12345))
    return images[perm], labels[perm]
