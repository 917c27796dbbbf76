"""Wide ResNet (Zagoruyko & Komodakis 2016), pre-activation blocks as in TRADES' WRN-34-10 and
Wang et al. 2023's WRN-28-10 (with SiLU); adaptive pooling for 28x28 and 32x32 inputs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU}


class WideBlock(nn.Module):
    """BN-act-conv3x3-BN-act-(dropout)-conv3x3; when the shape changes, the shortcut is a 1x1
    conv on the activated input (the original WRN code)."""

    def __init__(self, in_planes: int, planes: int, stride: int, act: type[nn.Module], dropout: float):
        super().__init__()
        self.bn1, self.act1 = nn.BatchNorm2d(in_planes), act()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(planes), act()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act1(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.act2(self.bn2(self.conv1(o)))
        if self.dropout > 0:
            o = F.dropout(o, p=self.dropout, training=self.training)
        return self.conv2(o) + skip


class WideResNet(nn.Module):
    """WRN-depth-k: 3x3 stem (16), three stages of (depth-4)/6 blocks with 16k, 32k, 64k
    channels (strides 1, 2, 2), final BN-act, global average pool, linear."""

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10,
                 in_channels: int = 3, *, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 28, 34, 70), got {depth}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        act, n = _ACTIVATIONS[activation], (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        blocks, in_planes = [], 16
        for i, planes in enumerate(widths):
            for j in range(n):
                blocks.append(WideBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1, act, dropout))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.bn, self.act = nn.BatchNorm2d(in_planes), act()
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn(self.blocks(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))
