"""Model registry: build_model(name, ...) returns Normalize -> network, so every model takes
inputs in [0,1]; unknown names fail with the list of known ones."""
from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Callable, Sequence

from torch import nn

from .normalize import Normalize
from .preact_resnet import preact_resnet18
from .resnet import resnet18
from .smallcnn import SmallCNN
from .wideresnet import WideResNet


def _smallcnn(num_classes: int, in_channels: int, *, width: float = 1.0,
              input_size: int | None = None, dropout: float = 0.5) -> nn.Module:
    """input_size defaults to 28 for 1-channel and 32 for 3-channel data."""
    size = input_size if input_size is not None else (28 if in_channels == 1 else 32)
    return SmallCNN(num_classes, in_channels, width=width, input_size=size, dropout=dropout)


def _wideresnet(num_classes: int, in_channels: int, *, depth: int = 28, widen_factor: int = 10,
                activation: str = "relu", dropout: float = 0.0) -> nn.Module:
    return WideResNet(depth, widen_factor, num_classes, in_channels, activation=activation, dropout=dropout)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "smallcnn": _smallcnn,
    "preact_resnet18": lambda num_classes, in_channels: preact_resnet18(num_classes, in_channels),
    "resnet18": lambda num_classes, in_channels: resnet18(num_classes, in_channels),
    "wideresnet": _wideresnet,
}


def build_model(name: str, num_classes: int, in_channels: int,
                mean: float | Sequence[float], std: float | Sequence[float], **kw) -> nn.Sequential:
    """nn.Sequential(normalize=Normalize(mean, std), net=<network>). Keyword options:
    smallcnn: width, input_size, dropout; wideresnet: depth, widen_factor, activation, dropout."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    accepted = model_options(name)
    bad = sorted(set(kw) - accepted)
    if bad:
        raise ValueError(f"model {name!r} takes no option(s) {', '.join(bad)}; its options: "
                         f"{', '.join(sorted(accepted)) or 'none'}")
    net = MODELS[name](num_classes, in_channels, **kw)
    return nn.Sequential(OrderedDict(normalize=Normalize(mean, std), net=net))


def model_options(name: str) -> set[str]:
    """The keyword options build_model accepts for a model name (an unknown option is an error, not a
    TypeError deep inside the network's constructor)."""
    params = inspect.signature(MODELS[name]).parameters
    return {k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's final nn.Linear (the classification head), e.g. for last-layer gradients
    (GradMatch, GraNd) or penultimate features via a forward hook on its input."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer")
    return linears[-1]
