"""Shared test fixtures: one thread and a fixed seed per test, and tiny model factories."""
from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def set_threads():
    """One thread: tiny models gain nothing from more, and on a shared 2-core machine two
    threads per process made the attack tests ~10x slower (OpenMP oversubscription)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_linear_model():
    """Factory: make(in_shape=(1, 8, 8), num_classes=10, seed=0) -> Flatten + Linear, eval mode."""

    def make(in_shape=(1, 8, 8), num_classes: int = 10, seed: int = 0) -> nn.Module:
        g = torch.Generator().manual_seed(seed)
        lin = nn.Linear(int(torch.tensor(in_shape).prod()), num_classes)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.1)
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * 0.1)
        return nn.Sequential(nn.Flatten(), lin).eval()

    return make


@pytest.fixture
def tiny_cnn():
    """Factory: make(in_channels=1, num_classes=10, seed=0) -> conv-BN-ReLU-pool-dropout-linear
    for 8x8 (or any size) inputs, with BatchNorm running stats warmed on random data."""

    def make(in_channels: int = 1, num_classes: int = 10, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Conv2d(in_channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(16, num_classes))
        with torch.no_grad():
            net.train()(torch.rand(16, in_channels, 8, 8))
        return net.eval()

    return make


@pytest.fixture
def tiny_npz_config(tmp_path):
    """Factory: make(progress=False) -> path of a config on a 90-image, 3-class 28x28 npz set whose classes
    differ in brightness (so tiny runs learn), one epoch of PGD-2 on a quarter-width SmallCNN."""
    import numpy as np

    def make(progress: bool = False):
        rng = np.random.default_rng(0)
        labels = np.arange(90) % 3
        images = (rng.integers(0, 80, (90, 28, 28, 1)) + 80 * labels[:, None, None, None]).astype(np.uint8)
        np.savez(tmp_path / "d.npz", image=images, label=labels)
        path = tmp_path / "c.yaml"
        path.write_text(f"progress: {str(progress).lower()}\ndata: {{dataset: npz, path: {tmp_path / 'd.npz'}, "
                        f"test_path: {tmp_path / 'd.npz'}, num_classes: 3, val_size: 9}}\nmodel: {{width: 0.25}}\n"
                        "objective: {eps: 0.05, steps: 2}\noptim: {epochs: 1, batch_size: 16}\n"
                        "validation: {n: 9, steps: 2}\neval: {n: 9, attacks: [pgd2]}\n")
        return path

    return make
