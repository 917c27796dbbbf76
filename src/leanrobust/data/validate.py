"""What every dataset reader shares: the errors that name the file, and the checks of images and labels
(uint8 (N,C,H,W), integer labels in range) that each reader runs on what it read."""
from __future__ import annotations

import numpy as np
import torch


class DataError(ValueError):
    """A data file is malformed or holds values other than expected; the message names the file."""


class DataNotFoundError(DataError):
    """The dataset is in none of the searched places and could not be downloaded."""


def _is_integer(a) -> bool:
    if isinstance(a, torch.Tensor):
        return not (a.is_floating_point() or a.is_complex() or a.dtype == torch.bool)
    return np.issubdtype(a.dtype, np.integer)


def validate_arrays(images, labels, num_classes: int | None, source) -> None:
    """Check uint8 images (N,C,H,W) and integer labels (N,) in [0, num_classes) (numpy or torch);
    raise `DataError` whose message starts with `source` (a file name, or a description)."""
    if str(images.dtype) not in ("uint8", "torch.uint8"):
        raise DataError(f"{source}: images must be uint8, got {images.dtype}")
    if images.ndim != 4 or min(images.shape[1:]) < 1:
        raise DataError(f"{source}: images must be (N, C, H, W), got shape {tuple(images.shape)}")
    validate_labels(labels, num_classes, source)
    if len(images) != len(labels):
        raise DataError(f"{source}: {len(images)} images but {len(labels)} labels")


def validate_labels(labels, num_classes: int | None, source) -> None:
    """Check integer labels (N,) in [0, num_classes); raise `DataError` naming `source`."""
    if labels.ndim != 1:
        raise DataError(f"{source}: labels must be 1-D, got shape {tuple(labels.shape)}")
    if len(labels) and not _is_integer(labels):
        raise DataError(f"{source}: labels must be integers, got {labels.dtype}")
    if len(labels):
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0:
            raise DataError(f"{source}: negative label {lo}")
        if num_classes is not None and hi >= num_classes:
            raise DataError(f"{source}: label {hi} out of range for {num_classes} classes (expected 0..{num_classes - 1})")


def to_torch(images: np.ndarray, labels, num_classes, source):
    validate_arrays(images, np.asarray(labels), num_classes, source)
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(np.asarray(labels, dtype=np.int64).copy())
