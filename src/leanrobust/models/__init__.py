"""Model zoo for robust training: TRADES' SmallCNN, PreAct ResNet-18, ResNet-18, WideResNet,
each behind a Normalize layer so that inputs stay in [0,1]."""
from .normalize import Normalize
from .preact_resnet import PreActResNet, preact_resnet18
from .registry import MODELS, build_model, last_linear
from .resnet import ResNet, resnet18
from .smallcnn import SmallCNN
from .wideresnet import WideResNet

__all__ = ["Normalize", "SmallCNN", "PreActResNet", "preact_resnet18", "ResNet", "resnet18",
           "WideResNet", "MODELS", "build_model", "last_linear"]
