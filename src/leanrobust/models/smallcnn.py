"""TRADES' MNIST network (Zhang et al. 2019, small_cnn.py): four 3x3 convolutions, two max-pools,
fc200-fc200-fc10, ReLU, dropout 0.5; a `width` multiplier and 28x28 or 32x32 inputs."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv(c1)-conv(c1)-pool-conv(c2)-conv(c2)-pool-fc200-fc200-fc(num_classes), c1 = 32*width,
    c2 = 64*width. Initialisation as TRADES: Kaiming-normal convolutions with zero bias and a
    zero last layer (so an untrained net outputs all-zero logits). `input_size` (28 or 32, any
    size >= 16 works) fixes the flattened feature size: 4x4 for 28, 5x5 for 32."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, *, width: float = 1.0,
                 input_size: int = 28, dropout: float = 0.5):
        super().__init__()
        c1, c2 = max(1, round(32 * width)), max(1, round(64 * width))
        self.feature_extractor = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, c1, 3)), ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(c1, c1, 3)), ("relu2", nn.ReLU()),
            ("maxpool1", nn.MaxPool2d(2, 2)),
            ("conv3", nn.Conv2d(c1, c2, 3)), ("relu3", nn.ReLU()),
            ("conv4", nn.Conv2d(c2, c2, 3)), ("relu4", nn.ReLU()),
            ("maxpool2", nn.MaxPool2d(2, 2)),
        ]))
        side = ((input_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small for SmallCNN (need >= 16)")
        self.input_size = input_size
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(c2 * side * side, 200)), ("relu1", nn.ReLU()),
            ("drop", nn.Dropout(dropout)),
            ("fc2", nn.Linear(200, 200)), ("relu2", nn.ReLU()),
            ("fc3", nn.Linear(200, num_classes)),
        ]))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.classifier.fc3.weight)
        nn.init.zeros_(self.classifier.fc3.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            raise ValueError(f"SmallCNN built for {self.input_size}x{self.input_size} inputs, "
                             f"got {tuple(x.shape[-2:])}; pass input_size= to build_model")
        return self.classifier(self.feature_extractor(x).flatten(1))
