"""Per-channel input normalisation as the first layer of every model, so that attacks and data
stay in [0,1] and nobody has to remember to normalise (or to un-normalise) by hand."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std per channel; mean and std are buffers of shape (1, C, 1, 1), saved with
    the weights. A single value (or a length-1 sequence) applies to every channel."""

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if mean_t.shape != std_t.shape:
            raise ValueError(f"mean has {mean_t.shape[1]} values but std has {std_t.shape[1]}")
        if (std_t <= 0).any():
            raise ValueError(f"std must be > 0, got {std_t.flatten().tolist()}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
