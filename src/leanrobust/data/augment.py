"""Batch-wise augmentation on uint8 tensors, on their own device: random pad-crop (zero padding) and
horizontal flip done with one gather per batch, no per-sample Python loop."""
from __future__ import annotations

import torch


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] (floating input is returned as float32 unchanged)."""
    return x.float() if x.is_floating_point() else x.float().div_(255)


def augment_batch(x: torch.Tensor, *, crop_pad: int, flip: bool, generator: torch.Generator | None = None):
    """Random crop of each (N, C, H, W) image from its zero-padded (by `crop_pad`) copy, then a random
    horizontal flip with probability 1/2 per sample; returns float32 in [0, 1] on x's device.

    `generator` (on x's device) makes it deterministic; crop_pad=0 and flip=False return to_float(x)."""
    if x.ndim != 4:
        raise ValueError(f"augment_batch: expected (N, C, H, W), got shape {tuple(x.shape)}")
    if crop_pad < 0:
        raise ValueError(f"augment_batch: crop_pad must be >= 0, got {crop_pad}")
    n, c, h, w = x.shape
    if (crop_pad == 0 and not flip) or n == 0:
        return to_float(x)
    dev = x.device
    flips = (torch.rand(n, generator=generator, device=dev) < 0.5) if flip else torch.zeros(n, dtype=torch.bool, device=dev)
    if crop_pad == 0:
        return to_float(torch.where(flips[:, None, None, None], x.flip(3), x))
    dy, dx = torch.randint(0, 2 * crop_pad + 1, (2, n, 1), generator=generator, device=dev) - crop_pad
    cols = torch.arange(w, device=dev).expand(n, w)
    rows = torch.arange(h, device=dev) + dy                                    # (n, h) source rows
    cols = torch.where(flips[:, None], w - 1 - cols, cols) + dx              # (n, w) source cols
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    src = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]  # (n, h, w)
    out = x.reshape(n, c, h * w).gather(2, src.reshape(n, 1, h * w).expand(n, c, h * w))
    return to_float(out.reshape(n, c, h, w) * inside[:, None].to(x.dtype))
