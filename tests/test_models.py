"""Models: shapes on 28x28x1 and 32x32x3, Normalize inside, channels_last, TRADES' SmallCNN."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from leanrobust.models import MODELS, Normalize, SmallCNN, build_model, last_linear

SMALL_KW = {  # keep the CPU cost of the big families down; architecture code paths are the same
    "smallcnn": {"width": 0.5},
    "preact_resnet18": {},
    "resnet18": {},
    "wideresnet": {"depth": 10, "widen_factor": 1},
}
DATA = [(1, 28, (0.2860,), (0.3530,)), (3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("channels,size,mean,std", DATA)
def test_forward_shape_normalize_and_channels_last(name, channels, size, mean, std):
    model = build_model(name, 7, channels, mean, std, **SMALL_KW[name]).eval()
    if name == "smallcnn":  # TRADES zero-initialises the last layer: give it weights to compare
        nn.init.normal_(model.net.classifier.fc3.weight)
    x = torch.rand(2, channels, size, size)
    out = model(x)
    assert out.shape == (2, 7)
    assert isinstance(model[0], Normalize)
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    torch.testing.assert_close(out, model.net((x - m) / s))
    model_cl = model.to(memory_format=torch.channels_last)
    out_cl = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-5)


def test_wideresnet_silu_and_dropout():
    model = build_model("wideresnet", 10, 3, 0.5, 0.5, depth=10, widen_factor=1, activation="silu", dropout=0.3)
    assert any(isinstance(m, nn.SiLU) for m in model.modules())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="depth"):
        build_model("wideresnet", 10, 3, 0.5, 0.5, depth=12)
    with pytest.raises(ValueError, match="activation"):
        build_model("wideresnet", 10, 3, 0.5, 0.5, depth=10, activation="gelu")


def test_wideresnet_stage_widths():
    net = build_model("wideresnet", 10, 3, 0.5, 0.5, depth=16, widen_factor=2).net
    assert len(net.blocks) == 6  # (16 - 4) / 6 = 2 blocks per stage
    assert [b.conv2.out_channels for b in net.blocks] == [32, 32, 64, 64, 128, 128]


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError) as err:
        build_model("vgg16", 10, 3, 0.5, 0.5)
    for name in MODELS:
        assert name in str(err.value)


def test_smallcnn_is_trades_net():
    net = SmallCNN(10, 1)
    convs = [m for m in net.feature_extractor if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64]
    assert all(c.kernel_size == (3, 3) and c.padding == (0, 0) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.feature_extractor) == 2
    fcs = [m for m in net.classifier if isinstance(m, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(64 * 4 * 4, 200), (200, 200), (200, 10)]
    assert [m.p for m in net.modules() if isinstance(m, nn.Dropout)] == [0.5]
    assert torch.equal(net(torch.rand(3, 1, 28, 28)), torch.zeros(3, 10))  # zero last layer
    half = SmallCNN(10, 3, width=0.5, input_size=32)
    assert [m.out_channels for m in half.feature_extractor if isinstance(m, nn.Conv2d)] == [16, 16, 32, 32]
    assert half.classifier.fc1.in_features == 32 * 5 * 5
    with pytest.raises(ValueError, match="input_size"):
        net(torch.rand(1, 1, 32, 32))


def test_smallcnn_input_size_follows_channels_unless_given():
    assert build_model("smallcnn", 10, 1, 0.5, 0.5).net.input_size == 28
    assert build_model("smallcnn", 10, 3, 0.5, 0.5).net.input_size == 32
    assert build_model("smallcnn", 10, 1, 0.5, 0.5, input_size=32).net(torch.rand(1, 1, 32, 32)).shape == (1, 10)


def test_normalize_broadcast_buffers_and_errors():
    norm = Normalize(0.5, 0.25)
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(norm(x), (x - 0.5) / 0.25)
    norm3 = Normalize((0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    assert norm3(x)[:, 2].allclose((x[:, 2] - 0.3) / 0.5)
    assert set(dict(norm3.named_buffers())) == {"mean", "std"}
    model = build_model("smallcnn", 10, 1, 0.2, 0.3)
    assert "normalize.mean" in model.state_dict() and "normalize.std" in model.state_dict()
    with pytest.raises(ValueError):
        Normalize((0.1, 0.2), (0.5, 0.5, 0.5))
    with pytest.raises(ValueError):
        Normalize(0.5, 0.0)


def test_last_linear_is_the_head():
    for name in ("smallcnn", "wideresnet"):
        model = build_model(name, 5, 1, 0.5, 0.5, **SMALL_KW[name])
        assert last_linear(model).out_features == 5
